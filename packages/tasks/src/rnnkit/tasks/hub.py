"""A finished run on the Hugging Face Hub: :func:`push_run` and :func:`pull_run`.

Needs the ``hub`` extra (``pip install 'rnnkit-tasks[hub]'``, which installs
``huggingface_hub``); without it both functions raise :class:`HubUnavailableError`, naming the
extra. The token is ``huggingface_hub``'s: ``hf auth login``, the ``HF_TOKEN`` variable, or
``token=``.

A pushed model repository holds three files, what :func:`~rnnkit.tasks.load_run` needs and a
page for people:

- ``model.safetensors``: the run's best weights, as the run wrote them;
- ``config.json``: the run's configuration, as the run wrote it (its checksum of the weights
  included, so a damaged download is refused on load);
- ``README.md``: a model card generated from ``config.json`` and, when the run has one,
  ``final.json`` (task, model, cell and widths, the valid and test metrics, how to load it).

Example::

    from rnnkit.tasks import load_run
    from rnnkit.tasks.hub import pull_run, push_run

    push_run("runs/charlm-char_lm-lstm-20250131-120000", "me/charlm-lstm")
    run = load_run(pull_run("me/charlm-lstm", "pulled/charlm-lstm"))

or from the command line: ``rnnkit push --run DIR --repo ID`` and ``rnnkit pull --repo ID --out
DIR``. Both functions take ``api=``, an object with the methods of ``huggingface_hub.HfApi``
they use (``create_repo``, ``create_commit``, ``snapshot_download``): another endpoint
(``HfApi(endpoint=...)``), or a stand-in in tests.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from rnnkit.core.errors import RnnkitError
from rnnkit.tasks.reuse import CONFIG, WEIGHTS, RunLoadError, read_config

#: the model card's file name in the repository
CARD = "README.md"
#: the files a pushed run holds, and the only ones :func:`pull_run` downloads
HUB_FILES = (WEIGHTS, CONFIG, CARD)


class HubUnavailableError(RnnkitError, ImportError):
    """``huggingface_hub`` is not installed: the message names the ``hub`` extra."""


def _hub() -> ModuleType:
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError as exc:
        raise HubUnavailableError(
            "pushing and pulling runs needs huggingface_hub, which the 'hub' extra installs: "
            "pip install 'rnnkit-tasks[hub]'"
        ) from exc


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def model_card(run_dir: str | Path, repo_id: str | None = None) -> str:
    """The ``README.md`` of a pushed run: Hub metadata (YAML) and a description in Markdown.

    Args:
        run_dir: a finished run's directory (its ``config.json``; ``final.json`` if present).
        repo_id: the repository it goes to (used in the loading example).
    """
    from rnnkit.tasks.report import markdown_table

    root = Path(run_dir)
    config = read_config(root)
    final: dict[str, Any] = {}
    if (root / "final.json").is_file():
        try:
            loaded = json.loads((root / "final.json").read_text("utf-8"))
            final = loaded if isinstance(loaded, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            final = {}  # the card still describes the model; the metrics are left out
    arch = config.get("architecture") or {}
    cell = config.get("cell")
    tags = ["rnnkit", "pytorch", "recurrent", f"task-{config['task']}"]
    if cell:
        tags.append(f"cell-{cell}")
    front = ["---", "library_name: rnnkit", "tags:", *[f"- {t}" for t in tags], "---"]
    shape = ", ".join(
        f"{k.replace('_', ' ')} {arch[k]}"
        for k in ("hidden_size", "num_layers", "parameters")
        if k in arch
    )
    title = f"{config['task']} / {config['model']}" + (f" ({cell})" if cell else "")
    facts = [
        f"An rnnkit model: `{config['model']}`"
        + (f" with `{cell}` cells" if cell else "")
        + (f" ({shape})" if shape else "")
        + f", trained on the rnnkit task `{config['task']}` (kind `{config.get('kind')}`) "
        f"with seed {config.get('seed')} and backend `{config['backend']}`.",
        f"These are the weights of step {config.get('best_step')}, the best on the validation "
        f"split by `{config.get('primary')}` ({_fmt(config.get('best_valid'))}).",
    ]
    parts = [*front, "", f"# {title}", "", " ".join(facts), ""]
    valid, test = final.get("valid") or {}, final.get("test") or {}
    if isinstance(valid, dict) and isinstance(test, dict) and (valid or test):
        keys = list(dict.fromkeys([str(config.get("primary")), *test, *valid]))
        rows = [[k, valid.get(k), test.get(k)] for k in keys if k in valid or k in test]
        parts += ["## Results", "", markdown_table(rows, ["metric", "valid", "test"]), ""]
        target = final.get("target")
        if isinstance(target, int | float):
            word = "reached" if final.get("reached") else "not reached"
            parts += [f"The task's target, test {config.get('primary')} {target:g}: {word}.", ""]
    repo = repo_id or "OWNER/NAME"
    parts += [
        "## Use",
        "",
        "```python",
        "from rnnkit.tasks import load_run",
        "from rnnkit.tasks.hub import pull_run",
        "",
        f'run = load_run(pull_run("{repo}", "{repo.rsplit("/", 1)[-1]}"))',
        "model = run.model  # in eval mode",
        "```",
        "",
        f"or `rnnkit pull --repo {repo} --out DIR`, then `rnnkit eval --run DIR`. It needs "
        "`pip install 'rnnkit-tasks[hub]'` and the packages that provide the task, the model "
        "and the cell.",
        "",
        "## Configuration",
        "",
        markdown_table(
            [
                ["model keywords", json.dumps(config.get("model_kwargs"))],
                *[[f"version: {k}", v] for k, v in (config.get("versions") or {}).items()],
            ],
            ["", ""],
        ),
        "",
    ]
    return "\n".join(parts)


def _check_run(root: Path) -> dict[str, Any]:
    """``config.json`` of a finished run whose weights match their recorded checksum."""
    config = read_config(root)
    weights = root / WEIGHTS
    if not weights.is_file():
        raise RunLoadError(f"{weights} is missing: the run's weights are not there")
    recorded = config.get("weights")
    want = recorded.get("sha256") if isinstance(recorded, dict) else None
    if isinstance(want, str):
        h = hashlib.sha256()
        with weights.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != want:
            raise RunLoadError(
                f"{weights} does not match the checksum in {CONFIG}: not pushed (the file was "
                "damaged or replaced)"
            )
    return config


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> str:
    """Upload a finished run's ``model.safetensors``, ``config.json`` and a generated model
    card (``README.md``, :func:`model_card`) to the model repository ``repo_id``, in one commit.

    The repository is created if it does not exist (``private`` as asked; an existing one is
    left as it is). The run's files are checked first: a ``config.json`` that
    :func:`~rnnkit.tasks.load_run` would refuse, or weights that do not match its checksum,
    are not pushed.

    Args:
        run_dir: a finished run's directory.
        repo_id: ``"owner/name"`` on the Hub.
        token: a Hub token (default: ``huggingface_hub``'s, e.g. ``HF_TOKEN``).
        private: make a new repository private (default: the Hub's default, public).
        revision: an existing branch to commit to (default: ``main``).
        commit_message: default ``"rnnkit run <task> / <model>"``.
        api: a ``huggingface_hub.HfApi`` (default: a new one).

    Returns:
        the URL of the commit.

    Raises:
        HubUnavailableError: ``huggingface_hub`` is not installed (the ``hub`` extra).
        RunLoadError: the run's files are missing or damaged.
    """
    hub = _hub()
    root = Path(run_dir)
    config = _check_run(root)
    card = model_card(root, repo_id).encode("utf-8")
    api = api if api is not None else hub.HfApi()
    api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    add = hub.CommitOperationAdd
    info = api.create_commit(
        repo_id,
        [
            add(path_in_repo=WEIGHTS, path_or_fileobj=str(root / WEIGHTS)),
            add(path_in_repo=CONFIG, path_or_fileobj=str(root / CONFIG)),
            add(path_in_repo=CARD, path_or_fileobj=card),
        ],
        commit_message=commit_message or f"rnnkit run {config['task']} / {config['model']}",
        token=token,
        revision=revision,
    )
    return str(getattr(info, "commit_url", info))


def pull_run(
    repo_id: str,
    local_dir: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    api: Any = None,
) -> Path:
    """Download a pushed run (``model.safetensors``, ``config.json``, ``README.md``) into
    ``local_dir``, ready for :func:`~rnnkit.tasks.load_run` and ``rnnkit eval --run``.

    Only those three files are downloaded, whatever else the repository holds.
    ``huggingface_hub`` keeps its download records in ``local_dir/.cache``.

    Args:
        repo_id: ``"owner/name"`` on the Hub.
        local_dir: the folder to download into (created if needed).
        revision: a branch, tag or commit (default: ``main``).
        token: a Hub token, for a private repository.
        api: a ``huggingface_hub.HfApi`` (default: a new one).

    Returns:
        ``local_dir`` as a :class:`~pathlib.Path`.

    Raises:
        HubUnavailableError: ``huggingface_hub`` is not installed (the ``hub`` extra).
        RunLoadError: what was downloaded is not an rnnkit run (no or another ``config.json``).
    """
    hub = _hub()
    root = Path(local_dir)
    api = api if api is not None else hub.HfApi()
    api.snapshot_download(
        repo_id,
        revision=revision,
        local_dir=str(root),
        allow_patterns=list(HUB_FILES),
        token=token,
    )
    try:
        read_config(root)
    except RunLoadError as exc:
        raise RunLoadError(f"{repo_id} does not hold an rnnkit run: {exc}") from None
    return root


# --- rnnkit push / rnnkit pull -------------------------------------------------------------------

PUSH_HELP = (
    "upload a finished run's model.safetensors, config.json and a generated model card to a "
    "Hugging Face Hub model repository (needs the 'hub' extra)"
)
PULL_HELP = (
    "download a run pushed with rnnkit push into a folder that rnnkit eval/predict/generate "
    "and load_run read (needs the 'hub' extra)"
)


def configure_push(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit push``."""
    p.add_argument("--run", required=True, metavar="DIR", help="a finished run's directory")
    p.add_argument("--repo", required=True, metavar="ID", help="the Hub repository, owner/name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="BRANCH", help="an existing branch (default: main)")
    p.add_argument("--message", help="commit message")


def configure_pull(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit pull``."""
    p.add_argument("--repo", required=True, metavar="ID", help="the Hub repository, owner/name")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to download into")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")


def _hub_failure(exc: Exception) -> bool:
    """Whether ``exc`` is the Hub's or the network's (reported in one line, status 1)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith("huggingface_hub")


def run_push(args: argparse.Namespace) -> int:
    """Run ``rnnkit push``."""
    try:
        url = push_run(
            args.run,
            args.repo,
            private=True if args.private else None,
            revision=args.revision,
            commit_message=args.message,
        )
    except Exception as exc:
        if not _hub_failure(exc):
            raise
        print(f"rnnkit push: the Hub refused or could not be reached: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {args.run} ({', '.join(HUB_FILES)}) to {args.repo}: {url}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Run ``rnnkit pull``."""
    try:
        root = pull_run(args.repo, args.out, revision=args.revision)
    except Exception as exc:
        if not _hub_failure(exc):
            raise
        print(f"rnnkit pull: the Hub refused or could not be reached: {exc}", file=sys.stderr)
        return 1
    print(f"pulled {args.repo} into {root}; use it with: rnnkit eval --run {root}")
    return 0


__all__ = [
    "CARD",
    "HUB_FILES",
    "PULL_HELP",
    "PUSH_HELP",
    "HubUnavailableError",
    "configure_pull",
    "configure_push",
    "model_card",
    "pull_run",
    "push_run",
    "run_pull",
    "run_push",
]
