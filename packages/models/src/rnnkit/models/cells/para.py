"""ParaRNN-style cells with diagonal recurrences: :class:`ParaGRU` and :class:`ParaLSTM`.

Both declare :attr:`~rnnkit.core.forms.Form.DIAGONAL_JACOBIAN` and implement the
diagonal-Jacobian protocol that Newton kernels call by duck typing (see
``docs/kernels-newton.md``). The state is packed into one tensor ``z``:

- ``newton_block = 1`` (ParaGRU): ``z: (B, H)``, the Jacobian is ``J: (..., H)``.
- ``newton_block = 2`` (ParaLSTM): ``z: (B, H, 2)`` with ``z[..., 0] = h`` and
  ``z[..., 1] = c`` (the state fields' order), the Jacobian is ``J: (..., H, 2, 2)`` with
  ``J[..., i, j] = d z_t[..., i] / d z_{t-1}[..., j]``.

Protocol methods (``P = projected_size``, ``S`` the packed state shape):

- ``pack_state(state) -> z: (B, *S)`` and ``unpack_state(z) -> state``;
- ``recur_parallel(px, z_prev) -> z``: ``(B, T, P), (B, T, *S) -> (B, T, *S)``, the step
  function applied at every position at once;
- ``jacobian_diag(px, z_prev) -> J``: ``(B, T, H)`` or ``(B, T, H, 2, 2)``;
- ``recur_parallel_with_jacobian(px, z_prev) -> (z, J)``: both at once (cheaper);
- ``readout_parallel(px, z) -> y: (B, T, output_size)``;
- ParaGRU also has ``recur_parallel_newton(px, z_prev, scratch=) -> (f, jacobian)`` (``f`` now,
  ``J`` on demand from the same gates), ``recur_parallel_vjp(px, z_prev, adjoint, scratch=,
  out=) -> (dpx, grads)``, the Newton backward's analytic vector-Jacobian product (the kernel
  falls back to autograd without it), and ``newton_scratch``, the number of state-shaped
  arrays in the ``scratch`` buffer the kernel lends them so that its tiles allocate nothing.

The Newton-path methods (``recur_parallel_with_jacobian``, ``recur_parallel_newton``,
``recur_parallel_vjp``) return values only, computed without autograd and with in-place ops on
their own temporaries; ``recur`` and ``recur_parallel`` are the differentiable definitions. All
methods work on any leading dimensions (the kernel passes time-major tiles, ``(L, B, ...)``).

``recur`` is the sequential step and the reference the Newton solution must equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField, StateT
from rnnkit.core.validation import check_positive_int


class ParaGRUState(NamedTuple):
    """State of :class:`ParaGRU`: ``h: (B, H)``."""

    h: Tensor


class ParaLSTMState(NamedTuple):
    """State of :class:`ParaLSTM`: ``h: (B, H)`` and the cell ``c: (B, H)``."""

    h: Tensor
    c: Tensor


class _ParaCell(Cell[StateT]):
    """What ParaGRU and ParaLSTM share: sizes, the input projection ``weight_ih: (3H, I)`` and
    ``bias: (3H,)``, and the diagonal recurrent weights ``recurrent: (3, H)``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = 3 * hidden_size
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size, device=device, dtype=dtype))
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.empty(3 * H, device=device, dtype=dtype)) if bias else None
        )
        self.recurrent = nn.Parameter(torch.empty(3, H, device=device, dtype=dtype))


