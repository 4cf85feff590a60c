# shellcheck shell=bash
# The shared preamble of tools/gpu/*_check.sh (and check.sh), sourced by each as its first
# command, never run alone:
#
#   source "$(dirname "$0")/_setup.sh"
#
# It moves to the repository root and unsets TRITON_INTERPRET (on the GPU machine the Triton
# kernels run compiled, never in the CPU interpreter). Each script then sets its own PY and
# environment and calls what it needs of the functions below.
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
unset TRITON_INTERPRET

# gpu_install_wheels [required]: install the wheels carried in .whl/ (tools/gpu/prepare.sh
# builds them here: the GPU machine has no network, so no index and no dependencies; torch,
# triton and pluggy are preinstalled there). A pip failure exits the script with 1; with
# `required`, no wheels exits it with 2.
gpu_install_wheels() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --force-reinstall .whl/*.whl || exit 1
  elif [ "${1:-}" = required ]; then
    echo "no .whl/ (run tools/gpu/prepare.sh here first and carry .whl)"
    exit 2
  fi
}

# gpu_source_tree_if_missing MODULE: where MODULE does not import (rnnkit not installed), put
# the source tree's core and kernels on PYTHONPATH (the registered-kernel tests then need entry
# points and may be skipped or fail; the op and kernel tests do not).
gpu_source_tree_if_missing() {
  if ! "$PY" -c "import $1" 2>/dev/null; then
    export PYTHONPATH="packages/core/src:packages/kernels/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

# gpu_source_tree_with_entry_points: where rnnkit-kernels' entry point is not installed (and
# cannot be built offline), put the sources on the path and give them dist-info with their
# entry points, so that the plugin host finds them.
gpu_source_tree_with_entry_points() {
  if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.value == 'rnnkit.kernels._plugin' for e in m.entry_points(group='rnnkit')) else 1)" 2>/dev/null; then
    SITE=$(mktemp -d /tmp/rnnkit_site.XXXX)
    "$PY" - "$SITE" <<'PYEOF'
import pathlib, sys, tomllib
site = pathlib.Path(sys.argv[1])
for pkg in ("core", "kernels"):
    meta = tomllib.loads(pathlib.Path(f"packages/{pkg}/pyproject.toml").read_text())["project"]
    d = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    eps = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
        for group, items in meta.get("entry-points", {}).items()
    )
    (d / "entry_points.txt").write_text(eps)
PYEOF
    export PYTHONPATH="$SITE:$PWD/packages/core/src:$PWD/packages/kernels/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "using rnnkit from the source tree (shim dist-info in $SITE)"
  fi
}
