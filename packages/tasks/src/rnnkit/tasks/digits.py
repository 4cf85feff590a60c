"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn) as sequences.

``rows``: the image read row by row, ``(N, 8, 8)``; ``pixels``: pixel by pixel,
``(N, 64, 1)`` (the small cousin of sequential MNIST); ``digits_grid`` gives the same pixel
tensors (raster order) to a 2D model that reads them as an 8 x 8 grid (``plstm_vision``).
Pixel values are scaled to ``[0, 1]``.
A fixed seeded permutation splits the images 1,197 / 300 / 300.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rnnkit.tasks._util import classify_metrics, generator, lstm_config
from rnnkit.tasks.base import Budget, Split, Task, TaskData


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise RuntimeError("the digits tasks need scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    return images, labels


def digits_data(seed: int, *, order: str = "rows", sizes: tuple[int, int] = (300, 300)) -> TaskData:
    """The digits as sequences in ``order`` ``"rows"`` or ``"pixels"``; ``sizes`` = (valid, test).

    Inputs ``(N, 8, 8)`` (rows) or ``(N, 64, 1)`` (pixels) float; targets ``(N,)`` in 0..9.
    """
    if order not in ("rows", "pixels"):
        raise ValueError(f"order must be 'rows' or 'pixels', got {order!r}")
    images, labels = _load()
    x = images if order == "rows" else images.reshape(-1, 64, 1)
    perm = torch.randperm(x.shape[0], generator=generator(seed))
    n_va, n_te = sizes
    te, va, tr = perm[:n_te], perm[n_te : n_te + n_va], perm[n_te + n_va :]
    return TaskData(
        Split(x[tr], labels[tr]),
        Split(x[va], labels[va]),
        Split(x[te], labels[te]),
        {"order": order},
    )


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="digits_rows",
        description="scikit-learn 8x8 digits read row by row (T=8), 10 classes",
        kind="classify",
        make_data=functools.partial(digits_data, order="rows"),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 8, "output_size": 10},
        model_config=lstm_config(64),
        budget=Budget(steps=500, batch_size=64, lr=5e-3, eval_every=50),
        target=0.95,
        details="1,797 images, seeded split 1,197 / 300 / 300; pixels scaled to [0, 1].",
    ),
    Task(
        name="digits_pixels",
        description="scikit-learn 8x8 digits read pixel by pixel (T=64), 10 classes",
        kind="classify",
        make_data=functools.partial(digits_data, order="pixels"),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 1, "output_size": 10},
        model_config=lstm_config(64),
        budget=Budget(steps=800, batch_size=64, lr=5e-3, eval_every=100),
        target=0.85,
        details="The small cousin of sequential MNIST; same split as digits_rows.",
    ),
    Task(
        name="digits_grid",
        description="scikit-learn 8x8 digits as an 8x8 grid of pixels (pLSTM 2D), 10 classes",
        kind="classify",
        make_data=functools.partial(digits_data, order="pixels"),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 1, "output_size": 10},
        model="plstm_vision",
        model_config={"grid": [8, 8], "hidden_size": 32, "heads": 8, "num_layers": 1},
        budget=Budget(steps=200, batch_size=64, lr=5e-3, eval_every=50),
        target=None,
        details=(
            "The digits_pixels tensors (raster order, (N, 64, 1)) read by a 2D model as an 8x8 "
            "grid; --model sequence_classifier --cell lstm reads the same tensors as a "
            "sequence, for comparison at the same budget."
        ),
    ),
)
