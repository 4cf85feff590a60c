"""The plugin module named by the ``rnnkit`` entry point: registers the ``lion_classifier``
network and the ``point_shapes`` task."""

from __future__ import annotations

from rnnkit.core import hookimpl
from rnnkit.core.hookspecs import RegisterModel, RegisterTask
from rnnkit_lion.data import POINT_SHAPES
from rnnkit_lion.model import lion_classifier


@hookimpl
def rnnkit_register_models(register: RegisterModel) -> None:
    register(
        "lion_classifier",
        lion_classifier,
        description="LION: a diagonal-linear cell over window-sorted voxel groups (point clouds)",
    )


@hookimpl
def rnnkit_register_tasks(register: RegisterTask) -> None:
    register(POINT_SHAPES.name, POINT_SHAPES, description=POINT_SHAPES.description)
