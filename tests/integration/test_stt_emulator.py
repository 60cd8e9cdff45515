"""The real SpeechStream against the emulator, over a real WebSocket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, collect, end_and_wait, frames_of, normalize, transcribe

SCRIPT = (
    "hello world. the meeting starts now. <pause:900> we can hear the quick brown fox. "
    "<pause:1000> thank you everyone."
)
T = stt.SpeechEventType


@pytest.mark.parametrize(("rate", "frame_ms"), [(48000, 10), (24000, 50)])
async def test_exact_text_multi_sentence(engine: STT, rate: int, frame_ms: int) -> None:
    speech = synthesize(SCRIPT, sample_rate=rate)
    run = await transcribe(engine, frames_of(speech, frame_ms))
    assert normalize(run.text) == normalize(speech.text)


async def test_stereo_frames_are_downmixed(engine: STT) -> None:
    speech = synthesize("good morning everyone. let us begin.", sample_rate=48000)
    run = await transcribe(engine, frames_of(speech, 20, channels=2))
    assert normalize(run.text) == normalize(speech.text)


def check_event_rules(run: Run) -> None:
    """START first, END last; interims cumulative; one non-empty final per request id,
    after its interims; usage carries numbers."""
    kinds = run.kinds
    assert kinds[0] == T.START_OF_SPEECH
    assert kinds[-1] == T.END_OF_SPEECH
    speaking = False
    for k in kinds:
        if k == T.START_OF_SPEECH:
            assert not speaking
            speaking = True
        elif k == T.END_OF_SPEECH:
            assert speaking
            speaking = False
        elif k in (T.INTERIM_TRANSCRIPT, T.FINAL_TRANSCRIPT):
            assert speaking, "transcripts only between START and END of speech"
    finals: dict[str, str] = {}
    last_interim: dict[str, str] = {}
    order: list[str] = []
    for ev in run.events:
        if ev.type == T.INTERIM_TRANSCRIPT:
            rid = ev.request_id
            assert rid not in finals, "no interim after its segment's final"
            text = ev.alternatives[0].text
            assert text and text == text.strip()
            prev = last_interim.get(rid, "")
            assert text.startswith(prev), "interims are cumulative"
            last_interim[rid] = text
            if rid not in order:
                order.append(rid)
        elif ev.type == T.FINAL_TRANSCRIPT:
            rid = ev.request_id
            assert rid not in finals, "exactly one final per segment"
            text = ev.alternatives[0].text
            assert text.strip()
            finals[rid] = text
            if rid not in order:
                order.append(rid)
        elif ev.type == T.RECOGNITION_USAGE:
            assert ev.recognition_usage is not None
            assert ev.recognition_usage.audio_duration > 0
    assert set(last_interim) <= set(finals), "every segment that had interims was finalised"
    assert list(finals) == order, "segments finalise in the order they opened"
    assert len(set(finals)) == len(finals)


async def test_event_order_and_request_ids(engine: STT) -> None:
    speech = synthesize(SCRIPT, sample_rate=48000)
    run = await transcribe(engine, frames_of(speech, 10))
    check_event_rules(run)
    assert len(run.finals) >= 3
    usage = run.of(T.RECOGNITION_USAGE)
    assert usage
    assert all(u.recognition_usage and u.recognition_usage.input_tokens == 39 for u in usage)


def check_timestamps(run: Run, speech_words: list[tuple[str, float, float]]) -> None:
    words = [w for ev in run.finals for w in ev.alternatives[0].words or []]
    truth = [(t.strip(), s, e) for t, s, e in speech_words if t.strip() not in ".,?"]
    assert [str(w).rstrip(".,?") for w in words] == [t for t, _, _ in truth]
    for w, (_, start, end) in zip(words, truth, strict=True):
        assert abs(w.start_time - start) <= 0.08 + 1e-6, (str(w), w.start_time, start)
        assert abs(w.end_time - end) <= 0.08 + 1e-6, (str(w), w.end_time, end)
    for ev in run.finals:
        data = ev.alternatives[0]
        assert data.words
        assert data.start_time == data.words[0].start_time
        assert data.end_time == data.words[-1].end_time


async def test_timestamps_within_one_step(engine: STT) -> None:
    speech = synthesize(SCRIPT, sample_rate=48000)
    run = await transcribe(engine, frames_of(speech, 10))
    check_timestamps(run, [(w.text, w.start_s, w.end_s) for w in speech.words])


async def test_start_time_offset_shifts_timestamps(engine: STT) -> None:
    speech = synthesize("hello world.", sample_rate=48000)
    run = Run()
    stream = engine.stream()
    stream.start_time_offset = 100.0
    reader = asyncio.create_task(collect(stream, run))
    for f in frames_of(speech, 10):
        stream.push_frame(f)
    await end_and_wait(stream, reader)
    (final,) = run.finals
    assert 100.2 <= final.alternatives[0].start_time <= 100.4


async def test_second_utterance_does_not_wait_for_done(emulator: VLLMRealtimeEmulator) -> None:
    """A new utterance starting while the previous one finishes goes to a second socket."""
    emulator.step_time_s = 0.05  # right-pad steps take 17 x 50 ms after each final
    engine = STT(base_url=emulator.url)
    speech = synthesize(
        "hello world. <pause:700> thank you. <pause:700> good morning.", sample_rate=48000
    )
    run = await transcribe(engine, frames_of(speech, 10), realtime=True)
    await engine.aclose()
    assert normalize(run.text) == normalize(speech.text)
    gens = sorted(
        (g for c in emulator.connections for g in c.generations), key=lambda g: g.started_at
    )
    assert len(gens) == 3
    assert len(emulator.connections) >= 2
    # the second generation started before the first one's done
    assert gens[0].finished_at is not None and gens[1].started_at < gens[0].finished_at
    check_event_rules(run)


async def test_flush_ends_the_utterance_promptly(engine: STT) -> None:
    run = Run()
    stream = engine.stream()
    reader = asyncio.create_task(collect(stream, run))
    first = synthesize("hello world.", sample_rate=48000, tail_ms=60)
    for f in frames_of(first, 10):
        stream.push_frame(f)
    stream.flush()
    # no trailing silence was sent, yet the final comes
    for _ in range(200):
        if run.finals:
            break
        await asyncio.sleep(0.02)
    assert [e.alternatives[0].text for e in run.finals] == ["hello world."]
    second = synthesize("thank you.", sample_rate=48000)
    for f in frames_of(second, 10):
        stream.push_frame(f)
    await end_and_wait(stream, reader)
    assert [e.alternatives[0].text for e in run.finals] == ["hello world.", "thank you."]
    assert len({e.request_id for e in run.finals}) == 2


async def test_audio_pushed_right_after_flush_starts_the_next_utterance(engine: STT) -> None:
    # push_frame resamples and chunks at once, ahead of the input task: nothing pushed after
    # flush() may end up before it, even when all of it is queued before the task runs
    first = synthesize("hello world.", sample_rate=24000, tail_ms=30)
    second = synthesize("thank you.", sample_rate=24000, tail_ms=0)
    stream = engine.stream()
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    for f in frames_of(first, 50):
        stream.push_frame(f)
    stream.flush()
    for f in frames_of(second, 50):
        stream.push_frame(f)
    await asyncio.sleep(0.2)  # the input task takes the flush while "you." ends in the pipeline
    await end_and_wait(stream, reader)
    assert [e.alternatives[0].text for e in run.finals] == ["hello world.", "thank you."]


async def test_stall_timer_takes_queued_audio_first(emulator: VLLMRealtimeEmulator) -> None:
    # The stall timer flushes the pipeline, which push_frame keeps ahead of the input task:
    # chunks already queued must reach the core first (and then the input is not stalled).
    engine = STT(base_url=emulator.url, input_stall_s=0.1)
    first = synthesize("hello world.", sample_rate=24000, tail_ms=0)
    second = synthesize("thank you.", sample_rate=24000, tail_ms=0)
    stream = engine.stream()
    assert isinstance(stream, SpeechStream)
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    try:
        for f in frames_of(first, 50):
            stream.push_frame(f)
        await asyncio.sleep(0.05)  # the input task takes it all; the utterance is open
        time.sleep(0.15)  # blocks the loop: the stall is due, its timer cannot fire yet
        for f in frames_of(second, 50):
            stream.push_frame(f)
        stream._on_timer()  # the timer firing before the input task has run
        await asyncio.sleep(0.3)
        stream.end_input()
        await asyncio.wait_for(reader, 20)
    finally:
        await stream.aclose()
        await engine.aclose()
    assert run.text == "hello world. thank you."


async def test_a_frame_at_another_rate_is_refused_where_it_is_pushed(engine: STT) -> None:
    speech = synthesize("hello world.", sample_rate=48000)
    stream = engine.stream()
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    frames = frames_of(speech, 10)
    half = len(frames) // 2
    for f in frames[:half]:
        stream.push_frame(f)
    with pytest.raises(ValueError, match="changed from 48000 Hz to 16000 Hz"):
        stream.push_frame(rtc.AudioFrame(b"\x00\x00" * 160, 16000, 1, 160))
    for f in frames[half:]:  # the stream goes on with the frames at the right rate
        stream.push_frame(f)
    await end_and_wait(stream, reader)
    assert run.text == "hello world."


async def test_chunks_reach_the_core_in_push_frame_while_running(engine: STT) -> None:
    # the fast path: no queue and no task switch per chunk once _run takes input; before
    # that, chunks wait in the channel and arrive in order
    frames = frames_of(synthesize("hello world. thank you.", sample_rate=24000), 50)
    stream = engine.stream()
    assert isinstance(stream, SpeechStream)
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    for f in frames[:8]:  # 400 ms, queued: _run has not started
        stream.push_frame(f)
    assert stream._input_ch.qsize() >= 4
    for _ in range(100):
        await asyncio.sleep(0.01)
        if stream._core is not None and stream._input_ch.empty():
            break
    core = stream._core
    assert core is not None
    before = core.samples_received
    for f in frames[8:24]:  # 800 ms
        stream.push_frame(f)
    assert stream._input_ch.empty()
    assert core.samples_received == stream._pipeline.samples_out >= before + 9 * 1280
    for f in frames[24:]:
        stream.push_frame(f)
    await end_and_wait(stream, reader)
    assert run.text == "hello world. thank you."


async def test_end_input_without_speech_ends_the_iterator(engine: STT) -> None:
    silence = rtc.AudioFrame(b"\x00\x00" * 480, 48000, 1, 480)
    run = await transcribe(engine, [silence] * 100)
    assert run.events == []


async def test_aclose_mid_utterance_leaves_nothing_running(emulator: VLLMRealtimeEmulator) -> None:
    engine = STT(base_url=emulator.url)
    before = asyncio.all_tasks()
    stream = engine.stream()
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    speech = synthesize("hello world the meeting starts now", sample_rate=48000, tail_ms=0)
    for f in frames_of(speech, 10)[:150]:
        stream.push_frame(f)
        await asyncio.sleep(0)
    for _ in range(200):
        if run.interims:
            break
        await asyncio.sleep(0.01)
    assert run.interims
    await stream.aclose()
    await asyncio.wait_for(reader, 5)
    await engine.aclose()
    await asyncio.sleep(0.05)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    leftover.discard(asyncio.current_task())  # type: ignore[arg-type]
    assert not leftover, leftover
    await emulator.wait_until(lambda: not emulator.active_connections, timeout=5)


async def test_recognize_one_final_with_timestamps(engine: STT) -> None:
    speech = synthesize("good morning everyone. let us begin.", sample_rate=24000)
    frames = frames_of(speech, 20)
    ev = await engine.recognize(frames)
    assert ev.type == T.FINAL_TRANSCRIPT
    data = ev.alternatives[0]
    assert normalize(data.text) == normalize(speech.text)
    assert data.words
    truth = [w for w in speech.words if w.text.strip() not in ".,?"]
    for w, t in zip(data.words, truth, strict=True):
        assert abs(w.end_time - t.end_s) <= 0.08 + 1e-6


async def _first_error(engine: STT) -> BaseException:
    stream = engine.stream(conn_options=APIConnectOptions(max_retry=2, retry_interval=0.05))
    speech = synthesize("hello world.", sample_rate=48000)
    for f in frames_of(speech, 10):
        stream.push_frame(f)
    with pytest.raises(Exception) as info:
        async for _ in stream:
            pass
    await stream.aclose()
    return info.value


async def test_wrong_model_is_a_clear_non_retryable_error(emulator: VLLMRealtimeEmulator) -> None:
    engine = STT(base_url=emulator.url, model="mistralai/not-this-one")
    errors: list[stt.STTError] = []
    engine.on("error", errors.append)
    err = await _first_error(engine)
    await engine.aclose()
    assert isinstance(err, APIStatusError) and not err.retryable
    assert "not-this-one" in str(err)
    assert "mistralai/Voxtral-Mini-4B-Realtime-2602" in str(err)  # what the server serves
    assert len(errors) == 1 and not errors[0].recoverable  # within one attempt


async def test_wrong_api_key_is_a_clear_non_retryable_error() -> None:
    async with VLLMRealtimeEmulator(fast=True, api_key="right-key") as emu:
        for key in ("wrong-key", None):
            engine = STT(base_url=emu.url, api_key=key or "")
            errors: list[stt.STTError] = []
            engine.on("error", errors.append)
            err = await _first_error(engine)
            await engine.aclose()
            assert isinstance(err, APIStatusError) and err.status_code == 401
            assert not err.retryable
            assert "API key" in str(err)
            assert "wrong-key" not in str(err)
            assert len(errors) == 1


async def test_refused_connection_is_retryable_then_surfaces() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        url = emu.url
    engine = STT(base_url=url, discover_server=False, max_outage_s=0)
    errors: list[stt.STTError] = []
    engine.on("error", errors.append)
    err = await _first_error(engine)
    await engine.aclose()
    assert isinstance(err, APIConnectionError)
    assert errors and errors[0].recoverable  # LiveKit retried the stream first
    assert not errors[-1].recoverable


async def test_realtime_pacing_24k_50ms() -> None:
    async with VLLMRealtimeEmulator() as emu:  # real-time pacing (not fast)
        engine = STT(base_url=emu.url)
        speech = synthesize("hello world. <pause:800> thank you everyone.", sample_rate=24000)
        run = await transcribe(engine, frames_of(speech, 50), realtime=True)
        await engine.aclose()
    assert normalize(run.text) == normalize(speech.text)
    check_event_rules(run)
    # in real time, each utterance ends before the next starts: two speaking periods
    assert run.kinds.count(T.START_OF_SPEECH) == 2


async def test_recognize_wrong_model_lists_the_served_models(
    emulator: VLLMRealtimeEmulator,
) -> None:
    engine = STT(base_url=emulator.url, model="mistralai/not-this-one")
    speech = synthesize("hello world.", sample_rate=16000)
    with pytest.raises(APIStatusError) as info:
        await engine.recognize(frames_of(speech, 20))
    await engine.aclose()
    assert not info.value.retryable
    assert "not-this-one" in str(info.value)
    assert "The server serves: mistralai/Voxtral-Mini-4B-Realtime-2602" in str(info.value)


async def test_prewarm_opens_the_socket_the_first_stream_uses(
    emulator: VLLMRealtimeEmulator,
) -> None:
    engine = STT(base_url=emulator.url, socket_mode="warm")
    engine.prewarm()
    await emulator.wait_for_connection(0)
    speech = synthesize("hello world.", sample_rate=48000)
    run = await transcribe(engine, frames_of(speech, 10))
    await engine.aclose()
    assert normalize(run.text) == normalize(speech.text)
    assert emulator.connections[0].generations  # the prewarmed socket carried the speech
    assert emulator.stats().connections_total == 1


async def test_an_unused_prewarmed_socket_is_closed(emulator: VLLMRealtimeEmulator) -> None:
    engine = STT(base_url=emulator.url, socket_mode="warm")
    engine.prewarm()
    conn = await emulator.wait_for_connection(0)
    await engine.aclose()
    await conn.wait_closed(5)


async def test_prewarm_per_utterance_asks_the_server_but_opens_no_socket(
    emulator: VLLMRealtimeEmulator,
) -> None:
    engine = STT(base_url=emulator.url)  # socket_mode="per_utterance", the default
    engine.prewarm()
    await emulator.wait_until(lambda: emulator.stats().http_requests.get("/v1/models", 0) > 0)
    await asyncio.sleep(0.1)
    assert emulator.stats().connections_total == 0
    assert engine.server_info is not None
    await engine.aclose()


async def test_more_than_fifty_streams_in_a_livekit_job(emulator: VLLMRealtimeEmulator) -> None:
    """LiveKit's job HTTP session allows 50 connections per host; realtime sockets must not
    be bound by it (each stream holds a socket for its whole life)."""
    from livekit.agents import utils

    speech = synthesize("hello world.", sample_rate=48000, tail_ms=1000)
    frames = frames_of(speech, 20)
    async with utils.http_context.open():
        engine = STT(base_url=emulator.url)
        streams = [
            engine.stream(conn_options=APIConnectOptions(max_retry=0, timeout=3.0))
            for _ in range(55)
        ]
        runs = [Run(stream=s) for s in streams]
        readers = [asyncio.create_task(collect(s, r)) for s, r in zip(streams, runs, strict=True)]
        for f in frames:
            for s in streams:
                s.push_frame(f)
        # every stream must get its final while all 55 are still open (input not ended)
        deadline = asyncio.get_running_loop().time() + 15
        while not all(r.finals for r in runs):
            assert asyncio.get_running_loop().time() < deadline, "a stream never connected"
            await asyncio.sleep(0.05)
        for s in streams:
            s.end_input()
        await asyncio.wait_for(asyncio.gather(*readers), 20)
        for s in streams:
            await s.aclose()
        await engine.aclose()
    assert all(normalize(r.text) == normalize(speech.text) for r in runs)
