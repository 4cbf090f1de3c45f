"""Typed training configuration: dataclasses, named presets, YAML, ``--set`` overrides and resume diffs.

A run is described by one :class:`TrainConfig`. It is resolved as in EDM2's ``train_edm2.py``: a named preset
(:data:`PRESETS`), then an optional YAML file, then the command-line flags, then ``--set KEY=VALUE``
overrides, each replacing fields of the previous. Unknown keys and values of the wrong type are
:class:`~diffusion_objectives.errors.OptionError` naming the key. Units are in the field names:
``*_images`` count training images (examples), everything else in ``run`` counts optimizer steps.

Registry components (``data``, ``network``, ``loss.weighting``, ``loss.schedule``,
``loss.parameterization``) are a ``name`` plus free ``params`` that the registry validates; the
shorthand ``--set loss.weighting.bias=2`` means ``--set loss.weighting.params.bias=2``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import OptionError
from ..phema import SIGMA_REL_MAX
from .precision import PRECISIONS

__all__ = [
    "Component",
    "DataConfig",
    "NetworkConfig",
    "AdaptiveConfig",
    "LossConfig",
    "OptimConfig",
    "EMAConfig",
    "RunConfig",
    "DebugConfig",
    "TrainConfig",
    "PRESETS",
    "preset",
    "preset_names",
    "from_dict",
    "to_dict",
    "load_yaml",
    "dump_yaml",
    "apply_overrides",
    "resolve",
    "validate",
    "diff",
    "format_diff",
    "GUARDED_KEYS",
]


# ---- the dataclasses -------------------------------------------------------------------------------

@dataclass
class Component:
    """A registry entry: ``name`` (``None`` = the objective preset's own) and keyword ``params``."""

    name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """``diffusion_objectives.data.get(name, **params)`` (e.g. ``params: {split: train, hflip: true}``);
    images the dataset marks ``hflip`` are flipped at random (one draw per image and step)."""

    name: str = "ring"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class NetworkConfig:
    """``diffusion_objectives.networks.get(name, **params)``. Shape parameters the network needs and the
    config leaves out (``dim``, ``in_channels``, ``resolution``, ``num_classes``) are filled in from the
    dataset at the start of training. ``conditional`` feeds the labels (classifier-free guidance training:
    each label is replaced by the null label with probability ``label_dropout``)."""

    name: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False
    label_dropout: float = 0.1


@dataclass
class AdaptiveConfig:
    """KG23's adaptive schedule (docs/theory.md, "The adaptive schedule"): ``bins`` equal-width bins,
    EMA ``decay`` per step, uniform mixing ``floor``. Replaces the objective's schedule and keeps its endpoints."""

    enabled: bool = False
    bins: int = 100
    decay: float = 0.99
    floor: float = 0.05


@dataclass
class UncertaintyConfig:
    """EDM2's learned uncertainty weighting (:mod:`diffusion_objectives.uncertainty`): a log-variance head u(λ)
    with ``channels`` Fourier features of ``bandwidth``, trained jointly; the loss becomes ℓ_w e^{−u} + D u
    (docs/objectives.md, "Learned uncertainty weighting")."""

    enabled: bool = False
    channels: int = 128
    bandwidth: float = 1.0


@dataclass
class LossConfig:
    """The objective: a preset of :mod:`diffusion_objectives.objectives` (or ``None`` to build it only
    from the three components), with component overrides. ``stratified`` draws the global batch's λ on
    VDM21's antithetic grid. ``log_bins``: number of equal-width λ-bins for the logged loss per λ."""

    objective: str | None = "sigmoid"
    weighting: Component = field(default_factory=Component)
    schedule: Component = field(default_factory=Component)
    parameterization: Component = field(default_factory=Component)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    stratified: bool = False
    log_bins: int = 10


@dataclass
class OptimConfig:
    """AdamW. The learning rate ramps up linearly over ``warmup_images`` (EDM22) and, if
    ``decay_images`` is set, decays as lr/√(images/decay_images) after it (EDM2). ``grad_clip``: maximum
    global gradient norm (``None`` = no clipping)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_images: int = 0
    decay_images: int | None = None
    grad_clip: float | None = 1.0


@dataclass
class EMAConfig:
    """EMA of the weights with a half-life in images: β = 0.5^(batch/half_life). With
    ``rampup_ratio`` r the half-life is min(half_life_images, r · images_seen) (EDM22).
    ``posthoc_sigma_rels`` (empty: off): EDM2's power-function EMAs tracked at these relative widths, saved
    every ``snapshot_every`` steps (and at the end) into ``RUN/phema/`` for ``diffobj ema`` (docs/ema.md)."""

    half_life_images: float = 50_000.0
    rampup_ratio: float | None = 0.05
    posthoc_sigma_rels: list[float] = field(default_factory=list)
    snapshot_every: int = 0


@dataclass
class RunConfig:
    """Length, batch and bookkeeping. ``steps``: total optimizer steps; ``batch_size``: images per step
    over all processes (split into ``grad_accum`` micro-batches per process). Intervals are in steps;
    0 disables periodic checkpoints/samples (a finished run always writes a final checkpoint).
    ``nonfinite``: ``stop`` (default) or ``skip`` a step whose loss or gradient is not finite, at most
    ``max_consecutive_skips`` in a row. ``device``: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    ``precision``: ``auto`` (bf16 autocast only where the device computes bf16 natively, else fp32), ``fp32``
    or ``bf16`` (see :mod:`diffusion_objectives.training.precision`); the deprecated ``bf16: true/false``
    means ``precision: bf16/fp32``."""

    steps: int = 2000
    batch_size: int = 1024
    grad_accum: int = 1
    precision: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 1000
    num_samples: int = 64
    sample_steps: int = 64
    log_every: int = 10
    nonfinite: str = "stop"
    max_consecutive_skips: int = 10
    tensorboard: bool = False


@dataclass
class DebugConfig:
    """Fault injection for tests: make the loss of process ``nonfinite_rank`` (``None``: all) NaN at
    step ``nonfinite_step``. Never part of the resume check."""

    nonfinite_step: int | None = None
    nonfinite_rank: int | None = None


@dataclass
class TrainConfig:
    """One training run. ``seed`` determines the model initialisation, data order and all noise."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    run: RunConfig = field(default_factory=RunConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


# Changing these on resume is refused unless overridden: they change what is being trained.
GUARDED_KEYS = ("data", "network", "loss", "run.batch_size")

_COMPONENT_PATHS = ("data", "network", "loss.weighting", "loss.schedule", "loss.parameterization")


# ---- presets ------------------------------------------------------------------------------------------

def _network(name: str, **overrides: Any) -> NetworkConfig:
    """A size preset of :mod:`diffusion_objectives.networks` without the data-dependent parameters (filled
    in from the dataset at the start of training)."""
    from .. import networks

    net, params = networks.preset(name, **overrides)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()
              if k not in ("dim", "in_channels", "resolution", "num_classes")}
    return NetworkConfig(net, params, conditional=bool(networks.PRESETS[name][1].get("num_classes")))


