"""The study end to end on a tiny grid: runs, reuse on rerun, report and JSON agree cell by cell."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from diffusion_objectives.cli import compare as compare_cli
from diffusion_objectives.cli import main
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation import protocol as evaluation
from diffusion_objectives.study import runner as S
from diffusion_objectives.study.report import _table, format_cell
from diffusion_objectives.training import config as tconfig
from diffusion_objectives.training import load_for_inference

TINY = {"data.name": "anisotropic", "network.params.hidden": 32, "network.params.depth": 2,
        "network.params.fourier_features": 16, "run.checkpoint_every": 0, "run.sample_every": 0, "run.log_every": 5}


def _tiny_study(**changes):
    study = S.StudyConfig(preset="toy2d", overrides=dict(TINY), steps=30, batch_size=64,
                          grid=["edm", "sigmoid:bias=-1+adaptive"], seeds=[0, 1],
                          evaluation=S.EvalProtocol(metrics=["toy", "bpd", "loss-std"], n=64, steps=8,
                                                    n_elbo=32, elbo_samples=8),
                          jobs=1, threads=1)
    return S.replace_fields(study, **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    results = S.run_study(_tiny_study(), out, say=lambda msg: None)
    return out, results


def test_every_cell_filled_and_report_matches_json(finished):
    out, results = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(results["summary"]))
    head, body = _table(on_disk["summary"])
    report = (out / "report.md").read_text()
    for row in body:
        assert "—" not in row
        assert "| " + " | ".join(row) + " |" in report
    # each cell is the JSON mean ± SE over the two seeds, recomputed here from the runs
    for row in on_disk["summary"]:
        runs = [r for r in on_disk["runs"] if r["entry"] == row["entry"]]
        for key in ("reverse_kl", "cross_entropy"):
            values = [r["result"]["metrics"]["toy"][key] for r in runs]
            mean = sum(values) / 2
            se = abs(values[0] - values[1]) / 2  # std(ddof=1)/√2 for two values
            assert row["metrics"][key]["mean"] == pytest.approx(mean)
            assert row["metrics"][key]["se"] == pytest.approx(se)
            assert format_cell(row["metrics"][key]) in report
        toy = runs[0]["result"]["metrics"]["toy"]  # KL(q‖p) = cross-entropy − H(q)
        assert toy["reverse_kl"] == pytest.approx(toy["cross_entropy"] - toy["model_entropy"], rel=1e-12)
    assert row["monotone"] is True and on_disk["summary"][0]["monotone"] is False
    for name in ("weightings.png", "training_curves.png", "metrics.png", "samples.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "**Verdict** on reverse_kl" in report and "KL estimate reads" in report and "30 steps of batch 64" in report
    assert re.search(r"time: \d+ s wall clock", report)


def test_rerun_reuses_finished_runs(finished):
    out, results = finished
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/eval.json")}
    again = S.run_study(_tiny_study(), out, say=lambda msg: None)
    after = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/eval.json")}
    assert before == after and len(before) == 4
    assert again["summary"] == results["summary"]


def test_changed_evaluation_protocol_re_evaluates_without_retraining(finished):
    out, _ = finished
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/checkpoints/latest")}
    study = _tiny_study(grid=["edm"], seeds=[0])
    study.evaluation.n = 48
    res = S.run_study(study, out, say=lambda msg: None)
    assert res["runs"][0]["result"]["sampling"]["n"] == 48
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/checkpoints/latest")} == ckpts


@pytest.mark.parametrize("entry,message", [
    ("nope", "unknown objective 'nope'"),
    ("sigmoid+fast", "the suffixes are +adaptive, +uncertainty, each at most once"),
    ("sigmoid+adaptive+adaptive", "each at most once"),
    ("sigmoid:bias=x", "KEY=NUMBER"),
    ("sigmoid:colour=1", "unknown parameter"),
])
def test_bad_grid_entries(entry, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        S.parse_entry(entry)


def test_parse_entry_suffixes_set_the_adaptive_schedule_and_the_uncertainty_head():
    both = S.parse_entry("edm-monotonic+uncertainty+adaptive")
    assert both == S.parse_entry("edm-monotonic+adaptive+uncertainty")
    assert both.label == "edm-monotonic+adaptive+uncertainty" and both.slug == "edm-monotonic_adaptive_uncertainty"
    assert both.overrides() == {"loss.adaptive.enabled": True, "loss.uncertainty.enabled": True}
    cfg = S.run_config(S.study_preset("adaptive"), both, 1)
    assert cfg.loss.adaptive.enabled and cfg.loss.uncertainty.enabled and cfg.seed == 1
    only = S.parse_entry("sigmoid:bias=2+uncertainty")
    assert (only.adaptive, only.uncertainty, only.label) == (False, True, "sigmoid:bias=2+uncertainty")
    assert not S.run_config(S.study_preset("adaptive"), S.parse_entry("sigmoid"), 0).loss.uncertainty.enabled


def test_parse_entry_and_monotonicity():
    e = S.parse_entry("sigmoid:bias=-2+adaptive")
    assert e.label == "sigmoid:bias=-2+adaptive" and e.adaptive and e.is_monotonic()
    assert e.overrides() == {"loss.weighting.bias": -2.0, "loss.adaptive.enabled": True}
    assert not S.parse_entry("edm").is_monotonic()
    assert S.parse_entry("edm-monotonic").is_monotonic()


def test_default_study_grid_is_the_papers():
    study = S.study_preset("default")
    labels = [S.parse_entry(g).label for g in study.grid]
    for name in ("elbo", "iddpm", "edm", "v-cosine", "flow-matching", "sigmoid:bias=-2", "sigmoid:bias=0",
                 "sigmoid:bias=2", "sigmoid:bias=4", "edm-monotonic"):
        assert name in labels
    assert any(label.endswith("+adaptive") for label in labels)
    for preset in S.STUDY_PRESETS:
        for entry in S.study_preset(preset).grid:
            S.run_config(S.study_preset(preset), S.parse_entry(entry), 0)  # every config resolves


def test_workers_die_with_the_study_process(tmp_path):
    """Killing ``compare`` must not leave training workers running (PR_SET_PDEATHSIG on Linux)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux-only")
    cmd = [sys.executable, "-m", "diffusion_objectives", "compare", "--grid", "edm,elbo", "--seeds", "0",
           "--steps", "100000", "--jobs", "2", "--out", str(tmp_path)]
    cmd += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(tmp_path.glob("runs/*/seed-0/stats.jsonl"))) < 2:
            time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(os.path.exists(f"/proc/{c}") and
                                             "Z" not in open(f"/proc/{c}/stat").read().split()[2]
                                             for c in children):
            time.sleep(0.2)
        alive = [c for c in children if os.path.exists(f"/proc/{c}")
                 and open(f"/proc/{c}/stat").read().split()[2] != "Z"]
        assert not alive, f"workers still running: {alive}"
    finally:  # whatever happened, leave nothing of this test running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ema_sweep_evaluates_reconstructed_widths_without_retraining(tmp_path):
    """With ``ema_sweep`` the runs track the post-hoc EMA (16 snapshots) and each run's eval.json holds the metrics
    of every swept width, each the evaluation of the checkpoint ``diffobj ema RUN`` would write; the report
    tabulates them; widening the sweep re-evaluates without retraining."""
    study = _tiny_study(grid=["edm"], seeds=[0, 1], steps=32, ema_sweep=[0.05, 0.08])
    results = S.run_study(study, tmp_path, say=lambda msg: None)
    run = tmp_path / "runs" / "edm" / "seed-0"
    assert len(list((run / "phema").glob("*.safetensors"))) == 2 * 16
    record = json.loads((run / "eval.json").read_text())
    assert set(record["ema_sweep"]) == {"0.05", "0.08"}
    assert record["ema_sweep"]["0.05"]["profile_error"] < 1e-6  # a tracked width: the fit is exact
    # the same number from the checkpoint diffobj ema writes, evaluated by hand with the study's protocol
    assert main(["ema", str(run), "--sigma-rel", "0.08", "--out", str(tmp_path / "ema")]) == 0
    p = study.evaluation
    by_hand = evaluation.evaluate(load_for_inference(tmp_path / "ema" / "ema-0.08"), ["toy", "bpd"], n=p.n,
                                  settings=evaluation.SampleSettings(p.sampler, p.steps), split=p.split,
                                  n_elbo=p.n_elbo, elbo_samples=p.elbo_samples)
    swept = record["ema_sweep"]["0.08"]["result"]["metrics"]
    assert swept["toy"]["reverse_kl"] == by_hand["metrics"]["toy"]["reverse_kl"]
    assert swept["bpd"]["value"] == by_hand["metrics"]["bpd"]["value"]
    assert {s["sigma_rel"] for s in results["ema_sweep"]} == {0.05, 0.08}
    assert "## EMA width sweep" in (tmp_path / "report.md").read_text()
    ckpts = {q: q.stat().st_mtime_ns for q in tmp_path.glob("runs/*/*/checkpoints/latest")}
    wider = S.run_study(S.replace_fields(study, ema_sweep=[0.05, 0.08, 0.15]), tmp_path, say=lambda msg: None)
    assert {s["sigma_rel"] for s in wider["ema_sweep"]} == {0.05, 0.08, 0.15}
    assert {q: q.stat().st_mtime_ns for q in tmp_path.glob("runs/*/*/checkpoints/latest")} == ckpts


