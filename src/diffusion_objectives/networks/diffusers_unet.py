r"""A diffusers ``UNet2DModel`` as a library network (``diffusers-unet2d``), through the ``diffusers`` adapter.

The U-Net is called as diffusers calls it, ``unet(sample=z, timestep=τ, class_labels=c)``, with the VP latent z
and the fractional timestep τ(λ) of a FIXED noise table (:mod:`~diffusion_objectives.interop.adapters`, convention
``diffusers``). Like every network here it never sees the training schedule or weighting: what its output means
(ε̂, v̂, x̂) is the training objective's parameterization, which export maps to diffusers' ``prediction_type``.

The table (:func:`scheduler_config`) is ``num_train_timesteps`` = T steps with λ linear in τ from ``logsnr_max``
(τ = 0) to ``logsnr_min`` (τ = T − 1): ᾱ_τ = sigmoid(λ_τ) (α² = sigmoid(λ) on the VP process), given to diffusers as
``trained_betas`` β_τ = 1 − ᾱ_τ/ᾱ_{τ−1} (DDPM Eq. (4): ᾱ_τ = ∏_{s ≤ τ}(1 − β_s)), so every diffusers scheduler built
from it (DDPM, DDIM, DPM-Solver++) computes the same float32 ᾱ table the network was trained with. The default
range [−15, 13] covers every λ the samplers' grids visit below 13 (the EDM grid ends at 12.43): diffusers computes
ᾱ in float32, where 1 − β rounds to 1 once β < 6·10⁻⁸, and a linear table to λ = 15 would stop decreasing at the
data end. Outside the table the adapter continues its end segments linearly (τ < 0 above λ_0, τ > T − 1 below
λ_{T−1}); diffusers' sinusoidal timestep embedding takes any real τ, so training schedules on [−15, 15] train the
network there too, but a diffusers sampler never goes beyond the table.

Data of any shape: images ``[C, H, W]`` go in as they are; a vector ``[D]`` (toy data) as ``[D, 1, 1]``, which
needs a single-level U-Net (``down_block_types`` of length 1). Class conditioning (``num_classes`` > 0) uses
``num_class_embeds = num_classes + 1`` embeddings, the last one (index ``num_classes``) the null label of
classifier-free guidance, as every network here (:mod:`.embedding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import OptionError
from ..interop import adapters
from .base import Network, init_rng

__all__ = ["DiffusersNetwork", "diffusers_unet2d", "scheduler_config", "linear_logsnr_betas", "SCHEDULER_DEFAULTS"]

# the fixed noise table: recorded in every resolved config (networks.recorded_defaults)
SCHEDULER_DEFAULTS: dict[str, Any] = {"logsnr_min": -15.0, "logsnr_max": 13.0, "num_train_timesteps": 1000}


def linear_logsnr_betas(logsnr_min: float, logsnr_max: float, num_train_timesteps: int) -> list[float]:
    r"""β_τ (float64 values) of the table λ_τ = λ_max − (λ_max − λ_min) τ/(T − 1): ᾱ_τ = sigmoid(λ_τ),
    β_0 = 1 − ᾱ_0, β_τ = 1 − ᾱ_τ/ᾱ_{τ−1} (DDPM Eq. (4))."""
    if not logsnr_min < logsnr_max or int(num_train_timesteps) < 2:
        raise ValueError("need logsnr_min < logsnr_max and num_train_timesteps ≥ 2")
    T = int(num_train_timesteps)
    lam = logsnr_max - (logsnr_max - logsnr_min) * torch.arange(T, dtype=torch.float64) / (T - 1)
    log_abar = torch.nn.functional.logsigmoid(lam)
    log_prev = torch.cat([torch.zeros(1, dtype=torch.float64), log_abar[:-1]])
    return (-torch.expm1(log_abar - log_prev)).tolist()


def scheduler_config(logsnr_min: float = -15.0, logsnr_max: float = 13.0,
                     num_train_timesteps: int = 1000) -> dict[str, Any]:
    """The diffusers scheduler configuration of the table (``DDPMScheduler``; any VP scheduler accepts it)."""
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": int(num_train_timesteps),
            "trained_betas": linear_logsnr_betas(logsnr_min, logsnr_max, num_train_timesteps)}


class DiffusersNetwork(Network):
    """``net(z, logsnr, labels=None)`` with z ``[B, *data_shape]``: a diffusers model behind ``adapter`` (an
    :class:`~diffusion_objectives.interop.adapters.Adapter`), given z as ``[B, *model_shape]`` (``[D, 1, 1]`` for vector
    data). Conditional (``num_classes`` > 0): labels in [0, num_classes], ``None`` meaning the null label."""

    def __init__(self, adapter: adapters.Adapter, data_shape: Sequence[int], num_classes: int = 0):
        super().__init__()
        self.adapter = adapter
        self.data_shape = tuple(int(v) for v in data_shape)
        self.model_shape = self.data_shape if len(self.data_shape) == 3 else (self.data_shape[0], 1, 1)
        self.num_classes = int(num_classes)
        self.null_label = self.num_classes if self.num_classes else None

    @property
    def unet(self) -> torch.nn.Module:
        """The wrapped diffusers model."""
        return self.adapter.module

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        logsnr = self._check(z, logsnr, labels)
        if tuple(z.shape[1:]) != self.data_shape:
            raise ValueError(f"expected examples of shape {list(self.data_shape)}, got {list(z.shape[1:])}")
        if self.num_classes and labels is None:
            labels = torch.full((z.shape[0],), self.num_classes, dtype=torch.int64, device=z.device)
        out = self.adapter(z.reshape(z.shape[0], *self.model_shape), logsnr, labels)
        return out.reshape(z.shape)


def _data_shape(in_channels: int, resolution: int, dim: int | None) -> tuple[int, ...]:
    """``[D]`` for vector data (``dim`` = ``in_channels``), else ``[C, H, W]`` with H = W = ``resolution``."""
    if dim is not None and dim == in_channels and dim != in_channels * resolution**2:
        return (int(dim),)
    if dim is not None and dim != in_channels * resolution**2:
        raise ValueError(f"dim = {dim} is neither in_channels = {in_channels} (vector data) nor "
                         f"in_channels·resolution² = {in_channels * resolution**2} (images)")
    return (int(in_channels), int(resolution), int(resolution))


def _check_levels(data_shape: tuple[int, ...], down_block_types: Sequence[str]) -> None:
    levels = len(down_block_types)
    size = 1 if len(data_shape) == 1 else data_shape[-1]
    if size % 2 ** (levels - 1):
        raise OptionError(
            f"a UNet2DModel with {levels} levels halves {size}×{size} {levels - 1} times, which diffusers cannot "
            f"undo for a size not divisible by {2 ** (levels - 1)}: give network.params.down_block_types and "
            f"up_block_types of length ≤ {_max_levels(size)} (and block_out_channels of the same length)")


def _max_levels(size: int) -> int:
    levels = 1
    while size % 2**levels == 0:
        levels += 1
    return levels


def diffusers_unet2d(
    in_channels: int = 1, resolution: int = 8, dim: int | None = None, num_classes: int = 0,
    block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1,
    down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D"),
    up_block_types: Sequence[str] = ("AttnUpBlock2D", "UpBlock2D"), mid_block_type: str | None = "UNetMidBlock2D",
    attention_head_dim: int | None = 8, norm_num_groups: int = 8, attn_norm_num_groups: int | None = None,
    norm_eps: float = 1e-5, dropout: float = 0.0, act_fn: str = "silu", center_input_sample: bool = False,
    time_embedding_type: str = "positional", time_embedding_dim: int | None = None, freq_shift: int = 0,
    flip_sin_to_cos: bool = True, mid_block_scale_factor: float = 1.0, downsample_padding: int = 1,
    downsample_type: str = "conv", upsample_type: str = "conv", resnet_time_scale_shift: str = "default",
    add_attention: bool = True, class_embed_type: str | None = None,
    logsnr_min: float = -15.0, logsnr_max: float = 13.0, num_train_timesteps: int = 1000, seed: int | None = 0,
) -> DiffusersNetwork:
    """A diffusers ``UNet2DModel`` (weights from ``seed``) for data ``[in_channels, resolution, resolution]``
    (or ``[dim]``): the keyword arguments are ``UNet2DModel``'s (``sample_size``, ``in_channels``/``out_channels``
    and ``num_class_embeds`` = ``num_classes`` + 1 come from the data); ``logsnr_min``, ``logsnr_max`` and
    ``num_train_timesteps`` fix the noise table (:func:`scheduler_config`). ``class_embed_type``: ``None``
    (an embedding table) or ``"timestep"`` (sinusoidal embedding of the label index), the two diffusers types
    that take integer labels."""
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:  # the optional dependency
        raise OptionError("network 'diffusers-unet2d' needs diffusers: pip install "
                          "'diffusion-objectives[diffusers]'") from exc
    if time_embedding_type != "positional":  # "learned" indexes integers, "fourier" takes log τ (τ < 0 above λ_0)
        raise OptionError(f"time_embedding_type must be 'positional' (fractional timesteps of any sign), got "
                          f"{time_embedding_type!r}")
    if class_embed_type not in (None, "timestep"):
        raise OptionError(f"class_embed_type must be null or 'timestep' (integer labels), got {class_embed_type!r}")
    data_shape = _data_shape(in_channels, resolution, dim)
    _check_levels(data_shape, down_block_types)
    unet_kwargs = dict(
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
        mid_block_type=mid_block_type, attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
        attn_norm_num_groups=attn_norm_num_groups, norm_eps=norm_eps, dropout=dropout, act_fn=act_fn,
        center_input_sample=center_input_sample, time_embedding_type=time_embedding_type,
        time_embedding_dim=time_embedding_dim, freq_shift=freq_shift, flip_sin_to_cos=flip_sin_to_cos,
        mid_block_scale_factor=mid_block_scale_factor, downsample_padding=downsample_padding,
        downsample_type=downsample_type, upsample_type=upsample_type,
        resnet_time_scale_shift=resnet_time_scale_shift, add_attention=add_attention,
        class_embed_type=class_embed_type if num_classes else None,
        num_class_embeds=num_classes + 1 if num_classes and class_embed_type is None else None)
    with init_rng(seed):
        unet = UNet2DModel(sample_size=data_shape[-1] if len(data_shape) == 3 else 1, in_channels=data_shape[0],
                           out_channels=data_shape[0], num_train_timesteps=num_train_timesteps, **unet_kwargs)
    try:
        adapter = adapters.wrap(unet, "diffusers",
                                scheduler=scheduler_config(logsnr_min, logsnr_max, num_train_timesteps))
    except ValueError as exc:  # diffusers' float32 ᾱ stops decreasing where β < 6e-8
        raise OptionError(f"the noise table λ ∈ [{logsnr_min:g}, {logsnr_max:g}] over {num_train_timesteps} "
                          f"timesteps is not usable in diffusers' float32 ᾱ ({exc}); lower logsnr_max "
                          "(the default 13 works with 1000 timesteps)") from None
    return DiffusersNetwork(adapter, data_shape, num_classes)
