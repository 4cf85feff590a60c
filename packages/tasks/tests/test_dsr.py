"""DSR metrics against cases with known answers, the lorenz63_dsr / rossler_dsr data, and the
trainer's forced-training / free-running-evaluation split for the AL-RNN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from rnnkit.core.cli import main
from rnnkit.models.dsr import ALRNNReconstructor
from rnnkit.tasks import get_task
from rnnkit.tasks.base import TaskData
from rnnkit.tasks.dsr import (
    lorenz63_dsr_data,
    power_spectrum_distance,
    rossler_dsr_data,
    state_space_divergence,
)
from rnnkit.tasks.trainer import TrainConfig, Trainer

S = 1e-5  # the default Laplace pseudo-count


def _two_points(n: int) -> torch.Tensor:
    """``n`` 1-D points, half at 0 and half at 1: ``(n, 1)``."""
    return torch.cat([torch.zeros(n // 2, 1), torch.ones(n // 2, 1)])


def test_dstsp_is_zero_for_identical_occupancy() -> None:
    torch.manual_seed(0)
    x = torch.randn(500, 3)
    assert state_space_divergence(x, x) == 0.0
    # the same points in another order occupy the same cells
    assert state_space_divergence(x, x[torch.randperm(500)]) == 0.0


def test_dstsp_of_generated_points_off_the_grid_is_the_closed_form() -> None:
    n, n_gen = 400, 300
    true = _two_points(n)
    gen = torch.full((n_gen, 1), 5.0)  # beyond the true range: no cell
    # p = (1/2, 1/2); q = s / (n_gen + 2 s) in both cells
    want = math.log(0.5 * (n_gen + 2 * S) / S)
    got = state_space_divergence(true, gen, bins=2, margin=0.0)
    assert got == pytest.approx(want, rel=1e-12)
    # a diverged (non-finite) trajectory counts the same as one off the grid
    nan_gen = torch.full((n_gen, 1), float("nan"))
    assert state_space_divergence(true, nan_gen, bins=2, margin=0.0) == pytest.approx(want)


def test_dstsp_of_disjoint_cells_inside_the_grid_is_the_closed_form() -> None:
    n, n_gen = 400, 100
    true = _two_points(n)  # cells 0 and 2 of 3
    gen = torch.full((n_gen, 1), 0.5)  # cell 1
    p = [(n / 2 + S) / (n + 3 * S), S / (n + 3 * S), (n / 2 + S) / (n + 3 * S)]
    q = [S / (n_gen + 3 * S), (n_gen + S) / (n_gen + 3 * S), S / (n_gen + 3 * S)]
    want = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    assert state_space_divergence(true, gen, bins=3, margin=0.0) == pytest.approx(want, rel=1e-12)
    # half the generated mass on the true cells: a smaller divergence
    half = torch.cat([gen[:50], true[::4][:25], true[-25:]])
    assert 0 < state_space_divergence(true, half, bins=3, margin=0.0) < want


def test_dstsp_bins_every_dimension() -> None:
    # 2-D: the same x-marginal, opposite y: only a joint histogram tells them apart
    true = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(50, 1)
    gen = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(50, 1)
    p_cell = (50 + S) / (100 + 4 * S)
    want = 2 * p_cell * math.log(p_cell / (S / (100 + 4 * S)))
    want += 2 * (S / (100 + 4 * S)) * math.log((S / (100 + 4 * S)) / p_cell)
    assert state_space_divergence(true, gen, bins=2, margin=0.0) == pytest.approx(want, rel=1e-12)


def test_dstsp_rejects_bad_arguments() -> None:
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="bins"):
        state_space_divergence(x, x, bins=0)
    with pytest.raises(ValueError, match="dimension"):
        state_space_divergence(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="bins"):
        state_space_divergence(torch.randn(10, 6), torch.randn(10, 6), bins=30)


def _tones(t: int, *freqs: int) -> torch.Tensor:
    """``(t, len(freqs))``: a cosine with ``f`` whole periods in each column."""
    steps = torch.arange(t, dtype=torch.float64)[:, None]
    return torch.cos(2 * math.pi * torch.tensor(freqs, dtype=torch.float64) * steps / t)


def test_dh_is_zero_for_identical_and_one_for_disjoint_spectra() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 256, 2).cumsum(1)
    assert power_spectrum_distance(x, x) == pytest.approx(0.0, abs=1e-7)
    # z-scoring: scale and offset do not change the spectrum
    assert power_spectrum_distance(x, 3 * x + 7) == pytest.approx(0.0, abs=1e-7)
    a, b = _tones(1024, 100, 30), _tones(1024, 140, 30)
    # unsmoothed pure tones at different frequencies share no bin: the maximum, per dim 1 and 0
    assert power_spectrum_distance(a, b, smoothing=0.0) == pytest.approx(0.5, abs=1e-9)


def test_dh_of_smoothed_tones_is_the_gaussian_overlap() -> None:
    # two tones d bins apart, smoothed by a Gaussian of sigma bins truncated at R = 4 sigma:
    # Bhattacharyya overlap exp(-d²/(8 sigma²)) Z(R - d/2) / Z(R), Z(r) = sum_{|j|<=r} g(j)
    sigma, d = 20.0, 40
    radius = math.ceil(4 * sigma)

    def z(r: int) -> float:
        return sum(math.exp(-0.5 * (j / sigma) ** 2) for j in range(-r, r + 1))

    overlap = math.exp(-(d**2) / (8 * sigma**2)) * z(radius - d // 2) / z(radius)
    got = power_spectrum_distance(_tones(1024, 200), _tones(1024, 200 + d), smoothing=sigma)
    assert got == pytest.approx(math.sqrt(1 - overlap), rel=1e-9)


def test_dh_scores_a_dead_or_diverged_generator_at_the_maximum() -> None:
    x = _tones(128, 5, 9)
    flat = torch.ones_like(x)
    assert power_spectrum_distance(x, flat) == 1.0
    bad = x.clone()
    bad[10, 0] = float("inf")
    assert power_spectrum_distance(x, bad) == pytest.approx(0.5, abs=1e-7)
    with pytest.raises(ValueError, match="shape"):
        power_spectrum_distance(x, x[:-1])


def test_dsr_data_layout_and_metrics_on_true_trajectories() -> None:
    lor = lorenz63_dsr_data(0, train=1200, window=100, eval_window=1500, valid=1, test=2)
    assert lor.train.inputs.shape == (44, 100, 3)
    assert lor.test.inputs.shape == (2, 1500, 3)
    torch.testing.assert_close(lor.test.inputs[:, 1:], lor.test.targets[:, :-1])
    ros = rossler_dsr_data(0, train=1200, window=100, eval_window=1500, valid=1, test=2)
    # two stretches of one attractor are close; Lorenz against Rössler is far
    same = state_space_divergence(lor.test.targets[:1], lor.test.targets[1:], bins=10)
    other = state_space_divergence(lor.test.targets[:1], ros.test.targets[:1], bins=10)
    assert torch.isfinite(ros.test.targets).all()
    assert same < 1.0 < 10 * same < other
    same_h = power_spectrum_distance(lor.test.targets[:1], lor.test.targets[1:])
    other_h = power_spectrum_distance(lor.test.targets[:1], ros.test.targets[:1])
    assert same_h < 0.05 and other_h > 0.15


class _Spy(ALRNNReconstructor):
    """Records whether each call was forced (``targets`` given) and what it returned."""

    def __init__(self) -> None:
        super().__init__(3, hidden_size=8, pwl_units=2, tau=5)
        self.calls: list[tuple[bool, Tensor, Tensor]] = []

    def forward(self, x: Tensor, *, backend: str = "auto", targets: Tensor | None = None) -> Tensor:
        out = super().forward(x, backend=backend, targets=targets)
        self.calls.append((targets is not None, x.detach(), out.detach()))
        return out


def test_training_forces_and_evaluation_free_runs(tmp_path: Path) -> None:
    small = lorenz63_dsr_data(0, train=600, window=50, eval_window=300, valid=1, test=1)
    data = TaskData(small.train, small.valid, small.test, small.info)
    model = _Spy()
    trainer = Trainer(
        TrainConfig(
            task="lorenz63_dsr",
            steps=4,
            eval_every=4,
            batch_size=4,
            out=str(tmp_path / "run"),
            progress=False,
            plot=False,
        ),
        data=data,
        model=model,
    )
    result = trainer.run()
    forced = [c for c in model.calls if c[0]]
    # unforced: the evaluations of the 300-step valid and test windows (and the trainer's
    # probe of the kernels at start-up, on a short input)
    free = [c for c in model.calls if not c[0] and c[1].shape[1] == 300]
    assert len(forced) == 4 and all(x.shape[1] == 50 for _, x, _ in forced)
    assert len(free) >= 2
    _, x, out = free[-1]  # the test split: a free run from its first observation
    with torch.no_grad():
        torch.testing.assert_close(out, model.generate(x[:, 0], 300))
    metrics = result.test
    assert set(metrics) >= {"dstsp", "dh", "mse"}
    assert math.isfinite(metrics["dstsp"]) and 0 <= metrics["dh"] <= 1


@pytest.mark.experiment
@pytest.mark.parametrize("task", ["lorenz63_dsr", "rossler_dsr"])
def test_default_budget_reconstructs_the_attractor(task: str, tmp_path: Path) -> None:
    """The task's default model and budget (minutes on one CPU thread): the free-running
    trajectory's spectrum must be close (D_H < 0.15) and its state-space divergence well below
    the untrained model's (which decays to a point)."""
    from rnnkit.tasks.registry import builtin_tasks
    from rnnkit.tasks.trainer import evaluate

    spec = {t.name: t for t in builtin_tasks()}[task]
    data = spec.data(0)
    torch.manual_seed(0)
    untrained = evaluate(spec, spec.build_model(), data.test, data.info, device=torch.device("cpu"))
    result = Trainer(
        TrainConfig(task=task, out=str(tmp_path / "run"), progress=False, plot=False)
    ).run()
    assert result.test["dh"] < 0.15, result.test
    assert result.test["dstsp"] < 0.75 * untrained["dstsp"], (result.test, untrained)


