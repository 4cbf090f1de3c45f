"""Evaluation of a trained model: sampling, sample-quality metrics, bits/dim and the loss estimator's spread.

One protocol, used by ``diffobj sample/elbo/evaluate`` and by the study (``diffobj compare``), so every
number is produced the same way and carries its provenance (checkpoint, step, sampler, seeds, extractor).

Metrics (the registry ``METRICS`` of :class:`Metric` objects; each has ``compute`` and named scalar
:class:`Output` s, which the study report reads by name):

- ``fd``, ``kid`` (images): Fréchet distance / KID of samples vs the training split, on the features of the
  dataset's classifier (digits, Fashion-MNIST) or Inception.
- ``coverage`` (images): classifier accuracy w.r.t. the conditioning labels, class histogram, missing classes.
- ``toy`` (2-D toy data): KL(model‖data), exact cross-entropy of samples under the true density, SW₂ and
  MMD² to fresh data.
- ``bpd``: −ELBO on the evaluation split, in bits/dim for discrete data (K levels), nats for continuous data.
- ``loss-std``: relative standard deviation (std/mean) of the per-example training loss of the model's own
  objective on the evaluation split: the noise of the loss estimator, which the schedule controls (KG23 §5).

Errors name this module's parameters (``steps``, ``samples``, ``split``); the command line names its flags.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import data
from ..errors import OptionError
from ..likelihoods.vlb import elbo as _elbo
from ..registry import Registry
from ..sampling import samplers
from . import metrics as M
from .metrics import Extractor

__all__ = ["SampleSettings", "GRIDS", "sampling_grid", "generate", "elbo_summary", "elbo_examples", "evaluate",
           "check_elbo_samples", "Metric", "Output", "Evaluation", "METRICS", "default_extractor", "dataset_split",
           "extract_features", "Bar", "sample_shape", "is_image"]

# A progress-bar factory: ``bar(description, total)`` returns an object with ``update(k)`` and ``close()``
# (e.g. ``functools.partial(tqdm, file=sys.stderr)`` called as ``tqdm(desc=..., total=...)``).
Bar = Callable[[str, int], Any]

GRIDS = samplers.GRIDS  # the named λ-grids (a registry)
sampling_grid = samplers.grid  # sampling_grid(name, steps): the increasing λ-grid ``name`` with ``steps`` points


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
    ``settings.guidance``, :mod:`~diffusion_objectives.sampling.samplers`). Returns (samples ``[n, ...]`` float32,
    clamped to [−1, 1] for image data, and the labels ``[n]`` or ``None``)."""
    sampler = samplers.REGISTRY.get(settings.sampler)
    grid = sampling_grid(settings.resolved_grid(), settings.steps)
    data_shape = sample_shape(loaded)
    conditional = _conditional(loaded)
    num_classes = int(loaded.model.null_label) if conditional else 0
    if settings.guidance and not conditional and guide is None:
        raise OptionError("guidance needs a class-conditional model (or a guide: autoguidance)")
    guiding = _guide(loaded, guide, data_shape, conditional)
    device = next(loaded.model.parameters()).device
    out, out_labels = [], []
    seeds = [int(s) for s in seeds]
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        gens = samplers.seeded_generators(chunk)
        noise = samplers.seeded_noise(gens, data_shape).to(device)
        labels = torch.tensor([s % num_classes for s in chunk], device=device) if conditional else None
        denoiser = samplers.Denoiser(loaded.model, loaded.objective.parameterization, labels=labels,
                                     guidance=settings.guidance, null_label=num_classes if conditional else None,
                                     guide=guiding, guidance_interval=settings.guidance_interval)
        out.append(sampler(denoiser, noise, grid, generators=gens).float().cpu())
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


def _probe(loaded) -> data.Dataset:
    """``loaded``'s dataset rebuilt cheaply (:func:`~diffusion_objectives.data.probe_params`): for its shape or
    its closed-form density."""
    return loaded.dataset(**data.probe_params(loaded.config.data.name))


def sample_shape(loaded) -> tuple[int, ...]:
    """The shape of one sample of ``loaded``'s data: ``(C, H, W)`` for images, ``(D,)`` for vectors."""
    return tuple(_probe(loaded).shape)


def is_image(loaded) -> bool:
    """Whether ``loaded`` was trained on images (not on 2-D toy data): the dataset registry knows."""
    return data.is_image(loaded.config.data.name)


def dataset_split(loaded, split: str):
    """The dataset of ``loaded`` with ``split`` (``train``/``test``). Datasets without splits (``folder``,
    ``npz``, ``edm-zip``) have only their training data: ``split="train"`` gives it, other splits are an
    :class:`OptionError`."""
    name = loaded.config.data.name
    if "split" in data.REGISTRY.parameters(name):
        return loaded.dataset(split=split)
    if split == "train":
        return loaded.dataset()
    raise OptionError(f"dataset {name!r} has no {split!r} split (it has no splits); use split 'train'")


