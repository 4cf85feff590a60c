#!/usr/bin/env bash
# GPU check of the matrix-state form's `chunked_triton` backend (issue 16), run ON the device
# machine from the repository root:
#
#   bash tools/gpu/prepare.sh                         # here: build wheels into .whl/
#   device run: bash tools/gpu/matrix_state_check.sh  # carry .whl
#
# 1. installs the carried wheels, if any (no network there; torch and triton are preinstalled),
# 2. runs packages/kernels/tests/test_matrix_state_triton.py compiled on CUDA (no interpreter):
#    the op against the float64 recurrence (values and every input's gradient), the conformance
#    kit's backend and NaN checks on a small cell, the refusals and the tiers on CUDA,
# 3. times the op against `chunked` (tools/gpu/matrix_state_triton.py: B=8, 8 heads of 64,
#    T 1024/4096/16384, forward and forward + backward (both backwards written ones, this
#    backend's in Triton: the figure behind its training tier), the gradients' difference
#    between the two, and a chunk sweep) and prints a markdown table last, for
#    docs/kernels.md. Not yet run: no GPU was lent to the work that wrote it; expect 1-3
#    minutes of Triton compilation on the first run (the backward adds three kernels).
set -u
source "$(dirname "$0")/_setup.sh"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_F32_DEFAULT=ieee
gpu_install_wheels
"$PY" -c "import rnnkit.kernels.matrix_state.triton as m; print('rnnkit', m.BACKEND, m.unavailable_reason())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

start=$SECONDS
# (300 s, was 240: the backward adds three kernels, each compiled per variant the tests run)
timeout 300 "$PY" -m pytest -q -p no:cacheprovider packages/kernels/tests/test_matrix_state_triton.py \
  -W ignore::DeprecationWarning 2>&1 | tail -n 25
tests_rc=${PIPESTATUS[0]}
echo "# tests: exit $tests_rc in $((SECONDS - start)) s"

start=$SECONDS
# 270 s keeps the script under a 600 s device call; pass --quick if it runs out
timeout 270 "$PY" tools/gpu/matrix_state_triton.py "$@"
bench_rc=$?
echo "# bench: exit $bench_rc in $((SECONDS - start)) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
