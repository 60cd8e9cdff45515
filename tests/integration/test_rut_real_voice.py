"""The blank-token rut (vllm-project/vllm#47614) over REAL voices, with a LiveKit VAD
(``vad=silero.VAD.load()``) and with the default endpointer.

The emulator has no ground truth for a real voice, so every step over it is an empty delta:
from the plugin's side that is exactly the rut. Speech comes from espeak-ng, coughs, door
slams and noise from sox, all made at run time. Long speech must be taken for the rut once,
continued on a fresh socket, counted, reported as an event and, as the fresh socket ruts too,
reported persistent once per episode; silence, noise, coughs, slams and short replies must
never be.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soxr
from livekit import rtc
from livekit.agents import stt
from livekit.plugins import silero

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.stream_core import BlankRut
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator
from livekit_plugins_voxtral_vllm.testing.engine import Generation

from .helpers import Run, collect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _endpointing_audio as A  # noqa: E402

F64 = npt.NDArray[np.float64]
RATE = 16000
T = stt.SpeechEventType
LOGGER = "livekit.plugins.voxtral_vllm"

pytestmark = pytest.mark.skipif(
    (shutil.which("espeak-ng") is None or shutil.which("sox") is None) and not os.environ.get("CI"),
    reason="espeak-ng and sox are not installed (.ci/run installs them)",
)

# (voice, words per minute, text): sentences of 2-4 s
SENTENCES = (
    ("en-us", 175, "Can everyone see my screen, or should I share it again?"),
    ("en-gb", 160, "The quarterly numbers look better than we expected this time."),
    ("en-us+f3", 190, "Let's move the release to Thursday, after the security review."),
    ("en-gb+m3", 150, "I think the problem is somewhere in the network configuration."),
    ("en-us+m7", 200, "Okay, so the next item on the agenda is hiring for the new team."),
    ("en-us+f2", 185, "Could you repeat the last part? You cut out for a second there."),
)
REPLIES = ("Yes.", "Okay.", "Sure.", "Right.", "No.", "Thanks.", "Hmm.", "Agreed.")


# -- audio ------------------------------------------------------------------------------------


def _peak(x: F64, peak: float) -> F64:
    return x * (peak / (np.abs(x).max() + 1e-12))


@lru_cache(maxsize=64)
def espeak(voice: str, wpm: int, text: str) -> F64:
    x = A._espeak(voice, wpm, text)
    nz = np.flatnonzero(np.abs(x) > 1e-3)  # espeak pads with silence: the script places it
    return _peak(x[nz[0] : nz[-1] + 1], 0.3)


@lru_cache(maxsize=16)
def sox(*effects: str, seconds: float) -> F64:
    """A sound from sox's generators (-R: the same every run)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "n.wav"
        subprocess.run(
            ["sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(out)]
            + ["synth", str(seconds), *effects],
            check=True,
            capture_output=True,
        )
        return A._read_wav(out)


def door_slam() -> F64:
    thud = sox("brownnoise", "lowpass", "600", "fade", "q", "0.003", "0.5", "0.48", seconds=0.5)
    return _peak(thud, 0.6)


def cough() -> F64:
    bark = sox(
        "pinknoise", "bandpass", "900", "1.2q", "tremolo", "9", "60",
        "fade", "t", "0.015", "0.3", "0.2", seconds=0.3,
    )  # fmt: skip
    return _peak(bark, 0.4)


def coughing_fit(n: int) -> F64:
    parts: list[F64] = []
    for _ in range(n):
        parts += [cough(), np.zeros(int(0.2 * RATE))]
    return np.concatenate(parts)


def compose(parts: list[F64 | float], noise_dbfs: float = -60.0, seed: int = 0) -> F64:
    """Sounds and silences (seconds) in order, over a faint noise floor."""
    x = np.concatenate([np.zeros(int(p * RATE)) if isinstance(p, float) else p for p in parts])
    rng = np.random.default_rng(seed)
    return x + rng.normal(0.0, 10 ** (noise_dbfs / 20), x.size)


def speech(pause_s: float, rounds: int) -> tuple[F64, float]:
    """The sentences, ``rounds`` times, ``pause_s`` apart; and the seconds of voice in it."""
    clips = [espeak(*s) for s in SENTENCES]
    parts: list[F64 | float] = [1.0]
    for _ in range(rounds):
        for c in clips:
            parts += [c, pause_s]
    parts.append(1.5)
    return compose(parts), sum(c.size for c in clips) * rounds / RATE


def frames(x16: F64) -> Iterator[rtc.AudioFrame]:
    """48 kHz 10 ms frames, as a WebRTC track delivers them."""
    pcm = A.to_pcm(soxr.resample(x16, RATE, 48000))
    for i in range(0, pcm.size - 479, 480):
        yield rtc.AudioFrame(pcm[i : i + 480].tobytes(), 48000, 1, 480)


# -- running the STT --------------------------------------------------------------------------

Endpointing = Callable[[], dict[str, object]]
ENDPOINTING: dict[str, Endpointing] = {
    "livekit_silero_vad": lambda: {"vad": silero.VAD.load()},
    "default_endpointer": lambda: {"endpointer": "silero"},
}


async def transcribe(
    x16: F64, endpointing: str, *, realtime: bool = False, burst: bool = False, **kwargs: object
) -> tuple[Run, list[BlankRut], list[Generation]]:
    """Run ``x16`` through a real STT stream against the emulator (fast unless ``realtime``):
    the events, the ``blank_rut`` events, and the generations the emulator ran."""
    if not realtime:
        # faster than real time on a shared machine, vLLM's output can look seconds behind
        # the audio; catching up would drop audio and split generations, which is not what
        # these tests are about
        kwargs.setdefault("lag_policy", "wait")
    async with VLLMRealtimeEmulator(fast=not realtime) as emu:
        engine = STT(base_url=emu.url, **ENDPOINTING[endpointing](), **kwargs)  # type: ignore[arg-type]
        seen: list[BlankRut] = []
        engine.on("blank_rut", seen.append)
        stream = engine.stream()
        run = Run(stream=stream)
        reader = asyncio.create_task(collect(stream, run))
        try:
            for i, frame in enumerate(frames(x16)):
                stream.push_frame(frame)
                if realtime:
                    await asyncio.sleep(0.01)
                elif i % 10 == 9 and not burst:
                    # about 20x real time: a LiveKit VAD judges in an executor and must keep
                    # up within the 20 s audio history (live frames come in real time)
                    await asyncio.sleep(0.005)
            stream.end_input()
            await asyncio.wait_for(reader, 60.0)
        finally:
            reader.cancel()
            await stream.aclose()
            await engine.aclose()
        generations = [g for c in emu.connections for g in c.generations]
    return run, seen, generations


def rut_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "47614" in r.getMessage()]


