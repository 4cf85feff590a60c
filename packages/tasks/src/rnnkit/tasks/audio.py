"""Keyword spotting on MFCC features: a small MFCC front end, a WAV reader and two data sets.

* :func:`mfcc`: framing, Hann window, rFFT power spectrum, HTK mel filterbank, log, DCT-II
  (orthonormal), in torch. Defaults: 16 kHz, 25 ms window, 10 ms hop, 40 mel bands, 13
  coefficients, so a 1 s clip gives ``(98, 13)``.
* :func:`read_wav`: 16-bit PCM mono WAV with the standard-library ``wave`` module, resampled to
  16 kHz by a polyphase filter (:func:`resample`) and padded / cropped to 1 s.
* :func:`speech_commands_data`: the Google Speech Commands folder layout
  (``<root>/<word>/<file>.wav``, ``validation_list.txt``, ``testing_list.txt``), with the
  12-class ``_silence_`` (cut from ``_background_noise_``) and ``_unknown_`` (other words)
  classes on request.
* :func:`espeak_data`: a small synthetic keyword set spoken by ``espeak-ng`` (several voices,
  speeds and pitches) with Gaussian noise at a few SNRs, built on first use and cached (see
  :func:`cache_dir`); split by voice, so no voice is shared
  between train, valid and test.
* :func:`espeak12_data`: the 12-class setup on the ``espeak-ng`` set: ``_silence_`` cut from
  synthetic coloured-noise recordings, ``_unknown_`` from other words spoken the same way.
* :func:`kws_data`: the ``kws`` / ``kws12`` tasks' data: the ``espeak-ng`` set, or the real
  data set when ``RNNKIT_SPEECH_COMMANDS`` names a Speech Commands folder.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import math
import os
import pickle
import shlex
import shutil
import socket
import subprocess
import tempfile
import warnings
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path

import filelock
import numpy as np
import torch
from torch import Tensor

from rnnkit.tasks._util import classify_metrics, generator, lstm_config
from rnnkit.tasks.base import Budget, Split, Task, TaskData

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000  # 1 s
KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# voice+variant of espeak-ng; the split is by voice (speaker-disjoint analogue)
TRAIN_VOICES: tuple[str, ...] = (
    "en",
    "en-us",
    "en+f3",
    "en+m3",
    "en-us+f2",
    "en-gb-scotland",
)
VALID_VOICES: tuple[str, ...] = ("en-029", "en-us+m7")
TEST_VOICES: tuple[str, ...] = ("en+f4", "en-gb-x-rp+m5")
SPEEDS: tuple[int, ...] = (130, 170, 210)
PITCHES: tuple[int, ...] = (35, 50, 65)
SNRS_DB: tuple[float, ...] = (20.0, 10.0, 5.0)
# other words for the synthetic ``_unknown_`` class (a handful of Speech Commands V1's
# auxiliary words); spoken with the keywords' voices, speeds and pitches
UNKNOWN_WORDS: tuple[str, ...] = (
    "bed",
    "bird",
    "cat",
    "dog",
    "happy",
    "house",
    "marvin",
    "sheila",
    "tree",
    "wow",
)
SILENCE_LABEL, UNKNOWN_LABEL = "_silence_", "_unknown_"
# spectral exponents of the synthetic background-noise recordings: power ~ 1 / f^exponent
NOISE_EXPONENTS: tuple[float, ...] = (0.0, 1.0, 2.0)  # white, pink, brown
SPEECH_COMMANDS_ENV = "RNNKIT_SPEECH_COMMANDS"
CACHE_ENV = "RNNKIT_CACHE"


# --------------------------------------------------------------------------- MFCC


def hz_to_mel(f: Tensor) -> Tensor:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Triangular filters ``(n_fft // 2 + 1, n_mels)`` (unnormalised, peak 1).

    Centres are equally spaced on the HTK mel scale between 0 Hz and ``sample_rate / 2``; each
    triangle spans its two neighbours' centres and is evaluated at the rFFT bin frequencies.
    """
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=dtype)
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=dtype))
    pts = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=dtype))
    lo, mid, hi = pts[:-2], pts[1:-1], pts[2:]
    f = freqs[:, None]
    up = (f - lo) / (mid - lo)
    down = (hi - f) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0)


