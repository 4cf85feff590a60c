"""Time-LLM scaled down (rnnkit.models.time_llm): shapes, the frozen backbone, the prompt,
causality and bad input. Learning on a task: packages/tasks/tests/test_issue18_forecasters.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.models import create_model, list_models
from rnnkit.models.time_llm import TimeLLM, prompt_text


def _backbone(vocab: int = 40, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("char_lm", vocab_size=vocab, hidden_size=hidden, cell="gru")


VOCAB = " +-.0123456789abcdefghijklmnopqrstuvwxyz"  # 40 characters


def _model(**kw: Any) -> TimeLLM:
    cfg: dict[str, Any] = {"patch_len": 4, "hidden_size": 8, "prototypes": 5, "heads": 2}
    cfg.update(kw)
    return TimeLLM(2, 6, _backbone(), vocab=VOCAB, description="toy", stats_steps=4, **cfg)


def test_registered_ablation_and_shapes() -> None:
    assert "patch_forecaster" in list_models()
    abl = create_model("patch_forecaster", input_size=2, output_size=6, patch_len=4, hidden_size=8)
    x = torch.randn(3, 12, 2)
    assert abl(x).shape == (3, 12, 6)
    assert _model()(x).shape == (3, 12, 6)


def test_prompt_is_description_and_statistics() -> None:
    m = _model()
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0, 100.0]])
    # the first 4 steps: min -2, max 3, median (lower) 0.5, trend 3 - 1 > 0
    assert m.statistics(x).tolist() == [[-2.0, 3.0, 0.5, 2.0]]
    (text,) = prompt_text("toy", m.statistics(x))
    assert text == "toy min -2.00 max +3.00 median +0.50 trend   up. "
    ids = m.prompt_ids(x)[0].tolist()
    assert "".join(VOCAB[i] for i in ids) == text  # every prompt character is in VOCAB


def test_backbone_is_frozen_and_unchanged_by_training() -> None:
    m = _model()
    assert m.backbone is not None
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    learnable = [p for p in m.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in m.backbone.parameters())
    m.train()
    assert not m.backbone.training  # no dropout in the frozen backbone
    x = torch.randn(4, 10, 2)
    for _ in range(3):  # plain gradient steps (the trainer's AdamW: the tasks test)
        for p in learnable:
            p.grad = None
        m(x).square().mean().backward()
        with torch.no_grad():
            for p in learnable:
                p -= 1e-2 * p.grad
    assert all(p.grad is None for p in m.backbone.parameters())  # no grad reaches it
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    # ... while the reprogramming layer, fed back through the frozen LM, does learn
    assert m.mapping.grad is not None and m.mapping.grad.abs().sum() > 0
    assert m.patch_embed.weight.grad is not None and m.patch_embed.weight.grad.abs().sum() > 0


def test_causal_after_the_prompt_statistics() -> None:
    m = _model().eval()
    x = torch.randn(2, 12, 2)
    later = x.clone()
    later[:, 7:] += 1.0
    y, y2 = m(x), m(later)
    assert torch.equal(y[:, :7], y2[:, :7])
    assert not torch.allclose(y[:, 7:], y2[:, 7:])
    # the prompt's statistics: changing the first stats_steps steps changes every output
    early = x.clone()
    early[:, 1] += 5.0
    assert not torch.allclose(m(early)[:, 0], y[:, 0])


@pytest.mark.parametrize(
    ("kw", "arg"),
    [
        ({"patch_len": 0}, "patch_len"),
        ({"hidden_size": 9}, "heads"),
        ({"heads": 0}, "heads"),
        ({"prototypes": -1}, "prototypes"),
        ({"stats_steps": 0}, "stats_steps"),
        ({"description": "TOY"}, "description"),
        ({"vocab": "abc"}, "vocab"),
    ],
)
def test_bad_arguments_name_the_argument(kw: dict[str, Any], arg: str) -> None:
    cfg: dict[str, Any] = {"vocab": VOCAB, "description": "toy", "hidden_size": 8, "heads": 2}
    cfg.update(kw)
    with pytest.raises(ValueError, match=arg):
        TimeLLM(1, 1, _backbone(), **cfg)


def test_bad_backbone_input_and_output_size() -> None:
    with pytest.raises(ValueError, match="backbone"):
        TimeLLM(1, 1, torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="output_size"):
        TimeLLM(2, 3, None)
    with pytest.raises(ValueError, match="x must have shape"):
        _model()(torch.randn(2, 5, 3))