def _toy2d() -> TrainConfig:
    """8-Gaussian ring in 2-D, the ``toy-mlp`` network (4 × 256 residual MLP): minutes on a CPU."""
    return TrainConfig(
        data=DataConfig("ring", {"n": 65536}),
        network=_network("toy-mlp"),
        loss=LossConfig(objective="sigmoid"),
        optim=OptimConfig(lr=2e-3, warmup_images=100_000, grad_clip=1.0),
        ema=EMAConfig(half_life_images=500_000, rampup_ratio=0.05),
        run=RunConfig(steps=3000, batch_size=1024, checkpoint_every=1000, sample_every=1000,
                      num_samples=4096, sample_steps=64, log_every=10),
    )


def _digits() -> TrainConfig:
    """scikit-learn's 8×8 digits (1438 training images, 17 grey levels), the class-conditional ``digits``
    U-Net, batch 128: 2000 steps, tens of minutes on 2 CPU cores."""
    return TrainConfig(
        data=DataConfig("digits", {"split": "train"}),
        network=_network("digits"),
        loss=LossConfig(objective="sigmoid"),
        optim=OptimConfig(lr=1e-3, warmup_images=50_000, grad_clip=1.0),
        ema=EMAConfig(half_life_images=200_000, rampup_ratio=0.05),
        run=RunConfig(steps=2000, batch_size=128, checkpoint_every=500, sample_every=500,
                      num_samples=100, sample_steps=64, log_every=10),
    )


