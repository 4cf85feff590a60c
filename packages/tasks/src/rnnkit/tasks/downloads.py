"""Data sets that rnnkit can download, each pinned by size and SHA-256: ``rnnkit data``.

Only data the tasks can use but do not ship live here (today the Google Speech Commands
archives of the keyword-spotting tasks). A download is streamed into a temporary file in the
target folder while it is hashed, checked against the pinned size and digest, unpacked into
a temporary folder with tarfile's ``data`` filter (no absolute paths, links out of the tree or
device files) and renamed into place: an interrupted or corrupt download never leaves a
folder that looks complete, and a second call finds the finished folder and does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "ARCHIVES",
    "Archive",
    "DownloadError",
    "configure_data",
    "download",
    "run_data",
]

DATA_HELP = "download data sets the tasks can use (pinned by size and SHA-256)"
#: Where ``rnnkit data download`` puts archives without ``--dir``: ``$RNNKIT_DATA`` if set.
DATA_ENV = "RNNKIT_DATA"
_BLOCK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed, or what arrived is not the pinned archive."""


@dataclass(frozen=True)
class Archive:
    """A ``.tar.gz`` archive pinned by its size and SHA-256.

    Attributes:
        name: the name ``rnnkit data download`` takes.
        url: where it is fetched from.
        size: its size in bytes.
        sha256: its SHA-256 digest (hex).
        folder: the folder it is unpacked into, inside the target directory.
        use: what to do with the folder (shown after the download).
    """

    name: str
    url: str
    size: int
    sha256: str
    folder: str
    use: str


# Sizes and digests as listed in TensorFlow Datasets' url_checksums/speech_commands.txt.
ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive(
            name="speech_commands",
            url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
            size=2_428_923_189,
            sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
            folder="speech_commands_v0.02",
            use="export RNNKIT_SPEECH_COMMANDS={path}  # the kws and kws12 tasks read it",
        ),
        Archive(
            name="speech_commands_test",
            url="http://download.tensorflow.org/data/speech_commands_test_set_v0.02.tar.gz",
            size=112_563_277,
            sha256="cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df",
            folder="speech_commands_test_set_v0.02",
            use="the official test set of Speech Commands v0.02 (same folder layout)",
        ),
    )
}


def default_dir() -> Path:
    """``$RNNKIT_DATA``, else ``$XDG_DATA_HOME/rnnkit`` (by default ``~/.local/share/rnnkit``)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "rnnkit"


Progress = Callable[[int, int], None]


def _fetch(archive: Archive, into: IO[bytes], progress: Progress | None) -> str:
    """Stream ``archive.url`` into ``into``; the SHA-256 of what arrived."""
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as response:
            while block := response.read(_BLOCK):
                into.write(block)
                digest.update(block)
                done += len(block)
                if done > archive.size:
                    raise DownloadError(
                        f"{archive.url}: more than the pinned {archive.size} bytes arrived"
                    )
                if progress is not None:
                    progress(done, archive.size)
    except OSError as e:  # URLError, timeouts and resets are OSErrors
        raise DownloadError(f"downloading {archive.url} failed: {e}") from e
    if done != archive.size:
        raise DownloadError(
            f"{archive.url}: {done} bytes arrived, the pinned archive has {archive.size}"
        )
    return digest.hexdigest()


@contextlib.contextmanager
def _temporary(target: Path, *, folder: bool) -> Iterator[Path]:
    """A temporary file or folder in ``target`` (same file system, so a rename into place is
    atomic), removed on exit unless it was renamed away."""
    if folder:
        path = Path(tempfile.mkdtemp(prefix=".part-", dir=target))
    else:
        fd, name = tempfile.mkstemp(prefix=".part-", suffix=".tar.gz", dir=target)
        os.close(fd)
        path = Path(name)
    try:
        yield path
    finally:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def download(name: str, target: Path | None = None, *, progress: Progress | None = None) -> Path:
    """Download, verify and unpack the pinned archive ``name`` into ``target``.

    Args:
        name: a key of :data:`ARCHIVES`.
        target: the folder to unpack into (made if missing); default :func:`default_dir`.
        progress: called with ``(bytes so far, total)`` while downloading.

    Returns:
        The unpacked folder, ``target / archive.folder``. When it exists already nothing is
        downloaded.

    Raises:
        KeyError: ``name`` is not a known archive (the message lists them).
        DownloadError: the download failed, or its size or SHA-256 is not the pinned one
            (nothing is left behind in either case).
    """
    if name not in ARCHIVES:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(ARCHIVES))}")
    archive = ARCHIVES[name]
    target = default_dir() if target is None else target
    final = target / archive.folder
    if final.is_dir():
        return final
    target.mkdir(parents=True, exist_ok=True)
    with _temporary(target, folder=False) as part:
        with part.open("wb") as f:
            got = _fetch(archive, f, progress)
        if got != archive.sha256:
            raise DownloadError(
                f"{archive.url}: SHA-256 {got} is not the pinned {archive.sha256} (a changed "
                "or damaged archive); nothing was unpacked"
            )
        with _temporary(target, folder=True) as staging:
            if not hasattr(tarfile, "data_filter"):  # added in Python 3.11.4
                raise DownloadError(
                    "unpacking safely needs tarfile's data filter (Python 3.11.4 or later)"
                )
            try:
                with tarfile.open(part, "r:gz") as tar:
                    tar.extractall(staging, filter="data")
            except tarfile.TarError as e:  # unreadable, or a member the data filter refuses
                raise DownloadError(f"{archive.url}: cannot unpack the archive: {e}") from e
            # mkdtemp made it 0o700; the data folder gets a folder's usual mode
            staging.chmod(0o777 & ~_umask())
            os.replace(staging, final)
    return final


def configure_data(parser: argparse.ArgumentParser) -> None:
    """``rnnkit data list`` and ``rnnkit data download NAME [--dir DIR]``."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{list,download}")
    ls = sub.add_parser("list", help="the data sets that can be downloaded")
    ls.add_argument("--json", action="store_true", help="print JSON")
    get = sub.add_parser("download", help="download, verify and unpack a data set")
    get.add_argument("name", choices=sorted(ARCHIVES))
    get.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"where to unpack (default: ${DATA_ENV}, else ~/.local/share/rnnkit)",
    )


def _print_progress(done: int, total: int) -> None:
    sys.stderr.write(f"\r{done / 1e6:9.1f} / {total / 1e6:.1f} MB")
    if done == total:
        sys.stderr.write("\n")


def run_data(args: argparse.Namespace) -> int:
    """Run ``rnnkit data``."""
    if args.data_command == "list":
        rows = [
            {"name": a.name, "size_mb": round(a.size / 1e6, 1), "url": a.url}
            for a in ARCHIVES.values()
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<22} {r['size_mb']:>9.1f} MB  {r['url']}")
        return 0
    archive = ARCHIVES[args.name]
    try:
        path = download(args.name, args.dir, progress=_print_progress)
    except DownloadError as e:
        print(f"rnnkit data download: {e}", file=sys.stderr)
        return 1
    print(path)
    print(archive.use.format(path=path))
    return 0
