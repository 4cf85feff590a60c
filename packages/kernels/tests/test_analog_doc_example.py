"""The first ``python`` block of ``docs/analog.md`` runs as written, in a fresh namespace (a new
user pastes it; it once used an ``x`` it never defined)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

PAGE = Path(__file__).resolve().parents[3] / "docs" / "analog.md"


def test_the_quick_example_runs_as_written() -> None:
    if not PAGE.is_file():
        pytest.skip(f"{PAGE} is not here (the package was installed without the repository)")
    (code, *_) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    namespace: dict[str, Any] = {}
    torch.manual_seed(0)
    exec(compile(code, str(PAGE), "exec"), namespace)
    y, y1, x = namespace["y"], namespace["y1"], namespace["x"]
    assert y.shape == y1.shape == (*x.shape[:2], 128)
    assert torch.isfinite(y).all() and torch.isfinite(y1).all()
    assert not torch.equal(y, y1)  # a day of drift and 1/f noise changes the outputs
