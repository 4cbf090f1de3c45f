"""Registries turn names into objects and reject unknown names and parameters with the choices listed."""

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
