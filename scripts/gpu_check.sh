#!/usr/bin/env bash
# The GPU check in one command, for a GPU machine with no internet that has python3, torch,
# transformers, accelerate, safetensors, pillow and numpy but not diffusers (nor Ray, FastAPI,
# SQLAlchemy or pydantic, which the check does not import).
#
# Beforehand, where pip can reach a registry, put the diffusers wheel into .whl/ at the repository
# root (it is pure Python; on Python >= 3.8 it needs no importlib_metadata):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# Then, on the GPU machine, from the repository root:
#   bash scripts/gpu_check.sh [bench_gpu arguments...]
# It installs the carried wheels into a temporary directory, makes this checkout importable as
# `retouch` (no pip install of the project), and runs `python3 -m retouch.scripts.bench_gpu`
# under a timeout (BENCH_TIMEOUT seconds, default 470; bench_gpu's own --budget-s, default 420,
# stops starting new phases before that). The JSON line is also written to $OUT/bench_gpu.json
# (or /tmp), after every phase, so a run cut short still leaves its figures.
set -euo pipefail
cd "$(dirname "$0")/.."

site="$(mktemp -d)"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
fi
python3 -c "import diffusers" 2>/dev/null || PYTHONPATH="$site" python3 -c "import diffusers" || {
  echo "diffusers is not importable: put its wheel into .whl/ (see the header)" >&2; exit 2; }

# The project's top-level folders are the sub-packages of the `retouch` namespace.
mkdir -p "$site/retouch"
for part in models pipelines scripts serving; do
  ln -sfn "$PWD/$part" "$site/retouch/$part"
done

out="${OUT:-/tmp}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout --signal=TERM --kill-after=15 "${BENCH_TIMEOUT:-470}" \
  python3 -m retouch.scripts.bench_gpu --json-out "$out/bench_gpu.json" "$@"
