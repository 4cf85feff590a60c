"""Switching-pattern data and the PV-RNN study; N-parity/N-DMS curricula (issue 16, 9 and 10)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rnnkit.tasks.curriculum import (
    MultiHeadLeakyRNN,
    baseline_reach,
    curriculum_batch,
    run_curriculum,
)
from rnnkit.tasks.patterns import pattern_sequences, patterns_data, primitive_cycle
from rnnkit.tasks.pvrnn_study import configure_pvrnn, cycle_labels, study, study_one

# --- switching Lissajous patterns --------------------------------------------------------------


def test_pattern_sequences_follow_their_labels_and_switch_at_the_set_rate() -> None:
    g = torch.Generator().manual_seed(0)
    x, labels = pattern_sequences(400, 6, g, period=10, switch=0.3)
    assert x.shape == (400, 60, 2)
    got, dist = cycle_labels(x, 10)
    assert torch.equal(got, labels) and float(dist.max()) < 1e-12
    rate = float((labels[:, 1:] != labels[:, :-1]).float().mean())
    assert abs(rate - 0.3) < 0.05
    # every cycle starts at the origin, so a switch keeps the path continuous
    assert float(x[:, ::10].abs().max()) < 1e-6
    assert torch.allclose(x[0, :10], primitive_cycle(int(labels[0, 0]), 10))
    with pytest.raises(ValueError, match="switch"):
        pattern_sequences(2, 2, g, switch=1.5)


def test_patterns_slots_are_distinct_across_splits() -> None:
    d = patterns_data(0)
    slots = [s.inputs[:, 0] for s in (d.train, d.valid, d.test)]
    assert len(set(torch.cat(slots).tolist())) == d.info["slots"] == 40
    assert all(bool((s.inputs == s.inputs[:, :1]).all()) for s in (d.train, d.valid, d.test))


def test_pvrnn_study_rejects_bad_meta_prior() -> None:
    with pytest.raises(ValueError, match="meta_priors"):
        study([-1.0])
    with pytest.raises(ValueError, match="observe"):
        study_one(0.01, steps=1, observe=70, horizon=20)


@pytest.mark.experiment
def test_pvrnn_error_regression_beats_free_generation_and_zero() -> None:
    """The docs/tasks.md study at w = 1: error regression predicts the held-out continuation
    better than the prior's roll-out without it and than predicting 0 (by 30 %)."""
    r = study_one(1.0)
    assert r.train_mse < 0.1 * r.zero_mse
    assert r.er_mse < 0.7 * r.zero_mse
    assert r.er_mse < r.free_mse


# --- curricula ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["parity", "dms"])
def test_curriculum_batch_labels(task: str) -> None:
    g = torch.Generator().manual_seed(1)
    ns = [2, 3, 5]
    x, y = curriculum_batch(task, ns, 64, g)
    assert x.shape[0] == 64 and x.shape[2] == 1 and y.shape == (64, 3)
    t = x.shape[1]
    assert 5 + 2 <= t <= (11 if task == "parity" else 22)
    bits = x[..., 0].long()
    for j, n in enumerate(ns):
        for b in range(64):
            row = bits[b].tolist()
            want = sum(row[-n:]) % 2 if task == "parity" else int(row[-n] == row[-1])
            assert int(y[b, j]) == want


def test_evaluation_batches_draw_p_per_sequence() -> None:
    """``p_per_sequence`` gives each parity sequence its own ``p ~ U(0, 1)`` (the fraction of
    ones spreads over rows); the training batches keep one ``p`` for the whole batch."""
    g = torch.Generator().manual_seed(3)
    x, _ = curriculum_batch("parity", [20], 256, g, p_per_sequence=True)
    ones = x[..., 0].mean(1)
    assert float(ones.min()) < 0.2 and float(ones.max()) > 0.8
    x, _ = curriculum_batch("parity", [20], 256, g)
    ones = x[..., 0].mean(1)
    assert float(ones.max() - ones.min()) < 0.6


class _CountsToTwo(MultiHeadLeakyRNN):
    """A stand-in that cannot compute parity: right when the last ``n`` bits hold at most two
    ones or at most two zeros (where counting to two suffices), otherwise it says "even". Its
    logits carry a zero times the real heads' so that the training loop can run."""

    n = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = x[:, -self.n :, 0]
        ones = window.sum(1)
        parity = ones.remainder(2)
        few = (ones <= 2) | (ones >= self.n - 2)
        guess = torch.where(few, parity, torch.zeros_like(parity)).long()
        logits = torch.nn.functional.one_hot(guess, 2).float()[:, None]
        return logits + 0 * super().forward(x)


