"""Public launchers of the fused gated-cell Triton kernels and their autograd wrapper.

Importing this module needs only torch; triton is imported when a kernel is first launched.
On a machine without a GPU the kernels run under the Triton interpreter when the environment
variable ``TRITON_INTERPRET=1`` was set before triton was imported (slow; for tests).

Conventions (``G`` gates, ``H = N * D`` units in ``N`` heads of width ``D``, gate-major):

- ``px``: the input projection ``W x + b`` with ``px[..., g * H + n * D + d]`` gate ``g`` of
  unit ``d`` of head ``n``; ``(B, T, G * H)`` padded, or ``(tokens, G * H)`` packed.
- ``recurrent``: ``(G, N, D, D)``, ``recurrent[g, n, e, d]`` maps unit ``d`` to unit ``e``.
- states: stacked ``(S, B, H)`` in float32 (``S`` fields in the cell's ``state_type`` order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import torch
from torch import Tensor


class CellCode(IntEnum):
    """The kernels' ``CELL`` constant of each cell kind.

    ``_kernels`` mirrors these as ``tl.constexpr`` globals of the same names (a jitted function
    can read no other kind of global), so the kernels and the launchers share one numbering.
    """

    ELMAN = 0
    LSTM = 1
    GRU = 2
    SLSTM = 3


@dataclass(frozen=True)
class CellSpec:
    """What the kernels need to know about a gated cell kind.

    Attributes:
        code: the kernels' ``CELL`` constant.
        gates: ``G``.
        states: ``S``, the number of state fields.
        cached: ``K``, the state fields the forward caches per step for the backward.
    """

    code: CellCode
    gates: int
    states: int
    cached: int


CELLS: dict[str, CellSpec] = {
    "elman": CellSpec(CellCode.ELMAN, 1, 1, 0),
    "lstm": CellSpec(CellCode.LSTM, 4, 2, 1),
    "gru": CellSpec(CellCode.GRU, 3, 1, 2),
    "slstm": CellSpec(CellCode.SLSTM, 4, 4, 3),
}

#: Largest head width of any cell (Elman in 16-bit); see :func:`max_head_dim`.
MAX_HEAD_DIM = 256
#: Rows of the batch block; ``tl.dot`` needs every dimension >= 16.
BLOCK_B = 16
#: Bytes of one head's recurrent weights (``G x DP x DP``) that must stay on-chip: Triton
#: stages them in shared memory (228 KiB per SM on Hopper, shared with layout conversions and
#: the backward's buffers), so 128 KiB is the largest that compiles and runs everywhere.
ON_CHIP_BYTES = 128 * 1024
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def padded_dim(head_dim: int) -> int:
    """``DP``: the head width rounded up to a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def max_head_dim(kind: str, dtype: torch.dtype) -> int:
    """The widest head whose recurrent weights fit on-chip (:data:`ON_CHIP_BYTES`).

    128 for LSTM, GRU and sLSTM and 256 for Elman in bfloat16/float16; 64 in float32.
    """
    gates = CELLS[kind].gates
    size = torch.finfo(dtype).bits // 8
    # IEEE fp32 products run on CUDA cores (no tensor cores), whose operand layout holds a
    # replicated share of the weights per thread: above 64 the kernel spills heavily (ptxas).
    d = MAX_HEAD_DIM if size < 4 else 64
    while d > 16 and gates * d * d * size > ON_CHIP_BYTES:
        d //= 2
    return d


@dataclass(frozen=True)
class LaunchConfig:
    """Launch parameters of one kernel call (see :func:`launch_config`).

    Attributes:
        padded_dim: ``DP``, the head width rounded up to a power of two (at least 16).
        num_warps: warps per program.
        num_stages: Triton's software-pipelining depth of the time loop (the kernels already
            prefetch one step ahead by hand).
    """

    padded_dim: int
    num_warps: int
    num_stages: int


