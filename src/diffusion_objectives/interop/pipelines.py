r"""diffusers pipeline directories, both ways: export a trained run, and load any pipeline for evaluation.

**Export** (:func:`export_diffusers`) writes a standard ``DDIMPipeline`` directory (``model_index.json``, ``unet/``,
``scheduler/``) that diffusers alone loads with ``DiffusionPipeline.from_pretrained``. It is exact only for a
network that *is* a diffusers model called in diffusers' own convention: ``diffusers-unet2d`` trained with an
``eps``, ``v`` or ``x`` parameterization (diffusers' ``prediction_type`` ``epsilon``, ``v_prediction``,
``sample``). The scheduler is ``DDIMScheduler`` on the network's own noise table (``trained_betas``), without
clipping, ``set_alpha_to_one`` (the last step returns x̂) and ``timestep_spacing="trailing"``, so N inference
steps visit τ_k = T − 1 − k·T/N (k = 0 … N − 1; T divisible by N) and the DDIM update z_s = α_s x̂ + σ_s ε̂ is the
library's :func:`~diffusion_objectives.sampling.samplers.ddim` on the grid λ_k = λ(τ_k) (increasing in k); the same
configuration
in ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2, ``final_sigmas_type="zero"``) is
:func:`~diffusion_objectives.sampling.samplers.dpmpp_2m` on that grid. The only difference is the
start: diffusers starts at z = noise, the library at z = σ(λ_0)·noise (docs/adapters.md, "Export to diffusers").
A ``RUN_RECORD`` (``diffobj.json``) beside them keeps the run's resolved config, step and null label.

**Load** (:func:`load_diffusers_pipeline`): any pipeline directory with a ``unet`` (or ``transformer``) and a VP
(``alphas_cumprod``) or flow-matching scheduler becomes a :class:`PipelineModel`, the object ``diffobj sample``,
``elbo`` and ``evaluate`` use for a run, with the model behind the ``diffusers`` (or ``diffusers-flow``) adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core import objectives, weightings
from ..data import probe_params
from ..errors import OptionError
from ..networks.diffusers_unet import DiffusersNetwork, scheduler_config
from ..training.build import build_dataset, build_objective
from ..training.checkpoint import LoadedModel
from ..training.config import DataConfig, NetworkConfig, TrainConfig, from_dict, to_dict
from . import adapters

__all__ = ["MODEL_INDEX", "RUN_RECORD", "PipelineModel", "is_pipeline_dir", "has_run_record", "prediction_type",
           "export_scheduler", "export_diffusers", "load_diffusers_pipeline"]

MODEL_INDEX = "model_index.json"
RUN_RECORD = "diffobj.json"
RECORD_FORMAT = 1


@dataclass
class PipelineModel(LoadedModel):
    """A :class:`~diffusion_objectives.training.LoadedModel` read from a diffusers pipeline directory.
    ``logsnr_range``: the [λ_min, λ_max] its ELBO integrates over (a foreign discrete-time model: its own table;
    ``None``: the library's default [−15, 15], as for the run an exported pipeline came from)."""

    logsnr_range: tuple[float, float] | None = None


def is_pipeline_dir(path: str | Path) -> bool:
    return (Path(path) / MODEL_INDEX).is_file()


def has_run_record(path: str | Path) -> bool:
    return (Path(path) / RUN_RECORD).is_file()


# ---- export ---------------------------------------------------------------------------------------------------

def prediction_type(loaded: LoadedModel) -> str:
    """diffusers' ``prediction_type`` of ``loaded``; :class:`OptionError` saying why a model cannot be exported."""
    net, param = loaded.model, loaded.objective.parameterization
    if not isinstance(net, DiffusersNetwork):
        raise OptionError(
            f"network {loaded.config.network.name!r} cannot be exported to diffusers: it is this library's own "
            f"{type(net).__name__}, conditioned on c_noise = −λ/8 through its own embedding; no diffusers model "
            "class has its architecture, so no diffusers pipeline computes the same function. Only "
            "network.name=diffusers-unet2d (a diffusers UNet2DModel) is exported")
    names = {PT.name: key for key in adapters.PREDICTION_TYPES.names()
             for PT in [adapters.PREDICTION_TYPES.get(key)]}
    if param.name not in names:
        raise OptionError(
            f"parameterization {param.name!r} cannot be exported to diffusers: its VP schedulers take a U-Net output "
            f"that is one of {', '.join(f'{k} ({v})' for k, v in names.items())}, and the network was trained on "
            f"the VP input z, so a {param.name!r} output (e.g. flow's velocity on z/(α + σ), EDM's preconditioned "
            "F) is no diffusers prediction_type of the same network")
    return names[param.name]


def export_scheduler(loaded: LoadedModel, prediction: str) -> Any:
    """``DDIMScheduler`` on the network's noise table (see the module docstring)."""
    from diffusers import DDIMScheduler

    params = loaded.config.network.params
    table = scheduler_config(params["logsnr_min"], params["logsnr_max"], params["num_train_timesteps"])
    return DDIMScheduler(num_train_timesteps=table["num_train_timesteps"], trained_betas=table["trained_betas"],
                         prediction_type=prediction, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                         timestep_spacing="trailing")


def export_diffusers(loaded: LoadedModel, out: str | Path) -> dict[str, Any]:
    """Write ``loaded`` as a ``DDIMPipeline`` directory into ``out`` (an empty directory); return the record
    written to ``RUN_RECORD``. Raises :class:`OptionError` for models that cannot be exported exactly."""
    from diffusers import DDIMPipeline

    prediction = prediction_type(loaded)
    net: DiffusersNetwork = loaded.model
    pipe = DDIMPipeline(unet=net.unet, scheduler=export_scheduler(loaded, prediction))
    pipe.save_pretrained(str(out), safe_serialization=True)
    record = {
        "format": RECORD_FORMAT, "exported_from": str(loaded.checkpoint_dir), "step": loaded.step,
        "images_seen": loaded.images_seen, "ema": loaded.ema, "prediction_type": prediction,
        "data_shape": list(net.data_shape), "num_classes": net.num_classes, "null_label": net.null_label,
        "config": to_dict(loaded.config),
    }
    (Path(out) / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


# ---- load -----------------------------------------------------------------------------------------------------

def _read_pipeline(path: Path) -> tuple[torch.nn.Module, Any]:
    """(the denoising model, the scheduler) of the pipeline directory ``path``, loaded by diffusers."""
    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:  # the optional dependency
        raise OptionError("diffusers pipelines need diffusers: pip install 'diffusion-objectives[diffusers]'") from exc
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OptionError(f"{str(path)!r}: diffusers cannot load this pipeline directory: {exc}") from None
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    scheduler = getattr(pipe, "scheduler", None)
    if model is None or scheduler is None:
        raise OptionError(f"{str(path)!r}: a {type(pipe).__name__} without a unet/transformer and a scheduler")
    return model, scheduler


def _adapter(model: torch.nn.Module, scheduler: Any) -> adapters.Adapter:
    """``model`` in the convention its scheduler implies: ``diffusers`` for a VP scheduler (``alphas_cumprod``),
    ``diffusers-flow`` for a flow-matching one."""
    if hasattr(scheduler, "alphas_cumprod"):
        return adapters.wrap(model, "diffusers", scheduler=scheduler)
    if "FlowMatch" in type(scheduler).__name__:
        return adapters.wrap(model, "diffusers-flow", num_train_timesteps=scheduler.config.num_train_timesteps)
    raise OptionError(f"scheduler {type(scheduler).__name__} is neither a VP scheduler (alphas_cumprod) nor a "
                      "flow-matching scheduler: its noise convention is not known")


def _config(path: Path, data: str | None) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The run config of an exported pipeline (its dataset replaced by ``data`` if given) or, for a foreign one,
    a config that names only the dataset ``data``."""
    if has_run_record(path):
        record = json.loads((path / RUN_RECORD).read_text())
        cfg = from_dict(TrainConfig, record["config"])
        if data is not None and data != cfg.data.name:
            cfg.data = DataConfig(name=data)
        return cfg, record
    if data is None:
        raise OptionError(f"{str(path)!r} has no {RUN_RECORD}: the dataset must be named (data)")
    cfg = TrainConfig()
    cfg.data = DataConfig(name=data)
    cfg.network = NetworkConfig(name="diffusers-pipeline", params={}, conditional=False)
    return cfg, None


def _model_shape_check(model: torch.nn.Module, data_shape: tuple[int, ...], data: str) -> None:
    want = data_shape if len(data_shape) == 3 else (data_shape[0], 1, 1)
    config = getattr(model, "config", None)
    channels, size = getattr(config, "in_channels", want[0]), getattr(config, "sample_size", None)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if channels != want[0] or (size[0] is not None and size != tuple(want[1:])):
        raise OptionError(f"dataset {data!r} has examples of shape {list(data_shape)}, but the pipeline's model takes "
                          f"{channels} channels of {size[0]}×{size[1]}")


def load_diffusers_pipeline(path: str | Path, data: str | None = None,
                            device: str | torch.device = "cpu") -> PipelineModel:
    """A diffusers pipeline directory as the loaded-model object of ``diffobj sample``/``elbo``/``evaluate``.

    ``data``: the dataset name (required without a ``RUN_RECORD``). An exported pipeline keeps its run's objective
    and null label; a foreign one is unconditional, with the ELBO weighting (w = 1) on its scheduler's own
    table as objective and that table's [λ_{T−1}, λ_0] as ELBO range (whole real line for flow schedulers:
    the default [−15, 15])."""
    path = Path(path)
    cfg, record = _config(path, data)
    model, scheduler = _read_pipeline(path)
    adapter = _adapter(model, scheduler)
    data_shape = tuple(build_dataset(cfg.data, **probe_params(cfg.data.name)).shape)
    _model_shape_check(model, data_shape, cfg.data.name)
    num_classes = int(record["num_classes"]) if record else 0
    if record is None and getattr(getattr(model, "config", None), "num_class_embeds", None):
        raise OptionError(f"{str(path)!r}: a class-conditional model without {RUN_RECORD}: its null label is unknown")
    net = DiffusersNetwork(adapter, data_shape, num_classes).to(device).eval().requires_grad_(False)
    table = getattr(adapter, "table", None)
    if record is not None:
        objective = build_objective(cfg.loss)
        objective = objectives.Objective(objective.weighting, objective.schedule, adapter.parameterization,
                                         name=objective.name)
        logsnr_range = None
    else:
        schedule = table if table is not None else objectives.get("elbo").schedule
        objective = objectives.Objective(weightings.get("elbo"), schedule, adapter.parameterization,
                                         name=f"diffusers:{type(scheduler).__name__}")
        logsnr_range = (table.logsnr_min, table.logsnr_max) if table is not None else None
        cfg.loss.objective = objective.name

    def dataset(**overrides: Any) -> Any:
        return build_dataset(cfg.data, **overrides)

    step, seen = (int(record["step"]), int(record["images_seen"])) if record else (0, 0)
    ema = bool(record["ema"]) if record else False  # a foreign pipeline's weights: as saved
    return PipelineModel(net, objective, cfg, dataset, step, seen, path, ema, logsnr_range)
