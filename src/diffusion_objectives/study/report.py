"""The study report: ``results.json`` (every run and the per-objective summary) and ``report.md`` with a
table of mean ± standard error over seeds, the plots, the protocol and the machine time.

``report.md`` is generated from the same summary dict that is written to ``results.json``, so the two
always agree (a test checks it cell by cell).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import plotting
from ..core.theory import augmentation_density
from ..data import image_grid, scatter_points
from ..evaluation.protocol import METRICS

__all__ = ["COLUMNS", "columns", "extract", "summarise", "write_report", "format_cell"]


def columns() -> list[tuple[str, str, int]]:
    """(name, heading, direction) of every named output of the registered metrics, in registry order, then the
    training time: direction −1 means lower is better, +1 higher is better, 0 neither. A metric added to
    :data:`~diffusion_objectives.evaluation.protocol.METRICS` gets its columns here."""
    outputs = [o for name in METRICS.names() for o in METRICS.get(name).outputs]
    return [(o.name, o.heading, o.direction) for o in outputs] + [("train_seconds", "train s", 0)]


COLUMNS: list[tuple[str, str, int]] = columns()


def extract(record: dict[str, Any]) -> dict[str, float]:
    """The named scalar outputs of one run's record (:meth:`~diffusion_objectives.evaluation.protocol.Metric.scalars`
    of each metric in it; missing ones are left out) and its training time."""
    out: dict[str, float] = {}
    for name, result in record["result"]["metrics"].items():
        if name in METRICS:
            out.update(METRICS.get(name).scalars(result))
    if record.get("train_seconds") is not None:
        out["train_seconds"] = float(record["train_seconds"])
    return out


def _mean_se(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "se": se, "n": int(len(v))}


def primary_metric(summary_rows: list[dict[str, Any]]) -> str:
    """The sample-quality metric the verdict uses: FD for images, the reverse KL divergence KL(model‖data) for
    toy data (the cross-entropy for results written before it existed: it is not a divergence)."""
    keys = set().union(*(r["metrics"].keys() for r in summary_rows)) if summary_rows else set()
    for key in ("fd", "reverse_kl", "cross_entropy", "kid", "bpd"):
        if key in keys:
            return key
    raise ValueError("no sample-quality metric in the results")


def summarise(entries, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid entry: monotone or not (``None`` for a ``+uncertainty`` entry: its effective weighting is learned,
    whatever the base w), and mean ± SE over seeds of every scalar metric."""
    rows = []
    for e in entries:
        mine = [r for r in records if r["entry"] == e.label]
        scalars = [extract(r) for r in mine]
        keys = sorted(set().union(*scalars)) if scalars else []
        rows.append({
            "entry": e.label, "objective": e.objective, "adaptive": e.adaptive,
            "uncertainty": getattr(e, "uncertainty", False),
            "monotone": None if getattr(e, "uncertainty", False) else e.is_monotonic(),
            "base": replace(e, adaptive=False, uncertainty=False).label if hasattr(e, "uncertainty") else e.label,
            "seeds": [r["seed"] for r in mine],
            "metrics": {k: _mean_se([s[k] for s in scalars if k in s]) for k in keys},
        })
    return rows


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """KG23's claim at this scale: is the best monotone weighting competitive with the best non-monotone one
    on the primary sample-quality metric? Also: does the grid rank objectives above seed noise?"""
    key = primary_metric(rows)
    sign = dict((k, d) for k, _, d in columns()).get(key) or -1  # the fallback metrics: lower is better
    scored = [r for r in rows if key in r["metrics"]]
    best = {}
    for mono in (True, False):
        group = [r for r in scored if r["monotone"] is mono]
        if group:
            best[mono] = min(group, key=lambda r: -sign * r["metrics"][key]["mean"])
    out: dict[str, Any] = {"metric": key, "lower_is_better": sign < 0}
    ses = [r["metrics"][key]["se"] for r in scored if r["metrics"][key]["se"] is not None]
    if True in best and False in best:
        a, b = best[True]["metrics"][key], best[False]["metrics"][key]
        se = math.hypot(a["se"] or 0.0, b["se"] or 0.0) if ses else None
        gap = (b["mean"] - a["mean"]) * (-sign)  # > 0: the monotone one is better
        out.update(best_monotone=best[True]["entry"], best_non_monotone=best[False]["entry"],
                   advantage_of_monotone=gap, se=se, z=(gap / se if se else None))
        if se:
            z = gap / se
            out["statement"] = (
                f"the best monotone weighting ({best[True]['entry']}) is better than the best non-monotone one "
                f"({best[False]['entry']}) by {z:.1f} standard errors" if z >= 2 else
                f"the best monotone ({best[True]['entry']}) and non-monotone ({best[False]['entry']}) weightings "
                f"are within {abs(z):.1f} standard errors: competitive" if z > -2 else
                f"the best non-monotone weighting ({best[False]['entry']}) is better than the best monotone one "
                f"({best[True]['entry']}) by {-z:.1f} standard errors")
        else:
            out["statement"] = "one seed per objective: no standard errors, no significance statement"
    if len(scored) >= 2 and ses:
        ranked = sorted(scored, key=lambda r: -sign * r["metrics"][key]["mean"])
        first, last = ranked[0]["metrics"][key], ranked[-1]["metrics"][key]
        spread = abs(first["mean"] - last["mean"]) / math.hypot(first["se"] or 0.0, last["se"] or 0.0)
        out["best_vs_worst_z"] = spread
        out["ranking"] = [r["entry"] for r in ranked]
    return out


