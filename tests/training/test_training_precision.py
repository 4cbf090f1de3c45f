"""``run.precision``: native-bf16 detection from /proc/cpuinfo text, the resolution rules of ``auto``, the
deprecated ``run.bf16`` alias, ``--dry-run`` on a CPU without native bf16 (issue 14's "done when": every preset
resolves to fp32), and the resolved choice recorded by a real run (log, config.yaml, summary.json)."""

import json
import warnings

import pytest
import torch
import yaml

from diffusion_objectives.cli import main
from diffusion_objectives.errors import OptionError
from diffusion_objectives.training import config, precision, train

# /proc/cpuinfo excerpts (two logical CPUs each; flags lines shortened to the relevant part)
AVX2_ONLY = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\n"
             "flags\t\t: fpu sse sse2 avx avx2 fma bmi2\n\n"
             "processor\t: 1\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n")
AVX512_BF16 = AVX2_ONLY.replace("bmi2", "bmi2 avx512f avx512bw avx512_bf16 avx512_vnni")
AMX = AVX2_ONLY.replace("bmi2", "bmi2 avx512f amx_bf16 amx_tile amx_int8")
NEAR_MISS = AVX2_ONLY.replace("bmi2", "bmi2 avx512f avx512_vnni avx512_fp16 amx_tile")  # no bf16 flag


@pytest.mark.parametrize("text, native", [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True),
                                          (NEAR_MISS, False)])
def test_cpuinfo_flags_decide_native_bf16(text, native):
    got, how = precision.cpu_native_bf16(text)
    assert got is native
    assert ("avx512_bf16" in how or "amx_bf16" in how) if native else "no avx512_bf16 or amx_bf16" in how


@pytest.mark.parametrize("capability, native", [("AVX2", False), ("AVX512", False), ("DEFAULT", False),
                                                ("AVX512_BF16", True), ("AMX", True)])
def test_without_cpuinfo_flags_torch_capability_decides(monkeypatch, capability, native):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    got, how = precision.cpu_native_bf16("processor\t: 0\n")  # no flags line (as on a non-x86 kernel)
    assert got is native and capability in how


def test_unknown_cpu_falls_back_to_fp32(monkeypatch):
    def broken():
        raise RuntimeError("no capability")

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", broken)
    assert precision.cpu_native_bf16("")[0] is False
    p = precision.resolve_precision("auto", "cpu", cpuinfo="")
    assert p.name == "fp32" and "unknown" in p.reason


def test_cpuinfo_is_read_from_the_file(monkeypatch, tmp_path):
    f = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "_CPUINFO", f)
    f.write_text(AVX512_BF16)
    assert precision.resolve_precision("auto", "cpu").name == "bf16"
    f.write_text(AVX2_ONLY)
    assert precision.resolve_precision("auto", "cpu").name == "fp32"


@pytest.mark.parametrize("requested, text, name, warns", [
    ("auto", AVX2_ONLY, "fp32", False), ("auto", AVX512_BF16, "bf16", False), ("auto", AMX, "bf16", False),
    ("fp32", AVX512_BF16, "fp32", False), ("bf16", AVX512_BF16, "bf16", False), ("bf16", AVX2_ONLY, "bf16", True),
])
def test_resolution_on_cpu(requested, text, name, warns):
    p = precision.resolve_precision(requested, torch.device("cpu"), cpuinfo=text)
    assert (p.name, p.requested, p.bf16) == (name, requested, name == "bf16")
    assert (p.warning is not None) is warns
    if warns:
        assert "10-20x slower" in p.warning and "run.precision" in p.warning


