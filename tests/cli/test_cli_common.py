"""cli/_common.py: EDM's seed syntax (parsed only on the command line; the library takes lists of ints and
writes them back with ``metrics.format_seeds``), the translation of library errors into flag-naming ones,
and the rule that commands share _common, not each other."""

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives.cli import _common
from diffusion_objectives.cli._common import SEED_MAX, flags, parse_seeds, seed_ranges
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation import protocol as E
from diffusion_objectives.evaluation.metrics import format_seeds

CLI = Path(_common.__file__).parent


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("1,5,9-11", [1, 5, 9, 10, 11]), ("7", [7])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a-b", "5-2", "-1"])
def test_parse_seeds_errors(text):
    with pytest.raises(OptionError, match="--seeds"):
        parse_seeds(text)


@given(st.lists(st.integers(0, SEED_MAX), min_size=1, max_size=40, unique=True))
def test_format_seeds_is_the_inverse_of_parse_seeds(seeds):
    """Results record seeds in the syntax the command line reads: parsing the record gives the seeds back."""
    seeds = sorted(seeds)
    assert parse_seeds(format_seeds(seeds)) == seeds
    assert sum(len(r) for r in seed_ranges(format_seeds(seeds))) == len(seeds)


def test_library_errors_are_translated_to_the_flags():
    with pytest.raises(OptionError, match=r"^--elbo-samples \(λ-draws per example\) must be a positive multiple of "
                                          r"8, got 12$"):
        with flags(samples="--elbo-samples"):
            E.check_elbo_samples(12)
    with pytest.raises(OptionError, match="^--steps 1: a grid needs at least 2 points, got 1$"):
        with flags(steps="--steps"):
            E.sampling_grid("edm", 1)
    # a message that does not begin with the parameter (here: another word starting with it) passes unchanged
    with pytest.raises(ValueError, match="^samplesize is wrong$"):
        with flags(samples="--samples"):
            raise ValueError("samplesize is wrong")
    assert E.check_elbo_samples(16) == 16


def test_library_messages_name_no_command_line_flags():
    """Error messages of the library modules this boundary concerns name their own parameters, not flags."""
    root = CLI.parent
    modules = ["evaluation/protocol.py", "sampling/samplers.py", "study/report.py", "registry.py",
               "interop/pipelines.py", *(p.relative_to(root) for p in (root / "evaluation/metrics").glob("*.py")),
               *(p.relative_to(root) for p in (root / "data").glob("*.py"))]
    for module in modules:
        tree = ast.parse((root / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = ast.unparse(node.exc)
                assert "'--" not in text and '"--' not in text and "{--" not in text, (module, text)


def test_commands_share_common_not_each_other():
    commands = {p.stem for p in CLI.glob("*.py") if not p.stem.startswith("_")}
    for path in CLI.glob("*.py"):
        if path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module not in commands, (path.name, node.module)
                assert node.module is not None or not {a.name for a in node.names} & commands, path.name
