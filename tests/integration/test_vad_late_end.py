"""A LiveKit VAD whose ``END_OF_SPEECH`` reaches the stream after the next turn's first words
were pushed (it lags the audio): the first turn's generation ends where the VAD ended it, and
the next turn's words are transcribed once, in its own utterance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents import stt
from livekit.agents import vad as lk_vad

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, collect, frames_of, normalize
from .test_stream_options import EnergyVAD, EnergyVADStream

T = stt.SpeechEventType


class LateVAD(EnergyVAD):
    """The deterministic energy VAD, sending each event once it has read ``lag_s`` more audio
    (a VAD behind the audio by a fixed stretch of it, however fast the frames come)."""

    def __init__(self, lag_s: float) -> None:
        super().__init__(audio_timestamps=True)
        self.lag = round(lag_s * self.count_rate)
        self.sent: list[tuple[lk_vad.VADEventType, int, float]] = []

    def stream(self) -> lk_vad.VADStream:
        s = _LateStream(self)
        self.streams.append(s)
        return s


class _LateStream(EnergyVADStream):
    def __init__(self, vad: LateVAD) -> None:
        super().__init__(vad)
        self._late = vad
        self._held: list[lk_vad.VADEvent] = []

    def _send(self, kind: lk_vad.VADEventType, index: int, speech_ms: int, silence_ms: int) -> None:
        self.events.append(kind)
        self._held.append(
            lk_vad.VADEvent(
                type=kind,
                samples_index=index,
                timestamp=index / self._late.count_rate,
                speech_duration=speech_ms / 1000,
                silence_duration=silence_ms / 1000,
                speaking=kind is lk_vad.VADEventType.START_OF_SPEECH,
            )
        )

    def _release(self, read: int) -> None:
        while self._held and self._held[0].samples_index + self._late.lag <= read:
            ev = self._held.pop(0)
            self._late.sent.append((ev.type, ev.samples_index, ev.silence_duration))
            self._event_ch.send_nowait(ev)

    async def _items(self) -> AsyncIterator[rtc.AudioFrame | lk_vad.VADStream._FlushSentinel]:
        read = 0
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                read += item.samples_per_channel * self._late.count_rate // item.sample_rate
            self._release(read)
            yield item
        self._release(1 << 62)  # (the input ended: it has judged everything)


FIRST = "hello world."
SECOND = "the meeting starts now."


async def test_a_late_end_of_speech_leaves_the_next_turn_whole() -> None:
    """The VAD's END for turn 1 comes 0.6 s of audio late, when turn 2's first word (0.26 s
    after the VAD's end) has gone to turn 1's generation. Before, that generation ended at
    all the audio pushed: turn 2's first word came as a caption of its own, timed 0.8 s early,
    in turn 1's generation, and the rest of turn 2 as another."""
    speech = synthesize(f"{FIRST} <pause:700> {SECOND}", sample_rate=48000, tail_ms=1000)
    second_at = next(w.start_s for w in speech.words if w.text == " the")
    vad = LateVAD(0.6)
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, vad=vad, lag_policy="wait")
        stream = engine.stream()
        run = Run(stream=stream)
        reader = asyncio.create_task(collect(stream, run))
        for i, frame in enumerate(frames_of(speech, 10)):
            stream.push_frame(frame)
            if i % 4 == 3:
                await asyncio.sleep(0.01)  # 40 ms of audio every 10 ms: 4x real time
        stream.end_input()
        await asyncio.wait_for(reader, 30)
        await stream.aclose()
        await engine.aclose()
    kinds = [kind for kind, _, _ in vad.sent]
    assert kinds == [lk_vad.VADEventType.START_OF_SPEECH, lk_vad.VADEventType.END_OF_SPEECH] * 2
    first_end = vad.sent[1][1] / vad.count_rate  # where the VAD decided turn 1 was over
    assert first_end < second_at < first_end + vad.lag / vad.count_rate
    finals = [e.alternatives[0] for e in run.finals]
    assert [normalize(f.text) for f in finals] == [FIRST, SECOND]
    assert finals[1].start_time >= first_end  # turn 2's caption is its own generation's
    assert stream.stats.dropped_audio_s == 0
    assert run.kinds.count(T.START_OF_SPEECH) == run.kinds.count(T.END_OF_SPEECH)