@pytest.mark.experiment
def test_adaptive_generalised_forcing_at_the_task_budget(tmp_path: Path) -> None:
    """lorenz63_dsr with ``tau=1 alpha=adaptive`` at the task's budget (minutes on one CPU
    thread): the learned dynamics expand (G > 1), so training ends with an alpha strictly
    between 0 and 1, and the free run's state-space divergence ends well below the untrained
    model's (the spectrum is not yet close at this budget: see docs/tasks.md)."""
    from rnnkit.tasks.registry import builtin_tasks
    from rnnkit.tasks.trainer import evaluate

    spec = {t.name: t for t in builtin_tasks()}["lorenz63_dsr"]
    data = spec.data(0)
    torch.manual_seed(0)
    untrained = evaluate(spec, spec.build_model(), data.test, data.info, device=torch.device("cpu"))
    config = {"tau": 1, "alpha": "adaptive"}
    trainer = Trainer(
        TrainConfig(
            task=spec.name,
            model_config=config,
            out=str(tmp_path / "run"),
            progress=False,
            plot=False,
        )
    )
    result = trainer.run()
    model = trainer.model
    assert isinstance(model, ALRNNReconstructor) and model.adaptive
    assert model.growth > 1.0 and 0.0 < model.alpha < 1.0, repr(model)
    assert result.test["dstsp"] < 0.85 * untrained["dstsp"], (result.test, untrained)


def test_adaptive_generalised_forcing_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--set alpha=adaptive`` reaches the task's model as the adaptive rule; a misspelt value
    or estimate is one line naming the keyword, before anything is written."""
    argv = ["train", "--task", "lorenz63_dsr", "--set", "alpha=adaptive", "--set", "tau=1"]
    assert main([*argv, "--set", "alpha_estimate=max", "--print-config", "--json"]) == 0
    overrides = json.loads(capsys.readouterr().out)["model_config"]
    assert overrides["alpha"] == "adaptive" and overrides["alpha_estimate"] == "max"
    model = get_task("lorenz63_dsr").build_model(**overrides)
    assert isinstance(model, ALRNNReconstructor)
    assert model.adaptive and model.tau == 1 and model.alpha_estimate == "max"
    assert "alpha=adaptive (max, every 1" in repr(model)
    for bad, name in (("alpha=adaptve", "alpha"), ("alpha_estimate=median", "alpha_estimate")):
        out = tmp_path / name
        assert main([*argv, "--set", bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{name} must be" in err and err.count("\n") == 1, err
        assert not out.exists()
