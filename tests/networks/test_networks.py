"""Tests for diffusion_objectives.networks: shapes, zero initial output, finite gradients, class
conditioning with a null label, determinism, and the documented preset sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives import data, networks, objectives
from diffusion_objectives.core.process import sigma_ve
from diffusion_objectives.errors import OptionError
from diffusion_objectives.networks.embedding import FourierEmbedding, PositionalEmbedding, drop_labels
from diffusion_objectives.networks.unet import Attention, group_count


def small_unet(**kw):
    params = dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  resolution=8, emb_mult=2)
    return networks.get("unet", **{**params, **kw})


def inputs(shape, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch,) + shape, generator=g), torch.rand(batch, generator=g) * 30 - 15


def perturb_(net, seed=1, scale=0.05):
    """Give every parameter (the zero-initialised ones too) a random value, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


# name, params, example shape (a 28 × 28 and odd sizes exercise 28 → 14 → 7 and 7 → 4)
CASES = [
    ("mlp", dict(dim=2, hidden=32, depth=2, fourier_features=8), (2,)),
    ("mlp", dict(dim=6, hidden=16, depth=1, fourier_features=4), (2, 3)),
    ("unet", dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  resolution=8, emb_mult=2), (1, 8, 8)),
    ("unet", dict(in_channels=1, channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
                  resolution=28, emb_mult=2), (1, 28, 28)),
    ("unet", dict(in_channels=3, channels=8, channel_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(),
                  resolution=7, emb_mult=2), (3, 7, 9)),
    ("unet", dict(in_channels=5, channels=12, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                  attn_resolutions=(8,), resolution=64, emb_mult=1), (5, 64, 64)),
]


@pytest.mark.parametrize("name,params,shape", CASES)
def test_output_shape_zero_init_and_finite_gradients(name, params, shape):
    net = networks.get(name, **params)
    z, logsnr = inputs(shape)
    out = net(z, logsnr)
    assert out.shape == z.shape and torch.equal(out, torch.zeros_like(z))  # zero-initialised final layer
    perturb_(net)
    logsnr = torch.tensor([-15.0, 0.0, 15.0])  # the endpoints and the middle
    out = net(z, logsnr)
    assert out.shape == z.shape and out.abs().sum() > 0
    out.square().sum().backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_unet_accepts_other_sizes_than_its_resolution():
    net = perturb_(small_unet())
    for hw in [(8, 8), (5, 11), (16, 16), (1, 1)]:
        z, logsnr = inputs((1,) + hw)
        assert net(z, logsnr).shape == z.shape
    assert torch.equal(F.avg_pool2d(torch.ones(1, 1, 7, 7), 2, ceil_mode=True), torch.ones(1, 1, 4, 4))


def test_outputs_depend_on_each_example_alone():
    net = perturb_(small_unet(dropout=0.0)).eval()
    z, logsnr = inputs((1, 8, 8), batch=4)
    whole = net(z, logsnr)
    for i in range(4):
        torch.testing.assert_close(net(z[i:i + 1], logsnr[i:i + 1]), whole[i:i + 1], rtol=1e-5, atol=1e-6)


def test_noise_embedding_sees_logsnr():
    net = perturb_(small_unet())
    z, _ = inputs((1, 8, 8), batch=2)
    z = z[:1].expand(2, -1, -1, -1)
    out = net(z, torch.tensor([-3.0, 3.0]))
    assert not torch.allclose(out[0], out[1])
    assert net(z, torch.tensor(2.0)).shape == z.shape  # a scalar λ is broadcast


def test_noise_input_is_edm_c_noise():
    logsnr = torch.linspace(-15, 15, 31)
    torch.testing.assert_close(networks.noise_input(logsnr), 0.25 * torch.log(sigma_ve(logsnr)))
    x = torch.tensor([0.3, -1.2])
    emb = PositionalEmbedding(8)(x)
    f = torch.tensor([10_000 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb, torch.cat([torch.cos(x[:, None] * f), torch.sin(x[:, None] * f)], 1))
    fe = FourierEmbedding(6, scale=2.0)
    assert torch.allclose(fe(x).square().reshape(2, 2, 3).sum(1), torch.ones(2, 3))  # cos² + sin² = 1


# -- class conditioning -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,shape", [
    ("unet", dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  resolution=8, emb_mult=2), (1, 8, 8)),
    ("mlp", dict(dim=2, hidden=16, depth=2, fourier_features=8), (2,)),
])
def test_class_conditioning_and_null_label(name, params, shape):
    net = networks.get(name, num_classes=3, **params)
    assert net.num_classes == 3 and net.null_label == 3
    z, logsnr = inputs(shape, batch=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    target = labels.float().reshape((-1,) + (1,) * len(shape)).expand_as(z)  # a label-dependent target
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):  # zero-initialised layers need a few steps before the labels reach the output
        opt.zero_grad()
        (net(z, logsnr, labels) - target).square().mean().backward()
        opt.step()
    with torch.no_grad():
        a = net(z, logsnr, torch.zeros(6, dtype=torch.int64))
        b = net(z, logsnr, torch.ones(6, dtype=torch.int64))
        null = net(z, logsnr, torch.full((6,), 3))
        assert not torch.allclose(a, b)
        assert torch.equal(net(z, logsnr), null)  # no labels = the null label
    with pytest.raises(ValueError, match="unconditional"):
        networks.get(name, **params)(z, logsnr, labels)


