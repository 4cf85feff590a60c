"""The trainer's two model hooks: ``targets=`` in training (teacher forcing) and
``regularization(progress)`` added to the training objective; plus the length-generalisation
tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.algorithmic import lengen_data, seq_length
from rnnkit.tasks.base import IGNORE_INDEX
from rnnkit.tasks.trainer import extra_loss, forward, regularization


class _Recorder(nn.Module):
    """Tags every step with class 0; records whether it saw targets; an auxiliary loss
    ``weight * aux_param^2`` from each forward call."""

    def __init__(self, classes: int, weight: float) -> None:
        super().__init__()
        self.head = nn.Parameter(torch.zeros(classes))
        self.aux_param = nn.Parameter(torch.tensor(1.0))
        self.weight = weight
        self.saw_targets: list[bool] = []
        self._aux: Tensor | None = None

    def forward(self, x: Tensor, *, backend: str = "auto", targets: Tensor | None = None) -> Tensor:
        self.saw_targets.append(targets is not None)
        self._aux = self.weight * self.aux_param.square()
        return self.head.expand(*x.shape[:2], -1)

    def regularization(self, progress: float) -> Tensor:
        assert self._aux is not None
        return self._aux


def test_forward_passes_targets_only_to_models_that_take_them() -> None:
    m = _Recorder(3, 0.0)
    x, y = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    forward(m, x, "auto", targets=y)
    forward(m, x, "auto")
    assert m.saw_targets == [True, False]
    lin = nn.Linear(3, 2)  # no targets parameter: called without them
    assert forward(lin, torch.zeros(1, 3), "auto", targets=y).shape == (1, 2)


def test_regularization_must_be_a_scalar() -> None:
    class Bad(nn.Module):
        def regularization(self, progress: float) -> object:
            return torch.zeros(3)

    with pytest.raises(TypeError, match="scalar"):
        regularization(Bad(), 0.5)
    assert regularization(nn.Linear(1, 1), 0.5) is None


def test_the_trainer_adds_only_regularization() -> None:
    """One convention: an ``aux_loss`` attribute or an ``auxiliary_loss()`` method alone is
    not a training loss (the models that had them define ``regularization``)."""

    class Old(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.aux_loss = torch.ones((), requires_grad=True)

        def auxiliary_loss(self) -> Tensor:
            return torch.ones((), requires_grad=True)

    assert extra_loss(Old(), 1, 10) == 0.0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_trainer_teacher_forces_in_training_and_adds_the_auxiliary_loss(
    tmp_path: Path, weight: float
) -> None:
    model = _Recorder(10, weight)
    data = lengen_data(0, op="copy", length=2, sizes=(40, 20, 20))
    cfg = TrainConfig(
        task="copy_lengen",
        steps=3,
        batch_size=8,
        eval_every=3,
        lr=0.1,
        schedule="constant",
        clip=0.0,
        out=str(tmp_path / "run"),
        verbose=False,
        plot=False,
    )
    Trainer(cfg, data=data, model=model).run()
    # 3 training steps with targets; kernel probing and evaluations without
    assert model.saw_targets.count(True) == 3
    assert model.saw_targets[-1] is False
    if weight == 0.0:  # no gradient reaches aux_param: AdamW leaves it exactly in place
        assert float(model.aux_param.detach()) == 1.0
    else:  # AdamW moves it down by about lr per step while the gradient 2 p keeps its sign
        assert 1.0 - 3 * 0.1 - 0.01 < float(model.aux_param.detach()) < 1.0 - 2 * 0.1


@pytest.mark.parametrize("op", ["copy", "reverse", "addition"])
def test_lengen_data_layout(op: str) -> None:
    d = lengen_data(0, op=op, length=3, sizes=(200, 50, 50))
    assert d.train.inputs.shape[1] == seq_length(op, 3)
    assert d.test.inputs.shape[1] == seq_length(op, 6)
    assert not (d.test.inputs == 0).any()  # test strings are exactly 2L long: no padding
    for x, y in zip(d.train.inputs[:50], d.train.targets[:50], strict=True):
        real = x[x != 0]
        answer = y[y != IGNORE_INDEX]
        if op == "addition":
            n = (len(real) - 3) // 3
            a = int("".join(str(int(t) - 1) for t in real[:n]))
            b = int("".join(str(int(t) - 1) for t in real[n + 1 : 2 * n + 1]))
            assert int("".join(str(int(t)) for t in answer)) == a + b
            assert len(answer) == n + 1
        else:
            n = (len(real) - 1) // 2
            sym = real[:n] - 1
            assert torch.equal(answer, sym.flip(0) if op == "reverse" else sym)
        # the answers sit on the answer slots at the end
        assert (y[-len(answer) :] != IGNORE_INDEX).all()
