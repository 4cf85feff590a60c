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
