"""Objective translators against the peers' own code: per-example losses agree up to ONE constant, derived here, and
the peers' own samplers draw λ from the translated density.

The constant (w = 2 p_π c k, KG23 Eq. (7)): a peer's per-example loss is c(λ)·mean_d‖ŷ − y‖² (EDM: a sum over d)
with λ ~ π; ours is ½ (w/p)‖ε̂ − ε‖² = (p_π/p)·c·‖ŷ − y‖² summed over the D dimensions, with p our training
schedule: π itself (ratio D) or π truncated to [−15, 15], p = p_π/Z (ratio D·Z, Z the mass π keeps there).
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import (
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
    compute_snr,
)
from scipy import optimize, stats
from torch import nn

from diffusion_objectives import WeightedLoss, adapters, translate, weightings
from diffusion_objectives.errors import OptionError
from peer_code import load_kdiffusion

KD = load_kdiffusion()
DIM = 6


class Net(nn.Module):
    """A fixed random peer network f(input, noise) (diffusers' keyword names), float64."""

    def __init__(self, seed=0, out_scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(DIM, DIM, generator=g, dtype=torch.float64) / math.sqrt(DIM)
        self.b = torch.randn(DIM, generator=g, dtype=torch.float64)
        self.out_scale = out_scale

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        return (self.out_scale * torch.tanh(sample @ self.w + timestep.to(sample.dtype)[:, None] * 1e-3 * self.b),)


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g, dtype=torch.float64), torch.randn(n, DIM, generator=g, dtype=torch.float64)


def _ours(obj, model, x, noise, lam):
    """Our per-example loss of ``obj`` (its w and p) for a wrapped model, in the model's parameterization."""
    return WeightedLoss(obj.weighting, obj.schedule, model.parameterization).loss_at(model, x, noise, lam).loss


def _normal_mass(mean, std, lo=-15.0, hi=15.0):
    return stats.norm.cdf((hi - mean) / std) - stats.norm.cdf((lo - mean) / std)


def _ratio_dev(ours, theirs, const):
    return float(((ours / theirs) / const - 1).abs().max())


def _ecdf_dev(samples, obj):
    """sup |ECDF(λ) − (1 − t_π(λ))| on a grid: t_π is the translated (untruncated) density's survival."""
    grid = torch.linspace(-14, 14, 281, dtype=torch.float64)
    ecdf = (samples[None, :] <= grid[:, None]).double().mean(1)
    return float((ecdf - (1 - obj.published.density.t(grid))).abs().max())


N_KS, KS_TOL = 100_000, 0.012  # DKW: P(sup > 0.0086) < 1e-6 at n = 1e5, plus the 1/T table discretisation


# ---- diffusers: flow-matching scripts --------------------------------------------------------------------------

FLOW_CASES = [("none", 1.0, 0.0, False), ("logit_normal", 3.0, 0.5, False), ("logit_normal", 1.0, -1.0, True),
              ("sigma_sqrt", 3.0, 0.0, False), ("cosmap", 2.0, 0.0, True), ("mode", 1.0, 0.0, False),
              ("mode", 3.0, 0.0, True)]


def _flow_mass(scheme, shift, logit_mean, logit_std=1.0):
    """Z of π on [−15, 15]: λ = 2 logit u − 2 ln shift with logit u ~ N(m, s²) or u ~ U(0, 1)."""
    if scheme == "logit_normal":
        return _normal_mass(2 * logit_mean - 2 * math.log(shift), 2 * logit_std)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    if scheme == "mode":  # σ_unshifted = F(v), F(x) = (1 + s)x − s sin²(πx/2) increasing: Z = F⁻¹(b) − F⁻¹(a)
        F = lambda x: (1 + 1.29) * x - 1.29 * math.sin(math.pi * x / 2) ** 2  # noqa: E731
        a, b = (sig((-v - 2 * math.log(shift)) / 2) for v in (15.0, -15.0))  # σ_unshifted at λ = ±15
        inv = [optimize.brentq(lambda x, y=y: F(x) - y, 0, 1, xtol=1e-15) for y in (a, b)]
        return inv[1] - inv[0]
    return sig((15 + 2 * math.log(shift)) / 2) - sig((-15 + 2 * math.log(shift)) / 2)


def _flow_peer_lambdas(sched, scheme, logit_mean, n, seed):
    """The SD3 script's draw: u → index ⌊uT⌋ → the scheduler's σ; returned as λ = −2 logit σ (σ < 1 only)."""
    u = compute_density_for_timestep_sampling(scheme, n, logit_mean=logit_mean, logit_std=1.0, mode_scale=1.29,
                                              generator=torch.Generator().manual_seed(seed))
    idx = (u * sched.config.num_train_timesteps).long()
    idx = idx[idx > 0]  # σ = 1 (index 0) is λ = −∞
    return idx, -2 * torch.logit(sched.sigmas[idx].double())


@pytest.mark.parametrize("scheme,shift,logit_mean,precondition", FLOW_CASES)
def test_from_diffusers_flow_matches_sd3_script(scheme, shift, logit_mean, precondition):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    obj = translate.from_diffusers(sched, weighting_scheme=scheme, logit_mean=logit_mean,
                                    precondition_outputs=precondition)
    idx, lam = _flow_peer_lambdas(sched, scheme, logit_mean, 4000, 0)
    keep = (lam > -15) & (lam < 15)
    idx, lam = idx[keep][:256], lam[keep][:256]
    x, noise = _data(len(idx))
    sigmas = sched.sigmas[idx].double()[:, None]
    net = Net()
    noisy = (1 - sigmas) * x + sigmas * noise  # train_dreambooth_sd3.py
    pred = net(noisy, sigmas[:, 0] * 1000)[0]
    if precondition:
        pred, target = pred * (-sigmas) + noisy, x
    else:
        target = noise - x
    weighting = compute_loss_weighting_for_sd3(scheme, sigmas).double()
    theirs = (weighting * (pred - target) ** 2).mean(1)
    ours = _ours(obj, adapters.wrap(net, "diffusers-flow"), x, noise, lam)
    assert _ratio_dev(ours, theirs, DIM * _flow_mass(scheme, shift, logit_mean)) < 1e-6  # sigma_sqrt: float32
    _, lam_all = _flow_peer_lambdas(sched, scheme, logit_mean, N_KS, 1)
    assert _ecdf_dev(lam_all, obj) < KS_TOL


def test_from_diffusers_flow_is_sd3_and_dynamic_shifting_trains_unshifted():
    obj = translate.from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler"},
                                    weighting_scheme="logit_normal")
    grid = torch.linspace(-15, 15, 61, dtype=torch.float64)
    assert torch.allclose(obj.weighting(grid), weightings.SD3()(grid), rtol=1e-12)
    dyn = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    assert torch.equal(dyn.sigmas, FlowMatchEulerDiscreteScheduler().sigmas)  # diffusers' own training table
    assert torch.allclose(translate.from_diffusers(dyn, weighting_scheme="logit_normal").weighting(grid),
                          obj.weighting(grid), rtol=1e-12)


