"""Pushing a finished run to the Hugging Face Hub and pulling it back, offline.

The Hub is a stand-in (:class:`LocalHub`) that keeps repositories as folders under a temporary
directory; it checks each call's arguments against the real ``huggingface_hub.HfApi`` method's
signature and reads the real ``CommitOperationAdd`` objects, so a call the real client would
refuse fails here too. No test reaches the network.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.tasks import RunLoadError, TrainConfig, Trainer, load_run
from rnnkit.tasks.hub import HUB_FILES, HubUnavailableError, model_card, pull_run, push_run

try:
    import huggingface_hub as hf
except ImportError:  # the hub extra is not installed: only the test of that case runs
    hf = None

#: the real client class (a test replaces ``huggingface_hub.HfApi`` with a factory of stand-ins)
REAL_API: Any = None if hf is None else hf.HfApi
needs_hub = pytest.mark.skipif(hf is None, reason="needs huggingface_hub (the hub extra)")


class LocalHub:
    """Stands in for ``huggingface_hub.HfApi``: repository ``owner/name`` is ``root/owner/name``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _check(self, method: str, *args: Any, **kwargs: Any) -> None:
        # raises TypeError for an argument the real method does not take
        bound = inspect.signature(getattr(REAL_API, method)).bind(self, *args, **kwargs)
        self.calls.append((method, dict(bound.arguments)))

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self._check("create_repo", repo_id, **kwargs)
        (self.root / repo_id).mkdir(parents=True, exist_ok=kwargs.get("exist_ok", False))
        return f"file://{self.root / repo_id}"

    def create_commit(self, repo_id: str, operations: Any, **kwargs: Any) -> Any:
        self._check("create_commit", repo_id, operations, **kwargs)
        repo = self.root / repo_id
        assert repo.is_dir(), "commit to a repository that was not created"
        for op in operations:
            assert isinstance(op, hf.CommitOperationAdd)
            with op.as_file() as f:
                (repo / op.path_in_repo).write_bytes(f.read())
        return SimpleNamespace(commit_url=f"file://{repo}/commit/1")

    def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
        self._check("snapshot_download", repo_id, **kwargs)
        repo = self.root / repo_id
        if not repo.is_dir():
            # the Hub's HTTP errors (RepositoryNotFoundError, ...) are OSErrors
            raise OSError(f"{repo_id} not found")
        out = Path(kwargs["local_dir"])
        out.mkdir(parents=True, exist_ok=True)
        for f in repo.iterdir():
            patterns = kwargs.get("allow_patterns") or ["*"]
            if any(fnmatch.fnmatch(f.name, p) for p in patterns):
                shutil.copyfile(f, out / f.name)
        return str(out)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "run"
    Trainer(
        TrainConfig(
            task="parity",
            model_config={"hidden_size": 8},
            steps=4,
            batch_size=8,
            eval_every=2,
            device="cpu",
            out=str(out),
            verbose=False,
            plot=False,
            backend="reference",
        )
    ).run()
    return out


@needs_hub
def test_push_then_pull_gives_the_same_model(run_dir: Path, tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "hub")
    url = push_run(run_dir, "me/parity", private=True, api=hub)
    assert url.startswith("file://")
    repo = tmp_path / "hub" / "me" / "parity"
    assert sorted(p.name for p in repo.iterdir()) == sorted(HUB_FILES)
    for name in ("model.safetensors", "config.json"):
        assert (repo / name).read_bytes() == (run_dir / name).read_bytes(), name
    (repo / "extra.bin").write_bytes(b"not rnnkit's")  # another file in the repository
    create = dict(hub.calls)["create_repo"]
    assert create["private"] is True and create["exist_ok"] is True

    pulled = pull_run("me/parity", tmp_path / "pulled", api=hub)
    assert pulled == tmp_path / "pulled"
    assert sorted(p.name for p in pulled.iterdir()) == sorted(HUB_FILES)  # only what is needed
    a, b = load_run(run_dir), load_run(pulled)
    assert a.config == b.config
    for (k, v), (k2, w) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, w), k
    x = a.task.data(a.seed).test.inputs[:3]
    assert torch.equal(a.model(x), b.model(x))


def test_the_model_card_describes_the_run(run_dir: Path) -> None:
    card = model_card(run_dir, "me/parity")
    config = json.loads((run_dir / "config.json").read_text())
    final = json.loads((run_dir / "final.json").read_text())
    assert card.startswith("---\nlibrary_name: rnnkit\n")
    assert "- task-parity" in card and f"- cell-{config['cell']}" in card
    assert f"# parity / {config['model']} ({config['cell']})" in card
    primary = final["primary"]
    row = next(line for line in card.splitlines() if line.startswith(f"| {primary} |"))
    assert f"{final['test'][primary]:.4g}" in row
    assert 'pull_run("me/parity", "parity")' in card
    assert f"`{config['backend']}`" in card


@needs_hub
def test_damaged_weights_are_not_pushed(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(blob))
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(RunLoadError, match="checksum"):
        push_run(bad, "me/bad", api=hub)
    assert hub.calls == []


@needs_hub
def test_pulling_a_repository_without_a_run_is_named(tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "hub")
    (tmp_path / "hub" / "me" / "other").mkdir(parents=True)
    (tmp_path / "hub" / "me" / "other" / "README.md").write_text("hello")
    with pytest.raises(RunLoadError, match="me/other does not hold an rnnkit run"):
        pull_run("me/other", tmp_path / "pulled", api=hub)


@needs_hub
def test_cli_push_and_pull(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(hf, "HfApi", lambda: hub)
    assert main(["push", "--run", str(run_dir), "--repo", "me/cli", "--message", "first"]) == 0
    assert "pushed" in capsys.readouterr().out
    commit = dict(hub.calls)["create_commit"]
    assert commit["commit_message"] == "first" and commit["revision"] is None
    out = tmp_path / "pulled"
    assert main(["pull", "--repo", "me/cli", "--out", str(out)]) == 0
    assert f"rnnkit eval --run {out}" in capsys.readouterr().out
    assert main(["eval", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    # a repository the Hub does not have: one line, status 1
    assert main(["pull", "--repo", "me/none", "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "me/none not found" in err and "Traceback" not in err


def test_without_the_extra_the_error_names_it(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(HubUnavailableError, match=r"pip install 'rnnkit-tasks\[hub\]'"):
        push_run(run_dir, "me/parity")
    with pytest.raises(ImportError, match="hub"):
        pull_run("me/parity", tmp_path / "x")
    assert main(["pull", "--repo", "me/parity", "--out", str(tmp_path / "x")]) == 2
    assert "rnnkit-tasks[hub]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
