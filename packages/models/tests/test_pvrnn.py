"""PV-RNN: the step against a float64 oracle, the ELBO's KL, learning, error regression."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from rnnkit.models import create_model
from rnnkit.models.pvrnn import PVRNN, Gaussian, PVRNNState


def _small(**kw: Any) -> PVRNN:
    cfg: dict[str, Any] = {
        "d_sizes": (5, 4, 3),
        "z_sizes": (2, 1, 3),
        "taus": (1.5, 4.0, 9.0),
        "dtype": torch.float64,
    }
    cfg.update(kw)
    return PVRNN(3, 4, 7, **cfg)


def _oracle_step(
    m: PVRNN, h: list[torch.Tensor], z: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The class docstring's equations, written out per layer in float64."""
    L = len(h)
    new: list[torch.Tensor] = [torch.empty(0)] * L
    for k in range(L - 1, -1, -1):
        d_prev = torch.tanh(h[k])
        drive = d_prev @ m.dd[k].weight.T + m.dd[k].bias + z[k] @ m.zd[k].weight.T
        if k < L - 1:
            drive = drive + torch.tanh(new[k + 1]) @ m.top[k].weight.T
        tau = m.taus[k]
        new[k] = (1 - 1 / tau) * h[k] + drive / tau
    y = torch.tanh(torch.tanh(new[0]) @ m.out.weight.T + m.out.bias)
    return y, new


def test_step_and_prior_match_float64_oracle() -> None:
    torch.manual_seed(0)
    m = _small()
    h = [torch.randn(6, d, dtype=torch.float64) for d in m.d_sizes]
    z = [torch.randn(6, s, dtype=torch.float64) for s in m.z_sizes]
    y, state = m.step(PVRNNState(tuple(h)), z)
    y_ref, h_ref = _oracle_step(m, h, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(state.h, h_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    p = m.prior_of(PVRNNState(tuple(h)))
    for k in range(m.num_layers):
        w, b = m.prior[k].weight, m.prior[k].bias
        zk = m.z_sizes[k]
        pre = torch.tanh(h[k]) @ w.T + b
        torch.testing.assert_close(p.mu[k], torch.tanh(pre[:, :zk]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p.log_sigma[k], pre[:, zk:], rtol=1e-12, atol=1e-12)
    first = m.prior_of(PVRNNState(tuple(h)), first=True)
    assert all(float(t.abs().max()) == 0.0 for t in first.mu + first.log_sigma)


def test_forward_is_the_step_loop_and_kl_matches_torch_distributions() -> None:
    torch.manual_seed(1)
    m = _small().eval()
    with torch.no_grad():
        for a in list(m.a_mu) + list(m.a_log_sigma):
            a.normal_(0, 0.5)
    ids = torch.tensor([2, 0, 3])
    out = m(ids[:, None].expand(3, 7))
    state = m.init_state(3)
    kls = []
    for t in range(7):
        p = m.prior_of(state, first=t == 0)
        zs, kl_t = [], []
        for k in range(m.num_layers):
            mu, ls = torch.tanh(m.a_mu[k][ids, t]), m.a_log_sigma[k][ids, t]
            kl = kl_divergence(Normal(mu, ls.exp()), Normal(p.mu[k], p.log_sigma[k].exp()))
            kl_t.append(kl.sum(-1))
            zs.append(mu)
        y, state = m.step(state, zs)
        torch.testing.assert_close(out[:, t], y, rtol=1e-12, atol=1e-12)
        kls.append(torch.stack(kl_t, -1))
    assert m._kl is not None
    torch.testing.assert_close(m._kl, torch.stack(kls, 1), rtol=1e-10, atol=1e-12)
    # the penalty: sum_k w_k mean_{b,t} KL_k / (|z_k| D), with w_init at t = 0
    m2 = _small(meta_prior=(0.1, 0.2, 0.3), meta_prior_init=1.0)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    m2(ids)
    kl = torch.stack(kls, 1)
    w = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64).repeat(7, 1)
    w[0] = 1.0
    expect = (kl * w / (torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64) * 3)).sum(-1).mean()
    torch.testing.assert_close(m2.regularization(0.5), expect)


def test_regularization_zero_before_forward_and_grows_with_w() -> None:
    torch.manual_seed(2)
    small, large = _small(meta_prior=0.01), _small(meta_prior=1.0)
    large.load_state_dict(small.state_dict())
    assert float(small.regularization(0.0)) == 0.0
    with torch.no_grad():
        small.a_mu[0].fill_(1.0)
        large.a_mu[0].fill_(1.0)
    small.eval()(torch.arange(4))
    large.eval()(torch.arange(4))
    assert float(large.regularization(0.0)) == pytest.approx(100 * float(small.regularization(0)))
    assert float(small.regularization(0.0)) > 0


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"output_size": 0}, "output_size"),
        ({"num_sequences": -1}, "num_sequences"),
        ({"seq_len": 2.5}, "seq_len"),
        ({"d_sizes": ()}, "d_sizes"),
        ({"d_sizes": (4, 0)}, "d_sizes"),
        ({"z_sizes": (2,)}, "z_sizes"),
        ({"taus": (0.5, 2.0)}, "taus"),
        ({"taus": (2.0, 3.0, 4.0)}, "taus"),
        ({"meta_prior": -0.1}, "meta_prior"),
        ({"meta_prior": float("nan")}, "meta_prior"),
        ({"meta_prior_init": (1.0, -1.0)}, "meta_prior_init"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kw: dict[str, Any], name: str) -> None:
    cfg: dict[str, Any] = {
        "output_size": 2,
        "num_sequences": 3,
        "seq_len": 5,
        "d_sizes": (4, 3),
        "z_sizes": (1, 1),
    }
    cfg.update(kw)
    with pytest.raises(ValueError, match=name):
        PVRNN(**cfg)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"window": 0}, "window"),
        ({"iterations": 0}, "iterations"),
        ({"lr": 0.0}, "lr"),
        ({"horizon": -1}, "horizon"),
        ({"shift": 0}, "shift"),
        ({"meta_prior": -1.0}, "meta_prior"),
    ],
)
def test_bad_error_regression_arguments(kw: dict[str, Any], name: str) -> None:
    m = PVRNN(2, 3, 5, d_sizes=(4,), z_sizes=(1,), taus=(2.0,))
    with pytest.raises(ValueError, match=name):
        m.error_regression(torch.zeros(1, 4, 2), **kw)