def elbo_examples(loaded, split: str = "test", n: int = 256) -> tuple[Tensor, Tensor | None, int | None]:
    """The examples the ELBO is evaluated on: ``min(n, len(split))`` examples of ``split`` chosen by a fixed
    permutation (seed 0), so ``evaluate``'s ``bpd`` and ``diffobj elbo`` use the same ones. Returns
    (x ``[n, ...]``, labels ``[n]`` or None, levels K or None)."""
    if n < 1:
        raise OptionError(f"n must be a positive number of examples, got {n}")
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


def check_elbo_samples(samples: int) -> int:
    """``samples`` λ-draws per example for :func:`elbo_summary`: a positive multiple of 8 (8 antithetic
    replicates), else :class:`OptionError` naming ``samples``."""
    if samples < 8 or samples % 8:
        raise OptionError(f"samples (λ-draws per example) must be a positive multiple of 8, got {samples}")
    return samples


def elbo_summary(loaded, x: Tensor, levels: int | None, *, samples: int = 32, seed: int = 0,
                 labels: Tensor | None = None, batch_size: int = 4096, bar: Bar | None = None
                 ) -> tuple[dict[str, Any], Any]:
    """The −ELBO of ``x`` under ``loaded`` with the library's :func:`~diffusion_objectives.likelihoods.vlb` (``samples``
    λ-draws per example in 8 antithetic replicates, generator seeded with ``seed``), reduced to means over
    the examples (bits/dim for discrete data, nats per example for continuous data), and the raw result.

    ``se`` is the standard error of the mean as an estimate of the expected −ELBO over the data: the
    spread of the per-example estimates over √n (it already contains their Monte-Carlo noise);
    ``mc_se`` is the Monte-Carlo part alone, √(Σ se_i²)/n (the error for exactly these examples).
    ``bar`` counts the network evaluations (it does not change the numbers)."""
    check_elbo_samples(samples)
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


# ---- the metrics: registry objects with compute() and named scalar outputs --------------------------------

@dataclass(frozen=True)
class Output:
    """A named scalar of a metric: ``name`` (the report's column), ``key`` (its field in the metric's record),
    ``heading`` (the report's column title) and ``direction`` (−1 lower is better, +1 higher, 0 neither)."""

    name: str
    key: str
    heading: str
    direction: int = 0


@dataclass(frozen=True)
class Metric:
    """An evaluation metric: ``compute(evaluation)`` → its JSON-able record (written under its ``name`` in
    ``result["metrics"]``), whose named scalars are ``outputs`` (:meth:`scalars`).

    ``data``: ``"image"`` or ``"toy"`` when it applies to one kind of data only; ``samples``: it needs model
    samples; ``extractor``: it needs an extractor (``classifier``: a classifier one); ``reference``: it compares
    with reference statistics; ``reference_features``: with the reference's features themselves."""

    name: str
    fn: Callable[[Evaluation], dict[str, Any]]
    outputs: tuple[Output, ...]
    data: str | None = None
    samples: bool = False
    extractor: bool = False
    classifier: bool = False
    reference: bool = False
    reference_features: bool = False

    def compute(self, evaluation: Evaluation) -> dict[str, Any]:
        return self.fn(evaluation)

    def scalars(self, record: dict[str, Any]) -> dict[str, float]:
        """The named outputs of one record of this metric (a freshly computed one or one read from JSON);
        outputs that are missing or None in it are left out."""
        return {o.name: float(record[o.key]) for o in self.outputs if record.get(o.key) is not None}


@dataclass
class Evaluation:
    """One :func:`evaluate` call as its metrics see it: the model, the samples and their seeds, and, each
    computed once when a metric first asks, the features, the reference and the held-out examples."""

    loaded: Any
    seeds: list[int]
    samples: Tensor | None = None
    sample_labels: Tensor | None = None
    extractor: Extractor | None = None
    given_reference: M.Reference | None = None
    split: str = "test"
    n_elbo: int = 256
    elbo_samples: int = 32
    say: Callable[[str], None] = field(default=lambda msg: None)
    bar: Bar | None = None

    @cached_property
    def train(self) -> data.Dataset:
        return dataset_split(self.loaded, "train")

    @cached_property
    def features(self) -> np.ndarray:
        self.say(f"features ({self.extractor.name})")
        return extract_features(self.extractor, self.samples, self.bar)

    @cached_property
    def reference_features(self) -> np.ndarray:
        return extract_features(self.extractor, self.train.data, self.bar)

    @cached_property
    def reference(self) -> M.Reference:
        """The given reference statistics, or those of the training split's features."""
        if self.given_reference is not None:
            return self.given_reference
        ext, feats = self.extractor, self.reference_features
        mu, sigma = M.feature_statistics(feats)
        return M.Reference(mu=mu, sigma=sigma, path=f"<{self.loaded.config.data.name} train split>", checksum="",
                           meta={"extractor": ext.name, "extractor_checksum": ext.checksum,
                                 "n_samples": str(feats.shape[0])})

    @cached_property
    def examples(self) -> tuple[Tensor, Tensor | None, int | None]:
        return elbo_examples(self.loaded, self.split, self.n_elbo)


