"""The trainer's progress display: a tqdm bar when wanted and installed, and printed lines."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


def wanted(progress: bool | None) -> bool:
    """Whether to show a bar: as asked, or (``None``) only when stderr is a terminal."""
    return progress if progress is not None else sys.stderr.isatty()


class Progress:
    """A tqdm bar over the training steps when ``enabled`` and tqdm is installed, else nothing.

    :meth:`write` always prints its line (above the bar when there is one).
    """

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            try:
                tqdm = importlib.import_module("tqdm.auto").tqdm
                self.bar = tqdm(
                    total=total,
                    initial=initial,
                    unit="step",
                    dynamic_ncols=True,
                    file=sys.stderr,
                    leave=False,
                )
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, **postfix: str) -> None:
        """One more step done; ``postfix`` is shown after the bar (``loss="0.1234"``)."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def write(self, line: str) -> None:
        """Print ``line`` (through the bar, so that it is not overwritten)."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


def format_metrics(metrics: Mapping[str, float], keys: list[str] | None = None) -> str:
    """``"accuracy 0.9531  loss 0.1234"``: ``keys`` (default all) with 4 significant digits."""
    keys = keys or list(metrics)
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
