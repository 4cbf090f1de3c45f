"""diffusers models in and out: ``network.name=diffusers-unet2d`` trains on every kind of dataset (vector, 1- and
3-channel images, class-conditional with the null label), ``diffobj export --to diffusers`` writes a pipeline that
diffusers alone loads and samples exactly like the library's DDIM, and ``diffobj elbo``/``sample``/``evaluate``
read pipeline directories, exported ones and ones saved by diffusers' own ``save_pretrained``."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives import networks, samplers
from diffusion_objectives.cli import main
from diffusion_objectives.errors import OptionError
from diffusion_objectives.networks.diffusers_unet import linear_logsnr_betas
from diffusion_objectives.training import load_for_inference

COMMON = ["--no-progress", "--set", "run.sample_every=0", "--set", "run.device=cpu", "--set", "run.precision=fp32",
          "--set", "optim.warmup_images=0", "--set", "network.name=diffusers-unet2d",
          "--set", "network.params.block_out_channels=[16,32]"]
ONE_LEVEL = ["--set", "network.params.block_out_channels=[32]", "--set",
             "network.params.down_block_types=[DownBlock2D]", "--set", "network.params.up_block_types=[UpBlock2D]"]


def _train(out, *args):
    assert main(["train", "--out", str(out), "--batch-size", "16", *COMMON, *args]) == 0
    return out


@pytest.fixture(scope="module")
def v_run(tmp_path_factory):
    """Unconditional digits, v-prediction, 30 steps at a high learning rate (samples of moderate size)."""
    out = tmp_path_factory.mktemp("v") / "run"
    return _train(out, "--preset", "digits", "--steps", "30", "--set", "network.conditional=false",
                  "--set", "loss.parameterization.name=v", "--set", "optim.lr=2e-3")


@pytest.fixture(scope="module")
def exported(v_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pipe"
    assert main(["export", str(v_run), "--to", "diffusers", "--out", str(out), "--no-ema"]) == 0
    return out


def _npz(path, rng):
    images = rng.integers(0, 256, size=(20, 16, 16, 3), dtype=np.uint8)
    np.savez(path, images, rng.integers(0, 3, size=20))
    return path


FASHION_INSTALLED = Path("/usr/share/datasets/fashion-mnist").is_dir()  # scripts/_env.sh installs it in CI


@pytest.mark.parametrize("case", ["ring", pytest.param("fashion-mnist", marks=pytest.mark.skipif(
    not FASHION_INSTALLED, reason="dataset-fashion-mnist is not installed")), "npz-rgb-conditional"])
def test_trains_on_every_kind_of_dataset(case, tmp_path):
    args = {"ring": ["--preset", "toy2d", *ONE_LEVEL],
            "fashion-mnist": ["--preset", "fashion-mnist", "--set", "network.conditional=false"],
            "npz-rgb-conditional": ["--preset", "digits", "--set", "data.name=npz", "--set",
                                    f"data.params={{path: {_npz(tmp_path / 'd.npz', np.random.default_rng(0))}}}"]}
    run = _train(tmp_path / "run", "--steps", "2", *args[case])
    loaded = load_for_inference(run, ema=False)
    params = loaded.config.network.params  # the noise table is recorded in the resolved config
    assert (params["logsnr_min"], params["logsnr_max"], params["num_train_timesteps"]) == (-15.0, 13.0, 1000)
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all(math.isfinite(s["loss"]) for s in stats if "loss" in s)
    assert loaded.model.num_classes == (3 if case == "npz-rgb-conditional" else 0)


def test_the_unet_gets_the_linear_table_timestep_and_the_null_label(tmp_path):
    """The network is the UNet2DModel called at τ = (λ_max − λ)/(λ_max − λ_min)·(T − 1) (the table is linear
    in λ; float32 ᾱ bends it only near λ_max), with ``class_labels`` = the label, and label ``None`` is the
    null label num_classes (class embedding num_classes + 1 rows)."""
    net = networks.get("diffusers-unet2d", in_channels=1, resolution=8, num_classes=10, seed=3)
    assert net.unet.class_embedding.num_embeddings == 11 and net.null_label == 10
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    lam = torch.tensor([-14.0, -3.0, 0.5, 7.0])
    labels = torch.tensor([0, 3, 9, 10])
    tau = (13.0 - lam) / 28.0 * 999
    with torch.no_grad():
        want = net.unet(z, tau, class_labels=labels).sample
        null = net.unet(z, tau, class_labels=torch.full((4,), 10)).sample
        torch.testing.assert_close(net(z, lam, labels), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(net(z, lam), null, atol=1e-4, rtol=1e-4)


@given(st.floats(-20, 0), st.floats(0.5, 20), st.integers(2, 2000))
def test_linear_table_betas(lo, width, T):
    """∏_{s ≤ τ}(1 − β_s) = sigmoid(λ_τ) with λ linear from λ_max to λ_min (float64, DDPM Eq. (4))."""
    hi = lo + width
    betas = np.asarray(linear_logsnr_betas(lo, hi, T))
    lam = hi - width * np.arange(T) / (T - 1)
    log_abar = np.cumsum(np.log1p(-betas))
    assert np.all((betas > 0) & (betas < 1))
    np.testing.assert_allclose(log_abar, -np.logaddexp(0, -lam), rtol=1e-9, atol=1e-12)


def test_a_table_float32_cannot_hold_is_refused():
    with pytest.raises(OptionError, match="logsnr_max"):
        networks.get("diffusers-unet2d", in_channels=1, resolution=8, logsnr_max=15.0)


PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
    path, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seeds = [0, 1, 2, 3]
    pipe = DiffusionPipeline.from_pretrained(path)
    images = pipe(batch_size=4, generator=[torch.Generator().manual_seed(s) for s in seeds], eta=0.0,
                  num_inference_steps=steps, output_type="np").images
    unet = pipe.unet
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    def chain(sched):  # the pipeline's loop, unclamped
        sched.set_timesteps(steps)
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x.numpy(), sched.timesteps.numpy()

    x, timesteps = chain(pipe.scheduler)
    dpm = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                  solver_order=2, final_sigmas_type="zero")
    x_dpm, timesteps_dpm = chain(dpm)
    assert "diffusion_objectives" not in sys.modules
    np.savez(out, images=images, x=x, timesteps=timesteps, x_dpm=x_dpm, timesteps_dpm=timesteps_dpm,
             alphas_cumprod=pipe.scheduler.alphas_cumprod.double().numpy())
""")


