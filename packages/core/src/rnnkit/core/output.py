"""What ``rnnkit`` commands print, and where: the ``-q/--quiet`` and ``--json`` options.

Every command that reports results (``list``, ``info``, ``plugins``, ``train``, ``compare``,
``analog ...``) takes both, added by :func:`add_output_options`:

- stdout holds the results only: a table or text by default, **one JSON document** with
  ``--json`` (nothing else is written to stdout then), nothing with ``--quiet``;
- messages about the work in progress (the trainer's evaluation lines, warnings) go through
  :mod:`logging` under the ``rnnkit`` logger, which the command line sends to stderr
  (:func:`configure_logging`); ``--quiet`` keeps only errors there.

``--json --quiet`` prints the JSON document and no messages. The exit status says whether the
command succeeded, whatever is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, TextIO

__all__ = [
    "LOGGER",
    "add_output_options",
    "configure_logging",
    "is_quiet",
    "print_json",
    "shows_text",
    "wants_json",
]

#: the logger every rnnkit package logs under (``rnnkit.tasks``, ``rnnkit.kernels.native``, ...)
LOGGER = "rnnkit"


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-q/--quiet`` and ``--json`` to ``parser`` (see the module docstring)."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing but errors (the exit status says whether it succeeded)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON document on stdout, and nothing else there",
    )


def wants_json(args: argparse.Namespace) -> bool:
    """Whether ``--json`` was given."""
    return bool(getattr(args, "json", False))


def is_quiet(args: argparse.Namespace) -> bool:
    """Whether ``-q/--quiet`` was given."""
    return bool(getattr(args, "quiet", False))


def shows_text(args: argparse.Namespace) -> bool:
    """Whether the command prints its human-readable results (neither ``--json`` nor
    ``--quiet``)."""
    return not wants_json(args) and not is_quiet(args)


def print_json(document: Any) -> None:
    """Print ``document`` as JSON on stdout (one document, indented; values JSON cannot hold,
    such as paths, as their ``str``)."""
    print(json.dumps(document, indent=1, default=str))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A stream handler on the *current* ``sys.stderr``: tests and callers that redirect
    stderr after the handler was installed still receive the messages."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(quiet: bool = False) -> None:
    """Send the ``rnnkit`` logger's records to stderr as plain lines: ``INFO`` and above, or
    only errors when ``quiet``. Called by the command line; calling it again replaces the
    handler it installed before (not any other handler)."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if isinstance(handler, _StderrHandler):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