def dct_matrix(n_in: int, n_out: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal DCT-II as a ``(n_in, n_out)`` matrix (first ``n_out`` coefficients)."""
    n = torch.arange(n_in, dtype=dtype)[:, None]
    k = torch.arange(n_out, dtype=dtype)[None, :]
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[:, 0] = basis[:, 0] / math.sqrt(2.0)
    return basis


def mfcc(
    signal: Tensor,
    *,
    sample_rate: int = SAMPLE_RATE,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    n_mels: int = 40,
    n_mfcc: int = 13,
    n_fft: int = 512,
    eps: float = 1e-10,
) -> Tensor:
    """MFCCs of ``signal`` ``(..., S)`` float: returns ``(..., T, n_mfcc)`` in its dtype.

    Frames of ``win = sample_rate * win_ms / 1000`` samples (400) every ``hop`` (160), no
    padding, so ``T = 1 + (S - win) // hop`` (98 for 1 s at 16 kHz); each frame times a
    periodic Hann window, zero-padded rFFT of ``n_fft`` points, power ``|X|^2`` ``(..., T,
    n_fft // 2 + 1)``, HTK mel filterbank (:func:`mel_filterbank`) ``(..., T, n_mels)``,
    ``log(max(., eps))``, orthonormal DCT-II, first ``n_mfcc`` coefficients.
    """
    win = round(sample_rate * win_ms / 1000.0)
    hop = round(sample_rate * hop_ms / 1000.0)
    if signal.shape[-1] < win:
        raise ValueError(f"signal has {signal.shape[-1]} samples, fewer than one window ({win})")
    if n_fft < win:
        raise ValueError(f"n_fft ({n_fft}) must be at least the window length ({win})")
    dtype = signal.dtype
    frames = signal.unfold(-1, win, hop)  # (..., T, win)
    window = torch.hann_window(win, periodic=True, dtype=dtype, device=signal.device)
    spec = torch.fft.rfft(frames * window, n=n_fft, dim=-1)
    power = spec.real.square() + spec.imag.square()  # (..., T, n_fft // 2 + 1)
    fb = mel_filterbank(n_mels, n_fft, sample_rate, dtype=dtype).to(signal.device)
    logmel = torch.log(torch.clamp(power @ fb, min=eps))
    return logmel @ dct_matrix(n_mels, n_mfcc, dtype=dtype).to(signal.device)


# --------------------------------------------------------------------------- WAV


def fit_clip(x: Tensor, length: int = CLIP_SAMPLES, offset: int | None = None) -> Tensor:
    """Pad with zeros or crop ``x`` ``(S,)`` to ``length``; centred unless ``offset`` is given.

    ``offset`` is where ``x`` starts in the output (pad) or where the output starts in ``x``
    (crop).
    """
    n = x.shape[0]
    if n == length:
        return x
    if n < length:
        start = (length - n) // 2 if offset is None else offset
        out = torch.zeros(length, dtype=x.dtype)
        out[start : start + n] = x
        return out
    start = (n - length) // 2 if offset is None else offset
    return x[start : start + length]


def resample(x: Tensor, rate_in: int, rate_out: int) -> Tensor:
    """Resample ``x`` ``(S,)`` from ``rate_in`` to ``rate_out`` Hz with a polyphase filter.

    :func:`scipy.signal.resample_poly` upsamples by ``rate_out / g`` and downsamples by
    ``rate_in / g`` (``g`` their greatest common divisor) through one low-pass FIR filter, so
    content above the new Nyquist frequency is removed rather than folded back (linear
    interpolation from espeak-ng's 22,050 Hz to 16 kHz aliased its 8-11 kHz band into the
    speech band). Computed in float64, returned in ``x``'s dtype, ``round(S * rate_out /
    rate_in)`` samples.
    """
    if rate_in == rate_out:
        return x
    # imported here: scipy.signal takes long to import, and every `rnnkit` command loads this
    # module through the task registry
    import scipy.signal

    g = math.gcd(rate_in, rate_out)
    y = scipy.signal.resample_poly(x.double().numpy(), rate_out // g, rate_in // g)
    return torch.from_numpy(np.ascontiguousarray(y)).to(x.dtype)


def read_wav(
    path: str | os.PathLike[str],
    *,
    sample_rate: int = SAMPLE_RATE,
    length: int | None = CLIP_SAMPLES,
) -> Tensor:
    """A 16-bit PCM mono WAV as float32 ``(length,)`` in ``[-1, 1)``.

    Resampled to ``sample_rate`` (:func:`resample`, polyphase) when its rate differs; padded with
    zeros or cropped (centred) to ``length`` samples (``None`` keeps the length). A file that
    is not such a WAV, is cut short of the samples its header announces or holds none raises
    ``ValueError`` naming it.
    """
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise ValueError(
                    f"{path}: expected 16-bit PCM mono, got {8 * w.getsampwidth()}-bit with "
                    f"{w.getnchannels()} channels"
                )
            rate, frames = w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        # the wave module's own messages name neither the file nor what was expected
        why = str(e) or "the file ends inside its header"
        raise ValueError(f"{path}: not a readable 16-bit PCM WAV file ({why})") from e
    if len(raw) != 2 * frames:
        raise ValueError(
            f"{path}: truncated WAV file: its header announces {frames} samples, "
            f"it holds {len(raw) // 2}"
        )
    if frames == 0:
        raise ValueError(f"{path}: the WAV file holds no samples")
    x = torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0)
    x = resample(x, rate, sample_rate)
    return x if length is None else fit_clip(x, length)


def write_wav(path: str | os.PathLike[str], x: Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write ``x`` ``(S,)`` in ``[-1, 1]`` as 16-bit PCM mono (clipped)."""
    pcm = (x.detach().double().clamp(-1.0, 32767 / 32768) * 32768.0).round().short().numpy()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())


# --------------------------------------------------------------------------- data sets