# -- long real speech: the rut, once per episode ------------------------------------------------


@pytest.mark.parametrize("endpointing", sorted(ENDPOINTING))
@pytest.mark.parametrize("pause_s", [0.35, 1.2], ids=["one_utterance", "one_per_sentence"])
async def test_long_real_speech_with_only_empty_deltas_is_the_rut(
    endpointing: str, pause_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    """About 35 s of voice (one utterance, or one per sentence): the emulator answers it with
    empty deltas only. 10 s in: the rut, a fresh socket replays; 10 s more of blank speech
    there: persistent, reported once; the remaining 15 s: nothing more (same episode)."""
    audio, voice_s = speech(pause_s, rounds=2)
    assert voice_s > 30
    with caplog.at_level("WARNING", logger=LOGGER):
        run, seen, generations = await transcribe(audio, endpointing)
    stats = run.stream.stats  # type: ignore[union-attr]
    assert [ev.persistent for ev in seen] == [False, True]
    assert all(ev.speech_s == 10.0 for ev in seen)
    assert (stats.blank_ruts, stats.blank_ruts_persistent) == (1, 1)
    assert len(rut_warnings(caplog)) == 2
    assert run.finals == []  # nothing to caption: the emulator cannot hear a real voice
    utterances = run.kinds.count(T.START_OF_SPEECH)
    assert utterances == run.kinds.count(T.END_OF_SPEECH) >= 1
    if pause_s > 1:
        assert utterances >= len(SENTENCES)  # the endpointing cut at the long pauses
    # a generation per utterance, and the one continued on a fresh socket at the rut: the
    # rutted one was abandoned (its socket closed without a final commit)
    assert stats.generations == len(generations) >= utterances + 1
    assert sum(not g.final_received for g in generations) == 1


async def test_the_rut_with_a_livekit_vad_in_real_time(caplog: pytest.LogCaptureFixture) -> None:
    """The same, paced like a room (11 s of audio, blank_rut_s=4 to keep it short)."""
    clips = [espeak(*s) for s in SENTENCES[:3]]
    audio = compose([0.5, *[p for c in clips for p in (c, 0.3)], 1.0])
    assert 9.0 < audio.size / RATE < 14.0
    with caplog.at_level("WARNING", logger=LOGGER):
        run, seen, generations = await transcribe(
            audio, "livekit_silero_vad", realtime=True, blank_rut_s=4
        )
    stats = run.stream.stats  # type: ignore[union-attr]
    assert [(ev.persistent, ev.speech_s) for ev in seen] == [(False, 4.0), (True, 4.0)]
    assert (stats.blank_ruts, stats.blank_ruts_persistent) == (1, 1)
    assert stats.generations == len(generations) == run.kinds.count(T.START_OF_SPEECH) + 1
    assert sum(not g.final_received for g in generations) == 1


async def test_a_livekit_vad_behind_a_burst_still_hears_every_utterance() -> None:
    """Frames pushed at once, then end_input(): the VAD judges them seconds later, in its
    executor. The stream waits for its verdict on all the audio before it ends, so every
    utterance is still transcribed (before, all of them were dropped unseen), each in a
    generation of its own that ends where the VAD ended it. Every generation was sent all the
    audio pushed when its utterance started: one that heard the next utterance is stopped
    (its socket closed) and replayed up to its end (before, the first generation heard all
    three utterances and the other two nothing)."""
    clips = [espeak(*s) for s in SENTENCES[:3]]
    audio = compose([1.0, *[p for c in clips for p in (c, 1.2)], 1.0])
    run, seen, generations = await transcribe(
        audio, "livekit_silero_vad", burst=True, blank_rut_s=None
    )
    stats = run.stream.stats  # type: ignore[union-attr]
    assert len(generations) == stats.generations
    # (START_OF_SPEECH events may merge: the next utterance can start before the last ends)
    heard = [g.audio_samples / RATE for g in generations if g.final_received]
    assert len(heard) == 3
    assert all(2.9 < s < 6.0 for s in heard), heard  # one utterance each (two: 7.3 s or more)
    assert stats.dropped_audio_s == 0


# -- what must never be the rut -----------------------------------------------------------------


def _noises() -> F64:
    """40 s: silence, coughs and coughing fits, door slams, ventilation-like and pink noise."""
    parts: list[F64 | float] = [2.0]
    for i in range(6):
        parts += [cough(), 2.5, coughing_fit(3 + i % 3), 2.0, door_slam(), 1.5]
    x = compose(parts)
    rng = np.random.default_rng(1)
    hum = sox("brownnoise", "lowpass", "300", seconds=x.size / RATE)
    hiss = A.pink(x.size, rng)
    return x + _peak(hum, 0.01) + hiss * 10 ** (-55 / 20)


@pytest.mark.parametrize("endpointing", sorted(ENDPOINTING))
async def test_silence_noise_coughs_and_slams_are_never_the_rut(
    endpointing: str, caplog: pytest.LogCaptureFixture
) -> None:
    audio = np.concatenate([compose([20.0]), _noises()])
    with caplog.at_level("WARNING", logger=LOGGER):
        run, seen, _ = await transcribe(audio, endpointing)
    stats = run.stream.stats  # type: ignore[union-attr]
    assert seen == [] and (stats.blank_ruts, stats.blank_ruts_persistent) == (0, 0)
    assert rut_warnings(caplog) == []


@pytest.mark.parametrize("endpointing", sorted(ENDPOINTING))
async def test_short_replies_are_never_the_rut(
    endpointing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """40 one-word replies (each well under a second), 1.5 s apart, between coughs: over 15 s
    of voice that got no text, but none of it from 1 s into an utterance."""
    voices = ("en-us", "en-gb+f3")
    replies = [espeak(voices[i % 2], 170, REPLIES[i % len(REPLIES)]) for i in range(40)]
    assert max(r.size for r in replies) < 0.8 * RATE
    parts: list[F64 | float] = [1.0]
    for i, r in enumerate(replies):
        parts += [r, 1.5] + ([cough(), 1.5] if i % 5 == 4 else [])
    audio = compose(parts)
    with caplog.at_level("WARNING", logger=LOGGER):
        run, seen, generations = await transcribe(audio, endpointing)
    stats = run.stream.stats  # type: ignore[union-attr]
    assert seen == [] and (stats.blank_ruts, stats.blank_ruts_persistent) == (0, 0)
    assert rut_warnings(caplog) == []
    assert len(generations) >= 20  # the replies were heard as speech: not a silent run
    assert sum(r.size for r in replies) / RATE > 15


@pytest.mark.parametrize("endpointing", sorted(ENDPOINTING))
async def test_speech_under_the_threshold_is_not_the_rut(
    endpointing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two sentences in one utterance (about 6.5 s of voice, 5.5 of it counted): not yet.
    (The count goes on across utterances until text comes: a second one would add to it.)"""
    clips = [espeak(*s) for s in SENTENCES[:2]]
    audio = compose([1.0, *[p for c in clips for p in (c, 0.3)], 2.0])
    voice_s = sum(c.size for c in clips) / RATE
    assert 5.0 < voice_s < 8.0, voice_s
    with caplog.at_level("WARNING", logger=LOGGER):
        run, seen, generations = await transcribe(audio, endpointing)
    assert seen == [] and rut_warnings(caplog) == []
    assert len(generations) >= 1
