"""Generation throughput through the state cache: a Mamba/attention hybrid (M1-style: mostly
Mamba layers, a few attention layers) against an attention-only transformer LM of (nearly) the
same parameter count, as the context grows.

    python tools/bench/generation.py                       # W=128, 4 layers, L=256,1024,4096
    python tools/bench/generation.py --quick               # L=128,512, a few seconds
    python tools/bench/generation.py --device cuda --width 512 --layers 8
    python tools/bench/generation.py --threads 1 --clock cpu   # a machine shared with others

Both models decode through ``rnnkit.models.cache`` (``prefill`` then ``step``). For each
total length ``L`` (prompt + generated) and batch size ``B``: the prompt of ``L - new`` random
tokens is read with ``prefill``, then ``new`` tokens are decoded greedily (each argmax fed
back with one ``step``); the decode loop alone is timed (best of ``--reps``) and reported as
tokens per second (``B * new / seconds``), with the cache's size in MiB at the end and the
prefill's tokens per second. The ratio column is hybrid / transformer, measured in the same
process, one after the other at each row. The hybrid's attention layers keep a growing
key/value cache too; its Mamba layers keep a fixed-size state.

The transformer's MLP width is solved so that its parameter count (its position table for the
longest length included) is as close as it can be to the hybrid's; both counts are printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.models import create_model
from rnnkit.models.cache import KVCache, ModelCache


def param_count(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def cache_bytes(cache: ModelCache) -> int:
    """The bytes of the positions held by ``cache``: every state tensor, and an attention
    layer's keys and values read so far (a :class:`KVCache` views the first positions of a
    buffer that may hold up to twice as many; the spare room is not counted)."""
    total = 0
    for state in cache.states:
        fields = state if isinstance(state, (tuple, KVCache)) else (state,)
        total += sum(t.numel() * t.element_size() for t in fields if isinstance(t, Tensor))
    return total


def hybrid(args: argparse.Namespace) -> nn.Module:
    """Mamba layers with attention at every ``attn_every``-th layer, dense SwiGLU MLPs."""
    return create_model(
        "jamba",
        vocab_size=args.vocab,
        hidden_size=args.width,
        num_layers=args.layers,
        attn_every=args.attn_every,
        attn_offset=args.attn_every - 1,
        heads=args.heads,
        kv_heads=args.heads,
        num_experts=0,
        d_state=16,
    )


def transformer(args: argparse.Namespace, target: int, max_len: int) -> nn.Module:
    """``transformer_lm`` of the same width and depth, its MLP width solved to ``target``
    parameters."""

    def build(ratio: float) -> nn.Module:
        return create_model(
            "transformer_lm",
            vocab_size=args.vocab,
            hidden_size=args.width,
            num_layers=args.layers,
            heads=args.heads,
            mlp_ratio=ratio,
            max_len=max_len,
        )

    # the count is linear in the MLP's hidden width (three width x hidden matrices per layer)
    base = param_count(build(0.0))
    per_hidden = 3 * args.width * args.layers
    hidden = round((target - base) / per_hidden)
    if hidden < 1:
        raise SystemExit(
            f"the transformer's attention and {max_len} positions already hold {base} "
            f"parameters, more than the hybrid's {target}: use a wider or deeper model"
        )
    return build(hidden / args.width)


@torch.no_grad()
def decode(
    model: Any,
    batch: int,
    total: int,
    new: int,
    device: torch.device,
    reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, int]:
    """``(decode tokens/s, prefill tokens/s, cache bytes at the end)`` for ``batch``
    sequences of ``total - new`` prompt tokens and ``new`` generated ones, timed by
    ``clock`` (best of ``reps``, after an untimed two-step warm-up)."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 64, (batch, total - new), generator=gen).to(device)
    logits, cache = model.prefill(prompt[:, :8])
    token = logits[:, -1].argmax(-1)
    for _ in range(2):
        logits, cache = model.step(token, cache)
        token = logits.argmax(-1)
    best_decode = best_prefill = float("inf")
    size = 0
    for _ in range(reps):
        sync(device)
        t0 = clock()
        logits, cache = model.prefill(prompt)
        sync(device)
        best_prefill = min(best_prefill, clock() - t0)
        token = logits[:, -1].argmax(-1)
        t0 = clock()
        for _ in range(new):
            logits, cache = model.step(token, cache)
            token = logits.argmax(-1)
        sync(device)
        best_decode = min(best_decode, clock() - t0)
        size = cache_bytes(cache)
    return batch * new / best_decode, batch * (total - new) / best_prefill, size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="256,1024,4096", help="prompt + generated tokens")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new", type=int, default=32, help="generated (timed) tokens per row")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--attn-every", type=int, default=4, help="hybrid: 1 attention layer in N")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the process's CPU time (a machine shared with other jobs; use --threads 1)",
    )
    ap.add_argument("--quick", action="store_true", help="L=128,512, batches 1,4, 16 tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.batches, args.new = "128,512", "1,4", 16
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    lengths = [int(v) for v in args.lengths.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    if min(lengths) <= args.new:
        raise SystemExit(f"every length must exceed --new={args.new}")
    torch.manual_seed(0)
    hyb = hybrid(args).to(device).eval()
    tra = transformer(args, param_count(hyb), max(lengths)).to(device).eval()
    layout = ",".join(hyb.layers)  # type: ignore[union-attr]
    print(
        f"hybrid ({layout}): {param_count(hyb):,} parameters; transformer "
        f"({args.layers} attention layers, max_len {max(lengths)}): {param_count(tra):,}; "
        f"width {args.width}, {args.heads} heads, {device}, {torch.get_num_threads()} threads, "
        f"{args.new} tokens decoded per row, best of {args.reps}, {args.clock} clock"
    )
    print(
        "| L | B | hybrid tok/s | transformer tok/s | ratio | hybrid cache MiB "
        "| transformer cache MiB | hybrid prefill tok/s | transformer prefill tok/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for total in lengths:
        for batch in batches:
            h = decode(hyb, batch, total, args.new, device, args.reps, clock)
            t = decode(tra, batch, total, args.new, device, args.reps, clock)
            print(
                f"| {total} | {batch} | {h[0]:.0f} | {t[0]:.0f} | {h[0] / t[0]:.2f} "
                f"| {h[2] / 2**20:.2f} | {t[2] / 2**20:.2f} | {h[1]:.0f} | {t[1]:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