# The study presets' training-config overrides as the KEY=VALUE items they were written as before the overrides
# became typed tables (issue 11): the typed tables must hold exactly these values.
_OLD_TOY = ["data.name=anisotropic", "network.params.hidden=128", "network.params.depth=3", "optim.lr=2e-3",
            "optim.warmup_images=50000", "ema.half_life_images=100000", "run.checkpoint_every=0", "run.sample_every=0",
            "run.log_every=50", "run.precision=fp32"]
_OLD_OVERRIDES = {
    "default": _OLD_TOY, "adaptive": [*_OLD_TOY, "loss.log_bins=30"],
    "digits": ["run.checkpoint_every=250", "run.sample_every=0"],
    "adaptive-digits": ["run.checkpoint_every=250", "run.sample_every=0", "run.precision=fp32", "loss.log_bins=30"],
    "fashion-mnist": ["optim.lr=1e-3", "optim.warmup_images=20000", "run.precision=auto", "run.checkpoint_every=250",
                      "run.sample_every=0"],
    "imagenet64": [],
}


@pytest.mark.parametrize("name", sorted(S.STUDY_PRESETS))
def test_study_presets_hold_typed_overrides_equal_to_their_old_text(name):
    study = S.study_preset(name)
    old = tconfig.parse_overrides(_OLD_OVERRIDES[name])
    assert list(study.overrides.items()) == list(old.items())
    assert all(type(study.overrides[k]) is type(v) for k, v in old.items())
    # an older study file's list of KEY=VALUE items reads as the same study
    assert S.replace_fields(study, overrides=list(_OLD_OVERRIDES[name])) == study
    entry = S.parse_entry(study.grid[-1])
    assert S.run_config(study, entry, 0) == tconfig.resolve(
        study.preset, objective=entry.objective, steps=study.steps, batch_size=study.batch_size, seed=0,
        overrides=[*_OLD_OVERRIDES[name], *(f"loss.weighting.{k}={v!r}" for k, v in entry.weighting_params),
                   *(["loss.adaptive.enabled=true"] if entry.adaptive else []),
                   *(["loss.uncertainty.enabled=true"] if entry.uncertainty else [])])


