"""Typed training configuration: schemas, named presets, YAML, overrides and resume diffs.

A run is described by one :class:`TrainConfig`. It is resolved as in EDM2's ``train_edm2.py``: a named preset
(:data:`PRESETS`, a base config plus a table of overrides), then an optional YAML file, then typed flags, then
``overrides`` (a mapping ``{dotted key: value}``), each replacing fields of the previous. The sections are
pydantic dataclasses: unknown keys, values of the wrong type, a value outside its ``Literal`` choices or its
range are :class:`~diffusion_objectives.errors.OptionError` naming the dotted key. Units are in the field
names: ``*_images`` count training images (examples), everything else in ``run`` counts optimizer steps.

Registry components (``data``, ``network``, ``loss.weighting``, ``loss.schedule``,
``loss.parameterization``) are a ``name`` plus free ``params`` that the registry validates; the
shorthand key ``loss.weighting.bias`` means ``loss.weighting.params.bias``. Text (``KEY=VALUE`` items, YAML
files) is turned into typed values by :func:`parse_overrides` and :func:`load_yaml` only.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import pydantic
import yaml
from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .. import networks
from ..errors import OptionError
from .phema import SIGMA_REL_MAX

__all__ = [
    "schema",
    "Int",
    "Float",
    "Component",
    "DataConfig",
    "NetworkConfig",
    "AdaptiveConfig",
    "UncertaintyConfig",
    "LossConfig",
    "OptimConfig",
    "EMAConfig",
    "RunConfig",
    "TrainConfig",
    "Preset",
    "PRESETS",
    "preset",
    "preset_names",
    "from_dict",
    "to_dict",
    "option_error",
    "parse_value",
    "parse_overrides",
    "merge_overrides",
    "load_yaml",
    "dump_yaml",
    "apply_overrides",
    "resolve",
    "validate",
    "diff",
    "format_diff",
    "GUARDED_KEYS",
]


# ---- value types: strict (no string → number, no 1 → true), integral floats read as integers --------------

def _integral(value: Any) -> Any:
    """``1e6`` written for a step count is the integer 1000000 (exactly representable floats only)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _pair(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("must be list of 2 numbers")
    return tuple(value)


def _distinct(values: list[float]) -> list[float]:
    if len(set(values)) != len(values):
        raise ValueError("must list distinct values")
    return values


def _device(value: str) -> str:
    if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return value


Int = Annotated[StrictInt, BeforeValidator(_integral)]
NonNegInt = Annotated[Int, Field(ge=0)]
PosInt = Annotated[Int, Field(ge=1)]
Float = StrictFloat  # an integer is widened to a float; booleans and strings are refused
PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
UnitFloat = Annotated[Float, Field(ge=0, lt=1)]  # [0, 1)
Name = Annotated[StrictStr, Field(min_length=1)]
Params = Annotated[dict[StrictStr, Any], AfterValidator(copy.deepcopy)]

_SCHEMA = pydantic.ConfigDict(extra="forbid")
schema = pydantic.dataclasses.dataclass(config=_SCHEMA)  # a config section: a dataclass validated on construction


# ---- the schema -----------------------------------------------------------------------------------------------

@schema
class Component:
    """A registry entry: ``name`` (``None`` = the objective preset's own) and keyword ``params``."""

    name: StrictStr | None = None
    params: Params = field(default_factory=dict)


@schema
class DataConfig:
    """``diffusion_objectives.data.get(name, **params)`` (e.g. ``params: {split: train, hflip: true}``);
    images the dataset marks ``hflip`` are flipped at random (one draw per image and step)."""

    name: Name = "ring"
    params: Params = field(default_factory=dict)


@schema
class NetworkConfig:
    """``diffusion_objectives.networks.get(name, **params)``. Shape parameters the network needs and the
    config leaves out (``dim``, ``in_channels``, ``resolution``, ``num_classes``) are filled in from the
    dataset at the start of training. ``conditional`` feeds the labels (classifier-free guidance training:
    each label is replaced by the null label with probability ``label_dropout``)."""

    name: Name = "mlp"
    params: Params = field(default_factory=dict)
    conditional: StrictBool = False
    label_dropout: UnitFloat = 0.1


@schema
class AdaptiveConfig:
    """KG23's adaptive schedule (docs/theory.md, "The adaptive schedule"): ``bins`` equal-width bins,
    EMA ``decay`` per step, uniform mixing ``floor``. Replaces the objective's schedule and keeps its endpoints."""

    enabled: StrictBool = False
    bins: PosInt = 100
    decay: UnitFloat = 0.99
    floor: Annotated[Float, Field(gt=0, le=1)] = 0.05


@schema
class UncertaintyConfig:
    """EDM2's learned uncertainty weighting (:mod:`diffusion_objectives.training.uncertainty`): a log-variance head u(λ)
    with ``channels`` Fourier features of ``bandwidth``, trained jointly; the loss becomes ℓ_w e^{−u} + D u
    (docs/objectives.md, "Learned uncertainty weighting")."""

    enabled: StrictBool = False
    channels: PosInt = 128
    bandwidth: Annotated[Float, Field(gt=0, allow_inf_nan=False)] = 1.0


@schema
class LossConfig:
    """The objective: a preset of :mod:`diffusion_objectives.core.objectives` (or ``None`` to build it only
    from the three components), with component overrides. ``stratified`` draws the global batch's λ on
    VDM21's antithetic grid. ``log_bins``: number of equal-width λ-bins for the logged loss per λ."""

    objective: StrictStr | None = "sigmoid"
    weighting: Component = field(default_factory=Component)
    schedule: Component = field(default_factory=Component)
    parameterization: Component = field(default_factory=Component)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    stratified: StrictBool = False
    log_bins: PosInt = 10


@schema
class OptimConfig:
    """AdamW. The learning rate ramps up linearly over ``warmup_images`` (EDM22) and, if
    ``decay_images`` is set, decays as lr/√(images/decay_images) after it (EDM2). ``grad_clip``: maximum
    global gradient norm (``None`` = no clipping)."""

    lr: Annotated[Float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    betas: Annotated[tuple[UnitFloat, UnitFloat], BeforeValidator(_pair)] = (0.9, 0.999)
    eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.0
    warmup_images: NonNegInt = 0
    decay_images: PosInt | None = None
    grad_clip: PosFloat | None = 1.0


@schema
class EMAConfig:
    """EMA of the weights with a half-life in images: β = 0.5^(batch/half_life). With
    ``rampup_ratio`` r the half-life is min(half_life_images, r · images_seen) (EDM22).
    ``posthoc_sigma_rels`` (empty: off): EDM2's power-function EMAs tracked at these distinct relative widths in
    (0, SIGMA_REL_MAX), saved every ``snapshot_every`` steps (and at the end) into ``RUN/phema/`` for
    ``diffobj ema`` (docs/ema.md)."""

    half_life_images: NonNegFloat = 50_000.0
    rampup_ratio: PosFloat | None = 0.05
    posthoc_sigma_rels: Annotated[list[Annotated[Float, Field(gt=0, lt=SIGMA_REL_MAX)]],
                                  AfterValidator(_distinct)] = field(default_factory=list)
    snapshot_every: NonNegInt = 0


@schema
class RunConfig:
    """Length, batch and bookkeeping. ``steps``: total optimizer steps; ``batch_size``: images per step
    over all processes (split into ``grad_accum`` micro-batches per process). Intervals are in steps;
    0 disables periodic checkpoints/samples (a finished run always writes a final checkpoint).
    ``nonfinite``: ``stop`` (default) or ``skip`` a step whose loss or gradient is not finite, at most
    ``max_consecutive_skips`` in a row. ``device``: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    ``precision``: ``auto`` (bf16 autocast only where the device computes bf16 natively, else fp32), ``fp32``
    or ``bf16`` (see :mod:`diffusion_objectives.training.precision`); the deprecated ``bf16: true/false``
    means ``precision: bf16/fp32``."""

    steps: NonNegInt = 2000
    batch_size: PosInt = 1024
    grad_accum: PosInt = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Annotated[StrictStr, AfterValidator(_device)] = "auto"
    checkpoint_every: NonNegInt = 500
    keep_checkpoints: PosInt = 2
    sample_every: NonNegInt = 1000
    num_samples: PosInt = 64
    sample_steps: PosInt = 64
    log_every: PosInt = 10
    nonfinite: Literal["stop", "skip"] = "stop"
    max_consecutive_skips: PosInt = 10
    tensorboard: StrictBool = False


@schema
class TrainConfig:
    """One training run. ``seed`` determines the model initialisation, data order and all noise."""

    seed: NonNegInt = 0
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Changing these on resume is refused unless overridden: they change what is being trained.
GUARDED_KEYS = ("data", "network", "loss", "run.batch_size")

_COMPONENT_PATHS = ("data", "network", "loss.weighting", "loss.schedule", "loss.parameterization")


# ---- presets: the default config plus a table of overrides ----------------------------------------------------

class Preset(NamedTuple):
    """A named training preset: ``network``, a size preset of :mod:`diffusion_objectives.networks`, and
    ``overrides`` (``{dotted key: value}``, as :func:`apply_overrides` takes them) of :class:`TrainConfig`'s
    defaults."""

    description: str
    network: str
    overrides: Mapping[str, Any]


# imagenet64-kg23: as EDM22's published ImageNet-64 command (``--arch=adm --batch=4096 --lr=1e-4 --ema=50
# --dropout=0.10 --fp16=1 --ls=100``, 2.5 Gimg, EDM's default 10 Mimg lr ramp-up and EMA ramp-up ratio 0.05):
# the ``imagenet64-kg23`` network (ADM: 192 channels, multipliers 1-2-3-4, 3 residual blocks per level,
# attention at 32/16/8, dropout 0.1), Adam without weight decay at lr 1e-4, no gradient clipping, EMA half-life
# 50 Mimg, class labels always fed (no label dropout). This project's choices (docs/training.md labels each
# setting with its source): KG23's global batch 2048 (1.22 M steps for 2.5 Gimg), KG23's EDM-monotonic
# weighting with the adaptive noise schedule (KG23 §5), and bf16 autocast (``precision: auto`` on a bf16 GPU)
# in place of fp16 with loss scaling 100.
PRESETS: dict[str, Preset] = {
    "toy2d": Preset("2-D Gaussian-mixture ring, MLP (CPU, minutes)", "toy-mlp", {
        "data": {"name": "ring", "params": {"n": 65536}},
        "optim.lr": 2e-3, "optim.warmup_images": 100_000, "ema.half_life_images": 500_000,
        "run.steps": 3000, "run.batch_size": 1024, "run.checkpoint_every": 1000, "run.sample_every": 1000,
        "run.num_samples": 4096, "run.log_every": 10}),
    "digits": Preset("8×8 digits, small class-conditional U-Net, batch 128 (CPU, tens of minutes)", "digits", {
        "data": {"name": "digits", "params": {"split": "train"}},
        "optim.lr": 1e-3, "optim.warmup_images": 50_000, "ema.half_life_images": 200_000,
        "run.steps": 2000, "run.batch_size": 128, "run.checkpoint_every": 500, "run.sample_every": 500,
        "run.num_samples": 100, "run.log_every": 10}),
    "fashion-mnist": Preset("Fashion-MNIST 28×28, class-conditional U-Net, batch 64 (CPU, hours)", "fashion-mnist", {
        "data": {"name": "fashion-mnist", "params": {"split": "train"}},
        "optim.lr": 5e-4, "optim.warmup_images": 200_000, "ema.half_life_images": 500_000,
        "run.steps": 20_000, "run.batch_size": 64, "run.checkpoint_every": 1000, "run.sample_every": 2500,
        "run.num_samples": 100, "run.log_every": 50}),
    "imagenet64-kg23": Preset("ImageNet 64×64 at KG23/EDM scale, batch 2048 (GPU cluster)", "imagenet64-kg23", {
        "data": {"name": "edm-zip", "params": {"path": "datasets/imagenet-64x64.zip", "hflip": False}},
        "network.label_dropout": 0.0, "loss.objective": "edm-monotonic", "loss.adaptive.enabled": True,
        "optim.lr": 1e-4, "optim.warmup_images": 10_000_000, "optim.grad_clip": None,
        "ema.half_life_images": 50_000_000,
        "run.steps": 1_220_000, "run.batch_size": 2048, "run.device": "cuda", "run.checkpoint_every": 5000,
        "run.keep_checkpoints": 3, "run.sample_every": 20_000, "run.num_samples": 64, "run.sample_steps": 128,
        "run.log_every": 100}),
}


def _network(name: str) -> dict[str, Any]:
    """The ``network`` section of a size preset of :mod:`diffusion_objectives.networks`, without the
    data-dependent parameters (filled in from the dataset at the start of training)."""
    net, params = networks.preset(name)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()
              if k not in ("dim", "in_channels", "resolution", "num_classes")}
    return {"name": net, "params": params, "conditional": bool(networks.PRESETS[name][1].get("num_classes"))}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> TrainConfig:
    """A fresh copy of the named preset: the defaults, the preset's network, then its overrides."""
    if name not in PRESETS:
        raise OptionError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    _, network, overrides = PRESETS[name]
    return apply_overrides(TrainConfig(), {"network": _network(network), **overrides})


# ---- dict ⇄ dataclass, validation errors ----------------------------------------------------------------------

def to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists (tuples become lists), ready for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _key(loc: Sequence[Any]) -> str:
    """A pydantic error location as a dotted key: ``('optim', 'betas', 1)`` → ``optim.betas[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out = _join(out, str(part))
    return out


def _section(cls: type, loc: Sequence[Any]) -> type:
    """The schema class at ``loc`` below ``cls``."""
    for part in loc:
        cls = cls.__pydantic_fields__[part].annotation
    return cls


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "a boolean (true/false)",
             "string_type": "a string", "list_type": "list (such as [0.05, 0.1])", "dataclass_type": "a mapping",
             "dict_type": "a mapping"}


def option_error(exc: pydantic.ValidationError, cls: type, noun: str = "config key") -> OptionError:
    """The first error of a failed validation of ``cls`` as an :class:`OptionError` naming the dotted key."""
    err = exc.errors()[0]
    key, kind = _key(err["loc"]), err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        prefix = _key(err["loc"][:-1])
        allowed = ", ".join(f.name for f in dataclasses.fields(_section(cls, err["loc"][:-1])))
        return OptionError(f"unknown {noun} {key!r} {f'in {prefix!r} ' if prefix else ''}(allowed: {allowed})")
    if kind == "value_error":
        text = str(err["ctx"]["error"])
    elif kind in _EXPECTED:
        text = f"must be {_EXPECTED[kind]}"
    elif err["msg"].startswith("Input should be "):
        text = "must be " + err["msg"].removeprefix("Input should be ")
    else:
        text = f"is invalid ({err['msg'][0].lower()}{err['msg'][1:]})"
    return OptionError(f"{noun} {key!r}{' ' if text.startswith(('must', 'is')) else ': '}{text}, got {err['input']!r}")


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Schema ``cls`` built and validated from a nested mapping; missing keys keep their defaults. Unknown
    keys, wrong types and values out of range raise :class:`OptionError` naming the dotted key. A saved
    config's deprecated ``run.bf16`` is read as ``run.precision`` and its legacy ``debug`` section (test fault
    injection, no longer part of the config) is ignored."""
    if not isinstance(data, Mapping):
        raise OptionError(f"config must be a mapping, got {data!r}")
    return _validated(cls, _legacy(data) if cls is TrainConfig else data)


def _validated(cls: type, data: Mapping[str, Any]) -> Any:
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        raise option_error(exc, cls) from None


def _legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config mapping with its ``debug`` section dropped and ``run.bf16`` replaced by ``run.precision``
    (the deprecated key wins over its successor: it was written later, a YAML file or override over a preset)."""
    out = {k: v for k, v in data.items() if k != "debug"}
    run = out.get("run")
    if isinstance(run, Mapping) and "bf16" in run:
        out["run"] = {k: v for k, v in run.items() if k != "bf16"}
        out["run"]["precision"] = _deprecated("run.bf16", run["bf16"])[1]
    return out


def _deprecated(key: str, value: Any) -> tuple[str, Any]:
    """``(key, value)`` with a deprecated key replaced by its successor (with a FutureWarning):
    ``run.bf16: true/false`` → ``run.precision: bf16/fp32``. Other keys pass unchanged."""
    if key != "run.bf16":
        return key, value
    if not isinstance(value, bool):
        raise OptionError(f"config key 'run.bf16' must be a boolean (true/false), got {value!r}")
    precision = "bf16" if value else "fp32"
    warnings.warn(f"config key 'run.bf16' is deprecated: run.bf16={str(value).lower()} is read as "
                  f"run.precision={precision} (auto, fp32 or bf16; auto picks bf16 only where it is fast)",
                  FutureWarning, stacklevel=4)
    return "run.precision", precision


# ---- text: YAML files and KEY=VALUE items ---------------------------------------------------------------------

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
    """A value typed as text, read as YAML: ``2`` → 2, ``1e-3`` → 0.001, ``true``, ``null``, ``[1, 2]``, else a
    string."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` (values read by :func:`parse_value`) as an override table ``{KEY: value}``; a key
    given twice keeps its last value, in the place of its last occurrence."""
    if isinstance(items, str):
        raise TypeError("parse_overrides takes a list of KEY=VALUE items, not one string")
    table: list[dict[str, Any]] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"expected KEY=VALUE, got {item!r}")
        table.append({key.strip(): parse_value(text)})
    return merge_overrides(*table)


def merge_overrides(*tables: Mapping[str, Any]) -> dict[str, Any]:
    """The override tables applied one after the other, as one table (a later key moves to the end)."""
    out: dict[str, Any] = {}
    for table in tables:
        for key, value in table.items():
            out.pop(key, None)
            out[key] = value
    return out


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
    """Recursive update of plain dicts (a YAML file over a config); ``params`` mappings are merged key by key
    too, unless the update names a different component (then its params replace the old ones)."""
    out = dict(base)
    if prefix in _COMPONENT_PATHS and "name" in update and update["name"] != base.get("name"):
        out["params"] = {}
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, _join(prefix, k))
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any] | Iterable[str]) -> TrainConfig:
    """A new config with ``overrides`` applied in order and validated.

    ``overrides`` maps a dotted key (``run.steps``, ``optim.betas``, ``loss.adaptive.enabled``, or a whole
    section such as ``data``) to its typed value; ``KEY=VALUE`` text items are read by :func:`parse_overrides`
    first. Below a registry component any key that is not one of its fields is one of its ``params``
    (``loss.weighting.bias``, ``network.hidden``, ``data.n``); ``None`` for a params entry removes it. Setting
    a component's ``name`` to another value clears its params, so give the params after the name."""
    table = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    d = to_dict(cfg)
    for key, value in table.items():
        _set_path(d, *_deprecated(key, copy.deepcopy(value)))
    return _validated(TrainConfig, d)


_COMPONENT_FIELDS = {path: {f.name for f in dataclasses.fields(_section(TrainConfig, path.split(".")))}
                     for path in _COMPONENT_PATHS}


def _set_path(d: dict[str, Any], key: str, value: Any) -> None:
    """``d`` (a config as plain dicts) with the dotted ``key`` set to ``value``: the params shorthand, the
    removal of a params entry, a new component name clearing its params; the schema checks the result."""
    parts = key.split(".")
    node, path, in_params = d, "", False
    for i, part in enumerate(parts):
        if path in _COMPONENT_PATHS and part not in _COMPONENT_FIELDS[path]:  # shorthand: a key is a parameter
            node, in_params = node.setdefault("params", {}), True
        if i == len(parts) - 1:
            break
        in_params = in_params or (path in _COMPONENT_PATHS and part == "params")
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise OptionError(f"config key {_join(path, part)!r} is not a mapping: it has no sub-key "
                              f"{parts[i + 1]!r}")
        node, path = child, _join(path, part)
    last = parts[-1]
    if in_params and value is None:
        node.pop(last, None)
        return
    if last == "name" and path in _COMPONENT_PATHS and value != node.get("name"):
        node["params"] = {}  # the old component's parameters do not apply to the new one
    node[last] = value


def validate(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """``cfg`` validated again (fields may have been assigned since it was built) plus the checks across keys;
    raises :class:`OptionError` naming the key."""
    cfg = from_dict(TrainConfig, to_dict(cfg))
    r = cfg.run
    if r.batch_size % (world_size * r.grad_accum):
        raise OptionError(f"run.batch_size={r.batch_size} is not divisible by world size × grad_accum "
                          f"= {world_size} × {r.grad_accum}")
    if cfg.loss.objective is None and cfg.loss.weighting.name is None:
        raise OptionError("loss.objective is null, so loss.weighting.name must be set")
    return cfg


def resolve(preset_name: str | None = None, config_file: str | Path | None = None, *,
            objective: str | None = None, steps: int | None = None, batch_size: int | None = None,
            seed: int | None = None, checkpoint_every: int | None = None,
            overrides: Mapping[str, Any] | Iterable[str] = (), world_size: int = 1) -> TrainConfig:
    """Preset → YAML file → typed flags → ``overrides`` (see :func:`apply_overrides`), validated (EDM2 style:
    the single place a config is assembled). ``objective`` selects an objective preset and clears the component
    overrides that came before it. ``world_size`` is used to check that the batch splits evenly."""
    cfg = preset(preset_name) if preset_name is not None else TrainConfig()
    if config_file is not None:
        cfg = from_dict(TrainConfig, _merge(to_dict(cfg), load_yaml(config_file)))
    if objective is not None:
        cfg = apply_overrides(cfg, {"loss.objective": objective, "loss.weighting": {}, "loss.schedule": {},
                                    "loss.parameterization": {}})
    flags = {"run.steps": steps, "run.batch_size": batch_size, "seed": seed, "run.checkpoint_every": checkpoint_every}
    cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    return validate(apply_overrides(cfg, overrides), world_size)


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
