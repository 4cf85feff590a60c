"""The Linear Recurrent Unit (Orvieto et al. 2023): a complex diagonal linear RNN."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int


def _real_compute(dtype: torch.dtype) -> torch.dtype:
    """The real dtype LRU computes in: float64 stays, anything narrower runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LRU(DiagonalLinearCell):
    """LRU: ``h_t = lambda * h_{t-1} + gamma * (B x_t)``, ``y_t = Re(C h_t) + D * x_t``.

    ``lambda = exp(-exp(nu_log) + i exp(theta_log))`` is a complex diagonal (``|lambda| < 1``
    for every finite ``nu_log``), ``gamma = exp(gamma_log)`` is initialised to
    ``sqrt(1 - |lambda|^2)`` (the normalisation that keeps the state's variance near the
    input's), ``B, C`` are complex and ``D`` is a real skip connection. The state is complex
    ``h: (B, N)`` with ``N = hidden_size``; ``y`` is real with the input's width.

    It is a :class:`~rnnkit.core.linear.DiagonalLinearCell`, so the ``scan`` backends run it.
    Parameters are stored in the cell's dtype; the recurrence runs in complex64 (complex128
    for float64 cells), and bfloat16/float16 outputs are rounded once at the end.

    Args:
        input_size: ``I``, the width of ``x`` and ``y``.
        hidden_size: ``N``, the number of complex state channels.
        r_min, r_max: the ring ``r_min <= |lambda| <= r_max`` the eigenvalues are drawn from
            (uniformly by area).
        max_phase: phases ``arg(lambda)`` are drawn from ``U(0, max_phase)``.
    """

    kind = "lru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        r_min: float = 0.4,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = input_size
        self.projected_size = 2 * hidden_size + input_size
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        N, I = hidden_size, input_size  # noqa: E741
        self.nu_log = nn.Parameter(torch.empty(N, **kw))
        self.theta_log = nn.Parameter(torch.empty(N, **kw))
        self.gamma_log = nn.Parameter(torch.empty(N, **kw))
        self.B_re = nn.Parameter(torch.empty(N, I, **kw))
        self.B_im = nn.Parameter(torch.empty(N, I, **kw))
        self.C_re = nn.Parameter(torch.empty(I, N, **kw))
        self.C_im = nn.Parameter(torch.empty(I, N, **kw))
        self.D = nn.Parameter(torch.empty(I, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The LRU ring initialisation (see the class docstring)."""
        N, I = self.hidden_size, self.input_size  # noqa: E741
        u1 = torch.rand(N, dtype=torch.float64)
        u2 = torch.rand(N, dtype=torch.float64)
        r2 = u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2
        nu_log = torch.log(-0.5 * torch.log(r2))
        theta_log = torch.log(self.max_phase * u2.clamp_min(1e-4))
        mod = torch.exp(-torch.exp(nu_log))
        self.nu_log.copy_(nu_log)
        self.theta_log.copy_(theta_log)
        self.gamma_log.copy_(torch.log(torch.sqrt(1 - mod**2)))
        nn.init.normal_(self.B_re, std=1 / math.sqrt(2 * I))
        nn.init.normal_(self.B_im, std=1 / math.sqrt(2 * I))
        nn.init.normal_(self.C_re, std=1 / math.sqrt(N))
        nn.init.normal_(self.C_im, std=1 / math.sqrt(N))
        nn.init.normal_(self.D)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), complex=True, doc="complex state"),)

    def eigenvalues(self) -> Tensor:
        """``lambda: (N,)`` complex, ``exp(-exp(nu_log) + i exp(theta_log))``."""
        rd = _real_compute(self.nu_log.dtype)
        return torch.exp(
            torch.complex(-torch.exp(self.nu_log.to(rd)), torch.exp(self.theta_log.to(rd)))
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., 2N + I)``: ``[Re(gamma B x), Im(gamma B x), x]``."""
        gamma = torch.exp(self.gamma_log)
        re = torch.nn.functional.linear(x, self.B_re) * gamma
        im = torch.nn.functional.linear(x, self.B_im) * gamma
        return torch.cat((re, im, x), -1)

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        """``a = lambda`` broadcast to ``(..., N)`` and ``b = gamma B x`` (complex)."""
        N = self.hidden_size
        rd = _real_compute(px.dtype)
        b = torch.complex(px[..., :N].to(rd), px[..., N : 2 * N].to(rd))
        a = self.eigenvalues().to(b.dtype).expand(b.shape)
        return a, b

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        """``y = Re(C h) + D x``: ``(..., N) complex -> (..., I)`` in ``px``'s dtype."""
        rd = h.real.dtype
        y = torch.nn.functional.linear(h.real, self.C_re.to(rd)) - torch.nn.functional.linear(
            h.imag, self.C_im.to(rd)
        )
        x = px[..., 2 * self.hidden_size :]
        return (y + self.D.to(rd) * x.to(rd)).to(px.dtype)
