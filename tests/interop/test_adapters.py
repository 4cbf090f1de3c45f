"""Model adapters: the exact Gaussian-mixture denoiser, written independently in each peer's convention, wrapped,
gives back the library's ε̂ (float64, 1e−6); real diffusers models are called with the timestep their scheduler
would pass; the x-prediction/ELBO warning."""

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from diffusion_objectives import adapters, elbo, objectives, parameterizations, samplers, weightings
from diffusion_objectives.core import mixtures
from diffusion_objectives.core.tabulated import Tabulated
from diffusion_objectives.errors import OptionError

MIX = mixtures.anisotropic_pair()


def posterior_eps(y, a, s):
    """E[ε | y = a x + s ε] for x ~ MIX, by autograd of log p(y) (torch.distributions): −s ∇ log p(y).
    Written without mixtures.py's closed forms; ``a``, ``s`` are ``[B]``."""
    a, s = (torch.as_tensor(v, dtype=torch.float64).detach().reshape(-1, 1) for v in (a, s))
    eye = torch.eye(2, dtype=torch.float64)
    with torch.enable_grad():  # samplers call the model under no_grad
        y = y.detach().to(torch.float64).requires_grad_(True)
        logps = []
        for k in range(2):
            cov = a[:, :, None] ** 2 * MIX.covariances[k] + s[:, :, None] ** 2 * eye
            dist = torch.distributions.MultivariateNormal(a * MIX.means[k], covariance_matrix=cov)
            logps.append(math.log(float(MIX.weights[k])) + dist.log_prob(y))
        (score,) = torch.autograd.grad(torch.logsumexp(torch.stack(logps), 0).sum(), y)
    return -s * score


class Peer(nn.Module):
    """A peer's network: ``fn(input, noise)`` with an optional label argument that must arrive."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.labels = fn, None

    def forward(self, x, noise, labels=None):
        self.labels = labels
        return self.fn(x, noise)


def denoiser_sigma(x_tilde, sigma):  # D(x̃, σ) = x̃ − σ E[ε | x̃], x̃ = x + σ ε
    return x_tilde - sigma[:, None] * posterior_eps(x_tilde, torch.ones_like(sigma), sigma)


def edm_raw(sigma_data):
    def F(u, c_noise):  # EDM Table 1: σ = e^{4 c_noise}, x̃ = u/c_in, F = (D − c_skip x̃)/c_out
        sigma = torch.exp(4 * c_noise)
        norm = torch.sqrt(sigma**2 + sigma_data**2)
        x_tilde = u * norm[:, None]
        c_skip, c_out = sigma_data**2 / norm**2, sigma * sigma_data / norm
        return (denoiser_sigma(x_tilde, sigma) - c_skip[:, None] * x_tilde) / c_out[:, None]
    return F


def flow_matching(x_t, t):  # x_t = t x + (1 − t) ε, velocity x − ε
    eps = posterior_eps(x_t, t, 1 - t)
    x_hat = (x_t - (1 - t)[:, None] * eps) / t[:, None]
    return x_hat - eps


def logsnr_eps(z, lam):
    return posterior_eps(z, torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt())


class DiffusersPeer(nn.Module):
    """diffusers' calling convention: forward(sample, timestep, class_labels=None, return_dict=True)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        out = self.fn(sample, timestep)
        return (out,) if not return_dict else type("Output", (), {"sample": out})()


def diffusers_fn(scheduler, prediction_type):
    a_bar = scheduler.alphas_cumprod.to(torch.float64).numpy()
    table = np.log(a_bar) - np.log1p(-a_bar)

    def fn(sample, timestep):  # λ linear between the integer steps of the scheduler's own ᾱ table
        lam = torch.from_numpy(np.interp(timestep.numpy(), np.arange(len(table)), table))
        alpha, sigma = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
        eps = posterior_eps(sample, alpha[:, 0], sigma[:, 0])
        x_hat = (sample - sigma * eps) / alpha
        return {"epsilon": eps, "v_prediction": alpha * eps - sigma * x_hat, "sample": x_hat}[prediction_type]
    return fn


