"""Character-level language modelling on the small public-domain text shipped with rnnkit-tasks.

The text (``corpus/corpus.txt``, about 12 KB; see ``corpus/README.md``) is cut into chunks of
512 characters; chunk ``i`` goes to valid if ``i % 10 == 8``, to test if ``i % 10 == 9`` and
to train otherwise, so every split samples every part of the text. Each chunk is cut into
windows of ``window`` characters (training windows overlap by half); the model predicts every
next character, with no state carried across windows. The metric is bits per character.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks.base import Metrics, Split, TaskData


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    """The shipped text."""
    return resources.files("rnnkit.tasks").joinpath("corpus/corpus.txt").read_text("utf-8")


def vocabulary(text: str) -> list[str]:
    """The sorted distinct characters of ``text`` (token id = index)."""
    return sorted(set(text))


def _windows(ids: list[int], window: int, stride: int) -> Split:
    xs, ys = [], []
    for start in range(0, len(ids) - window, stride):
        xs.append(ids[start : start + window])
        ys.append(ids[start + 1 : start + window + 1])
    return Split(torch.tensor(xs, dtype=torch.long), torch.tensor(ys, dtype=torch.long))


def charlm_data(seed: int, *, window: int = 64, chunk: int = 512) -> TaskData:
    """Inputs and targets ``(N, window)`` int64 character ids (targets shifted by one).

    The data do not depend on ``seed`` (the text is fixed); training order does.
    """
    text = corpus()
    vocab = vocabulary(text)
    index = {c: i for i, c in enumerate(vocab)}
    ids = [index[c] for c in text]
    parts: dict[str, list[Split]] = {"train": [], "valid": [], "test": []}
    for i, start in enumerate(range(0, len(ids), chunk)):
        piece = ids[start : start + chunk + 1]
        name = "valid" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
        if len(piece) <= window:
            continue
        parts[name].append(_windows(piece, window, window // 2 if name == "train" else window))
    splits = [
        Split(torch.cat([s.inputs for s in p]), torch.cat([s.targets for s in p]))
        for p in parts.values()
    ]
    return TaskData(
        splits[0], splits[1], splits[2], info={"vocab": "".join(vocab), "vocab_size": len(vocab)}
    )


def lm_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``bpc`` (bits per character) and next-character ``accuracy``."""
    return {
        "bpc": M.cross_entropy_bits(outputs, targets),
        "accuracy": M.token_accuracy(outputs, targets),
    }
