"""One training step in-process (:func:`diffusion_objectives.training.step.train_step`), checked against a closed
form: for the affine "network" ε̂(z) = a·z + b the gradient of the mean loss ½ (w(λ)/p(λ)) ‖ε̂ − ε‖² (KG23 Eq. 8)
is a sum over the batch, so two AdamW updates, the EMA, the counters and the step's statistics are computed
here by hand (float64) from the batch the step drew."""

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _faults import nonfinite_loss
from diffusion_objectives import data as data_module
from diffusion_objectives.training import build_dataset, build_objective, config
from diffusion_objectives.training.distributed import Dist
from diffusion_objectives.training.logs import Interval
from diffusion_objectives.training.precision import resolve_precision
from diffusion_objectives.training.step import (
    Backward,
    DropoutRNG,
    NonFiniteError,
    StepContext,
    StepResult,
    StepStatistics,
    TrainState,
    clip_gradients,
    draw_batch,
    rank_statistics,
    rank_statistics_all_finite,
    train_step,
)

B = 64
OVERRIDES = ["data.n=256", f"run.batch_size={B}", "optim.weight_decay=0.1", "optim.grad_clip=0.05",
             "optim.warmup_images=256", "ema.half_life_images=1000", "ema.rampup_ratio=0.5", "run.device=cpu",
             "run.precision=fp32"]


