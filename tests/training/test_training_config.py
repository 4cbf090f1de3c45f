"""Training configuration: presets, YAML round trips, overrides, type errors, objective construction,
and the learning-rate / EMA schedules re-derived from their definitions."""

import dataclasses
import math
import re
import typing

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_objectives import networks, objectives, schedules, weightings
from diffusion_objectives.core.adaptive import AdaptiveSchedule
from diffusion_objectives.errors import OptionError
from diffusion_objectives.training import build, config
from diffusion_objectives.training.config import TrainConfig
from diffusion_objectives.training.loop import ema_beta, learning_rate
from diffusion_objectives.training.precision import PRECISIONS


@pytest.mark.parametrize("name", config.preset_names())
def test_presets_validate_and_build_their_objective(name):
    cfg = config.validate(config.preset(name))
    obj = build.build_objective(cfg.loss)
    assert math.isfinite(obj.schedule.logsnr_min) and math.isfinite(obj.schedule.logsnr_max)
    build.check_names(cfg)


def test_gpu_preset_is_kg23_scale():
    cfg = config.preset("imagenet64-kg23")
    assert cfg.run.batch_size == 2048 and cfg.run.precision == "auto" and cfg.network.conditional
    assert cfg.loss.objective == "edm-monotonic" and cfg.loss.adaptive.enabled


def test_gpu_preset_matches_edm_imagenet64_command():
    """EDM22's published ImageNet-64 command, transcribed: --arch=adm --lr=1e-4 --ema=50 (Mimg)
    --dropout=0.10, 2.5 Gimg (--duration=2500), no label dropout, no gradient clipping, Adam without weight
    decay, EDM's default lr ramp-up 10 Mimg and EMA ramp-up ratio 0.05. Batch 2048 is KG23's (documented)."""
    cfg = config.preset("imagenet64-kg23")
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.0 and cfg.optim.grad_clip is None
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.warmup_images == 10_000_000
    assert cfg.ema.half_life_images == 50e6 and cfg.ema.rampup_ratio == 0.05
    assert cfg.network.label_dropout == 0.0 and cfg.network.params["dropout"] == 0.1
    assert cfg.network.params["channels"] == 192
    assert abs(cfg.run.steps * cfg.run.batch_size - 2.5e9) / 2.5e9 < 0.001


@pytest.mark.parametrize("name", config.preset_names())
def test_yaml_round_trip(name, tmp_path):
    cfg = config.preset(name)
    path = tmp_path / "c.yaml"
    path.write_text(config.dump_yaml(cfg))
    again = config.from_dict(TrainConfig, config.load_yaml(path))
    assert again == cfg
    assert config.diff(cfg, again) == {}


def test_overrides_typed_and_shorthand():
    cfg = config.apply_overrides(TrainConfig(), [
        "loss.weighting.bias=-2", "network.hidden=64", "data.n=1000", "optim.lr=1e-3", "optim.betas=[0.9, 0.99]",
        "run.precision=bf16", "optim.grad_clip=null", "ema.half_life_images=1000", "run.steps=1e3",
    ])
    assert cfg.loss.weighting.params == {"bias": -2}
    assert cfg.network.params["hidden"] == 64 and cfg.data.params["n"] == 1000
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.99) and cfg.run.precision == "bf16"
    assert cfg.optim.grad_clip is None
    assert isinstance(cfg.ema.half_life_images, float) and cfg.run.steps == 1000
    # explicit params path and removal with null
    cfg = config.apply_overrides(cfg, ["network.params.depth=3", "network.hidden=null"])
    assert cfg.network.params == {"depth": 3}