@pytest.mark.parametrize("name", sorted(S.STUDY_PRESETS))
def test_study_file_round_trip(name, tmp_path):
    """``OUT/study.json`` (what the launchers' per-run commands read) and a ``--dry-run`` YAML load back as the
    same study; typed overrides keep their types (a JSON ``1e-08`` is a number, not a string)."""
    study = S.study_preset(name)
    study.overrides["optim.eps"] = 1e-8
    (tmp_path / "study.json").write_text(json.dumps(dataclasses.asdict(study)))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(dataclasses.asdict(study)))
    for path in ("study.json", "study.yaml"):
        again = compare_cli._load_config(str(tmp_path / path), S.study_preset("default"))
        assert again == study and again.overrides["optim.eps"] == 1e-8


def test_old_study_file_with_listed_overrides_loads():
    """docs/results/fashion-mnist-reduced/study.yaml lists its overrides as KEY=VALUE items (with the deprecated
    run.bf16): it still loads, and its runs resolve."""
    path = Path(__file__).parents[2] / "docs" / "results" / "fashion-mnist-reduced" / "study.yaml"
    study = compare_cli._load_config(str(path), S.study_preset("default"))
    assert study.overrides == {"run.bf16": True, "run.checkpoint_every": 200, "run.sample_every": 0,
                               "run.log_every": 20}
    with pytest.warns(FutureWarning, match="run.bf16"):
        cfg = S.run_config(study, S.parse_entry("edm"), 0)
    assert cfg.run.precision == "bf16" and cfg.run.checkpoint_every == 200 and cfg.run.steps == 500


@pytest.mark.parametrize("changes, key", [({"steps": "many"}, "steps"), ({"seeds": [0, "one"]}, "seeds[1]"),
                                          ({"overrides": ["seed"]}, "overrides"),
                                          ({"evaluation": {"n": 1.5}}, "evaluation.n")])
def test_study_fields_of_the_wrong_type_name_the_key(changes, key):
    with pytest.raises(OptionError, match=re.escape(f"study key {key!r}")):
        S.replace_fields(S.study_preset("default"), **changes)


def test_report_title_and_variant_section_follow_the_grid():
    """An +adaptive entry without its base entry (the Fashion-MNIST grid) gives no variant section and KG23's
    title; a grid with learned-weighting entries beside their bases (the adaptive study) gives both."""
    from diffusion_objectives.study import report

    results = Path(__file__).parents[2] / "docs" / "results"
    fashion_results = json.loads((results / "fashion-mnist" / "results.json").read_text())
    for extra in ({}, {"variant_effects": []}):  # as the report wrote it before: an empty list
        fashion = report.render_markdown({**fashion_results, **extra})
        assert fashion.startswith("# Monotone vs non-monotone weightings (KG23)")
        assert "## Variants against their base entry" not in fashion
    adaptive = report.render_markdown(json.loads((results / "adaptive" / "results.json").read_text()))
    assert adaptive.startswith("# KG23's adaptive schedule vs EDM2's learned uncertainty weighting")
    assert "## Variants against their base entry" in adaptive