# ---- diffusers: DDPM-type schedulers with Min-SNR --------------------------------------------------------------

@pytest.mark.parametrize("prediction_type,beta_schedule", [("epsilon", "squaredcos_cap_v2"), ("v_prediction", "linear"),
                                                           ("epsilon", "scaled_linear")])
def test_from_diffusers_min_snr_matches_compute_snr(prediction_type, beta_schedule):
    sched = DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type)
    obj = translate.from_diffusers(sched, snr_gamma=5.0)
    g = torch.Generator().manual_seed(2)
    t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (254,), generator=g)])
    x, noise = _data(len(t))
    net = Net(3)
    # train_text_to_image.py: add_noise, target by prediction_type, Min-SNR weights from compute_snr
    noisy = sched.add_noise(x, noise, t)
    target = noise if prediction_type == "epsilon" else sched.get_velocity(x, noise, t)
    snr = compute_snr(sched, t)
    mse_loss_weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    mse_loss_weights = mse_loss_weights / (snr if prediction_type == "epsilon" else snr + 1)
    theirs = ((net(noisy, t)[0] - target) ** 2).mean(1) * mse_loss_weights.double()
    model = adapters.wrap(net, "diffusers", scheduler=sched)
    lam = model.table.table[t]
    ours = _ours(obj, model, x, noise, lam)
    assert _ratio_dev(ours, theirs, DIM) < 1e-6  # compute_snr returns float32