def test_a_network_that_cannot_compute_parity_is_not_declared_solved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The evaluation covers the range of ``p``: with one ``p`` per evaluation batch (the old
    rule), a batch with ``p`` near 0 or 1 made parity-12 almost a count to two, and this
    stand-in passed 98 % within 40 evaluations; over ``p`` drawn per sequence it scores far
    below (about 0.6-0.7)."""
    import rnnkit.tasks.curriculum as curriculum

    monkeypatch.setattr(curriculum, "MultiHeadLeakyRNN", _CountsToTwo)
    r = run_curriculum(
        "parity",
        "none",
        n_start=12,
        budget=40,
        hidden_size=2,
        batch_size=8,
        eval_every=1,
        eval_batch=256,
    )
    assert not r.solved_any, r.history
    assert max(acc for _, _, acc in r.history) < 0.85, r.history


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"task": "copy"}, "task"),
        ({"mode": "both"}, "mode"),
        ({"budget": 0}, "budget"),
        ({"n_start": 1}, "n_start"),
        ({"hidden_size": 2.5}, "hidden_size"),
        ({"lr": -1.0}, "lr"),
        ({"threshold": 1.5}, "threshold"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"max_n": 1}, "max_n"),
    ],
)
def test_bad_curriculum_arguments(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        run_curriculum(**kw)


def test_multi_head_adds_heads() -> None:
    m = MultiHeadLeakyRNN(8, 2)
    m.add_head()
    assert m(torch.zeros(3, 5, 1)).shape == (3, 3, 2)


def test_multi_head_curriculum_learns_quickly() -> None:
    """At most 300 steps of the multi-head curriculum on parity solve N = 2 and 3 (>= 98 %
    on fresh batches, chance is 50 %); the timescales are reported and stay >= 1."""
    torch.manual_seed(0)
    r = run_curriculum(
        "parity",
        "multi",
        budget=300,
        hidden_size=24,
        batch_size=64,
        lr=1e-2,
        eval_every=20,
        eval_batch=200,
        max_n=3,
    )
    assert r.n_reached >= 3, r.history
    assert len(r.taus) == 24 and min(r.taus) >= 1.0
    assert r.tau["max"] >= r.tau["median"] >= 1.0


def test_early_evaluation_ends_an_n_between_periodic_checks() -> None:
    """With no periodic evaluation before step 300, the early evaluation (triggered by a
    training batch at the threshold) still solves N = 2 and 3 and stops before the budget; with
    it off, nothing is evaluated before the budget's last step (a 60-step run here)."""
    kw: dict[str, Any] = {
        "budget": 300,
        "hidden_size": 24,
        "batch_size": 64,
        "lr": 1e-2,
        "eval_every": 1000,
        "eval_batch": 200,
        "max_n": 3,
    }
    early = run_curriculum("parity", "multi", **kw)
    assert early.n_reached == 3 and early.steps < 300, early.history
    assert all(s < 300 for s, _, _ in early.history)
    late = run_curriculum("parity", "multi", early_eval=False, **{**kw, "budget": 60})
    assert [s for s, _, _ in late.history] == [60]


_NOT_MET = pytest.mark.xfail(
    strict=True,
    reason="not met at 3,000 steps (docs/tasks.md's curricula tables: DMS faster-curricula, "
    "parity evaluation over the range of p)",
)


@pytest.mark.experiment
@pytest.mark.parametrize(
    ("task", "mode"),
    [
        ("dms", "multi"),
        pytest.param("dms", "single", marks=_NOT_MET),
        ("parity", "multi"),
        pytest.param("parity", "single", marks=_NOT_MET),
    ],
)
def test_curricula_reach_twice_the_uncurriculated_n(task: str, mode: str) -> None:
    """The issue's target (docs/tasks.md's curricula tables, 3,000 steps, 128 units, early
    evaluation, parity evaluated over ``p`` drawn per sequence): a curriculum reaches an N at
    least twice that of the uncurriculated network, which gets the whole budget for each N.
    Met by the multi-head curricula (DMS 36 against 11, parity 23 against 10); single-head
    are expected failures (strict: one that starts passing fails here, so that the table is
    updated)."""
    kw = {"budget": 3000, "seed": 0}
    base = baseline_reach(task, **kw)
    got = run_curriculum(task, mode, **kw)  # type: ignore[arg-type]
    assert got.n_reached >= 2 * base.n_reached, (base.n_reached, got.n_reached)


