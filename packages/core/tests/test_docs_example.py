"""The complete example cell of docs/cell-abi.md passes the conformance kit as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rnnkit.core.testing import check_cell

DOC = Path(__file__).resolve().parents[3] / "docs" / "cell-abi.md"


def test_cell_abi_example_is_conformant() -> None:
    text = DOC.read_text()
    example = text.split("## 7. A complete example", 1)[1]
    code = re.findall(r"```python\n(.*?)```", example, flags=re.S)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    cls = namespace["LeakyTanh"]
    check_cell(lambda: cls(input_size=5, hidden_size=6))


def test_gated_cell_example_is_conformant_and_runs_on_reference() -> None:
    """The GatedCell subclass of section 4 as written; section 4 says that no fast gated
    kernel targets a new kind, so ``auto`` picks ``reference`` for it."""
    from typing import NamedTuple

    import torch
    from torch import Tensor

    from rnnkit.core import GatedCell
    from rnnkit.core.dispatch import KernelCall, select

    class JanetState(NamedTuple):
        h: Tensor

    text = DOC.read_text()
    section = text.split("## 4. Forms", 1)[1].split("## 5.", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict[str, Any] = {
        "GatedCell": GatedCell,
        "JanetState": JanetState,
        "Tensor": Tensor,
        "torch": torch,
    }
    exec(compile(code, str(DOC), "exec"), namespace)
    cls = namespace["GatedJanet"]
    check_cell(lambda: cls(input_size=5, hidden_size=6))
    check_cell(lambda: cls(input_size=5, hidden_size=6, heads=2))
    cell = cls(input_size=5, hidden_size=6)
    call = KernelCall(cell, torch.randn(2, 3, 5), None, None, True)
    assert select(call, "auto").backend == "reference"
