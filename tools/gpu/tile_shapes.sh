#!/usr/bin/env bash
# Register-tile shapes of the fused_cpp team loops on this host's CPU (one pinned core):
# builds tools/bench/tile_shapes.cpp for AVX-512 and AVX2 and prints GFLOP/s per shape,
# next to torch's 1-thread large-mm rate (the ceiling).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
inc=packages/kernels/src/rnnkit/kernels/gated/fused_cpp/csrc
lscpu | grep -E "Model name|L1d|L2" || true
python - <<'PY'
import time, torch
torch.set_num_threads(1)
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
t = time.perf_counter()
for _ in range(5):
    a @ b
print(f"torch 1-thread mm: {5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9:.1f} GFLOP/s")
PY
if grep -q avx512f /proc/cpuinfo; then
  g++ -O3 -fno-trapping-math -DVB=16 -I"$inc" tools/bench/tile_shapes.cpp -o "$out/t16"
  taskset -c 2 "$out/t16"
fi
g++ -O3 -fno-trapping-math -DVB=8 -I"$inc" tools/bench/tile_shapes.cpp -o "$out/t8"
taskset -c 2 "$out/t8"