def standardise(data: TaskData) -> TaskData:
    """Scale each feature by the training split's mean and standard deviation."""
    flat = data.train.inputs.reshape(-1, data.train.inputs.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-6)

    def fix(s: Split) -> Split:
        return Split((s.inputs - mean) / std, s.targets)

    return TaskData(fix(data.train), fix(data.valid), fix(data.test), data.info)


def _wav_files(folder: Path) -> list[Path]:
    """The ``.wav`` files in ``folder``, sorted by name; the suffix in any case (``.WAV``).

    Hidden files (``._x.wav`` from macOS copies, for one) are not clips and are left out; a
    missing folder has none.
    """
    if not folder.is_dir():
        return []
    return sorted(
        f
        for f in folder.iterdir()
        if f.suffix.lower() == ".wav" and not f.name.startswith(".") and f.is_file()
    )


def _held_out_lists(base: Path) -> dict[str, set[str]]:
    lists: dict[str, set[str]] = {}
    for name, fname in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        f = base / fname
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: is {base} a Speech Commands folder?")
        lists[name] = {ln.strip() for ln in f.read_text().splitlines() if ln.strip()}
    return lists


def _split_of(rel: str, lists: dict[str, set[str]]) -> str:
    return "valid" if rel in lists["valid"] else "test" if rel in lists["test"] else "train"


def silence_clips(noise: Sequence[Tensor], split: str, count: int, gen: torch.Generator) -> Tensor:
    """``count`` 1 s clips ``(count, CLIP_SAMPLES)`` cut from the background-noise recordings.

    Each recording ``(S,)`` is divided by position: its first 80 % serves training, the next
    10 % validation, the last 10 % test, so no stretch of noise is shared by two splits. A
    clip picks a recording (uniformly among those whose part for ``split`` holds at least 1 s),
    a start (uniform within that part) and a gain (uniform in ``[0, 1)``: from near silence to
    the recording's level), all drawn from ``gen``.
    """
    fractions = {"train": (0.0, 0.8), "valid": (0.8, 0.9), "test": (0.9, 1.0)}
    if split not in fractions:
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    bounds = fractions[split]
    parts = []
    for x in noise:
        lo, hi = int(bounds[0] * x.shape[0]), int(bounds[1] * x.shape[0])
        if hi - lo >= CLIP_SAMPLES:
            parts.append(x[lo:hi])
    if not parts:
        raise ValueError(
            f"no _background_noise_ recording is long enough to cut 1 s {split} clips from "
            f"its {split} part (needs recordings of at least {10 * CLIP_SAMPLES} samples)"
        )
    out = torch.empty(count, CLIP_SAMPLES)
    for i in range(count):
        part = parts[int(torch.randint(len(parts), (1,), generator=gen))]
        start = int(torch.randint(part.shape[0] - CLIP_SAMPLES + 1, (1,), generator=gen))
        gain = float(torch.rand((), generator=gen))
        out[i] = part[start : start + CLIP_SAMPLES] * gain
    return out


def speech_commands_data(
    root: str | os.PathLike[str],
    words: Sequence[str] = KEYWORDS,
    *,
    normalise: bool = True,
    silence_unknown: bool = False,
    seed: int = 0,
    silence_fraction: float = 0.1,
    unknown_fraction: float = 0.1,
) -> TaskData:
    """MFCCs of the Speech Commands clips of ``words`` under ``root``, label = index in ``words``.

    Layout: ``<root>/<word>/<file>.wav``; ``validation_list.txt`` and ``testing_list.txt``
    (paths ``<word>/<file>.wav`` relative to ``root``) name the held-out clips, every other
    clip is training. Inputs ``(N, 98, 13)`` float32 (standardised by the training
    statistics when ``normalise``), targets ``(N,)`` int64.

    Without ``silence_unknown`` only the clips of ``words`` are used (labels
    ``0..len(words)-1``). With it, the standard 12-class setup adds two classes, per split:

    * ``_silence_`` (label ``len(words)``): ``ceil(silence_fraction * n)`` clips, ``n`` = the
      split's keyword clips, cut from ``_background_noise_/*.wav`` by :func:`silence_clips`
      (each recording split 80/10/10 % by position).
    * ``_unknown_`` (label ``len(words) + 1``): ``ceil(unknown_fraction * n)`` clips drawn
      without replacement from the split's clips of every other word folder (names not
      starting with ``_``), all of them if there are fewer; the list files decide their split
      as for the keywords, so speakers stay on their side.

    Both draws are seeded by ``seed``. ``info["labels"]`` names every label.

    Clips are a folder's ``.wav`` files, the suffix in any case (``.WAV`` too), hidden files
    (``._x.wav``) left out. A keyword whose folder holds no clips, or none for one of the
    three splits (every clip named in ``validation_list.txt``, say), raises ``ValueError``
    naming it, before any clip is read; so does the ``_unknown_`` class with no clips for a
    split (when ``unknown_fraction > 0``). A broken WAV file raises ``ValueError`` naming the
    file (:func:`read_wav`).
    """
    base = Path(root)
    lists = _held_out_lists(base)
    groups: dict[str, tuple[list[Tensor], list[int]]] = {
        s: ([], []) for s in ("train", "valid", "test")
    }
    by_word: list[list[tuple[Path, str]]] = []
    for word in words:  # every folder is checked before the first (slow) read
        folder = base / word
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder for keyword {word!r} under {base}")
        clips = [(wav, _split_of(f"{word}/{wav.name}", lists)) for wav in _wav_files(folder)]
        if not clips:
            raise ValueError(f"keyword {word!r}: its folder {folder} holds no .wav files")
        count = {s: sum(split == s for _, split in clips) for s in groups}
        missing = [s for s in groups if count[s] == 0]
        if missing:
            raise ValueError(
                f"keyword {word!r} has no {' or '.join(missing)} clips: of the {len(clips)} "
                f"in {folder}, {count['valid']} are named in validation_list.txt, "
                f"{count['test']} in testing_list.txt and {count['train']} in neither "
                "(training); every class needs clips in every split"
            )
        by_word.append(clips)
    for label, clips in enumerate(by_word):
        for wav, split in clips:
            groups[split][0].append(read_wav(wav))
            groups[split][1].append(label)
    labels: tuple[str, ...] = tuple(words)
    if silence_unknown:
        _add_silence_unknown(base, words, lists, groups, seed, silence_fraction, unknown_fraction)
        labels = (*labels, SILENCE_LABEL, UNKNOWN_LABEL)
    splits = {}
    for name, (xs, ys) in groups.items():
        if not xs:
            raise ValueError(f"no {name} clips for {list(words)} under {base}")
        splits[name] = Split(mfcc(torch.stack(xs)), torch.tensor(ys, dtype=torch.long))
    data = TaskData(
        splits["train"],
        splits["valid"],
        splits["test"],
        {"source": "speech_commands", "root": str(base), "words": tuple(words), "labels": labels},
    )
    return standardise(data) if normalise else data


