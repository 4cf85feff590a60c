"""Forecasting networks of the literature, as per-step forecasters for ``regress`` tasks.

Every model here maps inputs ``x: (B, T, input_size)`` (the series up to step ``t``) to
outputs ``(B, T, output_size)`` (the forecast of step ``t + 1`` made at step ``t``) and is
causal: output ``t`` depends on ``x[:, :t + 1]`` only.

* :class:`ARNet` (Triebe et al., arXiv 1911.12436): a linear layer over the last ``lags``
  steps, with AR-Net's sparsity regulariser.
* :class:`PGN` and :class:`TPGN` (Jia et al., NeurIPS 2024, arXiv 2409.17703): the Parallel
  Gated Network (a linear map over the whole history plus a gated fusion) and its temporal
  2-D variant (periods x phases, long- and short-term branches).
* :class:`ESRNN` (Smyl, IJF 2020; Mathonsi & van Zyl, MES-LSTM, 2022): per-channel
  Holt-Winters exponential smoothing with learned smoothing coefficients and a recurrent
  network on the deseasonalised, level-normalised series; quantile outputs for prediction
  intervals.
* :class:`ConvFFNRNN` (after Spadon, Ferreira et al., IEEE Access 2023, arXiv 2202.13867):
  a causal 1-D convolution over the recent track features (time gaps included), a
  feed-forward block and a recurrent stack, for irregularly reported vessel tracks.

Models with a training penalty (:class:`ARNet`'s sparsity, :class:`ESRNN`'s level
variability) expose ``regularization(progress) -> Tensor``, a scalar the trainer adds to the
mean training loss (``progress`` = step / steps, in ``[0, 1]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.recurrent import Recurrent


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _nonnegative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def lagged(x: Tensor, lags: int) -> Tensor:
    """The last ``lags`` steps at every step, newest first, zeros before the start.

    ``x: (B, T, D)`` -> ``(B, T, lags, D)`` with ``out[:, t, i] = x[:, t - i]`` (``0`` where
    ``t - i < 0``).
    """
    padded = F.pad(x, (0, 0, lags - 1, 0))  # (B, T + lags - 1, D)
    win = padded.unfold(1, lags, 1)  # (B, T, D, lags), oldest first
    return win.flip(-1).transpose(-1, -2)


# --- AR-Net ------------------------------------------------------------------------------------


def arnet_sparsity(weights: Tensor, c1: float = 3.0, c2: float = 3.0) -> Tensor:
    """AR-Net's sparsity regulariser ``R(w) = mean_i [2 / (1 + exp(-c1 |w_i|^(1/c2))) - 1]``.

    ``R`` is 0 at ``w = 0`` and tends to 1 as ``|w|`` grows; its slope is unbounded at 0
    (for ``c2 > 1``), which pulls small weights to exactly zero while barely shrinking large
    ones. ``weights``: any shape; returns a scalar.
    """
    a = weights.abs()
    nonzero = a > 0
    # the slope of |w|^(1/c2) is infinite at 0: keep exact zeros out of the power (a zero
    # weight gets no gradient from R, which is where R wants it)
    mag = torch.where(nonzero, torch.where(nonzero, a, torch.ones_like(a)).pow(1.0 / c2), a)
    return (2.0 * torch.sigmoid(c1 * mag) - 1.0).mean()


class ARNet(nn.Module):
    """AR-Net: ``ŷ_{t+1} = Σ_{i=1..lags} W_i x_{t+1-i} + b`` (a vector AR model for ``D > 1``).

    With ``num_layers > 0`` the lags pass through that many ReLU layers of ``hidden_size``
    first (AR-Net's hidden-layer variant); the regulariser then acts on the first layer.

    Args:
        input_size: channels ``D`` of the series.
        output_size: forecast channels (``input_size`` for a point forecast).
        lags: the model order ``p`` (how many past steps the layer reads).
        num_layers: hidden layers before the output layer (0: AR-Net proper, linear).
        hidden_size: width of the hidden layers (unused when ``num_layers == 0``).
        reg_lambda: the regulariser's full weight ``λ_max`` (0: no regulariser).
        c1, c2: the regulariser's shape (the paper uses 3 and 3).
        reg_start, reg_full: training progress (fractions of the steps) at which the weight
            starts to rise from 0 and reaches ``λ_max`` (quadratically in between).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        lags: int = 16,
        num_layers: int = 0,
        hidden_size: int = 32,
        reg_lambda: float = 0.0,
        c1: float = 3.0,
        c2: float = 3.0,
        reg_start: float = 0.0,
        reg_full: float = 0.5,
    ) -> None:
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.output_size = _positive_int("output_size", output_size)
        self.lags = _positive_int("lags", lags)
        self.num_layers = _nonnegative_int("num_layers", num_layers)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.reg_lambda = _nonnegative("reg_lambda", reg_lambda)
        self.c1 = _positive("c1", c1)
        self.c2 = _positive("c2", c2)
        self.reg_start = _nonnegative("reg_start", reg_start)
        self.reg_full = _positive("reg_full", reg_full)
        if not self.reg_start < self.reg_full <= 1.0:
            raise ValueError(
                f"reg_start and reg_full must satisfy 0 <= reg_start < reg_full <= 1, "
                f"got {reg_start!r} and {reg_full!r}"
            )
        width = self.lags * self.input_size
        layers: list[nn.Module] = []
        for _ in range(self.num_layers):
            layers += [nn.Linear(width, self.hidden_size), nn.ReLU()]
            width = self.hidden_size
        layers.append(nn.Linear(width, self.output_size))
        self.net = nn.Sequential(*layers)
        # AR-Net starts from zero coefficients: the regulariser then only has to keep the
        # unused lags where they are, and the fit is the same as least squares
        if self.num_layers == 0:
            nn.init.zeros_(self.first_layer.weight)
            nn.init.zeros_(self.first_layer.bias)

    @property
    def first_layer(self) -> nn.Linear:
        """The layer reading the lags (its weight is what the regulariser sparsifies)."""
        layer = self.net[0]
        assert isinstance(layer, nn.Linear)
        return layer

    def coefficients(self) -> Tensor:
        """The AR coefficients ``(output_size, lags, input_size)``: ``[o, i - 1, d]`` weighs
        ``x_{t+1-i}`` of channel ``d`` in output ``o``. Only for ``num_layers == 0``."""
        if self.num_layers:
            raise ValueError("coefficients() needs the linear AR-Net (num_layers=0)")
        w = self.first_layer.weight.detach()
        return w.reshape(self.output_size, self.lags, self.input_size)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` -> one-step forecasts ``(B, T, output_size)``.

        ``backend`` is accepted for the model contract and unused (no recurrent cell).
        """
        lags = lagged(x, self.lags)  # (B, T, lags, D), newest first
        out: Tensor = self.net(lags.flatten(2))
        return out

    def reg_weight(self, progress: float) -> float:
        """``λ`` at training ``progress``: 0 before ``reg_start``, then ``λ_max · r²`` with
        ``r`` rising linearly to 1 at ``reg_full``."""
        r = (progress - self.reg_start) / (self.reg_full - self.reg_start)
        return self.reg_lambda * min(max(r, 0.0), 1.0) ** 2

    def regularization(self, progress: float) -> Tensor:
        """``λ(progress) · R(W)`` over the first layer's weight (a scalar)."""
        w = self.first_layer.weight
        lam = self.reg_weight(progress)
        if lam == 0.0:
            return w.new_zeros(())
        return lam * arnet_sparsity(w, self.c1, self.c2)


# --- PGN / TPGN --------------------------------------------------------------------------------


class PGNLayer(nn.Module):
    """One Parallel Gated Network layer over ``(B, T, input_size)``.

    ``H = HIE(pad(X))``: every step's ``H_t`` is a linear map of the last ``window`` inputs
    (zeros before the start), a causal convolution of width ``window``: every past step
    reaches ``H_t`` through one linear map, and all steps are computed at once. Then
    ``G = σ(W_g [X, H] + b_g)``, ``Ĥ = tanh(W_h [X, H] + b_h)`` and
    ``out = G ⊙ H + (1 - G) ⊙ Ĥ`` of width ``hidden_size``.
    """

    def __init__(self, input_size: int, hidden_size: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.hie = nn.Conv1d(input_size, hidden_size, window)
        self.gates = nn.Linear(input_size + hidden_size, 2 * hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, T, input_size)`` -> ``(B, T, hidden_size)``."""
        h = self.hie(F.pad(x.transpose(1, 2), (self.window - 1, 0))).transpose(1, 2)
        g, cand = self.gates(torch.cat([x, h], -1)).chunk(2, -1)
        gate = torch.sigmoid(g)
        out: Tensor = gate * h + (1.0 - gate) * torch.tanh(cand)
        return out


class PGN(nn.Module):
    """PGN forecaster: ``num_layers`` :class:`PGNLayer` of ``hidden_size``, then a linear head.

    Args:
        input_size, output_size: channels of the series and of the forecast.
        hidden_size: width of every PGN layer.
        num_layers: stacked PGN layers.
        window: steps of history each layer's HIE reads (the paper reads the whole input,
            ``L - 1`` steps; set it to at least the task's window length for that).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        hidden_size: int = 32,
        num_layers: int = 1,
        window: int = 64,
    ) -> None:
        super().__init__()
        _positive_int("input_size", input_size)
        _positive_int("output_size", output_size)
        _positive_int("hidden_size", hidden_size)
        _positive_int("num_layers", num_layers)
        _positive_int("window", window)
        sizes = [input_size] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(
            PGNLayer(sizes[i], hidden_size, window) for i in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` -> ``(B, T, output_size)`` (``backend`` unused)."""
        for layer in self.layers:
            x = layer(x)
        out: Tensor = self.head(x)
        return out


class TPGN(nn.Module):
    """Temporal PGN: the history as a 2-D grid of periods (rows) x phases, two branches.

    TPGN lays a context of ``rows * period`` steps out as ``rows`` consecutive periods of
    ``period`` phases, so a column holds one phase across periods. Every input channel is
    processed separately with shared weights (TPGN's channel independence); here the grid
    moves with the forecast step ``t`` (its last row ends at ``t``), and every operation is a
    causal convolution over the whole series, so all steps are computed at once:

    * Long-term branch: a :class:`PGNLayer`-style gated layer whose HIE reads the same phase
      ``rows`` periods back, ``H_t = Σ_{k<rows} W_k x_{t-k·period}`` (a causal convolution
      dilated by ``period``), ``z_t = G_t ⊙ H_t + (1 - G_t) ⊙ tanh(W_h [x_t, H_t] + b_h)``;
      then a linear map over the rows (``u_t = Σ_k a_k z_{t-k·period}``) and a linear map
      over the phases of the last period (``Σ_{j<period} V_j u_{t-j}``) to ``hidden_size``.
    * Short-term branch: a linear map of each period of consecutive steps to ``hidden_size``
      (``q_t = Σ_{j<period} U_j x_{t-j}``), then a linear map over the rows
      (``Σ_k c_k q_{t-k·period}``).

    A linear head maps the two branches' features of all channels to ``output_size``. Zeros
    stand before the start of the series. Each forecast reads up to
    ``(2 rows - 1) * period`` steps: the long branch's HIE at the oldest row of the grid
    reaches ``rows`` periods further back.

    Args:
        input_size, output_size: channels of the series and of the forecast.
        hidden_size: features per branch (the paper's ``d_model``).
        period: phases per row (the paper's ``TPGN_period``; 12 for monthly data).
        rows: periods in the grid.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        hidden_size: int = 32,
        period: int = 12,
        rows: int = 4,
    ) -> None:
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.output_size = _positive_int("output_size", output_size)
        d = self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.period = _positive_int("period", period)
        self.rows = _positive_int("rows", rows)
        R, P = self.rows, self.period
        self.long_hie = nn.Conv1d(1, d, R, dilation=P)
        self.long_gates = nn.Linear(1 + d, 2 * d)
        self.long_rows = nn.Parameter(torch.full((R,), 1.0 / R))
        self.long_phases = nn.Conv1d(d, d, P)
        self.short_row = nn.Conv1d(1, d, P)
        self.short_rows = nn.Parameter(torch.full((R,), 1.0 / R))
        self.short_bias = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(input_size * 2 * d, output_size)

    @property
    def context(self) -> int:
        """The grid's steps: ``rows * period``."""
        return self.rows * self.period

    def _over_rows(self, z: Tensor, weights: Tensor) -> Tensor:
        """``Σ_k weights[k] z_{t-k·period}`` over ``z: (N, d, T)`` (one weight per row)."""
        R, P = self.rows, self.period
        kernel = weights.flip(0).expand(z.shape[1], 1, R)  # the newest row is the last tap
        return F.conv1d(F.pad(z, ((R - 1) * P, 0)), kernel, dilation=P, groups=z.shape[1])

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` -> ``(B, T, output_size)`` (``backend`` unused)."""
        B, T, C = x.shape
        R, P = self.rows, self.period
        xc = x.permute(0, 2, 1).reshape(B * C, 1, T)
        # long-term branch
        h = self.long_hie(F.pad(xc, ((R - 1) * P, 0)))  # (N, d, T)
        g, cand = self.long_gates(torch.cat([xc, h], 1).transpose(1, 2)).chunk(2, -1)
        gate = torch.sigmoid(g).transpose(1, 2)
        z = gate * h + (1.0 - gate) * torch.tanh(cand).transpose(1, 2)
        u = self._over_rows(z, self.long_rows)
        long = self.long_phases(F.pad(u, (P - 1, 0)))  # (N, d, T)
        # short-term branch
        q = self.short_row(F.pad(xc, (P - 1, 0)))  # (N, d, T)
        short = self._over_rows(q, self.short_rows) + self.short_bias[:, None]
        feats = torch.cat([long, short], 1)  # (N, 2d, T)
        feats = feats.reshape(B, C, 2 * self.hidden_size, T).permute(0, 3, 1, 2)
        out: Tensor = self.head(feats.reshape(B, T, -1))
        return out


# --- ES-RNN / MES-LSTM -------------------------------------------------------------------------


def _unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return float(value)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class ESRNN(nn.Module):
    """Exponential smoothing + recurrent network (ES-RNN; MES-LSTM for several channels).

    Per channel ``c`` (each example's own level, trend and seasonal states; smoothing
    coefficients ``α, β, γ = sigmoid(·)`` learned per channel), additive Holt-Winters:

    * ``l_t = α (y_t - s_t) + (1 - α)(l_{t-1} + b_{t-1})`` (``l_0 = y_0 - s_0``),
    * ``b_t = β (l_t - l_{t-1}) + (1 - β) b_{t-1}`` (only with ``trend``; else ``b = 0``),
    * ``s_{t+m} = γ (y_t - l_t) + (1 - γ) s_t`` with ``m = season``; ``s_0 .. s_{m-1}``
      are learned per channel (without seasonality, ``season = 1``, ``s = 0``).

    The recurrent stack reads, at step ``t``, every channel's last ``window`` deseasonalised
    values relative to the current level, ``y_{t-j} - s_{t-j} - l_t`` for ``j < window``
    (0 before the start), and a linear head gives ``Q`` values per channel; forecast
    ``ŷ_{t+1} = l_t + b_t + s_{t+1} + NN_q(h_t)``. Output channel ``c * Q + q`` is value
    ``q`` of channel ``c`` (``Q = output_size / input_size``: the quantiles of a task trained
    with the pinball loss, or 1 for a point forecast).

    This is ES-RNN's multiplicative model in log space: on a log series, ``y - s - l`` is
    ``log(y / (s l))``. The series of the rnnkit tasks are logged or z-scored (they may be
    negative), so the model is additive.

    Args:
        input_size: channels ``C`` of the series.
        output_size: ``C * Q``.
        season: the seasonal period ``m`` in steps (1: no seasonality).
        window: past steps the network reads at each step.
        trend: a smoothed trend ``b_t`` (Holt's linear trend, as in MES-LSTM).
        cell, hidden_size, num_layers, dropout: of the recurrent stack.
        level_penalty: weight of ES-RNN's level variability penalty
            ``mean((Δl_t - Δl_{t-1})²)`` added in training (0: none).
        alpha, beta, gamma: initial smoothing coefficients, in ``(0, 1)``.
        **cell_kwargs: passed to the cells.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        season: int = 1,
        window: int = 8,
        trend: bool = False,
        cell: str = "lstm",
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
        level_penalty: float = 0.0,
        alpha: float = 0.5,
        beta: float = 0.1,
        gamma: float = 0.3,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.output_size = _positive_int("output_size", output_size)
        if output_size % input_size:
            raise ValueError(
                f"output_size must be a multiple of input_size (Q values per channel), "
                f"got {output_size} and {input_size}"
            )
        self.quantiles = output_size // input_size
        self.season = _positive_int("season", season)
        self.window = _positive_int("window", window)
        self.trend = bool(trend)
        self.level_penalty = _nonnegative("level_penalty", level_penalty)
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            _unit_interval(name, value)
        C = input_size
        self.alpha_logit = nn.Parameter(torch.full((C,), _logit(alpha)))
        self.beta_logit = nn.Parameter(torch.full((C,), _logit(beta)))
        self.gamma_logit = nn.Parameter(torch.full((C,), _logit(gamma)))
        self.init_season = nn.Parameter(torch.zeros(C, self.season))
        self.rnn = Recurrent(
            cell,
            C * self.window,
            _positive_int("hidden_size", hidden_size),
            _positive_int("num_layers", num_layers),
            dropout=dropout,
            **cell_kwargs,
        )
        self.head = nn.Linear(self.rnn.output_size, output_size)
        self._penalty: Tensor | None = None

    def smooth(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the smoothing over ``x: (B, T, C)``.

        Returns ``(level, trend, season)``: ``level[:, t]`` is ``l_t`` and ``trend[:, t]``
        ``b_t`` (``(B, T, C)``), and ``season: (B, T + 1, C)`` holds ``s_t`` for
        ``t = 0 .. T`` (``s_T`` is the index of the first step after the input).
        """
        B, T, C = x.shape
        m = self.season
        alpha = torch.sigmoid(self.alpha_logit)
        beta = torch.sigmoid(self.beta_logit)
        gamma = torch.sigmoid(self.gamma_logit)
        seasonal = m > 1
        buf = list(self.init_season.to(x.dtype).unbind(-1)) if seasonal else []
        zero = x.new_zeros(B, C)
        buf = [s.expand(B, C) for s in buf]
        levels, trends, seasons = [], [], []
        prev_l: Tensor | None = None
        b = zero
        for t in range(T):
            y = x[:, t]
            s = buf[t % m] if seasonal else zero
            seasons.append(s)
            # l_0 = y_0 - s_0: the first step starts the level
            lvl = y - s if prev_l is None else alpha * (y - s) + (1.0 - alpha) * (prev_l + b)
            if self.trend and prev_l is not None:
                b = beta * (lvl - prev_l) + (1.0 - beta) * b
            if seasonal:
                buf[t % m] = gamma * (y - lvl) + (1.0 - gamma) * s
            levels.append(lvl)
            trends.append(b)
            prev_l = lvl
        seasons.append(buf[T % m] if seasonal else zero)
        return torch.stack(levels, 1), torch.stack(trends, 1), torch.stack(seasons, 1)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` -> ``(B, T, output_size)`` one-step forecasts."""
        B, T, C = x.shape
        level, trend, season = self.smooth(x.float())
        deseason = x.float() - season[:, :T]  # y_t - s_t
        win = lagged(deseason, self.window)  # (B, T, window, C)
        valid = lagged(torch.ones_like(deseason), self.window)
        feats = (win - level[:, :, None]) * valid  # 0 before the start
        h, _ = self.rnn(feats.flatten(2), backend=backend)
        nn_out = self.head(h).reshape(B, T, C, self.quantiles)
        base = level + trend + season[:, 1:]  # l_t + b_t + s_{t+1}
        out: Tensor = (base[..., None] + nn_out).reshape(B, T, self.output_size)
        if self.training and self.level_penalty > 0 and T >= 3:
            d = level[:, 1:] - level[:, :-1]
            self._penalty = (d[:, 1:] - d[:, :-1]).square().mean()
        else:
            self._penalty = None
        return out.to(x.dtype)

    def smoothing_coefficients(self) -> dict[str, Tensor]:
        """The learned ``alpha``, ``beta`` and ``gamma`` per channel (``(C,)`` each)."""
        return {
            "alpha": torch.sigmoid(self.alpha_logit.detach()),
            "beta": torch.sigmoid(self.beta_logit.detach()),
            "gamma": torch.sigmoid(self.gamma_logit.detach()),
        }

    def regularization(self, progress: float) -> Tensor:
        """``level_penalty ·`` the level variability of the last training forward (a scalar;
        0 without a penalty or before any training forward)."""
        if self._penalty is None:
            return self.alpha_logit.new_zeros(())
        return self._penalty * self.level_penalty


# --- CNN + FFN + RNN (vessel tracks) ----------------------------------------------------------


class ConvFFNRNN(nn.Module):
    """Causal convolution -> feed-forward block -> recurrent stack -> linear head.

    For irregularly sampled tracks whose features include the time gaps (the ``vessels``
    task): at step ``t``

    * ``c_t = GELU(Σ_{j<k} W_j x_{t-j} + b)`` (a 1-D convolution over the last ``kernel_size``
      steps, zeros before the start, ``conv_channels`` wide),
    * ``f_t = LayerNorm(c_t + W_2 GELU(W_1 c_t))`` (the feed-forward block, ``ffn_size`` inner),
    * ``h_t = RNN(f_1..f_t)`` (any registered cell, ``num_layers`` deep),
    * ``ŷ_t = W_o h_t + b_o``.

    The convolution is causal, so output ``t`` depends on ``x[:, :t + 1]`` only. The state
    is the recurrent stack's (``(num_layers, B, hidden_size)`` per field for an LSTM).

    Args:
        input_size: features per step.
        output_size: outputs per step.
        kernel_size: the convolution's width in steps.
        conv_channels: the convolution's output channels.
        ffn_size: the feed-forward block's inner width.
        cell, hidden_size, num_layers, dropout: of the recurrent stack.
        **cell_kwargs: passed to the cells.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        kernel_size: int = 4,
        conv_channels: int = 64,
        ffn_size: int = 128,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.output_size = _positive_int("output_size", output_size)
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        width = _positive_int("conv_channels", conv_channels)
        inner = _positive_int("ffn_size", ffn_size)
        self.conv = nn.Conv1d(input_size, width, self.kernel_size)
        self.ffn = nn.Sequential(nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width))
        self.norm = nn.LayerNorm(width)
        self.rnn = Recurrent(
            cell,
            width,
            _positive_int("hidden_size", hidden_size),
            _positive_int("num_layers", num_layers),
            dropout=dropout,
            **cell_kwargs,
        )
        self.head = nn.Linear(self.rnn.output_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` -> ``(B, T, output_size)``."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        # left padding only: step t sees steps t - k + 1 .. t
        padded = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        c = F.gelu(self.conv(padded)).transpose(1, 2)  # (B, T, conv_channels)
        f = self.norm(c + self.ffn(c))
        h, _ = self.rnn(f, backend=backend)
        out: Tensor = self.head(h)
        return out


# --- builders (registered by rnnkit.models._plugin) --------------------------------------------


def arnet(**cfg: Any) -> ARNet:
    """AR-Net: linear AR(p) over the last `lags` steps, sparsity regulariser (reg_lambda)"""
    return ARNet(**cfg)


def pgn(**cfg: Any) -> PGN:
    """Parallel Gated Network: linear history map (HIE) + gated fusion, per-step forecasts"""
    return PGN(**cfg)


def tpgn(**cfg: Any) -> TPGN:
    """Temporal PGN: context as periods x phases, long- and short-term branches"""
    return TPGN(**cfg)


def esrnn(**cfg: Any) -> ESRNN:
    """ES-RNN: learned Holt-Winters smoothing + RNN on the normalised series, quantiles"""
    return ESRNN(**cfg)


def mes_lstm(**cfg: Any) -> ESRNN:
    """MES-LSTM: ES-RNN with a smoothed trend and an LSTM of 50 over all channels"""
    cfg.setdefault("trend", True)
    cfg.setdefault("cell", "lstm")
    cfg.setdefault("hidden_size", 50)
    return ESRNN(**cfg)


def conv_ffn_rnn(**cfg: Any) -> ConvFFNRNN:
    """CNN + FFN + RNN (Spadon et al.): causal conv over track features, FFN, recurrent stack"""
    return ConvFFNRNN(**cfg)
