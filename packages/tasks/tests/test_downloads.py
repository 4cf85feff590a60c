"""``rnnkit data``: pinned downloads, verified before anything is unpacked.

No network here: archives are made in the test and fetched through ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks import downloads
from rnnkit.tasks.downloads import ARCHIVES, Archive, DownloadError, download


def _tarball(path: Path, members: dict[str, bytes]) -> Archive:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = path.read_bytes()
    return Archive(
        name="tiny",
        url=path.as_uri(),
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        folder="tiny_v1",
        use="use {path}",
    )


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Archive:
    archive = _tarball(
        tmp_path / "tiny.tar.gz", {"./yes/a.wav": b"RIFF", "validation_list.txt": b"yes/a.wav\n"}
    )
    monkeypatch.setitem(ARCHIVES, "tiny", archive)
    return archive


def _entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_download_verifies_and_unpacks(tiny: Archive, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    path = download("tiny", tmp_path / "data", progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "data" / "tiny_v1"
    assert (path / "yes" / "a.wav").read_bytes() == b"RIFF"
    assert _entries(tmp_path / "data") == [
        "tiny_v1",
        "tiny_v1/validation_list.txt",
        "tiny_v1/yes",
        "tiny_v1/yes/a.wav",
    ]  # no temporary file or folder left
    assert seen[-1] == (tiny.size, tiny.size)
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask  # not the 0o700 of a temporary folder


def test_an_unpacked_folder_is_not_downloaded_again(
    tiny: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download("tiny", tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(downloads.urllib.request, "urlopen", refuse)
    assert download("tiny", tmp_path) == tmp_path / "tiny_v1"


@pytest.mark.parametrize("fault", ["digest", "size", "missing", "traversal"])
def test_a_bad_archive_leaves_nothing(
    tiny: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    if fault == "digest":
        bad = Archive(**{**tiny.__dict__, "sha256": "0" * 64})
        match = "SHA-256 .* is not the pinned"
    elif fault == "size":
        bad = Archive(**{**tiny.__dict__, "size": tiny.size + 1})
        match = "bytes arrived, the pinned archive has"
    elif fault == "missing":
        bad = Archive(**{**tiny.__dict__, "url": (tmp_path / "nowhere.tar.gz").as_uri()})
        match = "downloading .* failed"
    else:
        bad = _tarball(tmp_path / "evil.tar.gz", {"../evil.txt": b"x"})
        match = "cannot unpack"
    monkeypatch.setitem(ARCHIVES, "tiny", bad)
    target = tmp_path / "data"
    with pytest.raises(DownloadError, match=match):
        download("tiny", target)
    assert _entries(target) == []
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="speech_commands"):
        download("speech_comands")


def test_pinned_speech_commands() -> None:
    sc = ARCHIVES["speech_commands"]
    assert sc.url.endswith("speech_commands_v0.02.tar.gz") and sc.size > 2_000_000_000
    assert len(sc.sha256) == 64 and int(sc.sha256, 16) > 0


def test_cli(tiny: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert {"speech_commands", "speech_commands_test", "tiny"} <= set(names)
    assert main(["data", "download", "tiny", "--dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [str(tmp_path / "d" / "tiny_v1"), f"use {tmp_path / 'd' / 'tiny_v1'}"]
    monkeypatched = Archive(**{**tiny.__dict__, "sha256": "f" * 64, "folder": "other"})
    ARCHIVES["tiny"] = monkeypatched
    assert main(["data", "download", "tiny", "--dir", str(tmp_path / "d")]) == 1
    assert "is not the pinned" in capsys.readouterr().err