def test_a_bare_json_prints_json_as_on_the_other_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` alone prints one JSON document and nothing else on stdout (as ``rnnkit
    train --json``); ``--json FILE`` still writes the file beside the table."""
    from rnnkit.core.cli import main

    args = ["curriculum", "--task", "parity", "--mode", "single", "--steps", "2"]
    assert main([*args, "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["mode"] == "single" and record["steps"] == 2
    assert main([*args, "--json", str(tmp_path / "c.json")]) == 0
    assert "N reached" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())[0]["steps"] == 2
    parser = argparse.ArgumentParser()
    configure_pvrnn(parser)
    assert parser.parse_args(["--json"]).json == "-"
    assert parser.parse_args(["--json", "p.json"]).json == "p.json"


def test_the_table_says_none_when_no_n_was_solved(capsys: pytest.CaptureFixture[str]) -> None:
    """Two steps solve nothing: the table says ``none`` in the N column (not ``N = 1``, which
    was never trained) and explains it below; the JSON keeps ``n_reached = n_start - 1``."""
    from rnnkit.core.cli import main

    args = ["curriculum", "--task", "dms", "--mode", "single", "none", "--steps", "2"]
    assert main(args) == 0
    rows = capsys.readouterr().out.splitlines()
    body = {line.split()[0]: line.split() for line in rows[1:3]}
    assert body["single"][1] == "none" and body["none"][1] == "none", rows
    assert rows[3].startswith("none: no N solved (N = 2"), rows
    assert main([*args, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["n_reached"] for r in records] == [1, 1]


@pytest.mark.parametrize("flag", ["--eval-every", "--steps", "--hidden-size"])
def test_a_bad_flag_prints_one_line_and_no_table(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The arguments are checked before the table's header is printed (it used to come out
    above the error)."""
    from rnnkit.core.cli import main

    assert main(["curriculum", "--mode", "multi", "--steps", "2", flag, "0"]) != 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "must be an int >= 1, got 0" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--steps", "0"),
        ("--eval-every", "0"),
        ("--hidden-size", "0"),
        ("--batch-size", "0"),
        ("--max-n", "1"),
        ("--lr", "0"),
        ("--threshold", "1.5"),
    ],
)
def test_errors_name_the_flag_typed(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's errors name the option (``--steps``), not the Python argument it sets
    (``budget``); :func:`run_curriculum` itself keeps the argument names (above)."""
    from rnnkit.core.cli import main

    assert main(["curriculum", "--mode", "multi", "--steps", "2", flag, value]) != 0
    err = capsys.readouterr().err
    assert f"{flag} must be" in err, err


def test_threads_sets_torch_threads_for_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--threads N`` (as on ``rnnkit train``) runs the curricula with N torch threads, 1
    when unset, and gives the caller's count back; ``--threads 0`` is refused before the
    table."""
    import rnnkit.tasks.curriculum as curriculum
    from rnnkit.core.cli import main

    seen: list[int] = []
    real = curriculum.run_curriculum

    def spy(*a: Any, **kw: Any) -> curriculum.CurriculumResult:
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(curriculum, "run_curriculum", spy)
    caller = torch.get_num_threads()
    args = ["curriculum", "--mode", "single", "--steps", "2", "--hidden-size", "4"]
    assert main([*args, "--threads", "2"]) == 0
    assert main(args) == 0
    assert seen == [2, 1] and torch.get_num_threads() == caller
    capsys.readouterr()
    assert main([*args, "--threads", "0"]) != 0
    out, err = capsys.readouterr()
    assert out == "" and "--threads must be a positive integer, got 0" in err


def test_a_mode_named_twice_runs_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--mode multi single multi`` trains multi then single, once each (a repeated mode
    trained the same curriculum again and printed its row twice)."""
    import rnnkit.tasks.curriculum as curriculum
    from rnnkit.core.cli import main

    ran: list[str] = []
    real = curriculum.run_curriculum

    def spy(task: str, mode: str, **kw: Any) -> curriculum.CurriculumResult:
        ran.append(mode)
        return real(task, mode, **kw)

    monkeypatch.setattr(curriculum, "run_curriculum", spy)
    args = ["curriculum", "--steps", "2", "--hidden-size", "4", "--json", "-"]
    assert main([*args, "--mode", "multi", "single", "multi"]) == 0
    assert ran == ["multi", "single"]
    records = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in records] == ["multi", "single"]
