"""Options that change a live stream: ``update_options`` (language label, segmentation),
``stream(language=)``, and a LiveKit VAD in place of the built-in endpointer."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt
from livekit.agents import vad as lk_vad

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm import stt as stt_module
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, collect, frames_of, normalize, transcribe

T = stt.SpeechEventType
# one utterance of two sentences: the 400 ms pause (+ 60 ms gap) is shorter than min_silence_ms
TWO_SENTENCES = "hello world. <pause:400> thank you."


async def _wait(cond: object, timeout: float = 10.0) -> None:
    assert callable(cond)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _labels(events: Sequence[stt.SpeechEvent]) -> list[str]:
    return [str(e.alternatives[0].language) for e in events]


# -- update_options ----------------------------------------------------------------------------


async def test_update_options_applies_at_the_next_utterance() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, language="en", sentence_pause_s=0.2)
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        first = synthesize(TWO_SENTENCES, sample_rate=48000, tail_ms=1000)
        for f in frames_of(first, 10):
            stream.push_frame(f)
        await _wait(lambda: T.END_OF_SPEECH in run.kinds)
        before = list(run.finals)
        split = len(run.events)
        engine.update_options(language="de", sentence_pause_s=1.0)
        second = synthesize(TWO_SENTENCES, sample_rate=48000)
        for f in frames_of(second, 10):
            stream.push_frame(f)
        stream.end_input()
        await asyncio.wait_for(reader, 10)
        await stream.aclose()
        await engine.aclose()
    after = run.finals[len(before) :]
    # before: a 0.46 s pause after "." ends a caption (sentence_pause_s=0.2)
    assert [e.alternatives[0].text for e in before] == ["hello world.", "thank you."]
    text_events = (T.INTERIM_TRANSCRIPT, T.FINAL_TRANSCRIPT)
    assert set(_labels([e for e in run.events[:split] if e.type in text_events])) == {"en"}
    assert set(_labels([e for e in run.events[split:] if e.type in text_events])) == {"de"}
    # after: the same pause no longer does (sentence_pause_s=1.0), and the label is "de"
    assert [e.alternatives[0].text for e in after] == ["hello world. thank you."]
    assert engine._opts.language == "de"


async def test_update_options_reaches_streams_opened_later() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, language="en")
        engine.update_options(language="es", sentence_pause_s=1.0)
        speech = synthesize(TWO_SENTENCES, sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 10), timeout=10)
        await engine.aclose()
    assert [e.alternatives[0].text for e in run.finals] == ["hello world. thank you."]
    assert set(_labels(run.finals + run.interims)) == {"es"}


async def test_streams_lists_the_streams_an_stt_made() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url)
        assert engine.streams == ()
        first, second = engine.stream(), engine.stream()
        assert set(engine.streams) == {first, second}
        assert all(s.stats.generations == 0 for s in engine.streams)
        await first.aclose()
        await second.aclose()
        await engine.aclose()


async def test_stream_language_overrides_the_label() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, language="en")
        speech = synthesize("good morning everyone.", sample_rate=48000)
        runs: dict[str, Run] = {}
        for label, stream in (("fr", engine.stream(language="fr")), ("en", engine.stream())):
            run = runs[label] = Run()
            reader = asyncio.create_task(collect(stream, run))
            for f in frames_of(speech, 10):
                stream.push_frame(f)
            stream.end_input()
            await asyncio.wait_for(reader, 10)
            await stream.aclose()
        await engine.aclose()
    for label, run in runs.items():
        assert normalize(run.text) == normalize(speech.text)
        assert run.finals and set(_labels(run.finals + run.interims)) == {label}
    assert engine._opts.language == "en", "the override is the stream's own"


# -- a LiveKit VAD in place of the built-in endpointer ----------------------------------------


class EnergyVAD(lk_vad.VAD):
    """A deterministic VAD: 10 ms windows above ``threshold_dbfs`` RMS are speech. Its
    ``samples_index`` counts at ``count_rate`` (Silero: 16 kHz; some VADs: their input's).
    With ``audio_timestamps`` its events' ``timestamp`` is audio time, as Silero's is;
    otherwise 0."""

    def __init__(
        self,
        threshold_dbfs: float = -40.0,
        min_speech_ms: int = 50,
        min_silence_ms: int = 500,
        count_rate: int = 16000,
        audio_timestamps: bool = False,
    ) -> None:
        super().__init__(capabilities=lk_vad.VADCapabilities(update_interval=0.01))
        self.count_rate = count_rate
        self.audio_timestamps = audio_timestamps
        self.threshold_dbfs = threshold_dbfs
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        self.streams: list[EnergyVADStream] = []

    @property
    def model(self) -> str:
        return "energy"

    @property
    def provider(self) -> str:
        return "tests"

    def stream(self) -> lk_vad.VADStream:
        s = EnergyVADStream(self)
        self.streams.append(s)
        return s


class EnergyVADStream(lk_vad.VADStream):
    def __init__(self, vad: EnergyVAD) -> None:
        super().__init__(vad)
        self._energy = vad
        self.frames_seen = 0
        self.events: list[lk_vad.VADEventType] = []

    async def _main_task(self) -> None:
        opts = self._energy
        speaking = False
        speech_ms = silence_ms = 0
        samples = 0  # at the VAD's own "inference" rate, as LiveKit documents samples_index
        async for item in self._items():
            if not isinstance(item, rtc.AudioFrame):  # flush: a hard segment boundary
                speaking, speech_ms, silence_ms = False, 0, 0
                continue
            self.frames_seen += 1
            pcm = np.frombuffer(bytes(item.data), dtype=np.int16).astype(np.float64) / 32768
            window = item.sample_rate // 100
            for i in range(0, pcm.size - window + 1, window):
                rms = math.sqrt(float(np.mean(pcm[i : i + window] ** 2)))
                loud = rms > 0 and 20 * math.log10(rms) > opts.threshold_dbfs
                samples += opts.count_rate // 100
                if loud:
                    speech_ms += 10
                    silence_ms = 0
                else:
                    silence_ms += 10
                    if not speaking:
                        speech_ms = 0
                if not speaking and speech_ms >= opts.min_speech_ms:
                    speaking = True
                    self._send(lk_vad.VADEventType.START_OF_SPEECH, samples, speech_ms, 0)
                elif speaking and silence_ms >= opts.min_silence_ms:
                    speaking = False
                    self._send(lk_vad.VADEventType.END_OF_SPEECH, samples, speech_ms, silence_ms)
                    speech_ms = 0

    def _items(self) -> AsyncIterator[rtc.AudioFrame | lk_vad.VADStream._FlushSentinel]:
        """What the VAD reads: its input, as pushed (a lagging VAD delays it)."""
        return self._input_ch

    def _send(self, kind: lk_vad.VADEventType, index: int, speech_ms: int, silence_ms: int) -> None:
        self.events.append(kind)
        self._event_ch.send_nowait(
            lk_vad.VADEvent(
                type=kind,
                samples_index=index,
                timestamp=index / self._energy.count_rate if self._energy.audio_timestamps else 0.0,
                speech_duration=speech_ms / 1000,
                silence_duration=silence_ms / 1000,
                speaking=kind is lk_vad.VADEventType.START_OF_SPEECH,
            )
        )


class _NoEndpointer:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the built-in Endpointer must not be created when vad= is given")


SCRIPT = (
    "hello world. the meeting starts now. <pause:900> we can hear the quick brown fox. "
    "<pause:1000> thank you everyone."
)


async def _transcribe_with_vad(
    monkeypatch: pytest.MonkeyPatch, burst: bool, count_rate: int = 16000
) -> tuple[Run, str, EnergyVAD, int]:
    monkeypatch.setattr(stt_module, "Endpointer", _NoEndpointer)
    monkeypatch.setattr(stt_module, "VadEndpointer", _NoEndpointer)
    # live pacing: the VAD keeps up, its position is inferred from the audio pushed; a burst:
    # it lags far behind, its timestamps (audio time, like Silero's) tell the rate
    vad = EnergyVAD(count_rate=count_rate, audio_timestamps=burst)
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, vad=vad)
        speech = synthesize(SCRIPT, sample_rate=48000, tail_ms=800)
        frames = frames_of(speech, 10)
        stream = engine.stream()
        assert stream._endpointer is None
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        for i, f in enumerate(frames):
            stream.push_frame(f)
            if not burst and i % 8 == 7:
                await asyncio.sleep(0.01)  # 80 ms of audio every 10 ms: 8x real time
        await _wait(lambda: bool(vad.streams) and vad.streams[0].frames_seen == len(frames))
        await asyncio.sleep(0.05)
        stream.end_input()
        await asyncio.wait_for(reader, 15)
        await stream.aclose()
        await engine.aclose()
        generations = sum(len(c.generations) for c in emu.connections)
    return run, speech.text, vad, generations


@pytest.mark.parametrize("count_rate", [16000, 48000])
async def test_a_livekit_vad_drives_the_utterances(
    monkeypatch: pytest.MonkeyPatch, count_rate: int
) -> None:
    """Whatever rate the VAD's ``samples_index`` counts at (16 kHz like Silero, or its 48 kHz
    input's), its utterances land where the speech is: the transcript is exact."""
    run, text, vad, generations = await _transcribe_with_vad(
        monkeypatch, burst=False, count_rate=count_rate
    )
    assert normalize(run.text) == normalize(text)
    assert len(vad.streams) == 1
    events = vad.streams[0].events
    assert events == [lk_vad.VADEventType.START_OF_SPEECH, lk_vad.VADEventType.END_OF_SPEECH] * 3
    # one generation per utterance the VAD found
    assert generations == 3
    assert run.kinds.count(T.START_OF_SPEECH) == 3
    assert run.kinds.count(T.END_OF_SPEECH) == 3


@pytest.mark.parametrize("count_rate", [16000, 48000])
async def test_a_livekit_vad_lagging_behind_a_burst_of_frames(
    monkeypatch: pytest.MonkeyPatch, count_rate: int
) -> None:
    run, text, _, generations = await _transcribe_with_vad(
        monkeypatch, burst=True, count_rate=count_rate
    )
    assert normalize(run.text) == normalize(text)
    assert generations == 3
