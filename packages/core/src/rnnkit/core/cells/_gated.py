"""Shared machinery of the gated form: input projection plus block-diagonal recurrence."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField, StateT
from rnnkit.core.validation import check_heads, check_positive_int


class GatedCell(Cell[StateT]):
    """Base class of cells of the gated form: ``g_t = W x_t + b + R h_{t-1}``.

    Parameters (torch's gate-major layout, so torch weights load with a reshape):
        weight_ih: ``(G * H, input_size)``, row ``g * H + j`` is gate ``g`` of unit ``j``.
        bias: ``(G * H,)``, the merged input and recurrent biases (absent if ``bias=False``).
        recurrent: ``(G, N, D, D)`` with ``N = heads`` and ``D = H / heads``;
            ``recurrent[g, n, e, d]`` maps unit ``d`` to unit ``e`` of head ``n`` in gate ``g``.
            ``heads=1`` is a dense ``H x H`` matrix per gate.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``h``; must be divisible by ``heads``.
        heads: number of independent blocks of the recurrent matrix.
        bias: whether to learn the bias.
        device, dtype: for the parameters.
    """

    forms: ClassVar[frozenset[Form]] = frozenset({Form.GATED})
    num_gates: ClassVar[int]
    #: names of the gates in layout order, for documentation and kernels.
    gate_names: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        G, H = self.num_gates, hidden_size
        self.input_size = input_size
        self.hidden_size = H
        self.output_size = H
        self.projected_size = G * H
        self.heads = heads
        self.head_dim = H // heads
        D = self.head_dim
        self.weight_ih = nn.Parameter(torch.empty(G * H, input_size, device=device, dtype=dtype))
        self.recurrent = nn.Parameter(torch.empty(G, heads, D, D, device=device, dtype=dtype))
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.empty(G * H, device=device, dtype=dtype)) if bias else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ``U(-1/sqrt(H), 1/sqrt(H))``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def state_spec(self) -> tuple[StateField, ...]:
        return tuple(
            StateField(name, (self.hidden_size,), doc=doc) for name, doc in self._state_docs()
        )

    def _state_docs(self) -> tuple[tuple[str, str], ...]:
        return (("h", "hidden state"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., input_size) -> (..., G * H)``: ``x W^T + b``, gate-major."""
        return F.linear(x, self.weight_ih, self.bias)

    def recurrent_term(self, h: Tensor) -> Tensor:
        """``(B, H) -> (B, G * H)``: ``R h`` with the block-diagonal ``R``, gate-major."""
        G, N, D = self.num_gates, self.heads, self.head_dim
        if N == 1:
            return F.linear(h, self.recurrent.reshape(G * D, D))
        out = torch.einsum("gned,bnd->bgne", self.recurrent, h.reshape(h.shape[0], N, D))
        return out.reshape(h.shape[0], G * N * D)

    def dense_recurrent(self) -> Tensor:
        """The recurrent weights as one dense ``(G * H, H)`` matrix (block-diagonal per gate)."""
        block_diag = cast(Callable[..., Tensor], torch.block_diag)  # untyped in torch's stubs
        blocks = [block_diag(*self.recurrent[g].unbind(0)) for g in range(self.num_gates)]
        return torch.cat(blocks, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, bias={self.bias is not None}"