def _fd(ev: Evaluation) -> dict[str, Any]:
    feats = ev.features
    return M.fd_of_features(feats, ev.extractor, ev.reference, seeds=ev.seeds[: feats.shape[0]]).as_dict()


def _kid(ev: Evaluation) -> dict[str, Any]:
    feats, ref_feats, ext = ev.features, ev.reference_features, ev.extractor
    k = M.kid(feats, ref_feats, subset_size=min(1000, feats.shape[0], ref_feats.shape[0]))
    return {"mean": k.mean, "std": k.std, "extractor": ext.name, "extractor_checksum": ext.checksum,
            "n_samples": int(feats.shape[0])}


def _toy(ev: Evaluation) -> dict[str, Any]:
    return M.toy_metrics(ev.samples, _probe(ev.loaded).mixture, seed=10_000 + ev.seeds[0]).as_dict()


def _bpd(ev: Evaluation) -> dict[str, Any]:
    x, labels, levels = ev.examples
    ev.say(f"ELBO on {x.shape[0]} {ev.split} examples")
    summary, _ = elbo_summary(ev.loaded, x, levels, samples=ev.elbo_samples, labels=labels, bar=ev.bar)
    return {**summary, "split": ev.split}


def _loss_spread(ev: Evaluation) -> dict[str, Any]:
    x, labels, _ = ev.examples
    return {**_loss_std(ev.loaded, x, labels, seed=1), "split": ev.split}


METRICS: Registry[Metric] = Registry("metric")


def _add(metric: Metric, summary: str) -> None:
    METRICS.add(metric.name, lambda: metric, summary)


_add(Metric("fd", _fd, (Output("fd", "value", "FD ↓", -1),), data="image", samples=True, extractor=True,
            reference=True), "Fréchet distance of the samples' features to the reference's")
_add(Metric("kid", _kid, (Output("kid", "mean", "KID ↓", -1),), data="image", samples=True, extractor=True,
            reference=True, reference_features=True), "kernel inception distance to the training features")
_add(Metric("coverage", lambda ev: M.class_coverage(ev.samples, ev.extractor, labels=ev.sample_labels).as_dict(),
            (Output("accuracy", "accuracy", "class accuracy ↑", 1),), data="image", samples=True, extractor=True,
            classifier=True), "classifier accuracy w.r.t. the conditioning labels, missing classes")
_add(Metric("toy", _toy, (Output("reverse_kl", "reverse_kl", "KL(model‖data) (nats) ↓", -1),
                          Output("cross_entropy", "cross_entropy", "cross-entropy (nats)", 0),
                          Output("sliced_wasserstein", "sliced_wasserstein", "SW₂ ↓", -1),
                          Output("mmd", "mmd", "MMD² ↓", -1)), data="toy", samples=True),
     "KL(model‖data), cross-entropy, SW₂ and MMD² against the true 2-D density")
_add(Metric("bpd", _bpd, (Output("bpd", "value", "−ELBO ↓", -1),)), "−ELBO of held-out examples")
_add(Metric("loss-std", _loss_spread, (Output("loss_rel_std", "relative_std", "loss std/mean", 0),)),
     "std/mean of the per-example training loss (the loss estimator's noise)")


def _chosen(names: Sequence[str], image: bool) -> list[Metric]:
    """The metrics ``names`` in registry order (the order of ``result["metrics"]``), checked against the data."""
    asked = [METRICS.get(name) for name in dict.fromkeys(names)]  # unknown names list the known ones
    kind = "image" if image else "toy"
    for m in asked:
        if m.data not in (None, kind):
            fits = [n for n in METRICS.names() if METRICS.get(n).data in (None, kind)]
            raise OptionError(f"metric {m.name!r} is for {'image data' if m.data == 'image' else '2-D toy data'}; "
                              f"for {'images' if image else '2-D toy data'} choose from: {', '.join(fits)}")
    return sorted(asked, key=lambda m: METRICS.names().index(m.name))


