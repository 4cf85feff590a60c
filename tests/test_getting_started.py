"""The commands of ``docs/getting-started.md``, run as a newcomer would: in a fresh folder,
in the page's order, through the installed ``rnnkit`` command. Each must succeed, and what the
page says each leaves behind must be there."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"


def _commands() -> list[str]:
    text = PAGE.read_text()
    part = text[
        text.index("<!-- getting-started: commands -->") : text.index(
            "<!-- getting-started: end -->"
        )
    ]
    blocks = re.findall(r"```bash\n(.*?)```", part, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_getting_started_commands_work(tmp_path: Path) -> None:
    # the console scripts of the interpreter running the tests (its venv's bin folder)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bindir + os.pathsep + os.environ["PATH"]}
    assert shutil.which("rnnkit", path=env["PATH"]), f"no rnnkit command in {bindir}"
    commands = _commands()
    assert [c.split()[:2] for c in commands if c.startswith("rnnkit")] == [
        ["rnnkit", "train"],
        ["rnnkit", "eval"],
        ["rnnkit", "generate"],
        ["rnnkit", "train"],
        ["rnnkit", "predict"],
        ["rnnkit", "compare"],
    ]
    outputs = {}
    for command in commands:
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        outputs[shlex.split(command)[1] if command.startswith("rnnkit") else command] = done.stdout
    lm = tmp_path / "runs" / "lm"
    for name in ("final.json", "model.safetensors", "config.json", "checkpoint.safetensors"):
        assert (lm / name).is_file(), name
    test_bpc = json.loads((lm / "final.json").read_text())["test"]["bpc"]
    assert f"{test_bpc:.4f}"[:5] in outputs["eval"]  # eval prints the metric final.json holds
    assert len(outputs["generate"].strip()) >= 80
    assert len(outputs["predict"].split()) >= 5
    compare = json.loads((tmp_path / "runs" / "cmp" / "compare.json").read_text())
    assert [row["status"] for row in compare["rows"]] == ["ok", "ok"]
    assert [len(row["runs"]) for row in compare["rows"]] == [3, 3]  # three seeds each
    assert (tmp_path / "runs" / "cmp" / "report.md").is_file()
