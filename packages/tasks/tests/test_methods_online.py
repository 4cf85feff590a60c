"""Online learners (rnnkit.tasks.methods.online): exactness, unbiasedness, learning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from rnnkit.tasks.methods.online import (
    DNI,
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


#: a short run (2 subjects x 2 min, 0.5 s ahead) for the tests that a learner learns
SHORT_RUN = OnlineConfig(
    method="snap1",
    hidden=8,
    horizons=(5,),
    subjects=2,
    length=1200,
    warm=300,
    lr=0.05,
    latency_steps=0,
)


def test_online_snap1_learns_beyond_persistence() -> None:
    (score,) = run_online(SHORT_RUN).scores
    # persistence (the last position) scores about 0.87 here; the learner about 0.48
    assert score.nrmse < 0.7 * score.nrmse_persistence, score


def _dni_oracle_loss(
    a: torch.Tensor,
    tilde_t: list[float],
    tilde_next: list[float],
    dl_dx_t: list[float],
    phi_next: list[float],
    w_a: list[list[float]],
) -> torch.Tensor:
    """``½ Σ_j f_j²`` with ``f = x̃_t A − ∂L_t/∂x_t − c_{t+1} D̃_{t+1}``, entry by entry."""
    n, q = len(tilde_t), len(dl_dx_t)
    c_t = [sum(tilde_t[k] * a[k, j] for k in range(n)) for j in range(q)]
    c_next = [sum(tilde_next[k] * a[k, j] for k in range(n)) for j in range(q)]
    loss = torch.zeros((), dtype=torch.float64)
    for j in range(q):
        # (c D̃)_j = Σ_i c_i D̃[i, j], D̃[i, j] = φ'(z_i) W_a[i, j] = ∂x_{t+1, i}/∂x_{t, j}
        boot = sum(c_next[i] * phi_next[i] * w_a[i][j] for i in range(q))
        loss = loss + 0.5 * (c_t[j] - dl_dx_t[j] - boot) ** 2
    return loss


def test_dni_two_steps_match_a_float64_oracle() -> None:
    """Step t leaves A alone; step t + 1 moves A by the gradient of step t's residual (with
    step t + 1's W_a and φ') and returns (c_{t+1} ⊙ φ'(z_{t+1})) v_{t+1}ᵀ with the new A."""
    b, q, m, p, lr_a = 2, 3, 2, 2, 0.3
    g = torch.Generator().manual_seed(3)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    learner = DNI(b, q, q + m + 1, torch.float64, p, lr_a=lr_a, init_a=0.5, generator=g)
    a0 = learner.a.clone()
    assert a0.shape == (b, q + p + 1, q) and a0.abs().min() > 0
    steps = []
    for _ in range(2):
        w = RNNWeights(rand(b, q, q + m + 1), rand(b, p, q))
        x = torch.tanh(rand(b, q))
        v = torch.cat([rand(b, q + m), torch.ones(b, 1, dtype=torch.float64)], 1)
        steps.append((w, v, x, rand(b, q), rand(b, p)))
    out = [learner.update(w, v, x, dl, target=y) for w, v, x, dl, y in steps]
    (_, v1, x1, dl1, y1), (w2, v2, x2, _, y2) = steps
    for k in range(b):
        tilde1 = x1[k].tolist() + y1[k].tolist() + [1.0]
        tilde2 = x2[k].tolist() + y2[k].tolist() + [1.0]
        phi1 = [1.0 - xi * xi for xi in x1[k].tolist()]
        phi2 = [1.0 - xi * xi for xi in x2[k].tolist()]
        w_a2 = w2.w[k, :, :q].tolist()
        a = a0[k].clone().requires_grad_(True)
        (grad_a,) = torch.autograd.grad(
            _dni_oracle_loss(a, tilde1, tilde2, dl1[k].tolist(), phi2, w_a2), a
        )
        a1 = a0[k] - lr_a * grad_a
        torch.testing.assert_close(learner.a[k], a1, rtol=1e-12, atol=1e-12)
        for step, (tilde, phi, v, a_used) in enumerate(
            [(tilde1, phi1, v1[k].tolist(), a0[k]), (tilde2, phi2, v2[k].tolist(), a1)]
        ):
            c = [sum(tilde[i] * float(a_used[i, j]) for i in range(len(tilde))) for j in range(q)]
            expected = torch.tensor(
                [[c[i] * phi[i] * v[j] for j in range(q + m + 1)] for i in range(q)],
                dtype=torch.float64,
            )
            torch.testing.assert_close(out[step][k], expected, rtol=1e-12, atol=1e-12)
    assert (learner.a - a0).abs().max() > 1e-2  # the step moved A


def test_dni_with_the_exact_credit_gives_bptt_and_keeps_a() -> None:
    """When x̃_t A equals the true credit ∂(Σ_s L_s)/∂x_t at every step of a window (T ≤
    q + p + 1 generic x̃ make this possible), the bootstrapped residuals vanish (A does not
    move, even with a large step) and the summed gradients are BPTT's."""
    steps = 6
    w, u, y = _problem(batch=1)
    u, y = u[:, :steps], y[:, :steps]
    x = torch.zeros(1, Q, dtype=torch.float64)
    w_graph = w.w.clone().requires_grad_(True)  # so that the states are in autograd's graph
    states, errors, loss = [], [], torch.zeros((), dtype=torch.float64)
    for t in range(steps):
        _, _, x = rnn_step(w_graph, x, u[:, t])
        states.append(x)
        errors.append(torch.bmm(w.w_out, x[:, :, None])[:, :, 0] - y[:, t])
        loss = loss + 0.5 * errors[-1].square().sum()
    # autograd's derivative with respect to an intermediate state is its total derivative
    credit = torch.cat(torch.autograd.grad(loss, states))  # (T, q)
    x_all = torch.cat(states).detach()
    tilde = torch.cat([x_all, y[0], torch.ones(steps, 1, dtype=torch.float64)], 1)
    a_star = torch.linalg.pinv(tilde) @ credit
    torch.testing.assert_close(tilde @ a_star, credit, rtol=1e-10, atol=1e-10)
    immediate = torch.cat(errors).detach() @ w.w_out[0]  # ∂L_t/∂x_t
    assert (credit - immediate).abs().max() > 1e-2  # the future part of the credit matters
    learner = DNI(1, Q, w.w.shape[2], torch.float64, P, lr_a=0.5)
    learner.a = a_star[None].clone()
    total = window_gradient(learner, w, u, y)
    torch.testing.assert_close(total, _bptt(w, u, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(learner.a[0], a_star, rtol=1e-10, atol=1e-10)
    # the test has power: with D̃ transposed, or with the credit bootstrapped from D̃_t
    # instead of D̃_{t+1}, the same A would leave a residual and move
    phi = 1.0 - x_all.square()
    c = tilde @ a_star
    transposed = c[:-1] - immediate[:-1] - (c[1:] * phi[1:]) @ w.w_a[0].T
    shifted = c[:-1] - immediate[:-1] - (c[1:] * phi[:-1]) @ w.w_a[0]
    assert transposed.abs().max() > 1e-2 and shifted.abs().max() > 1e-2


def test_online_dni_learns_beyond_persistence_and_the_readout() -> None:
    config = replace(SHORT_RUN, method="dni")
    (score,) = run_online(config).scores
    # dni_lr = 0 and A = 0: the synthetic credit stays zero and only W_out learns
    (readout,) = run_online(replace(config, dni_lr=0.0)).scores
    # measured: persistence about 0.87, readout only about 0.73, dni about 0.49
    assert score.nrmse < 0.7 * score.nrmse_persistence, score
    assert score.nrmse < 0.8 * readout.nrmse, (score, readout)


def _largest_tensor(fn: Callable[[], object]) -> int:
    """The most elements of any tensor that a torch function or method returns in ``fn``."""
    largest = 0

    class Probe(TorchFunctionMode):
        def __torch_function__(
            self,
            func: Callable[..., object],
            types: object,
            args: tuple[object, ...] = (),
            kwargs: dict[str, object] | None = None,
        ) -> object:
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel())
            return out

    with Probe():
        fn()
    return largest


def test_dni_step_creates_no_cubic_tensor() -> None:
    """O(q²) per step: no tensor of q³ elements (RTRL's influence has q³ (q + m + 1))."""
    q, m, p = 16, 3, 2
    g = torch.Generator().manual_seed(0)
    w = RNNWeights.init(1, q, m, p, generator=g)
    x = torch.tanh(torch.randn(1, q, generator=g, dtype=torch.float64))
    v = torch.cat([x, torch.ones(1, m + 1, dtype=torch.float64)], 1)
    dl_dx = torch.randn(1, q, generator=g, dtype=torch.float64)
    target = torch.randn(1, p, generator=g, dtype=torch.float64)
    dni = make_learner("dni", 1, q, q + m + 1, outputs=p, init_a=0.1, generator=g)
    dni.update(w, v, x, dl_dx, target)  # the first step has no pair to update A with
    largest = _largest_tensor(lambda: dni.update(w, v, x, dl_dx, target))
    assert largest <= q * (q + m + p + 1) < q**3, largest
    rtrl = make_learner("rtrl", 1, q, q + m + 1)
    assert _largest_tensor(lambda: rtrl.update(w, v, x, dl_dx)) >= q**3  # the probe sees


def test_dni_counts_a_nan_target_as_zero() -> None:
    """A NaN entry of the step's target (a position not known yet) enters the credit's
    features as 0: two steps with one NaN target entry give exactly what the same learner
    gives with 0 there, A's update included, and nothing non-finite."""
    q, m, p = 3, 2, 2
    g = torch.Generator().manual_seed(4)
    w = RNNWeights.init(1, q, m, p, generator=g)
    steps = []
    for _ in range(2):
        x = torch.tanh(torch.randn(1, q, generator=g, dtype=torch.float64))
        v = torch.cat([x, torch.randn(1, m, generator=g, dtype=torch.float64)], 1)
        v = torch.cat([v, torch.ones(1, 1, dtype=torch.float64)], 1)
        steps.append((v, x, torch.randn(1, q, generator=g, dtype=torch.float64)))
    targets = torch.randn(2, 1, p, generator=g, dtype=torch.float64)
    with_nan, with_zero = targets.clone(), targets.clone()
    with_nan[0, 0, 1], with_zero[0, 0, 1] = float("nan"), 0.0
    results = []
    for tgt in (with_nan, with_zero):
        dni = DNI(1, q, q + m + 1, torch.float64, p, lr_a=0.5, init_a=0.3,
                  generator=torch.Generator().manual_seed(5))  # fmt: skip
        grads = [dni.update(w, v, x, dl, tgt[i]) for i, (v, x, dl) in enumerate(steps)]
        results.append((grads, dni.a))
    (g_nan, a_nan), (g_zero, a_zero) = results
    assert all(torch.isfinite(t).all() for t in (*g_nan, a_nan))
    assert all(torch.equal(a, b) for a, b in zip(g_nan, g_zero, strict=True))
    assert torch.equal(a_nan, a_zero) and (g_nan[0] != 0).any()


def test_dni_arguments_are_named() -> None:
    for kwargs, name in [
        ({"lr_a": -0.1}, "lr_a"),
        ({"lr_a": float("nan")}, "lr_a"),
        ({"init_a": float("inf")}, "init_a"),
    ]:
        with pytest.raises(ValueError, match=name):
            DNI(1, 2, 4, torch.float64, 1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outputs"):
        DNI(1, 2, 4, torch.float64, 0)
    dni = DNI(1, 2, 4, torch.float64, 1)
    w = RNNWeights.init(1, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="target"):
        dni.update(w, torch.ones(1, 4), torch.zeros(1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"method": "bptt"}, "method"),
        ({"hidden": 0}, "hidden"),
        ({"horizons": (0,)}, "horizons"),
        ({"lr": float("nan")}, "lr"),
        ({"clip": -1.0}, "clip"),
        ({"dni_lr": -0.01}, "dni_lr"),
        ({"dni_init": float("nan")}, "dni_init"),
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


def test_online_command_runs_dni_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from rnnkit.core.cli import main

    args = ["online", "--method", "dni", "--hidden", "4", "--horizons", "2", "--subjects", "1"]
    args += ["--length", "260", "--warm", "200", "--latency-steps", "0", "--json"]
    assert main([*args, "--dni-lr", "0.02", "--dni-init", "0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["method"] == "dni"
    assert (out["config"]["dni_lr"], out["config"]["dni_init"]) == (0.02, 0.1)
    assert out["scores"][0]["nrmse"] > 0
    assert main([*args, "--dni-lr", "-1"]) != 0
    assert "dni_lr must be a non-negative number" in capsys.readouterr().err


@pytest.mark.experiment
@pytest.mark.parametrize("method", ["rtrl", "snap1", "tbptt", "uoro", "dni"])
def test_online_documented(method: str) -> None:
    """docs/tasks.md: `rnnkit online --method METHOD` (defaults: 4 subjects x 3 min)."""
    result = run_online(OnlineConfig(method=method, latency_steps=0))
    mean = sum(s.nrmse for s in result.scores) / len(result.scores)
    # measured: rtrl 0.401, snap1 0.399, tbptt 0.404, uoro 0.606, dni 0.404 (mean over 0.1-1 s)
    assert mean < (0.65 if method == "uoro" else 0.43), mean
    far = result.scores[-1]
    assert far.nrmse < 0.6 * far.nrmse_persistence
