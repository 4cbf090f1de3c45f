"""The evaluation protocol (evaluation.py) on tiny trained checkpoints: per-seed sampling, the ELBO summary
re-derived from a direct ``elbo()`` call, provenance, and the errors for unknown or mismatched metrics."""

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion_objectives import metrics as M
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation import protocol as E
from diffusion_objectives.likelihoods.vlb import elbo
from diffusion_objectives.registry import Registry
from diffusion_objectives.study import report
from diffusion_objectives.training import load_for_inference

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return {name: load_for_inference(tiny_runs / name) for name in ("toy", "digits")}


@pytest.mark.parametrize("name", ["toy", "digits"])
@pytest.mark.parametrize("sampler", ["heun", "ancestral", "edm-stochastic"])
def test_generate_is_per_seed_and_deterministic(runs, name, sampler):
    loaded = runs[name]
    settings = E.SampleSettings(sampler, 6)
    seeds = [7, 3, 11, 0, 5]
    full, labels = E.generate(loaded, seeds, settings, batch_size=16)
    again, _ = E.generate(loaded, seeds, settings, batch_size=16)
    assert torch.equal(full, again)  # deterministic
    small, small_labels = E.generate(loaded, seeds, settings, batch_size=2)
    torch.testing.assert_close(small, full, rtol=1e-5, atol=1e-5)  # batch size does not matter
    alone, _ = E.generate(loaded, [11], settings)
    torch.testing.assert_close(alone[0], full[2], rtol=1e-5, atol=1e-5)  # nor do the other seeds
    assert torch.isfinite(full).all()
    if name == "digits":  # class-conditional: label = seed mod C, images clamped to [−1, 1]
        assert labels.tolist() == [s % 10 for s in seeds] and torch.equal(small_labels, labels)
        assert full.shape == (5, 1, 8, 8) and full.abs().max() <= 1.0
    else:
        assert labels is None and full.shape == (5, 2)


def test_guidance_needs_a_conditional_model(runs):
    with pytest.raises(OptionError, match="class-conditional"):
        E.generate(runs["toy"], [0], E.SampleSettings(guidance=1.0))
    x, _ = E.generate(runs["digits"], [0, 1], E.SampleSettings("ddim", 4, guidance=1.0))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["toy", "digits"])
def test_elbo_summary_is_a_direct_elbo_call_reduced(runs, name):
    loaded = runs[name]
    x, labels, levels = E.elbo_examples(loaded, "test", 24)
    summary, res = E.elbo_summary(loaded, x, levels, samples=16, seed=3, labels=labels)
    cond = labels if name == "digits" else None
    direct = elbo(loaded.model, loaded.objective.parameterization, x, levels, samples=16,
                  generator=torch.Generator().manual_seed(3), labels=cond)
    torch.testing.assert_close(res.total, direct.total, rtol=0, atol=0)
    d = x[0].numel()
    scale = 1 / (d * math.log(2)) if levels is not None else 1.0
    total = direct.total.double()
    assert summary["unit"] == ("bits/dim" if levels else "nats")
    assert summary["value"] == pytest.approx(float(total.mean()) * scale, rel=1e-12)
    assert summary["se"] == pytest.approx(float(total.std()) / math.sqrt(24) * scale, rel=1e-9)
    assert summary["mc_se"] == pytest.approx(float(direct.total_se.double().square().sum().sqrt()) / 24 * scale,
                                             rel=1e-9)
    for term in ("prior", "reconstruction", "diffusion"):
        assert summary[term] == pytest.approx(float(getattr(direct, term).double().mean()) * scale, rel=1e-9,
                                              abs=1e-12)
    bins = summary["per_logsnr_bin"]
    assert bins["edges"] == direct.bin_edges.tolist()
    assert sum(bins["diffusion"]) == pytest.approx(summary["diffusion"], rel=1e-6)
    assert summary["value"] == pytest.approx(summary["prior"] + summary["reconstruction"] + summary["diffusion"])


def test_elbo_summary_checks_samples(runs):
    x, _, levels = E.elbo_examples(runs["toy"], "test", 4)
    with pytest.raises(OptionError, match="multiple of 8"):
        E.elbo_summary(runs["toy"], x, levels, samples=12)


def test_elbo_examples_are_a_fixed_subset(runs):
    x1, l1, k1 = E.elbo_examples(runs["digits"], "test", 10)
    x2, l2, _ = E.elbo_examples(runs["digits"], "test", 10)
    assert torch.equal(x1, x2) and torch.equal(l1, l2) and k1 == 17
    test = runs["digits"].dataset(split="test")
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:10]
    assert torch.equal(x1, test.data[idx])
    xa, _, _ = E.elbo_examples(runs["digits"], "test", 10_000)
    assert xa.shape[0] == len(test)  # capped at the split


def test_dataset_split_for_data_without_splits():
    fake = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(name="npz")), dataset=lambda **kw: kw)
    assert E.dataset_split(fake, "train") == {}
    with pytest.raises(OptionError, match="no 'test' split"):
        E.dataset_split(fake, "test")


