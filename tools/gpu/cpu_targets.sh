#!/usr/bin/env bash
# The CPU speed targets of issues 3, 4 and 6 measured on an IDLE machine: run ON the device
# machine (16 idle cores) pinned to two of them with two threads, which is what the targets
# name ("CPU, 2 threads"). The shared 2-core development VM is too loaded for these ratios.
#
#   bash tools/gpu/prepare.sh                       # here: wheels into .whl/
#   device run: bash tools/gpu/cpu_targets.sh       # carry .whl
#   device run: bash tools/gpu/cpu_targets.sh gated # only the team-loop tests and gated.py
#   device run: bash tools/gpu/cpu_targets.sh dense # only dense LSTM/GRU gated.py + profile
#
# Builds the native libraries first (their compile is timed, not the benchmarks), then runs
# each benchmark under its own time limit and prints what it prints. GPU untouched.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --force-reinstall .whl/*.whl || exit 1
fi
export OMP_NUM_THREADS=2 CUDA_VISIBLE_DEVICES=""
PIN="taskset -c 2,3"
lscpu | grep -E "Model name|^CPU\(s\)" ; uptime
export RNNKIT_CPP_CACHE=${RNNKIT_CPP_CACHE:-/tmp/rnnkit-cpp}
step() {  # step NAME TIMEOUT COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo; echo "===== $name ====="
  timeout "$limit" "$@"
  echo "----- $name: status $? in $((SECONDS - start)) s"
}
MODE=${1:-all}
step build 120 $PIN rnnkit kernels build
if [ "$MODE" = dense ]; then
  step gated-dense 110 $PIN "$PY" tools/bench/gated.py --threads 2 --reps 3 --cases lstm:1,gru:1,elman:1 --no-step
  step profile-lstm1 40 $PIN "$PY" tools/bench/gated_profile.py --kind lstm --heads 1
  exit 0
fi
# The fused_cpp team loops with this CPU's widest tile kernels (AVX-512 on the Xeons, which the
# development VM lacks) against the float64 reference, and one call of each tile kernel for
# every vector and row remainder.
step team-tests 150 $PIN "$PY" -m pytest -q -p no:cacheprovider \
  packages/kernels/tests/test_fused_cpp.py -k "team or tiles or tile_product or phases"
if [ "$MODE" = gated ]; then
  step gated-multihead 110 $PIN "$PY" tools/bench/gated.py --threads 2 --reps 3 --cases lstm:4,slstm:4 --no-step
  step gated-dense 110 $PIN "$PY" tools/bench/gated.py --threads 2 --reps 3 --cases lstm:1,gru:1,elman:1
  step profile-lstm4 40 $PIN "$PY" tools/bench/gated_profile.py --kind lstm --heads 4
  step profile-lstm1 40 $PIN "$PY" tools/bench/gated_profile.py --kind lstm --heads 1
  exit 0
fi
# --quick: the same shapes; only the T=2^20 python loop is timed at 2^14 and scaled (it takes
# minutes at full length, and its ratio is three orders of magnitude above the target)
step scan 110 $PIN "$PY" tools/bench/scan.py --threads 2 --quick
step newton 100 $PIN "$PY" tools/bench/newton.py --threads 2
step gated-multihead 110 $PIN "$PY" tools/bench/gated.py --threads 2 --reps 3 --cases lstm:4,slstm:4 --no-step
step analog 70 $PIN "$PY" tools/bench/analog.py --threads 1 --reps 5 --floor
step gated-dense 60 $PIN "$PY" tools/bench/gated.py --threads 2 --reps 2 --cases lstm:1,gru:1,elman:1
