"""State-regularised RNN (Wang & Niepert, ICML 2019): a GRU or LSTM whose hidden state is
pulled onto a finite set of learned centroids, so that the network behaves like an automaton
whose states can be read off (see :mod:`rnnkit.tasks.automata`)."""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_finite

BASES = ("gru", "lstm")


class SRState(NamedTuple):
    """State of :class:`StateRegularized`: ``h: (B, H)``, the regularised hidden state, and
    ``c: (B, H)``, the LSTM memory cell (unregularised; zeros and unused for the GRU base)."""

    h: Tensor
    c: Tensor


class StateRegularized(Cell[SRState]):
    """A GRU (or LSTM) step followed by a soft (or hard) assignment to ``k`` centroids.

    Per step, the base cell turns ``(x_t, h_{t-1})`` into a candidate ``u_t`` (the GRU's new
    state, or the LSTM's ``o * tanh(c)`` with its own ``c_t``), then::

        alpha_t = softmax(u_t S^T / tau)          # (k,) similarities to the centroids
        h_t = alpha_t S                            # soft: a convex combination
        h_t = S[argmax alpha_t]                    # hard (``hard=True``): one centroid

    with centroids ``S: (k, H)``. ``y_t = h_t``. Training uses the soft form (differentiable);
    a trained network run with ``hard=True`` moves between ``k`` discrete states, which makes
    automaton extraction exact. For the LSTM base only ``h`` is regularised: ``c`` carries
    the memory (the paper's SR-LSTM). The GRU follows torch's convention
    ``n = tanh(W_n x + b_in + r * (R_n h + b_hn))``, ``u = (1 - z) n + z h``.

    No form is declared: the centroid step mixes every unit, so the ``reference`` loop runs
    it.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``.
        centroids: ``k``, the number of centroids (the paper's default is 50; small automata
            need about twice their state count).
        temperature: ``tau > 0`` of the softmax (lower is closer to hard).
        base: ``"gru"`` or ``"lstm"``.
        hard: start in hard mode (``cell.hard = True/False`` switches later).
        straight_through: always step to the most similar centroid (largest ``alpha``: by dot
            product, not distance), training included, with the gradient of the soft mixture
            (a straight-through estimator). Not the paper's training, which is soft: a softly
            trained network can keep what it counts in the small weights of the other
            centroids (on ``tomita4``, 600 steps: 0.99 accuracy soft, 0.50 in hard mode, and a
            2-state automaton), where a straight-through one is a finite-state machine by
            construction, so its automaton is exact.
        device, dtype: for the parameters.

    Parameters: ``weight_ih: (G H, I)`` and ``weight_hh: (G H, H)`` with ``G = 3`` (GRU:
    ``[r; z; n]``) or ``4`` (LSTM: ``[i; f; g; o]``), ``U(-1/sqrt(H), 1/sqrt(H))``;
    ``bias_ih``, ``bias_hh: (G H,)``; ``centroids: (k, H)``, ``U(-0.5, 0.5)`` as the paper.
    """

    kind = "srrnn"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = SRState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        centroids: int = 16,
        temperature: float = 1.0,
        base: str = "gru",
        hard: bool = False,
        straight_through: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("centroids", centroids)
        self.temperature = check_finite("temperature", temperature, positive=True)
        if base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
        self.base = base
        self.hard = bool(hard)
        self.straight_through = bool(straight_through)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        gates = 3 if base == "gru" else 4
        self.projected_size = gates * hidden_size

        def empty(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))

        self.weight_ih = empty(gates * hidden_size, input_size)
        self.weight_hh = empty(gates * hidden_size, hidden_size)
        self.bias_ih = empty(gates * hidden_size)
        self.bias_hh = empty(gates * hidden_size)
        self.centroids = empty(centroids, hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Base weights ``U(-1/sqrt(H), 1/sqrt(H))``; centroids ``U(-0.5, 0.5)``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(p, -bound, bound)
        nn.init.uniform_(self.centroids, -0.5, 0.5)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField("h", (self.hidden_size,), doc="regularised hidden state"),
            StateField("c", (self.hidden_size,), doc="LSTM memory cell (GRU: unused zeros)"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., G H)``: ``W_ih x + b_ih``."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def assignment(self, u: Tensor) -> Tensor:
        """``alpha: (..., k)``, the softmax over the centroid similarities of ``u: (..., H)``."""
        return torch.softmax(F.linear(u, self.centroids) / self.temperature, dim=-1)

    def regularise(self, u: Tensor) -> Tensor:
        """``(..., H)``: the soft mixture of centroids; in hard mode the one of largest
        ``alpha`` (the largest dot product ``u . s_i``, not the nearest in distance); with
        ``straight_through``, that one carrying the soft mixture's gradient."""
        alpha = self.assignment(u)
        soft = alpha @ self.centroids
        if not (self.hard or self.straight_through):
            return soft
        # argmax of alpha = argmax of the similarities; a NaN in u stays NaN through soft
        pick = self.centroids[alpha.argmax(-1)]
        return soft + (pick - soft).detach() if self.straight_through else pick + 0.0 * soft

    def recur(self, px_t: Tensor, state: SRState) -> tuple[Tensor, SRState]:
        h, c = state
        ph = F.linear(h, self.weight_hh, self.bias_hh)
        if self.base == "gru":
            x_r, x_z, x_n = px_t.chunk(3, dim=-1)
            h_r, h_z, h_n = ph.chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            u = n + z * (h - n)  # (1 - z) n + z h
        else:
            i, f, g, o = (px_t + ph).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            u = torch.sigmoid(o) * torch.tanh(c)
        h = self.regularise(u)
        return h, SRState(h, c)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, centroids={self.centroids.shape[0]}, "
            f"temperature={self.temperature}, base={self.base!r}, hard={self.hard}, "
            f"straight_through={self.straight_through}"
        )
