r"""Against peers: diffusers' and k-diffusion's loss computations vs ``WeightedLoss`` for the same objective.

Same network, batch and AdamW; only the loss computation differs:

- diffusers (``DDPMScheduler`` with the ``squaredcos_cap_v2`` betas, ``add_noise``, ``compute_snr``, the
  ε- or v-MSE with Min-SNR-5 weights as in its training scripts) vs ``WeightedLoss(MinSNR(5), cosine, ε or
  v)``: ε with min(SNR, γ)/SNR and v with min(SNR, γ)/(SNR + 1) are the same weighting w(λ);
- k-diffusion (``layers.Denoiser(sigma_data=0.5, weighting="karras").loss`` with σ from
  ``utils.rand_log_normal(-1.2, 1.2)``) vs ``WeightedLoss(EDM, edm schedule, EDM's F)``.

The network is ours, called as ``net(z, λ)``: diffusers' integer timesteps become λ_t = log(ᾱ_t/(1 − ᾱ_t))
(diffusers' own ᾱ table), and k-diffusion's inner model ``F(c_in·x̃, σ)`` is ``net(α x̃, −2 ln σ)`` with
α = 1/√(1 + σ²), i.e. its input is rescaled by 1/(c_in √(1 + σ²)) (the boundary conversion EDM σ ↔ VP).

Cross-check (derived from w = 2 p c k, docs/theory.md, "Converting a published loss"): a published
per-example loss c(λ)·mean_d‖ŷ − y‖² has w = 2 p_π c k, and ours is ½ (w/p) ‖ε̂ − ε‖² = (p_π/p)·c·‖ŷ − y‖²
summed over the D dimensions. So

- diffusers, cosine p_π = sech(λ/2)/(2π) vs our cosine truncated to [λ_min, λ_max], p = sech(λ/2)/(4(a_max −
  a_min)): ours / theirs = D · (2/π)(a_max − a_min), with a = arctan e^{−λ/2} at the endpoints (the ᾱ table's
  discretisation does not enter: c is a function of λ and p_π/p is constant);
- k-diffusion, p_π = N(λ; 2.4, 2.4²) vs the same normal truncated to [−15, 15] (mass Z):
  ours / theirs = D · Z.

The benchmark checks that the per-example ratio equals that constant to float tolerance, and that the
noisy inputs agree (diffusers' add_noise vs ours).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
import sys
import types
from pathlib import Path

import _common as C
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from diffusion_objectives import WeightedLoss, data, networks, parameterizations, process, schedules, weightings
from peer_code import load_kdiffusion  # noqa: E402  (the k-diffusion loader shared with the tests)

GAMMA = 5.0
SIGMA_DATA = 0.5
NETS = {"toy-mlp": ("ring", 1024), "digits": ("digits", 128)}
SIZES = {"toy-mlp": (20, 5), "digits": (3, 5)}  # steps per block, rounds
QUICK = {"toy-mlp": (2, 1), "digits": (1, 1)}


# ---- loading the peers ----------------------------------------------------------------------------------

def load_diffusers():
    """(module namespace, version) or a string saying why it is unavailable."""
    try:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import compute_snr
    except Exception as exc:  # ImportError, or a broken dependency
        return f"not installed: diffusers cannot be imported ({type(exc).__name__}: {exc}); " \
               "pip install -c requirements/constraints.txt 'diffusers==0.42.*'"
    return types.SimpleNamespace(DDPMScheduler=DDPMScheduler, compute_snr=compute_snr,
                                 version=importlib.metadata.version("diffusers"), how="import diffusers")


# ---- the loss computations ----------------------------------------------------------------------------------

def logsnr_table(scheduler) -> torch.Tensor:
    """λ_t = log ᾱ_t − log(1 − ᾱ_t) for diffusers' timesteps, from its own ᾱ table (float64 ``[T]``)."""
    a = scheduler.alphas_cumprod.to(torch.float64)
    return torch.log(a) - torch.log1p(-a)


def diffusers_loss(peer, scheduler, lam_table, prediction: str):
    """diffusers' training-script loss: per-example c(t)·mean_d‖ŷ − y‖² with Min-SNR-γ weights."""

    def per_example(net, x, noise, t):
        z = scheduler.add_noise(x, noise, t)
        pred = net(z, lam_table[t].to(x.dtype))
        snr = peer.compute_snr(scheduler, t)
        if prediction == "epsilon":
            target, c = noise, torch.clamp(snr, max=GAMMA) / snr
        else:
            target, c = scheduler.get_velocity(x, noise, t), torch.clamp(snr, max=GAMMA) / (snr + 1)
        mse = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
        return mse.mean(dim=list(range(1, mse.ndim))) * c

    def step_loss(net, x, gen):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x.shape[0],), generator=gen)
        return per_example(net, x, torch.randn(x.shape, generator=gen), t).mean()

    return per_example, step_loss


