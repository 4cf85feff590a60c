"""Online learners (rnnkit.tasks.methods.online): exactness, unbiasedness, learning."""

from __future__ import annotations

import pytest
import torch

from rnnkit.tasks.methods.online import (
    OnlineConfig,
    RNNWeights,
    make_learner,
    rnn_step,
    run_online,
    window_gradient,
)

B, Q, M, P, T = 3, 5, 4, 2, 12


def _problem(
    diagonal: bool = False, batch: int = B
) -> tuple[RNNWeights, torch.Tensor, torch.Tensor]:
    """``batch`` copies of one network (random bias) with one input and target window."""
    g = torch.Generator().manual_seed(1)
    one = RNNWeights.init(1, Q, M, P, generator=g, diagonal=diagonal, radius=1.1)
    one.w[:, :, -1] = 0.3 * torch.randn(1, Q, generator=g, dtype=torch.float64)
    w = RNNWeights(one.w.repeat(batch, 1, 1), one.w_out.repeat(batch, 1, 1), diagonal)
    u = torch.randn(1, T, M, generator=g, dtype=torch.float64).expand(batch, -1, -1)
    y = torch.randn(1, T, P, generator=g, dtype=torch.float64).expand(batch, -1, -1)
    return w, u.contiguous(), y.contiguous()


def _bptt(w: RNNWeights, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Autograd's gradient of the summed loss over the window."""
    wr = w.w.clone().requires_grad_(True)
    x = torch.zeros(u.shape[0], Q, dtype=torch.float64)
    loss = torch.zeros((), dtype=torch.float64)
    for t in range(u.shape[1]):
        _, _, x = rnn_step(wr, x, u[:, t])
        y_hat = torch.bmm(w.w_out, x[:, :, None])[:, :, 0]
        loss = loss + 0.5 * (y_hat - y[:, t]).square().sum()
    (grad,) = torch.autograd.grad(loss, wr)
    return grad


def test_rtrl_and_full_tbptt_equal_bptt_in_float64() -> None:
    w, u, y = _problem()
    exact = _bptt(w, u, y)
    rtrl = window_gradient(make_learner("rtrl", B, Q, w.w.shape[2]), w, u, y)
    torch.testing.assert_close(rtrl, exact, rtol=1e-12, atol=1e-12)
    full = window_gradient(make_learner("tbptt", B, Q, w.w.shape[2], truncation=T), w, u, y)
    torch.testing.assert_close(full, exact, rtol=1e-12, atol=1e-12)
    short = window_gradient(make_learner("tbptt", B, Q, w.w.shape[2], truncation=2), w, u, y)
    assert (short - exact).abs().max() > 1e-3  # truncation drops something


def test_snap1_equals_rtrl_for_a_diagonal_recurrence_only() -> None:
    w, u, y = _problem(diagonal=True)
    rtrl = window_gradient(make_learner("rtrl", B, Q, w.w.shape[2]), w, u, y)
    snap = window_gradient(make_learner("snap1", B, Q, w.w.shape[2]), w, u, y)
    torch.testing.assert_close(snap, rtrl, rtol=1e-12, atol=1e-12)
    w, u, y = _problem(diagonal=False)
    rtrl = window_gradient(make_learner("rtrl", B, Q, w.w.shape[2]), w, u, y)
    snap = window_gradient(make_learner("snap1", B, Q, w.w.shape[2]), w, u, y)
    assert (snap - rtrl).abs().max() > 1e-3


def test_uoro_is_unbiased() -> None:
    draws = 10_000
    w, u, y = _problem(batch=draws)
    exact = _bptt(RNNWeights(w.w[:1], w.w_out[:1]), u[:1], y[:1])[0]
    g = torch.Generator().manual_seed(5)
    est = window_gradient(make_learner("uoro", draws, Q, w.w.shape[2], generator=g), w, u, y)
    mean, sem = est.mean(0), est.std(0) / draws**0.5
    z = (mean - exact) / sem
    assert z.abs().max() < 5.0, float(z.abs().max())
    # the mean is close in norm too, and a single draw is not (the test has power)
    assert float((mean - exact).norm() / exact.norm()) < 0.06
    assert float((est[0] - exact).norm() / exact.norm()) > 0.2


def test_online_snap1_learns_beyond_persistence() -> None:
    config = OnlineConfig(
        method="snap1",
        hidden=8,
        horizons=(5,),
        subjects=2,
        length=1200,
        warm=300,
        lr=0.05,
        latency_steps=0,
    )
    (score,) = run_online(config).scores
    # persistence (the last position) scores about 0.87 here; the learner about 0.48
    assert score.nrmse < 0.7 * score.nrmse_persistence, score


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"method": "bptt"}, "method"),
        ({"hidden": 0}, "hidden"),
        ({"horizons": (0,)}, "horizons"),
        ({"lr": float("nan")}, "lr"),
        ({"clip": -1.0}, "clip"),
        ({"length": 100}, "length"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        run_online(OnlineConfig(**kwargs))  # type: ignore[arg-type]


def test_online_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    from rnnkit.core.cli import main

    code = main(
        [
            "online",
            "--method",
            "rtrl",
            "--hidden",
            "4",
            "--horizons",
            "2",
            "--subjects",
            "1",
            "--length",
            "260",
            "--warm",
            "200",
            "--latency-steps",
            "5",
            "--json",
        ]
    )
    import json

    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["scores"][0]["horizon"] == 2
    assert out["scores"][0]["latency_ms"] > 0


@pytest.mark.experiment
@pytest.mark.parametrize("method", ["rtrl", "snap1", "tbptt", "uoro"])
def test_online_documented(method: str) -> None:
    """docs/tasks.md: `rnnkit online --method METHOD` (defaults: 4 subjects x 3 min)."""
    result = run_online(OnlineConfig(method=method, latency_steps=0))
    mean = sum(s.nrmse for s in result.scores) / len(result.scores)
    # measured: rtrl 0.401, snap1 0.399, tbptt 0.404, uoro 0.606 (mean over 0.1-1 s)
    assert mean < (0.65 if method == "uoro" else 0.43), mean
    far = result.scores[-1]
    assert far.nrmse < 0.6 * far.nrmse_persistence
