#!/usr/bin/env bash
# GPU check of the gated `cuda` backend, in one device call (at most about 10 minutes by its
# timeouts, 200 + up to 240 for the two builds together + 180 + 90 + 70 s; the kernels have
# never run on a GPU before this script, so expect the first run to find bugs):
#
#   bash tools/gpu/prepare.sh                      # here: build wheels into .whl/
#   device run: bash tools/gpu/cuda_check.sh       # carry .whl
#
# 1. the ahead-of-time build: reinstalls packages/kernels with `pip install --no-build-isolation`
#    (hatchling and ninja from .whl/build/ where the machine lacks them), so that the wheel's
#    build hook (packages/kernels/hatch_build.py) compiles the CUDA library for this GPU into
#    the wheel, then checks that `rnnkit kernels status` says `built prebuilt`; where it does
#    not, it prints the hook's line and the status, and
# 2. builds the library on first use instead (torch.utils.cpp_extension, cached under
#    $RNNKIT_CPP_CACHE), printing the build time, or the compiler's first error and the log;
# 3. runs packages/kernels/tests/test_cuda_gated.py on CUDA (Elman, LSTM, GRU and sLSTM, head
#    sizes 16..1024, fp32/bf16/fp16, odd batches, T = 0/1, resets, lengths in one launch,
#    NaN-filled uninitialised memory; the host-compiled step-math tests run too) and the
#    conformance kit's backends, nan_propagation and lengths checks for the gated cells (which
#    now include `cuda`); bf16/fp16 calls run their products on the tensor cores (operands in
#    their dtype, TF32 on heads in 8s not 16s) where the cut allows (test_16bit_calls_use_the_
#    tensor_cores checks the launches ask for them); test_flags_exchange runs the "flags"
#    step exchange (RNNKIT_CUDA_EXCHANGE=flags: per-block step counters, each waited on with a
#    30 s timeout that traps rather than hangs) against float64 and bit for bit against the
#    grid barrier;
# 4. runs tools/gpu/cuda_targets.py: issue 19's targets in one table (FlashRNN's protocol,
#    B=16, T=1024, hidden 768, bf16, do_bench medians): dense LSTM / GRU / sLSTM against cuDNN
#    bf16 and fp16, (256,3) and (128,6) against Triton's (64,12), the batch sweep against
#    cuDNN fp16, the batch-1 T=4096 per-step latency and a streamed cut, each row naming its
#    cut, with rows `cuda bf16 flags` for the "flags" exchange; rows past its 120 s budget are
#    listed as skipped. Once the tests pass, a second
#    device call measures `auto`'s table: `python tools/gpu/auto_table.py --out "$OUT/auto_table.json"`
#    (about 4 minutes by its --budget; commit the file into rnnkit/kernels/gated/).
#    A failing step does not stop the later ones, nor a failing test the later tests (a
#    kernel that faults takes the CUDA context with it, so the tests after it fail fast).
#    Every step's whole log is written to $OUT (the device call brings those files back;
#    /tmp/rnnkit-cuda-check elsewhere): aot_build.log, jit_build.log, cuda_tests.log,
#    conformance.log, cuda_targets.log; the call's own output shows their last lines;
#    the exit status is pytest's, or 3 where the tests passed but the ahead-of-time build did
#    not give a prebuilt library.
set -u
source "$(dirname "$0")/_setup.sh"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
gpu_install_wheels required
export RNNKIT_CPP_CACHE=${RNNKIT_CPP_CACHE:-/tmp/rnnkit-cpp-cache}
LOGS=${OUT:-/tmp/rnnkit-cuda-check}
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== ahead-of-time build (pip install --no-build-isolation packages/kernels) =="
start=$SECONDS
for tool in hatchling ninja; do
  "$PY" -c "import $tool" 2>/dev/null ||
    "$PY" -m pip install -q --no-index --find-links .whl/build "$tool" ||
    echo "$tool is missing (tools/gpu/prepare.sh puts its wheel in .whl/build)"
done
# -v: pip shows the build hook's line only when verbose; the architectures are the GPU's
timeout 200 "$PY" -m pip install -v --no-index --no-deps --no-build-isolation --force-reinstall \
  ./packages/kernels >"$LOGS/aot_build.log" 2>&1
