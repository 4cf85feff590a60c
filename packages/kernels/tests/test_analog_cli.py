"""``rnnkit analog``: the simulator's own subcommands and the extension point through which
rnnkit-tasks adds its experiments (``kws``, ``charlm``), with rnnkit-kernels alone."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.kernels.analog import cli


@pytest.fixture
def no_experiments(monkeypatch: pytest.MonkeyPatch) -> None:
    """As without rnnkit-tasks: nothing registered (it may be installed beside us)."""
    monkeypatch.setattr(cli, "_EXPERIMENTS", {})


def test_adc_error_prints_its_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["analog", "adc-error", "--bits", "3", "--devices", "ideal", "--columns", "4"]
    assert main([*argv, "--plot", "", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"rows written to {tmp_path / 'rows.json'}"
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert saved["experiment"] == "adc-error" and saved["settings"]["bits"] == [3]
    assert [(r["fn"], r["bits"]) for r in saved["rows"]] == [("sigmoid", 3), ("tanh", 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]  # --plot '': no PNG
    lines = lines[:-1]
    assert lines[0].split() == [
        "fn",
        "device",
        "bits",
        "max",
        "LSB",
        "rms",
        "LSB",
        "|INL|",
        "|DNL|",
    ]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["sigmoid", "ideal", "3"],
        ["tanh", "ideal", "3"],
    ]


@pytest.mark.usefixtures("no_experiments")
@pytest.mark.parametrize("args", [[], ["--steps", "3", "--bits", "3", "5"], ["--help"]])
@pytest.mark.parametrize("name", ["kws", "charlm"])
def test_task_experiment_without_rnnkit_tasks_says_what_to_install(
    capsys: pytest.CaptureFixture[str], name: str, args: list[str]
) -> None:
    assert main(["analog", name, *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"rnnkit analog {name}: error: rnnkit analog {name} trains")
    assert "pip install rnnkit-tasks" in captured.err
    assert "pip install -e packages/tasks" in captured.err


@pytest.mark.usefixtures("no_experiments")
def test_analog_help_lists_the_task_experiments_as_needing_rnnkit_tasks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal's width
    with pytest.raises(SystemExit) as exc:
        main(["analog", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("adc-error", "cost", "ramp-drift", "kws", "charlm", "drift"):
        assert name in out
    assert out.count("(needs rnnkit-tasks)") == 3


@pytest.mark.usefixtures("no_experiments")
def test_a_registered_experiment_gets_its_arguments_and_exit_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[argparse.Namespace] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    cli.register_experiment("kws", help="a stand-in", configure=configure, run=run)
    cli.register_experiment("probe", help="a new one", configure=configure, run=run)
    assert sorted(cli.experiments()) == ["kws", "probe"]
    assert main(["analog", "kws", "--steps", "4"]) == 7
    assert main(["analog", "probe"]) == 7
    assert [(a.analog_command, a.steps) for a in seen] == [("kws", 4), ("probe", 1)]
    # registering the same name again replaces it (every plugin host registers anew)
    cli.register_experiment("probe", help="again", configure=configure, run=lambda a: 0)
    assert main(["analog", "probe"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("no_experiments")
@pytest.mark.parametrize("name", ["cost", "adc-error", "", "two words", "--x"])
def test_experiment_names_cannot_shadow_builtins_or_be_options(name: str) -> None:
    with pytest.raises(ValueError, match="analog"):
        cli.register_experiment(name, help="", configure=lambda p: None, run=lambda a: 0)
    assert cli.experiments() == {}


def test_analog_without_a_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analog"]) == 2
    assert capsys.readouterr().err.startswith("usage: rnnkit analog {adc-error,cost,")


def test_ramp_drift_prints_its_table_and_recalibration_helps(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plot = tmp_path / "ramp.png"  # a bare name: inside --out
    argv = ["analog", "ramp-drift", "--times", "1", "31536000", "--columns", "8"]
    assert main([*argv, "--period", "86400", "--plot", "ramp.png", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert [r["t"] for r in saved["rows"]] == [1.0, 31536000.0]
    out = capsys.readouterr().out
    assert (
        "| t (s) | no recalibration | recalibrated at t | recalibrated one period before |" in out
    )
    rows = cli.ramp_drift_rows([1.0, 31536000.0], columns=8, period=86400.0)
    # before one period nothing was recalibrated yet; a year on, a ramp recalibrated a day
    # before is far better than one left to drift, and the drift grew the error.
    assert rows[0]["periodic_rms"] == rows[0]["none_rms"]
    assert rows[1]["none_rms"] > 2 * rows[0]["none_rms"]
    assert rows[1]["periodic_rms"] < 0.5 * rows[1]["none_rms"]
    assert rows[1]["fresh_rms"] < 0.5 * rows[1]["none_rms"]
    pytest.importorskip("matplotlib")
    assert plot.is_file() and plot.stat().st_size > 0


@pytest.mark.parametrize("hidden", ["0", "-3"])
def test_cost_refuses_a_width_without_units_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, hidden: str
) -> None:
    out = tmp_path / "cost"
    assert main(["analog", "cost", "--hidden", hidden, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert (
        captured.err == f"rnnkit analog: error: --hidden must be a positive integer, got {hidden}\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["adc-error", "--bits", "3", "0"],
            "--bits must be whole numbers of bits in [1, 10], got [3, 0]",
        ),
        (
            ["adc-error", "--bits", "11"],
            "--bits must be whole numbers of bits in [1, 10], got [11]",
        ),
        (["adc-error", "--columns", "0"], "--columns must be a positive integer, got 0"),
        (["ramp-drift", "--bits", "0"], "--bits must be whole numbers of bits in [1, 10], got 0"),
        (["ramp-drift", "--columns", "-2"], "--columns must be a positive integer, got -2"),
        (
            ["ramp-drift", "--times", "1", "nan"],
            "--times must be finite seconds >= 0 since programming, got [1.0, nan]",
        ),
        (
            ["ramp-drift", "--times", "inf"],
            "--times must be finite seconds >= 0 since programming, got [inf]",
        ),
        (
            ["ramp-drift", "--times", "-1"],
            "--times must be finite seconds >= 0 since programming, got [-1.0]",
        ),
        # a period <= 0 would recalibrate at the time read or after it, not before
        (
            ["ramp-drift", "--period", "0"],
            "--period must be a finite number of seconds > 0, got 0.0",
        ),
        (
            ["ramp-drift", "--period", "-5"],
            "--period must be a finite number of seconds > 0, got -5.0",
        ),
        (
            ["ramp-drift", "--period", "nan"],
            "--period must be a finite number of seconds > 0, got nan",
        ),
        (
            ["ramp-drift", "--period", "inf"],
            "--period must be a finite number of seconds > 0, got inf",
        ),
    ],
)
def test_builtin_experiments_refuse_bad_flags_by_their_names(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The refusal names the flag the user typed (the library's checks name its keywords:
    ``nl_bits``, ``t``) and comes before any folder is made."""
    out = tmp_path / "refused"
    assert main(["analog", *argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err == f"rnnkit analog: error: {message}\n"


def test_ramp_drift_plot_takes_time_zero_without_a_warning(tmp_path: Path) -> None:
    """``--times 0 ...`` (just programmed) printed matplotlib's warning that a log axis cannot
    show it, with a line of our source."""
    pytest.importorskip("matplotlib")
    rows = cli.ramp_drift_rows([0.0], columns=2)
    png = tmp_path / "r.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli._plot_ramp_drift(rows, str(png), "t")
    assert png.stat().st_size > 0


@pytest.mark.parametrize("period", [0.0, -5.0, float("nan"), float("inf")])
def test_ramp_drift_rows_refuses_a_period_that_is_not_positive(period: float) -> None:
    with pytest.raises(ValueError, match="period must be a finite number of seconds > 0"):
        cli.ramp_drift_rows([1.0], columns=2, period=period)


@pytest.mark.parametrize(
    "argv",
    [
        ["adc-error", "--bits", "3", "--devices", "ideal", "--columns", "4"],
        ["cost", "--hidden", "64"],
        ["ramp-drift", "--times", "1", "3600", "--columns", "4"],
    ],
)
def test_json_prints_rows_json_and_quiet_prints_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    plot = [] if argv[0] == "cost" else ["--plot", ""]
    out = tmp_path / "json"
    assert main(["analog", *argv, *plot, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out) == json.loads((out / "rows.json").read_text())
    assert json.loads(captured.out)["experiment"] == argv[0]
    quiet = tmp_path / "quiet"
    assert main(["analog", *argv, *plot, "--out", str(quiet), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    saved = json.loads((quiet / "rows.json").read_text())
    assert "quiet" not in saved["settings"] and "json" not in saved["settings"]
    assert saved["rows"] == json.loads((out / "rows.json").read_text())["rows"]


def test_flag_checks_take_their_bounds() -> None:
    """The bounds themselves pass: 1 and 10 bits, time 0 (just programmed) and a learning
    rate of 0 (``rnnkit train --lr`` takes it)."""
    cli.check_bits("--bits", [1, 10])
    cli.check_bits("--bits", 10)
    cli.check_times("--times", [0.0, 1.0])
    cli.check_times("--t-inference", 0)
    cli.check_rate("--lr", 0.0)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1e-3])
def test_check_rate_refuses_what_no_optimiser_takes(lr: float) -> None:
    with pytest.raises(ValueError, match=r"^--finetune-lr must be a finite number >= 0, got "):
        cli.check_rate("--finetune-lr", lr)
