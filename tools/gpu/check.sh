#!/usr/bin/env bash
# One GPU check of rnnkit, run ON the device machine from the repository root:
#
#   bash tools/gpu/prepare.sh                 # here: build wheels into .whl/
#   device run: bash tools/gpu/check.sh       # carry .whl
#
# 1. installs the carried wheels (no network there; torch/triton/pluggy are preinstalled),
# 2. the conformance kit's backend check over every registered cell, now also on CUDA
#    (every backend that can run there vs the float64 reference, values and gradients),
# 3. tools/gpu/triton_check.sh (Triton gated kernels: CUDA tests and FlashRNN-protocol timings),
# 4. tools/gpu/scan_check.sh (scan tests on CUDA and the scan bandwidth target),
# 5. tools/gpu/dense_auto.py (dense (768,1) LSTM: backend="auto" against nn.LSTM, bf16 and fp16),
# and prints a summary table last. About 7-8 minutes on one H100.
set -u
source "$(dirname "$0")/_setup.sh"
export PYTHONUNBUFFERED=1 TRITON_F32_DEFAULT=ieee
PY=${PYTHON:-python3}
gpu_install_wheels
"$PY" -c "import rnnkit.core, rnnkit.kernels; print('rnnkit', rnnkit.core.__version__)" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
XDIST=""
if "$PY" -c "import xdist" 2>/dev/null; then XDIST="-n 8"; fi

declare -A STATUS TIME
step() {  # step NAME TIMEOUT COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo; echo "===== $name ====="
  timeout "$limit" "$@"
  STATUS[$name]=$?
  TIME[$name]=$((SECONDS - start))
}

step conformance-cuda 120 "$PY" -m pytest -q $XDIST -p no:cacheprovider \
  tests/test_conformance_registered.py -k "backends" -W ignore::DeprecationWarning
step triton 240 bash tools/gpu/triton_check.sh
step scan 150 bash tools/gpu/scan_check.sh "$PY"
step dense 90 "$PY" tools/gpu/dense_auto.py

echo; echo "===== summary ====="
printf '%-18s %-8s %s\n' step status seconds
rc=0
for name in conformance-cuda triton scan dense; do
  printf '%-18s %-8s %s\n' "$name" "${STATUS[$name]}" "${TIME[$name]}"
  [ "${STATUS[$name]}" -eq 0 ] || rc=1
done
exit $rc
