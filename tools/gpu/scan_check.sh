#!/usr/bin/env bash
# GPU check of rnnkit.kernels.linear.scan (issue 4): the scan tests on CUDA (every test that takes a
# device runs on cpu and cuda; the Triton tests compile for the GPU), then the benchmark with
# the Triton scans and the B=8, D=1536, T=65536 target. Prints a short table last.
# Runs in well under 3 minutes on one H100. Usage: tools/gpu/scan_check.sh [python]
set -uo pipefail
source "$(dirname "$0")/_setup.sh"
PY=${1:-${PYTHON:-python}}
export TRITON_F32_DEFAULT=ieee

gpu_source_tree_if_missing rnnkit.kernels.linear.scan  # not installed: the source tree
"$PY" -c "import torch; print('# torch', torch.__version__, '|', torch.cuda.get_device_name())"

start=$SECONDS
timeout 90 "$PY" -m pytest -q -p no:cacheprovider packages/kernels/tests/test_scan.py 2>&1 | tail -n 15
tests_rc=${PIPESTATUS[0]}
echo "# tests: exit $tests_rc in $((SECONDS - start)) s"

start=$SECONDS
timeout 80 "$PY" tools/bench/scan.py --device cuda --quick
bench_rc=$?
[ "$bench_rc" -ne 0 ] && echo "# bench: exit $bench_rc after $((SECONDS - start)) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
