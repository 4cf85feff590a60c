"""``rnnkit counts`` (rnnkit.tasks.counts): the token layout, a short learning run with a
small frozen char_lm, bad settings, and (``-m experiment``) the score run of docs/tasks.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.tasks.counts import (
    CountsConfig,
    Layout,
    prompt_ids,
    run_counts,
    summary_edges,
    summary_tokens,
    task_series,
)


def test_layout_slots_cover_the_new_tokens_once() -> None:
    lay = Layout(base=10, scales=47, stages=3, codebook_size=4, levels=5)
    assert lay.new == 47 + 12 + 5 + 3 + 2
    ranges = lay.slots(True)
    # <think> level trend <answer> scale c1 c2 c3
    assert [hi - lo for lo, hi in ranges] == [1, 5, 3, 1, 47, 4, 4, 4]
    covered = sorted(i for lo, hi in ranges for i in range(lo, hi))
    assert covered == list(range(10, 10 + lay.new))
    assert lay.slots(False) == ranges[3:]
    tokens = torch.tensor([[3, 0, 1, 3]])
    assert torch.equal(lay.patch_tokens(lay.patch_ids(tokens)), tokens)
    assert lay.patch_ids(tokens).tolist() == [[13, 57, 62, 68]]


def test_summary_tokens_bin_level_and_trend() -> None:
    ramp = torch.linspace(-1, 1, 8)
    future = torch.stack([ramp, -ramp, torch.full((8,), 2.0), torch.full((8,), -2.0)])
    edges = (torch.tensor([-1.0, 0.5], dtype=torch.float64), torch.tensor([-0.1, 0.1]).double())
    s = summary_tokens(future, edges)
    assert s.tolist() == [[1, 2], [1, 0], [2, 1], [0, 1]]
    lv, tr = summary_edges(torch.randn(200, 8), 4)
    assert lv.shape == (3,) and tr.shape == (2,) and bool((lv[1:] > lv[:-1]).all())


def test_task_series_is_the_task_s_series() -> None:
    """``ar``'s series, z-scored with its training stretch, equals the task's windows."""
    from rnnkit.tasks import get_task

    data = task_series("ar", 0)
    windows = get_task("ar").data(0).train.inputs
    n = windows.numel()
    assert torch.allclose(data.values[:n].float(), windows.reshape(-1), atol=1e-6)
    assert data.points == (14000, 3000, 3000)


def test_counts_learns_ar_with_a_small_frozen_backbone() -> None:
    """A few seconds of training (tokeniser, SFT, 3 GRPO steps; 200 test origins) with an
    untrained GRU 32 char_lm as the frozen backbone: the greedy 16-step forecasts' test MSE
    below 0.85x that of persistence (the last value repeated), before and after GRPO; the
    backbone's weights are untouched."""
    torch.manual_seed(0)
    bb = create_model("char_lm", vocab_size=128, cell="gru", hidden_size=32)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    cfg = CountsConfig(
        context=2,
        dim=16,
        codebook_size=16,
        vae_steps=60,
        sft_steps=40,
        grpo_steps=3,
        max_train=400,
        max_test=200,
    )
    res = run_counts(cfg, bb, ablation=False)
    r = res.results
    persist = r["persistence"]["mse"]
    assert r["rvq round trip (floor)"]["mse"] < 0.5 * persist, r
    for name in ("backbone, SFT", "backbone, SFT + CoT", "backbone, SFT + CoT + GRPO"):
        assert r[name]["mse"] < 0.85 * persist, (name, r)
    rewards = res.grpo_rewards["backbone"]
    assert len(rewards) == 3 and all(-cfg.reward_cap <= v < 0 for v in rewards), rewards
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_counts_bad_settings_name_the_argument() -> None:
    with pytest.raises(ValueError, match="task"):
        run_counts(CountsConfig(task="mnist"), None)
    with pytest.raises(ValueError, match="group"):
        run_counts(CountsConfig(group=1), None)
    with pytest.raises(ValueError, match="patch_len"):
        run_counts(CountsConfig(patch_len=0), None)
    with pytest.raises(ValueError, match="reward_cap"):
        run_counts(CountsConfig(reward_cap=0.0), None)
    with pytest.raises(ValueError, match="sft_steps"):
        run_counts(CountsConfig(sft_steps=-1), None)
    with pytest.raises(ValueError, match="prompt"):
        prompt_ids("héllo", "abc", 3)


def test_counts_needs_a_char_lm_run(tmp_path: Path) -> None:
    from rnnkit.tasks.counts import load_backbone
    from rnnkit.tasks.reuse import RunLoadError

    with pytest.raises(RunLoadError):
        load_backbone(str(tmp_path / "missing"))


# --- the score run of docs/tasks.md (minutes) ---------------------------------------------------


@pytest.mark.experiment
def test_scores_counts_ar(tmp_path: Path) -> None:
    """``rnnkit train --task charlm --out DIR`` then ``rnnkit counts --task ar --backbone-run
    DIR``: every trained forecaster beats persistence; the scores are printed."""
    from rnnkit.tasks import TrainConfig, Trainer
    from rnnkit.tasks.counts import load_backbone

    out = tmp_path / "charlm"
    Trainer(TrainConfig(task="charlm", out=str(out), progress=False, plot=False)).run()
    bb, vocab = load_backbone(str(out))
    res = run_counts(CountsConfig(), bb, vocab=vocab, log=print)
    for name, m in res.results.items():
        print(name, m)
    persist = res.results["persistence"]["mse"]
    for name, m in res.results.items():
        if name.startswith(("backbone", "no backbone")):
            assert m["mse"] < persist, (name, res.results)