def test_evaluate_toy_is_finite_with_provenance(runs):
    loaded = runs["toy"]
    r = E.evaluate(loaded, ["toy", "bpd", "loss-std"], n=200, settings=E.SampleSettings("heun", 8), n_elbo=32,
                   elbo_samples=8)
    assert r["checkpoint"] == str(loaded.checkpoint_dir) and r["step"] == 60 and r["dataset"] == "ring"
    assert r["ema"] is True and r["objective"] == "sigmoid"
    assert r["sampling"] == {"sampler": "heun", "steps": 8, "grid": "edm", "guidance": 0.0, "ema": True,
                             "n": 200, "seeds": "0-199"}
    t = r["metrics"]["toy"]
    assert all(math.isfinite(t[k]) for k in ("cross_entropy", "entropy", "sliced_wasserstein", "mmd"))
    assert t["n_samples"] == 200
    b = r["metrics"]["bpd"]
    assert b["unit"] == "nats" and math.isfinite(b["value"]) and b["se"] > 0 and b["split"] == "test"
    x, labels, levels = E.elbo_examples(loaded, "test", 32)  # the same examples and seed as elbo_summary's
    summary, _ = E.elbo_summary(loaded, x, levels, samples=8, seed=0)
    assert b["value"] == summary["value"]
    assert r["metrics"]["loss-std"]["relative_std"] > 0
    # samples given: the same numbers as when evaluate draws them itself
    x, _ = E.generate(loaded, range(200), E.SampleSettings("heun", 8))
    r2 = E.evaluate(loaded, ["toy"], n=200, settings=E.SampleSettings("heun", 8), samples=x)
    assert r2["metrics"]["toy"] == t


def test_evaluate_digits_is_finite(runs):
    r = E.evaluate(runs["digits"], ["fd", "kid", "coverage"], n=64, settings=E.SampleSettings("ddim", 4))
    fd, kid, cov = (r["metrics"][k] for k in ("fd", "kid", "coverage"))
    assert math.isfinite(fd["value"]) and fd["value"] >= 0 and fd["extractor"] == "classifier-digits"
    assert fd["seeds"] == "0-63" and fd["n_samples"] == 64 and "not an FID" in fd["label"]
    assert math.isfinite(kid["mean"]) and kid["n_samples"] == 64
    assert sum(cov["counts"]) == 64 and 0 <= cov["accuracy"] <= 1


@pytest.mark.parametrize("name, metrics, match", [
    ("toy", ["fd"], "image data"),
    ("toy", ["coverage"], "image data"),
    ("digits", ["toy"], "2-D toy data"),
    ("toy", ["bpd", "nll"], "unknown metric"),
])
def test_metric_errors(runs, name, metrics, match):
    with pytest.raises(OptionError, match=match):
        E.evaluate(runs[name], metrics, n=4)


def test_reference_of_other_features_is_refused(runs, tmp_path):
    ref = M.save_reference(tmp_path / "ref.npz", np.zeros(5), np.eye(5))
    with pytest.raises(OptionError, match="5-d"):
        E.evaluate(runs["digits"], ["fd"], n=8, settings=E.SampleSettings("ddim", 3), reference=ref)
    with pytest.raises(OptionError, match="kid.*needs reference features"):
        E.evaluate(runs["digits"], ["kid"], n=8, settings=E.SampleSettings("ddim", 3), reference=ref)


def test_extract_features_in_chunks_equals_one_call():
    from diffusion_objectives import data

    x = data.get("digits", split="train").data
    ext = M.get_extractor("classifier-digits")
    updates = []

    class Bar:
        def __init__(self, desc, total):
            updates.append(total)

        def update(self, k):
            updates.append(k)

        def close(self):
            pass

    np.testing.assert_array_equal(E.extract_features(ext, x, Bar), ext(x))
    assert updates[0] == len(x) and sum(updates[1:]) == len(x)


def test_progress_bars_count_the_work_without_changing_it(runs):
    bars: dict[str, list[int]] = {}

    class Bar:
        def __init__(self, desc, total):
            self.desc = desc
            bars[desc] = [total]

        def update(self, k):
            bars[self.desc].append(k)

        def close(self):
            pass

    loaded = runs["toy"]
    kwargs = dict(n=40, settings=E.SampleSettings("heun", 4), n_elbo=16, elbo_samples=8, batch_size=16)
    with_bar = E.evaluate(loaded, ["toy", "bpd"], bar=Bar, **kwargs)
    without = E.evaluate(loaded, ["toy", "bpd"], **kwargs)
    assert with_bar["metrics"] == without["metrics"]
    sampling = next(v for k, v in bars.items() if k.startswith("sampling"))
    elbo_bar = next(v for k, v in bars.items() if k.startswith("ELBO"))
    assert sampling[0] == 40 and sum(sampling[1:]) == 40 and len(sampling) == 4  # batches of 16, 16, 8
    assert elbo_bar[0] == 16 * 8 and sum(elbo_bar[1:]) == 16 * 8


