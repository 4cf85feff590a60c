"""Forecasting networks (AR-Net, PGN, TPGN, ES-RNN / MES-LSTM): equations, causality, errors.

Learning on the tasks is tested in packages/tasks/tests/test_forecasting_models.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rnnkit.models import create_model, list_models
from rnnkit.models.forecasting import (
    ESRNN,
    PGN,
    TPGN,
    ARNet,
    ConvFFNRNN,
    arnet_sparsity,
    lagged,
)

NAMES = ("arnet", "pgn", "tpgn", "esrnn", "mes_lstm", "conv_ffn_rnn")


def test_registered() -> None:
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_causality(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_size=2, output_size=6, hidden_size=8)
    if isinstance(model, ARNet):  # starts at zero coefficients: give it some
        torch.nn.init.normal_(model.first_layer.weight)
    x = torch.randn(3, 40, 2)
    y = model(x, backend="reference")
    assert y.shape == (3, 40, 6) and y.dtype == torch.float32
    later = x.clone()
    later[:, 25:] += torch.randn(3, 15, 2)
    y2 = model(later, backend="reference")
    assert torch.equal(y[:, :25], y2[:, :25])  # output t sees inputs up to t only
    assert not torch.allclose(y[:, 25:], y2[:, 25:])


def test_lagged_newest_first_with_zeros_before_the_start() -> None:
    x = torch.arange(1.0, 6.0).reshape(1, 5, 1)
    got = lagged(x, 3)[0, :, :, 0]
    want = torch.tensor([[1, 0, 0], [2, 1, 0], [3, 2, 1], [4, 3, 2], [5, 4, 3]]).float()
    assert torch.equal(got, want)


def test_arnet_is_the_ar_equation() -> None:
    m = ARNet(1, 1, lags=3)
    with torch.no_grad():
        m.first_layer.weight.copy_(torch.tensor([[0.2, 0.3, -0.5]]))
        m.first_layer.bias.fill_(0.1)
    x = torch.tensor([1.0, 2.0, -1.0, 4.0]).reshape(1, 4, 1)
    # ŷ_{t+1} = 0.2 x_t + 0.3 x_{t-1} - 0.5 x_{t-2} + 0.1 (zeros before the start)
    want = [0.2 * 1 + 0.1, 0.2 * 2 + 0.3 * 1 + 0.1, -0.2 + 0.6 - 0.5 + 0.1, 0.8 - 0.3 - 1 + 0.1]
    assert m(x)[0, :, 0].tolist() == pytest.approx(want, abs=1e-6)
    assert m.coefficients().shape == (1, 3, 1)
    assert m.coefficients()[0, :, 0].tolist() == pytest.approx([0.2, 0.3, -0.5])


def test_arnet_vector_ar_layout() -> None:
    m = ARNet(2, 2, lags=2)
    with torch.no_grad():
        m.first_layer.weight.zero_()
        coef = m.coefficients()  # a view of the weight
        assert coef.shape == (2, 2, 2)
    w = torch.zeros(2, 2, 2)
    w[0, 1, 1] = 1.0  # output 0 = channel 1 one step further back
    with torch.no_grad():
        m.first_layer.weight.copy_(w.reshape(2, 4))
    x = torch.randn(1, 6, 2)
    with torch.no_grad():
        y = m(x)
    assert torch.allclose(y[0, 1:, 0], x[0, :-1, 1]) and float(y[0, 0, 0]) == 0.0


def test_arnet_sparsity_regulariser_by_hand() -> None:
    w = torch.tensor([0.0, 1.0, -8.0])
    # 2 / (1 + exp(-c1 |w|^(1/c2))) - 1 with c1 = c2 = 3: 0, 2σ(3) - 1, 2σ(6) - 1
    want = (0.0 + (2 / (1 + math.exp(-3)) - 1) + (2 / (1 + math.exp(-6)) - 1)) / 3
    assert float(arnet_sparsity(w)) == pytest.approx(want)
    # c2 = 1: |w| enters linearly
    want1 = (0.0 + (2 / (1 + math.exp(-2)) - 1) + (2 / (1 + math.exp(-16)) - 1)) / 3
    assert float(arnet_sparsity(w, c1=2.0, c2=1.0)) == pytest.approx(want1)
    # finite gradients, none at an exact zero
    w.requires_grad_(True)
    arnet_sparsity(w).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and float(w.grad[0]) == 0.0


def test_arnet_regulariser_ramps_quadratically() -> None:
    m = ARNet(1, 1, lags=4, reg_lambda=2.0, reg_start=0.1, reg_full=0.5)
    assert m.reg_weight(0.0) == 0.0 and m.reg_weight(0.1) == 0.0
    assert m.reg_weight(0.3) == pytest.approx(2.0 * 0.25)  # halfway: (1/2)^2
    assert m.reg_weight(0.5) == 2.0 and m.reg_weight(1.0) == 2.0
    with torch.no_grad():
        m.first_layer.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    pen = m.regularization(1.0)
    want = 2.0 * float(arnet_sparsity(m.first_layer.weight.detach()))
    assert pen.dim() == 0 and float(pen.detach()) == pytest.approx(want)
    pen.backward()
    assert m.first_layer.weight.grad is not None
    assert float(ARNet(1, 1).regularization(1.0)) == 0.0  # reg_lambda 0: no penalty


def test_pgn_reads_exactly_its_window() -> None:
    torch.manual_seed(1)
    m = PGN(1, 1, hidden_size=4, window=5)
    x = torch.randn(1, 20, 1)
    base = m(x)[0, 15, 0]
    for lag, matters in ((0, True), (4, True), (5, False)):
        x2 = x.clone()
        x2[0, 15 - lag] += 1.0
        assert (m(x2)[0, 15, 0] != base).item() == matters, lag


def test_pgn_layer_equations() -> None:
    torch.manual_seed(2)
    m = PGN(2, 1, hidden_size=3, window=4)
    layer = m.layers[0]
    x = torch.randn(1, 6, 2)
    t = 5
    past = x[0, t - 3 : t + 1]  # (4, 2), oldest first
    h = layer.hie.bias + torch.einsum("okt,tk->o", layer.hie.weight, past)
    g, c = layer.gates(torch.cat([x[0, t], h])).chunk(2)
    want = torch.sigmoid(g) * h + (1 - torch.sigmoid(g)) * torch.tanh(c)
    assert torch.allclose(layer(x)[0, t], want, atol=1e-6)


def test_tpgn_receptive_field() -> None:
    torch.manual_seed(3)
    rows, period = 3, 4
    m = TPGN(1, 1, hidden_size=4, period=period, rows=rows)
    x = torch.randn(1, 40, 1)
    t = 39
    base = m(x)[0, t, 0]
    reach = (2 * rows - 1) * period  # steps t - reach + 1 .. t
    for lag, matters in ((0, True), (period, True), (reach - 1, True), (reach, False)):
        x2 = x.clone()
        x2[0, t - lag] += 1.0
        assert (m(x2)[0, t, 0] != base).item() == matters, lag


def test_tpgn_channels_share_weights() -> None:
    torch.manual_seed(4)
    m = TPGN(2, 2, hidden_size=4, period=3, rows=2)
    x = torch.randn(1, 12, 1)
    both = m(torch.cat([x, x], -1))
    d = m.hidden_size
    # swap the two channels' blocks of the head: the outputs swap too
    with torch.no_grad():
        w = m.head.weight.clone()
        m.head.weight.copy_(torch.cat([w[:, 2 * d :], w[:, : 2 * d]], 1))
    assert torch.allclose(m(torch.cat([x, x], -1)), both, atol=1e-6)


def _esrnn_without_network(**kw: Any) -> ESRNN:
    m = ESRNN(1, 1, hidden_size=4, **kw)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    return m


def test_esrnn_simple_exponential_smoothing() -> None:
    m = _esrnn_without_network(alpha=0.5)
    y = torch.tensor([1.0, 3.0, 2.0, 6.0]).reshape(1, 4, 1)
    # l_0 = 1, l_1 = (3 + 1) / 2 = 2, l_2 = (2 + 2) / 2 = 2, l_3 = (6 + 2) / 2 = 4
    assert m(y)[0, :, 0].tolist() == pytest.approx([1.0, 2.0, 2.0, 4.0])


def test_esrnn_holt_winters_by_hand() -> None:
    a, b, g, m_ = 0.4, 0.2, 0.3, 3
    m = _esrnn_without_network(alpha=a, beta=b, gamma=g, season=m_, trend=True)
    s0 = [0.5, -1.0, 0.25]
    with torch.no_grad():
        m.init_season.copy_(torch.tensor([s0]))
    ys = [2.0, 0.0, 3.0, 4.0, 1.0, 5.0, 6.0, 2.0]
    seas = list(s0)  # seas[t] = s_t
    lvl, trd, want = 0.0, 0.0, []
    for t, y in enumerate(ys):
        s = seas[t]
        if t == 0:
            new = y - s
        else:
            new = a * (y - s) + (1 - a) * (lvl + trd)
            trd = b * (new - lvl) + (1 - b) * trd
        lvl = new
        seas.append(g * (y - lvl) + (1 - g) * s)  # s_{t+m}
        want.append(lvl + trd + seas[t + 1])
    got = m(torch.tensor(ys).reshape(1, -1, 1))[0, :, 0]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    coefs = m.smoothing_coefficients()
    assert float(coefs["alpha"][0]) == pytest.approx(a)
    assert float(coefs["gamma"][0]) == pytest.approx(g)


def test_esrnn_network_reads_level_normalised_windows() -> None:
    m = ESRNN(1, 1, hidden_size=4, window=3)
    y = torch.tensor([1.0, 3.0, 2.0]).reshape(1, 3, 1)
    seen: list[torch.Tensor] = []
    m.rnn.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    m(y)
    level, _, _ = m.smooth(y)
    lv = level[0, :, 0].tolist()
    want = torch.tensor(
        [[1 - lv[0], 0, 0], [3 - lv[1], 1 - lv[1], 0], [2 - lv[2], 3 - lv[2], 1 - lv[2]]]
    )
    assert torch.allclose(seen[0][0], want, atol=1e-6)


def test_esrnn_quantile_layout_and_level_penalty() -> None:
    m = ESRNN(2, 6, hidden_size=4, level_penalty=3.0)
    assert m.quantiles == 3
    x = torch.randn(2, 10, 2)
    m.train()
    m(x)
    with torch.no_grad():
        level, _, _ = m.smooth(x)
    d = level[:, 1:] - level[:, :-1]
    want = 3.0 * float((d[:, 1:] - d[:, :-1]).square().mean())
    assert float(m.regularization(0.5).detach()) == pytest.approx(want, rel=1e-5)
    m.eval()
    m(x)
    assert float(m.regularization(0.5)) == 0.0


def test_mes_lstm_defaults() -> None:
    m = create_model("mes_lstm", input_size=3, output_size=3)
    assert isinstance(m, ESRNN) and m.trend and m.rnn.hidden_size == 50


@pytest.mark.parametrize(
    ("name", "kw", "arg"),
    [
        ("arnet", {"lags": 0}, "lags"),
        ("arnet", {"reg_lambda": -1.0}, "reg_lambda"),
        ("arnet", {"c1": 0.0}, "c1"),
        ("arnet", {"c2": -2.0}, "c2"),
        ("arnet", {"num_layers": -1}, "num_layers"),
        ("arnet", {"reg_start": 0.6, "reg_full": 0.5}, "reg_start"),
        ("arnet", {"lags": 2.5}, "lags"),
        ("pgn", {"window": 0}, "window"),
        ("pgn", {"hidden_size": 0}, "hidden_size"),
        ("pgn", {"num_layers": 0}, "num_layers"),
        ("tpgn", {"period": 0}, "period"),
        ("tpgn", {"rows": -1}, "rows"),
        ("esrnn", {"season": 0}, "season"),
        ("esrnn", {"window": 0}, "window"),
        ("esrnn", {"alpha": 1.0}, "alpha"),
        ("esrnn", {"gamma": 0.0}, "gamma"),
        ("esrnn", {"level_penalty": -0.1}, "level_penalty"),
        ("esrnn", {"output_size": 5}, "output_size"),
        ("mes_lstm", {"beta": 1.5}, "beta"),
        ("conv_ffn_rnn", {"kernel_size": 0}, "kernel_size"),
        ("conv_ffn_rnn", {"conv_channels": -3}, "conv_channels"),
        ("conv_ffn_rnn", {"ffn_size": 1.5}, "ffn_size"),
        ("conv_ffn_rnn", {"hidden_size": 0}, "hidden_size"),
    ],
)
def test_bad_hyperparameters_name_the_argument(name: str, kw: dict[str, Any], arg: str) -> None:
    cfg: dict[str, Any] = {"input_size": 2, "output_size": 2, **kw}
    with pytest.raises(ValueError, match=arg):
        create_model(name, **cfg)


def test_conv_ffn_rnn_front_end_reads_exactly_its_kernel() -> None:
    torch.manual_seed(0)
    model = ConvFFNRNN(3, 2, kernel_size=3, conv_channels=5, ffn_size=7, cell="gru", hidden_size=4)
    x = torch.randn(2, 10, 3)
    front = lambda v: model.norm(  # noqa: E731
        (c := torch.nn.functional.gelu(model.conv(torch.nn.functional.pad(v.mT, (2, 0))).mT))
        + model.ffn(c)
    )
    f = front(x)
    later = x.clone()
    later[:, 6] += 1.0  # moves the convolution's outputs at steps 6, 7, 8 only
    changed = (front(later) - f).abs().amax((0, 2)) > 0
    assert changed.tolist() == [False] * 6 + [True] * 3 + [False]
    assert model(x).shape == (2, 10, 2)
    assert model.rnn.output_size == 4 and model.conv.out_channels == 5
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 10, 4))


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="lagz"):
        create_model("arnet", input_size=1, output_size=1, lagz=3)
