"""The MFCC front end, the WAV reader and the keyword-spotting data sets."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.tasks import Split, TaskData, TrainConfig, Trainer, get_task
from rnnkit.tasks._util import row_keys
from rnnkit.tasks.audio import (
    CLIP_SAMPLES,
    build_espeak_clips,
    cache_dir,
    coloured_noise,
    espeak12_data,
    espeak_data,
    kws_data,
    mfcc,
    read_wav,
    silence_clips,
    speech_commands_data,
    synthetic_background,
)


def reference_mfcc(x: np.ndarray, sr: int = 16000, n_fft: int = 512) -> np.ndarray:
    """Plain numpy float64 MFCC: loops and textbook formulas, no shared code."""
    win, hop, n_mels, n_mfcc = 400, 160, 40, 13
    n_frames = 1 + (len(x) - win) // hop
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / win) for n in range(win)])

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def imel(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    centres = imel(np.linspace(0.0, mel(np.array(sr / 2.0)), n_mels + 2))
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, mid, hi = centres[m], centres[m + 1], centres[m + 2]
        for k, f in enumerate(bins):
            if lo < f <= mid:
                fb[k, m] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[k, m] = (hi - f) / (hi - mid)
    out = np.zeros((n_frames, n_mfcc))
    for t in range(n_frames):
        frame = x[t * hop : t * hop + win] * hann
        power = np.abs(np.fft.rfft(frame, n=n_fft)) ** 2
        logmel = np.log(np.maximum(power @ fb, 1e-10))
        for k in range(n_mfcc):
            scale = math.sqrt(1.0 / n_mels) if k == 0 else math.sqrt(2.0 / n_mels)
            out[t, k] = scale * sum(
                logmel[n] * math.cos(math.pi * k * (2 * n + 1) / (2 * n_mels))
                for n in range(n_mels)
            )
    return out


def test_mfcc_matches_numpy_reference() -> None:
    t = np.arange(16000) / 16000.0
    x = 0.5 * np.sin(2 * math.pi * 440.0 * t) + 0.1 * np.sin(2 * math.pi * 3000.0 * t)
    got = mfcc(torch.from_numpy(x))
    assert got.shape == (98, 13) and got.dtype == torch.float64
    ref = reference_mfcc(x)
    rel = np.abs(got.numpy() - ref).max() / np.abs(ref).max()
    assert rel < 1e-5
    # batched and float32 give the same shape; float32 stays close
    batch = mfcc(torch.from_numpy(np.stack([x, x])).float())
    assert batch.shape == (2, 98, 13) and batch.dtype == torch.float32
    assert np.abs(batch[1].double().numpy() - ref).max() / np.abs(ref).max() < 1e-3


def _write(path: Path, x: np.ndarray, rate: int = 16000) -> None:
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _chirp(f0: float, f1: float, seconds: float = 0.8, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.4 * np.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))


def test_wav_round_trip_pad_crop_resample(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, size=16000).astype(np.int16)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())
    x = read_wav(tmp_path / "a.wav")
    assert x.dtype == torch.float32 and x.shape == (CLIP_SAMPLES,)
    assert torch.equal(x, torch.from_numpy(pcm.astype(np.float32) / 32768.0))
    # shorter: zero-padded (centred); longer: cropped
    _write(tmp_path / "short.wav", np.full(8000, 0.25))
    s = read_wav(tmp_path / "short.wav")
    assert s.shape == (CLIP_SAMPLES,) and float(s.sum()) == pytest.approx(2000.0)
    assert float(s[:4000].abs().sum()) == 0.0
    _write(tmp_path / "long.wav", np.full(24000, 0.25))
    assert read_wav(tmp_path / "long.wav").shape == (CLIP_SAMPLES,)
    # another rate: the resampled slow sine matches the sine at 16 kHz (away from the ends,
    # where the polyphase filter's taps reach past the recording)
    _write(tmp_path / "8k.wav", _chirp(200.0, 200.0, 1.0, 8000), rate=8000)
    r = read_wav(tmp_path / "8k.wav", length=None)
    assert r.shape == (16000,)
    want = torch.from_numpy(_chirp(200.0, 200.0, 1.0, 16000)).float()
    assert float((r[12:-12] - want[12:-12]).abs().max()) < 1e-3
    with wave.open(str(tmp_path / "st.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0" * 400)
    with pytest.raises(ValueError, match="mono"):
        read_wav(tmp_path / "st.wav")


WORDS = {"up": (300.0, 900.0), "down": (2000.0, 600.0), "go": (1200.0, 1300.0)}


def _speech_commands(root: Path) -> dict[str, set[str]]:
    """Four clips per word (+ an unused word); list files name held-out clips."""
    rng = np.random.default_rng(1)
    held: dict[str, set[str]] = {"valid": set(), "test": set()}
    for word, (f0, f1) in {**WORDS, "other": (500.0, 500.0)}.items():
        (root / word).mkdir(parents=True)
        for i in range(4):
            name = f"{i:08x}_nohash_0.wav"
            x = _chirp(f0 * (1 + 0.05 * i), f1) + 0.01 * rng.standard_normal(12800)
            _write(root / word / name, x)
            if i == 1:
                held["valid"].add(f"{word}/{name}")
            elif i == 2:
                held["test"].add(f"{word}/{name}")
    (root / "validation_list.txt").write_text("\n".join(sorted(held["valid"])) + "\n")
    (root / "testing_list.txt").write_text("\n".join(sorted(held["test"])) + "\n")
    return held


def test_speech_commands_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _speech_commands(tmp_path)
    words = list(WORDS)
    data = speech_commands_data(tmp_path, words)
    # per word: 2 training clips (0 and 3), 1 validation, 1 test; "other" is not used
    assert data.train.inputs.shape == (6, 98, 13)
    assert data.valid.inputs.shape == (3, 98, 13) and data.test.inputs.shape == (3, 98, 13)
    assert data.train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.valid.targets.tolist() == [0, 1, 2] and data.test.targets.tolist() == [0, 1, 2]
    # held-out features are those of the named files
    raw = speech_commands_data(tmp_path, words, normalise=False)
    want = mfcc(read_wav(tmp_path / "down" / f"{2:08x}_nohash_0.wav"))
    assert torch.allclose(raw.test.inputs[1], want)
    mean = data.train.inputs.reshape(-1, 13).mean(0)
    assert torch.allclose(mean, torch.zeros(13), atol=1e-4)
    # the task's data switch
    monkeypatch.setenv("RNNKIT_SPEECH_COMMANDS", str(tmp_path))
    via_env = kws_data(0, words=words)
    assert torch.equal(via_env.test.inputs, data.test.inputs)
    assert via_env.info["source"] == "speech_commands"
    with pytest.raises(FileNotFoundError, match="left"):
        speech_commands_data(tmp_path, ["up", "left"])


NOISE_HZ = {"train": 200.0, "valid": 1000.0, "test": 3000.0}


def _noise_recording(seconds: float) -> np.ndarray:
    """A 'noise' file whose 80/10/10 % parts are tones of different pitch (NOISE_HZ)."""
    n = int(seconds * 16000)
    t = np.arange(n) / 16000.0
    x = np.empty(n)
    cuts = {"train": (0, int(0.8 * n)), "valid": (int(0.8 * n), int(0.9 * n))}
    cuts["test"] = (int(0.9 * n), n)
    for split, (a, b) in cuts.items():
        x[a:b] = 0.5 * np.sin(2 * math.pi * NOISE_HZ[split] * t[a:b])
    return x


def _peak_hz(clip: torch.Tensor) -> float:
    spec = torch.fft.rfft(clip.double()).abs()
    return float(spec.argmax()) * 16000 / clip.shape[0]


def test_silence_clips_stay_in_their_split() -> None:
    noise = [torch.from_numpy(_noise_recording(12.0)).float(), torch.zeros(5000)]  # 2nd: short
    g = torch.Generator().manual_seed(0)
    for split, hz in NOISE_HZ.items():
        clips = silence_clips(noise, split, 20, g)
        assert clips.shape == (20, CLIP_SAMPLES)
        gains = clips.abs().amax(1) / 0.5
        assert float(gains.min()) >= 0.0 and float(gains.max()) < 1.0
        assert float(gains.std()) > 0.1  # gains vary, from near silence to full level
        for c in clips:
            if float(c.abs().max()) > 1e-3:
                assert _peak_hz(c) == pytest.approx(hz, abs=2.0), split
    again = silence_clips(noise, "valid", 20, torch.Generator().manual_seed(0))
    first = silence_clips(noise, "train", 20, torch.Generator().manual_seed(0))
    assert not torch.equal(again, first)
    with pytest.raises(ValueError, match="long enough"):
        silence_clips([torch.zeros(5 * CLIP_SAMPLES)], "test", 1, g)
    with pytest.raises(ValueError, match="split must be"):
        silence_clips(noise, "training", 1, g)


def test_speech_commands_twelve_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = _speech_commands(tmp_path)  # up/down/go + "other": 2 train, 1 valid, 1 test each
    rng = np.random.default_rng(2)
    for i in range(4, 12):  # 8 more "other" clips: more unknowns to choose from
        name = f"{i:08x}_nohash_0.wav"
        _write(
            tmp_path / "other" / name,
            _chirp(500.0 + 40 * i, 700.0) + 0.01 * rng.standard_normal(12800),
        )
    (tmp_path / "yet_another").mkdir()
    _write(tmp_path / "yet_another" / "ffffffff_nohash_0.wav", _chirp(900.0, 100.0))
    (tmp_path / "_background_noise_").mkdir()
    _write(tmp_path / "_background_noise_" / "tones.wav", _noise_recording(12.0))
    words = list(WORDS)
    kw = {"silence_fraction": 0.5, "unknown_fraction": 1.0}
    data = speech_commands_data(
        tmp_path, words, silence_unknown=True, seed=0, normalise=False, **kw
    )
    assert data.info["labels"] == ("up", "down", "go", "_silence_", "_unknown_")
    # train: 6 keyword clips -> ceil(0.5 * 6) = 3 silence, min(6, 11 other clips) = 6 unknown
    assert data.train.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, *[4] * 6]
    # valid / test: 3 keyword clips -> 2 silence, 1 unknown ("other"'s only held-out clip)
    assert data.valid.targets.tolist() == [0, 1, 2, 3, 3, 4]
    assert data.test.targets.tolist() == [0, 1, 2, 3, 3, 4]
    # unknowns are clips of the other words from the same split (speakers stay on their side)
    by_split: dict[str, list[torch.Tensor]] = {"train": [], "valid": [], "test": []}
    for folder in ("other", "yet_another"):
        for wav in sorted((tmp_path / folder).glob("*.wav")):
            rel = f"{folder}/{wav.name}"
            split = "valid" if rel in held["valid"] else "test" if rel in held["test"] else "train"
            by_split[split].append(mfcc(read_wav(wav)))
    for split, feats in by_split.items():
        s = data.split(split)
        for x in s.inputs[s.targets == 4]:
            assert any(torch.equal(x, f) for f in feats), split
        # every split has silence clips (their source: test_silence_clips_stay_in_their_split)
        assert int((s.targets == 3).sum()) > 0
    # seeded: the same seed gives the same data, another seed other draws
    same = speech_commands_data(
        tmp_path, words, silence_unknown=True, seed=0, normalise=False, **kw
    )
    other = speech_commands_data(
        tmp_path, words, silence_unknown=True, seed=1, normalise=False, **kw
    )
    assert torch.equal(same.train.inputs, data.train.inputs)
    assert not torch.equal(other.train.inputs, data.train.inputs)
    assert torch.equal(other.train.targets, data.train.targets)
    # the default fractions (10 %) and the task's switch
    default = kws_data(0, root=str(tmp_path), words=words, silence_unknown=True)
    assert default.train.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    with monkeypatch.context() as m:  # without a folder: the espeak-ng set, which needs espeak-ng
        m.setattr(shutil, "which", lambda name: None)
        m.delenv("RNNKIT_SPEECH_COMMANDS", raising=False)
        with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
            kws_data(0, words=words, silence_unknown=True)
    with pytest.raises(ValueError, match="unknown_fraction"):
        speech_commands_data(tmp_path, words, silence_unknown=True, unknown_fraction=1.5)
    (tmp_path / "_background_noise_" / "tones.wav").unlink()
    with pytest.raises(FileNotFoundError, match="_silence_"):
        speech_commands_data(tmp_path, words, silence_unknown=True)


def test_espeak_missing_names_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"apt-get install espeak-ng.*RNNKIT_SPEECH_COMMANDS"):
        espeak_data(0, words=("yes",), voices=(["en"], ["en-us"], ["en+f3"]))


TINY = {
    "words": ("yes", "no"),
    "voices": (["en", "en+m3"], ["en-us"], ["en+f3"]),
    "speeds": (150,),
    "pitches": (40, 60),
    "snrs_db": (20.0, 10.0),
}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "a"))
    a = espeak_data(0, **TINY)  # type: ignore[arg-type]
    assert list((tmp_path / "a" / "kws").glob("espeak-*.pt"))  # cached
    # per voice: 2 words x 1 speed x 2 pitches x 2 SNRs = 8 clips
    assert a.train.inputs.shape == (16, 98, 13)
    assert a.valid.inputs.shape == (8, 98, 13) and a.test.inputs.shape == (8, 98, 13)
    for s in (a.train, a.valid, a.test):
        assert sorted(set(s.targets.tolist())) == [0, 1]
        assert torch.isfinite(s.inputs).all()
    # deterministic: from the cache and rebuilt from scratch
    b = espeak_data(0, **TINY)  # type: ignore[arg-type]
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "b"))
    c = espeak_data(0, **TINY)  # type: ignore[arg-type]
    for name in ("train", "valid", "test"):
        assert torch.equal(a.split(name).inputs, b.split(name).inputs)
        assert torch.equal(a.split(name).inputs, c.split(name).inputs)
        assert torch.equal(a.split(name).targets, c.split(name).targets)
    assert not torch.equal(espeak_data(1, **TINY).train.inputs, a.train.inputs)  # type: ignore[arg-type]
    # disjoint: voices and examples
    tr, va, te = a.info["voices"]
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    train = set(row_keys(a.train.inputs))
    assert not train & set(row_keys(a.valid.inputs))
    assert not train & set(row_keys(a.test.inputs))
    with pytest.raises(ValueError, match="disjoint"):
        espeak_data(0, words=("yes",), voices=(["en"], ["en"], ["en+f3"]))
    # the task's default model trains on it
    data = TaskData(a.train, a.valid, a.test, a.info)
    cfg = TrainConfig(
        task="kws",
        steps=2,
        batch_size=8,
        eval_every=2,
        out=str(tmp_path / "run"),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=data).run()
    assert result.steps == 2 and 0.0 <= result.test["accuracy"] <= 1.0
    assert get_task("kws").io["input_size"] == 13
    assert isinstance(a.train, Split)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_noise_has_its_spectral_slope(exponent: float) -> None:
    x = coloured_noise(1 << 16, exponent, torch.Generator().manual_seed(0)).double()
    assert x.dtype == torch.float64 and x.shape == (1 << 16,)
    assert float(x.square().mean().sqrt()) == pytest.approx(1.0, rel=1e-5)
    power = torch.fft.rfft(x).abs().square()
    # mean power per octave band [2^j, 2^(j+1)) of frequency bins: power ~ f^-exponent
    octaves = range(5, 14)
    band = torch.tensor([float(power[2**j : 2 ** (j + 1)].mean()) for j in octaves])
    slope = np.polyfit(np.array(list(octaves), dtype=float), np.log2(band.numpy()), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1)
    noise = synthetic_background(3, 0.25, seconds=2.0)
    assert len(noise) == 3 and all(r.shape == (32000,) for r in noise)
    for r in noise:
        assert float(r.square().mean().sqrt()) == pytest.approx(0.25, rel=1e-5)
    with pytest.raises(ValueError, match="level must be positive"):
        synthetic_background(0, 0.0)


TINY12 = {
    "words": ("yes", "no"),
    "unknown_words": ("cat",),
    "voices": (["en", "en+m3"], ["en-us"], ["en+f3"]),
    "speeds": (150,),
    "pitches": (40, 60),
    "snrs_db": (20.0, 10.0),
    "silence_fraction": 0.5,
    "unknown_fraction": 0.5,
}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_twelve_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    data = espeak12_data(0, normalise=False, **TINY12)  # type: ignore[arg-type]
    assert data.info["labels"] == ("yes", "no", "_silence_", "_unknown_")
    # per voice 2 words x 2 pitches x 2 SNRs = 8 keyword clips, 4 of "cat";
    # train (2 voices): 16 keyword clips -> 8 silence, min(8, 8 "cat" clips) = 8 unknown
    assert data.train.targets.tolist() == [*sorted([0] * 8 + [1] * 8), *[2] * 8, *[3] * 8]
    # valid / test (1 voice): 8 keyword clips -> 4 silence, 4 unknown
    for s in (data.valid, data.test):
        assert sorted(s.targets.tolist()) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    # unknowns are the other word spoken by the split's own voices, noised like the keywords
    others = espeak_data(
        0,
        words=("cat",),
        voices=TINY12["voices"],  # type: ignore[arg-type]
        speeds=(150,),
        pitches=(40, 60),
        snrs_db=(20.0, 10.0),
        normalise=False,
    )
    for name in ("train", "valid", "test"):
        s, pool = data.split(name), set(row_keys(others.split(name).inputs))
        assert set(row_keys(s.inputs[s.targets == 3])) <= pool, name
        quiet = set(row_keys(s.inputs[s.targets == 2]))
        assert not quiet & set(row_keys(s.inputs[s.targets != 2])), name
    # the noise recordings' level: median clean-speech RMS of the keywords at the lowest SNR
    voices = ["en", "en+m3", "en-us", "en+f3"]
    clean, _ = build_espeak_clips(("yes", "no"), voices, (150,), (40, 60))
    rms = float(torch.stack([c.square().mean().sqrt() for c in clean]).median())
    want = rms * 10 ** (-10 / 20)
    assert data.info["noise_level"] == pytest.approx(want, rel=1e-5)  # float32 sums
    # deterministic, and the seed changes the draws
    again = espeak12_data(0, normalise=False, **TINY12)  # type: ignore[arg-type]
    other = espeak12_data(1, normalise=False, **TINY12)  # type: ignore[arg-type]
    assert torch.equal(again.train.inputs, data.train.inputs)
    assert not torch.equal(other.train.inputs, data.train.inputs)
    normed = espeak12_data(0, **TINY12)  # type: ignore[arg-type]
    flat = normed.train.inputs.reshape(-1, 13)
    assert torch.allclose(flat.mean(0), torch.zeros(13), atol=1e-4)
    with pytest.raises(ValueError, match="are keywords"):
        espeak12_data(0, **{**TINY12, "unknown_words": ("no",)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="silence_fraction"):
        espeak12_data(0, **{**TINY12, "silence_fraction": -0.1})  # type: ignore[arg-type]
    none = espeak12_data(0, **{**TINY12, "silence_fraction": 0.0, "unknown_fraction": 0.0})  # type: ignore[arg-type]
    assert sorted(set(none.train.targets.tolist())) == [0, 1]
    # the kws12 task's default model trains on it (12 outputs; labels 10, 11 are the extras)
    task = get_task("kws12")
    assert task.io["output_size"] == 12
    cfg = TrainConfig(
        task="kws12",
        steps=2,
        batch_size=8,
        eval_every=2,
        out=str(tmp_path / "run"),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=normed).run()
    assert result.steps == 2 and 0.0 <= result.test["accuracy"] <= 1.0


# --------------------------------------------------------------------------- damaged input
# (issue 14, item 7: the Speech Commands loader and the espeak-ng cache; item 8: leftovers)


def test_speech_commands_accepts_upper_case_suffix(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _speech_commands(lower)
    _speech_commands(upper)
    for wav in sorted((upper / "up").glob("*.wav")):  # as some recorders write them
        wav.rename(wav.with_suffix(".WAV"))
    for name in ("validation_list.txt", "testing_list.txt"):  # the lists name them so
        f = upper / name
        f.write_text(re.sub(r"^(up/.*)\.wav$", r"\1.WAV", f.read_text(), flags=re.M))
    (upper / "up" / "._00000000_nohash_0.wav").write_bytes(b"\0\5\26\7")  # macOS metadata
    want, got = speech_commands_data(lower, list(WORDS)), speech_commands_data(upper, list(WORDS))
    assert got.train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    for name in ("train", "valid", "test"):
        assert torch.equal(got.split(name).inputs, want.split(name).inputs), name
        assert torch.equal(got.split(name).targets, want.split(name).targets), name


def test_speech_commands_refuses_a_missing_class(tmp_path: Path) -> None:
    _speech_commands(tmp_path)
    # an empty keyword folder
    for wav in (tmp_path / "go").iterdir():
        wav.unlink()
    with pytest.raises(ValueError, match=r"keyword 'go'.*holds no \.wav files"):
        speech_commands_data(tmp_path, list(WORDS))
    shutil.rmtree(tmp_path)
    # every clip of a keyword in validation_list.txt: no training clips for it
    _speech_commands(tmp_path)
    names = [f"down/{wav.name}" for wav in sorted((tmp_path / "down").glob("*.wav"))]
    lst = tmp_path / "validation_list.txt"
    lst.write_text(lst.read_text() + "\n".join(names) + "\n")
    with pytest.raises(ValueError, match=r"keyword 'down' has no train or test clips.*4 are named"):
        speech_commands_data(tmp_path, list(WORDS))
    # the 12-class setup: the other words' clips all held out, so no training _unknown_ clips
    shutil.rmtree(tmp_path)
    _speech_commands(tmp_path)
    (tmp_path / "_background_noise_").mkdir()
    _write(tmp_path / "_background_noise_" / "tones.wav", _noise_recording(12.0))
    for i in (0, 3):  # "other"'s training clips
        (tmp_path / "other" / f"{i:08x}_nohash_0.wav").unlink()
    with pytest.raises(ValueError, match=r"_unknown_ class would have no train clips"):
        speech_commands_data(tmp_path, list(WORDS), silence_unknown=True)
    # without the class (fraction 0) there is nothing to refuse
    data = speech_commands_data(tmp_path, list(WORDS), silence_unknown=True, unknown_fraction=0.0)
    assert 4 not in data.train.targets.tolist()


@pytest.mark.parametrize("damage", ["empty", "garbage", "header", "data"])
def test_broken_wav_is_named(tmp_path: Path, damage: str) -> None:
    _speech_commands(tmp_path)
    bad = tmp_path / "go" / f"{3:08x}_nohash_0.wav"
    whole = bad.read_bytes()
    cut = {"empty": b"", "garbage": b"not a wav file" * 10, "header": whole[:30]}
    bad.write_bytes(cut.get(damage, whole[: len(whole) // 2]))
    with pytest.raises(ValueError, match=f"{re.escape(bad.name)}: (not a readable|truncated)"):
        speech_commands_data(tmp_path, list(WORDS))
    _write(tmp_path / "x.wav", np.zeros(0))  # a header and no samples
    with pytest.raises(ValueError, match=r"x\.wav: the WAV file holds no samples"):
        read_wav(tmp_path / "x.wav")


FAKE_ESPEAK = """#!{python}
# stands in for espeak-ng: a deterministic tone per (word, voice, speed, pitch) at 22.05 kHz
import math, os, signal, sys, wave, zlib
a = sys.argv[1:]
out, voice, speed, pitch, word = a[a.index("-w") + 1], a[a.index("-v") + 1], \\
    int(a[a.index("-s") + 1]), int(a[a.index("-p") + 1]), a[-1]
