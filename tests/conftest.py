"""Shared test settings: float64 by default where a test asks for it, deterministic threads, hypothesis profile."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("DIFFOBJ_TEST_THREADS", "1")))

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