# ---- k-diffusion -----------------------------------------------------------------------------------------------

class Inner(nn.Module):
    """k-diffusion's inner model F(c_in x̃, σ) as EDM's raw F(c_in x̃, c_noise = ¼ ln σ)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, u, sigma):
        return self.f(u, 0.25 * torch.log(sigma))


def _raw_f(u, c_noise):
    return Net(5, out_scale=2.0)(u, c_noise * 1e3)[0]


@pytest.mark.skipif(isinstance(KD, str), reason=str(KD))
@pytest.mark.parametrize("weighting", ["karras", "snr", "soft-min-snr"])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_from_k_diffusion_matches_denoiser_loss(weighting, sigma_data):
    loc, scale = -1.2, 1.2
    obj = translate.from_k_diffusion({"type": "lognormal", "loc": loc, "scale": scale}, loss_weighting=weighting,
                                      sigma_data=sigma_data)
    torch.manual_seed(0)
    sigma = KD.rand_log_normal([256], loc=loc, scale=scale, dtype=torch.float64).clamp(math.exp(-7.4), math.exp(7.4))
    x, noise = _data(256)
    theirs = KD.Denoiser(Inner(_raw_f), sigma_data=sigma_data, weighting=weighting).loss(x, noise, sigma)
    ours = _ours(obj, adapters.wrap(_raw_f, "edm-raw", sigma_data=sigma_data), x, noise, -2 * torch.log(sigma))
    assert _ratio_dev(ours, theirs, DIM * _normal_mass(-2 * loc, 2 * scale)) < 1e-9


@pytest.mark.skipif(isinstance(KD, str), reason=str(KD))
@pytest.mark.parametrize("spec,sampler", [
    ({"type": "lognormal", "mean": -0.4, "std": 1.0}, lambda n: KD.rand_log_normal([n], -0.4, 1.0)),
    ({"type": "loguniform", "min_value": 0.01, "max_value": 50.0}, lambda n: KD.rand_log_uniform([n], 0.01, 50.0)),
    ({"type": "v-diffusion", "min_value": 0.01, "max_value": 80.0},
     lambda n: KD.rand_v_diffusion([n], sigma_data=0.5, min_value=0.01, max_value=80.0)),
    ({"type": "loglogistic", "loc": -0.5, "scale": 0.6, "min_value": 0.005, "max_value": 100.0},
     lambda n: KD.rand_log_logistic([n], -0.5, 0.6, 0.005, 100.0)),
    ({"type": "loglogistic"}, lambda n: KD.rand_log_logistic([n], math.log(0.5), 0.5)),  # defaults: ln σ_d, 0.5
    ({"type": "split-lognormal", "mean": -0.8, "std_1": 0.7, "std_2": 1.6},
     lambda n: KD.rand_split_log_normal([n], -0.8, 0.7, 1.6)),
    ({"type": "cosine-interpolated", "image_d": 256, "noise_d_low": 32, "noise_d_high": 128},
     lambda n: KD.rand_cosine_interpolated([n], 256, 32, 128, sigma_data=0.5, min_value=1e-3, max_value=1e3)),
])
def test_from_k_diffusion_densities_match_its_samplers(spec, sampler):
    obj = translate.from_k_diffusion(spec, sigma_data=0.5)
    torch.manual_seed(1)
    lam = -2 * torch.log(sampler(N_KS).double())
    assert _ecdf_dev(lam, obj) < 0.009


# ---- kohya sd-scripts (not installable: transcribed with citations) ------------------------------------------

def kohya_sd_loss(net, sched, x, noise, t, v_prediction, gamma, debiased):
    """library/train_util.py + custom_train_functions.py (prepare_scheduler_for_custom_training, apply_snr_weight,
    apply_debiased_estimation), transcribed."""
    all_snr = (torch.sqrt(sched.alphas_cumprod) / torch.sqrt(1.0 - sched.alphas_cumprod)) ** 2
    noisy = sched.add_noise(x, noise, t)
    target = sched.get_velocity(x, noise, t) if v_prediction else noise
    loss = ((net(noisy, t)[0] - target) ** 2).mean(1)
    snr = torch.stack([all_snr[i] for i in t]).double()
    if gamma:
        min_snr_gamma = torch.minimum(snr, torch.full_like(snr, gamma))
        loss = loss * (min_snr_gamma / (snr + 1) if v_prediction else min_snr_gamma / snr)
    if debiased:
        snr_t = torch.minimum(snr, torch.ones_like(snr) * 1000)
        loss = loss * (1 / (snr_t + 1) if v_prediction else 1 / torch.sqrt(snr_t))
    return loss


@pytest.mark.parametrize("v_prediction,gamma,debiased", [(False, 5.0, False), (True, 5.0, False), (False, None, True),
                                                         (True, 5.0, True)])
def test_from_kohya_sd_matches_transcription(v_prediction, gamma, debiased):
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    obj = translate.from_kohya(v_parameterization=v_prediction, min_snr_gamma=gamma, debiased_estimation_loss=debiased)
    t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (126,), generator=torch.Generator().manual_seed(3))])
    x, noise = _data(len(t))
    net = Net(4)
    theirs = kohya_sd_loss(net, sched, x, noise, t, v_prediction, gamma, debiased)
    model = adapters.wrap(net, "diffusers", scheduler=sched, prediction_type="v_prediction" if v_prediction else None)
    ours = _ours(obj, model, x, noise, model.table.table[t])
    assert _ratio_dev(ours, theirs, DIM) < 1e-5  # kohya's float32 SNR table vs our float64 one


def kohya_flow_sigmas(timestep_sampling, n, sigmoid_scale=1.0, shift=3.0, generator=None, h=128, w=128):
    """library/flux_train_utils.py get_noisy_model_input_and_timesteps (sigmoid, shift and flux_shift branches, with
    get_lin_function and time_shift), transcribed; ``h``, ``w``: the latent size."""
    if timestep_sampling == "sigmoid":
        return torch.sigmoid(sigmoid_scale * torch.randn((n,), generator=generator, dtype=torch.float64))
    sigmas = (torch.randn(n, generator=generator, dtype=torch.float64) * sigmoid_scale).sigmoid()
    if timestep_sampling == "flux_shift":
        m = (1.15 - 0.5) / (4096 - 256)
        mu = m * ((h // 2) * (w // 2)) + (0.5 - m * 256)
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
    return (sigmas * shift) / (1 + (shift - 1) * sigmas)


FLUX_SHIFT_1024 = math.exp(0.5 + (1.15 - 0.5) / 3840 * (64 * 64 - 256))  # e^μ for 128×128 latents (1024 px)


@pytest.mark.parametrize("sampling,scale,shift", [("sigmoid", 1.0, 1.0), ("sigmoid", 1.5, 1.0), ("shift", 1.0, 3.1582),
                                                  ("flux_shift", 1.0, FLUX_SHIFT_1024)])
def test_from_kohya_flow_matches_transcription(sampling, scale, shift):
    obj = translate.from_kohya(timestep_sampling=sampling, sigmoid_scale=scale, discrete_flow_shift=shift,
                                image_seq_len=64 * 64)
    sigmas = kohya_flow_sigmas(sampling, 256, scale, shift, torch.Generator().manual_seed(4))
    x, noise = _data(256)
    net = Net(6)
    noisy = (1 - sigmas[:, None]) * x + sigmas[:, None] * noise
    theirs = ((net(noisy, sigmas * 1000)[0] - (noise - x)) ** 2).mean([1])  # target = noise − latents, raw
    ours = _ours(obj, adapters.wrap(net, "diffusers-flow"), x, noise, -2 * torch.logit(sigmas))
    assert _ratio_dev(ours, theirs, DIM * _normal_mass(-2 * math.log(shift), 2 * scale)) < 1e-9
    lam = -2 * torch.logit(kohya_flow_sigmas(sampling, N_KS, scale, shift, torch.Generator().manual_seed(5)))
    assert _ecdf_dev(lam, obj) < 0.009


def test_from_kohya_flux_ignores_min_snr_and_sigma_is_diffusers_sampler():
    with pytest.warns(UserWarning, match="ignore min_snr_gamma"):
        obj = translate.from_kohya(timestep_sampling="sigmoid", sigmoid_scale=1.0, min_snr_gamma=5)
    grid = torch.linspace(-15, 15, 61, dtype=torch.float64)
    assert torch.allclose(obj.weighting(grid), weightings.SD3()(grid), rtol=1e-12)  # rf/lognorm(0, 1)
    sigma = translate.from_kohya(timestep_sampling="sigma", weighting_scheme="logit_normal", discrete_flow_shift=3.0)
    diffusers_sd3 = translate.from_diffusers(FlowMatchEulerDiscreteScheduler(shift=3.0),
                                              weighting_scheme="logit_normal")
    assert torch.allclose(sigma.weighting(grid), diffusers_sd3.weighting(grid), rtol=1e-12)  # the same sampler
    with pytest.raises(OptionError, match="unknown model_prediction_type 'x'; choose from: raw, additive"):
        translate.from_kohya(timestep_sampling="sigma", model_prediction_type="x")


class SigmaScaled(nn.Module):
    """kohya's sigma_scaled velocity û = z_RF − σ·out of a raw network ``out``, as a diffusers-flow model."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        return (sample - (timestep / 1000)[:, None] * self.net(sample, timestep)[0],)


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap", "uniform"])
def test_from_kohya_sigma_scaled_matches_transcription(scheme):
    obj = translate.from_kohya(timestep_sampling="sigmoid", model_prediction_type="sigma_scaled",
                                weighting_scheme=scheme)
    sigmas = kohya_flow_sigmas("sigmoid", 256, generator=torch.Generator().manual_seed(6))
    x, noise = _data(256)
    net = Net(10)
    noisy = (1 - sigmas[:, None]) * x + sigmas[:, None] * noise
    # flux_train_utils.apply_model_prediction_type (sigma_scaled) and flux_train_network.py: target = noise − latents
    model_pred = net(noisy, sigmas * 1000)[0] * (-sigmas[:, None]) + noisy
    weighting = compute_loss_weighting_for_sd3(scheme, sigmas[:, None]).double()
    theirs = (weighting * (model_pred - (noise - x)) ** 2).mean(1)
    ours = _ours(obj, adapters.wrap(SigmaScaled(net), "diffusers-flow"), x, noise, -2 * torch.logit(sigmas))
    assert _ratio_dev(ours, theirs, DIM * _normal_mass(0.0, 2.0)) < 1e-6  # sigma_sqrt weights are float32