def diffusers_flow(sample, timestep):  # SD3: x_t = (1 − σ) x + σ ε, σ = timestep/1000, velocity ε − x
    t = timestep / 1000
    eps = posterior_eps(sample, 1 - t, t)
    return eps - (sample - t[:, None] * eps) / (1 - t)[:, None]


SCHED = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
TABLE = Tabulated(torch.log(SCHED.alphas_cumprod.double()) - torch.log1p(-SCHED.alphas_cumprod.double()))
CASES = {
    "logsnr": (lambda: Peer(logsnr_eps), {"parameterization": "eps"}),
    "denoiser-sigma": (lambda: Peer(denoiser_sigma), {}),
    "edm-raw": (lambda: Peer(edm_raw(0.7)), {"sigma_data": 0.7}),
    "flow-matching": (lambda: Peer(flow_matching), {}),
    "diffusers-flow": (lambda: DiffusersPeer(diffusers_flow), {}),
    **{f"diffusers:{p}": (lambda p=p: DiffusersPeer(diffusers_fn(SCHED, p)), {"scheduler": SCHED,
                                                                               "prediction_type": p})
       for p in ("epsilon", "v_prediction", "sample")},
}


def _points(n=64, seed=0, lo=-9.0, hi=9.0):
    g = torch.Generator().manual_seed(seed)
    lam = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    x = MIX.sample(n, g)
    alpha, sigma = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
    return alpha * x + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64), lam


@pytest.mark.parametrize("case", list(CASES))
def test_mixture_denoiser_round_trips_in_every_convention(case):
    make, params = CASES[case]
    model = adapters.wrap(make(), case.split(":")[0], **params)
    z, lam = _points()
    eps_hat = model.parameterization.eps_hat(model(z, lam), z, lam)
    assert float((eps_hat - MIX.eps_hat(z, lam)).abs().max()) < 1e-6


def test_every_convention_is_tested():
    assert {c.split(":")[0] for c in CASES} == set(adapters.names())


def test_labels_reach_the_network():
    peer = Peer(denoiser_sigma)
    model = adapters.wrap(peer, "denoiser-sigma")
    z, lam = _points(4)
    model(z, lam, torch.arange(4))
    assert torch.equal(peer.labels, torch.arange(4))


@given(st.floats(-11.0, 10.0))
def test_tabulated_fractional_timestep_inverts_and_hits_integers(lam):
    lam_t = torch.tensor([lam], dtype=torch.float64)
    tau = TABLE.timestep(lam_t)
    assert float((TABLE.logsnr_at(tau) - lam_t).abs()) < 1e-9
    i = torch.tensor([0, 1, 500, 998, 999])
    assert torch.allclose(TABLE.timestep(TABLE.table[i]), i.double(), atol=1e-9)


def test_tabulated_schedule_is_a_density_and_samples_uniform_timesteps():
    grid = torch.linspace(TABLE.logsnr_min, TABLE.logsnr_max, 400001, dtype=torch.float64)
    assert abs(float(torch.trapezoid(TABLE.density(grid), grid)) - 1) < 1e-3
    lam = TABLE.sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    tau = TABLE.timestep(lam)
    assert abs(float(tau.mean()) - 999 / 2) < 8 and 0 <= float(tau.min()) and float(tau.max()) <= 999


# ---- real diffusers models: the adapter passes the scheduler's own timestep -----------------------------------

def _unet2d():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=3).eval()


def _unet_condition():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                block_out_channels=(8, 8), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2, norm_num_groups=4).eval()


def _dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=2, out_channels=4,
                                 num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=3).eval()


@pytest.mark.parametrize("make,labels_key", [(_unet2d, "class_labels"), (_unet_condition, "encoder_hidden_states"),
                                             (_dit, "class_labels")])
