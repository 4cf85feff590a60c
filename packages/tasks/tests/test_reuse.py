"""A finished run for inference: ``model.safetensors`` + ``config.json``, ``load_run`` and the
``eval``, ``predict`` and ``generate`` commands, on tiny runs of a char-LM, a forecasting task
and two classification tasks (token ids and features)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rnnkit.core.cli import main
from rnnkit.models import create_model
from rnnkit.tasks import LoadedRun, RunLoadError, TrainConfig, Trainer, load_run
from rnnkit.tasks.generate import incremental, rollout, sample_tokens
from rnnkit.tasks.reuse_cli import read_examples, read_series

#: the tiny runs: task -> model width (a few steps each, seconds in all)
RUNS = {"charlm": 16, "ar": 8, "tomita1": 8, "parity": 8}


def _config(task: str, out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(
        task=task,
        model_config={"hidden_size": RUNS.get(task, 8)},
        steps=4,
        batch_size=8,
        eval_every=2,
        device="cpu",
        out=str(out),
        verbose=False,
        plot=False,
        # a named backend: "auto" may pick another kernel later in a session (a native
        # library built meanwhile), and eval must run the same one to reproduce final.json
        backend="reference",
        **kw,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trainer]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in RUNS:
        trainer = Trainer(_config(task, root / task))
        trainer.run()
        out[task] = trainer
    return out


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _copy(trainer: Trainer, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(trainer.out, dst)
    return dst


def _edit_config(run: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((run / "config.json").read_text())
    edit(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


# --- what a run writes -------------------------------------------------------------------------


def test_weights_are_plain_and_load_into_a_model_built_from_config(
    runs: dict[str, Trainer],
) -> None:
    trainer = runs["charlm"]
    config = json.loads((trainer.out / "config.json").read_text())
    assert config["task"] == "charlm" and config["kind"] == "tag"
    assert config["model"] == "char_lm" and config["cell"] == "lstm"
    assert config["model_kwargs"] == {"vocab_size": 62, "cell": "lstm", "hidden_size": 16}
    assert config["architecture"]["hidden_size"] == 16
    assert config["architecture"]["num_layers"] == 1
    assert config["backend"] == "reference" and config["seed"] == 0
    assert config["best_step"] == trainer.state.best_step
    assert len(config["task_info"]["vocab"]) == 62
    # the safetensors + load_state_dict route, with nothing of rnnkit.tasks
    model = create_model(config["model"], **config["model_kwargs"])
    weights = load_file(str(trainer.out / "model.safetensors"))
    assert set(weights) == set(model.state_dict())
    model.load_state_dict(weights)
    for name, tensor in trainer.best_state.items():
        assert torch.equal(weights[name], tensor), name


def test_the_cell_a_task_defaults_to_is_recorded(runs: dict[str, Trainer]) -> None:
    config = json.loads((runs["parity"].out / "config.json").read_text())
    assert config["cell"] == config["architecture"]["cell"] == "lstm"
    assert config["model"] == "sequence_classifier"


@pytest.mark.parametrize("task", list(RUNS))
def test_load_run_gives_the_best_model_bit_for_bit(runs: dict[str, Trainer], task: str) -> None:
    trainer = runs[task]
    run = load_run(trainer.out)
    assert isinstance(run, LoadedRun) and run.task.name == task and not run.model.training
    x = trainer.data.valid.inputs[:5]
    trainer.model.eval()  # it holds the best weights after the run
    with torch.no_grad():
        assert torch.equal(run.model(x), trainer.model(x))


def test_an_interrupted_run_has_no_model_yet(tmp_path: Path) -> None:
    Trainer(_config("parity", tmp_path / "cut", stop_after=2)).run()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(RunLoadError, match=r"config\.json is missing.*--resume"):
        load_run(tmp_path / "cut")


def test_a_given_model_needs_to_be_given_again(tmp_path: Path) -> None:
    from rnnkit.tasks import get_task

    model = get_task("parity").build_model(hidden_size=8)
    Trainer(_config("parity", tmp_path / "given"), model=model).run()
    with pytest.raises(RunLoadError, match=r"config\.json.*Trainer\(model=\.\.\.\)"):
        load_run(tmp_path / "given")
    again = load_run(tmp_path / "given", model=get_task("parity").build_model(hidden_size=8))
    for name, t in again.model.state_dict().items():
        assert torch.equal(t, model.state_dict()[name]), name


# --- damaged or foreign files ------------------------------------------------------------------


def test_missing_files_are_named(runs: dict[str, Trainer], tmp_path: Path) -> None:
    with pytest.raises(RunLoadError, match="no run directory"):
        load_run(tmp_path / "nothing")
    run = _copy(runs["parity"], tmp_path)
    (run / "model.safetensors").unlink()
    with pytest.raises(RunLoadError, match=r"model\.safetensors is missing"):
        load_run(run)
    (run / "config.json").unlink()
    with pytest.raises(RunLoadError, match=r"config\.json is missing"):
        load_run(run)


def test_a_device_this_machine_lacks_is_a_one_line_error(
    runs: dict[str, Trainer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = str(runs["charlm"].out)
    with pytest.raises(ValueError, match=r"must name a torch device .* got 'gpu'"):
        load_run(run, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' was asked for but CUDA is not available"):
        load_run(run, device="cuda")
    commands = (
        ["eval", "--run", run],
        ["generate", "--run", run, "--prompt", "a", "--length", "2"],
        ["predict", "--run", str(runs["ar"].out), "--input", "unread.txt"],
    )
    for command in commands:
        for device in ("gpu", "cuda"):
            rc, out, err = _cli([*command, "--device", device], capsys)
            assert rc == 2 and out == "", (command, device)
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert f"'{device}'" in err


def test_a_comparison_folder_points_at_its_runs(
    runs: dict[str, Trainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # what `rnnkit compare --out cmp` leaves: compare.json and DIR/<model>/seed-<seed>/ runs
    cmp = tmp_path / "cmp"
    cmp.mkdir()
    (cmp / "compare.json").write_text("{}")
    with pytest.raises(RunLoadError, match=r"not a run; .* \(none of them has finished\)"):
        load_run(cmp)
    shutil.copytree(runs["parity"].out, cmp / "lstm" / "seed-0")
    rc, out, err = _cli(["eval", "--run", str(cmp)], capsys)
    assert (rc, out) == (2, "")
    assert f"{cmp} is a comparison (rnnkit compare), not a run" in err
    assert f"its finished runs: {cmp / 'lstm' / 'seed-0'})" in err


def test_a_comparison_folder_names_its_first_three_runs(
    runs: dict[str, Trainer], tmp_path: Path
) -> None:
    cmp = tmp_path / "cmp"
    cmp.mkdir()
    (cmp / "compare.json").write_text("{}")
    done = [cmp / model / "seed-0" for model in ("a", "b", "c", "d")]
    for run in done[:3]:
        shutil.copytree(runs["parity"].out, run)
    named = ", ".join(str(r) for r in done[:3])
    with pytest.raises(RunLoadError, match=re.escape(f"(its finished runs: {named})")):
        load_run(cmp)
    shutil.copytree(runs["parity"].out, done[3])  # a fourth: the first three and "..."
    with pytest.raises(RunLoadError, match=re.escape(f"(its finished runs: {named} ...)")):
        load_run(cmp)


def test_damaged_config_is_named(runs: dict[str, Trainer], tmp_path: Path) -> None:
    run = _copy(runs["parity"], tmp_path)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(RunLoadError, match=r"config\.json is damaged: not JSON"):
        load_run(run)
    (run / "config.json").write_text(text)
    _edit_config(run, lambda c: c.pop("model"))
    with pytest.raises(RunLoadError, match=r"config\.json: field 'model'"):
        load_run(run)


def test_flipped_weight_bytes_fail_the_checksum(runs: dict[str, Trainer], tmp_path: Path) -> None:
    run = _copy(runs["parity"], tmp_path)
    blob = bytearray((run / "model.safetensors").read_bytes())
    blob[-3] ^= 0x40  # inside the last tensor's data: still a valid safetensors file
    (run / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(RunLoadError, match=r"model\.safetensors does not match the checksum"):
        load_run(run)


def test_a_truncated_weights_file_is_named(runs: dict[str, Trainer], tmp_path: Path) -> None:
    run = _copy(runs["parity"], tmp_path)
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[:100])
    _edit_config(run, lambda c: c.pop("weights"))  # past the checksum, to the parser
    with pytest.raises(RunLoadError, match=r"model\.safetensors is damaged or not a safetensors"):
        load_run(run)


def test_wrong_tensor_names_are_named(runs: dict[str, Trainer], tmp_path: Path) -> None:
    run = _copy(runs["parity"], tmp_path)
    weights = load_file(str(run / "model.safetensors"))
    weights["best.head.weight"] = weights.pop("head.weight")  # the old private prefix
    save_file(weights, str(run / "model.safetensors"))
    _edit_config(run, lambda c: c.pop("weights"))
    with pytest.raises(RunLoadError, match=r"missing head\.weight; unexpected best\.head\.weight"):
        load_run(run)


def test_a_shape_mismatch_is_named(runs: dict[str, Trainer], tmp_path: Path) -> None:
    run = _copy(runs["parity"], tmp_path)
    _edit_config(run, lambda c: c["model_kwargs"].update(hidden_size=12))
    wrong = r"tensor 'rnn\.cells\.0\.weight_ih' has shape \(32, 1\), the model's has \(48, 1\)"
    with pytest.raises(RunLoadError, match=wrong + r" \(and 3 more\)"):
        load_run(run)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("model", "no_such_model", "model"), ("task", "no_such_task", "task")],
)
def test_unregistered_names_point_at_the_plugin(
    runs: dict[str, Trainer], tmp_path: Path, field: str, value: str, what: str
) -> None:
    run = _copy(runs["parity"], tmp_path)
    _edit_config(run, lambda c: c.update({field: value}))
    with pytest.raises(RunLoadError, match=rf"config\.json: the run's {what} is not registered.*"):
        load_run(run)


def test_a_run_records_the_plugins_its_names_came_from(runs: dict[str, Trainer]) -> None:
    config = json.loads((runs["parity"].out / "config.json").read_text())
    plugins = config["plugins"]
    assert plugins["task"]["name"] == "parity"
    assert plugins["task"]["distribution"] == "rnnkit-tasks"
    assert plugins["model"]["distribution"] == "rnnkit-models"
    assert plugins["cell"] == {
        "name": config["cell"],
        "plugin": "core",
        "distribution": "rnnkit-core",
        "version": plugins["task"]["version"],  # one version for every rnnkit distribution
    }


def test_a_run_whose_plugin_is_missing_names_the_distribution_to_install(
    runs: dict[str, Trainer], tmp_path: Path
) -> None:
    """A run trained with a plugin's cell, loaded where that plugin is not installed."""
    run = _copy(runs["parity"], tmp_path)

    def edit(c: dict[str, Any]) -> None:
        c["model_kwargs"]["cell"] = "janet"
        c["plugins"]["cell"] = {
            "name": "janet",
            "plugin": "janet",
            "distribution": "rnnkit-janet",
            "version": "0.3.1",
        }

    _edit_config(run, edit)
    with pytest.raises(
        RunLoadError,
        match=r"the run's model is not registered here; .* installed\? The run's cell 'janet' "
        r"came from rnnkit-janet 0\.3\.1 \(pip install rnnkit-janet\)\. \(unknown cell 'janet'",
    ):
        load_run(run)


