"""Evaluation of a trained model: sampling, sample-quality metrics, bits/dim and the loss estimator's spread.

One protocol, used by ``diffobj sample/elbo/evaluate`` and by the study (``diffobj compare``), so every
number is produced the same way and carries its provenance (checkpoint, step, sampler, seeds, extractor).

Metrics (``METRICS``):

- ``fd``, ``kid`` (images): Fréchet distance / KID of samples vs the training split, on the features of the
  dataset's classifier (digits, Fashion-MNIST) or Inception.
- ``coverage`` (images): classifier accuracy w.r.t. the conditioning labels, class histogram, missing classes.
- ``toy`` (2-D toy data): KL(model‖data), exact cross-entropy of samples under the true density, SW₂ and
  MMD² to fresh data.
- ``bpd``: −ELBO on the evaluation split, in bits/dim for discrete data (K levels), nats for continuous data.
- ``loss-std``: relative standard deviation (std/mean) of the per-example training loss of the model's own
  objective on the evaluation split: the noise of the loss estimator, which the schedule controls (KG23 §5).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import samplers, schedules
from .elbo import elbo as _elbo
from .errors import OptionError
from .registry import Registry

if TYPE_CHECKING:
    from .metrics import Extractor

__all__ = ["SampleSettings", "GRIDS", "sampling_grid", "generate", "elbo_summary", "elbo_examples", "evaluate",
           "METRICS", "parse_seeds", "seed_ranges", "SEED_MAX", "default_extractor", "dataset_split",
           "extract_features", "Bar", "sample_shape", "is_image"]

METRICS = ("fd", "kid", "coverage", "toy", "bpd", "loss-std")

# A progress-bar factory: ``bar(description, total)`` returns an object with ``update(k)`` and ``close()``
# (e.g. ``functools.partial(tqdm, file=sys.stderr)`` called as ``tqdm(desc=..., total=...)``).
Bar = Callable[[str, int], Any]

GRIDS: Registry[Callable[[int], Tensor]] = Registry("sampling grid")
GRIDS.add("edm", lambda: samplers.grid_edm, "EDM22's ρ = 7 grid, σ from 80 to 0.002")
GRIDS.add("cosine", lambda: (lambda steps: samplers.grid_uniform_t(schedules.get("cosine", logsnr_min=-15,
                                                                                  logsnr_max=15), steps)),
          "uniform in t of the cosine schedule on [−15, 15]")
GRIDS.add("uniform-logsnr", lambda: (lambda steps: samplers.grid_uniform_logsnr(steps, -15.0, 15.0)),
          "uniform in λ on [−15, 15]")


def sampling_grid(name: str, steps: int) -> Tensor:
    """The increasing λ-grid ``name`` (``edm``, ``cosine``, ``uniform-logsnr``) with ``steps`` points."""
    grid = GRIDS.get(name)
    try:
        return grid(steps)
    except ValueError as exc:  # e.g. fewer than 2 points
        raise OptionError(f"--steps {steps}: {exc}") from None


SEED_MAX = 2**63 - 1  # seeds are int64 in samples.npz and torch.Generator.manual_seed


def seed_ranges(text: str) -> list[range]:
    """EDM's seed syntax as ranges, without building the list: ``"1,5,9-11"`` → ``[range(1, 2), range(5, 6),
    range(9, 12)]``. Each seed must lie in 0 … :data:`SEED_MAX` (errors name ``--seeds``)."""
    ranges: list[range] = []
    for part in filter(None, str(text).split(",")):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise OptionError(f"--seeds: expected ranges like 0-63 or 1,5,9-11, got {text!r}") from None
        if b < a or a < 0:
            raise OptionError(f"--seeds: bad range {part!r} in {text!r}")
        if b > SEED_MAX:
            raise OptionError(f"--seeds: seed {b} in {text!r} is too large; seeds lie in 0 … {SEED_MAX} (2^63 − 1)")
        ranges.append(range(a, b + 1))
    if not ranges:
        raise OptionError(f"--seeds: no seeds in {text!r}")
    return ranges


def parse_seeds(text: str) -> list[int]:
    """EDM's seed syntax: ``"0-63"``, ``"1,5,9-11"`` → list of ints (errors name ``--seeds``); see
    :func:`seed_ranges`, which counts a request without building it."""
    return [s for r in seed_ranges(text) for s in r]


@dataclass(frozen=True)
class SampleSettings:
    """How samples are drawn: sampler name, number of grid points, grid, classifier-free guidance scale,
    EMA weights or not. ``grid=None`` is EDM's grid for every sampler: benchmarks/samplers.py found that the
    cosine grid's first step from λ = −15 multiplies ε̂ errors by σ/α ≈ 1800 and costs ancestral and DDIM
    2–4× more network evaluations for the same FD."""

    sampler: str = "heun"
    steps: int = 32
    grid: str | None = None
    guidance: float = 0.0
    ema: bool = True
    guidance_interval: tuple[float, float] | None = None  # guide only for lo ≤ λ ≤ hi (Kynkäänniemi et al. 2024)
    autoguidance: str | None = None  # the guiding checkpoint, recorded for provenance

    def resolved_grid(self) -> str:
        return self.grid or "edm"

    def as_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "grid": self.resolved_grid()}
        for key in ("guidance_interval", "autoguidance"):  # recorded only when used
            if out[key] is None:
                del out[key]
        return out


def _conditional(loaded) -> bool:
    return bool(getattr(loaded.config.network, "conditional", False)) and getattr(loaded.model, "null_label",
                                                                                   None) is not None


def generate(loaded, seeds: Sequence[int], settings: SampleSettings = SampleSettings(), *,
             batch_size: int = 256, progress: Callable[[int, int], None] | None = None, guide=None
             ) -> tuple[Tensor, Tensor | None]:
    """Samples for ``seeds`` from a :class:`~diffusion_objectives.training.LoadedModel`.

    Sample i depends only on seed i (its noise and, for stochastic samplers, its own generator), so any
    batch size gives the same samples. A class-conditional model is conditioned on label ``seed mod C``
    (balanced classes). ``guide``, another loaded model, is the guiding model of autoguidance (used with
    ``settings.guidance``, :mod:`~diffusion_objectives.samplers`). Returns (samples ``[n, ...]`` float32,
    clamped to [−1, 1] for image data, and the labels ``[n]`` or ``None``)."""
    sample_fn = samplers.get(settings.sampler)
    grid = sampling_grid(settings.resolved_grid(), settings.steps)
    data_shape = sample_shape(loaded)
    conditional = _conditional(loaded)
    num_classes = int(loaded.model.null_label) if conditional else 0
    if settings.guidance and not conditional and guide is None:
        raise OptionError("--guidance needs a class-conditional model (or --autoguidance)")
    guiding = _guide(loaded, guide, data_shape, conditional)
    device = next(loaded.model.parameters()).device
    out, out_labels = [], []
    seeds = [int(s) for s in seeds]
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        gens = samplers.seeded_generators(chunk)
        noise = samplers.seeded_noise(gens, data_shape).to(device)
        labels = torch.tensor([s % num_classes for s in chunk], device=device) if conditional else None
        kwargs: dict[str, Any] = {"labels": labels}
        if conditional:
            kwargs.update(guidance=settings.guidance, null_label=num_classes)
        if guiding is not None:
            kwargs.update(guidance=settings.guidance, guide=guiding)
        kwargs["guidance_interval"] = settings.guidance_interval
        if settings.sampler in samplers.STOCHASTIC:
            kwargs["generators"] = gens
        x = sample_fn(loaded.model, loaded.objective.parameterization, noise, grid, **kwargs)
        out.append(x.float().cpu())
        if labels is not None:
            out_labels.append(labels.cpu())
        if progress is not None:
            progress(min(start + batch_size, len(seeds)), len(seeds))
    x = torch.cat(out)
    if is_image(loaded):
        x = x.clamp(-1.0, 1.0)
    return x, (torch.cat(out_labels) if out_labels else None)


def _guide(loaded, guide, data_shape: tuple[int, ...], conditional: bool) -> samplers.Guide | None:
    """The guiding model of ``guide`` (a loaded model or None), checked against the main model."""
    if guide is None:
        return None
    if sample_shape(guide) != data_shape:
        raise OptionError(f"guide: the guiding model's data shape {sample_shape(guide)} differs from "
                          f"the model's {data_shape}")
    if _conditional(guide) != conditional or (conditional and guide.model.null_label != loaded.model.null_label):
        raise OptionError("guide: the guiding model must be conditioned like the model (same classes)")
    return samplers.Guide(guide.model, guide.objective.parameterization)


def sample_shape(loaded) -> tuple[int, ...]:
    """The shape of one sample of ``loaded``'s data: ``(C, H, W)`` for images, ``(D,)`` for vectors."""
    ds = loaded.dataset(**_small(loaded))
    return tuple(ds.shape)


