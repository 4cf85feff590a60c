"""DeltaNet (rnnkit-models) on the matrix-state form's ``chunked`` backend (rnnkit-kernels)
against the float64 ``reference`` loop: values and the gradients of every parameter, the input
and the initial state, on odd shapes. The op itself is tested against the step recurrence in
rnnkit-kernels' ``test_form_matrix_state.py``."""

from __future__ import annotations

import pytest
import torch

from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.testing.checks import make_problem, run_cell
from rnnkit.core.testing.numerics import rel_rms, tolerance
from rnnkit.kernels.matrix_state import chunked as deltanet_chunked
from rnnkit.models.cells import DeltaNet


def _check(
    cell: DeltaNet,
    *,
    batch: int,
    time: int,
    dtype: torch.dtype,
    use_state: bool,
    use_resets: bool,
) -> None:
    cell = cell.double()
    p = make_problem(cell, batch=batch, time=time, seed=time)
    want = run_cell(
        cell, p, backend="reference", dtype=torch.float64,
        use_state=use_state, use_resets=use_resets,
    )  # fmt: skip
    got = run_cell(
        cell, p, backend="chunked", dtype=dtype, use_state=use_state, use_resets=use_resets
    )
    tol = tolerance(dtype)
    errs = {"y": rel_rms(got.y, want.y)}
    for name, a, b in zip(("S", "prev"), got.state, want.state, strict=True):
        errs[f"state.{name}"] = rel_rms(a, b)
    assert got.grads.keys() == want.grads.keys()
    for key in want.grads:
        errs[f"grad {key}"] = rel_rms(got.grads[key], want.grads[key])
    expected = {"x", "param.weight", "param.weight_beta", "param.bias_beta", "param.conv"}
    if use_state:
        expected |= {"state.S", "state.prev"}
    assert expected <= {k.removeprefix("grad ") for k in errs}
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= tol}
    assert not bad, f"chunked vs reference ({dtype}, tolerance {tol:.0e}): {bad}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("rule", "heads"), [("delta", 1), ("delta", 3), ("linear", 2)])
@pytest.mark.parametrize("time", [1, 4, 11])
def test_small_chunks_match_reference(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, rule: str, heads: int, time: int
) -> None:
    """Chunks of 4 tokens: T=1 (one short chunk), T=4 (one full chunk), T=11 (three chunks,
    the last padded); with and without initial state and resets."""
    monkeypatch.setattr(deltanet_chunked, "CHUNK", 4)
    torch.manual_seed(heads + time)
    for use_state in (True, False):
        for use_resets in (False, True):
            _check(
                DeltaNet(5, 6, heads=heads, rule=rule),
                batch=3, time=time, dtype=dtype, use_state=use_state, use_resets=use_resets,
            )  # fmt: skip


@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_default_chunk_match_reference(rule: str) -> None:
    """The default chunk size with T = CHUNK + 3 (a second, padded chunk), two heads."""
    torch.manual_seed(1)
    _check(
        DeltaNet(4, 8, heads=2, rule=rule),
        batch=2, time=deltanet_chunked.CHUNK + 3, dtype=torch.float32,
        use_state=True, use_resets=True,
    )  # fmt: skip


def test_auto_picks_chunked() -> None:
    cell = DeltaNet(3, 4)
    x = torch.randn(2, 5, 3)
    for resets in (None, torch.zeros(2, 5, dtype=torch.bool)):
        call = KernelCall(cell, x, None, resets, needs_grad=True)
        assert select(call).backend == "chunked"
