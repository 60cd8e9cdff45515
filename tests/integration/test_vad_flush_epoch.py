"""A LiveKit Silero VAD counts its samples from 0 again after every ``flush()``: the plugin
must place its events after a flush from the flush's audio, not from the stream's start.
Real voices (espeak-ng), the real Silero VAD, the emulator in fast mode."""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
import pytest
from livekit.agents import stt
from livekit.plugins import silero

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

from .helpers import Run, collect
from .test_rut_real_voice import RATE, SENTENCES, compose, espeak, frames, pytestmark

__all__ = ["pytestmark"]  # (skips without espeak-ng and sox, unless in CI)

T = stt.SpeechEventType
LOGGER = "livekit.plugins.voxtral_vllm"


async def test_silero_events_after_a_flush_land_at_their_audio() -> None:
    """Turn 1 (0.5 s in), ``flush()``, then 4 s of silence and turn 2. Silero's START for
    turn 2 counts from the flush; read from the stream's start it would fall inside turn 1
    and the second generation would begin at the flush, 4 s of silence early."""
    one, two = espeak(*SENTENCES[0]), espeak(*SENTENCES[1])
    first = compose([0.5, one, 0.6])
    second = compose([4.0, two, 1.2], seed=1)
    two_at = (first.size + int(4.0 * RATE)) / RATE  # where turn 2's voice begins
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(logging.DEBUG)
    log = logging.getLogger(LOGGER)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        async with VLLMRealtimeEmulator(fast=True) as emu:
            engine = STT(
                base_url=emu.url, vad=silero.VAD.load(), lag_policy="wait", blank_rut_s=None
            )
            stream = engine.stream()
            run = Run(stream=stream)
            reader = asyncio.create_task(collect(stream, run))
            try:
                for part in (first, second):
                    for i, frame in enumerate(frames(part)):
                        stream.push_frame(frame)
                        if i % 10 == 9:  # ~20x real time: Silero keeps up
                            await asyncio.sleep(0.005)
                    if part is first:
                        stream.flush()
                stream.end_input()
                await asyncio.wait_for(reader, 60.0)
            finally:
                reader.cancel()
                await stream.aclose()
                await engine.aclose()
            generations = [g for c in emu.connections for g in c.generations]
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    starts = [
        float(m.group(1))
        for r in records
        if (m := re.match(r"speech started at ([0-9.]+)s", r.getMessage()))
    ]
    assert run.kinds.count(T.START_OF_SPEECH) == 2
    assert len(starts) == 2, starts
    assert starts[0] == pytest.approx(0.5, abs=0.4)
    assert starts[1] == pytest.approx(two_at, abs=0.4), (starts, two_at)
    assert len(generations) == 2
    # the second generation holds turn 2 (with pre-roll and its tail), not the 4 s before it
    gen2_s = generations[1].audio_samples / RATE
    assert gen2_s < two.size / RATE + 1.2 + 1.5, (gen2_s, two.size / RATE)
    assert np.isfinite(gen2_s)
