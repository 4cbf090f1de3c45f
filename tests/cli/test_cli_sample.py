"""``diffobj sample``: the files it writes hold exactly the library's samples (PNG = npz = quantized
``evaluation.generate``), the npz is an ``npz`` dataset, any batch size gives the same files, and usage
errors exit with code 2."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TRAIN, TINY_TRAIN_COMMON
from diffusion_objectives import data
from diffusion_objectives.cli import main
from diffusion_objectives.evaluation import protocol as E
from diffusion_objectives.training import load_for_inference


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--sampler", "--steps", "--grid", "--n", "--seeds", "--batch-size", "--ema", "--no-ema",
                 "--guidance", "--autoguidance", "--guidance-interval", "--out", "examples:"):
        assert flag in out


def test_digits_files_hold_the_library_samples(runs, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(runs / "digits"), "--sampler", "heun", "--steps", "5", "--seeds", "3-9,20",
                 "--out", str(out), "--no-progress"]) == 0
    assert "8 samples" in capsys.readouterr().out
    seeds = [3, 4, 5, 6, 7, 8, 9, 20]
    loaded = load_for_inference(runs / "digits")
    x, labels = E.generate(loaded, seeds, E.SampleSettings("heun", 5))
    k = data.quantize(x, 17)  # K = 17 grey levels → pixels round(255 k / 16)
    expected = torch.round(k * (255 / 16)).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (8, 8, 8, 1)  # NHWC
        np.testing.assert_array_equal(f["arr_0"], expected)
        np.testing.assert_array_equal(f["arr_1"], [s % 10 for s in seeds])
        np.testing.assert_array_equal(f["seeds"], seeds)
    for i, s in enumerate(seeds):  # one 8-bit PNG per seed, the same pixels
        png = np.asarray(Image.open(out / f"seed-{s:06d}.png"))
        np.testing.assert_array_equal(png, expected[i, :, :, 0])
    assert Image.open(out / "grid.png").size == (3 * 9 + 1, 3 * 9 + 1)  # ⌈√8⌉ = 3 per row, 1-pixel padding
    # the npz is an npz dataset: reading it with K = 17 gives back the quantized samples
    ds = data.get("npz", path=str(out / "samples.npz"), levels=17)
    torch.testing.assert_close(ds.data, data.dequantize(k, 17), rtol=0, atol=0)
    assert ds.labels.tolist() == labels.tolist()
    meta = json.loads((out / "samples.json").read_text())
    assert meta["seeds"] == "3-9,20" and meta["step"] == 6 and meta["ema"] is True and meta["levels"] == 17
    assert meta["sampling"] == {"sampler": "heun", "steps": 5, "grid": "edm", "guidance": 0.0, "ema": True}
    assert not list(out.glob(".*.tmp"))  # no temporary files left


def test_batch_size_and_rerun_do_not_change_the_files(runs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [str(runs / "digits"), "--sampler", "ancestral", "--steps", "4", "--n", "5", "--no-progress"]
    assert main(["sample", *common, "--out", str(a)]) == 0
    assert main(["sample", *common, "--batch-size", "2", "--out", str(b), "--no-png"]) == 0
    with np.load(a / "samples.npz") as fa, np.load(b / "samples.npz") as fb:
        np.testing.assert_array_equal(fa["arr_0"], fb["arr_0"])
    assert not list(b.glob("seed-*.png")) and (b / "grid.png").is_file()
    before = (a / "seed-000004.png").read_bytes()
    assert main(["sample", *common, "--out", str(a)]) == 0  # rerun into the same directory
    assert (a / "seed-000004.png").read_bytes() == before


def test_no_ema_uses_the_raw_weights(runs, tmp_path):
    out = tmp_path / "raw"
    assert main(["sample", str(runs / "digits"), "--no-ema", "--steps", "4", "--n", "3", "--out", str(out),
                 "--no-progress", "--guidance", "0.5"]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["ema"] is False and meta["sampling"]["guidance"] == 0.5
    x, _ = E.generate(load_for_inference(runs / "digits", ema=False), range(3), E.SampleSettings("heun", 4,
                                                                                              guidance=0.5))
    with np.load(out / "samples.npz") as f:
        np.testing.assert_array_equal(f["arr_0"][..., 0], torch.round(data.quantize(x, 17)[:, 0] * (255 / 16)))


def test_toy_writes_points_and_a_scatter(runs, tmp_path):
    out = tmp_path / "toy"
    assert main(["sample", str(runs / "toy"), "--n", "50", "--steps", "6", "--sampler", "dpmpp-2m",
                 "--out", str(out), "--no-progress"]) == 0
    x, _ = E.generate(load_for_inference(runs / "toy"), range(50), E.SampleSettings("dpmpp-2m", 6))
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].dtype == np.float32 and f["arr_0"].shape == (50, 2)
        np.testing.assert_array_equal(f["arr_0"], x.numpy())
    assert Image.open(out / "samples.png").format == "PNG"
    assert json.loads((out / "samples.json").read_text())["layout"] == "arr_0 float32 [N, D]"


@pytest.mark.parametrize("args, message", [
    (["--n", "3", "--seeds", "0-4"], "disagrees with --seeds"),
    (["--seeds", "4-2"], "--seeds"),
    (["--n", "0"], "--n must be"),
    (["--steps", "1"], "at least 2"),
    (["--batch-size", "0"], "--batch-size"),
    (["--guidance", "1.0"], "class-conditional"),  # the toy model is unconditional
])
def test_usage_errors_exit_2(runs, tmp_path, capsys, args, message):
    assert main(["sample", str(runs / "toy"), "--out", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert "diffobj sample: error:" in err and message in err


def test_out_must_be_a_directory(runs, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert main(["sample", str(runs / "toy"), "--out", str(f), "--no-progress"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_autoguidance_and_guidance_interval(runs, tmp_path, capsys):
    """The files hold ``generate`` with the guiding model; an interval with no grid point is unguided bit for bit."""
    bad = tmp_path / "bad"  # an earlier, worse toy model: 5 steps instead of 60
    args = [a if a != "60" else "5" for a in TINY_TRAIN["toy"]]
    assert main(["train", "--out", str(bad), *args, *TINY_TRAIN_COMMON]) == 0
    common = [str(runs / "toy"), "--n", "40", "--steps", "6", "--sampler", "dpmpp-2m", "--no-progress"]
    outs = {}
    for key, extra in {"plain": [], "ag": ["--autoguidance", str(bad), "--guidance", "1.0"],
                       "empty": ["--autoguidance", str(bad), "--guidance", "1.0", "--guidance-interval=20,30"],
                       "part": ["--autoguidance", str(bad), "--guidance", "1.0", "--guidance-interval=-2,4"]}.items():
        assert main(["sample", *common, "--out", str(tmp_path / key), *extra]) == 0
        with np.load(tmp_path / key / "samples.npz") as f:
            outs[key] = f["arr_0"]
    loaded, guide = load_for_inference(runs / "toy"), load_for_inference(bad)
    x, _ = E.generate(loaded, range(40), E.SampleSettings("dpmpp-2m", 6, guidance=1.0), guide=guide)
    np.testing.assert_array_equal(outs["ag"], x.numpy())
    np.testing.assert_array_equal(outs["empty"], outs["plain"])
    assert not np.array_equal(outs["ag"], outs["plain"]) and not np.array_equal(outs["part"], outs["ag"])
    meta = json.loads((tmp_path / "part" / "samples.json").read_text())
    assert meta["sampling"]["guidance_interval"] == [-2.0, 4.0] and meta["sampling"]["autoguidance"] == str(bad)
    assert meta["autoguidance"]["step"] == 5
    # a guiding model of another data shape is a usage error
    assert main(["sample", *common, "--out", str(tmp_path / "x"), "--autoguidance", str(runs / "digits"),
                 "--guidance", "1"]) == 2
    assert "data shape" in capsys.readouterr().err
    assert main(["sample", *common, "--out", str(tmp_path / "x"), "--guidance-interval=4,1"]) == 2
    assert "LO <= HI" in capsys.readouterr().err