echo "pip status: $? in $((SECONDS - start)) s (log $LOGS/aot_build.log)"
grep "rnnkit-kernels:" "$LOGS/aot_build.log" || tail -20 "$LOGS/aot_build.log"
STATUS=$("$PY" -m rnnkit.core.cli kernels status rnnkit_gated_cuda 2>&1)
echo "$STATUS"
AOT_STATUS=1
if grep -q "built      prebuilt" <<<"$STATUS"; then AOT_STATUS=0; fi
echo "ahead-of-time build: $([ "$AOT_STATUS" -eq 0 ] && echo prebuilt || echo 'NOT prebuilt')"

echo "== build on first use =="
if [ "$AOT_STATUS" -eq 0 ]; then
  # the prebuilt library is what the tests load; the JIT build would not be used
  echo "skipped: the prebuilt library is loaded instead"
  BUILD_STATUS=0
else
  timeout $((240 - (SECONDS - start) > 60 ? 240 - (SECONDS - start) : 60)) \
    "$PY" -m rnnkit.core.cli kernels build rnnkit_gated_cuda >"$LOGS/jit_build.log" 2>&1
  BUILD_STATUS=$?
  tail -20 "$LOGS/jit_build.log"
  FAILED=$(ls "$RNNKIT_CPP_CACHE"/rnnkit_gated_cuda/*/FAILED 2>/dev/null | head -1)
  if [ -n "$FAILED" ]; then
    cat "$FAILED" >>"$LOGS/jit_build.log"
    echo "-- build log ($FAILED), first 60 lines --"; head -60 "$FAILED"
  fi
fi

echo "== tests (CUDA) =="
timeout 180 "$PY" -m pytest -v -rfE --tb=short -p no:cacheprovider \
  packages/kernels/tests/test_cuda_gated.py -m "gpu or not gpu" -W ignore::DeprecationWarning \
  >"$LOGS/cuda_tests.log" 2>&1
TEST_STATUS=$?
grep -E "^(FAILED|ERROR) " "$LOGS/cuda_tests.log" | cut -c1-220 | head -40
# the last lines: the summary, or (where the time limit stopped it) the test that was running
tail -3 "$LOGS/cuda_tests.log" | cut -c1-300
echo "pytest status: $TEST_STATUS (build status $BUILD_STATUS, ahead-of-time $AOT_STATUS)"
CONFORMANCE_LOG="$LOGS/conformance.log" timeout 90 "$PY" - <<'PYEOF' 2>&1 | tail -20
# The conformance kit over the gated cells: on CUDA its backend checks run `cuda` as well. One
# short line per check here, each whole report in conformance.log.
import os
from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.testing import checks
makers = {
    "elman": lambda: Elman(5, 32, heads=2),
    "lstm": lambda: LSTM(5, 32, heads=2),
    "gru": lambda: GRU(5, 32, heads=2),
    "slstm": lambda: SLSTM(5, 32, heads=2),
}
with open(os.environ["CONFORMANCE_LOG"], "w") as log:
    for name, make in makers.items():
        for check in (checks.check_backends, checks.check_nan_propagation, checks.check_lengths):
            try:
                report = check(make)
            except AssertionError as e:
                print(f"conformance {name} {check.__name__} FAILED:", str(e)[:400])
                print(f"{name} {check.__name__} FAILED: {e}", file=log)
                continue
            print(f"{name} {check.__name__}: {report}", file=log)
            skipped = {why[:80]: len(v) for why, v in report.skipped.get("cuda", {}).items()}
            print(f"conformance {name} {check.__name__}: passed, cuda ran",
                  len(report.ran.get("cuda", [])), f"skipped {skipped}" if skipped else "")
PYEOF

echo "== timings: issue 19's targets (tools/gpu/cuda_targets.py) =="
timeout 150 "$PY" tools/gpu/cuda_targets.py --budget 120 >"$LOGS/cuda_targets.log" 2>&1
tail -70 "$LOGS/cuda_targets.log"
if [ "$TEST_STATUS" -eq 0 ] && [ "$AOT_STATUS" -ne 0 ]; then exit 3; fi
exit "$TEST_STATUS"