class AffineNet(torch.nn.Module):
    """ε̂(z, λ) = a·z + b, a scalar, b [2]."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.b = torch.nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, z, logsnr, labels=None):
        return self.a * z + self.b


def _setup(seed, overrides=()):
    cfg = config.resolve("toy2d", seed=seed, overrides=OVERRIDES + list(overrides))
    dataset = build_dataset(cfg.data)
    objective = build_objective(cfg.loss)
    ctx = StepContext(cfg, dataset, Dist(), objective, resolve_precision("fp32", "cpu"))
    net = AffineNet()
    o = cfg.optim
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    ema = copy.deepcopy(net).requires_grad_(False)
    ts = TrainState(step=0, images_seen=0, skips=0, net=net, model=net, ema=ema, opt=opt, loss_fn=objective.loss())
    return cfg, ctx, ts


def _expected_gradient(ctx, a, b, step):
    """(per-example losses [B], gradient of their mean wrt a [], wrt b [2]) in float64, from the step's batch:
    z = α x + σ ε with α² = sigmoid(λ), σ² = sigmoid(−λ) (variance preserving), r = a z + b − ε,
    ℓ = ½ (w/p) ‖r‖², ∂ℓ/∂b = (w/p) r, ∂ℓ/∂a = (w/p) ⟨r, z⟩."""
    batch = draw_batch(ctx, step)
    x, eps, lam = batch.x.double(), batch.eps.double(), batch.logsnr.double()
    z = torch.sigmoid(lam).sqrt()[:, None] * x + torch.sigmoid(-lam).sqrt()[:, None] * eps
    r = a * z + b - eps
    c = ctx.objective.weighting(lam).double() / ctx.objective.schedule.density(lam).double()
    losses = 0.5 * c * r.square().sum(1)
    return losses, lam, (c * (r * z).sum(1)).mean(), (c[:, None] * r).mean(0)


def _adamw(p, g, m, v, t, lr, o):
    """One AdamW update (decoupled weight decay, bias-corrected moments), float64."""
    m = o.betas[0] * m + (1 - o.betas[0]) * g
    v = o.betas[1] * v + (1 - o.betas[1]) * g * g
    m_hat, v_hat = m / (1 - o.betas[0] ** t), v / (1 - o.betas[1] ** t)
    return p * (1 - lr * o.weight_decay) - lr * m_hat / (v_hat.sqrt() + o.eps), m, v


@pytest.mark.parametrize("seed", [0, 7])
def test_two_steps_match_adamw_clipping_ema_and_statistics_by_hand(seed):
    cfg, ctx, ts = _setup(seed)
    o = cfg.optim
    a, b = torch.tensor(0.5, dtype=torch.float64), torch.tensor([0.3, -0.2], dtype=torch.float64)
    ema_a, ema_b = a.clone(), b.clone()
    m = v = torch.zeros(3, dtype=torch.float64)
    for t in (1, 2):
        losses, lam, g_a, g_b = _expected_gradient(ctx, a, b, t - 1)
        g = torch.cat([g_a[None], g_b])
        norm = float(g.norm())
        g = g * min(1.0, o.grad_clip / (norm + 1e-6))  # gradient clipping to optim.grad_clip
        lr = o.lr * min(1.0, t * B / o.warmup_images)  # linear warm-up, images counted with the current batch
        p, m, v = _adamw(torch.cat([a[None], b]), g, m, v, t, lr, o)
        a, b = p[0], p[1:]
        h = min(cfg.ema.half_life_images, cfg.ema.rampup_ratio * t * B)
        beta = 0.5 ** (B / h)
        ema_a, ema_b = beta * ema_a + (1 - beta) * a, beta * ema_b + (1 - beta) * b

        result = train_step(ctx, ts)

        assert (ts.step, ts.images_seen, ts.skips) == (t, t * B, 0)
        assert not result.skipped and not result.stop
        assert result.grad_norm == pytest.approx(norm, rel=1e-5)
        torch.testing.assert_close(ts.net.a.detach().double(), a, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ts.net.b.detach().double(), b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ts.ema.a.double(), ema_a, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ts.ema.b.double(), ema_b, rtol=1e-6, atol=1e-7)

        s = result.stats  # one process: the sums over the ranks are this process's sums
        lo, hi = ctx.logsnr_range
        K = cfg.loss.log_bins
        bins = ((lam - lo) / (hi - lo) * K).floor().long().clamp(0, K - 1)
        assert float(s.bad_loss) == 0 and float(s.bad_grad) == 0 and float(s.count) == B
        assert float(s.loss_sum) == pytest.approx(float(losses.sum()), rel=1e-5)
        interval = Interval(K, ctx.logsnr_range, ctx.d)  # the per-bin sums: binned when a record is written
        interval.add(result, 0.0)
        bin_sum, bin_count = interval.per_bin()
        assert bin_count.tolist() == [float((bins == k).sum()) for k in range(K)]
        expected_bins = torch.stack([losses[bins == k].sum() for k in range(K)])
        torch.testing.assert_close(bin_sum, expected_bins, rtol=1e-5, atol=1e-9)


def test_the_batch_is_the_datas_rows_of_the_step_and_a_function_of_seed_and_step():
    cfg, ctx, _ = _setup(3)
    first, again, other = draw_batch(ctx, 5), draw_batch(ctx, 5), draw_batch(ctx, 6)
    idx = data_module.batch_indices(len(ctx.dataset), B, cfg.seed, 5)
    assert torch.equal(first.x, ctx.dataset.data[idx])
    for name in ("x", "eps", "logsnr"):
        assert torch.equal(getattr(first, name), getattr(again, name))
        assert not torch.equal(getattr(first, name), getattr(other, name))
    assert first.eps.shape == (B, 2) and first.logsnr.shape == (B,)


def test_a_nonfinite_loss_skips_the_update_but_counts_the_step():
    _, ctx, ts = _setup(0, ["run.nonfinite=skip"])
    before = {k: p.detach().clone() for k, p in ts.net.named_parameters()}
    with nonfinite_loss(step=0):
        result = train_step(ctx, ts)
    assert result.skipped and result.grad_norm is None
    assert (ts.step, ts.images_seen, ts.skips) == (1, B, 1)
    assert float(result.stats.bad_loss) == B and float(result.stats.count) == 0
    assert math.isfinite(float(result.stats.loss_sum))  # the non-finite losses are not summed
    for k, p in ts.net.named_parameters():
        assert torch.equal(p.detach(), before[k]) and torch.equal(getattr(ts.ema, k), before[k])
        assert p.grad is None
    assert not ts.opt.state  # the optimizer never stepped
    train_step(ctx, ts)
    assert ts.skips == 0 and not torch.equal(ts.net.b.detach(), before["b"])


def test_a_nonfinite_loss_stops_by_default_naming_the_step():
    _, ctx, ts = _setup(0)
    with nonfinite_loss(step=1), pytest.raises(NonFiniteError, match=r"non-finite loss at step 2 .*seed 0"):
        for _ in range(3):
            train_step(ctx, ts)
    assert ts.step == 1


@given(n=st.integers(1, 300), batch=st.integers(1, 64), world=st.sampled_from([1, 2, 4]), seed=st.integers(0, 99),
       step=st.integers(0, 40))
def test_batch_indices_follow_the_documented_stream(n, batch, world, seed, step):
    """Global batch ``step`` is positions [step·B, (step+1)·B) of the endless stream whose epoch e is
    ``epoch_permutation(N, seed, e)``; rank r takes the r-th B/W of it (within an epoch or across two)."""
    B = batch * world
    for rank in range(world):
        positions = range(step * B + rank * batch, step * B + (rank + 1) * batch)
        expected = [int(data_module.epoch_permutation(n, seed, p // n)[p % n]) for p in positions]
        assert data_module.batch_indices(n, B, seed, step, rank, world).tolist() == expected


@given(shapes=st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=6),
       scale=st.floats(1e-4, 1e3), max_norm=st.sampled_from([1e-3, 0.5, 1.0, 10.0, math.inf]),
       seed=st.integers(0, 2**31 - 1), poison=st.sampled_from([None, math.inf, math.nan]))
def test_clip_gradients_gives_clip_grad_norms_numbers_bit_for_bit(shapes, scale, max_norm, seed, poison):
    """The loop's clipping (one ``_foreach_norm``; no multiplication by a coefficient of exactly 1 on the CPU) leaves
    the same gradients and returns the same norm as ``torch.nn.utils.clip_grad_norm_``, non-finite norms included."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    if poison is not None:
        params[0].grad.view(-1)[0] = poison
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for q, p in zip(reference, params, strict=True):
        q.grad = p.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm)
    got = clip_gradients(params, max_norm)
    assert torch.equal(got, expected) or (got.isnan() and expected.isnan())
    for p, q in zip(params, reference, strict=True):
        assert torch.equal(p.grad.nan_to_num(), q.grad.nan_to_num())
        assert torch.equal(p.grad.isnan(), q.grad.isnan())


