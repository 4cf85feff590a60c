"""The built-in tasks: declared beside their data generators, collected by the registry."""

from __future__ import annotations

import functools
import importlib

from rnnkit.tasks import get_task, list_tasks
from rnnkit.tasks.registry import TASK_MODULES, builtin_tasks


def test_each_task_is_declared_in_the_module_of_its_data_generator() -> None:
    for name in TASK_MODULES:
        module = importlib.import_module(f"rnnkit.tasks.{name}")
        assert module.TASKS, name
        for task in module.TASKS:
            make = task.make_data
            while isinstance(make, functools.partial):
                make = make.func
            assert make.__module__ == module.__name__, (task.name, make.__module__)


def test_the_registry_registers_every_declared_task_once() -> None:
    tasks = builtin_tasks()
    names = [t.name for t in tasks]
    assert len(names) == len(set(names))
    assert set(names) <= set(list_tasks())
    for task in tasks:
        assert get_task(task.name) is task
