"""Analysis of a recurrent network's dynamics: fixed and slow points, and recoding.

**Fixed and slow points** (Sussillo & Barak 2013; Golub & Sussillo's FixedPointFinder). For a
cell's step map ``F(h) = step(u*, h)`` at a constant input ``u*`` (zero by default), with
the whole state flattened to ``h: (F,)`` (complex fields as real and imaginary parts),
:func:`find_fixed_points` minimises ``q(h) = ½‖F(h) − h‖²`` by Adam from many states visited
on random input sequences plus noise (the cell's parameters are left alone), merges the
minima closer than ``tol_unique``, and linearises ``F`` at each: the eigenvalues of the
Jacobian ``∂F/∂h`` say whether a point attracts (all ``|λ| < 1``) or is a saddle. A minimum
with ``q < tol_fixed`` is reported as a fixed point, one with ``q < tol_slow`` as a slow
point, any other as ``unconverged`` (a minimum of ``q`` the search did not bring down).

**Recoding** (after Ulmer, arXiv 2101.00674). At inference, the state is moved along the
gradient of an error signal ``δ`` and the step is recomputed from the moved state:
``s ← s − η ∇_s δ``. Here ``s`` is the state *entering* step ``t`` (every layer, every field:
any cell's output at ``t`` is a function of it and ``x_t``), not the state after it as in the
thesis' LSTM; two signals:

- ``entropy``: the entropy of the predicted distribution at ``t`` (no label): the prediction
  of ``x_{t+1}`` is recomputed from the moved state and scored;
- ``surprisal``: ``−log p(x_{t+1})``, known only once ``x_{t+1}`` is read: the prediction of
  ``x_{t+1}`` is scored *before* the move, and the moved state only serves the later steps
  (moving, re-decoding and then scoring the same token would read its label).

:func:`recode_bpc` reports bits per character with and without recoding. State-collapse
statistics (norms and channel RMS of the state over long inputs) are in
:mod:`rnnkit.tasks.passkey_length`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from rnnkit.core.cell import Cell

__all__ = [
    "FixedPoint",
    "FixedPointReport",
    "RecodeResult",
    "find_fixed_points",
    "recode_bpc",
    "recode_state",
    "state_from_vector",
    "state_vector",
]

ANALYSE_HELP = (
    "analyse a recurrent network: fixed and slow points of a cell (with Jacobian eigenvalues) "
    "or recoding of a character LM's state at inference (bits per char)"
)

SIGNALS: tuple[str, ...] = ("entropy", "surprisal")


# --- flattening a state ---------------------------------------------------------------------


def state_vector(state: Sequence[Tensor]) -> Tensor:
    """``(B, F)``: the fields of ``state`` (each ``(B, ...)``) flattened and concatenated,
    complex fields as their real and imaginary parts."""
    parts = []
    for f in state:
        if not (f.is_floating_point() or f.is_complex()):
            raise ValueError(f"state fields must be floating or complex, got {f.dtype}")
        g = torch.view_as_real(f) if f.is_complex() else f
        parts.append(g.reshape(f.shape[0], -1))
    return torch.cat(parts, 1)


def state_from_vector(vec: Tensor, like: Sequence[Tensor]) -> Any:
    """The inverse of :func:`state_vector`: ``vec: (B, F)`` cut into fields shaped (and
    typed) like those of ``like`` (a state ``NamedTuple`` of any batch)."""
    fields, at = [], 0
    for f in like:
        shape = (vec.shape[0], *f.shape[1:])
        n = math.prod(shape[1:]) * (2 if f.is_complex() else 1)
        piece = vec[:, at : at + n]
        at += n
        if f.is_complex():
            fields.append(torch.view_as_complex(piece.reshape(*shape, 2).contiguous()))
        else:
            fields.append(piece.reshape(shape))
    make = getattr(type(like), "_make", None)
    return make(fields) if make is not None else tuple(fields)


# --- fixed points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedPoint:
    """One point found: ``state`` (the flattened state), ``q`` (``½‖F(h) − h‖²``), its
    ``kind`` (``"fixed"``, ``"slow"`` or ``"unconverged"``), the Jacobian's eigenvalues sorted
    by decreasing modulus (as ``[real, imag]`` pairs) and ``stable`` (all moduli below 1)."""

    state: list[float]
    q: float
    kind: str
    eigenvalues: list[list[float]]
    stable: bool

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    @property
    def spectral_radius(self) -> float:
        return max((math.hypot(*e) for e in self.eigenvalues), default=0.0)


@dataclass(frozen=True)
class FixedPointReport:
    """What :func:`find_fixed_points` found: the unique points, lowest ``q`` first, and the
    number of starting states."""

    points: list[FixedPoint]
    starts: int
    state_size: int


def _step_map(cell: Cell[Any], u: Tensor, like: Any) -> Callable[[Tensor], Tensor]:
    def f(h: Tensor) -> Tensor:
        state = state_from_vector(h, like)
        _, new = cell.step(u.expand(h.shape[0], -1), state)
        return state_vector(new)

    return f


def _sample_states(
    cell: Cell[Any], n: int, length: int, noise: float, g: torch.Generator
) -> Tensor:
    """``(n, F)`` states visited on random input sequences (``N(0, 1)`` inputs), from each
    sequence's state at a random step, plus Gaussian noise of sd ``noise``."""
    dtype = next((p.dtype for p in cell.parameters()), torch.float32)
    if dtype.is_complex:
        dtype = torch.float32 if dtype == torch.complex64 else torch.float64
    x = torch.randn(n, length, cell.input_size, generator=g, dtype=dtype)
    state = cell.init_state(n, dtype=dtype)
    stops = torch.randint(1, length + 1, (n,), generator=g)
    keep = state_vector(state).clone()
    for t in range(length):
        _, state = cell.step(x[:, t], state)
        chosen = stops == t + 1
        keep[chosen] = state_vector(state)[chosen]
    return keep + noise * torch.randn(keep.shape, generator=g, dtype=keep.dtype)