def _fashion_mnist() -> TrainConfig:
    """Fashion-MNIST 28×28 (60k images), the class-conditional ``fashion-mnist`` U-Net, batch 64: 20k steps,
    hours on a CPU (see docs/training.md for the measured speed)."""
    return TrainConfig(
        data=DataConfig("fashion-mnist", {"split": "train"}),
        network=_network("fashion-mnist"),
        loss=LossConfig(objective="sigmoid"),
        optim=OptimConfig(lr=5e-4, warmup_images=200_000, grad_clip=1.0),
        ema=EMAConfig(half_life_images=500_000, rampup_ratio=0.05),
        run=RunConfig(steps=20_000, batch_size=64, checkpoint_every=1000, sample_every=2500,
                      num_samples=100, sample_steps=64, log_every=50),
    )


def _imagenet64_kg23() -> TrainConfig:
    """GPU preset for class-conditional ImageNet 64×64 at KG23/EDM scale (docs/training.md labels each
    setting with its source).

    As EDM22's published ImageNet-64 command (``--arch=adm --batch=4096 --lr=1e-4 --ema=50 --dropout=0.10
    --fp16=1 --ls=100``, 2.5 Gimg, EDM's default 10 Mimg lr ramp-up and EMA ramp-up ratio 0.05): the
    ``imagenet64-kg23`` network (ADM: 192 channels, multipliers 1-2-3-4, 3 residual blocks per level,
    attention at 32/16/8, dropout 0.1), Adam without weight decay at lr 1e-4, no gradient clipping, EMA
    half-life 50 Mimg, class labels always fed (no label dropout). This project's choices: KG23's global
    batch 2048 (1.22 M steps for 2.5 Gimg), KG23's EDM-monotonic weighting with the adaptive noise schedule
    (KG23 §5), and bf16 autocast (``precision: auto`` on a bf16 GPU) in place of fp16 with loss scaling 100."""
    network = _network("imagenet64-kg23")
    network.label_dropout = 0.0
    return TrainConfig(
        data=DataConfig("edm-zip", {"path": "datasets/imagenet-64x64.zip", "hflip": False}),
        network=network,
        loss=LossConfig(objective="edm-monotonic", adaptive=AdaptiveConfig(enabled=True, bins=100,
                                                                          decay=0.99, floor=0.05)),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0, warmup_images=10_000_000,
                          grad_clip=None),
        ema=EMAConfig(half_life_images=50_000_000, rampup_ratio=0.05),
        run=RunConfig(steps=1_220_000, batch_size=2048, precision="auto", device="cuda", checkpoint_every=5000,
                      keep_checkpoints=3, sample_every=20_000, num_samples=64, sample_steps=128,
                      log_every=100),
    )


