"""``rnnkit.tasks.analog``: task experiments on the analog crossbar simulator.

A task's default LSTM is trained digitally by the one trainer (:mod:`rnnkit.tasks.trainer`),
mapped to simulated crossbars with :func:`rnnkit.kernels.analog.to_analog` and scored over
NL-ADC resolutions and programming-noise seeds, as trained and after hardware-aware
fine-tuning (again by the trainer). :mod:`.experiments` has the protocol, :mod:`.drift` the
accuracy over time after programming, :mod:`.cli` the ``rnnkit analog kws``, ``charlm`` and
``drift`` commands, which rnnkit-tasks adds to rnnkit-kernels' ``rnnkit analog`` command. See
``docs/analog.md``.

Needs rnnkit-kernels (the simulator): ``pip install 'rnnkit-tasks[analog]'``.
"""

from __future__ import annotations

try:
    import rnnkit.kernels.analog  # noqa: F401  (the simulator this subpackage drives)
except ModuleNotFoundError as exc:
    if exc.name not in ("rnnkit.kernels", "rnnkit.kernels.analog"):
        raise  # a broken install of rnnkit-kernels: keep its own error
    raise ModuleNotFoundError(
        "rnnkit.tasks.analog needs rnnkit-kernels (the crossbar simulator): "
        "pip install 'rnnkit-tasks[analog]' (from a checkout of the rnnkit repository: "
        "pip install -e packages/kernels)",
        name=exc.name,
    ) from exc

from rnnkit.tasks.analog.drift import drift_rows, format_drift, plot_drift
from rnnkit.tasks.analog.experiments import (
    charlm_rows,
    format_charlm,
    format_hw,
    format_kws,
    hw_rows,
    kws_rows,
    plot_hw,
)

__all__ = [
    "charlm_rows",
    "drift_rows",
    "format_charlm",
    "format_drift",
    "format_hw",
    "format_kws",
    "hw_rows",
    "kws_rows",
    "plot_drift",
    "plot_hw",
]
