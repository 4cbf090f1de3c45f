"""Registries turn names into objects and reject unknown names and parameters with the choices listed."""

import math

import pytest

from diffusion_objectives.errors import OptionError
from diffusion_objectives.registry import Registry


def test_registry_errors_and_parameters():
    reg = Registry("thing")

    @reg.register("a", "the a")
    def make_a(size: int, scale: float = 1.0):
        if size < 0:
            raise ValueError("size must be >= 0")
        return (size, scale)

    assert reg.get("a", size=2) == (2, 1.0)
    assert reg.parameters("a")["scale"] == 1.0
    assert reg.summary("a") == "the a"
    with pytest.raises(OptionError, match="unknown thing 'b'; choose from: a"):
        reg.get("b")
    with pytest.raises(OptionError, match="unknown parameter.*colour.*allowed: size, scale"):
        reg.get("a", size=1, colour=3)
    with pytest.raises(OptionError, match="needs parameter.*size"):
        reg.get("a")
    with pytest.raises(OptionError, match="thing 'a': size must be >= 0"):
        reg.get("a", size=-1)
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(make_a)


def test_non_finite_parameters_are_refused_unless_they_mean_something():
    """NaN is never a parameter; ±inf only where the registry says it means something (schedule endpoints) or
    the default is itself infinite. This is the one place every route (CLI spec, --set, YAML) passes."""
    reg = Registry("thing", infinite=("upper",))

    @reg.register("a")
    def make_a(bias: float = 0.0, upper: float = 1.0, s_max: float = math.inf):
        return (bias, upper, s_max)

    for bias in (math.nan, math.inf, -math.inf):
        with pytest.raises(OptionError, match=f"thing 'a': parameter bias must be a finite number, got {bias}"):
            reg.get("a", bias=bias)
    assert reg.get("a", upper=math.inf) == (0.0, math.inf, math.inf)
    assert reg.get("a", s_max=-math.inf)[2] == -math.inf  # infinite default: infinity means something
    for key in ("upper", "s_max"):
        with pytest.raises(OptionError, match=f"parameter {key} must be a finite number, got nan"):
            reg.get("a", **{key: math.nan})
    assert reg.get("a", bias=True) == (True, 1.0, math.inf)  # booleans are not numbers here


def test_library_registries_refuse_nan_and_keep_infinite_schedule_endpoints():
    from diffusion_objectives import schedules, weightings

    with pytest.raises(OptionError, match="weighting 'sigmoid': parameter bias must be a finite number, got nan"):
        weightings.get("sigmoid", bias=math.nan)
    with pytest.raises(OptionError, match="parameter logsnr_max must be a finite number, got nan"):
        schedules.get("cosine", logsnr_max=math.nan)
    assert schedules.get("cosine", logsnr_min=-math.inf, logsnr_max=math.inf).logsnr_min == -math.inf