def format_cell(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "—"
    m, se = stat["mean"], stat["se"]
    digits = 4 if abs(m) < 10 else 1
    return f"{m:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{m:.{digits}f}"


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    present = [c for c in columns() if any(c[0] in r["metrics"] for r in rows)]
    head = ["objective", "monotone", "seeds"] + [h for _, h, _ in present]
    body = [[r["entry"], {True: "yes", False: "no", None: "learned"}[r["monotone"]], str(len(r["seeds"]))]
            + [format_cell(r["metrics"].get(k)) for k, _, _ in present] for r in rows]
    return head, body


def _markdown_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------------------

def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_weightings(entries, path: Path) -> None:
    """w(λ)/max w of every fixed weighting, and the noise-augmentation density implied by each monotone one."""
    lam = torch.linspace(-15, 15, 1201, dtype=torch.float64)
    fig, axes = plotting.subplots(1, 2, figsize=(13, 4.5))
    for e in entries:
        if e.adaptive or getattr(e, "uncertainty", False):
            continue
        w = e.weighting()(lam)
        style = "-" if e.is_monotonic() else "--"
        axes[0].plot(lam, w / w.max(), style, label=e.label)
        if e.is_monotonic():
            aug = augmentation_density(e.weighting(), lam, -15, 15)
            axes[1].plot(lam, aug.density, label=f"{e.label} (+{aug.point_mass:.2g} at λ_max)")
    axes[0].set(title="weightings w(λ)/max w (dashed: non-monotone)", xlabel="log-SNR λ")
    axes[1].set(title="implied noise-augmentation densities (monotone only)", xlabel="log-SNR λ")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path)