def launch_config(
    gates: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> LaunchConfig:
    """The default launch parameters for a head of ``gates x head_dim x head_dim`` weights.

    Four warps up to ``4 x 32 x 32`` weights, eight above: with fewer, the per-thread share of
    the dot operands and the fp32 gate tiles overflows 255 registers and spills (checked with
    ptxas for sm_90); sixteen would cap each thread at 128 registers and spill as well.
    """
    dp = padded_dim(head_dim)
    if num_warps is None:
        num_warps = 4 if gates * dp * dp <= 4 * 32 * 32 else 8
    if num_stages is None:
        num_stages = 1
    return LaunchConfig(dp, num_warps, num_stages)


def triton_next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (``n >= 1``)."""
    return 1 << (max(n, 1) - 1).bit_length()


class GatedForward(NamedTuple):
    """Result of :func:`gated_forward`.

    Attributes:
        y: ``(B, T, H)`` (or ``(tokens, H)`` packed), the hidden states, in ``px.dtype``.
        final_state: ``(S, B, H)`` float32.
        p_cache: ``(B, T, G * H)`` float32 gate pre-activations per step (``None`` if not
            saved).
        s_cache: ``(B, T, K * H)`` float32 state fields per step (``None`` if not saved or
            ``K = 0``).
    """

    y: Tensor
    final_state: Tensor
    p_cache: Tensor | None
    s_cache: Tensor | None


class GatedBackward(NamedTuple):
    """Result of :func:`gated_backward`.

    Attributes:
        d_px: like ``px``.
        d_recurrent: like ``recurrent``.
        d_bias_hn: ``(H,)`` for a GRU with ``bias_hn``, else ``None``.
        d_state: ``(S, B, H)`` float32, the gradient of the initial state.
    """

    d_px: Tensor
    d_recurrent: Tensor
    d_bias_hn: Tensor | None
    d_state: Tensor


class _Layout(NamedTuple):
    spec: CellSpec
    batch: int  # NB, sequences
    time: int  # T, loop length (max length when packed)
    heads: int
    head_dim: int
    hidden: int
    starts: Tensor | None
    lens: Tensor | None


def _layout(
    kind: str,
    px: Tensor,
    recurrent: Tensor,
    state: Tensor,
    cu_seqlens: Tensor | None,
    max_seqlen: int | None,
) -> _Layout:
    if kind not in CELLS:
        raise ValueError(f"kind must be one of {', '.join(CELLS)}, got {kind!r}")
    spec = CELLS[kind]
    if recurrent.dim() != 4 or recurrent.shape[0] != spec.gates:
        raise ValueError(
            f"recurrent must be (G={spec.gates}, N, D, D) for {kind}, got {tuple(recurrent.shape)}"
        )
    G, N, D, D2 = recurrent.shape
    if D != D2:
        raise ValueError(f"recurrent blocks must be square, got {tuple(recurrent.shape)}")
    H = N * D
    if px.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"px must be float32, bfloat16 or float16, got {px.dtype}")
    top = max_head_dim(kind, px.dtype)
    if not 1 <= D <= top:
        raise ValueError(f"head_dim must be in 1..{top} for {kind} in {px.dtype}, got {D}")
    if recurrent.dtype != px.dtype:
        raise TypeError(f"recurrent has dtype {recurrent.dtype} but px has {px.dtype}")
    if px.shape[-1] != G * H:
        raise ValueError(f"px must have width G*H = {G * H}, got shape {tuple(px.shape)}")
    starts = lens = None
    if cu_seqlens is None:
        if px.dim() != 3:
            raise ValueError(f"px must be (B, T, G*H), got shape {tuple(px.shape)}")
        batch, time = px.shape[0], px.shape[1]
    else:
        if px.dim() != 2:
            raise ValueError(f"packed px must be (tokens, G*H), got shape {tuple(px.shape)}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.is_floating_point():
            raise ValueError("cu_seqlens must be a 1-D integer tensor (num_seqs + 1,)")
        cu = cu_seqlens.to(device=px.device, dtype=torch.int64)
        batch = cu.numel() - 1
        starts = cu[:-1].contiguous()
        lens = (cu[1:] - cu[:-1]).to(torch.int32).contiguous()
        time = int(max_seqlen) if max_seqlen is not None else int(lens.max().item()) if batch else 0
    if tuple(state.shape) != (spec.states, batch, H):
        raise ValueError(
            f"state must be (S={spec.states}, B={batch}, H={H}), got {tuple(state.shape)}"
        )
    return _Layout(spec, batch, time, N, D, H, starts, lens)


def _grid(lay: _Layout) -> tuple[int, int]:
    return (lay.heads, -(-lay.batch // BLOCK_B))


def _meta(
    lay: _Layout,
    dtype: torch.dtype,
    config: LaunchConfig,
    nonlinearity: str,
    resets: Tensor | None,
    allow_tf32: bool,
) -> dict[str, Any]:
    """The compile-time constants and launch options both kernels take."""
    spec = lay.spec
    return {
        "CELL": int(spec.code),
        "G": spec.gates,
        "S": spec.states,
        "K": spec.cached,
        "RELU": nonlinearity == "relu",
        "HAS_RESETS": resets is not None,
        "VARLEN": lay.starts is not None,
        "PREC": "tf32" if allow_tf32 else "ieee",
        "UPCAST": _upcast(dtype),
        "BB": BLOCK_B,
        "DP": config.padded_dim,
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def gated_forward(
    kind: str,
    px: Tensor,
    recurrent: Tensor,
    state: Tensor,
    *,
    bias_hn: Tensor | None = None,
    resets: Tensor | None = None,
    nonlinearity: str = "tanh",
    save_cache: bool = True,
    allow_tf32: bool = False,
    cu_seqlens: Tensor | None = None,
    max_seqlen: int | None = None,
    config: LaunchConfig | None = None,
) -> GatedForward:
    """Run the fused forward kernel of a gated cell (no autograd; see :func:`triton_gated`).

    Args:
        kind: ``"elman"``, ``"lstm"``, ``"gru"`` or ``"slstm"``.
        px: ``(B, T, G * H)``, or ``(tokens, G * H)`` with ``cu_seqlens``; float32, bfloat16
            or float16.
        recurrent: ``(G, N, D, D)`` in ``px.dtype``, ``1 <= D <= 256``.
        state: ``(S, B, H)`` float32 initial state (``B`` = number of sequences).
        bias_hn: GRU only: ``(H,)``, added to ``R_n h`` inside the reset gate's product.
        resets: bool ``(B, T)`` (or ``(tokens,)`` packed): where true the state entering the
            step is reset to zeros.
        nonlinearity: Elman only: ``"tanh"`` or ``"relu"``.
        save_cache: store what :func:`gated_backward` needs.
        allow_tf32: let float32 products use TF32 tensor cores (default: IEEE float32).
        cu_seqlens: ``(num_seqs + 1,)`` cumulative sequence lengths of packed input.
        max_seqlen: longest sequence of packed input (computed, with a sync, when omitted).
        config: launch parameters (default: :func:`launch_config`).

    Returns:
        :class:`GatedForward`; ``y`` is ``(B, T, H)`` or ``(tokens, H)``.
    """
    lay = _layout(kind, px, recurrent, state, cu_seqlens, max_seqlen)
    spec = lay.spec
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    px = px.contiguous()
    recurrent = recurrent.contiguous()
    state = state.to(torch.float32).contiguous()
    lead = px.shape[:-1]
    H, dev = lay.hidden, px.device
    tokens = px.numel() // px.shape[-1]
    nan = float("nan")
    y = torch.full((*lead, H), nan, device=dev, dtype=px.dtype)
    final = torch.full_like(state, nan)
    p_cache = s_cache = None
    if save_cache:
        p_cache = torch.full((*lead, spec.gates * H), nan, device=dev, dtype=torch.float32)
        if spec.cached:
            s_cache = torch.full((*lead, spec.cached * H), nan, device=dev, dtype=torch.float32)
    if lay.batch == 0 or tokens == 0 or lay.time == 0:
        final.copy_(state)
        return GatedForward(y, final, p_cache, s_cache)
    cfg = config or launch_config(spec.gates, lay.head_dim, px.dtype)
    rst = _resets_arg(resets, tokens, dev)
    bhn = bias_hn.contiguous() if (spec.code == CellCode.GRU and bias_hn is not None) else None
    from rnnkit.kernels.gated.triton import _kernels

    dummy = state
    _kernels.gated_fwd_kernel[_grid(lay)](
        px,
        recurrent,
        bhn if bhn is not None else dummy,
        state,
        rst if rst is not None else dummy,
        lay.starts if lay.starts is not None else dummy,
        lay.lens if lay.lens is not None else dummy,
        y,
        final,
        p_cache if p_cache is not None else dummy,
        s_cache if s_cache is not None else dummy,
        lay.batch,
        lay.time,
        lay.heads,
        H,
        lay.head_dim,
        HAS_BHN=bhn is not None,
        SAVE=save_cache,
        **_meta(lay, px.dtype, cfg, nonlinearity, rst, allow_tf32),
    )
    return GatedForward(y, final, p_cache, s_cache)


def _upcast(dtype: torch.dtype) -> bool:
    # The interpreter multiplies bfloat16 tiles as raw uint16 bits: feed it the same rounded
    # values as fp32 (bf16 x bf16 products are exact in fp32, so results are unchanged).
    return interpreting() and dtype == torch.bfloat16


def _resets_arg(resets: Tensor | None, tokens: int, device: torch.device) -> Tensor | None:
    if resets is None:
        return None
    if resets.dtype != torch.bool or resets.numel() != tokens:
        raise ValueError(
            f"resets must be bool with one entry per token ({tokens}), got "
            f"{resets.dtype} {tuple(resets.shape)}"
        )
    return resets.to(device).contiguous().view(torch.int8).reshape(tokens)


def _previous_h(y: Tensor, h0: Tensor, lay: _Layout, resets: Tensor | None) -> Tensor:
    """``(tokens, H)``: the ``h`` that entered each step's recurrent product."""
    H = lay.hidden
    h0 = h0.to(y.dtype)
    if lay.starts is None:
        prev = torch.cat([h0[:, None], y[:, :-1]], 1).reshape(-1, H)
    else:
        prev = torch.roll(y, 1, 0)
        if lay.batch and lay.lens is not None:
            nonempty = lay.lens > 0
            prev[lay.starts[nonempty]] = h0[nonempty]
    if resets is not None:
        prev = prev.masked_fill(resets.reshape(-1, 1).to(prev.device), 0.0)
    return prev


def gated_backward(
    kind: str,
    px: Tensor,
    recurrent: Tensor,
    state: Tensor,
    forward: GatedForward,
    d_y: Tensor,
    d_final: Tensor,
    *,
    bias_hn: Tensor | None = None,
    resets: Tensor | None = None,
    nonlinearity: str = "tanh",
    allow_tf32: bool = False,
    cu_seqlens: Tensor | None = None,
    max_seqlen: int | None = None,
    config: LaunchConfig | None = None,
) -> GatedBackward:
    """Run the reverse-time kernel, then form ``d recurrent`` with one batched GEMM.

    Args:
        kind, px, recurrent, state, bias_hn, resets, nonlinearity, allow_tf32, cu_seqlens,
            max_seqlen, config: exactly as passed to :func:`gated_forward`.
        forward: its result, computed with ``save_cache=True``.
        d_y: like ``forward.y``, the cotangent of ``y``.
        d_final: ``(S, B, H)``, the cotangent of the final state.

    Returns:
        :class:`GatedBackward`. ``d_recurrent[g, n] = sum_(b,t) dq_g[b,t,n]^T h_{t-1}[b,n]``,
        where ``dq`` is the gradient of the recurrent pre-activations (``d_px`` except the
        GRU's ``n`` gate, which is scaled by ``r``).
    """
    lay = _layout(kind, px, recurrent, state, cu_seqlens, max_seqlen)
    spec = lay.spec
    if forward.p_cache is None or (spec.cached and forward.s_cache is None):
        raise ValueError("gated_backward needs a forward run with save_cache=True")
    px = px.contiguous()
    recurrent = recurrent.contiguous()
    state = state.to(torch.float32).contiguous()
    lead = px.shape[:-1]
    G, H, N, D, dev = spec.gates, lay.hidden, lay.heads, lay.head_dim, px.device
    tokens = px.numel() // px.shape[-1]
    nan = float("nan")
    d_px = torch.full_like(px, nan)
    is_gru = spec.code == CellCode.GRU
    d_qn = torch.full((*lead, H), nan, device=dev, dtype=px.dtype) if is_gru else None
    d_state = torch.full_like(state, nan)
    has_bhn = is_gru and bias_hn is not None
    if lay.batch == 0 or tokens == 0 or lay.time == 0:
        d_state.copy_(d_final)
        return GatedBackward(
            d_px.zero_(),
            torch.zeros_like(recurrent),
            torch.zeros_like(bias_hn) if has_bhn and bias_hn is not None else None,
            d_state,
        )
    cfg = config or launch_config(G, D, px.dtype)
    rst = _resets_arg(resets, tokens, dev)
    from rnnkit.kernels.gated.triton import _kernels

    dummy = state
    _kernels.gated_bwd_kernel[_grid(lay)](
        recurrent,
        state,
        rst if rst is not None else dummy,
        lay.starts if lay.starts is not None else dummy,
        lay.lens if lay.lens is not None else dummy,
        forward.p_cache,
        forward.s_cache if forward.s_cache is not None else dummy,
        d_y.to(px.dtype).contiguous(),
        d_final.to(torch.float32).contiguous(),
        d_px,
        d_qn if d_qn is not None else dummy,
        d_state,
        lay.batch,
        lay.time,
        N,
        H,
        D,
        **_meta(lay, px.dtype, cfg, nonlinearity, rst, allow_tf32),
    )
    # dR over all (b, t) at once: a GEMM per (gate, head) with the tokens as the reduction.
    h_prev = _previous_h(forward.y, state[0], lay, resets).reshape(tokens, N, D)
    dq = d_px.reshape(tokens, G * H)
    if d_qn is not None:
        dq = torch.cat([dq[:, : 2 * H], d_qn.reshape(tokens, H)], 1)
    d_rec = torch.einsum("kgne,knd->gned", dq.reshape(tokens, G, N, D), h_prev)
    d_bhn = None
    if has_bhn and d_qn is not None and bias_hn is not None:
        d_bhn = d_qn.reshape(tokens, H).sum(0, dtype=torch.float32).to(bias_hn.dtype)
    return GatedBackward(d_px, d_rec.to(recurrent.dtype), d_bhn, d_state)


class _Options(NamedTuple):
    save: bool  # whether autograd will need the backward (decided outside: forward runs no-grad)
    kind: str
    nonlinearity: str
    allow_tf32: bool
    max_seqlen: int | None
    config: LaunchConfig | None


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class TritonGatedFunction(torch.autograd.Function):
    """Autograd wrapper: ``(px, recurrent, bias_hn, resets, cu_seqlens, opts, *state) ->
    (y, *final_state)``; the state fields keep their dtypes, the kernels carry them in fp32."""

    @staticmethod
    def forward(
        ctx: Any,
        px: Tensor,
        recurrent: Tensor,
        bias_hn: Tensor | None,
        resets: Tensor | None,
        cu_seqlens: Tensor | None,
        opts: _Options,
        *state: Tensor,
    ) -> tuple[Tensor, ...]:
        s0 = torch.stack([s.to(torch.float32) for s in state])
        save = opts.save and bool(any(ctx.needs_input_grad))
        out = gated_forward(
            opts.kind,
            px,
            recurrent,
            s0,
            bias_hn=bias_hn,
            resets=resets,
            nonlinearity=opts.nonlinearity,
            save_cache=save,
            allow_tf32=opts.allow_tf32,
            cu_seqlens=cu_seqlens,
            max_seqlen=opts.max_seqlen,
            config=opts.config,
        )
        ctx.opts = opts
        ctx.state_dtypes = [s.dtype for s in state]
        ctx.has_bhn = bias_hn is not None
        ctx.bias_hn = bias_hn
        if save:
            ctx.save_for_backward(
                px, recurrent, resets, cu_seqlens, s0, out.y, out.p_cache, out.s_cache
            )
        finals = [out.final_state[i].to(dt) for i, dt in enumerate(ctx.state_dtypes)]
        return (out.y, *finals)

    @staticmethod
    def backward(ctx: Any, d_y: Tensor, *d_final: Tensor) -> tuple[Tensor | None, ...]:
        px, recurrent, resets, cu_seqlens, s0, y, p_cache, s_cache = ctx.saved_tensors
        opts: _Options = ctx.opts
        fwd = GatedForward(y, s0, p_cache, s_cache)
        d_fin = torch.stack([d.to(torch.float32) for d in d_final])
        grads = gated_backward(
            opts.kind,
            px,
            recurrent,
            s0,
            fwd,
            d_y,
            d_fin,
            bias_hn=ctx.bias_hn,
            resets=resets,
            nonlinearity=opts.nonlinearity,
            allow_tf32=opts.allow_tf32,
            cu_seqlens=cu_seqlens,
            max_seqlen=opts.max_seqlen,
            config=opts.config,
        )
        d_state = [grads.d_state[i].to(dt) for i, dt in enumerate(ctx.state_dtypes)]
        return (grads.d_px, grads.d_recurrent, grads.d_bias_hn, None, None, None, *d_state)


def triton_gated(
    kind: str,
    px: Tensor,
    recurrent: Tensor,
    state: tuple[Tensor, ...],
    *,
    bias_hn: Tensor | None = None,
    resets: Tensor | None = None,
    nonlinearity: str = "tanh",
    allow_tf32: bool = False,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Differentiable fused gated recurrence over a padded batch.

    Args:
        kind: ``"elman"``, ``"lstm"``, ``"gru"`` or ``"slstm"``.
        px: ``(B, T, G * H)``, the input projection (``cell.project(x)``).
        recurrent: ``(G, N, D, D)``.
        state: the initial state fields, each ``(B, H)`` (any floating dtype; carried in fp32).
        bias_hn: GRU only, ``(H,)``.
        resets: bool ``(B, T)``; where true the state entering step ``t`` restarts at zeros.
        nonlinearity: Elman only, ``"tanh"`` or ``"relu"``.
        allow_tf32: allow TF32 for float32 inputs.
        config: launch parameters (default :func:`launch_config`).

    Returns:
        ``(y, final_state)`` with ``y: (B, T, H)`` in ``px.dtype`` and the final state fields
        ``(B, H)`` in the dtypes of ``state``. Gradients flow into ``px``, ``recurrent``,
        ``bias_hn`` and ``state``.
    """
    opts = _Options(
        _needs_grad(px, recurrent, bias_hn, *state), kind, nonlinearity, allow_tf32, None, config
    )
    out = TritonGatedFunction.apply(  # type: ignore[no-untyped-call]
        px, recurrent, bias_hn, resets, None, opts, *state
    )
    return out[0], tuple(out[1:])


def triton_gated_varlen(
    kind: str,
    px: Tensor,
    recurrent: Tensor,
    state: tuple[Tensor, ...],
    cu_seqlens: Tensor,
    *,
    max_seqlen: int | None = None,
    bias_hn: Tensor | None = None,
    resets: Tensor | None = None,
    nonlinearity: str = "tanh",
    allow_tf32: bool = False,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Differentiable fused gated recurrence over packed variable-length sequences.

    Sequence ``s`` occupies rows ``cu_seqlens[s]:cu_seqlens[s + 1]`` of ``px`` (the
    flash-attention convention); no padding is computed or stored.

    Args:
        kind: ``"elman"``, ``"lstm"``, ``"gru"`` or ``"slstm"``.
        px: ``(tokens, G * H)``, the input projection of the packed inputs.
        recurrent: ``(G, N, D, D)``.
        state: initial state fields, each ``(num_seqs, H)``.
        cu_seqlens: integer ``(num_seqs + 1,)``, starting at 0, non-decreasing, ending at
            ``tokens``.
        max_seqlen: the longest sequence (computed, with a device sync, when omitted).
        bias_hn, nonlinearity, allow_tf32, config: as :func:`triton_gated`.
        resets: optional bool ``(tokens,)``; where true the state entering that token
            restarts at zeros.

    Returns:
        ``(y, final_state)``: ``y: (tokens, H)`` and each final field ``(num_seqs, H)``, the
        state after each sequence's last token (the initial state for an empty sequence).
    """
    if max_seqlen is None:
        max_seqlen = (
            int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
        )
    opts = _Options(
        _needs_grad(px, recurrent, bias_hn, *state),
        kind,
        nonlinearity,
        allow_tf32,
        max_seqlen,
        config,
    )
    out = TritonGatedFunction.apply(  # type: ignore[no-untyped-call]
        px, recurrent, bias_hn, resets, cu_seqlens, opts, *state
    )
    return out[0], tuple(out[1:])
