#!/usr/bin/env bash
# GPU check of the selective scan's Triton backend (Mamba-1; issue 15), run ON the device
# machine from the repository root:
#
#   bash tools/gpu/prepare.sh                       # here: build wheels into .whl/
#   device run: bash tools/gpu/selective_check.sh   # carry .whl
#
# 1. installs the carried wheels, if any (no network there; torch and triton are preinstalled),
# 2. the conformance kit's backend check for the selective cells (mamba, and every backend that
#    runs on CUDA against the float64 reference, values and gradients),
# 3. tools/gpu/selective_triton.py: the op on CUDA against the float64 loop (float64 and
#    float32, odd shape, resets, every gradient), then the issue's target (fwd+bwd at B=8,
#    T=4096, d_inner=1536, N=16, bf16, within 2x the time of moving its inputs and outputs
#    once at the copy bandwidth measured in the same run); prints a markdown table last.
# Not yet run: no GPU was lent to the work that wrote it. Well under 600 s on one H100.
set -u
source "$(dirname "$0")/_setup.sh"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_F32_DEFAULT=ieee
gpu_install_wheels
"$PY" -c "import rnnkit.kernels.selective.triton as m; print('rnnkit', m.BACKEND, m.unavailable_reason())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

start=$SECONDS
timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_conformance_registered.py \
  -k "backends and (mamba and not mamba2)" -W ignore::DeprecationWarning 2>&1 | tail -n 15
tests_rc=${PIPESTATUS[0]}
echo "# conformance: exit $tests_rc in $((SECONDS - start)) s"

start=$SECONDS
timeout 300 "$PY" tools/gpu/selective_triton.py "$@"
bench_rc=$?
echo "# bench: exit $bench_rc in $((SECONDS - start)) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
