"""Run directories, checkpoints and options are never silently wrong (issue 14, items 5, 6, 8).

- exclusive run directories: two runs never share one (item 5);
- checkpoint integrity: per-tensor checksums, non-finite weights, every metadata field is
  checked on resume, and errors name the checkpoint and the field (item 6);
- no leftovers (empty run directories, stale ``.tmp`` files), output files follow the umask,
  out-of-range options are refused by name (item 8).
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import task_data
from safetensors import safe_open
from safetensors.torch import save

from rnnkit.core.cli import main
from rnnkit.tasks import CheckpointError, Split, TaskData, TrainConfig, Trainer
from rnnkit.tasks import checkpoint as ckpt
from rnnkit.tasks import trainer as trainer_module


def _small(n: int = 64) -> TaskData:
    data = task_data("digits_rows")

    def cut(s: Split) -> Split:
        return s.take(torch.arange(min(n, len(s))))

    return TaskData(cut(data.train), cut(data.valid), cut(data.test), data.info)


def _config(out: Path | None, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "task": "digits_rows",
        "steps": 8,
        "batch_size": 16,
        "eval_every": 4,
        "out": None if out is None else str(out),
        "model_config": {"hidden_size": 8},
        "verbose": False,
        "plot": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# --- item 5: exclusive run directories ---------------------------------------------------------


def test_runs_started_in_the_same_second_get_their_own_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer_module, "timestamp", lambda: "20250101-120000")
    data = _small()
    # both constructed before either has written anything: what two processes started in
    # the same second see
    a = Trainer(_config(None, seed=1), data=data)
    b = Trainer(_config(None, seed=2), data=data)
    ra, rb = a.run(), b.run()
    assert ra.out != rb.out
    for r, seed in ((ra, 1), (rb, 2)):
        out = Path(r.out)
        assert json.loads((out / "final.json").read_text())["config"]["seed"] == seed
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
        assert steps == [4, 8]  # one run's records only
    assert Path(ra.out).name == "digits_rows-sequence_classifier-20250101-120000"
    assert Path(rb.out).name == "digits_rows-sequence_classifier-20250101-120000-2"
    rc = Trainer(_config(None, seed=3), data=data).run()
    assert Path(rc.out).name.endswith("-3")


def test_a_run_directory_in_use_or_taken_meanwhile_is_refused(tmp_path: Path) -> None:
    data = _small()
    out = tmp_path / "run"
    a = Trainer(_config(out, seed=1), data=data)
    b = Trainer(_config(out, seed=2), data=data)  # checked before a wrote its checkpoint
    a.run()
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"already holds a run.*--resume"):
        b.run()
    assert _snapshot(out) == before
    if sys.platform != "win32":
        import fcntl

        other = tmp_path / "other"
        other.mkdir()
        fd = os.open(other, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's run
            with pytest.raises(ValueError, match=r"in use by another"):
                Trainer(_config(other), data=data).run()
        finally:
            os.close(fd)
        assert list(other.iterdir()) == []


# --- item 6: checkpoint integrity ----------------------------------------------------------------


def _stopped_run(out: Path, data: TaskData | None = None) -> Path:
    r = Trainer(_config(out, stop_after=5), data=data or _small()).run()
    assert r.interrupted
    return out / ckpt.CHECKPOINT


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[ckpt.META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return tensors, meta


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path.write_bytes(save(tensors, metadata={ckpt.META_KEY: json.dumps(meta)}))


def _resume_error(out: Path) -> str:
    before = _snapshot(out)
    with pytest.raises(CheckpointError) as info:
        Trainer(_config(out, resume=True), data=_small())
    assert _snapshot(out) == before  # nothing in the run directory changed
    message = str(info.value)
    assert str(out / ckpt.CHECKPOINT) in message
    return message


def test_flipped_bytes_in_one_tensor_are_detected(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", bytes(raw[:8]))
    header = json.loads(bytes(raw[8 : 8 + n]))
    name = next(k for k in header if k.startswith("best.") and k.endswith("weight_ih"))
    start = 8 + n + header[name]["data_offsets"][0]
    raw[start + 6] ^= 0x5A  # inside the first values, keeps the file parseable
    path.write_bytes(bytes(raw))
    message = _resume_error(tmp_path)
    assert name in message and "checksum" in message


def test_nan_weights_are_refused_even_with_valid_checksums(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    resumed = Trainer(_config(tmp_path, resume=True), data=_small())
    with torch.no_grad():
        next(iter(resumed.model.parameters())).fill_(math.nan)
    name = "model." + next(iter(dict(resumed.model.named_parameters())))
    resumed._save()  # written by save_run itself: the checksums match the NaN values
    assert torch.isnan(_read(path)[0][name]).all()
    message = _resume_error(tmp_path)
    assert name in message and "NaN" in message


def test_nan_written_into_the_file_is_refused(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    name = next(k for k in tensors if k.startswith("best."))
    tensors[name] = torch.full_like(tensors[name], math.nan)
    _write(path, tensors, meta)
    assert name in _resume_error(tmp_path)


_BAD_FIELDS: list[tuple[str, Any]] = [
    ("step", -5),
    ("step", 1e9),
    ("step", 10**9),
    ("step", "5"),
    ("step", True),
    ("best_step", 99),
    ("best_score", "high"),
    ("best_score", math.inf),
    ("bad_evals", -1),
    ("stopped_early", "no"),
    ("loss_count", -3.0),
    ("loss_sum", math.nan),
    ("elapsed", -1.0),
    ("history", "junk"),
    ("history", [{"step": 4}]),
    ("history", [17]),
    ("history", [{"step": 40, "train_loss": 1.0, "lr": 0.1, "seconds": 1.0, "valid": {}}]),
    ("python_random", "junk"),
    ("python_random", [3, [1, 2, 3], None]),
    ("optimizer", "junk"),
    ("signature", None),
]


@pytest.mark.parametrize(
    ("field", "value"), _BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in _BAD_FIELDS]
)
def test_each_bad_metadata_field_is_refused_by_name(field: str, value: Any, tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    meta[field] = value
    _write(path, tensors, meta)
    message = _resume_error(tmp_path)
    assert repr(field) in message or field in message


@pytest.mark.parametrize("edit", ["betas", "lr", "param_count"])
def test_bad_optimizer_settings_are_refused_by_name(edit: str, tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    groups = meta["optimizer"]["param_groups"]
    if edit == "betas":
        groups[0]["betas"] = "junk"
    elif edit == "lr":
        groups[0]["lr"] = "fast"
    else:
        groups[0]["params"] = groups[0]["params"][:-1]
    _write(path, tensors, meta)
    assert "optimizer" in _resume_error(tmp_path)


def test_junk_rng_state_is_refused_by_name(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    tensors["rng.cpu"] = torch.zeros(7, dtype=torch.uint8)
    _write(path, tensors, meta)
    assert "rng.cpu" in _resume_error(tmp_path)


def test_a_wrong_shaped_optimizer_tensor_is_refused_by_name(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    name = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[name] = tensors[name].reshape(-1)[:3].clone()
    _write(path, tensors, meta)
    assert name in _resume_error(tmp_path)


def test_an_edited_field_within_range_is_caught_by_the_metadata_checksum(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    meta["loss_sum"] *= 2  # plausible, but not what was written
    _write(path, tensors, meta)
    assert "checksum" in _resume_error(tmp_path)


def test_checkpoints_written_before_checksums_still_resume_identically(tmp_path: Path) -> None:
    data = _small(200)
    straight = Trainer(_config(tmp_path / "a"), data=data)
    ra = straight.run()
    path = _stopped_run(tmp_path / "b", data)
    tensors, meta = _read(path)
    meta.pop("checksums", None)
    meta["format"] = "rnnkit-checkpoint/1"  # the format before per-tensor checksums
    _write(path, tensors, meta)
    resumed = Trainer(_config(tmp_path / "b", resume=True), data=data)
    rb = resumed.run()
    for (k, va), (_, vb) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert ra.test == rb.test
    # and the checkpoints it writes from then on carry checksums
    assert _read(path)[1]["format"] == ckpt.FORMAT and "checksums" in _read(path)[1]


def test_a_current_checkpoint_without_checksums_is_refused(tmp_path: Path) -> None:
    path = _stopped_run(tmp_path)
    tensors, meta = _read(path)
    meta.pop("checksums", None)
    _write(path, tensors, meta)
    assert "checksums" in _resume_error(tmp_path)


# --- item 8: leftovers, file modes, options ------------------------------------------------------


def test_a_run_failing_before_its_first_checkpoint_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    with pytest.raises(Exception, match="unknown backend"):
        Trainer(_config(out, backend="nope"), data=_small()).run()
    assert not out.exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="unknown backend"):
        Trainer(_config(None, backend="nope"), data=_small()).run()
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="unknown backend"):
        Trainer(_config(kept, backend="nope"), data=_small()).run()
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_stale_temporary_files_are_removed_on_resume(tmp_path: Path) -> None:
    _stopped_run(tmp_path)
    stale = [tmp_path / ".checkpoint.safetensors.k3j_x9a1.tmp", tmp_path / ".final.json.ab12.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    foreign = tmp_path / ".mine.tmp"
    foreign.write_text("not the trainer's")
    Trainer(_config(tmp_path, resume=True), data=_small()).run()
    assert not any(p.exists() for p in stale)
    assert foreign.exists()


def test_output_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        Trainer(_config(tmp_path / "run", plot=True), data=_small()).run()
        os.umask(0o027)
        Trainer(_config(tmp_path / "strict"), data=_small()).run()
    finally:
        os.umask(old)
    for name in ("checkpoint.safetensors", "checkpoint.json", "metrics.jsonl", "final.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name
        assert stat.S_IMODE((tmp_path / "strict" / name).stat().st_mode) == 0o640, name


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("patience", -1, "--patience"),
        ("clip", -1.0, "--clip"),
        ("clip", math.nan, "--clip"),
        ("threads", 0, "--threads"),
        ("threads", -2, "--threads"),
        ("lr", math.nan, "--lr"),
        ("lr", math.inf, "--lr"),
        ("lr", -0.1, "--lr"),
        ("weight_decay", -1.0, "--weight-decay"),
        ("weight_decay", math.inf, "--weight-decay"),
        ("steps", 0, "--steps"),
        ("batch_size", 0, "--batch-size"),
        ("eval_every", -4, "--eval-every"),
        ("checkpoint_every", 0, "--checkpoint-every"),
        ("device", "gpu", "--device"),
        ("device", "CPU", "--device"),
        ("seed", True, "--seed"),  # a bool is no seed (a config file's seed = true)
        ("seed", 1.0, "--seed"),
        ("seed", -(2**40), "--seed"),
    ],
)
def test_bad_options_are_refused_by_name(
    option: str, value: float | str, flag: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=flag):
        Trainer(_config(out, **{option: value}), data=_small())
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--patience", "-1"], "--patience"),
        (["--clip", "-1"], "--clip"),
        (["--threads", "0"], "--threads"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--device", "gpu"], "--device"),
        (["--hidden-size", "0"], "--hidden-size"),
        (["--layers", "-1"], "--layers"),
        (["--seed", str(2**40)], "--seed"),
        (["--seed=-99999999999999999999"], "--seed"),
    ],
)
def test_bad_options_are_refused_by_the_cli(
    args: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--no-progress", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not out.exists()


def test_a_batch_above_the_training_set_is_clamped_and_recorded(tmp_path: Path) -> None:
    data = _small(40)
    r = Trainer(_config(tmp_path, batch_size=1000), data=data).run()
    final = json.loads((tmp_path / "final.json").read_text())
    for config in (r.config, final["config"]):
        assert config["budget"]["batch_size"] == 40
        assert config["batch_size_asked"] == 1000
    assert final["config"]["threads"] == torch.get_num_threads()


def test_compares_started_in_the_same_second_get_their_own_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rnnkit.tasks import compare as tasks_compare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tasks_compare, "timestamp", lambda: "20250101-120000")
    tiny = ["--steps", "2", "--eval-every", "2", "--hidden-size", "4", "--no-progress"]
    args = ["compare", "--models", "lstm", *tiny, "--no-plot"]
    assert main(args) == 0
    assert main(args) == 0
    roots = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert roots == ["compare-digits_rows-20250101-120000", "compare-digits_rows-20250101-120000-2"]
    for name in roots:
        assert (tmp_path / "runs" / name / "compare.json").is_file()
    assert main([*args, "--backend", "nope"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the failed compare left nothing


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint(tmp_path: Path) -> None:
    """SIGTERM (kill, a batch scheduler) is handled like Ctrl-C: the run finishes its step,
    saves a checkpoint, exits with status 130 and resumes from there."""
    out = tmp_path / "run"
    script = (
        "import sys\nfrom rnnkit.core.cli import main\n"
        f"sys.exit(main(['train', '--task', 'digits_rows', '--steps', '100000', '--eval-every', "
        f"'100000', '--checkpoint-every', '20', '--out', {str(out)!r}]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").exists():  # the loop runs: its handler is installed
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "SIGTERM: stopping after this step" in stderr
    step = json.loads((out / "checkpoint.json").read_text())["step"]
    assert 0 < step < 100000
    assert not (out / "final.json").exists()
    again = TrainConfig(
        task="digits_rows",
        steps=100000,
        eval_every=100000,
        checkpoint_every=20,
        out=str(out),
        resume=True,
        verbose=False,
    )
    assert Trainer(again).step == step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_ignored_signal_stays_ignored_during_a_run(sig: signal.Signals) -> None:
    """A process started with SIGINT ignored (``cmd &`` in a script, ``nohup``) keeps ignoring
    it while it trains: the run's handler is not installed over ``SIG_IGN``, and leaving the
    run gives back ``SIG_IGN`` (the other signal is still handled)."""
    other = signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT
    before = signal.signal(sig, signal.SIG_IGN)
    try:
        with trainer_module._StopOnSignal(announce=False) as stop:
            assert signal.getsignal(sig) == signal.SIG_IGN
            assert signal.getsignal(other) == stop._handler
        assert signal.getsignal(sig) == signal.SIG_IGN
    finally:
        signal.signal(sig, before)
