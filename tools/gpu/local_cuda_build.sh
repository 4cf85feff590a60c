#!/usr/bin/env bash
# Run HERE, before a device run (no GPU needed): compiles and links the gated `cuda` backend's
# whole library, kernels and torch glue, the way the GPU machine's ahead-of-time build does
# (`pip wheel --no-build-isolation packages/kernels`, whose hook compiles it into the wheel),
# against the torch the GPU machines have (2.11.0, CUDA 13.0) and this machine's nvcc, for
# sm_90, then loads it and prints its ops' schemas. CI's CPU torch has no CUDA headers, so the
# glue (gated_cuda_ops.cpp, gated_cuda_stream.cpp) is compiled nowhere else without a GPU.
#
#   bash tools/gpu/local_cuda_build.sh         # about 2 minutes once the venv exists
#
# The first run downloads that torch from PyPI (about 0.5 GB; 4.7 GB installed with its CUDA
# libraries) into a venv at $RNNKIT_CUDA_TORCH_VENV (default /tmp/rnnkit-cuda-torch), which
# later runs reuse. $TORCH_VERSION and $TORCH_CUDA_ARCH_LIST choose others.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${RNNKIT_CUDA_TORCH_VENV:-/tmp/rnnkit-cuda-torch}
VERSION=${TORCH_VERSION:-2.11.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$VERSION')" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$VERSION" numpy ninja hatchling
fi
"$VENV/bin/pip" install -q --no-deps ./packages/core
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
[ "$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')" != None ] ||
  { echo "the torch in $VENV is built without CUDA"; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# -v: pip shows the build hook's line only when verbose
"$VENV/bin/pip" wheel -v --no-build-isolation --no-deps -w "$WORK/wheel" ./packages/kernels \
  >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
grep "rnnkit-kernels:" "$WORK/build.log" | head -1
grep -q "shipped prebuilt" "$WORK/build.log" || {
  log=$(grep -o "full log: [^)]*" "$WORK/build.log" | head -1 | cut -d' ' -f3)
  [ -n "$log" ] && head -60 "$log"
  exit 1
}
mkdir "$WORK/unpacked"
(cd "$WORK/unpacked" && python3 -m zipfile -e "$WORK"/wheel/rnnkit_kernels-*.whl .)
"$VENV/bin/python" - "$WORK/unpacked/rnnkit/kernels/gated/cuda/_prebuilt" <<'PYEOF'
import json
import sys
from pathlib import Path

import torch

folder = Path(sys.argv[1])
print("manifest:", json.loads((folder / "rnnkit_gated_cuda.json").read_text()))
torch.ops.load_library(str(folder / "rnnkit_gated_cuda.so"))
for op in ("forward", "backward"):
    print(getattr(torch.ops.rnnkit_gated_cuda, op).default._schema)
print("local CUDA build: the library compiles, links and loads")
PYEOF