def _small(loaded) -> dict[str, Any]:
    """Dataset overrides that keep a shape-only rebuild cheap."""
    return {"n": 16} if loaded.config.data.name in ("ring", "grid", "anisotropic") else {}


def is_image(loaded) -> bool:
    """Whether ``loaded`` was trained on images (not on 2-D toy data)."""
    return loaded.config.data.name not in ("ring", "grid", "anisotropic")


def dataset_split(loaded, split: str):
    """The dataset of ``loaded`` with ``split`` (``train``/``test``). Datasets without splits (``folder``,
    ``npz``, ``edm-zip``) have only their training data: ``split="train"`` gives it, other splits are an
    :class:`OptionError`."""
    from . import data

    name = loaded.config.data.name
    if "split" in data.REGISTRY.parameters(name):
        return loaded.dataset(split=split)
    if split == "train":
        return loaded.dataset()
    raise OptionError(f"dataset {name!r} has no {split!r} split (it has no splits); use --split train")


def elbo_examples(loaded, split: str = "test", n: int = 256) -> tuple[Tensor, Tensor | None, int | None]:
    """The examples the ELBO is evaluated on: ``min(n, len(split))`` examples of ``split`` chosen by a fixed
    permutation (seed 0), so ``evaluate``'s ``bpd`` and ``diffobj elbo`` use the same ones. Returns
    (x ``[n, ...]``, labels ``[n]`` or None, levels K or None)."""
    if n < 1:
        raise OptionError(f"--n must be a positive number of examples, got {n}")
    held_out = dataset_split(loaded, split)
    idx = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))[: min(n, len(held_out))]
    labels = held_out.labels[idx] if held_out.labels is not None else None
    return held_out.data[idx], labels, held_out.levels


