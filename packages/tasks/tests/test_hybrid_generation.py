"""Issue 15, items 6 and 7 from the tasks' side: ``rnnkit compare`` runs ``mamba_lm`` and
``jamba`` on ``charlm`` beside the LSTM, generation goes through the models' state cache (the
prompt read once by ``prefill``, then one ``step`` per token, equal to the full forward), the
old ``prefill``/``step`` interface still serves other models, and training adds a model's
``regularization`` (the MoE balance loss) to the task's loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rnnkit.core.cli import main
from rnnkit.models import create_model
from rnnkit.tasks import TrainConfig, Trainer, load_run
from rnnkit.tasks.generate import sample_tokens

TINY = ["--steps", "2", "--eval-every", "2", "--batch-size", "8", "--hidden-size", "8"]


def test_compare_lstm_mamba_lm_and_jamba_on_charlm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compare", "--task", "charlm", "--models", "lstm,mamba_lm,jamba", "--seeds", "0"]
    assert main([*args, *TINY, "--out", str(tmp_path), "--no-progress", "--no-plot"]) == 0
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [r["entry"] for r in rows] == ["lstm", "mamba_lm", "jamba"]
    for row in rows:
        assert row["status"] == "ok" and row["seeds_ok"] == 1, row
        # a language model's bits per character: finite, below nothing-learned + slack
        assert 0 < row["test_mean"] < 8
    assert "jamba" in capsys.readouterr().out


def test_list_models_shows_the_hybrids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "jamba" in out and "jamba_classifier" in out and "mamba_lm" in out


@pytest.fixture(scope="module")
def jamba_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "jamba"
    config = TrainConfig(
        task="charlm",
        model="jamba",
        model_config={"hidden_size": 8, "heads": 2, "d_state": 4},
        steps=2,
        batch_size=8,
        eval_every=2,
        device="cpu",
        out=str(out),
        verbose=False,
        plot=False,
        backend="reference",
    )
    Trainer(config).run()
    return out


def _assert_steps_match_forward(model: nn.Module, prompt: Tensor, temperature: float) -> None:
    samples = list(sample_tokens(model, prompt, 6, temperature=temperature, seed=3))
    with torch.no_grad():
        for k, s in enumerate(samples):
            seq = torch.cat([prompt, torch.tensor([t.id for t in samples[:k]], dtype=torch.long)])
            full = torch.softmax(model(seq[None])[0, -1].float() / temperature, -1)
            torch.testing.assert_close(s.probs, full)


def test_jamba_generates_through_its_cache(
    jamba_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = load_run(jamba_run)
    # the run records the resolved layout, and the model rebuilt has that layout
    recorded = json.loads((jamba_run / "final.json").read_text())["config"]["model_config"]
    assert recorded["layers"] == ["mamba", "mamba", "attention", "mamba"]
    assert recorded["num_layers"] == 4 and recorded["num_experts"] == 4
    model: Any = run.model
    assert [b.kind for b in model.blocks] == recorded["layers"]
    prompt = torch.tensor([run.info["vocab"].index(c) for c in "The king "])
    _assert_steps_match_forward(model, prompt, 0.7)
    calls = {"prefill": 0, "step": 0}
    prefill, step = model.prefill, model.step

    def counted_prefill(*a: Any, **k: Any) -> Any:
        calls["prefill"] += 1
        return prefill(*a, **k)

    def counted_step(*a: Any, **k: Any) -> Any:
        calls["step"] += 1
        return step(*a, **k)

    monkeypatch.setattr(model, "prefill", counted_prefill)
    monkeypatch.setattr(model, "step", counted_step)
    list(sample_tokens(model, prompt, 5))
    assert calls == {"prefill": 1, "step": 5}  # the prompt once, then one step per token
    monkeypatch.undo()
    args = ["generate", "--run", str(jamba_run), "--prompt", "The ", "--length", "12"]
    assert main([*args, "--temperature", "0", "--json"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    assert len(text) == 12
    with torch.no_grad():
        ids = torch.tensor([run.info["vocab"].index(c) for c in "The " + text[:-1]])
        greedy = run.model(ids[None])[0].argmax(-1)[3:]
    assert "".join(run.info["vocab"][int(i)] for i in greedy) == text


def test_mamba_lm_generates_like_its_forward() -> None:
    # the Mamba layout has no GELU after the cell: stepping must apply the block as forward does
    torch.manual_seed(0)
    model = create_model("mamba_lm", vocab_size=9, hidden_size=8, num_layers=2).eval()
    _assert_steps_match_forward(model, torch.tensor([1, 5, 2, 7]), 1.0)


class _CountingLM(nn.Module):
    """A model with only ``prefill``/``step`` (the :class:`Incremental` interface): it
    predicts the number of tokens read so far, modulo 5."""

    def prefill(self, x: Tensor) -> tuple[Tensor, Any]:
        return self._logits(x.shape[1]), x.shape[1]

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        return self._logits(state + 1), state + 1

    def _logits(self, n: int) -> Tensor:
        return torch.nn.functional.one_hot(torch.tensor([n % 5]), 5).float() * 50


def test_a_model_with_only_prefill_and_step_is_used_as_it_is() -> None:
    ids = [s.id for s in sample_tokens(_CountingLM(), torch.tensor([0, 0]), 4, temperature=0)]
    assert ids == [2, 3, 4, 0]


class _AuxModel(nn.Module):
    """Logits from an embedding; ``extra`` reaches only the balance-like loss, through
    ``regularization`` (as :class:`rnnkit.models.hybrid.HybridNetwork` does)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(62, 62)
        self.extra = nn.Parameter(torch.ones(3))
        self.aux_loss = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        self.aux_loss = self.extra.square().sum()
        out: Tensor = self.embed(x)
        return out

    def regularization(self, progress: float) -> Tensor:
        return self.aux_loss


def test_training_adds_the_models_aux_loss(tmp_path: Path) -> None:
    model = _AuxModel()
    config = TrainConfig(
        task="charlm",
        steps=2,
        batch_size=4,
        eval_every=2,
        device="cpu",
        out=str(tmp_path),
        verbose=False,
        plot=False,
    )
    Trainer(config, model=model).run()
    assert model.extra.grad is not None
    assert (model.extra.detach() < 1).all()  # the optimiser lowered the auxiliary loss
