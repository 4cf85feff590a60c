"""Fused sLSTM loop (xLSTM's stabilised exponential gating) with a hand-written backward.

Forward per step and element (``ĩ, f̃, z̃, õ = px_t + h_{t-1} W``)::

    a   = log σ(f̃) + m_{t-1}      (-inf where n_{t-1} == 0: nothing accumulated yet)
    m_t = max(ĩ, a)
    i'  = exp(ĩ - m_t),   f' = exp(a - m_t)
    [c_t, n_t] = f' [c_{t-1}, n_{t-1}] + i' [tanh z̃, 1]
    h_t = σ(õ) c_t / n_t

Backward. ``h`` does not depend on ``m`` (``m`` rescales ``c`` and ``n`` together), so the
gradient reaching ``m`` from ``h`` alone is zero; but the final ``c, n, m`` are outputs whose
cotangents are arbitrary, so the backward carries ``dm`` exactly instead of treating ``m`` as a
constant. With ``dh, dc, dn, dm`` the total gradients of step ``t``'s outputs::

    dc += dh o / n,   dn -= dh h / n,   d õ = dh (c / n) o (1 - o),   d z̃ = dc i' (1 - tanh² z̃)
    dE_i = i' (dc tanh z̃ + dn),   dE_f = f' (dc c_{t-1} + dn n_{t-1})   (gradients of the exponents)
    dm'  = dm - dE_i - dE_f                                           (total gradient of m_t)
    d ĩ  = dE_i + s dm',   da = dE_f + (1 - s) dm'    (s = 1 where m took ĩ, 1/2 at ties, as
                                                       torch.maximum)
    d f̃  = da (1 - σ(f̃)),  dm_{t-1} = da,  [dc, dn]_{t-1} = f' [dc, dn]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated.fused._common import (
    EmptyFn,
    Restart,
    carry_state_grad,
    chunks,
    cut,
    empty_result,
    finish,
    finish_split,
    gemm,
    initial_state_grad,
    join_hs_grads,
    new_spill,
    prepare,
    recurrent_weight_grad,
    reset_into,
    restart_value,
    split_hs,
)


def slstm_loop(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    states: list[Tensor],
    inits: Sequence[Restart],
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """Forward time loop (no autograd).

    Args:
        px: ``(N, T, B, 4 D)``; W: ``(N, D, 4 D)``; mask: bool ``(T, 1, B, 1)`` or ``None``;
        states: ``h0, c0, n0, m0``, each ``(N, B, D)``; inits: their reset values (fills or
        ``(N, 1, D)`` tensors);
        save: keep what the backward needs (otherwise per-step buffers are reused).

    Returns:
        ``hs: (N, T + 1, B, D)`` (slot 0 ``h0``), ``cn: (N, T + 1 or 2, B, 2, D)`` (``c, n``
        leaving each step, slot 0 the initial ones), ``ms: (N, T + 1 or 2, B, D)`` and, when
        ``save``, ``(gates, ex, cnp, hp)``: ``gates (N, T, B, 4 D)`` holding ``ĩ, f̃``
        (pre-activations) and ``tanh z̃, σ(õ)``; ``ex (N, T, B, 2, D)`` holding ``i', f'``;
        and the ``c, n`` and ``h`` entering each step after resets.
    """
    h0, c0, n0, m0 = states
    N, T, B, GD = px.shape
    D = GD // 4
    k = T if save else 1
    ns = T + 1 if save else 2
    hs = px.new_empty(N, T + 1, B, D)
    hs[:, 0] = h0
    cn = px.new_empty(N, ns, B, 2, D)
    cn[:, 0, :, 0] = c0
    cn[:, 0, :, 1] = n0
    ms = px.new_empty(N, ns, B, D)
    ms[:, 0] = m0
    gates = px.new_empty(N, k, B, GD)
    ex = px.new_empty(N, k, B, 2, D)
    fresh = torch.empty(N, B, D, dtype=torch.bool, device=px.device)
    hp, cnp, mp = hs[:, :T], cn[:, :T], ms[:, :T]
    if mask is not None:
        hp = px.new_empty(N, k, B, D)
        cnp = px.new_empty(N, k, B, 2, D)
        mp = px.new_empty(N, k, B, D)
        h_init, m_init = restart_value(inits[0], px), restart_value(inits[3], px)
        c_init, n_init = inits[1], inits[2]
        if isinstance(c_init, Tensor) or isinstance(n_init, Tensor):
            # (N, 1, 2, D): c and n of one example per head (a fill broadcast to the other)
            c_v, n_v = restart_value(c_init, px), restart_value(n_init, px)
            like = c_v if c_v.dim() else n_v
            cn_init = torch.stack((c_v.expand_as(like), n_v.expand_as(like)), dim=2)
        else:
            cn_init = torch.tensor((c_init, n_init), dtype=px.dtype, device=px.device).view(2, 1)
        mask2 = mask.unsqueeze(-1)
    H, P, HP, CN, CNP = hs.unbind(1), px.unbind(1), hp.unbind(1), cn.unbind(1), cnp.unbind(1)
    MS, MP, GA, EX = ms.unbind(1), mp.unbind(1), gates.unbind(1), ex.unbind(1)
    gv = gates.view(N, k, B, 4, D)
    GI, GF, GZ, GO = (gv[:, :, :, j].unbind(1) for j in range(4))
    EI, EF = ex[:, :, :, 0].unbind(1), ex[:, :, :, 1].unbind(1)
    EF1 = ex[:, :, :, 1:2].unbind(1)
    C_, N_ = cn[:, :, :, 0].unbind(1), cn[:, :, :, 1].unbind(1)
    NP = cnp[:, :, :, 1].unbind(1)
    neg_inf = float("-inf")
    for t in range(T):
        s = t if save else 0
        i0, i1 = (t, t + 1) if save else (t % 2, (t + 1) % 2)
        h_prev, cn_prev, m_prev, n_prev = H[t], CN[i0], MS[i0], N_[i0]
        if mask is not None:
            h_prev = reset_into(HP[s], h_prev, mask[t], h_init)
            cn_prev = reset_into(CNP[s], cn_prev, mask2[t], cn_init)
            m_prev = reset_into(MP[s], m_prev, mask[t], m_init)
            n_prev = NP[s]
        gemm(GA[s], h_prev, W, P[t])
        ef, m = EF[s], MS[i1]
        torch.add(F.logsigmoid(GF[s]), m_prev, out=ef)
        torch.eq(n_prev, 0, out=fresh)
        ef.masked_fill_(fresh, neg_inf)
        torch.maximum(GI[s], ef, out=m)
        torch.sub(GI[s], m, out=EI[s])
        ef.sub_(m)
        EX[s].exp_()
        torch.tanh(GZ[s], out=GZ[s])
        torch.sigmoid(GO[s], out=GO[s])
        torch.mul(cn_prev, EF1[s], out=CN[i1])
        C_[i1].addcmul_(EI[s], GZ[s])
        N_[i1].add_(EI[s])
        torch.div(C_[i1], N_[i1], out=H[t + 1])
        H[t + 1].mul_(GO[s])
    saved = (gates, ex, cnp, hp) if save else ()
    return hs, cn, ms, saved


def slstm_backward_loop(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    d_c: Tensor,
    d_n: Tensor,
    d_m: Tensor,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reverse time loop (no autograd).

    Args:
        W: ``(N, D, 4 D)``; hs: ``(N, T + 1, B, D)`` from the forward loop;
        buffers: ``(cn, ms, gates, ex, cnp, hp)`` from the forward loop; mask: as the
        forward's; d_hs: ``(N, T + 1, B, D)``; d_c, d_n, d_m: ``(N, B, D)``; spill: the
        gradients of the restart tensors of ``h, c, n, m`` (each ``(N, 1, D)``) to add to (see
        ``cut``), or ``None``.

    Returns:
        ``dq: (N, T, B, 4 D)`` the gradient of the gate pre-activations (= that of ``px``),
        ``dh0, dc0, dn0, dm0``, each ``(N, B, D)``.
    """
    cn, ms, gates, ex, cnp, _ = buffers
    N, T, B, GD = gates.shape
    D = GD // 4
    dq = gates.new_empty(N, T, B, GD)
    dqv = dq.view(N, T, B, 4, D)
    DQ, DE = dq.unbind(1), dqv[:, :, :, 0:2].unbind(1)
    DE_F = dqv[:, :, :, 1].unbind(1)
    DZ, DO = dqv[:, :, :, 2].unbind(1), dqv[:, :, :, 3].unbind(1)
    DY = d_hs.unbind(1)
    WT = W.transpose(1, 2)
    dh = hs.new_empty(N, B, D)
    dcn = torch.stack((d_c, d_n), dim=2)
    dc, dn = dcn[:, :, 0], dcn[:, :, 1]
    dc2, dn2 = dcn[:, :, 0:1], dcn[:, :, 1:2]
    dm = d_m.clone()
    tmp = hs.new_empty(N, B, D)
    dh_r = dm_r = dcn_r = None
    if spill is not None:
        dh_r, dm_r = spill[0], spill[3]
        dcn_r = hs.new_zeros(N, 1, 2, D)
    for t0, t1 in chunks(T, N * B * 2 * D):
        # Gradient-independent factors of the chunk (see the module docstring).
        gi, gf, zt, o = gates[:, t0:t1].view(N, t1 - t0, B, 4, D).unbind(3)
        ip, fp = ex[:, t0:t1].unbind(3)
        c, n = cn[:, t0 + 1 : t1 + 1].unbind(3)
        cp, np_ = cnp[:, t0:t1].unbind(3)
        m, h = ms[:, t0 + 1 : t1 + 1], hs[:, t0 + 1 : t1 + 1]
        inv_n = 1 / n
        QCN = torch.stack((o * inv_n, -h * inv_n), dim=3).unbind(1)
        QO = (c * inv_n * o * (1 - o)).unbind(1)
        PZ = (ip * (1 - zt * zt)).unbind(1)
        XC = torch.stack((zt * ip, cp * fp), dim=3).unbind(1)
        XN = torch.stack((ip, np_ * fp), dim=3).unbind(1)
        took_i = (gi == m).to(gates.dtype)
        # A tie ĩ == a (then f' == 1 too) splits dm evenly, as torch.maximum's backward.
        s_i = torch.where((took_i > 0) & (fp == 1), 0.5, took_i)
        SS = torch.stack((s_i, 1 - s_i), dim=3).unbind(1)
        SFC = torch.sigmoid(-gf).unbind(1)
        FF = fp.unsqueeze(3).unbind(1)
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            carry_state_grad(dh, DQ, WT, DY, mask, t, dh_r)
            dcn.addcmul_(dh.unsqueeze(2), QCN[k])
            torch.mul(dh, QO[k], out=DO[t])
            torch.mul(dc, PZ[k], out=DZ[t])
            torch.mul(dc2, XC[k], out=DE[t])
            DE[t].addcmul_(dn2, XN[k])
            torch.sum(DE[t], dim=2, out=tmp)
            torch.sub(dm, tmp, out=tmp)
            DE[t].addcmul_(tmp.unsqueeze(2), SS[k])
            # da (the gradient of log σ(f̃) + m_{t-1}) is also the gradient of m_{t-1}.
            cut(dm.copy_(DE_F[t]), mask, t, dm_r)
            DE_F[t].mul_(SFC[k])
            cut(dcn.mul_(FF[k]), mask, t, dcn_r)
    if spill is not None and dcn_r is not None:
        spill[1].add_(dcn_r[:, :, 0])
        spill[2].add_(dcn_r[:, :, 1])
    dh0 = initial_state_grad(DQ[0], WT, mask, dh_r)
    dh0.add_(DY[0])
    return dq, dh0, dc.clone(), dn.clone(), dm


