"""Training: typed configs and presets, the training loop, atomic checkpoints, distributed helpers.

``train(config, run_dir)`` is the one training function; ``resolve(preset, ...)`` assembles a
config; ``load_for_inference(run_or_checkpoint)`` gives back a trained model, its objective and data.
See docs/training.md.
"""

from .build import build_dataset, build_network, build_objective, complete_network_params
from .checkpoint import CheckpointError, LoadedModel, load_for_inference
from .config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    diff,
    dump_yaml,
    from_dict,
    load_yaml,
    preset,
    preset_names,
    resolve,
    to_dict,
)
from .loop import NonFiniteError, TrainingError, train

__all__ = [
    "PRESETS",
    "CheckpointError",
    "LoadedModel",
    "NonFiniteError",
    "TrainConfig",
    "TrainingError",
    "apply_overrides",
    "build_dataset",
    "build_network",
    "build_objective",
    "complete_network_params",
    "diff",
    "dump_yaml",
    "from_dict",
    "load_for_inference",
    "load_yaml",
    "preset",
    "preset_names",
    "resolve",
    "to_dict",
    "train",
]