def test_real_diffusers_models_get_the_scheduler_timestep(make, labels_key):
    net = make()
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    model = adapters.wrap(net, "diffusers", scheduler=sched)
    assert model.parameterization.name == "v"
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 250, 999])
    lam = TABLE.table[t].float()
    z = torch.randn(3, 2, 8, 8, generator=g)
    labels = (torch.randn(3, 4, 8, generator=g) if labels_key == "encoder_hidden_states" else torch.tensor([0, 2, 1]))
    with torch.no_grad():
        ours = model(z, lam, labels)
        theirs = net(z, t, **{labels_key: labels}).sample[:, :2]  # DiT: learned-variance half cut off
    assert ours.shape == z.shape
    assert float((ours - theirs).abs().max()) < 1e-5


def test_diffusers_config_dict_and_unknown_options():
    model = adapters.wrap(DiffusersPeer(diffusers_fn(SCHED, "epsilon")), "diffusers",
                          scheduler={"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2"})
    z, lam = _points(8)
    assert float((model(z, lam) - MIX.eps_hat(z, lam)).abs().max()) < 1e-6
    with pytest.raises(OptionError, match="unknown DDPMScheduler option.*bogus.*allowed: num_train_timesteps"):
        adapters.wrap(_unet2d(), "diffusers", scheduler={"bogus": 1})
    with pytest.raises(OptionError, match="unknown prediction_type 'eps'; choose from: epsilon, v_prediction"):
        adapters.wrap(_unet2d(), "diffusers", scheduler=SCHED, prediction_type="eps")
    with pytest.raises(OptionError, match="unknown convention 'k-diffusion'; choose from: logsnr"):
        adapters.wrap(_unet2d(), "k-diffusion")
    with pytest.raises(OptionError, match="unknown parameter.*sigma_dat.*allowed: sigma_data"):
        adapters.wrap(_unet2d(), "edm-raw", sigma_dat=0.5)


# ---- x-prediction without a skip connection under the ELBO -----------------------------------------------------

def test_x_model_without_skip_under_elbo_warns():
    elbo = objectives.get("elbo")
    with pytest.warns(UserWarning, match="x-predicting model without a .declared. skip connection"):
        adapters.wrap(Peer(denoiser_sigma), "denoiser-sigma", objective=elbo)
    assert adapters.x_loss_ratio(weightings.Elbo(), 15.0) == pytest.approx(math.exp(15.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapters.wrap(Peer(denoiser_sigma), "denoiser-sigma", skip_connection=True, objective=elbo)  # declared skip
        adapters.wrap(Peer(edm_raw(0.5)), "edm-raw", objective=elbo)  # EDM's preconditioning is a skip
        adapters.wrap(Peer(logsnr_eps), "logsnr", parameterization="eps", objective=elbo)  # ε-prediction
        adapters.wrap(Peer(denoiser_sigma), "denoiser-sigma", objective=objectives.get("sigmoid"))  # w e^λ bounded


def test_wrapped_model_is_used_unchanged_by_elbo_and_samplers():
    """The ELBO and a sampler see the same denoiser through an adapter as the library's own mixture model."""
    own = MIX.denoiser(parameterizations.Eps())
    wrapped = adapters.wrap(Peer(edm_raw(0.5)), "edm-raw", sigma_data=0.5)
    x = MIX.sample(16, torch.Generator().manual_seed(3))
    pairs = ((own, parameterizations.Eps()), (wrapped, wrapped.parameterization))
    a, b = (elbo(m, p, x, samples=16, replicates=2, reconstruction_samples=2,
                 generator=torch.Generator().manual_seed(4)) for m, p in pairs)
    assert float((a.total - b.total).abs().max()) < 1e-6
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grid = samplers.grid_edm(8)
    xs = [samplers.heun(m, p, noise.clone(), grid) for m, p in ((own, parameterizations.Eps()),
                                                               (wrapped, wrapped.parameterization))]
    assert float((xs[0] - xs[1]).abs().max()) < 1e-6
