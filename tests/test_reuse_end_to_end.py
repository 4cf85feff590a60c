"""Train, then reuse the run in a fresh process: ``rnnkit train`` -> ``rnnkit eval`` ->
``rnnkit generate``, with a cell that only a plugin provides (mingru), so the reloaded model is
rebuilt through the plugin registry from ``config.json`` alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.core.cli import main

# a named backend, recorded in config.json and used again by eval and generate: "auto" could
# pick a kernel in the fresh process that the training process did not have
TINY = ["--steps", "4", "--eval-every", "2", "--batch-size", "8", "--hidden-size", "16"]
TINY += ["--backend", "reference"]


def _rnnkit(*args: str) -> subprocess.CompletedProcess[str]:
    """``rnnkit ARGS`` in a new interpreter (the console script's entry point)."""
    script = Path(sys.executable).parent / "rnnkit"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "rnnkit.core.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=300, check=False, env=env
    )


def test_a_plugin_cell_run_is_reused_in_a_fresh_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lm"
    args = ["train", "--task", "charlm", "--cell", "mingru", *TINY, "--no-progress", "--no-plot"]
    assert main([*args, "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["cell"] == "mingru" and config["model_kwargs"]["cell"] == "mingru"
    assert config["backend"] == "reference"
    gen = ["generate", "--run", str(out), "--prompt", "The ", "--length", "30", "--seed", "7"]
    assert main(gen) == 0
    here = capsys.readouterr().out
    fresh = _rnnkit(*gen)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout == here and here.startswith("The ")
    ev = _rnnkit("eval", "--run", str(out), "--split", "test", "--json")
    assert ev.returncode == 0, ev.stderr
    final = json.loads((out / "final.json").read_text())
    assert json.loads(ev.stdout)["metrics"] == final["test"]