@pytest.mark.parametrize("supported, name", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support(monkeypatch, supported, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    p = precision.resolve_precision("auto", "cuda", cpuinfo=AVX2_ONLY)  # the CPU's flags do not matter
    assert p.name == name and p.warning is None
    forced = precision.resolve_precision("bf16", "cuda", cpuinfo=AVX2_ONLY)
    assert forced.name == "bf16" and (forced.warning is None) is supported


def test_unknown_precision_names_the_key():
    with pytest.raises(OptionError, match="run.precision"):
        precision.resolve_precision("fp16", "cpu")
    with pytest.raises(OptionError, match=r"run\.precision.*'fp16'"):
        config.resolve("toy2d", overrides=["run.precision=fp16"])


@pytest.mark.parametrize("value, name", [("true", "bf16"), ("false", "fp32")])
def test_deprecated_bf16_key_maps_to_precision(value, name, tmp_path):
    with pytest.warns(FutureWarning, match="run.bf16.*deprecated"):
        cfg = config.resolve("digits", overrides=[f"run.bf16={value}"])
    assert cfg.run.precision == name
    p = tmp_path / "old.yaml"  # a config written before run.precision existed
    p.write_text(f"run:\n  bf16: {value}\n  steps: 7\n")
    with pytest.warns(FutureWarning, match="run.bf16"):
        cfg = config.resolve("digits", p)
    assert cfg.run.precision == name and cfg.run.steps == 7
    assert "bf16" not in config.to_dict(cfg)["run"]


def test_presets_ask_for_auto():
    for name in config.preset_names():
        assert config.preset(name).run.precision == "auto"


@pytest.mark.parametrize("name", config.preset_names())
def test_dry_run_resolves_fp32_on_a_cpu_without_native_bf16(name, monkeypatch, tmp_path, capsys):
    """Issue 14, done when: ``--dry-run`` on a CPU without native bf16 resolves ``precision: fp32`` for every
    preset (a GPU preset's CUDA device is absent here, so it is resolved for the CPU and says so)."""
    f = tmp_path / "cpuinfo"
    f.write_text(AVX2_ONLY)
    monkeypatch.setattr(precision, "_CPUINFO", f)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # presets use no deprecated key
        assert main(["train", "--preset", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# precision on cpu: fp32 (run.precision=auto: no avx512_bf16 or amx_bf16" in out
    resolved = yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("#")))
    assert resolved["run"]["precision"] == "fp32" and "bf16" not in resolved["run"]


def test_dry_run_resolves_bf16_on_a_cpu_with_native_bf16(monkeypatch, tmp_path, capsys):
    f = tmp_path / "cpuinfo"
    f.write_text(AMX)
    monkeypatch.setattr(precision, "_CPUINFO", f)
    assert main(["train", "--preset", "fashion-mnist", "--dry-run"]) == 0
    assert "# precision on cpu: bf16 (run.precision=auto: CPU flags amx_bf16" in capsys.readouterr().out


def _tiny(requested: str):
    return config.resolve("toy2d", steps=2, batch_size=16, overrides=[
        "data.n=256", "network.hidden=16", "network.depth=1", "network.fourier_features=8", "run.sample_every=0",
        "run.checkpoint_every=0", "run.device=cpu", f"run.precision={requested}"])


@pytest.mark.parametrize("requested, text, name", [("auto", AVX2_ONLY, "fp32"), ("auto", AVX512_BF16, "bf16"),
                                                   ("bf16", AVX2_ONLY, "bf16")])
def test_a_run_logs_and_records_the_resolved_precision(requested, text, name, monkeypatch, tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(text)
    monkeypatch.setattr(precision, "_CPUINFO", f)
    run = tmp_path / "run"
    summary = train(_tiny(requested), run, progress=False, handle_signals=False)
    assert summary["precision"]["name"] == name and summary["precision"]["requested"] == requested
    assert json.loads((run / "summary.json").read_text())["precision"]["name"] == name
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["precision"] == name
    log = (run / "log.txt").read_text()
    assert f"precision {name} (run.precision={requested}:" in log
    assert ("10-20x slower" in log) is (requested == "bf16" and text == AVX2_ONLY)
