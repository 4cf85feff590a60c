"""Fixed/slow points and recoding (rnnkit.tasks.methods.analysis)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from rnnkit.core.cells.elman import Elman
from rnnkit.tasks.methods.analysis import (
    find_fixed_points,
    recode_bpc,
    recode_state,
    state_from_vector,
    state_vector,
)


def _bistable_unit(w: float = 2.0) -> Elman:
    """``h ← tanh(w h)`` at zero input: fixed points 0 and ±h* with h* = tanh(w h*)."""
    cell = Elman(1, 1)
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.recurrent.fill_(w)
    return cell


def test_fixed_points_of_a_bistable_unit_match_the_analytic_ones() -> None:
    w = 2.0
    h_star = 0.5  # solve h = tanh(w h) by fixed-point iteration (contracting near h*)
    for _ in range(200):
        h_star = math.tanh(w * h_star)
    starts = torch.linspace(-1.2, 1.2, 7)[:, None]
    report = find_fixed_points(_bistable_unit(w), initial=starts, iterations=300)
    points = sorted(report.points, key=lambda p: p.state[0])
    assert [p.fixed for p in points] == [True, True, True]
    found = [p.state[0] for p in points]
    assert found == pytest.approx([-h_star, 0.0, h_star], abs=1e-5)
    # Jacobian w (1 - h²): a saddle-like unstable origin, stable outer points
    slopes = [p.eigenvalues[0][0] for p in points]
    assert slopes == pytest.approx([w * (1 - h_star**2), w, w * (1 - h_star**2)], abs=1e-4)
    assert [p.stable for p in points] == [True, False, True]


def test_linear_complex_cell_has_one_fixed_point_with_its_eigenvalues() -> None:
    from rnnkit.models.cells.lru import LRU

    torch.manual_seed(0)
    cell = LRU(2, 3)
    report = find_fixed_points(cell, starts=6, iterations=600, lr=0.02)
    assert len(report.points) == 1 and report.points[0].fixed
    assert max(abs(v) for v in report.points[0].state) < 1e-4
    lam = sorted(math.hypot(*e) for e in report.points[0].eigenvalues)
    # the state is 3 complex numbers as 6 reals: each eigenvalue modulus appears twice
    assert len(lam) == 6 and all(m < 1 for m in lam)


def test_state_vector_round_trips_complex_fields() -> None:
    from rnnkit.models.cells.lru import LRU

    cell = LRU(2, 3)
    state = cell.init_state(4)
    state = type(state)._make([torch.randn_like(f) for f in state])
    back = state_from_vector(state_vector(state), state)
    for a, b in zip(state, back, strict=True):
        torch.testing.assert_close(a, b)


def test_slow_point_at_the_ghost_of_a_saddle_node() -> None:
    # h <- tanh(2h + b): three fixed points for b below b_c = 1.414 - atanh(0.707) ≈ 0.533;
    # at b = 0.6 the left pair has merged and vanished, leaving a slow point near -0.7
    cell = _bistable_unit(2.0)
    with torch.no_grad():
        cell.bias.fill_(0.6)  # type: ignore[union-attr]
    starts = torch.tensor([[-0.8], [0.9]])
    report = find_fixed_points(cell, initial=starts, iterations=400, tol_slow=1e-2)
    slow = [p for p in report.points if p.kind == "slow"]
    fixed = [p for p in report.points if p.fixed]
    assert len(slow) == 1 and len(fixed) == 1
    assert -0.9 < slow[0].state[0] < -0.5 and 1e-8 < slow[0].q < 2e-3
    assert fixed[0].state[0] > 0.9 and fixed[0].stable


def _tiny_lm() -> torch.nn.Module:
    from rnnkit.models.networks import char_lm

    torch.manual_seed(0)
    return char_lm(vocab_size=5, hidden_size=8)


def test_recoding_moves_the_state_downhill_and_zero_step_changes_nothing() -> None:
    model = _tiny_lm()
    tokens = torch.tensor([[0, 1, 2, 3, 4] * 4, [4, 3, 2, 1, 0] * 4])
    base = recode_bpc(model, tokens, eta=0.0)
    assert base.recoded == base.baseline
    # one move of the state entering step 3 lowers the surprisal of the token it predicts
    rnn = model.rnn  # type: ignore[union-attr]
    state = rnn.init_state(2)
    for t in range(3):
        _, state = rnn.step(model.embed(tokens[:, t]), state)  # type: ignore[operator]
    x_t, gold = tokens[:, 3], tokens[:, 4]

    def surprisal(s: object) -> torch.Tensor:
        y, _ = rnn.step(model.embed(x_t), s)  # type: ignore[operator]
        logits = model.head(y)  # type: ignore[operator]
        return torch.nn.functional.cross_entropy(logits, gold, reduction="none")

    with torch.no_grad():
        before = surprisal(state)
        after = surprisal(recode_state(model, state, x_t, gold, signal="surprisal", eta=0.5))
    assert (after < before - 1e-4).all(), (before, after)
    e = recode_bpc(model, tokens, signal="entropy", eta=2.0)
    s = recode_bpc(model, tokens, signal="surprisal", eta=2.0)
    assert e.baseline == s.baseline == base.baseline
    assert e.recoded != pytest.approx(e.baseline) and s.recoded != pytest.approx(s.baseline)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"signal": "gold"}, "signal"), ({"eta": -1.0}, "eta")],
)
def test_recode_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        recode_bpc(_tiny_lm(), torch.zeros(1, 4, dtype=torch.long), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"starts": 0}, "starts"), ({"lr": 0.0}, "lr"), ({"tol_unique": -1.0}, "tol_unique")],
)
def test_fixed_point_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        find_fixed_points(_bistable_unit(), **kwargs)  # type: ignore[arg-type]


def test_analyse_fixed_points_command(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from rnnkit.core.cli import main

    code = main(
        [
            "analyse",
            "fixed-points",
            "--cell",
            "gru",
            "--hidden-size",
            "3",
            "--starts",
            "8",
            "--iterations",
            "300",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["state_size"] == 3 and out["points"]
    assert min(p["q"] for p in out["points"]) < 1e-6


def test_analyse_fixed_points_table_names_every_column(capsys: pytest.CaptureFixture[str]) -> None:
    from rnnkit.core.cli import main

    argv = ["analyse", "fixed-points", "--cell", "gru", "--hidden-size", "3", "--starts", "4"]
    assert main([*argv, "--iterations", "200"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    # A column whose name is blank leaves a run of three or more spaces between two names.
    names = re.split(r"\s{2,}", header.strip())
    assert names == ["point", "q", "kind", "max |λ|", "stability", "unstable modes"]


def test_analyse_fixed_points_refuses_cell_sizes_with_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--hidden-size`` and ``--input-size`` size a registered cell; a run's cell has its
    own, so with ``--run`` they are refused (they were silently ignored), before the run is
    read (there is none here)."""
    from rnnkit.core.cli import main

    run = ["analyse", "fixed-points", "--run", str(tmp_path / "none")]
    assert main([*run, "--hidden-size", "3"]) == 2
    assert "rnnkit analyse: error: --hidden-size: only with --cell" in capsys.readouterr().err
    assert main([*run, "--hidden-size", "3", "--input-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "error: --hidden-size, --input-size: only with --cell" in err


def test_analyse_fixed_points_sizes_the_cell(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--cell`` without sizes builds the cell 8 wide with 2 inputs; sizes below 1 are
    refused by the option's name."""
    from rnnkit.core.cli import main
    from rnnkit.tasks.methods import analysis

    sizes: list[tuple[int, int]] = []
    real = analysis.find_fixed_points

    def spy(cell: Any, **kwargs: Any) -> Any:
        sizes.append((cell.input_size, cell.hidden_size))
        return real(cell, **kwargs)

    monkeypatch.setattr(analysis, "find_fixed_points", spy)
    fp = ["analyse", "fixed-points", "--cell", "gru", "--starts", "2", "--iterations", "2"]
    assert main([*fp, "--json"]) == 0
    assert main([*fp, "--hidden-size", "3", "--input-size", "4", "--json"]) == 0
    assert sizes == [(2, 8), (4, 3)]
    capsys.readouterr()
    for flag, value in (("--hidden-size", "0"), ("--input-size", "-1")):
        assert main([*fp, flag, value]) == 2
        err = capsys.readouterr().err
        assert f"rnnkit analyse: error: {flag} must be a positive integer, got {value}" in err
    assert len(sizes) == 2


FIXED_POINT_FLAGS = [
    ("--starts", "0", "a positive integer"),
    ("--iterations", "-1", "a positive integer"),
    ("--lr", "0", "a finite number > 0"),
    ("--lr", "inf", "a finite number > 0"),
    ("--noise", "-1", "a finite number >= 0"),
    ("--tol-fixed", "nan", "a finite number >= 0"),
    ("--tol-slow", "inf", "a finite number >= 0"),
    ("--tol-unique", "-1", "a finite number >= 0"),
]


@pytest.mark.parametrize(
    ("flag", "value", "need"), FIXED_POINT_FLAGS, ids=[f"{f}={v}" for f, v, _ in FIXED_POINT_FLAGS]
)
def test_analyse_fixed_points_refuses_bad_options_by_name(
    flag: str, value: str, need: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Named by the option (``find_fixed_points`` names its keyword, ``tol_fixed``), and
    before a run is read (which it was first)."""
    from rnnkit.core.cli import main

    for which in (["--cell", "gru"], ["--run", str(tmp_path / "none")]):
        assert main(["analyse", "fixed-points", *which, flag, value]) == 2
        err = capsys.readouterr().err
        assert f"rnnkit analyse: error: {flag} must be {need}, got " in err, (which, err)


@pytest.mark.parametrize("eta", ["-1", "0.1,nan", "inf", ","])
def test_analyse_recode_refuses_bad_step_sizes_before_reading_the_run(
    eta: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ``--eta`` is checked by the option's name before the run is read and before the
    first step size is scored; an empty list was a silent success that printed nothing."""
    from rnnkit.core.cli import main

    assert main(["analyse", "recode", "--run", str(tmp_path / "none"), f"--eta={eta}"]) == 2
    err = capsys.readouterr().err
    assert "rnnkit analyse: error: --eta " in err, err
