"""Shared fixtures: task data are built once per test session."""

from __future__ import annotations

import functools

import pytest
import torch

from rnnkit.tasks import TaskData, get_task


@functools.cache
def task_data(name: str, seed: int = 0) -> TaskData:
    """Cached ``get_task(name).data(seed)``."""
    return get_task(name).data(seed)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
