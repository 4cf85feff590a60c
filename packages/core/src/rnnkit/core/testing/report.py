"""What a conformance check ran: the backends and configurations it tried and what it skipped.

Every check of :mod:`rnnkit.core.testing.checks` returns a :class:`CheckReport` and publishes
it: inside a pytest test, the ``rnnkit`` pytest plugin attaches its summary to the test (a
``user_properties`` entry ``rnnkit_conformance``, written to JUnit XML by ``--junitxml``) and
prints every summary in a terminal section at the end of the run, so a plugin author sees
that, say, the ``triton`` backend was skipped everywhere because no GPU was present.

Import-light on purpose (no torch): the pytest plugin may format reports in any test run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class CheckReport:
    """What one check ran on one cell.

    Attributes:
        check: the check's name (a key of ``CHECKS``).
        cell: the cell's class name.
        ran: backend -> labels of the configurations it ran (``"float32 cpu state"``).
        skipped: backend -> reason -> labels of the configurations skipped for that reason.
        notes: anything else worth saying (the backend ``auto`` picked, a variant run).
    """

    check: str
    cell: str
    ran: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add_run(self, backend: str, config: str = "") -> None:
        """Record that ``backend`` ran the configuration ``config``."""
        self.ran.setdefault(backend, []).append(config)

    def add_skip(self, backend: str, reason: str, config: str = "") -> None:
        """Record that ``backend`` could not run ``config`` and why."""
        self.skipped.setdefault(backend, {}).setdefault(reason, []).append(config)

    def summary(self) -> str:
        """One line: ``backends on LSTM: ran fused x8, reference x12; skipped triton x12
        (no CUDA device)``. A backend that ran some configurations and skipped others
        appears in both lists."""
        parts = []
        if self.ran:
            parts.append("ran " + ", ".join(f"{b} x{len(c)}" for b, c in sorted(self.ran.items())))
        skips = [
            f"{backend} x{len(configs)} ({reason})"
            for backend, reasons in sorted(self.skipped.items())
            for reason, configs in reasons.items()
        ]
        if skips:
            parts.append("skipped " + "; ".join(skips))
        parts.extend(self.notes)
        return f"{self.check} on {self.cell}: " + ("; ".join(parts) or "nothing to run")


def publish(report: CheckReport) -> CheckReport:
    """Hand ``report`` to the ``rnnkit`` pytest plugin when a test is running; returns it.

    Looked up in ``sys.modules`` rather than imported: outside pytest (or with the plugin
    disabled, ``-p no:rnnkit``) there is nobody to hand it to.
    """
    plugin = sys.modules.get("rnnkit.core.testing.pytest_plugin")
    if plugin is not None:
        plugin.record(report.summary())
    return report