#: An sLSTM forward time loop, as :func:`slstm_loop`:
#: ``(px, W, mask, [h0, c0, n0, m0], inits, save) -> (hs, cn, ms, saved)``.
SLSTMForward = Callable[
    [Tensor, Tensor, Tensor | None, list[Tensor], Sequence[Restart], bool],
    tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]],
]
#: An sLSTM reverse time loop, as :func:`slstm_backward_loop`:
#: ``(W, hs, buffers, mask, d_hs, d_c, d_n, d_m, spill) -> (dq, dh0, dc0, dn0, dm0)``.
SLSTMBackward = Callable[
    [
        Tensor,
        Tensor,
        tuple[Tensor, ...],
        Tensor | None,
        Tensor,
        Tensor,
        Tensor,
        Tensor,
        list[Tensor] | None,
    ],
    tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
]


class SLSTMLoops(NamedTuple):
    """The two time loops that :class:`SLSTMFn` and :func:`run_slstm` run."""

    forward: SLSTMForward
    backward: SLSTMBackward


#: The pure-torch loops of this module (the ``fused`` backend).
SLSTM_LOOPS = SLSTMLoops(slstm_loop, slstm_backward_loop)


class SLSTMFn(torch.autograd.Function):
    """sLSTM sequence with a hand-written reverse-time backward, both loops from ``loops``;
    ``restarts`` (``(h, c, n, m)`` inits or none) replace the fills ``inits`` as reset
    values."""

    @staticmethod
    def forward(
        ctx: Any,
        loops: SLSTMLoops,
        px: Tensor,
        W: Tensor,
        mask: Tensor | None,
        inits: tuple[float, ...],
        h0: Tensor,
        c0: Tensor,
        n0: Tensor,
        m0: Tensor,
        *restarts: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        values = restarts or inits
        hs, cn, ms, saved = loops.forward(px, W, mask, [h0, c0, n0, m0], values, True)
        ctx.restarts = tuple(r.detach() for r in restarts)
        T = px.shape[1]
        ctx.loops = loops
        ctx.mask = mask
        ctx.buffers = (cn, ms, *saved)
        ctx.save_for_backward(W, hs)
        return (*split_hs(hs), cn[:, T, :, 0].clone(), cn[:, T, :, 1].clone(), ms[:, T].clone())

    @staticmethod
    def backward(
        ctx: Any, d_ys: Tensor, d_h_last: Tensor, d_c: Tensor, d_n: Tensor, d_m: Tensor
    ) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        d_hs = join_hs_grads(hs, d_ys, d_h_last)
        buffers = ctx.buffers
        ctx.buffers = None
        spill = new_spill(ctx.restarts)
        dq, dh0, dc0, dn0, dm0 = ctx.loops.backward(
            W, hs, buffers, ctx.mask, d_hs, d_c, d_n, d_m, spill
        )
        dW = recurrent_weight_grad(buffers[5], dq, W.shape[0], W.shape[1])
        return None, dq, dW, None, None, dh0, dc0, dn0, dm0, *(spill or ())


def run_slstm(
    call: KernelCall, loops: SLSTMLoops = SLSTM_LOOPS, empty: EmptyFn | None = None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``fused`` kernel for sLSTM cells (see :class:`~rnnkit.core.dispatch.Kernel`).

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h, c, n, m), each ``(B, H)``;
    ``loops`` runs the time loops (the ``fused_cpp`` backend passes its native ones).
    """
    if call.x.shape[1] == 0:
        return empty_result(call)
    p = prepare(call, empty)
    if call.needs_grad:
        ys, h_last, c, n, m = SLSTMFn.apply(  # type: ignore[no-untyped-call]
            loops, p.px, p.W, p.mask, p.inits, *p.states, *p.restarts
        )
        return finish_split(call, ys, h_last, [c, n, m])
    with torch.no_grad():
        values = p.restarts or p.inits
        hs, cn, ms, _ = loops.forward(p.px, p.W, p.mask, p.states, values, False)
        last = p.px.shape[1] % 2
        c, n, m = cn[:, last, :, 0], cn[:, last, :, 1], ms[:, last]
    return finish(call, hs, [c, n, m])