def find_fixed_points(
    cell: Cell[Any],
    *,
    inputs: Tensor | None = None,
    starts: int = 64,
    initial: Tensor | None = None,
    length: int = 30,
    noise: float = 0.1,
    iterations: int = 1500,
    lr: float = 0.05,
    tol_fixed: float = 1e-10,
    tol_slow: float = 1e-4,
    tol_unique: float = 1e-3,
    seed: int = 0,
) -> FixedPointReport:
    """Fixed and slow points of ``cell`` at the constant input ``inputs``.

    Args:
        cell: any registered cell (its parameters are not changed).
        inputs: ``u*: (input_size,)`` (default zeros).
        starts: states to start from, sampled off trajectories (ignored with ``initial``).
        initial: ``(N, F)`` flattened states to start from instead.
        length, noise: the trajectories sampled from (steps) and the noise added (sd).
        iterations, lr: Adam steps on ``q`` (step size decays tenfold over the run).
        tol_fixed: ``q`` below which a point is fixed.
        tol_slow: ``q`` below which a point that is not fixed is slow (else unconverged).
        tol_unique: points closer than this (Euclidean) are merged.
        seed: seeds the sampling.

    Returns:
        A :class:`FixedPointReport`.
    """
    for name, value in (("starts", starts), ("length", length), ("iterations", iterations)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    for name, x in (
        ("noise", noise),
        ("tol_fixed", tol_fixed),
        ("tol_slow", tol_slow),
        ("tol_unique", tol_unique),
    ):
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"{name} must be a non-negative number, got {x}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    g = torch.Generator().manual_seed(seed)
    was_training = cell.training
    cell.eval()
    try:
        with torch.no_grad():
            like = cell.init_state(1)
            if initial is None:
                h0 = _sample_states(cell, starts, length, noise, g)
            else:
                h0 = initial.detach().clone()
        size = state_vector(like).shape[1]
        if h0.dim() != 2 or h0.shape[1] != size:
            raise ValueError(f"initial must be (N, {size}) flattened states, got {tuple(h0.shape)}")
        u = torch.zeros(cell.input_size, dtype=h0.dtype) if inputs is None else inputs
        if u.shape != (cell.input_size,):
            raise ValueError(f"inputs must be ({cell.input_size},), got {tuple(u.shape)}")
        u = u.to(h0.dtype)[None]
        like = state_from_vector(h0[:1], cell.init_state(1, dtype=h0.dtype))
        f = _step_map(cell, u, like)
        params = [p for p in cell.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            h = h0.clone().requires_grad_(True)
            opt = torch.optim.Adam([h], lr=lr)
            decay = 0.1 ** (1.0 / iterations)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, decay)
            for _ in range(iterations):
                opt.zero_grad()
                q = 0.5 * (f(h) - h).square().sum(1)
                (h.grad,) = torch.autograd.grad(q.sum(), [h])
                opt.step()
                sched.step()
            with torch.no_grad():
                q = 0.5 * (f(h) - h).square().sum(1)
            points = _unique(h.detach(), q, tol_unique)
            found = [_linearise(f, h.detach()[i], float(q[i]), tol_fixed, tol_slow) for i in points]
        finally:
            for p in params:
                p.requires_grad_(True)
    finally:
        cell.train(was_training)
    return FixedPointReport(found, int(h0.shape[0]), size)


def _unique(h: Tensor, q: Tensor, tol: float) -> list[int]:
    """Indices of the points kept: lowest ``q`` first, skipping any within ``tol`` of a kept
    one (and any whose ``q`` is not finite)."""
    kept: list[int] = []
    for i in torch.argsort(q).tolist():
        if not math.isfinite(float(q[i])):
            continue
        if all(float((h[i] - h[j]).norm()) >= tol for j in kept):
            kept.append(i)
    return kept


def _linearise(
    f: Callable[[Tensor], Tensor], h: Tensor, q: float, tol_fixed: float, tol_slow: float
) -> FixedPoint:
    jacobian = cast(Callable[..., Tensor], torch.autograd.functional.jacobian)  # untyped
    jac = jacobian(lambda v: f(v[None])[0], h)
    eig = torch.linalg.eigvals(jac)
    eig = eig[torch.argsort(eig.abs(), descending=True)]
    pairs = [[float(e.real), float(e.imag)] for e in eig]
    return FixedPoint(
        state=h.tolist(),
        q=q,
        kind="fixed" if q < tol_fixed else "slow" if q < tol_slow else "unconverged",
        eigenvalues=pairs,
        stable=bool((eig.abs() < 1).all()),
    )


# --- recoding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecodeResult:
    """Bits per character of a character LM on ``characters`` scored tokens: ``baseline``
    (no recoding) and ``recoded`` (with ``signal`` and step ``eta``)."""

    signal: str
    eta: float
    baseline: float
    recoded: float
    characters: int


def _stack_state_fields(model: nn.Module) -> Any:
    rnn = getattr(model, "rnn", None)
    if rnn is None or not hasattr(model, "step") or getattr(model, "embed", None) is None:
        raise ValueError(
            "recoding needs a character LM built as embedding -> recurrent stack -> head "
            "(the char_lm model of the charlm tasks)"
        )
    if getattr(rnn, "num_directions", 1) != 1:
        raise ValueError("recoding needs a unidirectional recurrent stack")
    return rnn


def _entropy(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def recode_bpc(
    model: nn.Module,
    tokens: Tensor,
    *,
    signal: str = "surprisal",
    eta: float = 0.1,
) -> RecodeResult:
    """Bits per character of ``model`` on ``tokens: (B, T)`` (predicting ``tokens[:, 1:]``)
    without and with recoding (see the module docstring).

    Args:
        model: a :class:`~rnnkit.models.SequenceModel` with an embedding (``char_lm``).
        tokens: ``(B, T)`` token ids, ``T >= 2``.
        signal: ``"entropy"`` or ``"surprisal"``.
        eta: the step size ``η`` (``0``: recoding changes nothing).
    """
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a non-negative number, got {eta}")
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (B, T) with T >= 2, got {tuple(tokens.shape)}")
    rnn = _stack_state_fields(model)
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        base = _bits(model, rnn, tokens, signal, 0.0)
        recoded = base if eta == 0 else _bits(model, rnn, tokens, signal, eta)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    n = int(tokens.shape[0] * (tokens.shape[1] - 1))
    return RecodeResult(signal, eta, base, recoded, n)


def recode_state(
    model: nn.Module,
    state: Any,
    x_t: Tensor,
    gold: Tensor | None,
    *,
    signal: str,
    eta: float,
) -> Any:
    """The state entering a step, moved by ``−η ∇ δ``: ``δ`` is the entropy of the step's
    prediction or (``signal="surprisal"``) ``−log p(gold)``, summed over the batch.

    Args:
        model: as for :func:`recode_bpc`.
        state: the recurrent stack's state entering the step (fields ``(L, B, ...)``).
        x_t: ``(B,)`` the token read at the step.
        gold: ``(B,)`` the next token (needed for ``surprisal`` only).
        signal, eta: see :func:`recode_bpc`.
    """
    rnn = _stack_state_fields(model)
    embed: nn.Module = model.embed  # type: ignore[assignment]
    head: nn.Module = model.head  # type: ignore[assignment]
    fields = [f.detach().clone().requires_grad_(True) for f in state]
    make = getattr(type(state), "_make", None)
    leaf = make(fields) if make is not None else tuple(fields)
    with torch.enable_grad():
        y, _ = rnn.step(embed(x_t), leaf)
        logits = head(y)
        if signal == "surprisal":
            if gold is None:
                raise ValueError("gold is needed for signal='surprisal'")
            delta = torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
        else:
            delta = _entropy(logits).sum()
        grads = torch.autograd.grad(delta, fields, allow_unused=True)
    # allow_unused: a field the step's output does not read has no gradient (None at run
    # time, though torch's stubs say Tensor)
    maybe: list[Tensor | None] = list(grads)
    out = [
        f.detach() if g is None else f.detach() - eta * torch.nan_to_num(g)
        for f, g in zip(fields, maybe, strict=True)
    ]
    return make(out) if make is not None else tuple(out)


def _bits(model: nn.Module, rnn: Any, tokens: Tensor, signal: str, eta: float) -> float:
    embed: nn.Module = model.embed  # type: ignore[assignment]
    head: nn.Module = model.head  # type: ignore[assignment]
    batch, length = tokens.shape
    dtype = next(model.parameters()).dtype
    state = rnn.init_state(batch, dtype=dtype)
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for t in range(length - 1):
            x_t, gold = tokens[:, t], tokens[:, t + 1]
            if eta > 0 and signal == "entropy":
                state = recode_state(model, state, x_t, None, signal=signal, eta=eta)
            y, new = rnn.step(embed(x_t), state)
            logits = head(y)
            total += torch.nn.functional.cross_entropy(logits.double(), gold, reduction="sum")
            if eta > 0 and signal == "surprisal":  # scored first: the move reads the label
                state = recode_state(model, state, x_t, gold, signal=signal, eta=eta)
                _, new = rnn.step(embed(x_t), state)
            state = new
    return float(total) / (batch * (length - 1)) / math.log(2.0)


# --- the command ----------------------------------------------------------------------------


def configure_analyse(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit analyse fixed-points|recode``."""
    sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    fp = sub.add_parser(
        "fixed-points",
        help="fixed and slow points of a registered cell (random weights) or of the first "
        "recurrent layer of a finished run, with Jacobian eigenvalues",
    )
    which = fp.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", help="a registered cell, with random weights (see --seed)")
    which.add_argument("--run", metavar="DIR", help="a finished run (its first layer's cell)")
    fp.add_argument("--hidden-size", type=int, help="with --cell (default 8)")
    fp.add_argument("--input-size", type=int, help="with --cell (default 2)")
    fp.add_argument("--starts", type=int, default=64, help="starting states (default 64)")
    fp.add_argument("--iterations", type=int, default=1500, help="Adam steps (default 1500)")
    fp.add_argument("--lr", type=float, default=0.05, help="Adam step size (default 0.05)")
    fp.add_argument("--noise", type=float, default=0.1, help="start noise sd (default 0.1)")
    fp.add_argument("--tol-fixed", type=float, default=1e-10, help="q of a fixed point")
    fp.add_argument("--tol-slow", type=float, default=1e-4, help="q of a slow point")
    fp.add_argument("--tol-unique", type=float, default=1e-3, help="merge distance")
    fp.add_argument("--seed", type=int, default=0)
    fp.add_argument("--json", action="store_true", help="print JSON")
    rc = sub.add_parser(
        "recode",
        help="bits per character of a finished charlm run with and without recoding its "
        "state at inference",
    )
    rc.add_argument("--run", required=True, metavar="DIR", help="a finished charlm run")
    rc.add_argument("--signal", choices=SIGNALS, default="surprisal", help="default surprisal")
    rc.add_argument("--eta", default="0.1", help="step size(s), comma-separated (default 0.1)")
    rc.add_argument("--split", choices=("valid", "test"), default="test", help="default test")
    rc.add_argument("--sequences", type=int, default=64, help="sequences scored (default 64)")
    rc.add_argument("--json", action="store_true", help="print JSON")


def _first_cell(model: nn.Module) -> Cell[Any]:
    for m in model.modules():
        if isinstance(m, Cell):
            return m
    raise ValueError("the run's model has no recurrent cell")


def run_analyse(args: argparse.Namespace) -> int:
    """Run ``rnnkit analyse``."""
    if args.analysis == "fixed-points":
        return _run_fixed_points(args)
    return _run_recode(args)


#: the options of ``rnnkit analyse fixed-points`` that size the ``--cell`` (a run's cell has
#: its own sizes), with their defaults
_CELL_SIZES = {"hidden_size": 8, "input_size": 2}


def _check_fixed_point_options(args: argparse.Namespace) -> None:
    """Refuse, by the option's name and before a run is read, out-of-range values (which
    :func:`find_fixed_points` would refuse by its keywords' names, ``tol_fixed``, after the run
    was loaded) and the ``--cell`` sizes given with ``--run`` (they would be ignored); fill in
    the sizes' defaults."""
    for flag in ("--starts", "--iterations"):
        value = getattr(args, flag[2:])
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    for flag in ("--noise", "--tol-fixed", "--tol-slow", "--tol-unique"):
        x = getattr(args, flag[2:].replace("-", "_"))
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"{flag} must be a finite number >= 0, got {x}")
    flags = {name: "--" + name.replace("_", "-") for name in _CELL_SIZES}
    if args.run:
        given = [flags[name] for name in _CELL_SIZES if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --cell (a run's cell has its sizes)")
        return
    for name, default in _CELL_SIZES.items():
        value = getattr(args, name)
        if value is None:
            setattr(args, name, default)
        elif value < 1:
            raise ValueError(f"{flags[name]} must be a positive integer, got {value}")


def _run_fixed_points(args: argparse.Namespace) -> int:
    _check_fixed_point_options(args)
    if args.run:
        from rnnkit.tasks.reuse import load_run

        cell = _first_cell(load_run(args.run).model)
        label = f"{args.run}: {type(cell).__name__}"
    else:
        from rnnkit.core.plugins import get_host

        torch.manual_seed(args.seed)
        cls = get_host().cells.get(args.cell).obj.cls
        cell = cls(args.input_size, args.hidden_size)
        label = f"{args.cell} (random weights, seed {args.seed})"
    report = find_fixed_points(
        cell,
        starts=args.starts,
        iterations=args.iterations,
        lr=args.lr,
        noise=args.noise,
        tol_fixed=args.tol_fixed,
        tol_slow=args.tol_slow,
        tol_unique=args.tol_unique,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(asdict(report), indent=1))
        return 0
    from rnnkit.core.listing import format_table

    rows = [
        [
            str(i),
            f"{p.q:.2e}",
            p.kind,
            f"{p.spectral_radius:.4f}",
            "stable" if p.stable else "unstable",
            str(sum(math.hypot(*e) > 1 for e in p.eigenvalues)),
        ]
        for i, p in enumerate(report.points)
    ]
    print(format_table(rows, ["point", "q", "kind", "max |λ|", "stability", "unstable modes"]))
    print(
        f"\n{label}: {len(report.points)} unique points from {report.starts} starts, state "
        f"size {report.state_size}, input zero"
    )
    return 0


def _run_recode(args: argparse.Namespace) -> int:
    from rnnkit.tasks.reuse import load_run

    if args.sequences < 1:
        raise ValueError(f"--sequences must be a positive integer, got {args.sequences}")
    try:
        etas = [float(e) for e in args.eta.split(",") if e.strip()]
    except ValueError:
        raise ValueError(f"--eta expects comma-separated numbers, got {args.eta!r}") from None
    if not etas:
        raise ValueError(f"--eta needs at least one step size, got {args.eta!r}")
    if not all(math.isfinite(e) and e >= 0 for e in etas):
        raise ValueError(f"--eta must be finite numbers >= 0, got {args.eta!r}")
    run = load_run(args.run)
    if not run.task.name.startswith("charlm"):
        raise ValueError(f"--run must be a charlm run, got task {run.task.name!r}")
    split = run.task.data(run.seed).split(args.split)
    tokens = split.inputs[: args.sequences]
    results = [recode_bpc(run.model, tokens, signal=args.signal, eta=e) for e in etas]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
        return 0
    for r in results:
        print(
            f"{r.signal} eta {r.eta:g}: {r.recoded:.4f} bpc (without recoding "
            f"{r.baseline:.4f}) on {r.characters} characters of the {args.split} split"
        )
    return 0
