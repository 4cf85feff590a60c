"""Generated point clouds of four shapes (sphere, cube, cylinder, torus) and the
``point_shapes`` classification task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import Budget, Split, Task, TaskData
from rnnkit.tasks.metrics import accuracy

SHAPES = ("sphere", "cube", "cylinder", "torus")


def _surface(shape: int, n: int, g: torch.Generator) -> Tensor:
    """``(n, 3)`` points on the surface of shape ``shape`` (an index into :data:`SHAPES`),
    centred at the origin, about unit size."""
    u = torch.rand(n, 3, generator=g)
    if shape == 0:  # sphere of radius 1/2
        g3 = torch.randn(n, 3, generator=g)
        sphere: Tensor = 0.5 * g3 / g3.norm(dim=1, keepdim=True)
        return sphere
    if shape == 1:  # cube of edge 1: a random face, uniform on it
        face = torch.randint(0, 3, (n,), generator=g)
        sign = torch.randint(0, 2, (n,), generator=g).float() - 0.5
        p = u - 0.5
        p[torch.arange(n), face] = sign
        return p
    if shape == 2:  # cylinder, radius 1/2, height 1, caps included by area
        angle = 2 * math.pi * u[:, 0]
        side = u[:, 1] < 2 / 3  # side area 2 pi r h = pi, caps 2 pi r^2 = pi / 2
        cap_z = torch.where(torch.rand(n, generator=g) < 0.5, -0.5, 0.5)
        r = torch.where(side, torch.full_like(u[:, 2], 0.5), 0.5 * u[:, 2].sqrt())
        z = torch.where(side, torch.rand(n, generator=g) - 0.5, cap_z)
        return torch.stack((r * angle.cos(), r * angle.sin(), z), dim=1)
    # torus, tube radius 0.15 around a circle of radius 0.35
    a, b = 2 * math.pi * u[:, 0], 2 * math.pi * u[:, 1]
    ring = 0.35 + 0.15 * b.cos()
    return torch.stack((ring * a.cos(), ring * a.sin(), 0.15 * b.sin()), dim=1)


def _rotation(g: torch.Generator) -> Tensor:
    """A random rotation matrix ``(3, 3)`` (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g))
    rot: Tensor = q * torch.sign(torch.diagonal(r))
    if torch.det(rot) < 0:
        rot[:, 0] = -rot[:, 0]
    return rot


def point_clouds(
    n: int, points: int, g: torch.Generator, *, noise: float = 0.02, rotate: bool = True
) -> tuple[Tensor, Tensor]:
    """``n`` clouds ``(n, points, 3)`` in ``[0, 1)^3`` and their labels ``(n,)``.

    Each cloud: a shape drawn uniformly, surface samples, a random anisotropic scale in
    ``[0.7, 1.3]`` per axis, a random rotation (``rotate``), Gaussian noise of std ``noise``
    (in shape units), then centred at ``1/2`` and scaled to fit in ``[0.05, 0.95]``.
    """
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    clouds = []
    for label in labels.tolist():
        p = _surface(label, points, g)
        p = p * (0.7 + 0.6 * torch.rand(3, generator=g))
        if rotate:
            p = p @ _rotation(g).T
        p = p + noise * torch.randn(p.shape, generator=g)
        p = p - p.mean(0)
        clouds.append(0.5 + 0.45 * p / p.abs().max())
    return torch.stack(clouds), labels


def point_shapes_data(
    seed: int, *, points: int = 256, sizes: tuple[int, int, int] = (2000, 400, 400)
) -> TaskData:
    """The ``point_shapes`` splits: inputs ``(N, points, 3)`` float, targets ``(N,)``."""
    splits = []
    for stream, size in enumerate(sizes):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + stream * 7919 + 29)
        splits.append(Split(*point_clouds(size, points, g)))
    return TaskData(splits[0], splits[1], splits[2], {"shapes": SHAPES})


def _metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> dict[str, float]:
    return {"accuracy": accuracy(outputs, targets)}


POINT_SHAPES = Task(
    name="point_shapes",
    description="classify noisy point clouds (256 points) of spheres, cubes, cylinders, tori",
    kind="classify",
    make_data=point_shapes_data,
    metric_fn=_metrics,
    primary="accuracy",
    io={"input_size": 3, "output_size": len(SHAPES)},
    model="lion_classifier",
    model_config={"hidden_size": 32, "cell": "lru"},
    budget=Budget(steps=300, batch_size=32, lr=3e-3, eval_every=100),
    # what the default model and budget reached (test 0.66, docs/tasks.md); still rising there
    target=0.6,
    reference="LION (Liu et al. 2024) reports 3D detection on Waymo/nuScenes; not comparable",
    details=(
        "Generated data: random anisotropic scale, random rotation, noise std 0.02; "
        "2,000/400/400 clouds, classes balanced in expectation."
    ),
)