@given(b=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), stop=st.booleans(), bad_grad=st.booleans(),
       scale=st.floats(1e-3, 1e30))
def test_the_all_finite_statistics_equal_the_general_ones_bit_for_bit(b, seed, stop, bad_grad, scale):
    """The shortcut taken in one CPU process when every loss is finite gives the general path's numbers exactly
    (the sum of the same float64 values in the same order)."""
    gen = torch.Generator().manual_seed(seed)
    loss = torch.rand(b, generator=gen) * scale
    grad_norm = torch.tensor(math.inf if bad_grad else 3.0)
    bw = Backward(loss, torch.zeros(b), [loss], grad_norm)
    lv = loss.double()
    general, fast = rank_statistics(bw, lv, stop), rank_statistics_all_finite(bw, lv, lv.sum(), stop)
    for field in ("bad_loss", "bad_grad", "stop", "loss_sum", "count"):
        a, e = getattr(fast, field), getattr(general, field)
        assert a.dtype == e.dtype == torch.float64 and torch.equal(a, e), field
    assert float(general.count) == b and float(general.bad_loss) == 0 and float(general.bad_grad) == bad_grad


@given(steps=st.lists(st.integers(1, 40), min_size=1, max_size=5), bins=st.integers(1, 30),
       seed=st.integers(0, 2**31 - 1), lo=st.floats(-20, 0), width=st.floats(0.5, 40), poison=st.booleans(),
       fold=st.sampled_from([1, 7, 50, 1 << 22]))
def test_the_interval_bins_the_finite_losses_of_all_its_steps(steps, bins, seed, lo, width, poison, fold):
    """The record's per-λ-bin sums and counts: every finite loss of every step of the interval in the bin
    ⌊(λ − lo)/(hi − lo)·K⌋ (λ outside [lo, hi]: the end bins), computed here example by example; the same when
    the waiting losses are folded into running sums once ``fold`` of them wait (so fewer than ``fold`` wait after
    any step)."""
    gen = torch.Generator().manual_seed(seed)
    interval = Interval(bins, (lo, lo + width), Dist(), fold_examples=fold)
    expected_sum, expected_count = [0.0] * bins, [0.0] * bins
    for b in steps:
        loss = torch.rand(b, generator=gen) * 5
        logsnr = (torch.rand(b, generator=gen) * 1.4 - 0.2) * width + lo
        if poison:
            loss[0] = math.nan
        stats = StepStatistics(*[torch.zeros((), dtype=torch.float64)] * 5)
        interval.add(StepResult(stats, None, True, False, loss, logsnr), 0.0)
        assert interval.waiting < fold
        for value, lam in zip(loss.tolist(), logsnr.tolist(), strict=True):
            k = min(max(math.floor((lam - lo) / width * bins), 0), bins - 1)
            if math.isfinite(value):
                expected_sum[k] += value
                expected_count[k] += 1
    bin_sum, bin_count = interval.per_bin()
    assert bin_count.tolist() == expected_count
    torch.testing.assert_close(bin_sum, torch.tensor(expected_sum, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@given(seed=st.integers(0, 2**62), outer=st.integers(0, 2**31))
def test_dropout_rng_seeds_the_global_generator_inside_and_restores_it_after(seed, outer):
    """Inside: the global CPU generator draws as a generator seeded with ``seed``; after: it continues as if
    nothing had been drawn (as ``torch.random.fork_rng`` + ``manual_seed``)."""
    torch.manual_seed(outer)
    expected_after = torch.rand(4, generator=torch.Generator().manual_seed(outer))
    with DropoutRNG(seed, torch.device("cpu")):
        inside = torch.rand(4)
        torch.nn.functional.dropout(torch.ones(16), 0.5, training=True)
    assert torch.equal(inside, torch.rand(4, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(torch.rand(4), expected_after)