def _stats(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of a run's ``stats.jsonl``."""
    stats = Path(record["run_dir"]) / "stats.jsonl"
    return [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]


def _plot_training_curves(entries, records: list[dict[str, Any]], path: Path) -> None:
    """Per entry, the seed-averaged training loss over its final value."""
    fig, ax = plotting.subplots(figsize=(8, 4.5))
    for e in entries:
        curves = [[(s["step"], s["loss"]) for s in _stats(r) if s.get("loss") is not None]
                  for r in records if r["entry"] == e.label]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = np.array([p[0] for p in curves[0][:n]])
        loss = np.mean([[p[1] for p in c[:n]] for c in curves], axis=0)
        final = np.mean(loss[-max(1, n // 10):])
        ax.plot(steps, loss / final, "-" if e.is_monotonic() else "--", label=e.label)
    ax.set(yscale="log", xlabel="step", ylabel="training loss / its final value", title="training curves")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    """One bar chart per named metric output present (mean ± SE over seeds), coloured by monotonicity."""
    present = [c for c in columns() if c[0] != "train_seconds" and any(c[0] in r["metrics"] for r in rows)]
    fig, axes = plotting.subplots(len(present), 1, figsize=(9, 2.4 * len(present)), squeeze=False)
    for ax, (key, head, _) in zip(axes[:, 0], present, strict=True):
        xs = [i for i, r in enumerate(rows) if key in r["metrics"]]
        ys = [rows[i]["metrics"][key]["mean"] for i in xs]
        es = [rows[i]["metrics"][key]["se"] or 0.0 for i in xs]
        colors = [{True: "tab:blue", False: "tab:red", None: "tab:gray"}[rows[i]["monotone"]] for i in xs]
        ax.bar(xs, ys, yerr=es, color=colors, capsize=3)
        ax.set_ylabel(head, fontsize=8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["entry"] for r in rows], rotation=35, ha="right", fontsize=7)
    axes[0, 0].set_title("metrics (mean ± SE over seeds; blue: monotone, red: non-monotone, gray: learned)")
    _save(fig, path)


def _plot_samples(entries, records: list[dict[str, Any]], path: Path) -> None:
    """Per entry, the samples its first run kept: a scatter plot of 2-D points or an image grid."""
    cols = min(5, len(entries))
    nrows = math.ceil(len(entries) / cols)
    fig, axes = plotting.subplots(nrows, cols, figsize=(2.6 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, e in zip(axes.flat, entries, strict=False):
        mine = [r for r in records if r["entry"] == e.label]
        file = Path(mine[0]["run_dir"]) / "samples.npz" if mine else None
        if file is None or not file.is_file():
            continue
        x = np.load(file)["samples"]
        if x.ndim == 2:
            scatter_points(ax, x, limit=2.0, size=0.5)
        else:
            grid = image_grid(torch.from_numpy(x[:36]), 6)
            ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray")
        ax.set_title(e.label, fontsize=8)
    _save(fig, path)


def _plots(entries, rows, records, out: Path) -> dict[str, str]:
    """Write the report's plots into ``out``; return {name: file name}."""
    files = {"weightings": "weightings.png", "training_curves": "training_curves.png", "metrics": "metrics.png",
             "samples": "samples.png"}
    _plot_weightings(entries, out / files["weightings"])
    _plot_training_curves(entries, records, out / files["training_curves"])
    _plot_metrics(rows, out / files["metrics"])
    _plot_samples(entries, records, out / files["samples"])
    if any(getattr(e, "uncertainty", False) for e in entries):
        _plot_effective_weightings(entries, records, out / "effective_weightings.png")
        files["effective_weightings"] = "effective_weightings.png"
    return files


# ---- the learned uncertainty weighting (EDM2) against the base weighting ------------------------------------

def _weighting_history(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The stats.jsonl records of a ``+uncertainty`` run that carry the effective weighting per λ-bin."""
    return [r for r in _stats(record) if r.get("w_eff_per_logsnr_bin") is not None]


def _normalised_mean_logsnr(lam: np.ndarray, w: np.ndarray) -> float:
    """∫ λ w(λ) dλ / ∫ w(λ) dλ on the bin centres (trapezoid): where the weighting puts its mass."""
    return float(np.trapezoid(lam * w, lam) / np.trapezoid(w, lam))


def weighting_shift(entries, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ``+uncertainty`` entry: how the learned weighting w_eff = w e^{−u} (normalised, at the end of
    training) differs from the base w (normalised alike): the shift of the weighting's mean λ (mean ± SE over
    seeds) and the λ-bin centres where w_eff/w is largest and smallest (seed-averaged ratio)."""
    out = []
    for e in entries:
        if not getattr(e, "uncertainty", False):
            continue
        shifts, ratios, lam = [], [], None
        for r in records:
            hist = _weighting_history(r) if r["entry"] == e.label else []
            if not hist:
                continue
            last = hist[-1]
            lam = np.asarray(last["logsnr_bin_centres"])
            w_eff, w = np.asarray(last["w_eff_per_logsnr_bin"]), np.asarray(last["w_per_logsnr_bin"])
            shifts.append(_normalised_mean_logsnr(lam, w_eff) - _normalised_mean_logsnr(lam, w))
            ratios.append(np.log(w_eff / w))
        if not shifts:
            continue
        log_ratio = np.mean(ratios, axis=0)
        out.append({"entry": e.label, "mean_logsnr_shift": _mean_se(shifts),
                    "logsnr_max_ratio": float(lam[np.argmax(log_ratio)]), "max_ratio": float(np.exp(log_ratio.max())),
                    "logsnr_min_ratio": float(lam[np.argmin(log_ratio)]), "min_ratio": float(np.exp(log_ratio.min()))})
    return out


def _shift_sentence(s: dict[str, Any]) -> str:
    m = s["mean_logsnr_shift"]
    se = m["se"]
    z = m["mean"] / se if se else None
    where = "higher λ (less noise)" if m["mean"] > 0 else "lower λ (more noise)"
    sig = (f"{abs(z):.1f} standard errors from zero" if z is not None else "one seed: no standard error")
    return (f"`{s['entry']}`: the learned weighting moved the objective's mean λ by {m['mean']:+.3f} ± "
            f"{se if se is not None else float('nan'):.3f} toward {where} ({sig}); w_eff/w is largest "
            f"({s['max_ratio']:.3g}×) at λ ≈ {s['logsnr_max_ratio']:g} and smallest ({s['min_ratio']:.3g}×) at "
            f"λ ≈ {s['logsnr_min_ratio']:g}")


def _plot_effective_weightings(entries, records: list[dict[str, Any]], path: Path) -> None:
    """One panel per ``+uncertainty`` entry: the base w and the effective w e^{−u} (both normalised) at several
    points of training (seed 0's run; the final one averaged over seeds, bold)."""
    mine = [e for e in entries if getattr(e, "uncertainty", False)]
    cols = min(4, len(mine))
    rows = math.ceil(len(mine) / cols)
    fig, axes = plotting.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(mine):]:
        ax.axis("off")
    for ax, e in zip(axes.flat, mine, strict=False):
        hists = [h for r in records if r["entry"] == e.label and (h := _weighting_history(r))]
        if not hists:
            continue
        lam = np.asarray(hists[0][-1]["logsnr_bin_centres"])
        picks = sorted({int(round(q * (len(hists[0]) - 1))) for q in (0.0, 0.25, 0.5, 0.75)})
        for k in picks:
            rec = hists[0][k]
            ax.plot(lam, rec["w_eff_per_logsnr_bin"], color=plotting.colormap("viridis")(k / max(len(hists[0]) - 1, 1)),
                    lw=0.8, label=f"w_eff, step {rec['step']}")
        ax.plot(lam, np.mean([h[-1]["w_eff_per_logsnr_bin"] for h in hists], axis=0), color="C3", lw=2,
                label=f"w_eff, final (mean of {len(hists)} seeds)")
        ax.plot(lam, hists[0][-1]["w_per_logsnr_bin"], "k--", lw=1.5, label="base w")
        ax.set(yscale="log", title=e.label, xlabel="log-SNR λ (bin centres)", ylabel="normalised weighting")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, path)


def variant_effects(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Each ``+adaptive``/``+uncertainty`` entry against its base entry on metric ``key``: the difference of the
    seed means, its standard error √(SE₁² + SE₂²) and z (lower-is-better metrics: negative = the variant is
    better)."""
    by_label = {r["entry"]: r for r in rows}
    out = []
    for r in rows:
        base = by_label.get(r.get("base", r["entry"]))
        if base is None or base is r or key not in r["metrics"] or key not in base["metrics"]:
            continue
        a, b = r["metrics"][key], base["metrics"][key]
        se = math.hypot(a["se"] or 0.0, b["se"] or 0.0) if a["se"] is not None and b["se"] is not None else None
        diff = a["mean"] - b["mean"]
        out.append({"entry": r["entry"], "base": base["entry"], "metric": key, "difference": diff, "se": se,
                    "z": diff / se if se else None})
    return out


def _overrides_text(overrides: Any) -> str:
    """A study's training-config overrides as ``KEY=VALUE`` items (older results hold the list of items)."""
    items = overrides.items() if isinstance(overrides, dict) else (item.split("=", 1) for item in overrides)
    return " ".join(f"{k}={v}" for k, v in items)


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def write_report(study, entries, records: list[dict[str, Any]], out: str | Path, *,
                 wall_seconds: float) -> dict[str, Any]:
    """Write ``results.json``, ``report.md`` and the plots into ``out``; return the results dict."""

    out = Path(out)
    rows = summarise(entries, records)
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "wall_seconds": wall_seconds,
        "train_seconds_total": sum(float(r.get("train_seconds") or 0.0) for r in records),
        "eval_seconds_total": sum(float(r.get("eval_seconds") or 0.0) for r in records),
        "study": asdict(study), "summary": rows, "verdict": verdict(rows), "runs": records,
    }
    if any(r.get("ema_sweep") for r in records):
        results["ema_sweep"] = ema_sweep_summary(entries, records, primary_metric(rows))
    effects = [v for key in (primary_metric(rows), "bpd", "loss_rel_std") for v in variant_effects(rows, key)]
    if effects:  # a +adaptive/+uncertainty entry beside its base entry
        results["variant_effects"] = effects
        results["weighting_shift"] = weighting_shift(entries, records)
    results["plots"] = _plots(entries, rows, records, out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(render_markdown(results))
    return results


def _toy_scale(runs: list[dict[str, Any]]) -> list[str]:
    """For toy studies: what the KL estimate and the cross-entropy read on fresh data from the true density."""
    toy = [r["result"]["metrics"]["toy"] for r in runs if "toy" in r["result"]["metrics"]]
    if not toy or "reference_kl" not in toy[0]:
        return []
    ref_kl = [t["reference_kl"] for t in toy]
    return ["", f"For scale, on {toy[0]['n_reference']} fresh samples of the data itself the KL estimate reads "
                f"{_span(ref_kl)} nats (true value 0: the k-nearest-neighbour entropy estimator's bias for q = p at "
                "this sample size; it is smaller for a smoother q, so a model can read below it) and the "
                f"cross-entropy {_span([t['entropy'] for t in toy], 3)} nats (the data's entropy, Monte Carlo). The "
                "cross-entropy is not a divergence: samples drawn toward the modes score below the data's "
                "entropy; KL(model‖data) = cross-entropy − H(model) penalises that."]


def _span(values: list[float], digits: int = 4) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}–{hi:.{digits}f}"


def _effect_sentence(v: dict[str, Any]) -> str:
    """One line per variant and metric (all the report's compared metrics are lower-is-better)."""
    head = f"`{v['entry']}` vs `{v['base']}` on {v['metric']}: {v['difference']:+.4g}"
    if v["z"] is None:
        return head + " (one seed: no standard error)"
    word = ("better" if v["z"] <= -2 else "worse" if v["z"] >= 2 else "indistinguishable from the base")
    return head + f" ± {v['se']:.2g} (z = {v['z']:+.1f}): {word}"


def ema_sweep_summary(entries, records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per entry and swept σ_rel: metric ``key`` (mean ± SE over seeds) of the post-hoc EMA reconstructions, and
    the largest profile error of the fit."""
    out = []
    for e in entries:
        mine = [r for r in records if r["entry"] == e.label and r.get("ema_sweep")]
        for sigma in (mine[0]["ema_sweep"] if mine else {}):
            values = [extract({"result": r["ema_sweep"][sigma]["result"]}).get(key) for r in mine]
            if None in values:
                continue
            out.append({"entry": e.label, "sigma_rel": float(sigma), "metric": key, **_mean_se(values),
                        "profile_error": max(r["ema_sweep"][sigma]["profile_error"] for r in mine)})
    return out


def _ema_sweep_section(results: dict[str, Any]) -> list[str]:
    sweep = results.get("ema_sweep")
    if not sweep:
        return []
    widths = sorted({s["sigma_rel"] for s in sweep})
    key = sweep[0]["metric"]
    cells = {(s["entry"], s["sigma_rel"]): s for s in sweep}
    own = {r["entry"]: r["metrics"].get(key) for r in results["summary"]}
    body = [[entry, format_cell(own.get(entry))] + [format_cell(cells.get((entry, w))) for w in widths]
            for entry in dict.fromkeys(s["entry"] for s in sweep)]
    return ["", "## EMA width sweep (post-hoc EMA, no retraining)", "",
            f"{key} (mean ± SE over seeds) of each run's own EMA and of the EMA reconstructed after training at each "
            "relative width σ_rel from the run's power-function EMA snapshots (EDM2 §3, docs/ema.md; largest "
            f"profile error of the fits {100 * max(s['profile_error'] for s in sweep):.2g}%).", "",
            _markdown_table(["objective", "trained EMA"] + [f"σ_rel {w:g}" for w in widths], body), ""]


def _variant_section(results: dict[str, Any]) -> list[str]:
    """The ``+adaptive``/``+uncertainty`` entries against their base entry, and where the learned weighting
    moved the objective (only in studies with such entries)."""
    if not results.get("variant_effects"):
        return []
    body = [[v["entry"], v["base"], v["metric"], f"{v['difference']:+.4g}",
             f"{v['se']:.2g}" if v["se"] is not None else "—", f"{v['z']:+.1f}" if v["z"] is not None else "—"]
            for v in results["variant_effects"]]
    lines = ["", "## Variants against their base entry", "",
             "Difference of the seed means (variant − base) with its standard error √(SE₁² + SE₂²); for ↓ "
             "metrics a negative difference means the variant is better. |z| < 2: not distinguishable from seed "
             "noise at this number of seeds.", "",
             _markdown_table(["variant", "base", "metric", "difference", "SE", "z"], body), ""]
    lines += [f"- {_effect_sentence(v)}" for v in results["variant_effects"] if v["metric"] != "loss_rel_std"]
    lines += [""]
    if results.get("weighting_shift"):
        lines += ["### Did the learned weighting move the objective?", "",
                  "EDM2's head learns e^u ≈ E[ℓ_w | λ]/D, so the network trains on w_eff = w e^{−u} "
                  "(docs/objectives.md). Both normalised to unit integral over the logged λ-bins at the end of "
                  "training; the shift is ∫λ w_eff − ∫λ w (mean ± SE over seeds):", ""]
        lines += [f"- {_shift_sentence(s)}." for s in results["weighting_shift"]]
        lines += ["", "![effective weightings](effective_weightings.png)", ""]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """``report.md`` from a results dict (the one written to ``results.json``)."""
    study, rows, v = results["study"], results["summary"], results["verdict"]
    head, body = _table(rows)
    p = study["evaluation"]
    first = results["runs"][0] if results["runs"] else {}
    steps_per_s = [r["steps_per_s"] for r in results["runs"] if r.get("steps_per_s")]
    learned = any(r.get("uncertainty") for r in results["summary"])
    title = ("KG23's adaptive schedule vs EDM2's learned uncertainty weighting" if learned
             else "Monotone vs non-monotone weightings (KG23)")
    lines = [
        f"# {title}",
        "",
        f"{study.get('description') or ''}".strip(),
        "",
        "## Results",
        "",
        f"Mean ± standard error over seeds ({', '.join(map(str, study['seeds']))}); ↓ lower is better. "
        "Monotone weightings are likelihood objectives (ELBOs of noise-augmented data, KG23 §4).",
        "",
        _markdown_table(head, body),
        "",
        f"**Verdict** on {v['metric']}: {v.get('statement', 'not enough objectives to compare')}.",
    ]
    if "best_vs_worst_z" in v:
        lines += ["", f"Best ({v['ranking'][0]}) vs worst ({v['ranking'][-1]}) objective: "
                      f"{v['best_vs_worst_z']:.1f} standard errors apart."]
    lines += _toy_scale(results["runs"])
    lines += _variant_section(results)
    lines += _ema_sweep_section(results)
    lines += [
        "",
        "## Plots",
        "",
        "![weightings](weightings.png)",
        "",
        "![training curves](training_curves.png)",
        "",
        "![metrics](metrics.png)",
        "",
        "![samples](samples.png)",
        "",
        "## Protocol",
        "",
        f"- training preset `{study['preset']}` with overrides `{_overrides_text(study['overrides']) or 'none'}`; "
        f"{study['steps']} steps of batch {study['batch_size']} for every objective (equal compute); "
        "same network, data, optimizer and EMA; each objective's own schedule and parameterization "
        "(`+adaptive`: KG23's adaptive schedule instead).",
        f"- network: `{first.get('network', 'see the runs config.yaml')}`",
        f"- evaluation: metrics {', '.join(p['metrics'])}; {p['n']} samples (seeds 0–{p['n'] - 1}) with the "
        f"`{p['sampler']}` sampler, {p['steps']} grid points; −ELBO on {p['n_elbo']} `{p['split']}` examples "
        f"with {p['elbo_samples']} λ-draws each (bits/dim for discrete data, nats for continuous data).",
        f"- seeds: {', '.join(map(str, study['seeds']))}",
        f"- machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, torch "
        f"{results['machine']['torch']}; {study['jobs']} run(s) at a time × {study['threads']} thread(s)",
        f"- time: {results['wall_seconds']:.0f} s wall clock for this invocation; "
        f"{results['train_seconds_total']:.0f} s training and {results['eval_seconds_total']:.0f} s "
        f"evaluation summed over runs"
        + (f"; median {float(np.median(steps_per_s)):.1f} training steps/s per run" if steps_per_s else ""),
        f"- date: {results['date']}",
        "",
    ]
    return "\n".join(lines)
