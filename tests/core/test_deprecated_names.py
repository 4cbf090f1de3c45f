"""Issue 11: names are unique across modules; each renamed public name still works under its old name and
warns with a DeprecationWarning that names the new one. Registry string names are unchanged."""

import importlib
import warnings

import pytest
import torch

from diffusion_objectives import core, parameterizations, schedules, weightings

RENAMED = [
    (parameterizations, "Flow", "FlowVelocity", "flow"),
    (parameterizations, "EDM", "EDMPrecond", "edm"),
    (schedules, "Flow", "FlowUniformT", "flow"),
    (weightings, "EDM", "EDMWeighting", "edm"),
    (weightings, "from_published", "published_weighting", None),
]


@pytest.mark.parametrize(("module", "old", "new", "registry_name"), RENAMED,
                         ids=[f"{m.__name__}.{o}" for m, o, *_ in RENAMED])
def test_old_name_warns_naming_the_new_one_and_is_the_same_object(module, old, new, registry_name):
    where = module.__name__
    with pytest.warns(DeprecationWarning, match=rf"{where}\.{old} is deprecated; use {where}\.{new}"):
        alias = getattr(module, old)
    assert alias is getattr(module, new)
    assert old not in module.__all__ and new in module.__all__
    with pytest.warns(DeprecationWarning, match=new):
        exec(f"from {module.__name__} import {old}", {})  # noqa: S102
    if registry_name is not None:  # the string names stay as they were
        assert type(module.get(registry_name)) is alias


def test_renamed_objects_compute_what_the_old_names_did():
    lam = torch.linspace(-6.0, 6.0, 13, dtype=torch.float64)
    with pytest.warns(DeprecationWarning):
        old_w = weightings.EDM()
    # EDM22's weighting with the defaults, 8 N(λ; 2.4, 2.4²)(e^{−λ} + ¼), written out here
    normal = torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * (2 * torch.pi) ** 0.5)
    torch.testing.assert_close(old_w(lam), 8 * normal * (torch.exp(-lam) + 0.25), rtol=1e-12, atol=0)
    with pytest.warns(DeprecationWarning):
        old_p = parameterizations.EDM(0.5)
    torch.testing.assert_close(old_p.loss_factor(lam), 1 + torch.exp(-lam) / 0.25, rtol=1e-12, atol=0)
    with pytest.warns(DeprecationWarning):
        flow = schedules.Flow()
    # uniform t_RF = sigmoid(−λ/2): t is the survival mass, renormalised on [−15, 15]
    g_min, g_max = (torch.sigmoid(torch.tensor(v, dtype=torch.float64)) for v in (7.5, -7.5))  # g(−15), g(15)
    torch.testing.assert_close(flow.t(lam), (torch.sigmoid(-0.5 * lam) - g_max) / (g_min - g_max), rtol=1e-12,
                               atol=1e-15)


def test_unknown_names_still_raise_attribute_error_without_a_warning():
    for module in (parameterizations, schedules, weightings):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(AttributeError, match="no_such_name"):
                module.no_such_name  # noqa: B018


def test_no_public_class_or_function_name_names_two_objects_across_modules():
    owners: dict[str, set[str]] = {}
    for name in ("core.schedules", "core.weightings", "core.parameterizations", "core.objectives", "core.adaptive",
                 "core.tabulated", "interop.translate", "core.loss", "core.theory", "core.shifts", "likelihoods.vlb",
                 "likelihoods.ode"):
        module = importlib.import_module(f"diffusion_objectives.{name}")
        for public in module.__all__:
            obj = getattr(module, public)
            if callable(obj) and getattr(obj, "__module__", None) == module.__name__ and public not in (
                    "REGISTRY", "get", "names"):
                owners.setdefault(public, set()).add(module.__name__)
    clashes = {k: v for k, v in owners.items() if len(v) > 1}
    assert not clashes
    assert core.schedules.FlowUniformT is not core.parameterizations.FlowVelocity