log = os.environ["FAKE_ESPEAK_LOG"]
with open(log, "a") as f:
    f.write(f"{{word}} {{voice}}\\n")
with open(log) as f:
    calls = len(f.readlines())
if os.environ.get("FAKE_ESPEAK_FAIL"):
    sys.stderr.write("fake-espeak: no voice named " + voice + "\\n")
    sys.exit(1)
if calls >= int(os.environ.get("FAKE_ESPEAK_KILL_AT", "1000")):
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the run, this call and its siblings
hz = 200 + zlib.crc32(f"{{word}}{{voice}}".encode()) % 800 + pitch
n = int(22050 * 0.4 * 150 / speed)
pcm = b"".join(
    int(9000 * math.sin(2 * math.pi * hz * i / 22050)).to_bytes(2, "little", signed=True)
    for i in range(n)
)
with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(22050)
    w.writeframes(pcm)
"""

FAKE_SET = {
    "words": ("yes", "no"),
    "voices": (["v1", "v2"], ["v3"], ["v4"]),
    "speeds": (150,),
    "pitches": (40, 60),
    "snrs_db": (20.0,),
}  # 2 words x 4 voices x 2 pitches = 16 espeak-ng calls; 8 training clips


@pytest.fixture
def fake_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake espeak-ng first on PATH, logging its calls; temporary files go to tmp/."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "espeak-ng"
    exe.write_text(FAKE_ESPEAK.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ESPEAK_LOG", str(tmp_path / "calls.log"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "calls.log"


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _leftovers(tmp_path: Path) -> list[str]:
    """Anything in the temporary folder or the cache folder but the cache files themselves."""
    cache = tmp_path / "cache" / "kws"
    found = [str(p) for p in (tmp_path / "tmp").iterdir()]
    if cache.is_dir():
        # the cache files and their (empty) build locks
        found += [str(p) for p in cache.iterdir() if p.suffix not in (".pt", ".lock")]
    return found


def _same(a: TaskData, b: TaskData) -> bool:
    return all(
        torch.equal(a.split(s).inputs, b.split(s).inputs)
        and torch.equal(a.split(s).targets, b.split(s).targets)
        for s in ("train", "valid", "test")
    )


@pytest.mark.parametrize("damage", ["empty", "truncated", "wrong keys", "short meta", "lengths"])
def test_damaged_espeak_cache_is_rebuilt(fake_espeak: Path, tmp_path: Path, damage: str) -> None:
    want = espeak_data(0, **FAKE_SET)  # type: ignore[arg-type]
    assert _calls(fake_espeak) == 16 and want.train.inputs.shape == (8, 98, 13)
    (path,) = (tmp_path / "cache" / "kws").glob("espeak-*.pt")
    good = torch.load(path, weights_only=True)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "wrong keys":
        torch.save({"pcm": good["pcm"], "length": good["lengths"]}, path)
    elif damage == "short meta":  # would drop the last clip's label: one clip fewer
        torch.save({**good, "meta": good["meta"][:-1]}, path)
    else:
        torch.save({**good, "lengths": good["lengths"] - 1}, path)
    with pytest.warns(
        RuntimeWarning, match=f"{re.escape(path.name)}: damaged keyword-spotting cache"
    ):
        got = espeak_data(0, **FAKE_SET)  # type: ignore[arg-type]
    assert _same(got, want)  # rebuilt, deterministically
    assert _calls(fake_espeak) == 32
    again = espeak_data(0, **FAKE_SET)  # type: ignore[arg-type]
    assert _same(again, want) and _calls(fake_espeak) == 32  # the rebuilt cache is used
    assert not _leftovers(tmp_path)


def test_espeak_failure_shows_its_stderr(
    fake_espeak: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ESPEAK_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"exit status 1.*\n.*fake-espeak: no voice named v"):
        espeak_data(0, **FAKE_SET)  # type: ignore[arg-type]
    assert _calls(fake_espeak) < 16  # the calls not yet started were cancelled
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("how", ["under a file", "read-only"])
def test_unwritable_cache_fails_before_synthesis(
    fake_espeak: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "under a file":  # as root permission bits do not stop writes: this does
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "file"))
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only folders")
        (tmp_path / "ro" / "kws").mkdir(parents=True)
        (tmp_path / "ro" / "kws").chmod(0o500)
        monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "ro"))
    with pytest.raises(OSError, match=r"cannot write the keyword-spotting cache in .*RNNKIT_CACHE"):
        espeak_data(0, **FAKE_SET)  # type: ignore[arg-type]
    assert _calls(fake_espeak) == 0


def test_killed_synthesis_leaves_no_temporary_folder(fake_espeak: Path, tmp_path: Path) -> None:
    script = f"from rnnkit.tasks.audio import espeak_data\nespeak_data(0, **{FAKE_SET!r})\n"
    env = {**os.environ, "FAKE_ESPEAK_KILL_AT": "5"}
    # a session of its own: the fake espeak-ng kills the run's whole process group
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, start_new_session=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL
    assert not list((tmp_path / "cache" / "kws").glob("espeak-*.pt"))  # never finished
    stale = list((tmp_path / "cache" / "kws").glob(".tmp-espeak-*"))
    assert len(stale) == 1 and not list((tmp_path / "tmp").iterdir())  # kept in the cache dir
    data = espeak_data(0, **FAKE_SET)  # type: ignore[arg-type]
    assert data.train.inputs.shape == (8, 98, 13)
    assert not _leftovers(tmp_path)  # the dead run's folder is swept


def test_concurrent_first_builds_synthesise_once(fake_espeak: Path, tmp_path: Path) -> None:
    """Two processes needing the same cache at once: one synthesises, the other waits for
    its lock and reads the finished cache (espeak-ng runs 16 times, not 32)."""
    script = (
        "from rnnkit.tasks.audio import espeak_data\n"
        f"d = espeak_data(0, **{FAKE_SET!r})\n"
        "print(float(d.train.inputs.sum()))\n"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0]
    assert outputs[0] == outputs[1]
    assert _calls(fake_espeak) == 16
    assert not _leftovers(tmp_path)


def test_cache_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNNKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rnnkit" / "kws"
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "kws"
    monkeypatch.delenv("RNNKIT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "rnnkit" / "kws"


def _tone_power(x: np.ndarray, rate: int, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    return float(spectrum[np.abs(freqs - hz) < 40].sum() / spectrum.sum())


def test_resampling_does_not_alias(tmp_path: Path) -> None:
    """A 10 kHz tone recorded at 22,050 Hz is above 16 kHz's Nyquist frequency: resampled
    to 16 kHz it must vanish, not fold back to 6 kHz (linear interpolation kept most of it
    there), while a 3 kHz tone passes at its own frequency."""
    t = np.arange(22050) / 22050
    _write(tmp_path / "high.wav", 0.5 * np.sin(2 * math.pi * 10_000 * t), rate=22050)
    _write(tmp_path / "low.wav", 0.5 * np.sin(2 * math.pi * 3_000 * t), rate=22050)
    high = read_wav(tmp_path / "high.wav", length=None).numpy()
    low = read_wav(tmp_path / "low.wav", length=None).numpy()
    assert high.shape == low.shape == (16000,)
    assert float(np.sqrt(np.mean(high[200:-200] ** 2))) < 0.01 * 0.5
    assert _tone_power(low, 16000, 3_000) > 0.99
    assert float(np.sqrt(np.mean(low[200:-200] ** 2))) == pytest.approx(0.5 / math.sqrt(2), 0.02)


def test_loading_the_tasks_leaves_scipy_signal_unimported() -> None:
    """Every ``rnnkit`` command loads the task modules (the CLI through the task registry);
    scipy.signal, slow to import, is loaded only by :func:`resample`."""
    code = (
        "import sys\n"
        "import rnnkit.tasks\n"
        "import rnnkit.tasks.cli\n"
        "from rnnkit.tasks.registry import list_tasks\n"
        "list_tasks()\n"
        "assert 'rnnkit.tasks.audio' in sys.modules, 'the registry did not load audio'\n"
        "print(sorted(m for m in sys.modules if m.startswith('scipy.signal')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
