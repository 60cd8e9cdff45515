"""``flush()`` with a LiveKit VAD that lags the audio (frames pushed faster than real time, a
busy executor): the utterance flushed holds every word pushed before the flush, and no word
after it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from livekit import rtc
from livekit.agents import stt
from livekit.agents import vad as lk_vad

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm import stt as stt_module
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, collect, frames_of, normalize
from .test_stream_options import EnergyVAD, EnergyVADStream, _wait

T = stt.SpeechEventType


class LaggingVAD(EnergyVAD):
    """The deterministic energy VAD, judging each frame ``delay_s`` late: a VAD whose
    inference runs in a busy executor, behind a burst of frames."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def stream(self) -> lk_vad.VADStream:
        s = _LaggingStream(self, self.delay_s)
        self.streams.append(s)
        return s


class _LaggingStream(EnergyVADStream):
    def __init__(self, vad: EnergyVAD, delay_s: float) -> None:
        super().__init__(vad)
        self._delay_s = delay_s

    async def _items(self) -> AsyncIterator[rtc.AudioFrame | lk_vad.VADStream._FlushSentinel]:
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                await asyncio.sleep(self._delay_s)
            yield item


FIRST = "hello world. the meeting starts now."
SECOND = "we can hear the quick brown fox."


async def _flushed_turns(vad: LaggingVAD, settle: bool = False) -> tuple[Run, str, str, list[str]]:
    """A turn pushed in a burst, ``flush()``, the next turn right behind it (the VAD has
    judged none of the first turn when the flush comes), then ``end_input()`` (with
    ``settle``, once the VAD has read every frame)."""
    first = synthesize(FIRST, sample_rate=48000, tail_ms=100)  # the turn ends at the flush
    second = synthesize(SECOND, sample_rate=48000, tail_ms=800)
    async with VLLMRealtimeEmulator(fast=True) as emu:
        # (lag_policy="wait": frames come faster than real time; catch-up is not tested here)
        engine = STT(base_url=emu.url, vad=vad, lag_policy="wait")
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        before, after = frames_of(first, 10), frames_of(second, 10)
        for f in before:
            stream.push_frame(f)
        stream.flush()
        for f in after:
            stream.push_frame(f)
        if settle:
            total = len(before) + len(after)
            await _wait(lambda: bool(vad.streams) and vad.streams[0].frames_seen == total)
        stream.end_input()
        await asyncio.wait_for(reader, 30)
        await stream.aclose()
        await engine.aclose()
        generations = ["".join(g.text) for c in emu.connections for g in c.generations]
    return run, first.text, second.text, generations


def _first_utterance(run: Run) -> str:
    end = run.kinds.index(T.END_OF_SPEECH)
    return " ".join(
        e.alternatives[0].text for e in run.events[:end] if e.type == T.FINAL_TRANSCRIPT
    )


@pytest.mark.parametrize("delay_s", [0.003, 0.012])
async def test_flush_waits_for_a_lagging_vad(delay_s: float) -> None:
    """The flushed utterance ends at the flush with every word before it and none after it.
    The VAD judges 10 ms frames ~3x real time (about 1 s behind at the flush), or slower than
    real time (about 4 s behind: longer than ``input_stall_s``, so the core's stall timer
    fires while the flush waits; it must end the utterance at the flush too, and no later
    frame may slip in ahead of the flush)."""
    run, first, second, generations = await _flushed_turns(LaggingVAD(delay_s))
    assert normalize(run.text) == normalize(f"{first} {second}")
    assert normalize(_first_utterance(run)) == normalize(first)
    assert [normalize(g) for g in generations] == [normalize(first), normalize(second)]


async def test_a_vad_too_slow_for_the_flush_is_named_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the bound the flush goes on without the VAD's verdict, with a warning; every word
    is still transcribed."""
    monkeypatch.setattr(stt_module, "_VAD_DRAIN_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm"):
        run, first, second, _ = await _flushed_turns(LaggingVAD(0.003), settle=True)
    assert normalize(run.text) == normalize(f"{first} {second}")
    warnings = [r.getMessage() for r in caplog.records if "after a flush" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "had not judged all the audio 0.2s after a flush" in warnings[0]
