#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh ASSETS OUT
# ASSETS comes from `python benchmarks/gpu_check.py prepare ASSETS` on a machine with the book's
# environment; the GPU machine needs torch, transformers, accelerate and safetensors only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TLUTILS_PROGRESS=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'PY'
import accelerate, torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
PY
python3 "$here/gpu_check.py" run "$1" "$2"
