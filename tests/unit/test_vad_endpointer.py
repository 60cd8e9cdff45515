"""``vad_endpointer.VadEndpointer`` (the default endpointer) and ``vad_model.SileroBatch``.

Real voices: the alsa-utils voice prompts (recorded speech) and espeak-ng, through the
evaluation's audio module (``benchmarks/_endpointing_audio.py``); noises generated there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from livekit_plugins_voxtral_vllm.endpointer import (
    EndpointerEvent,
    SpeechEnded,
    SpeechResumed,
    SpeechStarted,
)
from livekit_plugins_voxtral_vllm.testing.speech import synthesize
from livekit_plugins_voxtral_vllm.vad_endpointer import VadEndpointer, VadEndpointerOptions
from livekit_plugins_voxtral_vllm.vad_model import WINDOW, SileroBatch, weights_path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _endpointing_audio as A  # noqa: E402

RATE = 16000
Int16 = npt.NDArray[np.int16]

needs_voices = pytest.mark.skipif(
    not (A.have_alsa_prompts() and A.have_espeak()) and not os.environ.get("CI"),
    reason="Debian's alsa-utils and espeak-ng are not installed (.ci/run installs them)",
)


def run(ep: VadEndpointer, x: Int16, chunk: int = 1280) -> list[EndpointerEvent]:
    events: list[EndpointerEvent] = []
    for i in range(0, len(x), chunk):
        events += ep.push(x[i : i + chunk])
    return events + ep.flush()


def utterances(events: list[EndpointerEvent]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start: int | None = None
    for e in events:
        if isinstance(e, SpeechStarted):
            assert start is None, events
            start = e.start_sample
        elif isinstance(e, SpeechEnded):
            assert start is not None, events
            assert e.decided_sample >= e.end_sample >= start
            out.append((start, e.end_sample))
            start = None
        else:
            assert isinstance(e, SpeechResumed) and start is not None
    assert start is None
    return out


def placed(clip: A.Clip, lead_s: float, tail_s: float) -> tuple[npt.NDArray[np.float64], int]:
    lead = round(lead_s * RATE)
    x = np.concatenate((np.zeros(lead), clip.samples, np.zeros(round(tail_s * RATE))))
    return x, lead


def level(x: npt.NDArray[np.float64], active_dbfs: float, clip: A.Clip, at: int) -> Int16:
    words = np.concatenate([x[at + a : at + b] for a, b in clip.words])
    return A.to_pcm(x * 10 ** (active_dbfs / 20) / np.sqrt(np.mean(words**2)))


def test_weights_come_from_the_installed_silero_plugin() -> None:
    path = weights_path()
    assert path.name == "silero_vad.onnx" and "livekit" in str(path)
    assert 1_000_000 < path.stat().st_size < 5_000_000


def test_an_stt_built_off_the_main_thread_loads_the_model() -> None:
    # importing livekit.plugins.silero registers a LiveKit plugin, which LiveKit refuses off
    # the main thread: the weights are found without that import (a fresh interpreter, since
    # other tests import the plugin)
    code = (
        "import sys, threading\n"
        "from livekit_plugins_voxtral_vllm import STT\n"
        "out = []\n"
        "def build():\n"
        "    try:\n"
        "        STT(endpointer='silero')\n"
        "        out.append('livekit.plugins.silero' in sys.modules)\n"
        "    except Exception as e:\n"
        "        out.append(repr(e))\n"
        "t = threading.Thread(target=build); t.start(); t.join()\n"
        "print(out[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


@needs_voices
@pytest.mark.parametrize("noise", [None, "white", "pink", "hvac"])
def test_a_real_voice_is_found_where_it_is_in_noise(noise: str | None) -> None:
    clip = next(c for c in A.clips() if c.name == "alsa:Front_Center")
    x, lead = placed(clip, 2.0, 1.5)
    if noise is not None:  # 5 dB SNR
        x = x / np.sqrt(
            np.mean(np.concatenate([x[lead + a : lead + b] for a, b in clip.words]) ** 2)
        )
        x = x + A.NOISES[noise](len(x), np.random.default_rng(3)) * 10 ** (-5 / 20)
    pcm = level(x, -26.0, clip, lead)
    ep = VadEndpointer(batch=SileroBatch())
    got = utterances(run(ep, pcm))
    onset, offset = lead + clip.onset, lead + clip.end
    assert onset - 0.15 * RATE <= got[0][0] <= onset + 0.1 * RATE
    assert offset - 0.1 * RATE <= got[-1][1] <= offset + 0.3 * RATE
    # "Front ... Center" has a 350 ms pause: in noise the model may end the utterance there
    # (a split at a word boundary, which the next utterance's pre-roll covers), never in a word
    assert len(got) <= 2
    for (_, end), (start, _) in zip(got, got[1:], strict=False):
        assert not any(lead + a < end < lead + b for a, b in clip.words)
        assert start - 0.3 * RATE <= lead + clip.words[-1][0]


@needs_voices
def test_a_quiet_microphone_is_heard() -> None:
    clip = next(c for c in A.clips() if c.source == "espeak")
    x, lead = placed(clip, 1.0, 1.0)
    pcm = level(x + np.random.default_rng(1).normal(0, 1e-4, len(x)), -40.0, clip, lead)
    got = utterances(run(VadEndpointer(batch=SileroBatch()), pcm))
    assert len(got) == 1


@pytest.mark.parametrize("noise", ["white", "pink", "hvac", "keyboard", "slams"])
def test_noise_alone_opens_nothing_and_steady_noise_keeps_the_model_off(noise: str) -> None:
    pcm = A.to_pcm(A.noise_alone(noise, 20.0, seed=5))
    batch = SileroBatch()
    assert run(VadEndpointer(batch=batch), pcm) == []
    if noise in ("white", "pink", "hvac"):
        # open until the first noise floor is known (0.4 s of 20 s) and rarely after
        assert batch.windows < 0.1 * len(pcm) / WINDOW, batch.windows


def test_digital_silence_never_runs_the_model() -> None:
    batch = SileroBatch()
    assert run(VadEndpointer(batch=batch), np.zeros(10 * RATE, dtype=np.int16)) == []
    assert batch.windows == 0


def test_tone_bursts_are_not_speech() -> None:
    # the emulator's synthetic "speech": why the STT tests run the energy endpointer
    speech = synthesize("hello world. the quick brown fox jumps over the lazy dog", RATE)
    assert run(VadEndpointer(batch=SileroBatch()), speech.samples) == []


@needs_voices
def test_streams_share_one_call_per_step_and_decide_as_alone() -> None:
    script = A.make_script(7, 12.0)
    streams = [
        A.to_pcm(A.mix_speech(script, -26.0, noise, 10.0, seed=i))
        for i, noise in enumerate(("white", "pink", "hvac", "music"))
    ]
    alone = [utterances(run(VadEndpointer(batch=SileroBatch()), x)) for x in streams]
    batch = SileroBatch()
    eps = [VadEndpointer(batch=batch) for _ in streams]
    events: list[list[EndpointerEvent]] = [[] for _ in streams]
    for i in range(0, len(streams[0]), 1280):
        for k, (ep, x) in enumerate(zip(eps, streams, strict=True)):
            got = ep.push(x[i : i + 1280])
            for e in got:
                if isinstance(e, SpeechEnded):  # an end is decided in the push that holds it
                    assert i < e.decided_sample <= i + 1280, (k, i, e)
            events[k] += got
    for k, ep in enumerate(eps):
        events[k] += ep.flush()
    together = [utterances(e) for e in events]
    assert batch.windows / batch.calls > 2.5  # most calls score several streams
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b) and len(a) >= 3
        for (s1, e1), (s2, e2) in zip(a, b, strict=True):  # batched scores: float rounding
            assert abs(s1 - s2) <= WINDOW and abs(e1 - e2) <= WINDOW


@needs_voices
def test_a_stream_that_stops_pushing_does_not_hold_the_others_back() -> None:
    clip = next(c for c in A.clips() if c.name == "alsa:Rear_Left")
    x, lead = placed(clip, 1.0, 2.0)
    pcm = level(x, -26.0, clip, lead)
    batch = SileroBatch()
    live, gone = VadEndpointer(batch=batch), VadEndpointer(batch=batch)
    gone.push(pcm[: RATE // 2 + 100])  # active (floor not known yet), then silent forever
    events: list[EndpointerEvent] = []
    lags = []
    for i in range(0, len(pcm), 1280):
        got = live.push(pcm[i : i + 1280])
        for e in got:
            if isinstance(e, SpeechEnded):
                lags.append(i + 1280 - e.decided_sample)
        events += got
    assert len(utterances(events)) == 1
    assert lags and max(lags) <= 2 * 1280  # learnt within a push of the decision


def test_samples_of_any_length_and_bad_input() -> None:
    ep = VadEndpointer(batch=SileroBatch())
    for n in (1, 511, 513, 1280, 7):
        ep.push(np.zeros(n, dtype=np.int16))
    assert ep.samples_seen == 1 + 511 + 513 + 1280 + 7
    with pytest.raises(TypeError, match="int16"):
        ep.push(np.zeros(10, dtype=np.float32))  # type: ignore[arg-type]
    ep.reset()
    assert ep.samples_seen == 0 and not ep.speaking


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_speech_ms", -1),
        ("min_silence_ms", 10),
        ("activation", 1.5),
        ("deactivation", 0.9),
        ("resume_gap_ms", 5000),
        ("gate_db", 0.0),
        ("noise_window_ms", 50),
        ("warmup_ms", -3),
        ("gate_min_dbfs", 3.0),
    ],
)
def test_bad_options_are_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"VadEndpointerOptions.{field} must be .* got {value}"):
        VadEndpointerOptions(**{field: value})  # type: ignore[arg-type]