# ---- EDM (not installable: training/loss.py transcribed) ----------------------------------------------------

def edm_losses(kind, D, y, n, sigma_data=0.5):
    """NVlabs/edm training/loss.py EDMLoss, VPLoss, VELoss __call__ for given normals/uniforms ``n``, transcribed;
    returns (σ, per-example loss summed over d as the training loop sums it)."""
    if kind == "edm":
        sigma = (n * 1.2 + -1.2).exp()
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    elif kind == "vp":
        t = 1 + n * (1e-5 - 1)
        sigma = ((0.5 * 19.9 * t**2 + 0.1 * t).exp() - 1).sqrt()
        weight = 1 / sigma**2
    else:
        sigma = 0.02 * ((100 / 0.02) ** n)
        weight = 1 / sigma**2
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    D_yn = D(y + eps * sigma[:, None], sigma)
    return sigma, eps, (weight[:, None] * ((D_yn - y) ** 2)).sum(1)


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_from_edm_matches_transcription(kind):
    g = torch.Generator().manual_seed(7)
    n = torch.randn(256, generator=g, dtype=torch.float64) if kind == "edm" else torch.rand(256, generator=g,
                                                                                           dtype=torch.float64)
    net = Net(8)

    def D(x_tilde, sigma):  # a denoiser with EDM's skip (any function of (x̃, σ) would do)
        return x_tilde / (1 + sigma[:, None] ** 2) + net(x_tilde, sigma)[0]

    x, _ = _data(256)
    sigma, eps, theirs = edm_losses(kind, D, x, n)
    lam = -2 * torch.log(sigma)
    keep = (lam > -15) & (lam < 15)
    obj = translate.from_edm(kind)
    ours = _ours(obj, adapters.wrap(D, "denoiser-sigma", skip_connection=True), x[keep], eps[keep], lam[keep])
    const = _normal_mass(2.4, 2.4) if kind == "edm" else 1.0
    assert _ratio_dev(ours, theirs[keep], const) < 1e-9


