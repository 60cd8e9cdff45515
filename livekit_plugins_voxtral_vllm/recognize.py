"""Offline recognition (``STT.recognize``): a whole buffer through one vLLM generation.

vLLM has no batch endpoint for a realtime model, so ``STT.recognize`` uses ``/v1/realtime``
too: one socket, one generation, the audio sent as fast as the socket takes it, then
``final``, and every caption the segmenter closes on the way, joined, is the transcript.

- :func:`buffer_audio` turns LiveKit's buffer into one 16 kHz mono PCM16 array;
- :func:`transcribe` runs the generation on an open socket and returns the finals and the
  usage, raising LiveKit's API errors (a lost generation or a drop is retried by LiveKit; for
  a refused session, the caller says what to raise);
- :func:`final_transcript` makes the one ``FINAL_TRANSCRIPT`` event with word times.

Choosing the server, connecting and closing the socket stay in ``STT._recognize_impl``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np
from livekit.agents import APIConnectionError, APITimeoutError, stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import TimedString
from livekit.agents.utils import AudioBuffer

from . import protocol
from .audio import AudioPipeline
from .connection import RealtimeConnection
from .events import DeltaReceived, GenerationFailed, GenerationFinished, ServerErrorReceived
from .protocol import SAMPLE_RATE, ErrorCode
from .segmenter import CaptionFinal, CaptionSegmenter, SegmenterOptions

__all__ = ["buffer_audio", "final_transcript", "transcribe"]


def buffer_audio(buffer: AudioBuffer) -> np.ndarray:
    """The whole buffer (one frame or a list) as 16 kHz mono int16."""
    frames = buffer if isinstance(buffer, list) else [buffer]
    pipeline = AudioPipeline()
    chunks: list[np.ndarray] = []
    for frame in frames:
        chunks.extend(pipeline.push_frame(frame))
    chunks.extend(pipeline.flush())
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


async def transcribe(
    ws: aiohttp.ClientWebSocketResponse,
    conn: RealtimeConnection,
    audio: np.ndarray,
    *,
    timeout: float,
    refusal: Callable[[str, ErrorCode | None], Awaitable[Exception]],
) -> tuple[list[CaptionFinal], protocol.Usage | None]:
    """Run one generation of ``audio`` on ``ws`` (``conn`` is its fresh connection): the
    captions, and the server's usage report. ``refusal(message, code)`` makes the error
    to raise for a session the server refused. Does not close ``ws``."""
    seg = CaptionSegmenter(SegmenterOptions(1e9, 1e9, 1e9))
    seg.start_generation(0.0)
    finals: list[CaptionFinal] = []
    usage: protocol.Usage | None = None
    try:
        conn.start_generation(time.monotonic())
        if audio.size:
            conn.send_audio(audio)
        conn.finish_generation(time.monotonic())
        for frame_text in conn.data_to_send():
            await ws.send_str(frame_text)
        deadline = time.monotonic() + max(timeout, audio.size / SAMPLE_RATE)
        done = False
        while not done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError("vLLM did not finish the transcription in time")
            msg = await ws.receive(timeout=remaining)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise APIConnectionError(f"vLLM closed the connection ({msg.type.name})")
            conn.receive_text(msg.data, time.monotonic())
            for ev in conn.events_received():
                if isinstance(ev, DeltaReceived):
                    end_s = (ev.step + 1) * protocol.STEP_SECONDS
                    for cap in seg.receive_delta(ev.delta, end_s):
                        if isinstance(cap, CaptionFinal):
                            finals.append(cap)
                elif isinstance(ev, GenerationFinished):
                    end_s = ev.steps * protocol.STEP_SECONDS
                    finals.extend(
                        c
                        for c in seg.finish_generation(ev.text, end_s)
                        if isinstance(c, CaptionFinal)
                    )
                    usage = ev.usage
                    done = True
                elif isinstance(ev, GenerationFailed):
                    raise APIConnectionError(f"vLLM lost the generation: {ev.reason}")
                elif isinstance(ev, ServerErrorReceived) and conn.failure is not None:
                    raise await refusal(protocol.describe_refusal(ev.code, ev.message), ev.code)
    except asyncio.TimeoutError as e:
        raise APITimeoutError("vLLM did not finish the transcription in time") from e
    return finals, usage


def final_transcript(
    finals: list[CaptionFinal], *, language: str, audio_samples: int
) -> stt.SpeechEvent:
    """The ``FINAL_TRANSCRIPT`` of the whole buffer: the captions joined, with word times."""
    words = [w for f in finals for w in f.words]
    text = " ".join(f.text for f in finals)
    data = stt.SpeechData(
        language=LanguageCode(language),
        text=text,
        start_time=finals[0].start_s if finals else 0.0,
        end_time=finals[-1].end_s if finals else audio_samples / SAMPLE_RATE,
        words=[TimedString(w.text, start_time=w.start_s, end_time=w.end_s) for w in words],
    )
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=utils.shortuuid("vxr_"),
        alternatives=[data],
    )