class KInner(torch.nn.Module):
    """k-diffusion's inner model F(c_in x̃, σ) as our network: net(α x̃, λ) with x̃ = u/c_in, α = 1/√(1+σ²)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, u, sigma):
        scale = torch.sqrt(sigma**2 + SIGMA_DATA**2) / torch.sqrt(1 + sigma**2)  # (1/c_in)·α
        return self.net(u * process.expand_like(scale, u), process.logsnr_from_sigma_ve(sigma))


def kdiffusion_loss(peer, net):
    denoiser = peer.Denoiser(KInner(net), sigma_data=SIGMA_DATA, weighting="karras")

    def step_loss(net_unused, x, gen):
        sigma = peer.rand_log_normal([x.shape[0]], loc=-1.2, scale=1.2)
        return denoiser.loss(x, torch.randn(x.shape, generator=gen), sigma).mean()

    return denoiser.loss, step_loss


def ours(weighting, schedule, param):
    loss = WeightedLoss(weighting, schedule, param)
    return loss, lambda net, x, gen: loss(net, x, gen).loss.mean()


# ---- the benchmark ------------------------------------------------------------------------------------------

def make_net(preset: str, randomize: bool):
    net = networks.from_preset(preset)
    if randomize:  # zero-initialised output layers would make every prediction 0: draw all weights
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def cross_check(peer_name, peer, x, gen) -> list[dict]:
    """Per-example loss ratio ours/theirs against the derived constant, for fixed x, noise and levels."""
    out = []
    D = x[0].numel()
    net = make_net("digits" if x.ndim == 4 else "toy-mlp", randomize=True).eval()
    noise = torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        if peer_name == "diffusers":
            sch = peer.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
            lam_table = logsnr_table(sch)
            t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (x.shape[0] - 2,), generator=gen)])
            lam = lam_table[t].to(x.dtype)
            lo, hi = math.floor(float(lam_table.min())), math.ceil(float(lam_table.max()))
            cosine = schedules.Cosine(lo, hi)
            a_min, a_max = math.atan(math.exp(-hi / 2)), math.atan(math.exp(-lo / 2))
            const = D * (2 / math.pi) * (a_max - a_min)
            z_diff = float((sch.add_noise(x, noise, t) - process.add_noise(x, noise, lam)).abs().max())
            for pred, param in (("epsilon", parameterizations.Eps()), ("v_prediction", parameterizations.V())):
                theirs = diffusers_loss(peer, sch, lam_table, pred)[0](net, x, noise, t)
                mine = WeightedLoss(weightings.MinSNR(GAMMA), cosine, param).loss_at(net, x, noise, lam).loss
                r = (mine.double() / theirs.double()) / const
                out.append({"peer": "diffusers", "objective": f"{pred} + Min-SNR-{GAMMA:g}, squaredcos_cap_v2",
                            "ours": f"WeightedLoss(MinSNR({GAMMA:g}), Cosine({lo}, {hi}), {param.name})",
                            "constant": "D·(2/π)(a_max − a_min)", "constant_value": const,
                            "max_rel_dev": float((r - 1).abs().max()), "z_max_abs_diff": z_diff, "n": x.shape[0],
                            "logsnr_range": [float(lam.min()), float(lam.max())]})
        else:
            sigma = peer.rand_log_normal([x.shape[0]], loc=-1.2, scale=1.2)
            sigma = torch.cat([torch.tensor([math.exp(-7.0), math.exp(7.0)]), sigma[2:]]).clamp(
                math.exp(-7.4), math.exp(7.4))
            lam = process.logsnr_from_sigma_ve(sigma)
            edm = schedules.get("edm")
            def cdf(u):  # standard normal
                return 0.5 * math.erfc(-u / math.sqrt(2))

            Z = cdf((edm.logsnr_max - 2.4) / 2.4) - cdf((edm.logsnr_min - 2.4) / 2.4)  # mass of N(2.4, 2.4²) kept
            const = D * Z
            theirs = peer.Denoiser(KInner(net), sigma_data=SIGMA_DATA, weighting="karras").loss(x, noise, sigma)
            loss_fn = WeightedLoss(weightings.EDMWeighting(), edm, parameterizations.EDMPrecond(SIGMA_DATA))
            mine = loss_fn.loss_at(net, x, noise, lam).loss
            r = (mine.double() / theirs.double()) / const
            out.append({"peer": "k-diffusion", "objective": "EDM (Denoiser.loss, karras weighting, σ_data 0.5)",
                        "ours": "WeightedLoss(EDMWeighting(), edm schedule, EDMPrecond(0.5))", "constant": "D·Z",
                        "constant_value": const, "max_rel_dev": float((r - 1).abs().max()),
                        "z_max_abs_diff": float("nan"), "n": x.shape[0],
                        "logsnr_range": [float(lam.min()), float(lam.max())]})
    return out


def train_block(net, opt, step_loss, images, batch: int, steps: int, gen) -> float:
    """Seconds per step (median) of ``steps`` steps on random batches of ``images``: loss, backward, AdamW."""
    times = []
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        t0 = C.clock()
        step_loss(net, x, gen).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(C.clock() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--skip", action="append", default=[], choices=["diffusers", "k-diffusion"],
                   help="leave a peer out (as if it were not installed)")
    args = p.parse_args()
    started = C.setup(args)
    sizes = QUICK if args.quick else SIZES
    peers = {"diffusers": load_diffusers, "k-diffusion": load_kdiffusion}
    peers = {k: "skipped: --skip" if k in args.skip else load() for k, load in peers.items()}
    results: dict = {"peers": {k: (v if isinstance(v, str) else {"version": v.version, "how": v.how})
                               for k, v in peers.items()}, "cross_check": [], "timing": {}}
    for k, v in peers.items():
        print(f"{k}: {v if isinstance(v, str) else f'{v.version} via {v.how}'}")
    available = {k: v for k, v in peers.items() if not isinstance(v, str)}
    gen = torch.Generator().manual_seed(args.seed)

    # -- numerical cross-check -------------------------------------------------------------------------------
    check_rows = []
    for preset, (dataset, batch) in NETS.items():
        ds = data.get(dataset, **({"n": 4096} if dataset == "ring" else {}))
        x = ds.data[torch.randperm(len(ds), generator=gen)[: min(batch, 256)]]
        for peer_name, peer in available.items():
            for c in cross_check(peer_name, peer, x, gen):
                c["network"] = preset
                results["cross_check"].append(c)
                check_rows.append([c["peer"], c["objective"], preset, c["ours"],
                                   f"{c['constant']} = {c['constant_value']:.9g}", f"{c['max_rel_dev']:.2g}",
                                   f"{c['z_max_abs_diff']:.2g}"])

    # -- step time -----------------------------------------------------------------------------------------------
    time_rows = []
    for preset, (dataset, batch) in NETS.items():
        steps, rounds = sizes[preset]
        ds = data.get(dataset)
        variants, pairs = {}, []
        if "diffusers" in available:
            peer = available["diffusers"]
            sch = peer.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
            lam_table = logsnr_table(sch)
            for pred, param in (("epsilon", parameterizations.Eps()), ("v_prediction", parameterizations.V())):
                label = f"Min-SNR-{GAMMA:g}, {param.name}"
                variants[f"diffobj {label}"] = ours(weightings.MinSNR(GAMMA), schedules.Cosine(), param)[1]
                variants[f"diffusers {label}"] = diffusers_loss(peer, sch, lam_table, pred)[1]
                pairs.append(("diffusers", label))
        if "k-diffusion" in available:
            label = "EDM"
            variants[f"diffobj {label}"] = ours(weightings.EDMWeighting(), schedules.get("edm"),
                                                parameterizations.EDMPrecond(SIGMA_DATA))[1]
            variants[f"k-diffusion {label}"] = "kdiff"
            pairs.append(("k-diffusion", label))
        if not variants:
            break
        nets, opts = {}, {}
        for name in variants:  # one network + optimizer per variant, same initial weights
            nets[name] = networks.from_preset(preset).train()
            opts[name] = torch.optim.AdamW(nets[name].parameters(), lr=1e-4)
            if variants[name] == "kdiff":
                variants[name] = kdiffusion_loss(available["k-diffusion"], nets[name])[1]

        print(f"{preset}: {rounds} rounds of {steps} steps, batch {batch}")
        timings = C.interleaved({n: functools.partial(train_block, nets[n], opts[n], variants[n], ds.data, batch,
                                                      steps, gen) for n in variants}, rounds, warmup=1)
        results["timing"][preset] = {"batch": batch, "steps_per_block": steps, "timings": timings.as_dict()}
        for peer_name, label in pairs:
            r = timings.ratio(f"diffobj {label}", f"{peer_name} {label}")
            results["timing"][preset][f"{peer_name} {label}"] = r
            time_rows.append([peer_name, label, preset, batch, timings.median(f"diffobj {label}") * 1e3,
                              timings.median(f"{peer_name} {label}") * 1e3, C.fmt_ratio(r)])

    skipped = "; ".join(f"{k}: {v}" for k, v in peers.items() if isinstance(v, str))
    for k, v in peers.items():  # a missing peer is a row that says why
        if isinstance(v, str):
            time_rows.append([k, v, "", "", "", "", ""])
            check_rows.append([k, v, "", "", "", "", ""])
    versions = "; ".join(f"{k} {v.version} ({v.how})" for k, v in available.items())
    tables = [
        C.Table("Against peers: training-step time, same network, batch and AdamW",
                ["peer", "objective", "network", "batch", "diffobj ms/step", "peer ms/step",
                 "ratio diffobj/peer [IQR]"],
                time_rows, notes=(f"Peers: {versions or 'none'}. " + (f"Skipped: {skipped}. " if skipped else "")
                                  + "Median over interleaved rounds of per-round ratios; ms: medians of process "
                                  "CPU time, 1 thread.")),
        C.Table("Against peers: per-example loss, ours / theirs vs the constant derived from w = 2pck",
                ["peer", "objective", "network", "ours", "derived constant", "max |ratio/constant − 1|",
                 "max |z_theirs − z_ours|"], check_rows,
                notes=("Fixed network (random weights), x, noise and noise levels, float32; λ from diffusers' ᾱ "
                       "table including t = 0 and 999, k-diffusion σ from its log-normal plus e^{±7}.")),
    ]
    C.finish(args, "peers", started, tables, results)


if __name__ == "__main__":
    main()