def _add_silence_unknown(
    base: Path,
    words: Sequence[str],
    lists: dict[str, set[str]],
    groups: dict[str, tuple[list[Tensor], list[int]]],
    seed: int,
    silence_fraction: float,
    unknown_fraction: float,
) -> None:
    """Append the ``_silence_`` and ``_unknown_`` clips of each split to ``groups``."""
    for name, frac in (
        ("silence_fraction", silence_fraction),
        ("unknown_fraction", unknown_fraction),
    ):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {frac}")
    noise_dir = base / "_background_noise_"
    noise = [read_wav(f, length=None) for f in _wav_files(noise_dir)]
    if not noise:
        raise FileNotFoundError(f"no {noise_dir}/*.wav recordings for the _silence_ class")
    others = sorted(
        d.name
        for d in base.iterdir()
        if d.is_dir() and d.name not in words and d.name[0] not in "_."
    )
    candidates: dict[str, list[Path]] = {s: [] for s in groups}
    for word in others:
        for wav in _wav_files(base / word):
            candidates[_split_of(f"{word}/{wav.name}", lists)].append(wav)
    if not any(candidates.values()):
        raise FileNotFoundError(f"no clips of words other than {list(words)} under {base}")
    empty = [s for s in groups if not candidates[s]]
    if empty and unknown_fraction > 0.0:
        raise ValueError(
            f"the {UNKNOWN_LABEL} class would have no {' or '.join(empty)} clips: no clip of "
            f"the other word folders under {base} ({', '.join(others)}) falls in that split"
        )
    silence, unknown = len(words), len(words) + 1
    gen = generator(seed, 43)
    for split, (xs, ys) in groups.items():
        n = len(ys)
        for clip in silence_clips(noise, split, math.ceil(silence_fraction * n), gen):
            xs.append(clip)
            ys.append(silence)
        pool = candidates[split]
        k = min(math.ceil(unknown_fraction * n), len(pool))
        for i in sorted(torch.randperm(len(pool), generator=gen)[:k].tolist()):
            xs.append(read_wav(pool[i]))
            ys.append(unknown)