def extract_features(ext, x: Tensor, bar: Bar | None = None) -> np.ndarray:
    """``ext(x)`` in chunks of whole extractor batches (so the features equal one call's), with a bar."""
    if bar is None:
        return ext(x)
    chunk = ext.batch_size * max(1, 1024 // ext.batch_size)
    progress = bar(f"features ({ext.name})", x.shape[0])
    out = []
    for i in range(0, x.shape[0], chunk):
        out.append(ext(x[i:i + chunk]))
        progress.update(min(chunk, x.shape[0] - i))
    progress.close()
    return np.concatenate(out) if out else np.zeros((0, ext.dim))


def default_extractor(dataset_name: str) -> str:
    """The feature extractor used for FD/KID on ``dataset_name``: the project's classifier where one
    exists, Inception otherwise."""
    return {"digits": "classifier-digits", "fashion-mnist": "classifier-fashion-mnist"}.get(dataset_name,
                                                                                             "inception")


def elbo_summary(loaded, x: Tensor, levels: int | None, *, samples: int = 32, seed: int = 0,
                 labels: Tensor | None = None, batch_size: int = 4096, bar: Bar | None = None
                 ) -> tuple[dict[str, Any], Any]:
    """The −ELBO of ``x`` under ``loaded`` with the library's :func:`~diffusion_objectives.elbo` (``samples``
    λ-draws per example in 8 antithetic replicates, generator seeded with ``seed``), reduced to means over
    the examples (bits/dim for discrete data, nats per example for continuous data), and the raw result.

    ``se`` is the standard error of the mean as an estimate of the expected −ELBO over the data: the
    spread of the per-example estimates over √n (it already contains their Monte-Carlo noise);
    ``mc_se`` is the Monte-Carlo part alone, √(Σ se_i²)/n (the error for exactly these examples).
    ``bar`` counts the network evaluations (it does not change the numbers)."""
    if samples < 8 or samples % 8:
        raise OptionError(f"--samples (λ-draws per example) must be a positive multiple of 8, got {samples}")
    labels = labels if _conditional(loaded) else None
    device = next(loaded.model.parameters()).device
    x = x.to(device)
    labels = labels.to(device) if labels is not None else None
    gen = torch.Generator(device=device).manual_seed(seed)
    model = loaded.model
    if bar is not None:
        progress = bar(f"ELBO ({x.shape[0]} examples x {samples} draws)", x.shape[0] * samples)

        def model(z: Tensor, *a: Any) -> Tensor:
            progress.update(z.shape[0])
            return loaded.model(z, *a)
    lo, hi = getattr(loaded, "logsnr_range", None) or (None, None)  # a foreign diffusers pipeline: its table
    res = _elbo(model, loaded.objective.parameterization, x, levels, samples=samples, generator=gen,
                batch_size=batch_size, labels=labels, logsnr_min=lo, logsnr_max=hi)
    if bar is not None:
        progress.close()
    n = x.shape[0]
    scale = 1.0 / (res.dims * math.log(2.0)) if levels is not None else 1.0
    unit = "bits/dim" if levels is not None else "nats"

    def mean_se(v: Tensor, se: Tensor) -> tuple[float, float, float]:
        v, se = v.double().cpu(), se.double().cpu()
        within = float(torch.sqrt((se**2).sum())) / n  # Monte-Carlo error of the mean over these examples
        between = float(v.std()) / math.sqrt(n) if n > 1 else within  # includes the Monte-Carlo noise
        return float(v.mean()) * scale, between * scale, within * scale

    total, total_se, total_mc_se = mean_se(res.total, res.total_se)
    summary = {
        "unit": unit, "value": total, "se": total_se, "mc_se": total_mc_se, "n_examples": n, "levels": levels,
        "samples": samples,
        "prior": mean_se(res.prior, res.prior_se)[0], "reconstruction": mean_se(res.reconstruction,
                                                                                res.reconstruction_se)[0],
        "diffusion": mean_se(res.diffusion, res.diffusion_se)[0], "nfe_per_example": res.nfe,
        "per_logsnr_bin": {"edges": res.bin_edges.tolist(),
                           "diffusion": (res.diffusion_bins.double().mean(0).cpu() * scale).tolist()},
        "seed": seed,
    }
    return summary, res


def _loss_std(loaded, x: Tensor, labels: Tensor | None, seed: int) -> dict[str, Any]:
    loss = loaded.objective.loss()
    model = loaded.model
    device = next(model.parameters()).device
    x = x.to(device)
    labels = labels.to(device) if labels is not None else None
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        if labels is not None and _conditional(loaded):
            vals = loss(model, x, gen, labels=labels).loss
        else:
            vals = loss(model, x, gen).loss
    vals = vals.double()
    return {"relative_std": float(vals.std() / vals.mean()), "mean": float(vals.mean()),
            "n_examples": int(vals.numel()), "seed": seed}


def evaluate(loaded, metrics: Sequence[str] = ("fd", "kid", "bpd"), *, n: int = 1000,
             seeds: Sequence[int] | None = None, settings: SampleSettings = SampleSettings(),
             split: str = "test", n_elbo: int = 256, elbo_samples: int = 32, extractor: str | Extractor | None = None,
             reference=None, batch_size: int = 256, samples: Tensor | None = None,
             sample_labels: Tensor | None = None, progress: Callable[[str], None] | None = None,
             bar: Bar | None = None) -> dict[str, Any]:
    """Evaluate ``loaded`` on ``metrics`` and return a JSON-able dict with the provenance of every number.

    ``n`` samples with ``seeds`` (default 0 … n−1) are drawn with ``settings`` unless ``samples`` are
    given; ``split`` is the dataset split for bits/dim and the loss spread (``n_elbo`` examples,
    ``elbo_samples`` λ-draws each); FD/KID compare with the training split (or ``reference``, an .npz of
    ``mu``/``sigma``) on ``extractor`` features (a registry name or an extractor object; default
    :func:`default_extractor`). ``progress`` receives one line per stage, ``bar`` (see :data:`Bar`) shows
    the progress of sampling and feature extraction."""
    from . import metrics as M

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise OptionError(f"unknown metric(s) {', '.join(unknown)}; choose from: {', '.join(METRICS)}")
    image = is_image(loaded)
    for m in metrics:
        if image and m == "toy":
            raise OptionError("metric 'toy' is for 2-D toy data; use fd, kid or coverage for images")
        if not image and m in ("fd", "kid", "coverage"):
            raise OptionError(f"metric {m!r} is for image data; use 'toy' for 2-D toy data")
    # everything that can fail on the options is checked before any sampling
    ext = ref = None
    if any(m in metrics for m in ("fd", "kid", "coverage")):
        if isinstance(extractor, M.Extractor):
            ext = extractor
        else:
            ext = M.get_extractor(extractor or default_extractor(loaded.config.data.name))
        if "coverage" in metrics and not isinstance(ext, M.ClassifierExtractor):
            raise OptionError("metric 'coverage' needs a classifier extractor (digits or fashion-mnist)")
    if reference is not None and ("fd" in metrics or "kid" in metrics):
        if "kid" in metrics:
            raise OptionError("metric 'kid' needs reference features, not only statistics: leave the "
                              "reference unset (or evaluate fd alone against it)")
        ref = reference if isinstance(reference, M.Reference) else M.load_reference(reference)
        M.results._compatible(ref, ext)  # same feature dimension and extractor
    say = progress or (lambda msg: None)
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    result: dict[str, Any] = {
        "checkpoint": str(loaded.checkpoint_dir), "step": loaded.step, "images_seen": loaded.images_seen,
        "objective": loaded.config.loss.objective, "dataset": loaded.config.data.name,
        "ema": loaded.ema, "training_precision": loaded.config.run.precision,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "metrics": {},
    }
    needs_samples = any(m in metrics for m in ("fd", "kid", "coverage", "toy"))
    if needs_samples:
        if samples is None:
            say(f"sampling {len(seeds)} with {settings.sampler}, {settings.steps} steps")
            hook = None
            if bar is not None:
                sample_bar = bar(f"sampling ({settings.sampler}, {settings.steps} steps)", len(seeds))
                done = [0]

                def hook(k: int, total: int) -> None:
                    sample_bar.update(k - done[0])
                    done[0] = k
            samples, sample_labels = generate(loaded, seeds, settings, batch_size=batch_size, progress=hook)
            if bar is not None:
                sample_bar.close()
        elif len(seeds) < samples.shape[0]:
            raise OptionError(f"{samples.shape[0]} samples but only {len(seeds)} seeds")
        # the weights actually used are those of ``loaded``, whatever ``settings.ema`` says
        result["sampling"] = {**settings.as_dict(), "ema": loaded.ema, "n": int(samples.shape[0]),
                              "seeds": M.results.format_seeds(seeds[: samples.shape[0]])}
    train = dataset_split(loaded, "train") if needs_samples else None
    if image and needs_samples:
        levels = train.levels
        if levels is not None:  # samples are written as K-level images: measure those
            from .data import dequantize, quantize
            samples = dequantize(quantize(samples, levels), levels).float()
    if ext is not None:
        say(f"features ({ext.name})")
        feats = extract_features(ext, samples, bar)
        if "fd" in metrics or "kid" in metrics:
            ref_feats = None
            if ref is None:
                ref_feats = extract_features(ext, train.data, bar)
                mu, sigma = M.feature_statistics(ref_feats)
                ref = M.Reference(mu=mu, sigma=sigma, path=f"<{loaded.config.data.name} train split>",
                                  checksum="", meta={"extractor": ext.name, "extractor_checksum": ext.checksum,
                                                     "n_samples": str(ref_feats.shape[0])})
            if "fd" in metrics:
                mu, sigma = M.feature_statistics(feats)
                value = M.frechet_distance(mu, sigma, ref.mu, ref.sigma)
                result["metrics"]["fd"] = M.fd_result(value, n_samples=feats.shape[0], extractor=ext,
                                                      reference=ref, seeds=seeds[: feats.shape[0]]).as_dict()
            if "kid" in metrics:
                k = M.kid(feats, ref_feats, subset_size=min(1000, feats.shape[0], ref_feats.shape[0]))
                result["metrics"]["kid"] = {"mean": k.mean, "std": k.std, "extractor": ext.name,
                                            "extractor_checksum": ext.checksum, "n_samples": int(feats.shape[0])}
        if "coverage" in metrics:
            result["metrics"]["coverage"] = M.class_coverage(samples, ext, labels=sample_labels).as_dict()
    if "toy" in metrics:
        mixture = loaded.dataset(**_small(loaded)).mixture
        result["metrics"]["toy"] = M.toy_metrics(samples, mixture, seed=10_000 + seeds[0]).as_dict()
    if "bpd" in metrics or "loss-std" in metrics:
        x, labels, levels = elbo_examples(loaded, split, n_elbo)
        if "bpd" in metrics:
            say(f"ELBO on {x.shape[0]} {split} examples")
            summary, _ = elbo_summary(loaded, x, levels, samples=elbo_samples, labels=labels, bar=bar)
            result["metrics"]["bpd"] = {**summary, "split": split}
        if "loss-std" in metrics:
            result["metrics"]["loss-std"] = {**_loss_std(loaded, x, labels, seed=1), "split": split}
    return _jsonable(result)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
