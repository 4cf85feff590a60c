#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a device run: builds wheels of every rnnkit
# distribution into .whl/ (git-ignored locally through .git/info/exclude), which the device
# call carries. The GPU machine has no network, so it cannot build them itself (nor fetch
# hatchling and ninja: they go to .whl/build/).
set -euo pipefail
cd "$(dirname "$0")/../.."
# the exclude file of this checkout's git directory (in a worktree .git is a file, not a folder)
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps -w .whl \
  packages/core packages/kernels packages/models packages/tasks plugins/mingru
# The build tools of the ahead-of-time CUDA build that tools/gpu/cuda_check.sh tries there
# (pip install --no-build-isolation of packages/kernels needs them in the GPU machine's Python).
python3 -m pip download -q -d .whl/build hatchling ninja
ls .whl .whl/build
