"""Drive a real SpeechStream with synthesized speech and collect its events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt

from livekit_plugins_voxtral_vllm.testing import SynthesizedSpeech


def frames_of(speech: SynthesizedSpeech, frame_ms: int, channels: int = 1) -> list[rtc.AudioFrame]:
    """Split synthesized audio into LiveKit frames (optionally duplicated to N channels)."""
    n = speech.sample_rate * frame_ms // 1000
    out = []
    for chunk in speech.frames(frame_ms):
        data = np.repeat(chunk, channels) if channels > 1 else chunk
        out.append(rtc.AudioFrame(data.astype(np.int16).tobytes(), speech.sample_rate, channels, n))
    return out


@dataclass
class Run:
    events: list[stt.SpeechEvent] = field(default_factory=list)
    stream: stt.RecognizeStream | None = None
    """The (closed) stream, for tests that inspect its state afterwards."""

    def of(self, kind: stt.SpeechEventType) -> list[stt.SpeechEvent]:
        return [e for e in self.events if e.type == kind]

    @property
    def finals(self) -> list[stt.SpeechEvent]:
        return self.of(stt.SpeechEventType.FINAL_TRANSCRIPT)

    @property
    def interims(self) -> list[stt.SpeechEvent]:
        return self.of(stt.SpeechEventType.INTERIM_TRANSCRIPT)

    @property
    def text(self) -> str:
        return " ".join(e.alternatives[0].text for e in self.finals)

    @property
    def kinds(self) -> list[stt.SpeechEventType]:
        return [e.type for e in self.events]


def normalize(text: str) -> str:
    return " ".join(text.split())


async def collect(stream: stt.RecognizeStream, run: Run) -> None:
    async for ev in stream:
        run.events.append(ev)


async def end_and_wait(
    stream: stt.RecognizeStream, reader: asyncio.Task[None], timeout: float = 20.0
) -> None:
    """End the input, wait for ``reader`` to see the stream end, and close the stream."""
    stream.end_input()
    await asyncio.wait_for(reader, timeout)
    await stream.aclose()


async def transcribe(
    engine: stt.STT,
    frames: Sequence[rtc.AudioFrame],
    *,
    realtime: bool = False,
    frame_interval: float | None = None,
    end_input: bool = True,
    timeout: float = 30.0,
    conn_options: APIConnectOptions | None = None,
) -> Run:
    """Push ``frames`` into a fresh stream (paced like a room when ``realtime``), end the input,
    and gather every event until the stream ends."""
    stream = engine.stream() if conn_options is None else engine.stream(conn_options=conn_options)
    run = Run(stream=stream)
    reader = asyncio.create_task(collect(stream, run))
    try:
        for frame in frames:
            stream.push_frame(frame)
            if realtime:
                await asyncio.sleep(frame.samples_per_channel / frame.sample_rate)
            elif frame_interval is not None:
                await asyncio.sleep(frame_interval)
        if end_input:
            stream.end_input()
        await asyncio.wait_for(reader, timeout)
    finally:
        reader.cancel()
        await stream.aclose()
    return run
