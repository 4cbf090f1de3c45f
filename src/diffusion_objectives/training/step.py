r"""One optimizer step of the training loop, as named functions on a :class:`TrainState`.

:func:`train_step` is :func:`draw_batch` → :func:`forward_backward` → :func:`reduce_statistics` →
:func:`update` (or :func:`skip_update`); it reads the run's fixed parts from a :class:`StepContext` and changes
only the :class:`TrainState`, so one step can be run, and checked, in-process (tests/training/test_training_step.py).

1. global batch ``step``: indices ``data.batch_indices(N, B, seed, step)`` (a function of (seed, step)
   only); this process takes the rank-th contiguous B/W of it, in ``grad_accum`` micro-batches;
2. randomness: λ ~ p(λ) for the global batch, ε, flips and label drops, each drawn from a
   ``torch.Generator`` seeded by (seed, step, stream) and sliced like the data; dropout draws from the
   global RNG reseeded by (seed, step, rank, micro-batch) and restored after (:class:`DropoutRNG`). So the
   numbers depend on (seed, step) only: resuming needs no RNG state, and W processes see the same ε and λ as one;
3. the loss ½ (w(λ)/p(λ)) ‖ε̂ − ε‖² (KG23 Eq. 8, :class:`~diffusion_objectives.WeightedLoss`), averaged
   over the global batch (DDP averages the per-rank means); with ``loss.uncertainty.enabled`` EDM2's
   ℓ_w e^{−u(λ)} + D u(λ) (:class:`~diffusion_objectives.training.uncertainty.UncertaintyWeightedLoss`), the head u
   trained in its own AdamW group, its gradients averaged over the ranks like the network's;
4. one all-reduce of :class:`StepStatistics` (non-finite counts, stop request, loss sum and count,
   adaptive-schedule sums and counts, packed into one vector and copied to the host once; in one process on
   the CPU nothing is packed or copied), so every rank takes the same decision (update, skip, stop) and the
   adaptive schedule (docs/theory.md, "The adaptive schedule") holds the same state everywhere. The logged
   losses per λ-bin are binned when a record is written (:class:`~.logs.Interval`), not every step;
5. AdamW with linear warm-up over ``warmup_images`` (and optional 1/√ decay), gradient clipping, and an
   EMA of the weights with β = 0.5^(B / half-life) (half-life in images); with ``ema.posthoc_sigma_rels``
   EDM2's power-function EMAs too (:class:`~diffusion_objectives.training.phema.PowerEMA`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import data as data_module
from ..core.adaptive import AdaptiveSchedule
from . import distributed, phema
from .build import derive_seed
from .config import TrainConfig
from .distributed import Dist
from .precision import Precision
from .precision import autocast as precision_autocast
from .uncertainty import LogVarianceHead

__all__ = ["TrainingError", "NonFiniteError", "learning_rate", "ema_beta", "step_generator", "DropoutRNG", "TrainState",
           "StepContext", "StepStatistics", "StepResult", "Batch", "Backward", "train_step", "draw_batch",
           "forward_backward", "clip_gradients", "reduce_statistics",
           "rank_statistics", "rank_statistics_all_finite", "update", "skip_update"]


class TrainingError(RuntimeError):
    """Training could not continue. ``all_ranks``: every process raised it at the same step."""

    all_ranks = False


class NonFiniteError(TrainingError):
    """A non-finite loss or gradient (agreed across ranks); the last good checkpoint is kept."""

    all_ranks = True


# ---- schedules of the optimizer and the EMA (pure functions of the images seen) --------------------------

def learning_rate(cfg: TrainConfig, images_seen: int) -> float:
    """lr · min(1, n/warmup_images) · (1/√max(1, n/decay_images) if ``decay_images``), with n the images
    seen *including* the current batch (so step 0 trains)."""
    o = cfg.optim
    n = images_seen + cfg.run.batch_size
    lr = o.lr
    if o.warmup_images > 0:
        lr *= min(1.0, n / o.warmup_images)
    if o.decay_images:
        lr /= math.sqrt(max(1.0, n / o.decay_images))
    return lr


def ema_beta(cfg: TrainConfig, images_seen: int) -> float:
    """β = 0.5^(B/h), h = min(half_life_images, rampup_ratio · images_seen) (EDM22's ramp-up); after the
    update that brought the count to ``images_seen``. h = 0 copies the weights."""
    h = cfg.ema.half_life_images
    if cfg.ema.rampup_ratio is not None:
        h = min(h, cfg.ema.rampup_ratio * images_seen)
    return 0.5 ** (cfg.run.batch_size / h) if h > 0 else 0.0


class DropoutRNG:
    """``with DropoutRNG(seed, device):`` the global generators dropout draws from, seeded by ``seed`` inside and
    restored on leaving (what ``torch.random.fork_rng`` and seeding do, without fork_rng's per-call set-up).
    Not ``torch.manual_seed``: on a CPU-only machine it also queues lazy CUDA/XPU seeding and records a stack
    trace every call (benchmarks/trainer_overhead.py: 1.6 % of a toy step)."""

    __slots__ = ("seed", "cuda", "state", "cuda_state")

    def __init__(self, seed: int, device: torch.device):
        self.seed, self.cuda = seed, device if device.type == "cuda" else None

    def __enter__(self) -> None:
        self.state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(self.seed)
        if self.cuda is not None:
            self.cuda_state = torch.cuda.get_rng_state(self.cuda)
            torch.cuda.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.default_generator.set_state(self.state)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.cuda)


def step_generator(seed: int, step: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one random stream (``"logsnr"``, ``"eps"``, ``"flip"``, ``"labels"``) of one
    step: a fixed function of (seed, step, stream)."""
    return torch.Generator(device=device).manual_seed(derive_seed("train", seed, step, stream))


# ---- what a step reads and changes ------------------------------------------------------------------------

@dataclasses.dataclass
class TrainState:
    """What the optimizer steps read and change: the counters, the trained modules and their optimizer state.

    ``model`` is ``net`` or its DDP wrapper; ``ema`` the EMA of ``net``'s weights; ``loss_fn`` the per-example
    loss (``loss_at(model, x, eps, logsnr, labels)``, a :class:`~diffusion_objectives.WeightedLoss` or EDM2's
    uncertainty-weighted one); ``head`` EDM2's log-variance head u(λ) (with ``loss.uncertainty.enabled``);
    ``tracker`` the post-hoc power-function EMAs; ``adaptive`` the adaptive schedule (docs/theory.md, "The
    adaptive schedule") when the objective uses one; ``last_ckpt`` the newest checkpoint written or resumed.
    """

    step: int
    images_seen: int
    skips: int  # consecutive skipped (non-finite) updates
    net: torch.nn.Module
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    loss_fn: Any
    adaptive: AdaptiveSchedule | None = None
    head: LogVarianceHead | None = None
    tracker: phema.PowerEMA | None = None
    last_ckpt: Path | None = None
    sample_noise: Tensor | None = None
    last_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    net_params: list[torch.nn.Parameter] = dataclasses.field(init=False)
    ema_params: list[torch.nn.Parameter] = dataclasses.field(init=False)
    head_params: list[torch.nn.Parameter] = dataclasses.field(init=False)
    ema_buffers: list[tuple[Tensor, Tensor]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.net_params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.head_params = list(self.head.parameters()) if self.head is not None else []
        self.ema_buffers = list(zip(self.ema.buffers(), self.net.buffers(), strict=True))


@dataclasses.dataclass
class StepContext:
    """What stays fixed during a run and a step reads: the config, the dataset, the process layout, the
    objective (its schedule draws λ and bins the logged losses), the precision and the null label of a
    class-conditional network."""

    cfg: TrainConfig
    dataset: Any
    d: Dist
    objective: Any
    precision: Precision
    null_label: int | None = None
    autocast: Any = dataclasses.field(init=False)
    logsnr_range: tuple[float, float] = dataclasses.field(init=False)
    grad_clip: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.autocast = precision_autocast(self.precision, self.device)
        self.logsnr_range = (self.objective.schedule.logsnr_min, self.objective.schedule.logsnr_max)
        self.grad_clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip is not None else float("inf")

    @property
    def device(self) -> torch.device:
        return self.d.device

    @property
    def local(self) -> int:
        """Examples per rank and step: B / W."""
        return self.cfg.run.batch_size // self.d.world_size

    @property
    def micro(self) -> int:
        """Examples per micro-batch: B / (W · grad_accum)."""
        return self.local // self.cfg.run.grad_accum


@dataclasses.dataclass
class Batch:
    """This rank's slice of the step's global batch: x [b, *shape], ε [b, *shape], λ [b], labels [b] or None."""

    x: Tensor
    eps: Tensor
    logsnr: Tensor
    labels: Tensor | None

    def micro(self, m: int, size: int) -> Batch:
        """Micro-batch ``m`` of ``size`` examples."""
        sl = slice(m * size, (m + 1) * size)
        return Batch(self.x[sl], self.eps[sl], self.logsnr[sl], None if self.labels is None else self.labels[sl])


@dataclasses.dataclass
class Backward:
    """One rank's forward/backward: logged loss [b], its λ [b], w(λ)‖ε̂ − ε‖² per micro-batch, gradient norm []."""

    loss: Tensor
    logsnr: Tensor
    weighted_eps_mse: list[Tensor]
    grad_norm: Tensor


@dataclasses.dataclass
class StepStatistics:
    """The per-step statistics every rank needs, summed over the ranks in a single all-reduce.

    All float64. Scalars []: non-finite losses, non-finite gradient norm (0/1), stop requested (0/1), sum and
    count of the finite losses; with the adaptive schedule, its sums and counts per bin [bins]. :meth:`pack` lays
    them out in this order in one vector, :meth:`unpack` reads it back.
    """

    bad_loss: Tensor
    bad_grad: Tensor
    stop: Tensor
    loss_sum: Tensor
    count: Tensor
    adaptive_sum: Tensor | None = None
    adaptive_count: Tensor | None = None

    def pack(self) -> Tensor:
        parts = [torch.stack([self.bad_loss, self.bad_grad, self.stop, self.loss_sum, self.count])]
        if self.adaptive_sum is not None:
            parts += [self.adaptive_sum, self.adaptive_count]
        return torch.cat(parts)

    @classmethod
    def unpack(cls, vec: Tensor, adaptive_bins: int | None) -> StepStatistics:
        adaptive = (None, None) if adaptive_bins is None else (vec[5:5 + adaptive_bins],
                                                              vec[5 + adaptive_bins:5 + 2 * adaptive_bins])
        return cls(vec[0], vec[1], vec[2], vec[3], vec[4], *adaptive)

    def all_reduce(self, d: Dist) -> StepStatistics:
        """The sums over the ranks, on the CPU: one all-reduce and one copy to the host of the packed vector. In
        one process on the CPU these statistics themselves (nothing to sum or copy)."""
        if not d.enabled and self.loss_sum.device.type == "cpu":
            return self
        vec = distributed.all_reduce_sum(self.pack(), d).cpu()
        return self.unpack(vec, None if self.adaptive_sum is None else len(self.adaptive_sum))


@dataclasses.dataclass
class StepResult:
    """What one step reports: the statistics summed over the ranks, this step's gradient norm (None when the
    update was skipped), whether the update was skipped and whether some rank asked to stop; this rank's logged
    losses [b] (float32, non-finite ones included) and their λ [b], binned when a record is written."""

    stats: StepStatistics
    grad_norm: float | None
    skipped: bool
    stop: bool
    loss: Tensor
    logsnr: Tensor


# ---- the step ---------------------------------------------------------------------------------------------

def train_step(ctx: StepContext, ts: TrainState, stop_requested: bool = False) -> StepResult:
    """One optimizer step: draw the batch, forward/backward, reduce across ranks, update (or skip); then
    ``ts.step`` and ``ts.images_seen`` advance (also after a skipped update)."""
    lr = learning_rate(ctx.cfg, ts.images_seen)
    for group in ts.opt.param_groups:
        group["lr"] = lr
    batch = draw_batch(ctx, ts.step)
    bw = forward_backward(ctx, ts, batch)
    stats = reduce_statistics(ctx, ts, batch, bw, stop_requested)  # the step's one host sync (on a GPU)
    n_bad_loss = int(stats.bad_loss)
    skipped = n_bad_loss > 0 or float(stats.bad_grad) > 0
    grad_norm = None if skipped else float(bw.grad_norm)  # read before the update queues more work
    if skipped:
        skip_update(ctx, ts, bw, n_bad_loss, lr)
    else:
        update(ctx, ts, stats)
    ts.step += 1
    ts.images_seen += ctx.cfg.run.batch_size
    return StepResult(stats, grad_norm, skipped, float(stats.stop) > 0, bw.loss, bw.logsnr)


def draw_batch(ctx: StepContext, step: int) -> Batch:
    """This step's randomness and data: the global batch drawn from (seed, step), then this rank's slice."""
    cfg, dataset, device, d = ctx.cfg, ctx.dataset, ctx.device, ctx.d
    B, local = cfg.run.batch_size, ctx.local
    idx = data_module.batch_indices(len(dataset), B, cfg.seed, step)
    lam_all = ctx.objective.schedule.sample(B, step_generator(cfg.seed, step, "logsnr", device),
                                            stratified=cfg.loss.stratified, device=device)
    eps_all = torch.randn((B, *dataset.shape), generator=step_generator(cfg.seed, step, "eps", device),
                          device=device)
    flip_all = (torch.rand(B, generator=step_generator(cfg.seed, step, "flip", device), device=device)
                < 0.5) if dataset.hflip else None
    drop_all = (torch.rand(B, generator=step_generator(cfg.seed, step, "labels", device),
                           device=device) < cfg.network.label_dropout) if cfg.network.conditional else None
    if d.enabled:
        mine = slice(d.rank * local, (d.rank + 1) * local)
        idx, lam_all, eps_all = idx[mine], lam_all[mine], eps_all[mine]
        flip_all = flip_all[mine] if flip_all is not None else None
        drop_all = drop_all[mine] if drop_all is not None else None
    x_all = dataset.data[idx].to(device, non_blocking=True)
    if flip_all is not None:
        f = flip_all.reshape((-1,) + (1,) * (x_all.ndim - 1))
        x_all = torch.where(f, x_all.flip(-1), x_all)
    labels_all = None
    if cfg.network.conditional:
        labels_all = dataset.labels[idx].to(device)
        labels_all = torch.where(drop_all, torch.full_like(labels_all, ctx.null_label), labels_all)
    return Batch(x_all, eps_all, lam_all, labels_all)


def forward_backward(ctx: StepContext, ts: TrainState, batch: Batch) -> Backward:
    """Forward/backward over the micro-batches (DDP syncs on the last), then clip the gradients."""
    cfg, d, step = ctx.cfg, ctx.d, ts.step
    A = cfg.run.grad_accum
    losses, lams, wmse = [], [], []
    for m in range(A):
        mb = batch if A == 1 else batch.micro(m, ctx.micro)
        sync = ts.model.no_sync() if d.enabled and m < A - 1 else contextlib.nullcontext()
        with sync, DropoutRNG(derive_seed("dropout", cfg.seed, step, d.rank, m), ctx.device):
            with ctx.autocast:
                out = ts.loss_fn.loss_at(ts.model, mb.x, mb.eps, mb.logsnr, mb.labels)
            (out.loss.sum() / ctx.local).backward()
        # logged: the base loss ℓ_w (with the uncertainty head a non-finite ℓ_u shows in the gradient)
        losses.append((out.loss if ts.head is None else out.weighted).detach().float())
        lams.append(out.logsnr.detach().float())
        wmse.append(out.weighted_eps_mse.detach())
    if ts.head_params and d.enabled:  # DDP averages the network's gradients; the head's likewise
        _average_gradients(ts.head_params, d)
    grad_norm = clip_gradients(ts.net_params + ts.head_params, ctx.grad_clip)
    if A == 1:
        return Backward(losses[0], lams[0], wmse, grad_norm)
    return Backward(torch.cat(losses), torch.cat(lams), wmse, grad_norm)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> Tensor:
    """Scale the gradients by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the 2-norm of all of them together; returns
    ‖g‖ before clipping. The same numbers as ``torch.nn.utils.clip_grad_norm_`` (per-tensor norms, the norm of
    those, the same coefficient), in one ``_foreach_norm`` call; on the CPU, where reading the coefficient costs
    no device sync, the multiplication by a coefficient of exactly 1 is left out (it changes nothing)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if total.device.type != "cpu" or float(coef) != 1.0:
        torch._foreach_mul_(grads, coef)
    return total


def reduce_statistics(ctx: StepContext, ts: TrainState, batch: Batch, bw: Backward,
                      stop_requested: bool) -> StepStatistics:
    """One all-reduce: agreement on the decision (update, skip, stop), the loss sum, adaptive-schedule
    statistics."""
    device = ctx.device
    losses = bw.loss.double()
    loss_sum = losses.sum()
    if not ctx.d.enabled and device.type == "cpu" and math.isfinite(float(loss_sum)):
        stats = rank_statistics_all_finite(bw, losses, loss_sum, stop_requested)
    else:
        stats = rank_statistics(bw, losses, stop_requested)
    if ts.adaptive is not None:  # w(λ)‖ε̂ − ε‖² per bin (non-finite values: never used, see skip_update)
        wm = torch.cat(bw.weighted_eps_mse)
        a_sum, a_cnt = ts.adaptive.statistics(batch.logsnr, torch.where(torch.isfinite(wm), wm,
                                                                        torch.zeros_like(wm)))
        stats.adaptive_sum, stats.adaptive_count = a_sum.to(device), a_cnt.to(device)
    return stats.all_reduce(ctx.d)


def rank_statistics(bw: Backward, losses: Tensor, stop_requested: bool) -> StepStatistics:
    """This rank's :class:`StepStatistics` (without the adaptive schedule's); ``losses`` is ``bw.loss`` in
    float64. Non-finite losses are counted and left out of the sum."""
    finite = torch.isfinite(bw.loss)
    fin = finite.double()
    count = fin.sum()
    return StepStatistics(
        bad_loss=fin.numel() - count, bad_grad=(~torch.isfinite(bw.grad_norm)).double(),
        stop=torch.tensor(float(stop_requested), device=losses.device, dtype=torch.float64),
        loss_sum=torch.where(finite, losses, 0.0).sum(), count=count)


def rank_statistics_all_finite(bw: Backward, losses: Tensor, loss_sum: Tensor, stop_requested: bool) -> StepStatistics:
    """:func:`rank_statistics` when every loss is finite, on the CPU: the same numbers from fewer operations,
    reading scalars on the host (free there). ``loss_sum`` = ``losses.sum()``, finite: a float64 sum of float32
    values overflows only through a non-finite term, so this tells that every loss is finite."""
    return StepStatistics(
        bad_loss=torch.tensor(0.0, dtype=torch.float64),
        bad_grad=torch.tensor(float(not math.isfinite(float(bw.grad_norm))), dtype=torch.float64),
        stop=torch.tensor(float(stop_requested), dtype=torch.float64), loss_sum=loss_sum,
        count=torch.tensor(float(losses.numel()), dtype=torch.float64))


def skip_update(ctx: StepContext, ts: TrainState, bw: Backward, n_bad_loss: int, lr: float) -> None:
    """A non-finite loss or gradient on some rank: skip the update, or stop with :class:`NonFiniteError`."""
    r, d, step = ctx.cfg.run, ctx.d, ts.step
    ts.skips += 1
    if r.nonfinite == "stop" or ts.skips > r.max_consecutive_skips:
        finite, lam_v = torch.isfinite(bw.loss), bw.logsnr
        bad = ~finite if n_bad_loss else torch.ones_like(finite)
        ext = torch.tensor([-float(lam_v[bad].min()) if bad.any() else -math.inf,
                            float(lam_v[bad].max()) if bad.any() else -math.inf],
                           dtype=torch.float64, device=ctx.device)
        ext = distributed.all_reduce_max(ext, d).cpu()
        what = "loss" if n_bad_loss else "gradient"
        why = ("" if r.nonfinite == "stop"
               else f" ({ts.skips} consecutive non-finite steps > run.max_consecutive_skips)")
        raise NonFiniteError(
            f"non-finite {what} at step {step + 1} (computing step {step} -> {step + 1}){why}; "
            f"λ of the affected examples in [{-float(ext[0]):.4g}, {float(ext[1]):.4g}], "
            f"seed {ctx.cfg.seed}, lr {lr:.3g}. The last good checkpoint "
            f"{str(ts.last_ckpt) if ts.last_ckpt else '(none)'} is intact. Lower optim.lr, set "
            "optim.grad_clip, try run.precision=fp32, or --set run.nonfinite=skip")
    ts.opt.zero_grad(set_to_none=True)


def update(ctx: StepContext, ts: TrainState, stats: StepStatistics) -> None:
    """The optimizer step, the EMA (β = 0.5^(B / half-life)), the post-hoc EMAs and the adaptive schedule."""
    ts.skips = 0
    ts.opt.step()
    ts.opt.zero_grad(set_to_none=True)
    beta = ema_beta(ctx.cfg, ts.images_seen + ctx.cfg.run.batch_size)
    with torch.no_grad():
        torch._foreach_lerp_(ts.ema_params, ts.net_params, 1.0 - beta)
        for be, b in ts.ema_buffers:
            be.copy_(b)
    if ts.tracker is not None:
        ts.tracker.update(ts.net.state_dict(), ts.step + 1)
    if ts.adaptive is not None:
        ts.adaptive.update_from_statistics(stats.adaptive_sum, stats.adaptive_count)


def _average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Replace each gradient by its mean over the ranks (what DDP does for the network's)."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    distributed.all_reduce_sum(flat, d)
    flat /= d.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
