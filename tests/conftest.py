"""Shared test settings: float64 by default where a test asks for it, deterministic threads, hypothesis profile."""

import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("DIFFOBJ_TEST_THREADS", "1")))

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# ---- tiny trained runs shared by the evaluation tests ---------------------------------------------------
TINY_TRAIN_COMMON = ["--no-progress", "--set", "run.sample_every=0", "--set", "run.device=cpu",
                     "--set", "optim.warmup_images=0"]
TINY_TRAIN = {
    "toy": ["--preset", "toy2d", "--steps", "60", "--batch-size", "128", "--set", "data.n=4096",
            "--set", "network.params.hidden=32", "--set", "ema.half_life_images=2000"],
    "digits": ["--preset", "digits", "--steps", "6", "--batch-size", "16", "--set", "network.params.channels=8",
               "--set", "ema.half_life_images=200"],
}


@pytest.fixture(scope="session")
def _tiny_runs_cache(tmp_path_factory):
    from diffusion_objectives.cli import main

    root = tmp_path_factory.mktemp("tiny-runs")
    for name, args in TINY_TRAIN.items():
        assert main(["train", "--out", str(root / name), *args, *TINY_TRAIN_COMMON]) == 0
    return root


@pytest.fixture(scope="module")
def tiny_runs(_tiny_runs_cache, tmp_path_factory):
    """A private copy (per test module) of two tiny trained runs: ``toy`` (2-D ring, 60 steps) and ``digits``
    (class-conditional U-Net, 6 steps). Trained once per session; modules may write into their copy."""
    root = tmp_path_factory.mktemp("runs")
    for name in TINY_TRAIN:
        shutil.copytree(_tiny_runs_cache / name, root / name)
    return root
