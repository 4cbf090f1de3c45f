"""An ADM-style U-Net (Dhariwal & Nichol 2021, as used by EDM22 and KG23 on ImageNet 64 × 64).

Residual blocks with scale-shift conditioning on the embedding of (c_noise, class), resampling inside
residual blocks (average pooling down, nearest up), multi-head self-attention at chosen resolutions, skip
connections from every encoder block to the decoder. Written from the papers' descriptions.

Shape-agnostic: any channel count and any H × W. Downsampling rounds up (7 → 4); each upsampling goes
back to the exact size of the matching encoder activation, so 28 × 28 (28 → 14 → 7 → 4 → 7 → 14 → 28)
works like 64 × 64. ``resolution`` only tells which levels get attention. The final convolution and the
last convolution of every residual/attention branch are zero-initialised: the initial output is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Network, init_rng, zero_
from .embedding import LabelEmbedding, PositionalEmbedding, noise_input

__all__ = ["UNet", "ResBlock", "Attention", "unet", "group_count"]


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """GroupNorm groups: the largest divisor g of ``channels`` with g ≤ ``max_groups`` and at least
    ``min_per_group`` channels per group (1 if there is none)."""
    ok = [g for g in range(1, max_groups + 1) if channels % g == 0 and channels // g >= min_per_group]
    return max(ok, default=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels)


class Attention(nn.Module):
    """x + proj(MultiHeadSelfAttention(GroupNorm(x))) over the H·W positions; heads of ~``head_channels``."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        heads = max(1, channels // head_channels)
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, HW, C/heads]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C/heads]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ResBlock(nn.Module):
    """h = conv1(resample(SiLU(GN(x)))); h = GN(h)(1 + scale) + shift with (scale, shift) = Linear(emb);
    out = skip(resample(x)) + conv2(dropout(SiLU(h))), then optional attention."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, *, down: bool = False,
                 up: bool = False, attention: bool = False, head_channels: int = 64):
        super().__init__()
        self.down, self.up = down, up
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = Attention(cout, head_channels) if attention else None

    def _resample(self, x: Tensor, size: Sequence[int] | None) -> Tensor:
        if self.down:  # 2 × 2 average; an odd edge is averaged over the pixels that exist (7 → 4)
            return F.avg_pool2d(x, 2, ceil_mode=True)
        if self.up:  # nearest, to the size of the encoder activation it meets
            return F.interpolate(x, size=tuple(size) if size is not None else None,
                                 scale_factor=None if size is not None else 2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor, size: Sequence[int] | None = None) -> Tensor:
        h = self._resample(F.silu(self.norm1(x)), size)
        x = self._resample(x, size)
        h = self.conv1(h)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.skip(x) + self.conv2(self.dropout(F.silu(h)))
        return h if self.attn is None else self.attn(h)


class UNet(Network):
    """``net(z [B, C, H, W], logsnr [B], labels [B] | None)`` → ``[B, C, H, W]``.

    ``channels`` base width; level i has ``channels · channel_mult[i]`` channels and ``num_res_blocks``
    residual blocks (decoder: one more); ``attn_resolutions`` are the sizes (in pixels, for an input of
    ``resolution`` pixels) whose blocks get self-attention, the middle always does. The embedding has
    ``emb_mult · channels`` channels. ``num_classes > 0`` adds a class embedding with a null label.
    """

    def __init__(self, in_channels: int = 3, channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.0,
                 num_classes: int = 0, resolution: int = 32, emb_mult: int = 4, head_channels: int = 64):
        super().__init__()
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        if min(in_channels, channels, num_res_blocks, resolution, emb_mult, head_channels) < 1:
            raise ValueError("in_channels, channels, num_res_blocks, resolution, emb_mult and head_channels "
                             "must be positive")
        if not channel_mult or min(channel_mult) < 1 or num_classes < 0 or not 0 <= dropout < 1:
            raise ValueError("channel_mult must be non-empty positive integers, num_classes ≥ 0, dropout in [0, 1)")
        sizes = [resolution]  # the feature-map size at each level
        for _ in channel_mult[1:]:
            sizes.append(math.ceil(sizes[-1] / 2))
        if not set(attn_resolutions) <= set(sizes):
            raise ValueError(f"attn_resolutions {list(attn_resolutions)} must be among the level sizes {sizes} "
                             f"of a {resolution}-pixel input")
        self.in_channels, self.num_classes, self.resolution = in_channels, num_classes, resolution
        self.null_label = num_classes if num_classes else None
        emb = emb_mult * channels
        self.noise_embedding = PositionalEmbedding(channels)
        self.noise_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = LabelEmbedding(num_classes, emb) if num_classes else None
        block = dict(emb_dim=emb, dropout=dropout, head_channels=head_channels)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.encoder = nn.ModuleList()
        skips, c = [channels], channels
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.encoder.append(ResBlock(c, c, down=True, **block))
                skips.append(c)
            for _ in range(num_res_blocks):
                self.encoder.append(ResBlock(c, channels * mult, attention=sizes[level] in attn_resolutions,
                                             **block))
                c = channels * mult
                skips.append(c)
        self.middle = nn.ModuleList([ResBlock(c, c, attention=True, **block), ResBlock(c, c, **block)])
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.decoder.append(ResBlock(c + skips.pop(), channels * mult,
                                             attention=sizes[level] in attn_resolutions, **block))
                c = channels * mult
            if level > 0:
                self.decoder.append(ResBlock(c, c, up=True, **block))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), zero_(nn.Conv2d(c, in_channels, 3, padding=1)))

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        logsnr = self._check(z, logsnr, labels)
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"expected z [B, {self.in_channels}, H, W], got {list(z.shape)}")
        emb = self.noise_mlp(self.noise_embedding(noise_input(logsnr)).to(z.dtype))  # [B, E]
        if self.label is not None:
            emb = emb + self.label(labels, z.shape[0])
        emb = F.silu(emb)
        h = self.conv_in(z)
        skips = [h]
        for blk in self.encoder:
            h = blk(h, emb)
            skips.append(h)
        for blk in self.middle:
            h = blk(h, emb)
        for blk in self.decoder:
            if blk.up:
                h = blk(h, emb, size=skips[-1].shape[-2:])
            else:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def unet(in_channels: int = 3, channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
         num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.0,
         num_classes: int = 0, resolution: int = 32, emb_mult: int = 4, head_channels: int = 64,
         seed: int | None = 0) -> UNet:
    """:class:`UNet` with weights drawn from ``seed`` (``None``: from the global RNG)."""
    with init_rng(seed):
        return UNet(in_channels, channels, channel_mult, num_res_blocks, attn_resolutions, dropout, num_classes,
                    resolution, emb_mult, head_channels)
