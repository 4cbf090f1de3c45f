"""From config sections to objects: the objective, the dataset and the network.

Strings become objects only through the registries (:mod:`diffusion_objectives.registry`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .. import data as data_module
from .. import networks
from ..core import objectives, parameterizations, schedules, weightings
from ..core.adaptive import AdaptiveSchedule
from ..core.objectives import Objective
from ..core.schedules import Schedule
from ..data.toy import derive_seed
from ..errors import OptionError
from .config import Component, DataConfig, LossConfig, NetworkConfig

__all__ = ["build_objective", "build_dataset", "build_network", "complete_network_params", "check_names",
           "derive_seed"]


# ---- the objective ---------------------------------------------------------------------------------------

def _rebuild(registry: Any, current: Any, comp: Component) -> Any:
    """``current`` (a weighting or parameterization of the objective preset) with ``comp`` applied."""
    if comp.name is not None:
        return registry.get(comp.name, **comp.params)
    if not comp.params:
        return current
    return registry.get(current.name, **(current.params() | comp.params))


_ENDPOINT_PARAMS = {"logsnr_min", "logsnr_max", "shift"}


def _schedule(current: Schedule | None, comp: Component) -> Schedule:
    if comp.name is not None:
        return schedules.get(comp.name, **comp.params)
    if current is None:
        return schedules.get("cosine", **comp.params)
    if not comp.params:
        return current
    if set(comp.params) <= _ENDPOINT_PARAMS:  # truncate / shift the objective's own schedule's base map
        try:
            bounds = {key: float(value) for key, value in comp.params.items()}
            return dataclasses.replace(current.truncated(), **bounds)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"loss.schedule: {exc}") from None
    if current.name not in schedules.REGISTRY:
        raise OptionError(
            f"loss.schedule: the objective's schedule {current.name!r} takes only logsnr_min, logsnr_max and "
            f"shift as overrides; set loss.schedule.name to one of: {', '.join(schedules.names())}")
    return schedules.get(current.name, **(current.params() | comp.params))


def build_objective(loss: LossConfig) -> Objective:
    """The :class:`~diffusion_objectives.Objective` of ``loss``: the preset ``loss.objective`` (or, if it is
    null, ``loss.weighting`` with schedule ``cosine`` and parameterization ``eps`` unless given), with the
    component overrides applied, and the schedule replaced by an
    :class:`~diffusion_objectives.AdaptiveSchedule` on the same endpoints when ``loss.adaptive.enabled``."""
    if loss.objective is not None:
        base = objectives.get(loss.objective)
        w = _rebuild(weightings.REGISTRY, base.weighting, loss.weighting)
        p = _rebuild(parameterizations.REGISTRY, base.parameterization, loss.parameterization)
        s = _schedule(base.schedule, loss.schedule)
        if w is base.weighting and p is base.parameterization:
            obj = base.with_schedule(s)
        else:
            obj = Objective(w, s, p, name=f"{base.name}+custom")
    else:
        if loss.weighting.name is None:
            raise OptionError("loss.objective is null, so loss.weighting.name must be set")
        w = weightings.get(loss.weighting.name, **loss.weighting.params)
        p = parameterizations.get(loss.parameterization.name or "eps", **loss.parameterization.params)
        obj = Objective(w, _schedule(None, loss.schedule), p, name=loss.weighting.name)
    s = obj.schedule
    if not (math.isfinite(s.logsnr_min) and math.isfinite(s.logsnr_max)):
        raise OptionError(f"loss.schedule: training needs finite endpoints, got [{s.logsnr_min}, {s.logsnr_max}]")
    if loss.adaptive.enabled:
        a = loss.adaptive
        try:
            obj = obj.with_schedule(AdaptiveSchedule(s.logsnr_min, s.logsnr_max, a.bins, a.decay, a.floor))
        except ValueError as exc:
            raise OptionError(f"loss.adaptive: {exc}") from None
    return obj


# ---- data and network --------------------------------------------------------------------------------------

def build_dataset(data: DataConfig, **overrides: Any) -> Any:
    """``diffusion_objectives.data.get(data.name, **data.params, **overrides)``."""

    return data_module.get(data.name, **(data.params | overrides))


def complete_network_params(network: NetworkConfig, dataset: Any, seed: int) -> NetworkConfig:
    """A copy of ``network`` whose params include the shape parameters the network accepts but the config
    left out, read from ``dataset`` (``dim``, ``in_channels``, ``resolution``, ``num_classes``), and the
    initialisation ``seed`` (derived from the run's seed). The result is what the resolved config stores,
    so a checkpoint rebuilds its network without the data."""

    accepted = networks.REGISTRY.parameters(network.name)
    shape = tuple(dataset.shape)
    inferred: dict[str, Any] = {
        "dim": math.prod(shape),
        "in_channels": shape[0],
        "resolution": shape[-1],
        "num_classes": int(dataset.num_classes) if network.conditional else 0,
        "seed": derive_seed("network-init", seed),
    }
    if network.conditional and not dataset.num_classes:
        raise OptionError(f"network.conditional is true but dataset {dataset.name!r} has no labels")
    params = dict(network.params)
    for k, v in inferred.items():
        if k in accepted and k not in params:
            params[k] = v
    params = networks.recorded_defaults(network.name) | params
    return NetworkConfig(network.name, params, network.conditional, network.label_dropout)


def build_network(network: NetworkConfig) -> torch.nn.Module:
    """``diffusion_objectives.networks.get(network.name, **network.params)``."""

    return networks.get(network.name, **network.params)


def check_names(cfg: Any) -> None:
    """Fail fast (before any data is loaded) on unknown dataset/network names or parameters and on a loss
    that cannot be built; raises :class:`OptionError` naming the key."""

    for key, registry, comp in (("data", data_module.REGISTRY, cfg.data), ("network", networks.REGISTRY,
                                                                             cfg.network)):
        try:
            accepted = registry.parameters(comp.name)
        except OptionError as exc:
            raise OptionError(f"{key}.name: {exc}") from None
        unknown = sorted(set(comp.params) - set(accepted))
        if unknown:
            raise OptionError(f"{key}.params: unknown parameter(s) {', '.join(unknown)} for {registry.kind} "
                              f"{comp.name!r}; allowed: {', '.join(accepted)}")
    try:
        build_objective(cfg.loss)
    except OptionError as exc:
        msg = str(exc)
        raise OptionError(msg if msg.startswith("loss") else f"loss: {msg}") from None
