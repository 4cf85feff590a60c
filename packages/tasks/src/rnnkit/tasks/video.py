"""Generated video: scikit-learn's 8x8 digits moving on a small canvas, classified by the
motion pattern (an activity-recognition stand-in for LRCN, Donahue et al., CVPR 2015).

Each clip has ``frames`` frames of a ``canvas x canvas`` canvas holding one digit (any digit:
the class is the motion, not the digit). The eight classes (:data:`MOTIONS`), with ``s = t /
(frames - 1)`` and a travel of ``travel`` pixels:

- ``right``, ``left``, ``down``, ``up``: the digit's centre moves ``travel`` pixels in that
  direction from a random start (kept on the canvas);
- ``bounce_h``, ``bounce_v``: out and back, ``c0 + travel (1 - |2s - 1|)``, horizontally or
  vertically;
- ``rotate_cw``, ``rotate_ccw``: a half turn about the digit's centre (from a random start
  angle), clockwise or counter-clockwise on screen.

Frames are rendered by bilinear resampling of the digit (``torch.nn.functional.grid_sample``),
plus Gaussian pixel noise (std ``noise``). The classes of each group {right, left, bounce_h},
{down, up, bounce_v}, {rotate_cw, rotate_ccw} visit the same set of poses in a different
order, so a model that averages its frame features over time (``frame_average``) can tell the
groups apart but not the classes within them: at most ``3/8`` accuracy in expectation
(1/3 of each three-class group and 1/2 of the rotations). Train, valid and test clips use
disjoint digit images (the 1,197 / 300 / 300 split of ``digits_rows``). Inputs ``(N, frames,
canvas**2)`` float (each frame flattened row by row), targets ``(N,)`` class ids.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.tasks._util import classify_metrics, generator
from rnnkit.tasks.base import Budget, Split, Task, TaskData
from rnnkit.tasks.digits import digits_data

#: the motion classes, in class-id order
MOTIONS: tuple[str, ...] = (
    "right",
    "left",
    "down",
    "up",
    "bounce_h",
    "bounce_v",
    "rotate_cw",
    "rotate_ccw",
)


def render(digits: Tensor, cx: Tensor, cy: Tensor, angle: Tensor, canvas: int) -> Tensor:
    """Frames of 8x8 images placed with centre ``(cx, cy)`` (pixels, x to the right, y down)
    and rotated by ``angle`` (radians, clockwise on screen for positive angles).

    Args:
        digits: ``(N, 8, 8)`` images.
        cx, cy, angle: ``(N, T)``.
        canvas: side of the square canvas.

    Returns:
        ``(N, T, canvas, canvas)`` float32.
    """
    n, t = cx.shape
    pix = torch.arange(canvas, dtype=torch.float32) + 0.5  # pixel centres
    u = pix.view(1, 1, 1, canvas) - cx[..., None, None]  # (N, T, 1, canvas): x offset
    v = pix.view(1, 1, canvas, 1) - cy[..., None, None]  # (N, T, canvas, 1): y offset
    cos, sin = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    # canvas offset -> digit offset: rotate back by -angle (y points down)
    dx = cos * u + sin * v
    dy = -sin * u + cos * v
    grid = torch.stack([dx / 4.0, dy / 4.0], -1)  # the digit spans [-4, 4] -> [-1, 1]
    img = digits.float()[:, None].expand(n, t, 8, 8).reshape(n * t, 1, 8, 8)
    out = F.grid_sample(
        img, grid.reshape(n * t, canvas, canvas, 2), align_corners=False, padding_mode="zeros"
    )
    return out.reshape(n, t, canvas, canvas)


def motion_clips(
    images: Tensor,
    count: int,
    g: torch.Generator,
    *,
    frames: int = 8,
    canvas: int = 16,
    travel: float = 6.0,
    noise: float = 0.05,
) -> Split:
    """``count`` clips of digits drawn from ``images (M, 8, 8)``, classes uniform over
    :data:`MOTIONS`: inputs ``(count, frames, canvas**2)``, targets ``(count,)``."""
    if frames < 3:
        raise ValueError(f"frames must be >= 3, got {frames}")
    if not 0.0 < travel <= canvas - 8:
        raise ValueError(f"travel must be in (0, canvas - 8 = {canvas - 8}], got {travel!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    label = torch.randint(len(MOTIONS), (count,), generator=g)
    digit = images[torch.randint(images.shape[0], (count,), generator=g)]
    s = torch.linspace(0.0, 1.0, frames)[None]  # (1, T)
    lo, hi = 4.0, canvas - 4.0  # centres keeping the 8x8 digit on the canvas
    start = lo + torch.rand(count, 2, generator=g) * (hi - lo - travel)  # (N, 2)
    fixed = lo + torch.rand(count, 2, generator=g) * (hi - lo)  # the still coordinate
    theta0 = torch.rand(count, 1, generator=g) * 2 * math.pi
    ramp = {
        "right": s,
        "left": 1 - s,
        "down": s,
        "up": 1 - s,
        "bounce_h": 1 - (2 * s - 1).abs(),
        "bounce_v": 1 - (2 * s - 1).abs(),
    }
    cx = torch.empty(count, frames)
    cy = torch.empty(count, frames)
    angle = theta0.expand(count, frames).clone()
    centre = canvas / 2.0
    for k, name in enumerate(MOTIONS):
        m = label == k
        if name in ("right", "left", "bounce_h"):
            cx[m] = start[m, :1] + travel * ramp[name]
            cy[m] = fixed[m, 1:].expand(-1, frames)
        elif name in ("down", "up", "bounce_v"):
            cx[m] = fixed[m, :1].expand(-1, frames)
            cy[m] = start[m, 1:] + travel * ramp[name]
        else:
            # rotate near the centre: the rotated corners stay (mostly) on the canvas
            cx[m] = centre + (fixed[m, :1] - centre) * 0.25
            cy[m] = centre + (fixed[m, 1:] - centre) * 0.25
            sign = 1.0 if name == "rotate_cw" else -1.0
            angle[m] = theta0[m] + sign * math.pi * s
    x = render(digit, cx, cy, angle, canvas)
    x = x + noise * torch.randn(x.shape, generator=g)
    return Split(x.reshape(count, frames, canvas * canvas), label)


def moving_digits_data(
    seed: int,
    *,
    sizes: tuple[int, int, int] = (4000, 500, 500),
    frames: int = 8,
    canvas: int = 16,
    travel: float = 6.0,
    noise: float = 0.05,
) -> TaskData:
    """Clips of :func:`motion_clips` from disjoint digit images per split (``sizes`` =
    train, valid, test clips)."""
    digits = digits_data(seed)
    splits = []
    for stream, (part, size) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        images = digits.split(part).inputs
        splits.append(
            motion_clips(
                images,
                size,
                generator(seed, 40 + stream),
                frames=frames,
                canvas=canvas,
                travel=travel,
                noise=noise,
            )
        )
    return TaskData(splits[0], splits[1], splits[2], {"motions": MOTIONS, "canvas": canvas})


TASKS: tuple[Task, ...] = (
    Task(
        name="moving_digits",
        description="LRCN: 8x8 digits moving on a 16x16 canvas, 8 motion classes, 8 frames",
        kind="classify",
        make_data=moving_digits_data,
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 256, "output_size": len(MOTIONS)},
        model="lrcn",
        model_config={"frame_size": 16, "hidden_size": 64, "feature_size": 64},
        budget=Budget(steps=400, batch_size=64, lr=3e-3, eval_every=100),
        reference=(
            "Donahue et al. 2015 [recalled, not checked]: UCF-101 split 1, LRCN RGB ~68 %, "
            "flow ~77 %; not comparable (generated clips here)"
        ),
        details=(
            "4,000 / 500 / 500 clips of 8 frames, 16x16 canvas flattened to 256 features "
            "per frame; classes: right, left, down, up, bounce_h, bounce_v, rotate_cw, "
            "rotate_ccw (the digit is random, not the class); pixel noise std 0.05. A model "
            "averaging frame features (frame_average) can reach about 3/8."
        ),
    ),
)
