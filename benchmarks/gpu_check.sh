#!/usr/bin/env bash
# GPU check (< 10 min on one GPU): install the GPU extra, then run the device-placement tests,
# a few training steps of MSINet and FlipReID ResNet-50 with --mixed_precision mixed_float16
# and with --jit_compile, MSI and BN-split search steps, the mirrored strategy on all visible
# GPUs; prints ONE JSON line (throughputs, pass/fail per part). Without a GPU the same parts
# run on the CPU at small sizes and the line says so (and without nvidia-smi the GPU extra is
# not installed).
#   benchmarks/gpu_check.sh [--skip_install] [--parts tests,mirrored] [--work_folder DIR]
#   SKIP_INSTALL=1 benchmarks/gpu_check.sh       (the GPU extra is installed already)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SKIP_INSTALL=${SKIP_INSTALL:-0}
ARGS=()
for argument in "$@"; do
  if [ "$argument" = "--skip_install" ]; then SKIP_INSTALL=1; else ARGS+=("$argument"); fi
done
if [ "$SKIP_INSTALL" != "1" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  # tensorflow[and-cuda] would replace the CPU build in this environment for nothing.
  echo "gpu_check: no NVIDIA driver (nvidia-smi not found): the GPU extra is not installed;" \
       "the parts run on the CPU" >&2
  SKIP_INSTALL=1
fi
if [ "$SKIP_INSTALL" != "1" ]; then
  "$PY" -m pip install --quiet -e ".[gpu,test]" >&2
fi
exec "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
