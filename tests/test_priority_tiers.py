"""Every registered kernel ranks calls on the named tiers of ``Priority`` (no raw numbers),
for every registered cell, in training and inference, float32 and float64, short and long."""

from __future__ import annotations

import pytest
import torch

from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.core.kernel import Priority
from rnnkit.core.testing import registered_cases

TIERS = {int(p) for p in Priority}


@pytest.mark.parametrize("case", registered_cases(), ids=lambda c: c.id)
def test_every_kernel_ranks_on_a_tier(case: object) -> None:
    cell = case.make()  # type: ignore[attr-defined]
    kernels = kernels_for(cell)
    assert any(k.backend == "reference" for k in kernels)
    for dtype in (torch.float32, torch.float64):
        cell = cell.to(dtype)
        for time in (3, 300):
            x = torch.zeros(2, time, cell.input_size, dtype=dtype)
            for needs_grad in (False, True):
                call = KernelCall(cell, x, None, None, needs_grad)
                ranks = {k.key: k.rank(call) for k in kernels}
                off = {key: r for key, r in ranks.items() if r not in TIERS}
                assert not off, f"ranks off the Priority tiers: {off}"
