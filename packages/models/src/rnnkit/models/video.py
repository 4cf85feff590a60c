"""LRCN: a convolutional encoder per frame, then a recurrent stack over the frames (Donahue et
al., CVPR 2015, arXiv 1411.4389), and its frame-averaging baseline without recurrence.

Frames arrive flattened, ``(B, T, frame_size**2 * channels)`` (the task contract for float
sequences); each frame is reshaped to ``(channels, frame_size, frame_size)`` and encoded by
the same small CNN (two 3x3 convolutions with ReLU, each followed by 2x2 max pooling, then a
linear map to ``feature_size``):

    phi_t = CNN(x_t)                              (B, T, feature_size)
    h_t = RNN(phi_1..phi_t)                       (B, T, hidden_size)    temporal="rnn"
    y = mean_t W h_t + b                          (B, output_size)

The paper averages its per-step softmax predictions over time; here the per-step logits are
averaged (``pool="mean"``) or the last step's are used (``pool="last"``). ``temporal="mean"``
is the baseline: ``y = W mean_t phi_t + b``, an order-blind average of the frame features.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rnnkit.core import Recurrent
from rnnkit.core.validation import check_positive_int

__all__ = ["LRCN", "frame_average", "lrcn"]


class LRCN(nn.Module):
    """Per-frame CNN + recurrent stack: ``(B, T, channels * frame_size**2)`` -> ``(B, C)``.

    Args:
        input_size: features per frame, ``channels * frame_size**2``.
        output_size: classes ``C``.
        frame_size: side of the square frames (must be divisible by 4: two poolings).
        channels: image channels per frame.
        conv_channels: widths of the two convolutions.
        feature_size: the per-frame feature ``phi_t``.
        temporal: ``"rnn"`` (LRCN) or ``"mean"`` (frame averaging, no recurrence).
        cell, hidden_size, num_layers: the recurrent stack (any registered cell).
        pool: ``"mean"`` (average of per-step logits, the paper's) or ``"last"``.
        **cell_kwargs: passed to every cell.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        frame_size: int = 16,
        channels: int = 1,
        conv_channels: tuple[int, int] = (8, 16),
        feature_size: int = 64,
        temporal: str = "rnn",
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        pool: str = "mean",
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        check_positive_int("frame_size", frame_size)
        check_positive_int("channels", channels)
        check_positive_int("output_size", output_size)
        check_positive_int("feature_size", feature_size)
        if frame_size % 4:
            raise ValueError(
                f"frame_size must be divisible by 4 (two 2x2 poolings), got {frame_size}"
            )
        if input_size != channels * frame_size**2:
            raise ValueError(
                f"input_size must be channels * frame_size**2 = {channels * frame_size**2}, "
                f"got {input_size!r}"
            )
        if len(conv_channels) != 2:
            raise ValueError(f"conv_channels must hold two widths, got {conv_channels!r}")
        for c in conv_channels:
            check_positive_int("conv_channels", c)
        if temporal not in ("rnn", "mean"):
            raise ValueError(f"temporal must be 'rnn' or 'mean', got {temporal!r}")
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be 'mean' or 'last', got {pool!r}")
        self.frame_size, self.channels = frame_size, channels
        self.temporal, self.pool = temporal, pool
        c1, c2 = conv_channels
        side = frame_size // 4
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * side * side, feature_size),
            nn.ReLU(),
        )
        self.rnn: Recurrent | None = None
        width = feature_size
        if temporal == "rnn":
            self.rnn = Recurrent(cell, feature_size, hidden_size, num_layers, **cell_kwargs)
            width = self.rnn.output_size
        self.head = nn.Linear(width, output_size)

    def frame_features(self, x: Tensor) -> Tensor:
        """``phi_t``: ``(B, T, input_size)`` -> ``(B, T, feature_size)``."""
        if x.dim() != 3 or x.shape[-1] != self.channels * self.frame_size**2:
            raise ValueError(
                f"x must be (B, T, {self.channels * self.frame_size**2}) flattened frames, "
                f"got shape {tuple(x.shape)}"
            )
        b, t, _ = x.shape
        frames = x.reshape(b * t, self.channels, self.frame_size, self.frame_size)
        phi: Tensor = self.cnn(frames).reshape(b, t, -1)
        return phi

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x (B, T, input_size)`` float frames -> ``(B, output_size)`` logits."""
        phi = self.frame_features(x)
        if self.rnn is None:
            out: Tensor = self.head(phi.mean(1))
            return out
        h, _ = self.rnn(phi, backend=backend)
        logits = self.head(h)
        pooled: Tensor = logits.mean(1) if self.pool == "mean" else logits[:, -1]
        return pooled


def lrcn(*, input_size: int, output_size: int, **cfg: Any) -> LRCN:
    """LRCN: per-frame CNN -> recurrent stack -> mean of per-step logits: (B, T, F) -> (B, C)."""
    cfg.setdefault("temporal", "rnn")
    return LRCN(input_size, output_size, **cfg)


def frame_average(*, input_size: int, output_size: int, **cfg: Any) -> LRCN:
    """LRCN's baseline: per-frame CNN, features averaged over frames (no recurrence)."""
    for key in ("cell", "hidden_size", "num_layers"):  # the recurrent keywords do not apply
        cfg.pop(key, None)
    return LRCN(input_size, output_size, temporal="mean", **cfg)