def cache_dir() -> Path:
    """``$RNNKIT_CACHE/kws`` if set, else ``$XDG_CACHE_HOME/rnnkit/kws`` (XDG's default:
    ``~/.cache/rnnkit/kws``), as the native libraries' cache does."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / "kws"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rnnkit" / "kws"


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "the synthetic keyword set needs espeak-ng (Debian: apt-get install espeak-ng); "
            f"or set {SPEECH_COMMANDS_ENV}=<folder> to use a Google Speech Commands folder"
        )
    return exe


def _speak(exe: str, word: str, voice: str, speed: int, pitch: int, tmp: Path) -> Tensor:
    out = tmp / f"{word}_{voice}_{speed}_{pitch}.wav".replace("+", "_")
    cmd = [exe, "-w", str(out), "-v", voice, "-s", str(speed), "-p", str(pitch), word]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"espeak-ng took over 60 s: {shlex.join(cmd)}") from e
    if done.returncode != 0 or not out.is_file():
        stderr = done.stderr.decode(errors="replace").strip() or "(nothing on stderr)"
        raise RuntimeError(
            f"espeak-ng failed (exit status {done.returncode}) speaking {word!r} with voice "
            f"{voice!r}: {shlex.join(cmd)}\n{stderr}"
        )
    x = read_wav(out, length=None)
    out.unlink()
    return x


def _grid(
    words: Sequence[str], voices: Sequence[str], speeds: Sequence[int], pitches: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """``(word index, voice index, speed, pitch)`` of every clip, in synthesis (cache) order."""
    return [
        (w, v, s, p)
        for w in range(len(words))
        for v in range(len(voices))
        for s in speeds
        for p in pitches
    ]


SCRATCH_PREFIX = ".tmp-espeak-"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there: assume alive, sweep nothing
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _sweep_scratch(cache: Path) -> None:
    """Remove the scratch folders of dead runs on this host from ``cache``.

    A run killed while synthesising (``SIGKILL``, power loss) cannot clean up after itself;
    its folder names the host and process, so the next run removes it once that process is
    gone. Folders of live processes, and of other hosts sharing the cache, are left alone.
    """
    host = socket.gethostname()
    for d in cache.glob(f"{SCRATCH_PREFIX}*"):
        parts = d.name[len(SCRATCH_PREFIX) :].rsplit("-", 2)
        ours = len(parts) == 3 and parts[0] == host and parts[1].isdigit()
        if ours and not _pid_alive(int(parts[1])):
            # two runs may sweep the same dead folder at once: the loser's errors are moot
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def _scratch(cache: Path) -> Iterator[Path]:
    """A fresh folder inside ``cache`` for the WAV files and the cache file being written,
    removed on exit; makes ``cache`` and sweeps dead runs' folders first (:func:`_sweep_scratch`).

    Writing inside the cache folder puts anything a killed run leaves where the next run
    finds it, and proves the folder writable before any synthesis starts.
    """
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _sweep_scratch(cache)
        prefix = f"{SCRATCH_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=cache))
    except OSError as e:
        raise OSError(
            f"cannot write the keyword-spotting cache in {cache} ({e}); set {CACHE_ENV} to a "
            "writable folder"
        ) from e
    try:
        yield work
    finally:
        shutil.rmtree(work)


def build_espeak_clips(
    words: Sequence[str],
    voices: Sequence[str],
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
    *,
    workers: int = 4,
    workdir: Path | None = None,
) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """Speak every ``(word, voice, speed, pitch)``; clean 16 kHz clips of their own length.

    Returns the clips and ``(word index, voice index)`` per clip, in grid order. The WAV
    files go to ``workdir``, by default a scratch folder inside :func:`cache_dir` removed
    afterwards. The first failing ``espeak-ng`` call raises ``RuntimeError`` with its stderr
    and cancels the calls not yet started.
    """
    exe = _espeak()
    grid = _grid(words, voices, speeds, pitches)
    with contextlib.ExitStack() as stack:
        work = workdir if workdir is not None else stack.enter_context(_scratch(cache_dir()))
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            futures = [
                ex.submit(_speak, exe, words[w], voices[v], s, p, work) for w, v, s, p in grid
            ]
            try:
                clips = [f.result() for f in futures]
            except BaseException:
                # without this the executor would run every remaining call before re-raising
                ex.shutdown(wait=True, cancel_futures=True)
                raise
    return clips, [(w, v) for w, v, _, _ in grid]


CACHE_KEYS = ("pcm", "lengths", "meta")


def _cache_fault(blob: object, meta: Tensor) -> str | None:
    """Why ``blob`` is not the cache of the clips ``meta`` ``(N, 2)`` lists, or ``None``."""
    if not isinstance(blob, dict):
        return f"it holds a {type(blob).__name__}, not a dict"
    if sorted(blob) != sorted(CACHE_KEYS):
        return f"its keys are {sorted(map(str, blob))}, not {sorted(CACHE_KEYS)}"
    pcm, lengths, got = (blob[k] for k in CACHE_KEYS)
    if not all(isinstance(t, Tensor) for t in (pcm, lengths, got)):
        return "an entry is not a tensor"
    if pcm.dtype != torch.int16 or pcm.dim() != 1:
        return f"pcm is {pcm.dtype} {tuple(pcm.shape)}, not int16 (S,)"
    n = meta.shape[0]
    if lengths.dtype != torch.long or tuple(lengths.shape) != (n,):
        return f"lengths is {lengths.dtype} {tuple(lengths.shape)}, not int64 ({n},)"
    if got.dtype != torch.long or got.shape != meta.shape or not torch.equal(got, meta):
        return f"meta {tuple(got.shape)} does not list the {n} clips in synthesis order"
    if n and int(lengths.min()) <= 0:
        return "a clip length is not positive"
    if int(lengths.sum()) != pcm.shape[0]:
        return f"the clip lengths add up to {int(lengths.sum())} samples, pcm holds {pcm.shape[0]}"
    return None


def _load_cache(path: Path, meta: Tensor) -> tuple[dict[str, Tensor] | None, str]:
    """The valid cache at ``path``, or ``None`` and why it is not valid."""
    try:
        blob = torch.load(path, weights_only=True)
    # what torch.load raises for an empty, cut or overwritten file (the zip reader's errors
    # are RuntimeErrors); anything else, an unreadable file say, is not a damaged cache
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        return None, f"torch.load fails: {type(e).__name__} {first}".strip()
    fault = _cache_fault(blob, meta)
    return (None, fault) if fault else (blob, "")


#: How long a run waits for another process building the same keyword-spotting cache.
BUILD_WAIT_S = 1800.0


def _cached_clips(
    words: Sequence[str], voices: Sequence[str], speeds: Sequence[int], pitches: Sequence[int]
) -> dict[str, Tensor]:
    # "poly" names the resampler: caches of the linearly resampled clips are not reused
    key = repr((tuple(words), tuple(voices), tuple(speeds), tuple(pitches), SAMPLE_RATE, "poly"))
    cache = cache_dir()
    path = cache / f"espeak-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    grid = _grid(words, voices, speeds, pitches)
    meta = torch.tensor([(w, v) for w, v, _, _ in grid], dtype=torch.long).reshape(-1, 2)
    if path.exists():
        loaded, fault = _load_cache(path, meta)
        if loaded is not None:
            return loaded
    _espeak()  # a missing espeak-ng, then an unwritable cache: both before any synthesis
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(path.with_suffix(".lock"), timeout=BUILD_WAIT_S)
        lock.acquire()
    except filelock.Timeout as e:
        raise TimeoutError(
            f"{path}: another process has been building this keyword-spotting cache for over "
            f"{BUILD_WAIT_S:.0f} s (lock {lock.lock_file}); remove the lock if no build runs"
        ) from e
    except OSError as e:
        raise OSError(
            f"cannot write the keyword-spotting cache in {cache} ({e}); set {CACHE_ENV} to a "
            "writable folder"
        ) from e
    try:
        # concurrent first uses: the process that waited finds the finished cache here
        if path.exists():
            loaded, fault = _load_cache(path, meta)
            if loaded is not None:
                return loaded
            warnings.warn(
                f"{path}: damaged keyword-spotting cache ({fault}); synthesising it again",
                RuntimeWarning,
                stacklevel=3,
            )
        return _build_cache(path, words, voices, speeds, pitches, meta)
    finally:
        lock.release()


def _build_cache(
    path: Path,
    words: Sequence[str],
    voices: Sequence[str],
    speeds: Sequence[int],
    pitches: Sequence[int],
    meta: Tensor,
) -> dict[str, Tensor]:
    """Synthesise the clips of the grid and save them to ``path`` (atomically)."""
    with _scratch(path.parent) as work:
        clips, _ = build_espeak_clips(words, voices, speeds, pitches, workdir=work)
        lengths = torch.tensor([c.shape[0] for c in clips], dtype=torch.long)
        pcm = torch.cat(clips).clamp(-1.0, 32767 / 32768).mul(32768.0).round().short()
        blob = {"pcm": pcm, "lengths": lengths, "meta": meta}
        # saved inside the scratch folder, then renamed: atomic on one file system, so
        # readers never see a partial file, and a kill mid-save leaves only the scratch
        # folder, which the next run sweeps
        part = work / path.name
        torch.save(blob, part)
        os.replace(part, path)
    return blob


def espeak_data(
    seed: int,
    *,
    words: Sequence[str] = KEYWORDS,
    voices: tuple[Sequence[str], Sequence[str], Sequence[str]] = (
        TRAIN_VOICES,
        VALID_VOICES,
        TEST_VOICES,
    ),
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
    snrs_db: Sequence[float] = SNRS_DB,
    normalise: bool = True,
) -> TaskData:
    """Keywords spoken by ``espeak-ng``, as MFCCs ``(N, 98, 13)``; targets index ``words``.

    Every ``(word, voice, speed, pitch)`` is spoken once (cached, see :func:`cache_dir`), then
    placed at a random offset in a 1 s clip (cropped centred if longer) and given white
    Gaussian noise at each SNR of ``snrs_db`` (relative to the clip's speech power); offsets
    and noise are drawn from ``seed``. ``voices`` = (train, valid, test) voice lists, disjoint.
    Without ``espeak-ng`` raises ``RuntimeError`` naming the Debian package.
    """
    tr, va, te = (list(v) for v in voices)
    all_voices = tr + va + te
    if len(set(all_voices)) != len(all_voices):
        raise ValueError("the train, valid and test voices must be disjoint")
    blob = _cached_clips(words, all_voices, speeds, pitches)
    clips = torch.split(blob["pcm"].float() / 32768.0, blob["lengths"].tolist())
    meta = blob["meta"]
    gen = generator(seed, 41)
    xs: list[Tensor] = []
    for clip in clips:
        spare = CLIP_SAMPLES - clip.shape[0]
        power = clip.square().mean().clamp(min=1e-12)
        for snr in snrs_db:
            off = int(torch.randint(0, spare + 1, (1,), generator=gen)) if spare > 0 else None
            x = fit_clip(clip, CLIP_SAMPLES, off)
            sigma = torch.sqrt(power / 10.0 ** (snr / 10.0))
            xs.append(x + sigma * torch.randn(CLIP_SAMPLES, generator=gen))
    feats = mfcc(torch.stack(xs))
    k = len(snrs_db)
    labels = meta[:, 0].repeat_interleave(k)
    voice = meta[:, 1].repeat_interleave(k)
    bounds = (0, len(tr), len(tr) + len(va), len(all_voices))

    def part(i: int) -> Split:
        idx = ((voice >= bounds[i]) & (voice < bounds[i + 1])).nonzero().squeeze(1)
        return Split(feats[idx], labels[idx])

    data = TaskData(
        part(0),
        part(1),
        part(2),
        {"source": "espeak-ng", "words": tuple(words), "voices": (tr, va, te)},
    )
    return standardise(data) if normalise else data


def coloured_noise(samples: int, exponent: float, gen: torch.Generator) -> Tensor:
    """Gaussian noise ``(samples,)`` float32 with power spectrum ``~ 1 / f^exponent``, unit RMS.

    ``exponent`` 0 is white, 1 pink, 2 brown noise: white Gaussian noise is shaped in the
    frequency domain by ``f^(-exponent / 2)`` (the DC bin is set to zero) and scaled to an RMS
    of 1.
    """
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    white = torch.randn(samples, generator=gen, dtype=torch.float64)
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.shape[0], dtype=torch.float64)
    spec = spec * f.clamp(min=1.0) ** (-exponent / 2.0)
    spec[0] = 0.0
    x = torch.fft.irfft(spec, n=samples)
    out: Tensor = (x / x.square().mean().sqrt()).float()
    return out


def synthetic_background(
    seed: int,
    level: float,
    *,
    seconds: float = 60.0,
    exponents: Sequence[float] = NOISE_EXPONENTS,
) -> list[Tensor]:
    """Stand-ins for Speech Commands' ``_background_noise_`` recordings: one recording
    ``(seconds * 16000,)`` of coloured noise (:func:`coloured_noise`) per exponent, at RMS
    ``level``, drawn from ``seed``. :func:`silence_clips` cuts ``_silence_`` clips from them."""
    if level <= 0.0:
        raise ValueError(f"level must be positive, got {level}")
    gen = generator(seed, 44)
    n = round(seconds * SAMPLE_RATE)
    return [level * coloured_noise(n, e, gen) for e in exponents]


def _speech_rms(
    words: Sequence[str], voices: Sequence[str], speeds: Sequence[int], pitches: Sequence[int]
) -> float:
    """Median RMS of the clean spoken clips (cached; each clip is only as long as the word)."""
    blob = _cached_clips(words, voices, speeds, pitches)
    clips = torch.split(blob["pcm"].float() / 32768.0, blob["lengths"].tolist())
    return float(torch.stack([c.square().mean().sqrt() for c in clips]).median())


def espeak12_data(
    seed: int,
    *,
    words: Sequence[str] = KEYWORDS,
    unknown_words: Sequence[str] = UNKNOWN_WORDS,
    voices: tuple[Sequence[str], Sequence[str], Sequence[str]] = (
        TRAIN_VOICES,
        VALID_VOICES,
        TEST_VOICES,
    ),
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
    snrs_db: Sequence[float] = SNRS_DB,
    silence_fraction: float = 0.1,
    unknown_fraction: float = 0.1,
    normalise: bool = True,
) -> TaskData:
    """The 12-class setup on the ``espeak-ng`` set: ``words`` + ``_silence_`` + ``_unknown_``.

    Labels ``0..len(words)-1`` are the keywords of :func:`espeak_data`, then ``_silence_`` and
    ``_unknown_`` (``info["labels"]``). Per split, with ``n`` its keyword clips:

    * ``_silence_``: ``ceil(silence_fraction * n)`` clips cut by :func:`silence_clips` (gain
      ``U(0, 1)``, each recording split 80/10/10 % by position) from white, pink and brown
      noise recordings (:func:`synthetic_background`) whose RMS is the noise level of the
      noisiest keyword clips (median clean-speech RMS at the lowest SNR of ``snrs_db``): a
      silence clip is a keyword clip's background without the word.
    * ``_unknown_``: ``ceil(unknown_fraction * n)`` clips drawn without replacement from
      ``unknown_words`` spoken and noised exactly like the keywords by the split's own voices
      (so voices stay on their side), all of them if there are fewer.

    Inputs ``(N, 98, 13)`` (standardised by the training statistics when ``normalise``),
    targets ``(N,)`` int64; every draw comes from ``seed``.
    """
    for name, frac in (
        ("silence_fraction", silence_fraction),
        ("unknown_fraction", unknown_fraction),
    ):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {frac}")
    if set(words) & set(unknown_words):
        raise ValueError(f"unknown_words {sorted(set(words) & set(unknown_words))} are keywords")
    if not snrs_db:
        raise ValueError("snrs_db must name at least one SNR")
    keywords, others = (
        espeak_data(
            seed,
            words=w,
            voices=voices,
            speeds=speeds,
            pitches=pitches,
            snrs_db=snrs_db,
            normalise=False,
        )
        for w in (words, unknown_words)
    )
    all_voices = [v for vs in voices for v in vs]
    level = _speech_rms(words, all_voices, speeds, pitches) * 10.0 ** (-min(snrs_db) / 20.0)
    noise = synthetic_background(seed, level)
    silence, unknown = len(words), len(words) + 1
    gen = generator(seed, 45)
    parts = []
    for name in ("train", "valid", "test"):
        s, pool = keywords.split(name), others.split(name)
        n = len(s)
        n_quiet = math.ceil(silence_fraction * n)
        # (an empty batch has no FFT: zero silence clips are an empty slice of the features)
        quiet = mfcc(silence_clips(noise, name, n_quiet, gen)) if n_quiet else s.inputs[:0]
        k = min(math.ceil(unknown_fraction * n), len(pool))
        pick = torch.randperm(len(pool), generator=gen)[:k].sort().values
        parts.append(
            Split(
                torch.cat((s.inputs, quiet, pool.inputs[pick])),
                torch.cat(
                    (
                        s.targets,
                        torch.full((quiet.shape[0],), silence, dtype=torch.long),
                        torch.full((k,), unknown, dtype=torch.long),
                    )
                ),
            )
        )
    info = {
        "source": "espeak-ng",
        "words": tuple(words),
        "unknown_words": tuple(unknown_words),
        "voices": keywords.info["voices"],
        "labels": (*words, SILENCE_LABEL, UNKNOWN_LABEL),
        "noise_level": level,
    }
    data = TaskData(parts[0], parts[1], parts[2], info)
    return standardise(data) if normalise else data


def kws_data(
    seed: int,
    *,
    root: str | None = None,
    words: Sequence[str] = KEYWORDS,
    silence_unknown: bool = False,
) -> TaskData:
    """The ``kws`` and ``kws12`` tasks' data: Speech Commands under ``root`` (default
    ``$RNNKIT_SPEECH_COMMANDS``) if given, else the ``espeak-ng`` set (:func:`espeak_data`).

    ``silence_unknown`` adds the ``_silence_`` and ``_unknown_`` classes (the 12-class setup):
    from the folder's ``_background_noise_`` and other words (:func:`speech_commands_data`),
    or, synthesised, from coloured noise and other spoken words (:func:`espeak12_data`).
    The real data set's split is fixed by its list files; ``seed`` changes the synthetic set's
    offsets and noise and the ``_silence_`` / ``_unknown_`` draws.
    """
    root = root or os.environ.get(SPEECH_COMMANDS_ENV) or None
    if root:
        return speech_commands_data(root, words, silence_unknown=silence_unknown, seed=seed)
    if silence_unknown:
        return espeak12_data(seed, words=words)
    return espeak_data(seed, words=words)


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="kws",
        description="keyword spotting: 10 words, 13 MFCCs x 98 frames (espeak-ng or real)",
        kind="classify",
        make_data=kws_data,
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 13, "output_size": len(KEYWORDS)},
        model_config=lstm_config(64, pooling="mean"),
        budget=Budget(steps=400, batch_size=64, lr=5e-3, eval_every=50),
        target=0.85,
        reference=(
            "Speech Commands (real data): Hello Edge LSTM 92.9 % (V1, 12 classes); "
            "not comparable to the espeak-ng set"
        ),
        details=(
            "Default: yes/no/up/down/left/right/on/off/stop/go spoken by espeak-ng (10 "
            "voices x 3 speeds x 3 pitches, noise at 20/10/5 dB SNR; built on first use, "
            "cached under $RNNKIT_CACHE or ~/.cache/rnnkit/kws), split by voice 6/2/2 "
            "(1,620 / 540 / 540 clips). RNNKIT_SPEECH_COMMANDS=<folder> switches to a "
            "Google Speech Commands folder (same 10 words, list-file splits, no "
            "silence/unknown classes). Features standardised by training statistics; the "
            "LSTM's outputs are averaged over time (pooling=mean)."
        ),
    ),
    Task(
        name="kws12",
        description="keyword spotting, 12 classes: 10 words + _silence_ + _unknown_",
        kind="classify",
        make_data=functools.partial(kws_data, silence_unknown=True),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 13, "output_size": len(KEYWORDS) + 2},
        model_config=lstm_config(64, pooling="mean"),
        budget=Budget(steps=400, batch_size=64, lr=5e-3, eval_every=50),
        target=0.8,
        reference=(
            "Speech Commands V1, 12 classes (real data): Hello Edge LSTM 92.9 %; "
            "not comparable to the espeak-ng set"
        ),
        details=(
            "kws's 10 words (espeak-ng set, split by voice) plus, per split, 10 % "
            "_silence_ clips (1 s of white, pink or brown noise at a random gain up to "
            "the noisiest keyword clips' noise level) and 10 % _unknown_ clips (bed, bird, "
            "cat, dog, happy, house, marvin, sheila, tree, wow, spoken and noised like the "
            "keywords by the split's voices): 1,944 / 648 / 648 clips. "
            "RNNKIT_SPEECH_COMMANDS=<folder>: the real 12-class setup (_background_noise_ "
            "and the other word folders, see audio.speech_commands_data)."
        ),
    ),
)
