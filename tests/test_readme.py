"""The README's Python example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    block = re.search(r"## Python in ten lines\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in block.splitlines() if line.strip()]) <= 10
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert torch.isfinite(scope["nll"]) and scope["x"].shape == (1000, 2)
    # the trained model puts its samples near the ring of radius 1 (it started at the origin)
    assert 0.7 < float(scope["x"].norm(dim=1).median()) < 1.3


def test_readme_own_model_example_runs():
    text = README.read_text()
    block = re.search(r"## Using your own model\n.*?```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert scope["model"].parameterization.name == "eps" and scope["loss"].shape == (4,)
    assert torch.isfinite(scope["loss"]).all() and torch.isfinite(scope["nll"]).all()