@pytest.mark.parametrize("item, key", [
    ("run.stepz=3", "run.stepz"),
    ("optimizer.lr=1", "optimizer"),
    ("run.steps=abc", "run.steps"),
    ("run.steps=1.5", "run.steps"),
    ("run.bf16=1", "run.bf16"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("loss.adaptive=3", "loss.adaptive"),
    ("run.steps.x=3", "run.steps"),
    ("seed", "KEY=VALUE"),
])
def test_bad_overrides_name_the_key(item, key):
    with pytest.raises(OptionError, match=key.replace(".", r"\.").replace("[", r"\[")):
        config.apply_overrides(TrainConfig(), [item])


def test_unknown_yaml_key_and_wrong_type(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  steps: 10\n  batchsize: 3\n")
    with pytest.raises(OptionError, match="run.batchsize"):
        config.resolve(config_file=p)
    p.write_text("optim:\n  lr: [1, 2]\n")
    with pytest.raises(OptionError, match="optim.lr"):
        config.resolve(config_file=p)
    p.write_text("optim:\n  lr: 3e-4\n")  # YAML 1.1 would read this as a string
    assert config.resolve(config_file=p).optim.lr == 3e-4


def test_resolve_order_and_objective_flag_resets_components():
    cfg = config.resolve("digits", objective="edm", steps=7, batch_size=32, seed=3, checkpoint_every=2,
                         overrides=["loss.weighting.p_mean=-0.4", "run.steps=9"])
    assert cfg.loss.objective == "edm" and cfg.run.steps == 9 and cfg.run.batch_size == 32 and cfg.seed == 3
    assert cfg.run.checkpoint_every == 2
    assert cfg.loss.weighting.params == {"p_mean": -0.4}


@pytest.mark.parametrize("item, key", [
    ("run.steps=-1", "run.steps"), ("run.batch_size=0", "run.batch_size"), ("optim.lr=0", "optim.lr"),
    ("run.nonfinite=ignore", "run.nonfinite"), ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("loss.adaptive.decay=1", "loss.adaptive.decay"), ("run.device=tpu", "run.device"),
])
def test_validate_ranges(item, key):
    with pytest.raises(OptionError, match=key.replace(".", r"\.")):
        config.resolve(overrides=[item])


def test_batch_must_split_over_world_and_accumulation():
    with pytest.raises(OptionError, match="not divisible"):
        config.resolve(batch_size=6, overrides=["run.grad_accum=4"])
    with pytest.raises(OptionError, match="world size"):
        config.resolve(batch_size=5, world_size=2)
    config.resolve(batch_size=8, world_size=2, overrides=["run.grad_accum=2"])


def test_diff_restricted_to_guarded_keys():
    a = TrainConfig()
    b = config.apply_overrides(a, ["run.steps=5", "run.batch_size=8", "loss.weighting.bias=1"])
    d = config.diff(a, b, config.GUARDED_KEYS)
    assert set(d) == {"run.batch_size", "loss.weighting.params.bias"}
    assert d["run.batch_size"] == (1024, 8)
    assert "run.steps" in config.diff(a, b)


# ---- objective construction -----------------------------------------------------------------------------

LAM = torch.linspace(-15, 15, 301, dtype=torch.float64)


def test_objective_preset_with_weighting_override():
    obj = build.build_objective(config.resolve(objective="sigmoid", overrides=["loss.weighting.bias=-2"]).loss)
    torch.testing.assert_close(obj.weighting(LAM), weightings.Sigmoid(-2.0)(LAM))
    base = objectives.get("sigmoid")
    torch.testing.assert_close(obj.schedule.density(LAM), base.schedule.density(LAM))
    assert obj.parameterization.name == "eps"


def test_objective_preset_unchanged_is_the_preset():
    for name in objectives.names():
        obj = build.build_objective(config.resolve(objective=name).loss)
        ref = objectives.get(name)
        torch.testing.assert_close(obj.weighting(LAM), ref.weighting(LAM))
        torch.testing.assert_close(obj.schedule.density(LAM), ref.schedule.density(LAM))
        assert obj.parameterization.name == ref.parameterization.name


def test_schedule_endpoint_override_truncates_the_objectives_schedule():
    obj = build.build_objective(config.resolve(objective="edm", overrides=[
        "loss.schedule.logsnr_min=-10", "loss.schedule.logsnr_max=12"]).loss)
    ref = objectives.get("edm").schedule.with_endpoints(-10.0, 12.0)
    assert (obj.schedule.logsnr_min, obj.schedule.logsnr_max) == (-10.0, 12.0)
    torch.testing.assert_close(obj.schedule.density(LAM), ref.density(LAM))
    with pytest.raises(OptionError, match="loss.schedule"):
        build.build_objective(config.resolve(objective="edm", overrides=["loss.schedule.p_mean=0"]).loss)
    obj = build.build_objective(config.resolve(objective="edm", overrides=[
        "loss.schedule.name=edm", "loss.schedule.p_mean=-0.4", "loss.schedule.p_std=1.0"]).loss)
    torch.testing.assert_close(obj.schedule.density(LAM), schedules.get("edm", p_mean=-0.4, p_std=1.0).density(LAM))


def test_adaptive_swaps_the_schedule_and_keeps_the_endpoints():
    cfg = config.resolve(objective="ddpm", overrides=["loss.adaptive.enabled=true", "loss.adaptive.bins=20"])
    obj = build.build_objective(cfg.loss)
    ref = objectives.get("ddpm")
    assert isinstance(obj.schedule, AdaptiveSchedule) and obj.schedule.bins == 20
    assert (obj.schedule.logsnr_min, obj.schedule.logsnr_max) == (ref.schedule.logsnr_min, ref.schedule.logsnr_max)
    torch.testing.assert_close(obj.weighting(LAM), ref.weighting(LAM))


def test_objective_from_components_only():
    cfg = config.resolve(overrides=["loss.objective=null", "loss.weighting.name=sigmoid", "loss.weighting.bias=1",
                                    "loss.parameterization.name=v"])
    obj = build.build_objective(cfg.loss)
    torch.testing.assert_close(obj.weighting(LAM), weightings.Sigmoid(1.0)(LAM))
    assert obj.schedule.name == "cosine" and obj.parameterization.name == "v"
    with pytest.raises(OptionError, match="loss.weighting.name"):
        config.resolve(overrides=["loss.objective=null"])


@pytest.mark.parametrize("overrides, match", [
    (["loss.objective=nope"], "nope"),
    (["loss.weighting.name=nope"], "nope"),
    (["loss.weighting.biass=1"], "biass"),
    (["data.name=nope"], "nope"),
    (["data.nn=3"], "nn"),
    (["network.name=nope"], "nope"),
    (["network.widht=3"], "widht"),
])
def test_check_names_fails_fast(overrides, match):
    with pytest.raises(OptionError, match=match):
        build.check_names(config.resolve(overrides=overrides))


# ---- learning rate and EMA (re-derived) ---------------------------------------------------------------------

def test_learning_rate_warmup_and_decay():
    cfg = config.resolve(batch_size=100, overrides=["optim.lr=1e-3", "optim.warmup_images=1000",
                                                    "optim.decay_images=4000"])
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)  # first step: 100 of 1000 warm-up images
    assert learning_rate(cfg, 900) == pytest.approx(1e-3)
    assert learning_rate(cfg, 16000 - 100) == pytest.approx(1e-3 / 2)  # 16000/4000 = 4 → 1/√4


def test_ema_half_life_is_in_images():
    cfg = config.resolve(batch_size=64, overrides=["ema.half_life_images=6400", "ema.rampup_ratio=null"])
    beta = ema_beta(cfg, 10**6)
    # after half_life/batch = 100 steps the initial weights carry half of the average's mass
    assert beta**100 == pytest.approx(0.5)
    cfg = config.apply_overrides(cfg, ["ema.rampup_ratio=0.5"])
    assert ema_beta(cfg, 6400) == pytest.approx(0.5 ** (64 / 3200))  # ramp-up: h = 0.5 · 6400
    assert ema_beta(cfg, 0) == 0.0


def test_keys_a_saved_config_lacks_read_as_their_defaults_in_diff():
    """A run saved before ``loss.uncertainty`` and the post-hoc EMA keys existed resumes without a config
    change; setting them is a change of the guarded ``loss`` section."""
    new = config.resolve("toy2d")
    old = config.to_dict(new)
    del old["loss"]["uncertainty"], old["ema"]["posthoc_sigma_rels"], old["ema"]["snapshot_every"]
    assert config.diff(old, new) == {}
    on = config.resolve("toy2d", overrides=["loss.uncertainty.enabled=true", "ema.posthoc_sigma_rels=[0.05,0.1]"])
    assert config.diff(old, on, config.GUARDED_KEYS) == {"loss.uncertainty.enabled": (False, True)}
    assert on.ema.posthoc_sigma_rels == [0.05, 0.1]
    with pytest.raises(OptionError, match="ema.posthoc_sigma_rels"):
        config.resolve("toy2d", overrides=["ema.posthoc_sigma_rels=[0.05,0.05]"])
    with pytest.raises(OptionError, match="must be list"):
        config.resolve("toy2d", overrides=["ema.posthoc_sigma_rels=0.05"])


# ---- the schema: Literal choices, text ⇄ typed round trips, legacy saved configs ---------------------------------

def _literal_keys(cls=TrainConfig, prefix=""):
    """``{dotted key: choices}`` of every ``Literal`` field of the schema, found by walking it."""
    out = {}
    for name, info in cls.__pydantic_fields__.items():
        key = f"{prefix}.{name}" if prefix else name
        if typing.get_origin(info.annotation) is typing.Literal:
            out[key] = typing.get_args(info.annotation)
        elif dataclasses.is_dataclass(info.annotation):
            out.update(_literal_keys(info.annotation, key))
    return out


def test_literal_fields_are_the_documented_choices():
    assert _literal_keys() == {"run.precision": PRECISIONS, "run.nonfinite": ("stop", "skip")}


@pytest.mark.parametrize("key, choices", sorted(_literal_keys().items()))
def test_every_literal_choice_is_accepted_and_anything_else_rejected_naming_the_key(key, choices):
    section, name = key.rsplit(".", 1)
    for choice in choices:
        assert getattr(getattr(config.resolve(overrides={key: choice}), section), name) == choice
    for bad in ("nope", choices[0].upper(), 1, True, None, ""):
        with pytest.raises(OptionError, match=re.escape(repr(key)) + ".*" + re.escape(repr(choices[-1]))):
            config.resolve(overrides={key: bad})


def _text(value):
    """A typed value as a user would type it after ``KEY=``."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


_FLOATS = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
_UNIT = st.floats(min_value=0.0, max_value=0.999999, allow_nan=False)
_OVERRIDES = st.fixed_dictionaries({}, optional={
    "seed": st.integers(0, 2**31), "run.steps": st.integers(0, 10**7), "run.batch_size": st.sampled_from([8, 64, 2048]),
    "run.precision": st.sampled_from(PRECISIONS), "run.nonfinite": st.sampled_from(["stop", "skip"]),
    "run.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1"]), "run.tensorboard": st.booleans(),
    "optim.lr": _FLOATS, "optim.eps": _FLOATS, "optim.betas": st.lists(_UNIT, min_size=2, max_size=2),
    "optim.grad_clip": st.none() | _FLOATS, "optim.decay_images": st.none() | st.integers(1, 10**9),
    "ema.half_life_images": _FLOATS, "ema.rampup_ratio": st.none() | _FLOATS,
    "ema.posthoc_sigma_rels": st.lists(st.floats(0.01, 0.25), max_size=3, unique=True),
    "loss.objective": st.sampled_from(objectives.names()), "loss.adaptive.enabled": st.booleans(),
    "loss.adaptive.decay": _UNIT, "loss.weighting.bias": st.floats(-8, 8), "network.label_dropout": _UNIT,
    "network.hidden": st.integers(1, 512), "data.name": st.sampled_from(["ring", "digits"]),
})


@settings(max_examples=60, deadline=None)
@given(_OVERRIDES)
def test_config_round_trips_through_yaml_and_key_value_text(overrides):
    cfg = config.apply_overrides(TrainConfig(), overrides)
    flat = config._flatten(config.to_dict(cfg))
    shorthand = {"loss.weighting.bias": "loss.weighting.params.bias", "network.hidden": "network.params.hidden"}
    for key, value in overrides.items():  # typed values land unchanged (ints widened to floats where declared)
        assert flat[shorthand.get(key, key)] == value
    assert config.from_dict(TrainConfig, yaml.load(config.dump_yaml(cfg), Loader=config._Loader)) == cfg
    items = [f"{k}={_text(v)}" for k, v in flat.items()]
    again = config.apply_overrides(TrainConfig(), config.parse_overrides(items))
    assert again == cfg and config.diff(cfg, again) == {}


def test_key_value_text_is_read_as_typed_values():
    assert config.parse_overrides(["optim.lr=2e-3", "run.steps=1e3", "run.precision=fp32", "x.y=null",
                                   "optim.betas=[0.9, 0.99]", "data.path=a=b", " k =true"]) == {
        "optim.lr": 0.002, "run.steps": 1000.0, "run.precision": "fp32", "x.y": None, "optim.betas": [0.9, 0.99],
        "data.path": "a=b", "k": True}
    # a key given twice keeps its last value, in the place of its last occurrence
    assert list(config.parse_overrides(["a=1", "b=2", "a=3"]).items()) == [("b", 2), ("a", 3)]
    with pytest.raises(OptionError, match="expected KEY=VALUE, got '=3'"):
        config.parse_overrides(["=3"])


def test_typed_and_text_overrides_agree():
    text = config.resolve("digits", overrides=["optim.lr=2e-3", "loss.weighting.bias=-2", "run.steps=1e3"])
    typed = config.resolve("digits", overrides={"optim.lr": 2e-3, "loss.weighting.bias": -2, "run.steps": 1000})
    assert typed == text and typed.optim.lr == 0.002 and typed.run.steps == 1000


def test_saved_config_with_legacy_debug_section_and_bf16_key_loads_without_change(tmp_path):
    """Runs saved before the ``debug`` section was removed (it held test fault injection) and before
    ``run.precision`` existed still load, resume and compare equal to the config they were trained with."""
    cfg = config.resolve("toy2d", overrides={"run.precision": "bf16"})
    saved = config.to_dict(cfg)
    saved["debug"] = {"nonfinite_step": None, "nonfinite_rank": None}
    del saved["run"]["precision"]
    saved["run"]["bf16"] = True
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.warns(FutureWarning, match="run.bf16"):
        assert config.from_dict(TrainConfig, config.load_yaml(path)) == cfg
    with pytest.warns(FutureWarning, match="run.bf16"):
        assert config.diff(config.load_yaml(path), cfg) == {}
    with pytest.warns(FutureWarning, match="run.bf16"):
        assert config.resolve(config_file=path) == cfg
    with pytest.raises(OptionError, match="unknown config key 'debug'"):  # no longer a key to set
        config.resolve(overrides={"debug.nonfinite_step": 3})


@pytest.mark.parametrize("overrides, key", [
    ({"seed": -1}, "seed"), ({"run.keep_checkpoints": 0}, "run.keep_checkpoints"),
    ({"run.sample_steps": 0}, "run.sample_steps"), ({"optim.eps": 0.0}, "optim.eps"),
    ({"optim.lr": float("inf")}, "optim.lr"), ({"optim.decay_images": 0}, "optim.decay_images"),
    ({"optim.grad_clip": 0.0}, "optim.grad_clip"), ({"ema.rampup_ratio": 0.0}, "ema.rampup_ratio"),
    ({"loss.adaptive.floor": 0.0}, "loss.adaptive.floor"), ({"loss.uncertainty.bandwidth": float("nan")},
                                                            "loss.uncertainty.bandwidth"),
    ({"ema.posthoc_sigma_rels": [0.5]}, "ema.posthoc_sigma_rels"), ({"network.label_dropout": 1.0},
                                                                    "network.label_dropout"),
    ({"data.name": ""}, "data.name"), ({"run.tensorboard": 1}, "run.tensorboard"),
    ({"loss.objective": 3}, "loss.objective"), ({"data.params": {1: 2}}, "data.params"),
])
def test_typed_values_out_of_range_or_of_the_wrong_type_name_the_key(overrides, key):
    with pytest.raises(OptionError, match=re.escape(repr(key)[:-1])):
        config.resolve(overrides=overrides)


def test_presets_are_the_defaults_plus_their_table():
    for name, (_, network, overrides) in config.PRESETS.items():
        cfg = config.preset(name)
        assert cfg.network.name == networks.preset(network)[0]
        assert config.apply_overrides(cfg, overrides) == cfg  # the table is what the preset holds
        changed = config.diff(TrainConfig(), cfg)
        assert all(any(k == o or k.startswith(o + ".") or k.startswith("network") for o in overrides)
                   for k in changed), (name, changed)
