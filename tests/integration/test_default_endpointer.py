"""The default endpointer in a live stream: a real recorded voice (alsa-utils' prompts) opens
one generation per utterance at the emulator; the emulator's tone "speech" opens none."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr
from livekit import rtc
from livekit.agents import stt

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

from .helpers import Run, collect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _endpointing_audio as A  # noqa: E402

T = stt.SpeechEventType

pytestmark = pytest.mark.skipif(
    not A.have_alsa_prompts() and not os.environ.get("CI"),
    reason="Debian's alsa-utils is not installed (.ci/run installs it)",
)


async def test_a_real_voice_opens_a_generation_per_utterance() -> None:
    # two prompts 2 s apart, at 48 kHz in 10 ms frames like a WebRTC track, in mild noise
    clips = [c for c in A.clips() if c.name in ("alsa:Front_Left", "alsa:Rear_Right")]
    parts = [np.zeros(16000)]
    for c in clips:
        parts += [c.samples * 0.1, np.zeros(32000)]
    x16 = np.concatenate(parts)
    x16 = x16 + np.random.default_rng(0).normal(0, 10 ** (-60 / 20), x16.size)
    x48 = A.to_pcm(soxr.resample(x16, 16000, 48000))
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, endpointer="silero")
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        for i in range(0, x48.size - 479, 480):
            stream.push_frame(rtc.AudioFrame(x48[i : i + 480].tobytes(), 48000, 1, 480))
            if i % (480 * 8) == 0:
                await asyncio.sleep(0)
        stream.end_input()
        await asyncio.wait_for(reader, 20)
        await stream.aclose()
        await engine.aclose()
        generations = sum(len(c.generations) for c in emu.connections)
    # (the emulator cannot transcribe a real voice: what it sends back is not checked)
    assert generations == 2
    assert run.kinds[0] == T.START_OF_SPEECH and run.kinds[-1] == T.END_OF_SPEECH


async def test_tone_speech_opens_nothing_with_the_default() -> None:
    from livekit_plugins_voxtral_vllm.testing import synthesize

    speech = synthesize("hello world. the quick brown fox.", sample_rate=48000, tail_ms=800)
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, endpointer="silero")
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        for chunk in speech.frames(10):
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, chunk.size))
        stream.end_input()
        await asyncio.wait_for(reader, 20)
        await stream.aclose()
        await engine.aclose()
        generations = sum(len(c.generations) for c in emu.connections)
    assert generations == 0 and not run.finals