def test_exported_pipeline_samples_like_the_library_ddim_and_dpm_solver(v_run, exported, tmp_path):
    index = json.loads((exported / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    steps = 10
    script = tmp_path / "sample.py"
    script.write_text(PIPELINE_SCRIPT)
    subprocess.run([sys.executable, str(script), str(exported), str(steps), str(tmp_path / "out.npz")], check=True,
                   timeout=300, capture_output=True)
    got = np.load(tmp_path / "out.npz")
    assert list(got["timesteps"]) == [999 - 100 * k for k in range(steps)]  # trailing spacing
    # the library's DDIM on the λ of those timesteps, from diffusers' own ᾱ (λ = log ᾱ − log(1 − ᾱ))
    abar = torch.from_numpy(got["alphas_cumprod"])[torch.from_numpy(got["timesteps"]).long()]
    grid = torch.log(abar) - torch.log1p(-abar)
    loaded = load_for_inference(v_run, ema=False)
    noise = samplers.seeded_noise([0, 1, 2, 3], (1, 8, 8))
    ours = samplers.ddim(loaded.model, loaded.objective.parameterization, noise, grid).numpy()
    assert np.abs(got["x"] - ours).max() < 1e-4 * max(1.0, np.abs(ours).max())
    pixels = ((np.clip(ours, -1, 1) + 1) / 2).transpose(0, 2, 3, 1)  # DDIMPipeline's output_type="np"
    assert np.abs(got["images"] - pixels).max() < 1e-4
    # DPM-Solver++(2M) from the same scheduler configuration: the library's dpmpp_2m on the same grid
    assert list(got["timesteps_dpm"]) == list(got["timesteps"])
    ours = samplers.dpmpp_2m(loaded.model, loaded.objective.parameterization, noise, grid).numpy()
    assert np.abs(got["x_dpm"] - ours).max() < 1e-4 * max(1.0, np.abs(ours).max())


def test_models_without_an_exact_mapping_exit_2_saying_why(tmp_path, capsys):
    mlp = tmp_path / "mlp"
    assert main(["train", "--out", str(mlp), "--preset", "toy2d", "--steps", "1", "--batch-size", "16",
                 "--no-progress", "--set", "run.sample_every=0", "--set", "network.params.hidden=16"]) == 0
    flow = _train(tmp_path / "flow", "--preset", "toy2d", "--steps", "1", *ONE_LEVEL,
                  "--set", "loss.parameterization.name=flow")
    capsys.readouterr()
    assert main(["export", str(mlp), "--to", "diffusers", "--out", str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert "network 'mlp' cannot be exported" in err and "no diffusers model class" in err
    assert main(["export", str(flow), "--to", "diffusers", "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert "parameterization 'flow' cannot be exported" in err and "prediction_type" in err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
    assert main(["export", str(flow), "--to", "onnx", "--out", str(tmp_path / "e3")]) == 2
    assert "--to" in capsys.readouterr().err


def test_exported_pipeline_bits_per_dim_equal_the_run(v_run, exported, tmp_path):
    """The pipeline directory is the same model: the same examples and seed give the run's −ELBO exactly,
    and ``evaluate``'s bpd is the same protocol."""
    args = ["--n", "24", "--samples", "8", "--seed", "0", "--no-progress"]  # evaluate's bpd: seed 0
    assert main(["elbo", str(v_run), "--no-ema", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["elbo", str(exported), "--out", str(tmp_path / "b"), *args]) == 0
    run, pipe = (json.loads((tmp_path / d / "elbo.json").read_text())["elbo"] for d in "ab")
    assert pipe["value"] == pytest.approx(run["value"], rel=1e-6) and pipe["unit"] == "bits/dim"
    assert pipe["per_logsnr_bin"]["edges"] == run["per_logsnr_bin"]["edges"]
    assert main(["evaluate", str(exported), "--metrics", "bpd", "--n-elbo", "24", "--elbo-samples", "8",
                 "--out", str(tmp_path / "m.json"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["bpd"]["value"] == pytest.approx(run["value"], rel=1e-6)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A pipeline saved by diffusers itself: a random tiny UNet2DModel whose output convolution is zeroed
    (ε̂ ≡ 0) with the default DDPMScheduler (linear β from 1e-4 to 0.02, 1000 steps)."""
    path = tmp_path_factory.mktemp("foreign") / "ddpm"
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(str(path))
    return path


def test_foreign_pipeline_bits_per_dim_per_noise_level(foreign, tmp_path, capsys):
    """With ε̂ ≡ 0 the diffusion term is ½ E‖ε‖² per unit λ: ½ D (λ_0 − λ_{T−1}) nats, i.e.
    (λ_0 − λ_{T−1})/(2 ln 2) bits/dim, spread uniformly over λ, on the table's own range (DDPM Eq. (4):
    ᾱ_τ = ∏(1 − β_s), λ = log ᾱ − log(1 − ᾱ)). A pipeline without a run record needs ``--data``."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64).astype(np.float32)  # diffusers keeps ᾱ in float32
    abar = np.cumprod(np.float32(1) - betas, dtype=np.float32).astype(np.float64)
    lam = np.log(abar) - np.log1p(-abar)
    assert main(["elbo", str(foreign), "--out", str(tmp_path / "e"), "--n", "64", "--samples", "16"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["elbo", str(foreign), "--data", "digits", "--out", str(tmp_path / "e"), "--n", "64",
                 "--samples", "16", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "e" / "elbo.json").read_text())["elbo"]
    expected = (lam[0] - lam[-1]) / (2 * math.log(2))
    assert summary["diffusion"] == pytest.approx(expected, abs=5 * summary["se"])
    edges = summary["per_logsnr_bin"]["edges"]
    assert edges[0] == pytest.approx(lam[-1], abs=1e-4) and edges[-1] == pytest.approx(lam[0], abs=1e-4)
    per_bin = np.asarray(summary["per_logsnr_bin"]["diffusion"])
    widths = np.diff(edges)
    half = len(widths) // 2  # each half of the λ-range holds its share (per bin: too few draws to compare)
    for part in (slice(None, half), slice(half, None)):
        assert per_bin[part].sum() == pytest.approx(widths[part].sum() / (2 * math.log(2)), rel=0.1)
    assert main(["sample", str(foreign), "--data", "digits", "--n", "4", "--steps", "4", "--sampler", "ddim",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape[0] == 4


CONDITIONAL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = [pipe.unet(z, 500, class_labels=torch.tensor(c)).sample.numpy() for c in ([3, 7], [10, 10])]
    assert "diffusion_objectives" not in sys.modules
    np.savez(sys.argv[2], z=z.numpy(), labelled=out[0], null=out[1])
""")


def test_conditional_export_keeps_the_null_label(tmp_path):
    """A class-conditional digits run: the exported unet has 10 + 1 class embeddings, and diffusers calling it at
    timestep 500 with labels, or with the null label 10, gives our model at λ_500 with those labels, or none."""
    run = _train(tmp_path / "run", "--preset", "digits", "--steps", "2")
    out = tmp_path / "pipe"
    assert main(["export", str(run), "--to", "diffusers", "--out", str(out)]) == 0
    record = json.loads((out / "diffobj.json").read_text())
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert record["null_label"] == 10 and unet_config["num_class_embeds"] == 11
    script = tmp_path / "cond.py"
    script.write_text(CONDITIONAL_SCRIPT)
    subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "o.npz")], check=True, timeout=300,
                   capture_output=True)
    got = np.load(tmp_path / "o.npz")
    betas = np.asarray(json.loads((out / "scheduler" / "scheduler_config.json").read_text())["trained_betas"])
    abar = float(np.cumprod(np.float32(1) - betas.astype(np.float32), dtype=np.float32)[500])
    lam = torch.full((2,), math.log(abar) - math.log1p(-abar))
    loaded = load_for_inference(run)
    z = torch.from_numpy(got["z"])
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model(z, lam, torch.tensor([3, 7])).numpy(), got["labelled"], atol=1e-4)
        np.testing.assert_allclose(loaded.model(z, lam).numpy(), got["null"], atol=1e-4)
    assert main(["sample", str(out), "--n", "4", "--steps", "4", "--sampler", "ddim", "--guidance", "1",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0


def test_foreign_flow_matching_pipeline(tmp_path):
    """A UNet2DModel with a FlowMatchEulerDiscreteScheduler, saved by diffusers, is read in the ``diffusers-flow``
    convention. With the output convolution zeroed (velocity û ≡ 0) the flow parameterization gives
    ε̂ − ε = α(x − ε)/(α + σ), so the diffusion term is ½ ∫ α²/(α + σ)² (‖x‖² + D) dλ over [−15, 15]
    (scipy quadrature; α² = sigmoid(λ), σ² = sigmoid(−λ))."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from scipy.integrate import quad

    from diffusion_objectives.evaluation import protocol as evaluation
    from diffusion_objectives.interop import pipelines

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16,), layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=8)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    DDPMPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(str(tmp_path / "flow"))
    assert main(["elbo", str(tmp_path / "flow"), "--data", "digits", "--out", str(tmp_path / "e"), "--n", "48",
                 "--samples", "16", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "e" / "elbo.json").read_text())["elbo"]
    loaded = pipelines.load_diffusers_pipeline(tmp_path / "flow", data="digits")
    assert loaded.model.adapter.convention == "diffusers-flow"
    x, _, _ = evaluation.elbo_examples(loaded, "test", 48)  # the examples the command used

    def ratio(lam):
        a, s = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
        return a * a / (a + s) ** 2

    integral = quad(ratio, -15, 15, limit=200)[0]
    sq = x.double().reshape(x.shape[0], -1).square().sum(1)
    nats = 0.5 * integral * (sq + 64)
    expected = float(nats.mean()) / (64 * math.log(2))
    assert summary["diffusion"] == pytest.approx(expected, abs=5 * summary["se"])