class ParaGRU(_ParaCell[ParaGRUState]):
    """ParaRNN's GRU with diagonal recurrent weights (``a_z, a_r, a_h: (H,)``).

    With ``px = W x_t + b`` split into ``(p_z, p_r, p_h)``::

        z = sigmoid(a_z * h + p_z)
        r = sigmoid(a_r * h + p_r)
        n = tanh(a_h * (h * r) + p_h)
        h_t = z * n + (1 - z) * h,          y_t = h_t

    The Jacobian ``d h_t / d h_{t-1}`` is diagonal:
    ``(1 - z) + (n - h) z (1 - z) a_z + z (1 - n^2) a_h (r + h r (1 - r) a_r)``.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the state and output width.
        bias: whether the input projection has a bias.
    """

    kind = "paragru"
    forms: ClassVar[frozenset[Form]] = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = ParaGRUState
    #: size of the Jacobian blocks (1: diagonal).
    newton_block: ClassVar[int] = 1
    #: state-shaped arrays in the ``scratch`` the kernel lends the Newton-path methods.
    newton_scratch: ClassVar[int] = 10

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # recurrent: diagonal weights, rows ``a_z, a_r, a_h``: ``(3, H)``
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Input weights and bias ``U(-1/sqrt(I), 1/sqrt(I))``; diagonal weights ``U(-1, 1)``."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.uniform_(self.recurrent, -1.0, 1.0)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), doc="hidden state"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., input_size) -> (..., 3 H)``: ``x W^T + b`` as ``(p_z, p_r, p_h)``."""
        return F.linear(x, self.weight_ih, self.bias)

    def _gates(self, px: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_z, a_r, a_h = self.recurrent.unbind(0)
        p_z, p_r, p_h = px.chunk(3, dim=-1)
        z = torch.sigmoid(a_z * h + p_z)
        r = torch.sigmoid(a_r * h + p_r)
        n = torch.tanh(a_h * (h * r) + p_h)
        return z, r, n

    def recur(self, px_t: Tensor, state: ParaGRUState) -> tuple[Tensor, ParaGRUState]:
        h = self.recur_parallel(px_t, state.h)
        return h, ParaGRUState(h)

    # --- the diagonal-Jacobian protocol ------------------------------------------------------

    def pack_state(self, state: ParaGRUState) -> Tensor:
        """``z = h: (B, H)``."""
        return state.h

    def unpack_state(self, z: Tensor) -> ParaGRUState:
        """``(B, H) -> ParaGRUState``."""
        return ParaGRUState(z)

    def recur_parallel(self, px: Tensor, z_prev: Tensor) -> Tensor:
        """``h_t`` from ``h_{t-1}`` at all positions: ``(..., 3H), (..., H) -> (..., H)``."""
        z, _, n = self._gates(px, z_prev)
        return n + (1 - z) * (z_prev - n)

    def jacobian_diag(self, px: Tensor, z_prev: Tensor) -> Tensor:
        """``d h_t / d h_{t-1}``, diagonal: ``(..., 3H), (..., H) -> (..., H)`` (values only)."""
        return self.recur_parallel_with_jacobian(px, z_prev)[1]

    def _fast_gates(
        self, px: Tensor, h: Tensor, buf: list[Tensor | None]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Gate values for the Newton path (no autograd): ``z, r, s, h r, n - h``.

        ``(..., 3H), (..., H) -> 5 x (..., H)``, written into ``buf[0:5]`` (fresh tensors where
        an entry is ``None``). ``n = tanh(u) = 2 s - 1`` with ``s = sigmoid(2u)``: on CPU
        torch's ``tanh`` costs about three times its ``sigmoid``, the two agree to rounding
        (about ``1e-7`` absolute in fp32), and ``1 - n^2 = 4 s (1 - s)`` needs no ``n``.
        """
        a_z, a_r, a_h = self.recurrent.detach().unbind(0)
        p_z, p_r, p_h = px.chunk(3, dim=-1)
        z = torch.addcmul(p_z, a_z, h, out=buf[0]).sigmoid_()
        r = torch.addcmul(p_r, a_r, h, out=buf[1]).sigmoid_()
        hr = torch.mul(h, r, out=buf[2])
        s = torch.addcmul(p_h, a_h, hr, out=buf[3]).mul_(2).sigmoid_()
        w = torch.add(h, 1, out=buf[4])
        return z, r, s, hr, torch.lerp(w, s, 2.0, out=w)  # (h + 1) + 2 (s - h - 1) = n - h

    def _scratch_list(self, scratch: Tensor | None) -> list[Tensor | None]:
        if scratch is None:
            return [None] * self.newton_scratch
        if scratch.shape[0] < self.newton_scratch:
            raise ValueError(
                f"scratch must hold {self.newton_scratch} state-shaped buffers, got "
                f"{scratch.shape[0]}"
            )
        return list(scratch.unbind(0))

    def recur_parallel_with_jacobian(self, px: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """``(recur_parallel, jacobian_diag)`` sharing the gate computations (values only):
        ``(..., 3H), (..., H) -> ((..., H), (..., H))``; see :meth:`recur_parallel_newton`."""
        out, jacobian = self.recur_parallel_newton(px, z_prev)
        return out, jacobian()

    def recur_parallel_newton(
        self, px: Tensor, z_prev: Tensor, *, scratch: Tensor | None = None
    ) -> tuple[Tensor, Callable[[], Tensor]]:
        """``f`` at every position now and its Jacobian on demand (values only).

        ``(..., 3H), (..., H) -> ((..., H), () -> (..., H))``: the gates are computed once
        and ``jacobian()`` reuses them, so a Newton solver that needs only ``f`` (its initial
        guess, or a last step that reuses the previous Jacobian) skips the Jacobian's ops.
        About ten elementwise ops for ``f`` and nine more for ``J``, in place on the
        temporaries. With ``w = n - h``::

            f = h + z w
            J = (1 - z)(1 + a_z z w) + a_h z (1 - n^2)(r + a_r h r (1 - r))

        Args:
            scratch: optional ``(newton_scratch, ..., H)`` buffer lent by the kernel: the
                temporaries and the results are written into it (no allocation). ``f`` and
                ``jacobian()`` are then valid until the next call with the same buffer, and
                the caller may overwrite ``f`` (``J`` does not depend on it); the Jacobian of
                the previous call survives in the buffer until ``jacobian()`` is called again.
        """
        buf = self._scratch_list(scratch)
        with torch.no_grad():
            h = z_prev
            z, r, s, hr, w = self._fast_gates(px, h, buf)
            out = torch.addcmul(h, z, w, out=buf[5])

        def jacobian() -> Tensor:
            with torch.no_grad():
                a_z, a_r, a_h = self.recurrent.detach().unbind(0)
                one = torch.ones((), dtype=z.dtype, device=z.device)
                jac = torch.addcmul(one, a_z, w.mul_(z), out=buf[6])  # 1 + a_z z w (w spent)
                jac.addcmul_(z, jac, value=-1)  # (1 - z)(1 + a_z z w)
                c = torch.addcmul(hr, hr, r, value=-1, out=buf[7])
                c = torch.addcmul(r, a_r, c, out=c)  # r + a_r h r (1 - r)
                dn = torch.addcmul(s, s, s, value=-1, out=buf[8]).mul_(z).mul_(c)  # (1 - n^2)/4
                return jac.addcmul_(a_h, dn, value=4)

        return out, jacobian

    def recur_parallel_vjp(
        self,
        px: Tensor,
        z_prev: Tensor,
        adjoint: Callable[[Tensor], Tensor],
        *,
        scratch: Tensor | None = None,
        out: Tensor | None = None,
    ) -> tuple[Tensor, tuple[tuple[Tensor, Tensor], ...]]:
        """The Newton backward's vector-Jacobian product at every position (values only).

        Computes the partials of ``f`` in its pre-activations ``u = (u_z, u_r, u_n)``,
        ``g_z = z (1 - z)(n - h)``, ``g_n = z (1 - n^2)``, ``g_r = g_n a_h h r (1 - r)``, the
        Jacobian ``J = (1 - z) + a_z g_z + a_r g_r + a_h r g_n``, then ``lam = adjoint(J)``
        (the kernel's adjoint scan), and from the same gates the gradients.

        Args:
            px: ``(..., 3H)`` projected inputs.
            z_prev: ``(..., H)`` the previous states.
            adjoint: maps ``J: (..., H)`` to the adjoint ``lam: (..., H)``.
            scratch: optional ``(newton_scratch, ..., H)`` buffer for the temporaries.
            out: optional ``(..., 3H)`` tensor (any strides) to write ``dpx`` into.

        Returns:
            ``dpx = lam * df/dpx: (..., 3H)`` and ``((self.recurrent, d recurrent: (3, H)),)``
            (``d a_z = sum lam g_z h``, ``d a_r = sum lam g_r h``, ``d a_h = sum lam g_n h r``
            over the leading dimensions).
        """
        buf = self._scratch_list(scratch)
        with torch.no_grad():
            a_z, a_r, a_h = self.recurrent.detach().unbind(0)
            h = z_prev
            z, r, s, hr, w = self._fast_gates(px, h, buf)
            one = torch.ones((), dtype=z.dtype, device=z.device)
            g_n = torch.addcmul(s, s, s, value=-1, out=buf[5]).mul_(z).mul_(4)  # z (1 - n^2)
            g_z = torch.addcmul(z, z, z, value=-1, out=buf[6]).mul_(w)
            g_r = torch.addcmul(hr, hr, r, value=-1, out=buf[7]).mul_(g_n).mul_(a_h)
            jac = torch.sub(one, z, out=buf[8]).addcmul_(a_z, g_z).addcmul_(a_r, g_r)
            jac.addcmul_(a_h, torch.mul(r, g_n, out=buf[9]))
            lam = adjoint(jac)
            if out is None:
                out = torch.empty(
                    (*z.shape[:-1], 3 * self.hidden_size), dtype=z.dtype, device=z.device
                )
            d_z, d_r, d_n = out.view(*out.shape[:-1], 3, self.hidden_size).unbind(-2)
            lead = tuple(range(z.dim() - 1))
            tmp = buf[9]
            sums = []
            for g, d, v in ((g_z, d_z, h), (g_r, d_r, h), (g_n, d_n, hr)):
                torch.mul(g, lam, out=d)
                sums.append(torch.mul(d, v, out=tmp).sum(lead))
        return out, ((self.recurrent, torch.stack(sums)),)

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        """``y = h``: ``(B, T, H)``."""
        return z


class ParaLSTM(_ParaCell[ParaLSTMState]):
    """ParaRNN's CIFG LSTM (coupled input and forget gates) with peepholes and diagonal
    recurrent weights ``a_f, a_c, a_o: (H,)`` and peephole weights ``w_f, w_o: (H,)``.

    With ``px = W x_t + b`` split into ``(p_f, p_c, p_o)``::

        f  = sigmoid(a_f * h + p_f + w_f * c)
        c~ = tanh(a_c * h + p_c)
        c_t = f * c + (1 - f) * c~
        o  = sigmoid(a_o * h + p_o + w_o * c_t)
        h_t = o * tanh(c_t),                y_t = h_t

    The Jacobian of ``(h_t, c_t)`` in ``(h_{t-1}, c_{t-1})`` is 2x2 block-diagonal: one
    ``2 x 2`` block per unit (layout in the module docstring).

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the width of ``h``, ``c`` and ``y``.
        bias: whether the input projection has a bias.
        peepholes: whether ``w_f`` and ``w_o`` exist (``False``: no peephole terms).
    """

    kind = "paralstm"
    forms: ClassVar[frozenset[Form]] = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = ParaLSTMState
    newton_block: ClassVar[int] = 2

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        peepholes: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # recurrent: diagonal weights, rows ``a_f, a_c, a_o``: ``(3, H)``
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        #: peephole weights, rows ``w_f, w_o``: ``(2, H)`` (or ``None``).
        self.peephole: nn.Parameter | None = (
            nn.Parameter(torch.empty(2, hidden_size, device=device, dtype=dtype))
            if peepholes
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Input weights and bias ``U(-1/sqrt(I), 1/sqrt(I))``; diagonal and peephole
        weights ``U(-1, 1)``."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.uniform_(self.recurrent, -1.0, 1.0)
        if self.peephole is not None:
            nn.init.uniform_(self.peephole, -1.0, 1.0)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField("h", (self.hidden_size,), doc="hidden state"),
            StateField("c", (self.hidden_size,), doc="cell state"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., input_size) -> (..., 3 H)``: ``x W^T + b`` as ``(p_f, p_c, p_o)``."""
        return F.linear(x, self.weight_ih, self.bias)

    def recur(self, px_t: Tensor, state: ParaLSTMState) -> tuple[Tensor, ParaLSTMState]:
        h, c = self._step(px_t, state.h, state.c)
        return h, ParaLSTMState(h, c)

    def _step(self, px: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        a_f, a_c, a_o = self.recurrent.unbind(0)
        p_f, p_c, p_o = px.chunk(3, dim=-1)
        if self.peephole is not None:
            w_f, w_o = self.peephole.unbind(0)
            f = torch.sigmoid(a_f * h + p_f + w_f * c)
        else:
            f = torch.sigmoid(a_f * h + p_f)
        cand = torch.tanh(a_c * h + p_c)
        c_new = cand + f * (c - cand)
        if self.peephole is not None:
            o = torch.sigmoid(a_o * h + p_o + w_o * c_new)
        else:
            o = torch.sigmoid(a_o * h + p_o)
        return o * torch.tanh(c_new), c_new

    # --- the diagonal-Jacobian protocol (2x2 blocks) ----------------------------------------

    def pack_state(self, state: ParaLSTMState) -> Tensor:
        """``z = stack((h, c), -1): (B, H, 2)``."""
        return torch.stack((state.h, state.c), -1)

    def unpack_state(self, z: Tensor) -> ParaLSTMState:
        """``(B, H, 2) -> ParaLSTMState(h, c)``."""
        return ParaLSTMState(z[..., 0], z[..., 1])

    def recur_parallel(self, px: Tensor, z_prev: Tensor) -> Tensor:
        """``(..., 3H), (..., H, 2) -> (..., H, 2)``: the step at all positions at once."""
        h, c = self._step(px, z_prev[..., 0], z_prev[..., 1])
        return torch.stack((h, c), -1)

    def jacobian_diag(self, px: Tensor, z_prev: Tensor) -> Tensor:
        """``J: (..., H, 2, 2)``, ``J[..., i, j] = d z_t[i] / d z_{t-1}[j]`` (0: h, 1: c)."""
        return self.recur_parallel_with_jacobian(px, z_prev)[1]

    def recur_parallel_with_jacobian(self, px: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """``(recur_parallel, jacobian_diag)`` sharing the gate computations."""
        h, c = z_prev[..., 0], z_prev[..., 1]
        a_f, a_c, a_o = self.recurrent.unbind(0)
        p_f, p_c, p_o = px.chunk(3, dim=-1)
        if self.peephole is not None:
            w_f, w_o = self.peephole.unbind(0)
            f = torch.sigmoid(a_f * h + p_f + w_f * c)
        else:
            w_f = w_o = torch.zeros_like(a_f)
            f = torch.sigmoid(a_f * h + p_f)
        cand = torch.tanh(a_c * h + p_c)
        c_new = cand + f * (c - cand)
        o = torch.sigmoid(a_o * h + p_o + w_o * c_new)
        tc = torch.tanh(c_new)
        h_new = o * tc
        df = f * (1 - f)
        dcand_dh = (1 - cand * cand) * a_c
        dcn_dh = (c - cand) * df * a_f + (1 - f) * dcand_dh
        dcn_dc = f + (c - cand) * df * w_f
        do = o * (1 - o)
        dtc = o * (1 - tc * tc)
        dhn_dh = do * (a_o + w_o * dcn_dh) * tc + dtc * dcn_dh
        dhn_dc = do * w_o * dcn_dc * tc + dtc * dcn_dc
        jac = torch.stack(
            (torch.stack((dhn_dh, dhn_dc), -1), torch.stack((dcn_dh, dcn_dc), -1)), -2
        )
        return torch.stack((h_new, c_new), -1), jac

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        """``y = h``: ``(B, T, H, 2) -> (B, T, H)``."""
        return z[..., 0]
