#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a device run: builds wheels of every rnnkit
# distribution into .whl/ (git-ignored locally through .git/info/exclude), which the device
# call carries. The GPU machine has no network, so it cannot build them itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip wheel -q --no-deps -w .whl \
  packages/core packages/kernels packages/models packages/tasks plugins/mingru
ls .whl
