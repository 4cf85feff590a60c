"""The trainer's progress display: a tqdm bar on stderr when wanted and installed.

The trainer's messages are logged (logger ``rnnkit.tasks``); while the bar is shown,
:meth:`Progress.logging_through` writes the records that would go to the console through tqdm,
so that the bar is redrawn below them instead of being broken up.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any


def wanted(progress: bool | None) -> bool:
    """Whether to show a bar: as asked, or (``None``) only when stderr is a terminal."""
    return progress if progress is not None else sys.stderr.isatty()


class Progress:
    """A tqdm bar over the training steps when ``enabled`` and tqdm is installed, else nothing.

    :meth:`write` always prints its line (above the bar when there is one).
    """

    #: the logger whose records :meth:`logging_through` redirects (with its ancestors')
    LOGGER = "rnnkit.tasks"

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

    @contextlib.contextmanager
    def logging_through(self) -> Iterator[None]:
        """While the bar is shown, send the console handlers of the ``rnnkit.tasks`` logger
        and its ancestors through ``tqdm.write`` (restored afterwards); without a bar, nothing
        changes."""
        if self.bar is None:
            yield
            return
        logging_redirect_tqdm = importlib.import_module(
            "tqdm.contrib.logging"
        ).logging_redirect_tqdm
        # only the loggers that have a console handler: tqdm adds its handler to each logger
        # it is given, and two would print every line twice
        loggers = []
        logger: logging.Logger | None = logging.getLogger(self.LOGGER)
        while logger is not None:
            if any(_console(h) for h in logger.handlers):
                loggers.append(logger)
            logger = logger.parent if logger.propagate else None
        if not loggers:
            yield
            return
        with logging_redirect_tqdm(loggers=loggers):
            yield

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


def format_metrics(metrics: Mapping[str, float], keys: list[str] | None = None) -> str:
    """``"accuracy 0.9531  loss 0.1234"``: ``keys`` (default all) with 4 significant digits."""
    keys = keys or list(metrics)
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def _console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stdout,
        sys.stderr,
    )
