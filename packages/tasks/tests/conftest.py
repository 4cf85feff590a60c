"""Shared fixtures: task data are built once per test session."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile

import pytest
import torch

from rnnkit.tasks import TaskData, get_task


def pytest_configure(config: pytest.Config) -> None:
    """Data that tasks build on first use (the kws clips) go to a fresh folder, not ~/.cache."""
    if "RNNKIT_CACHE" not in os.environ:
        os.environ["RNNKIT_CACHE"] = tempfile.mkdtemp(prefix="rnnkit-test-cache-")


SERIES_TASKS = frozenset({"sunspots", "co2", "elnino"})


@functools.cache
def task_data(name: str, seed: int = 0) -> TaskData:
    """Cached ``get_task(name).data(seed)``; ``kws*`` are skipped without espeak-ng, the real
    series tasks without statsmodels (the ``series`` extra)."""
    no_audio = not os.environ.get("RNNKIT_SPEECH_COMMANDS") and shutil.which("espeak-ng") is None
    if name in ("kws", "kws12") and no_audio:
        pytest.skip(f"{name} needs espeak-ng (apt-get install espeak-ng) or RNNKIT_SPEECH_COMMANDS")
    if name in SERIES_TASKS and importlib.util.find_spec("statsmodels") is None:
        pytest.skip(f"{name} needs statsmodels: pip install 'rnnkit-tasks[series]'")
    return get_task(name).data(seed)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