@given(p=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_drop_labels(p, seed):
    labels = torch.arange(50) % 7
    out = drop_labels(labels, 7, p, torch.Generator().manual_seed(seed))
    drop = torch.rand(50, generator=torch.Generator().manual_seed(seed)) < p
    assert torch.equal(out, torch.where(drop, 7, labels))


# -- construction -------------------------------------------------------------------------------------
def test_initial_weights_are_a_function_of_the_seed_only():
    state = torch.get_rng_state()
    a, b, c = small_unet(seed=5), small_unet(seed=5), small_unet(seed=6)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    m1, m2 = networks.get("mlp", seed=1), networks.get("mlp", seed=1)
    assert torch.equal(m1.fourier.freqs, m2.fourier.freqs)


@given(channels=st.integers(1, 1024))
def test_group_norm_and_heads_divide_channels(channels):
    g = group_count(channels)
    assert channels % g == 0 and 1 <= g <= 32
    assert channels // g >= 4 or g == 1
    heads = Attention(channels).heads if channels <= 256 else None
    assert heads is None or channels % heads == 0


def test_bad_network_options():
    with pytest.raises(OptionError, match="attn_resolutions"):
        networks.get("unet", resolution=32, channel_mult=(1, 2), attn_resolutions=(8,))
    with pytest.raises(OptionError, match="chanels"):
        networks.get("unet", chanels=8)
    with pytest.raises(OptionError, match="preset"):
        networks.preset("huge")
    with pytest.raises(ValueError, match="expected z"):
        small_unet()(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    assert set(networks.names()) == {"mlp", "unet", "diffusers-unet2d"}


# -- presets ------------------------------------------------------------------------------------------
def mlp_count(dim, hidden, depth, fourier_features):
    """W_in, then per layer W_i (H×H) and U_i (F×H), then W_out; each with a bias."""
    return (dim * hidden + hidden) + depth * (hidden * hidden + hidden + fourier_features * hidden + hidden) + (
        hidden * dim + dim)


@pytest.mark.parametrize("name,low,high", [
    ("tiny", 10_000, 50_000),
    ("digits", 300_000, 1_000_000),
    ("fashion-mnist", 1_000_000, 3_500_000),
    # EDM22 Table 7 reports 295.9 M parameters for its ADM ImageNet-64 network
    ("imagenet64-kg23", 295_000_000, 297_000_000),
])
def test_preset_sizes(name, low, high):
    net_name, params = networks.preset(name)
    with torch.device("meta"):  # count without allocating (the ImageNet network is 1.2 GB in float32)
        count = networks.get(net_name, **params).num_parameters()
    assert low <= count <= high


def test_mlp_preset_count_and_overrides():
    name, params = networks.preset("toy-mlp", hidden=64)
    assert name == "mlp" and params["hidden"] == 64
    net = networks.from_preset("toy-mlp")
    assert net.num_parameters() == mlp_count(2, 256, 4, 64)
    assert set(networks.preset_names()) == {"tiny", "toy-mlp", "digits", "fashion-mnist", "imagenet64-kg23"}


# -- with a loss: the network learns the closed-form denoiser direction -----------------------------------
def test_mlp_trains_toward_the_optimal_denoiser():
    ds = data.get("ring", n=4096, seed=0)
    net = networks.get("mlp", hidden=64, depth=2, fourier_features=16)
    loss_fn = objectives.get("elbo").loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        x = ds.data[data.batch_indices(len(ds), 256, 0, step)]
        opt.zero_grad()
        loss_fn(net, x, g).loss.mean().backward()
        opt.step()
    # on fresh points at moderate noise, ε̂_net is closer to the exact ε̂* than the initial output 0 is
    x = data.get("ring", n=2000, split="test").data
    logsnr = torch.linspace(-2.0, 4.0, 2000)
    eps = torch.randn(x.shape, generator=g)
    alpha, sigma = torch.sigmoid(logsnr).sqrt()[:, None], torch.sigmoid(-logsnr).sqrt()[:, None]
    z = alpha * x + sigma * eps
    with torch.no_grad():
        best = ds.mixture.eps_hat(z, logsnr)
        err = (net(z, logsnr) - best).square().sum(1).mean()
    assert err < 0.5 * best.square().sum(1).mean()
    assert math.isfinite(err.item())
