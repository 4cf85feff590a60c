"""rnnkit-core's own plugin: the canonical cells, the reference backend and ``rnnkit demo``.

Registered through the entry point ``core = rnnkit.core._plugin`` exactly like a third-party
plugin.
"""

from __future__ import annotations

import argparse

from rnnkit.core.api import create_cell
from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.hookspecs import RegisterCell, RegisterCommand, RegisterKernel, hookimpl
from rnnkit.core.reference import REFERENCE_KERNEL
from rnnkit.core.validation import check_positive_int


@hookimpl
def rnnkit_register_cells(register: RegisterCell) -> None:
    register(
        "elman",
        Elman,
        description="Elman RNN (torch.nn.RNN), tanh or relu",
        test_configs=[{}, {"nonlinearity": "relu"}, {"heads": 2}],
    )
    register("lstm", LSTM, description="LSTM (torch.nn.LSTM)", test_configs=[{}, {"heads": 2}])
    register("gru", GRU, description="GRU (torch.nn.GRU)", test_configs=[{}, {"heads": 2}])
    register(
        "slstm",
        SLSTM,
        description="sLSTM (xLSTM): stabilised exponential gating, normaliser state",
        test_configs=[{}, {"heads": 2}],
    )


@hookimpl
def rnnkit_register_kernels(register: RegisterKernel) -> None:
    register(REFERENCE_KERNEL)


@hookimpl
def rnnkit_register_commands(register: RegisterCommand) -> None:
    register(
        "demo",
        help="run a small cell on random data and show what it returns",
        configure=_configure_demo,
        run=_run_demo,
    )


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", default="lstm", help="registered cell name (default: lstm)")
    parser.add_argument("--backend", default="auto", help="backend name (default: auto)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--time", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    # zero or negative sizes reach torch otherwise (a traceback from max() or randn)
    check_positive_int("--batch", args.batch)
    check_positive_int("--time", args.time)
    torch.manual_seed(args.seed)
    cell = create_cell(args.cell, input_size=args.input_size, hidden_size=args.hidden_size)
    x = torch.randn(args.batch, args.time, args.input_size)
    kernel = select(KernelCall(cell, x, None, None, needs_grad=True), args.backend)
    y, state = cell(x, backend=args.backend)
    y.square().mean().backward()
    # streaming: step through the same sequence one input at a time
    with torch.no_grad():
        s = None
        for x_t in x.unbind(1):
            y_t, s = cell.step(x_t, s)
        drift = (y_t - y[:, -1]).abs().max().item()
    print(f"cell      {args.cell}: {cell}")
    print(f"backend   {kernel.backend} ({kernel.description})")
    print(f"input     x {tuple(x.shape)}")
    print(f"output    y {tuple(y.shape)}, mean {y.mean().item():+.4f}, std {y.std().item():.4f}")
    for name, t in zip(state._fields, state, strict=True):
        print(f"state     {name} {tuple(t.shape)}")
    grads = sum(p.grad.norm().item() ** 2 for p in cell.parameters() if p.grad is not None)
    print(f"gradient  |d loss / d params| = {grads**0.5:.4f}")
    print(f"streaming step() vs forward(), last output: max |diff| = {drift:.2e}")
    return 0