def test_bad_inputs() -> None:
    m = PVRNN(2, 3, 5, d_sizes=(4,), z_sizes=(1,), taus=(2.0,))
    with pytest.raises(ValueError, match="seq_len"):
        m(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="sequence ids"):
        m(torch.full((2, 5), 3))
    with pytest.raises(ValueError, match="int sequence ids"):
        m(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="observed"):
        m.error_regression(torch.zeros(1, 4, 3))


def _waves(n: int, t: int) -> torch.Tensor:
    """``n`` 2-D waves of different frequencies: ``(n, t, 2)``, amplitude 0.8."""
    time = torch.arange(t, dtype=torch.float32)
    f = 2 * math.pi / torch.tensor([10.0, 20.0, 7.0, 14.0])[:n, None]
    return 0.8 * torch.stack([torch.sin(f * time), torch.cos(f * time / 2)], -1)


@pytest.fixture(scope="module")
def trained() -> tuple[PVRNN, torch.Tensor, float]:
    """A PV-RNN after 60 ELBO steps on two waves, the waves, and its reconstruction MSE."""
    torch.manual_seed(0)
    x = _waves(2, 12)
    m = PVRNN(2, 2, 12, d_sizes=(12,), z_sizes=(2,), taus=(2.0,), meta_prior=0.001)
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    ids = torch.arange(2)[:, None].expand(2, 12)
    for i in range(60):
        opt.zero_grad()
        loss = (m(ids) - x).square().mean() + m.regularization(i / 60)
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        mse = float((m(ids) - x).square().mean())
    return m, x, mse


def test_learns_to_reconstruct_its_training_sequences(
    trained: tuple[PVRNN, torch.Tensor, float],
) -> None:
    """After 60 ELBO steps the posterior reconstruction's MSE is below 30 % of that of
    predicting 0 (the trivial baseline)."""
    _, x, mse = trained
    baseline = float(x.square().mean())
    assert mse < 0.3 * baseline, (mse, baseline)


def test_error_regression_fits_the_window_and_leaves_weights_alone(
    trained: tuple[PVRNN, torch.Tensor, float],
) -> None:
    """With the weights frozen, 20 iterations per window fit the observed steps clearly
    better than 1 (only the fresh latents can explain the data)."""
    m, x, _ = trained
    m.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    short = m.error_regression(x, window=6, iterations=1, lr=0.1, horizon=3, shift=6)
    long = m.error_regression(x, window=6, iterations=20, lr=0.1, horizon=3, shift=6)
    assert long.fit.shape == (2, 12, 2) and long.prediction.shape == (2, 3, 2)
    assert long.window_loss.shape == (2,)  # windows ending at 6 and 12
    assert float(long.window_loss.mean()) < 0.5 * float(short.window_loss.mean())
    assert float((long.fit - x).square().mean()) < 0.5 * float(x.square().mean())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in m.parameters())
    assert all(p.grad is None for p in m.parameters())


def test_generation_and_registry() -> None:
    m = create_model(
        "pvrnn", output_size=2, vocab_size=3, seq_len=6, d_sizes=(4,), z_sizes=(1,), taus=(2.0,)
    )
    assert isinstance(m, PVRNN)
    g = torch.Generator().manual_seed(0)
    a = m.generate(5, 6, generator=g)
    b = m.generate(5, 6, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 6, 2) and torch.equal(a, b)
    assert float(a.std(0).mean()) > 0  # sampled latents make samples differ
    mean = m.generate(5, 6, sample=False)
    assert float(mean.std(0).max()) == 0.0
    assert isinstance(m.prior_of(m.init_state(1)), Gaussian)