# the report's names of the metrics' scalars and where each sits in a metric's record: the names and keys of
# the results.json files written before the metrics were registry objects, which must stay readable
REPORT_NAMES = {"fd": ("fd", "value"), "kid": ("kid", "mean"), "accuracy": ("coverage", "accuracy"),
                "reverse_kl": ("toy", "reverse_kl"), "cross_entropy": ("toy", "cross_entropy"),
                "sliced_wasserstein": ("toy", "sliced_wasserstein"), "mmd": ("toy", "mmd"),
                "bpd": ("bpd", "value"), "loss_rel_std": ("loss-std", "relative_std")}


def test_metric_registry_rejects_unknown_names_listing_the_known_ones(runs):
    with pytest.raises(OptionError, match="unknown metric 'fid'; choose from: fd, kid, coverage, toy, bpd, loss-std"):
        E.evaluate(runs["digits"], ["fd", "fid"], n=4)
    assert E.METRICS.names() == ["fd", "kid", "coverage", "toy", "bpd", "loss-std"]


@pytest.mark.parametrize("name, metrics", [("toy", ["loss-std", "toy", "bpd"]),
                                           ("digits", ["coverage", "fd", "kid", "bpd", "loss-std"])])
def test_each_metrics_named_outputs_are_the_values_in_the_saved_json(runs, tmp_path, name, metrics):
    """Every metric's named outputs, computed by ``Metric.compute`` and read back from the JSON file evaluate's
    result is written to, are the values at the documented keys; records come in registry order whatever order
    was asked for, and every output of every asked metric is there."""
    r = E.evaluate(runs[name], metrics, n=48, settings=E.SampleSettings("heun", 4), n_elbo=16, elbo_samples=8)
    assert list(r["metrics"]) == [m for m in E.METRICS.names() if m in metrics]
    (tmp_path / "eval.json").write_text(json.dumps(r))
    saved = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    got = {}
    for metric_name, record in saved.items():
        metric = E.METRICS.get(metric_name)
        scalars = metric.scalars(record)
        assert list(scalars) == [o.name for o in metric.outputs if record[o.key] is not None]
        got.update(scalars)
    expected = {out: saved[m][key] for out, (m, key) in REPORT_NAMES.items() if m in saved}
    assert got == expected and all(isinstance(v, float) for v in got.values())
    assert report.extract({"result": {"metrics": saved}}) == expected


def test_report_reads_the_outputs_of_any_registered_metric_by_name(monkeypatch):
    """A metric added to the registry gets its column, direction and values in the report without any
    change to report.py."""
    registry = Registry("metric")
    for name in E.METRICS.names():
        registry.add(name, functools.partial(E.METRICS.get, name))
    extra = E.Metric("sharpness", lambda ev: {"score": 0.25}, (E.Output("sharp", "score", "sharpness ↑", 1),))
    registry.add("sharpness", lambda: extra)
    monkeypatch.setattr(report, "METRICS", registry)
    assert ("sharp", "sharpness ↑", 1) in report.columns() and report.columns()[-1][0] == "train_seconds"
    record = {"result": {"metrics": {"fd": {"value": 3.5}, "sharpness": {"score": 0.25}}}, "train_seconds": 7}
    assert report.extract(record) == {"fd": 3.5, "sharp": 0.25, "train_seconds": 7.0}
    rows = [{"entry": e, "monotone": mono, "seeds": [0, 1], "metrics": {"sharp": {"mean": v, "se": 0.01, "n": 2}}}
            for e, mono, v in (("a", True, 0.9), ("b", False, 0.2))]
    head, body = report._table(rows)
    assert head[3:] == ["sharpness ↑"] and [b[3] for b in body] == ["0.9000 ± 0.0100", "0.2000 ± 0.0100"]


def test_the_committed_results_are_found():
    """Guards the parametrization below, which would be empty (and skipped) if the path were wrong."""
    assert {"default", "digits", "adaptive"} <= {p.parent.name for p in RESULTS.glob("*/results.json")}


@pytest.mark.parametrize("study", sorted(p.parent.name for p in RESULTS.glob("*/results.json")))
def test_committed_results_read_the_same_through_the_registry(study):
    """The summary means of every committed results.json (written by the report before the metrics were
    registry objects) are the means of what ``report.extract`` now reads from its runs."""
    results = json.loads((RESULTS / study / "results.json").read_text())
    for row in results["summary"]:
        values = [report.extract(r) for r in results["runs"] if r["entry"] == row["entry"]]
        assert set(row["metrics"]) == set().union(*values)
        for key, stat in row["metrics"].items():
            column = [v[key] for v in values if key in v]
            assert stat["n"] == len(column) and stat["mean"] == pytest.approx(float(np.mean(column)), rel=1e-12)
