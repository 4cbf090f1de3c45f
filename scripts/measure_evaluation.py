"""Measure the evaluation numbers reported in docs/evaluation.md and print them as a Markdown table.

    OMP_NUM_THREADS=1 python scripts/measure_evaluation.py                    # ~10 minutes on one CPU core
    python scripts/measure_evaluation.py --work runs/measure --steps 600 --threads 1

1. The floor: FD and KID (classifier features) of each dataset's test split against its train split, i.e.
   what a perfect model would score with as many samples as the test split has; and of one random half of
   the train split against the other half (the finite-sample floor, free of the classifier's
   train/test gap). (There is no such floor for bits/dim: the entropy of the data is unknown.)
2. A briefly trained digits model (``--preset digits``, ``--steps`` steps, trained once into --work and
   reused): FD, KID and coverage of ``--n`` Heun-32 samples (and FD/KID of the first n_test of them, for
   a comparison with the test-vs-train floor at equal sample size), bits/dim of the whole test split.
3. Seconds per 1,000 samples (or examples) for each metric and for sampling, with ``--threads`` threads.

The table and the raw numbers go to stdout and WORK/measure.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_objectives import data
from diffusion_objectives import metrics as M
from diffusion_objectives.cli import main as cli
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation import protocol as E
from diffusion_objectives.training import load_for_inference


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def floor(dataset: str) -> dict:
    """FD / KID of the test split against the train split on the dataset's classifier features."""
    name = E.default_extractor(dataset)
    try:
        ext = M.get_extractor(name)
        train, test = data.get(dataset, split="train"), data.get(dataset, split="test")
    except OptionError as exc:
        return {"dataset": dataset, "extractor": name, "skipped": str(exc)}
    f_train, f_test = ext(train.data), ext(test.data)

    def fd_kid(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
        k = M.kid(a, b, subset_size=min(1000, len(a), len(b)))
        return M.frechet_distance(*M.feature_statistics(a), *M.feature_statistics(b)), k.mean, k.std

    fd, kid, kid_std = fd_kid(f_test, f_train)
    perm = torch.randperm(len(f_train), generator=torch.Generator().manual_seed(0)).numpy()
    half = len(perm) // 2
    fd_h, kid_h, kid_std_h = fd_kid(f_train[perm[:half]], f_train[perm[half:2 * half]])
    return {"dataset": dataset, "extractor": name, "n_test": len(f_test), "n_train": len(f_train),
            "fd": fd, "kid": kid, "kid_std": kid_std, "n_half": half, "fd_half": fd_h, "kid_half": kid_h,
            "kid_std_half": kid_std_h}


def train_digits(work: Path, steps: int) -> Path:
    run = work / f"digits-{steps}"
    summary = run / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text()).get("step") == steps):
        code = cli(["train", "--preset", "digits", "--steps", str(steps), "--set", "run.sample_every=0",
                    "--set", "run.device=cpu", "--no-progress", "--out", str(run)])
        if code != 0:
            raise SystemExit(f"training failed with exit code {code}")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/measure-evaluation", help="directory for the trained digits run")
    ap.add_argument("--steps", type=int, default=600, help="training steps of the digits model (default 600)")
    ap.add_argument("--n", type=int, default=1000, help="samples for FD/KID/coverage (default 1000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--inception-images", type=int, default=64, help="images timed through Inception (default 64)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or
                 platform.machine(), "cpus": torch.get_num_threads()}

    # 1. the floor
    out["floor"] = [floor("digits"), floor("fashion-mnist")]

    # 2. a briefly trained digits model
    t0 = time.perf_counter()
    run = train_digits(work, args.steps)
    out["train_seconds"] = json.loads((run / "summary.json").read_text()).get("elapsed_s", time.perf_counter() - t0)
    loaded = load_for_inference(run)
    settings = E.SampleSettings("heun", 32)
    (x, labels), t_sample = timed(E.generate, loaded, range(args.n), settings)
    n_test = len(loaded.dataset(split="test"))
    result, t_eval = timed(E.evaluate, loaded, ["fd", "kid", "coverage", "bpd", "loss-std"], n=args.n,
                           settings=settings, n_elbo=n_test, elbo_samples=32, samples=x, sample_labels=labels)
    out["digits_model"] = {"steps": args.steps, "run": str(run), "evaluate_seconds": t_eval, **result["metrics"]}
    small = E.evaluate(loaded, ["fd", "kid"], n=n_test, settings=settings, samples=x[:n_test])
    out["digits_model_n_test"] = small["metrics"]

    # 3. seconds per 1,000
    per = 1000.0 / args.n
    ext = M.get_extractor("classifier-digits")
    train = loaded.dataset(split="train")
    f_train = ext(train.data)
    mu_r, s_r = M.feature_statistics(f_train)
    xq = data.dequantize(data.quantize(x, 17), 17)

    def fd():
        mu, s = M.feature_statistics(ext(xq))
        return M.frechet_distance(mu, s, mu_r, s_r)

    _, t_fd = timed(fd)
    _, t_kid = timed(lambda: M.kid(ext(xq), f_train, subset_size=min(1000, args.n)))
    _, t_cov = timed(M.class_coverage, xq, ext, labels)
    _, t_ref = timed(lambda: M.feature_statistics(ext(train.data)))
    ring = data.get("ring", n=1000)
    _, t_toy = timed(M.toy_metrics, ring.data, ring.mixture)
    xt, lt, lv = E.elbo_examples(loaded, "test", n_test)
    _, t_bpd = timed(E.elbo_summary, loaded, xt, lv, samples=32, labels=lt)
    try:
        inc = M.get_extractor("inception")
        k = args.inception_images
        _, t_inc = timed(inc, xq[:k])
        t_inc_1000 = t_inc * 1000 / k
    except OptionError as exc:
        t_inc_1000 = None
        out["inception_skipped"] = str(exc)
    out["seconds_per_1000"] = {
        "sampling (heun, 32 steps = 63 NFE, digits U-Net)": t_sample * per,
        "fd (classifier features + statistics + distance)": t_fd * per,
        "kid (classifier features, 100 subsets)": t_kid * per,
        "coverage (classifier predictions)": t_cov * per,
        f"reference statistics of the train split ({len(train)} images), per 1,000": t_ref * 1000 / len(train),
        "toy metrics (cross-entropy, SW2, MMD², 1,000 vs 1,000 points)": t_toy,
        "bpd (32 λ-draws per example, digits U-Net)": t_bpd * 1000 / n_test,
        f"inception features (8×8 → 299×299, timed on {args.inception_images})": t_inc_1000,
    }
    (work / "measure.json").write_text(json.dumps(out, indent=1, default=float))

    # the table
    print(f"Measured with torch {torch.__version__}, {args.threads} thread(s), on {out['machine']}.\n")
    print("| what | FD | KID | bits/dim | notes |\n|---|---|---|---|---|")
    for f in out["floor"]:
        if "skipped" in f:
            print(f"| floor: {f['dataset']} test vs train | n/a | n/a | — | {f['skipped'][:80]} |")
        else:
            print(f"| floor: {f['dataset']} test ({f['n_test']}) vs train ({f['n_train']}) | {f['fd']:.3f} | "
                  f"{f['kid']:.4f} ± {f['kid_std']:.4f} | — | {f['extractor']} features |")
            print(f"| floor: {f['dataset']} train half vs half ({f['n_half']} each) | {f['fd_half']:.3f} | "
                  f"{f['kid_half']:.4f} ± {f['kid_std_half']:.4f} | — | {f['extractor']} features |")
    d = out["digits_model"]
    cov = d["coverage"]
    print(f"| digits model, {args.steps} steps ({out['train_seconds']:.0f} s), {args.n} Heun-32 samples | "
          f"{d['fd']['value']:.3f} | {d['kid']['mean']:.4f} ± {d['kid']['std']:.4f} | "
          f"{d['bpd']['value']:.4f} ± {d['bpd']['se']:.4f} | coverage accuracy {cov['accuracy']:.3f}, "
          f"missing classes {cov['missing_classes']}; bpd on {d['bpd']['n_examples']} test examples |")
    s = out["digits_model_n_test"]
    print(f"| the same model, first {n_test} samples | {s['fd']['value']:.3f} | {s['kid']['mean']:.4f} ± "
          f"{s['kid']['std']:.4f} | — | equal sample size as the test-vs-train floor |")
    print("\n| work | seconds per 1,000 |\n|---|---|")
    for what, s in out["seconds_per_1000"].items():
        print(f"| {what} | {'n/a' if s is None else f'{s:.3g}'} |")
    print(f"\nraw numbers: {work / 'measure.json'}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
