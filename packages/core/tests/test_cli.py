"""The rnnkit CLI, run in-process."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest

from rnnkit.core.cli import main
from rnnkit.core.plugins import PluginHost, PluginWarning, module_plugin, use_host


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_cells_shows_plugin_of_origin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "cells")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    for name in ("elman", "lstm", "gru", "slstm"):
        assert rows[name][1:3] == ["core", "rnnkit-core"]


def test_list_with_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "cells", "*lstm")
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert code == 0 and "lstm" in names and "slstm" in names and "gru" not in names


def test_list_backends_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "backends")
    assert code == 0 and "reference" in out and "yes" in out
    code, out, _ = run(capsys, "info")
    assert code == 0
    for word in ("rnnkit-core", "torch", "devices", "backends", "reference/*"):
        assert word in out


def test_plugins_lists_distribution_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins")
    core = next(line for line in out.splitlines() if line.startswith("core "))
    assert code == 0 and "rnnkit-core" in core and "0.1.0" in core and "lstm" in core


def test_demo_command_from_the_core_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--cell", "gru", "--time", "5")
    assert code == 0
    assert "output    y (2, 5, 32)" in out
    assert "backend" in out


@pytest.mark.parametrize(
    ("option", "value"), [("--batch", "0"), ("--time", "0"), ("--batch", "-1")]
)
def test_demo_refuses_empty_sizes_in_one_line(
    capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    code, out, err = run(capsys, "demo", option, value)
    assert (code, out) == (2, "")
    assert err == f"rnnkit demo: error: {option} must be a positive int, got {value}\n"


def test_unknown_cell_in_demo_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--cell", "lstn")
    assert code == 2
    assert "did you mean 'lstm'" in err


def test_plugin_commands_are_added(capsys: pytest.CaptureFixture[str]) -> None:
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default="world")

    def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 3

    plugin = module_plugin(
        "greeter",
        rnnkit_register_commands=lambda register: register(
            "hello", help="greet", configure=configure, run=hello
        ),
    )
    with use_host(PluginHost(plugins=[("greeter", plugin)])):
        code, out, _ = run(capsys, "hello", "--name", "rnn")
    assert code == 3 and out == "hello rnn\n"


@pytest.mark.parametrize(
    ("raised", "line"),
    [
        (KeyboardInterrupt(), "rnnkit stop: interrupted\n"),
        (
            KeyboardInterrupt("training stopped at step 3"),
            "rnnkit stop: interrupted (training stopped at step 3)\n",
        ),
    ],
)
def test_ctrl_c_in_a_command_is_one_line_and_status_130(
    capsys: pytest.CaptureFixture[str], raised: KeyboardInterrupt, line: str
) -> None:
    """Wherever a Ctrl-C lands in a command, the user sees one line (not a traceback of the
    tensor op it interrupted) and the status a shell gives SIGINT."""

    def stop(args: argparse.Namespace) -> int:
        print("partial output")
        raise raised

    plugin = module_plugin(
        "stopper",
        rnnkit_register_commands=lambda register: register(
            "stop", help="stops", configure=lambda p: None, run=stop
        ),
    )
    with use_host(PluginHost(plugins=[("stopper", plugin)])):
        code, out, err = run(capsys, "stop")
    assert code == 130
    assert out == "partial output\n"
    assert err.lstrip("\n") == line and "Traceback" not in err


def test_a_conflicting_plugin_is_skipped_and_the_cli_keeps_working(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dup = module_plugin(
        "dup",
        rnnkit_register_commands=lambda register: register(
            "demo", help="x", configure=lambda p: None, run=lambda a: 0
        ),
    )
    with pytest.warns(PluginWarning, match=r"plugin dup was skipped"):
        host = PluginHost(plugins=[("dup", dup)])
    monkeypatch.setattr("rnnkit.core.cli.get_host", lambda: host)
    code, out, _ = run(capsys, "list", "commands")
    assert code == 0 and "demo" in out and "dup" not in out  # core's demo is kept
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "command 'demo' is already registered by plugin core (rnnkit-core" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0 and "list" in out and "plugins" in out


def test_output_into_a_closed_pipe_exits_quietly() -> None:
    # `rnnkit list cells | head -1`: the reader is gone before rnnkit writes (deterministic
    # here: the read end is closed before the process starts)
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rnnkit.core.cli", "list", "cells"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)
    # (stderr may hold an unrelated import-time warning, e.g. torch without numpy)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, what the shell reports for `cat` and others


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "cells"],
        ["list", "backends", "ref"],
        ["list", "backends", "--cell", "gru"],
        ["plugins"],
        ["info"],
    ],
)
def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    for flag in ("-q", "--quiet"):
        assert run(capsys, *argv, flag) == (0, "", "")


def test_list_json_holds_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "cells", "*lstm", "--json")
    rows = json.loads(out)  # stdout is one JSON document
    assert code == 0 and err == ""
    by_name = {r["cell"]: r for r in rows}
    assert {"lstm", "slstm"} <= set(by_name) and "gru" not in by_name
    assert by_name["lstm"]["plugin"] == "core"
    assert by_name["lstm"]["distribution"] == "rnnkit-core"
    code, out, _ = run(capsys, "list", "backends", "reference", "--json")
    rows = json.loads(out)
    assert rows and all(r["backend"] == "reference" and r["available"] == "yes" for r in rows)


def test_list_backends_for_a_call_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "backends", "--cell", "gru", "--time", "5", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["call"]["cell"] == "gru" and doc["call"]["x_shape"][1] == 5
    picked = [r["backend"] for r in doc["backends"] if r["auto"] == "picked"]
    assert picked == [doc["picked"]] and doc["error"] is None


def test_info_and_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    code, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["versions"]["rnnkit-core"] == "0.1.0"
    assert info["environment"]["torch"] == torch.__version__
    assert info["devices"][0]["device"] == "cpu"
    assert "reference/*" in info["backends"] and info["backends"]["reference/*"] is None
    code, out, _ = run(capsys, "plugins", "--json")
    plugins = {p["plugin"]: p for p in json.loads(out)}
    core = plugins["core"]
    assert code == 0 and core["distribution"] == "rnnkit-core" and core["status"] == "ok"
    assert "lstm" in core["registered"]["cells"] and core["error"] is None


def test_a_broken_plugin_is_one_warning_line_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not Python's two-line warning format, whose second line is rnnkit's own source."""

    def boom(register: object) -> None:
        raise RuntimeError("boom")

    broken = module_plugin("broken", rnnkit_register_cells=boom)
    monkeypatch.setattr(
        "rnnkit.core.cli.get_host", lambda: PluginHost(plugins=[("broken", broken)])
    )
    code, out, err = run(capsys, "list", "cells", "lstm")
    assert code == 0 and "lstm" in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rnnkit: warning: plugin broken was skipped: rnnkit_register_cells")
    assert "boom" in lines[0] and lines[0].endswith("(`rnnkit plugins` lists them all)")


def test_other_warnings_while_loading_plugins_stay_warnings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only plugin problems become ``rnnkit: warning:`` lines; another warning raised while
    the plugins load (a library's deprecation, say) goes on as a warning, unchanged."""

    def host() -> PluginHost:
        warnings.warn("a library's own deprecation", DeprecationWarning, stacklevel=1)
        return PluginHost(plugins=[])

    monkeypatch.setattr("rnnkit.core.cli.get_host", host)
    with pytest.warns(DeprecationWarning, match="a library's own deprecation"):
        code, out, err = run(capsys, "list", "cells", "lstm")
    assert code == 0 and "lstm" in out
    assert "rnnkit: warning" not in err
