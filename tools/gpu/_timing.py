"""Median milliseconds of a CUDA callable, for the scripts in tools/gpu (imported by name: they
run as ``python tools/gpu/<script>.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def median_ms(fn: Callable[[], Any], warmup: int = 25, rep: int = 100) -> float:
    """``triton.testing.do_bench(fn, warmup, rep)`` (milliseconds of warm-up and of timed
    repetitions); without triton the median of 10 CUDA-event timings after 3 warm-up calls."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=warmup, rep=rep))
    for _ in range(3):
        fn()
    times = []
    for _ in range(10):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(sorted(times)[len(times) // 2])