def _extractor_and_reference(loaded, chosen: list[Metric], extractor, reference
                             ) -> tuple[Extractor | None, M.Reference | None]:
    """The extractor (a registry name or object; default :func:`default_extractor`) and the given reference
    statistics, checked against the chosen metrics before any sampling."""
    ext = ref = None
    if any(m.extractor for m in chosen):
        ext = extractor if isinstance(extractor, Extractor) else M.get_extractor(
            extractor or default_extractor(loaded.config.data.name))
        for m in chosen:
            if m.classifier and not isinstance(ext, M.ClassifierExtractor):
                raise OptionError(f"metric {m.name!r} needs a classifier extractor (digits or fashion-mnist)")
    if reference is not None and any(m.reference for m in chosen):
        for m in chosen:
            if m.reference_features:
                raise OptionError(f"metric {m.name!r} needs reference features, not only statistics: leave the "
                                  "reference unset (or evaluate fd alone against it)")
        ref = reference if isinstance(reference, M.Reference) else M.load_reference(reference)
        M.check_reference(ref, ext)  # same feature dimension and extractor
    return ext, ref


def _draw(loaded, seeds: list[int], settings: SampleSettings, batch_size: int, say: Callable[[str], None],
          bar: Bar | None) -> tuple[Tensor, Tensor | None]:
    """:func:`generate` with a progress line and bar."""
    say(f"sampling {len(seeds)} with {settings.sampler}, {settings.steps} steps")
    if bar is None:
        return generate(loaded, seeds, settings, batch_size=batch_size)
    sample_bar = bar(f"sampling ({settings.sampler}, {settings.steps} steps)", len(seeds))
    done = [0]

    def hook(k: int, total: int) -> None:
        sample_bar.update(k - done[0])
        done[0] = k

    out = generate(loaded, seeds, settings, batch_size=batch_size, progress=hook)
    sample_bar.close()
    return out


def _provenance(loaded) -> dict[str, Any]:
    return {"checkpoint": str(loaded.checkpoint_dir), "step": loaded.step, "images_seen": loaded.images_seen,
            "objective": loaded.config.loss.objective, "dataset": loaded.config.data.name,
            "ema": loaded.ema, "training_precision": loaded.config.run.precision,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "metrics": {}}


def evaluate(loaded, metrics: Sequence[str] = ("fd", "kid", "bpd"), *, n: int = 1000,
             seeds: Sequence[int] | None = None, settings: SampleSettings = SampleSettings(),
             split: str = "test", n_elbo: int = 256, elbo_samples: int = 32, extractor: str | Extractor | None = None,
             reference=None, batch_size: int = 256, samples: Tensor | None = None,
             sample_labels: Tensor | None = None, progress: Callable[[str], None] | None = None,
             bar: Bar | None = None) -> dict[str, Any]:
    """Evaluate ``loaded`` on ``metrics`` (names in :data:`METRICS`) and return a JSON-able dict with the
    provenance of every number; ``result["metrics"][name]`` is metric ``name``'s record.

    ``n`` samples with ``seeds`` (default 0 … n−1) are drawn with ``settings`` unless ``samples`` are
    given; ``split`` is the dataset split for bits/dim and the loss spread (``n_elbo`` examples,
    ``elbo_samples`` λ-draws each); FD/KID compare with the training split (or ``reference``, an .npz of
    ``mu``/``sigma``) on ``extractor`` features (a registry name or an extractor object; default
    :func:`default_extractor`). ``progress`` receives one line per stage, ``bar`` (see :data:`Bar`) shows
    the progress of sampling and feature extraction."""
    image = is_image(loaded)
    chosen = _chosen(metrics, image)
    if any(m.name == "bpd" for m in chosen):
        check_elbo_samples(elbo_samples)
    ext, ref = _extractor_and_reference(loaded, chosen, extractor, reference)  # before any sampling
    say = progress or (lambda msg: None)
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    result = _provenance(loaded)
    ev = Evaluation(loaded, seeds, extractor=ext, given_reference=ref, split=split, n_elbo=n_elbo,
                    elbo_samples=elbo_samples, say=say, bar=bar)
    if any(m.samples for m in chosen):
        if samples is None:
            samples, sample_labels = _draw(loaded, seeds, settings, batch_size, say, bar)
        elif len(seeds) < samples.shape[0]:
            raise OptionError(f"{samples.shape[0]} samples but only {len(seeds)} seeds")
        # the weights actually used are those of ``loaded``, whatever ``settings.ema`` says
        result["sampling"] = {**settings.as_dict(), "ema": loaded.ema, "n": int(samples.shape[0]),
                              "seeds": M.format_seeds(seeds[: samples.shape[0]])}
        if image and ev.train.levels is not None:  # samples are written as K-level images: measure those
            samples = data.dequantize(data.quantize(samples, ev.train.levels), ev.train.levels).float()
        ev.samples, ev.sample_labels = samples, sample_labels
    for metric in chosen:
        result["metrics"][metric.name] = metric.compute(ev)
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