def test_from_edm_is_the_edm_preset():
    grid = torch.linspace(-15, 15, 61, dtype=torch.float64)
    assert torch.allclose(translate.from_edm().weighting(grid), weightings.EDMWeighting()(grid), rtol=1e-12)
    assert torch.allclose(translate.from_edm("edm2").weighting(grid),
                          weightings.EDMWeighting(p_mean=-0.4, p_std=1.0)(grid), rtol=1e-12)


@pytest.mark.parametrize("call,message", [
    (lambda: translate.from_diffusers(FlowMatchEulerDiscreteScheduler(), weighting_scheme="lognorm"),
     "unknown weighting_scheme 'lognorm'; choose from: none, logit_normal, mode, sigma_sqrt, cosmap"),
    (lambda: translate.from_diffusers(DDPMScheduler(), weighting_scheme="logit_normal"), "flow-matching schedulers"),
    (lambda: translate.from_k_diffusion({"type": "lognormal", "loc": 0, "scale": 1}, loss_weighting="min-snr"),
     "unknown loss_weighting 'min-snr'; choose from: karras, snr, soft-min-snr"),
    (lambda: translate.from_k_diffusion({"type": "lognormal", "loc": 0, "scale": 1, "mu": 2}),
     "unknown key.*mu.*allowed: loc, scale"),
    (lambda: translate.from_kohya(timestep_sampling="logit"), "choose from: uniform, sigmoid, shift, flux_shift"),
    (lambda: translate.from_edm("vpx"), "unknown EDM loss kind 'vpx'; choose from: edm, edm2, vp, ve"),
])
def test_translator_errors_name_the_allowed_values(call, message):
    with pytest.raises(OptionError, match=message):
        call()


def test_constants_are_not_trivial():  # Z differs from 1 by more than the tolerances: the truncation is seen
    assert abs(_flow_mass("none", 3.0, 0.0) - 1) > 1e-3 and abs(_normal_mass(2.4, 2.4) - 1) > 5e-8
    assert np.isclose(_flow_mass("logit_normal", 1.0, 0.0), _normal_mass(0.0, 2.0))