# --- eval ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["charlm", "tomita1", "ar"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_reproduces_final_json(
    runs: dict[str, Trainer], task: str, split: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs[task].out
    rc, text, _ = _cli(["eval", "--run", str(out), "--split", split, "--json"], capsys)
    assert rc == 0
    final = json.loads((out / "final.json").read_text())[split]
    metrics = json.loads(text)["metrics"]
    if task == "ar":
        # stpe fits AR coefficients with torch.linalg.lstsq, which MKL does not reproduce
        # bit for bit within a process (the same call differs in the last bits after a call
        # at another thread count): that metric to 1e-12, every other one exactly
        assert metrics.pop("stpe") == pytest.approx(final.pop("stpe"), rel=1e-12, abs=0)
    assert metrics == final


def test_eval_table_names_the_primary_metric(
    runs: dict[str, Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs["charlm"].out
    rc, text, _ = _cli(["eval", "--run", str(out)], capsys)
    final = json.loads((out / "final.json").read_text())
    assert rc == 0 and f"bpc {final['valid']['bpc']:.4f}" in text and "valid split" in text


# --- generate ------------------------------------------------------------------------------------


def _ids(run: LoadedRun, text: str) -> torch.Tensor:
    vocab = run.info["vocab"]
    return torch.tensor([vocab.index(c) for c in text])


def test_the_first_distribution_is_the_full_forward_on_the_prompt(
    runs: dict[str, Trainer],
) -> None:
    run = load_run(runs["charlm"].out)
    prompt = _ids(run, "The king ")
    samples = list(sample_tokens(run.model, prompt, 6, temperature=0.7, seed=3))
    with torch.no_grad():
        # every step's distribution is the full forward's on the prompt and what came before
        for k, s in enumerate(samples):
            seq = torch.cat([prompt, torch.tensor([t.id for t in samples[:k]], dtype=torch.long)])
            full = torch.softmax(run.model(seq[None])[0, -1] / 0.7, -1)
            torch.testing.assert_close(s.probs, full)


def test_the_prompt_is_read_once(runs: dict[str, Trainer], monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_run(runs["charlm"].out)
    rnn = run.model.rnn  # type: ignore[union-attr]
    calls = {"forward": 0, "step": 0}
    forward, step = rnn.forward, rnn.step

    def counted_forward(*a: Any, **k: Any) -> Any:
        calls["forward"] += 1
        return forward(*a, **k)

    def counted_step(*a: Any, **k: Any) -> Any:
        calls["step"] += 1
        return step(*a, **k)

    monkeypatch.setattr(rnn, "forward", counted_forward)
    monkeypatch.setattr(rnn, "step", counted_step)
    list(sample_tokens(run.model, _ids(run, "The king "), 10))
    assert calls == {"forward": 1, "step": 10}


def test_generate_is_deterministic_under_a_seed(
    runs: dict[str, Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--run", str(runs["charlm"].out), "--prompt", "The ", "--length", "40"]
    outs = [_cli([*args, "--seed", s], capsys) for s in ("5", "5", "6")]
    assert all(rc == 0 for rc, _, _ in outs)
    assert outs[0][1] == outs[1][1] and outs[0][1].startswith("The ")
    assert len(outs[0][1].rstrip("\n")) == len("The ") + 40
    assert outs[0][1] != outs[2][1]
    rc, text, _ = _cli([*args, "--temperature", "0", "--json"], capsys)
    greedy = json.loads(text)["text"]
    run = load_run(runs["charlm"].out)
    first = int(run.model(_ids(run, "The ")[None])[0, -1].argmax())
    assert rc == 0 and greedy[0] == run.info["vocab"][first]


def test_top_k_samples_only_among_the_likeliest_characters(
    runs: dict[str, Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    run = load_run(runs["charlm"].out)
    prompt = _ids(run, "The king ")
    samples = list(sample_tokens(run.model, prompt, 8, temperature=1.3, top_k=3, seed=1))
    with torch.no_grad():
        for k, s in enumerate(samples):
            seq = torch.cat([prompt, torch.tensor([t.id for t in samples[:k]], dtype=torch.long)])
            logits = run.model(seq[None])[0, -1]
            top = logits.topk(3).indices
            # the other characters get no mass; the three keep softmax(logits / T) ratios
            assert s.id in top.tolist() and int((s.probs > 0).sum()) == 3
            torch.testing.assert_close(s.probs[top], torch.softmax(logits[top] / 1.3, -1))
    args = ["generate", "--run", str(runs["charlm"].out), "--prompt", "The ", "--length", "30"]
    rc, text, _ = _cli([*args, "--top-k", "1", "--temperature", "1.5"], capsys)
    greedy_rc, greedy, _ = _cli([*args, "--temperature", "0"], capsys)
    assert rc == greedy_rc == 0 and text == greedy  # top-1 is greedy at any temperature
    rc, _, err = _cli([*args, "--top-k", "0"], capsys)
    assert rc == 2 and "--top-k" in err


def test_generate_refuses_characters_outside_the_vocabulary(
    runs: dict[str, Trainer], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _cli(["generate", "--run", str(runs["charlm"].out), "--prompt", "Z\u00e9"], capsys)
    assert rc == 2 and "'Z\u00e9'" in err and "vocabulary" in err


# --- predict -----------------------------------------------------------------------------------


def test_predict_forecasts_a_series_from_a_file(
    runs: dict[str, Trainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs["ar"].out
    values = [0.3, -0.2, 0.5, 0.1, -0.4, 0.0, 0.25]
    path = tmp_path / "series.csv"
    path.write_text("# an AR series, scaled\n0.3, -0.2, 0.5\n0.1 -0.4\n\n0.0\n0.25\n")
    args = ["predict", "--run", str(out), "--input", str(path), "--horizon", "3"]
    rc, text, _ = _cli(args, capsys)
    assert rc == 0 and text.count("t+") == 3
    rc, text, _ = _cli([*args, "--json"], capsys)
    forecast = torch.tensor(json.loads(text)["forecast"])
    run = load_run(out)
    seq = torch.tensor(values)[:, None]
    with torch.no_grad():
        for k in range(3):  # each forecast is fed back as the next input
            want = run.model(seq[None])[0, -1]
            torch.testing.assert_close(forecast[k], want)
            seq = torch.cat([seq, forecast[k][None]])


def test_rollout_of_a_multichannel_series_matches_the_forward() -> None:
    torch.manual_seed(0)
    model = create_model("sequence_tagger", input_size=3, output_size=3, hidden_size=6).eval()
    series = torch.randn(9, 3)
    forecast = rollout(model, series, 2)
    with torch.no_grad():
        torch.testing.assert_close(forecast[0], model(series[None])[0, -1])
        longer = torch.cat([series, forecast[:1]])
        torch.testing.assert_close(forecast[1], model(longer[None])[0, -1])


def test_ssm_networks_step_like_their_forward() -> None:
    torch.manual_seed(0)
    model = create_model("ssm_tagger", input_size=0, output_size=5, vocab_size=5, hidden_size=8)
    model.eval()
    ids = torch.tensor([1, 4, 0, 2])
    steps = incremental(model)
    with torch.no_grad():
        out, state = steps.prefill(ids[None, :2])
        torch.testing.assert_close(out, model(ids[None, :2])[:, -1])
        for t in range(2, 4):
            out, state = steps.step(ids[t : t + 1], state)
            torch.testing.assert_close(out, model(ids[None, : t + 1])[:, -1])


@pytest.mark.parametrize("suffix", [".txt", ".npy"])
def test_predict_classifies_token_examples(
    runs: dict[str, Trainer], tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs["tomita1"].out
    examples = [[1, 1, 1, 1], [1, 2, 1, 2]]  # same length: one .npy array of (N, T) ids
    path = tmp_path / f"examples{suffix}"
    if suffix == ".npy":
        np.save(path, np.array(examples, dtype=np.int64))
    else:
        path.write_text("\n".join(" ".join(map(str, e)) for e in examples) + "\n")
    rc, text, _ = _cli(["predict", "--run", str(out), "--input", str(path), "--json"], capsys)
    assert rc == 0
    got = json.loads(text)
    run = load_run(out)
    with torch.no_grad():
        probs = torch.softmax(run.model(torch.tensor(examples)), -1)
    assert [g["class"] for g in got] == probs.argmax(-1).tolist()
    torch.testing.assert_close(torch.tensor([g["probs"] for g in got]), probs)


def test_predict_classifies_feature_examples(
    runs: dict[str, Trainer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs["parity"].out
    path = tmp_path / "bits.csv"
    path.write_text("1,0,1,1\n0,0,1\n")  # parity: one feature per step, any length
    rc, text, _ = _cli(["predict", "--run", str(out), "--input", str(path)], capsys)
    assert rc == 0 and "example" in text and "probability" in text
    run = load_run(out)
    lines = [ln.split() for ln in text.splitlines()[2:]]
    with torch.no_grad():
        for row, bits in zip(lines, ([1.0, 0, 1, 1], [0.0, 0, 1]), strict=True):
            logits = run.model(torch.tensor(bits)[None, :, None])
            assert int(row[1]) == int(logits.argmax())


def test_input_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("1 2 3\n4 x 6\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2"):
        read_series(path, 3)
    path.write_text("1 2 3\n4 5\n")
    with pytest.raises(ValueError, match=r"time step 2 has 2 numbers; the model reads 3"):
        read_series(path, 3)
    path.write_text("1 2 3 4 5\n")
    with pytest.raises(ValueError, match="not a whole number of steps of 2 features"):
        read_examples(path, 2, None)
    path.write_text("0 1 7\n")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        read_examples(path, 0, 4)
    assert read_series(tmp_path / "bad.csv", 1).shape == (3, 1)  # D = 1: the numbers in order


# --- the command fits the task ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "command", "extra", "said"),
    [
        (
            "parity",
            "generate",
            ["--prompt", "x"],
            "kind classify); use rnnkit eval or rnnkit predict",
        ),
        ("ar", "generate", ["--prompt", "x"], "kind regress); use rnnkit eval or rnnkit predict"),
        (
            "charlm",
            "predict",
            ["--input", "x"],
            "language model; use rnnkit eval or rnnkit generate",
        ),
    ],
)
def test_a_command_for_another_kind_of_task_says_which_fit(
    runs: dict[str, Trainer],
    task: str,
    command: str,
    extra: list[str],
    said: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, _, err = _cli([command, "--run", str(runs[task].out), *extra], capsys)
    assert rc == 2 and said in err and f"task {task!r}" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_whose_task_and_cell_are_missing_names_their_distribution_once(
    runs: dict[str, Trainer], tmp_path: Path
) -> None:
    """Two missing names from one distribution (one recorded without a version): both named,
    the distribution to install once."""
    run = _copy(runs["parity"], tmp_path)

    def edit(c: dict[str, Any]) -> None:
        c["task"] = "janet_parity"
        c["model_kwargs"]["cell"] = "janet"
        janet = {"plugin": "janet", "distribution": "rnnkit-janet"}
        c["plugins"]["task"] = {"name": "janet_parity", **janet, "version": None}
        c["plugins"]["cell"] = {"name": "janet", **janet, "version": "0.3.1"}

    _edit_config(run, edit)
    with pytest.raises(
        RunLoadError,
        match=r"the run's task is not registered here; .* installed\? The run's task "
        r"'janet_parity' came from rnnkit-janet \?, cell 'janet' came from rnnkit-janet 0\.3\.1 "
        r"\(pip install rnnkit-janet\)\. \(unknown task 'janet_parity'",
    ):
        load_run(run)


def test_names_nothing_registers_are_left_out_of_the_recorded_plugins() -> None:
    """A model passed to ``Trainer(model=...)`` with a cell class of its own: config.json
    records the origins of the names that are registered and saving does not fail on the
    others."""
    from rnnkit.tasks.reuse import _origins

    origins = _origins({"task": "parity", "model": None, "cell": "MyOwnCell"})
    assert set(origins) == {"task"}
    assert origins["task"]["distribution"] == "rnnkit-tasks"