PRESETS: dict[str, tuple[Callable[[], TrainConfig], str]] = {
    "toy2d": (_toy2d, "2-D Gaussian-mixture ring, MLP (CPU, minutes)"),
    "digits": (_digits, "8×8 digits, small class-conditional U-Net, batch 128 (CPU, tens of minutes)"),
    "fashion-mnist": (_fashion_mnist, "Fashion-MNIST 28×28, class-conditional U-Net, batch 64 (CPU, hours)"),
    "imagenet64-kg23": (_imagenet64_kg23, "ImageNet 64×64 at KG23/EDM scale, batch 2048 (GPU cluster)"),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> TrainConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise OptionError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return PRESETS[name][0]()


# ---- dict ⇄ dataclass with type checking -----------------------------------------------------------

def to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists (tuples become lists), ready for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}.get(tp.__name__,
                                                                                          tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "mapping"
    return str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked (and int → float widened) against annotation ``tp``; errors name ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except OptionError:
                pass
        raise OptionError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise OptionError(f"config key {key!r} must be a mapping of {_keys(tp)}, got {value!r}")
        return from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise OptionError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise OptionError(f"config key {key!r} must be a mapping with string keys, got {value!r}")
        return copy.deepcopy(dict(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise OptionError(f"config key {key!r} must be a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)  # 1e6 written for a step count
            raise OptionError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise OptionError(f"config key {key!r} must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping; missing keys keep their defaults. Unknown keys and
    wrong types raise :class:`OptionError` naming the dotted key."""
    if not isinstance(data, Mapping):
        raise OptionError(f"config{' key ' + repr(prefix) if prefix else ''} must be a mapping, got {data!r}")
    data = _deprecated_keys(prefix, data)
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"in {prefix!r} " if prefix else ""
        raise OptionError(f"unknown config key {_join(prefix, str(unknown[0]))!r} {where}(allowed: {_keys(cls)})")
    kwargs = {k: _convert(v, hints[k], _join(prefix, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _deprecated(key: str, value: Any) -> tuple[str, Any]:
    """``(key, value)`` with a deprecated key replaced by its successor (with a FutureWarning):
    ``run.bf16: true/false`` → ``run.precision: bf16/fp32``. Other keys pass unchanged."""
    if key != "run.bf16":
        return key, value
    precision = "bf16" if _convert(value, bool, key) else "fp32"
    warnings.warn(f"config key 'run.bf16' is deprecated: run.bf16={str(value).lower()} is read as "
                  f"run.precision={precision} (auto, fp32 or bf16; auto picks bf16 only where it is fast)",
                  FutureWarning, stacklevel=4)
    return "run.precision", precision


def _deprecated_keys(prefix: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` (the mapping at ``prefix``) with deprecated keys replaced (see :func:`_deprecated`); the
    deprecated key wins over its successor (it was written later: a YAML file or ``--set`` over a preset)."""
    if prefix != "run" or "bf16" not in data:
        return data
    out = {k: v for k, v in data.items() if k != "bf16"}
    out["precision"] = _deprecated("run.bf16", data["bf16"])[1]
    return out


# ---- YAML ---------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML: ``2`` → 2, ``1e-3`` → 0.001, ``true``, ``null``, ``[1, 2]``, else a string."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (not yet validated)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise OptionError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); expected a YAML "
                          "mapping") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise OptionError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


# ---- overrides and resolution ---------------------------------------------------------------------------

def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Recursive update of plain dicts; ``params`` mappings are merged key by key too, unless the update
    names a different component (then its params replace the old ones)."""
    out = dict(base)
    if prefix in _COMPONENT_PATHS and "name" in update and update["name"] != base.get("name"):
        out["params"] = {}
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, _join(prefix, k))
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A new config with ``KEY=VALUE`` overrides applied in order (values parsed as YAML).

    ``KEY`` is a dotted path (``run.steps``, ``optim.betas``, ``loss.adaptive.enabled``); below a
    registry component any other key is one of its ``params`` (``loss.weighting.bias=2``,
    ``network.hidden=64``, ``data.n=1000``). ``KEY=null`` on a params entry removes it. Setting a
    component's ``name`` to another value clears its params, so give the params after the name."""
    d = to_dict(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionError(f"--set expects KEY=VALUE, got {item!r}")
        _set_path(d, *_deprecated(key, parse_value(text)))
    return from_dict(TrainConfig, d)


def _set_path(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cls: type = TrainConfig
    node = d
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if cls is dict:  # inside free params: create nested mappings as needed
            if i == len(parts) - 1:
                if value is None:
                    node.pop(part, None)
                else:
                    node[part] = value
                return
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OptionError(f"config key {path!r} is not a mapping")
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        parent = ".".join(parts[:i])
        if part not in names:
            if parent in _COMPONENT_PATHS:  # shorthand for params
                cls, node = dict, node.setdefault("params", {})
                if i == len(parts) - 1:
                    if value is None:
                        node.pop(part, None)
                    else:
                        node[part] = value
                    return
                node = node.setdefault(part, {})
                continue
            raise OptionError(f"unknown config key {path!r}; {parent or 'the top level'} has: {_keys(cls)}")
        if i == len(parts) - 1:
            if part == "name" and parent in _COMPONENT_PATHS and value != node.get("name"):
                node["params"] = {}  # the old component's parameters do not apply to the new one
            node[part] = value
            return
        tp = _hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            cls, node = tp, node[part]
        elif typing.get_origin(tp) is dict or tp is dict:
            cls, node = dict, node[part]
        else:
            raise OptionError(f"config key {path!r} is a {_type_name(tp)}, it has no sub-key {parts[i + 1]!r}")


def validate(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Range checks that types cannot express; raises :class:`OptionError` naming the key."""
    r, o, e, a = cfg.run, cfg.optim, cfg.ema, cfg.loss.adaptive

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise OptionError(f"config key {key!r} must be {what}, got {value!r}")

    need(cfg.seed >= 0, "seed", "a non-negative integer", cfg.seed)
    need(r.steps >= 0, "run.steps", "a non-negative integer (total optimizer steps)", r.steps)
    need(r.batch_size >= 1, "run.batch_size", "a positive integer (images per step)", r.batch_size)
    need(r.grad_accum >= 1, "run.grad_accum", "a positive integer", r.grad_accum)
    per = world_size * r.grad_accum
    if r.batch_size % per:
        raise OptionError(f"run.batch_size={r.batch_size} is not divisible by world size × grad_accum "
                          f"= {world_size} × {r.grad_accum}")
    need(r.checkpoint_every >= 0, "run.checkpoint_every", "a non-negative integer (steps; 0 = only at the end)",
         r.checkpoint_every)
    need(r.keep_checkpoints >= 1, "run.keep_checkpoints", "a positive integer", r.keep_checkpoints)
    need(r.sample_every >= 0, "run.sample_every", "a non-negative integer (steps; 0 = never)", r.sample_every)
    need(r.num_samples >= 1, "run.num_samples", "a positive integer", r.num_samples)
    need(r.sample_steps >= 1, "run.sample_steps", "a positive integer", r.sample_steps)
    need(r.log_every >= 1, "run.log_every", "a positive integer (steps)", r.log_every)
    need(r.nonfinite in ("stop", "skip"), "run.nonfinite", "'stop' or 'skip'", r.nonfinite)
    need(r.max_consecutive_skips >= 1, "run.max_consecutive_skips", "a positive integer", r.max_consecutive_skips)
    need(r.precision in PRECISIONS, "run.precision", "'auto', 'fp32' or 'bf16'", r.precision)
    need(r.device in ("auto", "cpu", "cuda") or r.device.startswith("cuda:"), "run.device",
         "'auto', 'cpu' or 'cuda'", r.device)
    need(o.lr > 0 and o.lr < float("inf"), "optim.lr", "a positive number", o.lr)
    need(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "two numbers in [0, 1)", list(o.betas))
    need(o.eps > 0, "optim.eps", "a positive number", o.eps)
    need(o.weight_decay >= 0, "optim.weight_decay", "a non-negative number", o.weight_decay)
    need(o.warmup_images >= 0, "optim.warmup_images", "a non-negative integer (images)", o.warmup_images)
    need(o.decay_images is None or o.decay_images > 0, "optim.decay_images", "a positive integer or null",
         o.decay_images)
    need(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "a positive number or null", o.grad_clip)
    need(e.half_life_images >= 0, "ema.half_life_images", "a non-negative number (images)", e.half_life_images)
    need(e.rampup_ratio is None or e.rampup_ratio > 0, "ema.rampup_ratio", "a positive number or null",
         e.rampup_ratio)
    need(a.bins >= 1, "loss.adaptive.bins", "a positive integer", a.bins)
    need(0.0 <= a.decay < 1.0, "loss.adaptive.decay", "a number in [0, 1)", a.decay)
    need(0.0 < a.floor <= 1.0, "loss.adaptive.floor", "a number in (0, 1]", a.floor)
    u = cfg.loss.uncertainty
    need(u.channels >= 1, "loss.uncertainty.channels", "a positive integer", u.channels)
    need(math.isfinite(u.bandwidth) and u.bandwidth > 0, "loss.uncertainty.bandwidth", "a positive number",
         u.bandwidth)
    need(all(0.0 < s < SIGMA_REL_MAX for s in e.posthoc_sigma_rels)
         and len(set(e.posthoc_sigma_rels)) == len(e.posthoc_sigma_rels), "ema.posthoc_sigma_rels",
         f"distinct relative widths in (0, {SIGMA_REL_MAX:.4f})", e.posthoc_sigma_rels)
    need(e.snapshot_every >= 0, "ema.snapshot_every", "a non-negative integer (steps; 0 = only at the end)",
         e.snapshot_every)
    need(cfg.loss.log_bins >= 1, "loss.log_bins", "a positive integer", cfg.loss.log_bins)
    need(0.0 <= cfg.network.label_dropout < 1.0, "network.label_dropout", "a number in [0, 1)",
         cfg.network.label_dropout)
    need(bool(cfg.data.name), "data.name", "a dataset name", cfg.data.name)
    need(bool(cfg.network.name), "network.name", "a network name", cfg.network.name)
    if cfg.loss.objective is None and cfg.loss.weighting.name is None:
        raise OptionError("loss.objective is null, so loss.weighting.name must be set")
    return cfg


def resolve(preset_name: str | None = None, config_file: str | Path | None = None, *,
            objective: str | None = None, steps: int | None = None, batch_size: int | None = None,
            seed: int | None = None, checkpoint_every: int | None = None,
            overrides: Sequence[str] = (), world_size: int = 1) -> TrainConfig:
    """Preset → YAML file → flags → ``--set`` overrides, validated (EDM2 style: the single place a
    config is assembled). ``objective`` selects an objective preset and clears the component overrides
    that came before it. ``world_size`` is used to check that the batch splits evenly."""
    cfg = preset(preset_name) if preset_name is not None else TrainConfig()
    if config_file is not None:
        cfg = from_dict(TrainConfig, _merge(to_dict(cfg), load_yaml(config_file)))
    if objective is not None:
        cfg.loss.objective = objective
        cfg.loss.weighting, cfg.loss.schedule, cfg.loss.parameterization = Component(), Component(), Component()
    for name, value in (("run.steps", steps), ("run.batch_size", batch_size), ("seed", seed),
                        ("run.checkpoint_every", checkpoint_every)):
        if value is not None:
            cfg = apply_overrides(cfg, [f"{name}={value}"])
    cfg = apply_overrides(cfg, overrides)
    return validate(cfg, world_size)


# ---- diffs (resume check) -------------------------------------------------------------------------------

def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, _join(prefix, str(k))))
        return out
    return {prefix: d}


def _with_defaults(cfg: TrainConfig | Mapping[str, Any]) -> Any:
    """A saved config (mapping) with the keys it lacks at their defaults; as it is if it does not parse."""
    if not isinstance(cfg, Mapping):
        return cfg
    try:
        return from_dict(TrainConfig, cfg)
    except OptionError:
        return cfg


def diff(old: TrainConfig | Mapping[str, Any], new: TrainConfig | Mapping[str, Any],
         keys: Sequence[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs, restricted to keys under ``keys``
    (prefixes such as ``"loss"`` or ``"run.batch_size"``) when given. Keys a saved config lacks (written
    before they existed) read as their defaults."""
    a, b = _flatten(to_dict(_with_defaults(old))), _flatten(to_dict(_with_defaults(new)))
    out = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if va != vb and (keys is None or any(k == p or k.startswith(p + ".") for p in keys)):
            out[k] = (va, vb)
    return out


def format_diff(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
