"""No silent failure and no silent stall: a server that never says ``session.created``, an
upgrade answered with an HTTP error, input that stops mid-utterance, a generation that stops
producing steps (vLLM 0.17-0.24's silent hang), and what discovery of the vLLM version changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from livekit.agents import APIConnectOptions, APIError, APIStatusError, stt

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, collect, frames_of, normalize, transcribe

T = stt.SpeechEventType
KEY = "sk-timeouts-0b9e41"


# -- helpers ----------------------------------------------------------------------------------


class TinyServer:
    """A bare aiohttp server on 127.0.0.1 whose ``/v1/realtime`` does what the test says."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.upgrades = 0


@asynccontextmanager
async def tiny_server(
    realtime: Callable[[web.Request, TinyServer], Awaitable[web.StreamResponse]],
) -> AsyncIterator[TinyServer]:
    server = TinyServer("")

    async def handler(request: web.Request) -> web.StreamResponse:
        server.upgrades += 1
        return await realtime(request, server)

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/realtime"
    try:
        yield server
    finally:
        await runner.cleanup()


async def silent(request: web.Request, server: TinyServer) -> web.StreamResponse:
    """Accept the WebSocket, read whatever comes, never say anything."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for _ in ws:
        pass
    return ws


def answer(status: int) -> Callable[[web.Request, TinyServer], Awaitable[web.StreamResponse]]:
    async def refuse(request: web.Request, server: TinyServer) -> web.StreamResponse:
        return web.Response(status=status, text=f"HTTP {status} from the test server")

    return refuse


async def run_until_error(
    engine: STT, conn: APIConnectOptions, timeout: float = 20.0
) -> tuple[BaseException, float, Run]:
    """Stream a short utterance (input left open) until the stream raises; the error, how long
    it took, and the events before it."""
    stream = engine.stream(conn_options=conn)
    run = Run()
    for f in frames_of(synthesize("hello world.", sample_rate=48000), 10):
        stream.push_frame(f)
    started = time.monotonic()
    try:
        with pytest.raises(APIError) as info:
            try:
                await asyncio.wait_for(collect(stream, run), timeout)
            except asyncio.TimeoutError:
                pytest.fail(f"the stream raised no error within {timeout:.1f}s")
    finally:
        await stream.aclose()
    return info.value, time.monotonic() - started, run


async def wait_for(cond: Callable[[], bool], timeout: float) -> float:
    """Wait until ``cond()``; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
    return time.monotonic()


# -- a server that never says session.created --------------------------------------------------


async def _silent_server_error(
    conn: APIConnectOptions, limit: float, **options: float
) -> tuple[BaseException, float, int, list[stt.STTError]]:
    async with tiny_server(silent) as server:
        engine = STT(base_url=server.url, **options)  # type: ignore[arg-type]
        errors: list[stt.STTError] = []
        engine.on("error", errors.append)
        err, elapsed, run = await run_until_error(engine, conn, timeout=limit)
        await engine.aclose()
        upgrades = server.upgrades
    # vLLM sends session.created on accept: a silent socket is the wrong endpoint, which
    # retrying cannot fix
    assert isinstance(err, APIStatusError) and not err.retryable
    assert "session.created" in str(err)
    assert server.url in str(err)
    assert not run.finals
    return err, elapsed, upgrades, errors


async def test_silent_server_fails_within_the_connect_timeout() -> None:
    timeout = 0.5
    conn = APIConnectOptions(max_retry=0, retry_interval=0.05, timeout=timeout)
    _, elapsed, upgrades, errors = await _silent_server_error(conn, 5.0, max_outage_s=0.0)
    assert upgrades == 1
    assert timeout <= elapsed < timeout + 1.0
    assert len(errors) == 1 and not errors[0].recoverable


async def test_silent_server_fails_within_the_connect_timeout_by_default() -> None:
    timeout = 0.5
    conn = APIConnectOptions(max_retry=0, retry_interval=0.05, timeout=timeout)
    _, elapsed, _, _ = await _silent_server_error(conn, timeout + 2.0)
    assert elapsed < timeout + 1.0


async def test_silent_server_is_not_retried() -> None:
    """A silent socket is the wrong endpoint: one attempt, even with retries to spare."""
    conn = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=0.4)
    _, elapsed, upgrades, errors = await _silent_server_error(
        conn, 5.0, max_outage_s=0.0, discover_server=False
    )
    assert upgrades == 1
    assert elapsed < conn.timeout + 0.5
    assert len(errors) == 1 and not errors[0].recoverable


# -- the upgrade answered with an HTTP error ---------------------------------------------------


@pytest.mark.parametrize(("status", "hint"), [(404, "base_url"), (403, "403")])
async def test_upgrade_refused_404_403_is_not_retried(status: int, hint: str) -> None:
    async with tiny_server(answer(status)) as server:
        engine = STT(base_url=server.url, discover_server=False)
        errors: list[stt.STTError] = []
        engine.on("error", errors.append)
        err, elapsed, _ = await run_until_error(
            engine, APIConnectOptions(max_retry=3, retry_interval=0.05, timeout=2.0)
        )
        await engine.aclose()
        upgrades = server.upgrades
    assert isinstance(err, APIStatusError)
    assert err.status_code == status and not err.retryable
    assert f"HTTP {status}" in str(err) and server.url in str(err) and hint in str(err)
    assert upgrades == 1, "a 4xx on the upgrade is not retried"
    assert len(errors) == 1 and not errors[0].recoverable
    assert elapsed < 1.0


async def test_upgrade_refused_500_is_retried_then_surfaces() -> None:
    conn = APIConnectOptions(max_retry=1, retry_interval=0.05, timeout=2.0)
    async with tiny_server(answer(500)) as server:
        # a 5xx is an outage (a proxy in front of a restarting vLLM): retried for max_outage_s
        engine = STT(base_url=server.url, discover_server=False, max_outage_s=0.0)
        errors: list[stt.STTError] = []
        engine.on("error", errors.append)
        err, elapsed, _ = await run_until_error(engine, conn, timeout=10.0)
        await engine.aclose()
        upgrades = server.upgrades
    assert isinstance(err, APIError)
    assert "HTTP 500" in str(err)
    assert upgrades >= 2, "a 5xx is retried"
    assert errors[0].recoverable and not errors[-1].recoverable
    assert elapsed < 10


async def test_upgrade_on_a_wrong_path_says_to_check_the_path() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.http_url + "/wrong-prefix", discover_server=False)
        err, _, _ = await run_until_error(
            engine, APIConnectOptions(max_retry=0, retry_interval=0.05, timeout=2.0)
        )
        await engine.aclose()
    assert isinstance(err, APIStatusError) and err.status_code == 403 and not err.retryable
    assert "path" in str(err) or "base_url" in str(err)


# -- no silent stall: input that stops mid-utterance ----------------------------------------------


async def _stall_mid_utterance(rate: int, frame_ms: int) -> tuple[str, str, Run]:
    """Push half a sentence (it stops inside the last word's tail), then nothing: no flush, no
    end_input. Returns the text of the finals the stall produced, the words heard, and the run
    once the input ended."""
    stall = 0.3
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, input_stall_s=stall)
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        half = synthesize("hello world the meeting", sample_rate=rate, tail_ms=0)
        for f in frames_of(half, frame_ms):
            stream.push_frame(f)
        last_push = time.monotonic()
        final_at = await wait_for(lambda: bool(run.finals), 5.0)
        await asyncio.sleep(0.1)
        at_stall = run.text
        gens = [g for c in emu.connections for g in c.generations]
        assert len(gens) == 1 and gens[0].final_received, "the stall sent the final commit"
        assert not reader.done(), "the stream stays open"
        stream.end_input()
        await asyncio.wait_for(reader, 5)
        await stream.aclose()
        await engine.aclose()
    assert stall - 0.05 <= final_at - last_push < stall + 1.0
    return at_stall, half.text, run


async def test_input_stall_mid_utterance_is_finalised_with_the_words_heard() -> None:
    # 16 kHz in whole 80 ms frames: nothing is held back between the frames and the core
    at_stall, heard, run = await _stall_mid_utterance(16000, 80)
    assert normalize(at_stall) == normalize(heard)
    assert normalize(run.text) == normalize(heard)
    assert run.kinds.count(T.END_OF_SPEECH) == 1


async def test_input_stall_at_48k_keeps_the_tail_of_the_last_word() -> None:
    at_stall, heard, run = await _stall_mid_utterance(48000, 10)
    assert normalize(at_stall) == normalize(heard)
    assert normalize(run.text) == normalize(heard)
    assert run.kinds.count(T.END_OF_SPEECH) == 1


async def test_speech_resuming_after_a_stall_is_transcribed() -> None:
    """The track unmutes mid-sentence: the rest is a new utterance, nothing is lost."""
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, input_stall_s=0.3)
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        first = synthesize("hello world the meeting", tail_ms=0)
        second = synthesize("starts now.", lead_ms=0)
        for f in frames_of(first, 80):
            stream.push_frame(f)
        await wait_for(lambda: bool(run.finals), 5.0)
        assert normalize(run.text) == normalize(first.text)
        for f in frames_of(second, 80):
            stream.push_frame(f)
        stream.end_input()
        await asyncio.wait_for(reader, 5)
        await stream.aclose()
        await engine.aclose()
    assert normalize(run.text) == normalize(first.text + second.text)


# -- no silent stall: a generation that stops producing steps -------------------------------------


async def test_vllm_0_24_silent_hang_is_detected_and_replayed() -> None:
    """vLLM 0.17-0.24: a pause in the audio longer than VLLM_ENGINE_ITERATION_TIMEOUT_S (60 s,
    0.2 s here) kills token feedback; the generation never advances nor sends done."""
    timeout = 1.0
    async with VLLMRealtimeEmulator(
        fast=True, vllm_version="0.24.0", engine_iteration_timeout_s=0.2
    ) as emu:
        engine = STT(base_url=emu.url, generation_timeout_s=timeout, input_stall_s=2.0)
        speech = synthesize(
            "hello world the meeting starts now. thank you everyone.", sample_rate=48000
        )
        frames = frames_of(speech, 10)
        cut = len(frames) // 2
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        for f in frames[:cut]:
            stream.push_frame(f)
        await emu.wait_until(lambda: bool(emu.connections and emu.connections[0].generations))
        await asyncio.sleep(0.4)  # a pause in the audio, longer than the engine's timeout
        for f in frames[cut:]:
            stream.push_frame(f)
        resumed = time.monotonic()
        stream.end_input()
        await emu.wait_until(lambda: any(g.hung for g in emu.connections[0].generations), 2)
        await asyncio.wait_for(reader, timeout + 5)
        elapsed = time.monotonic() - resumed
        await stream.aclose()
        await engine.aclose()
        conns = list(emu.connections)
    assert normalize(run.text) == normalize(speech.text)
    assert stream.stats.lost_generations >= 1
    assert len(conns) >= 2, "the lost generation was replayed on a new connection"
    assert conns[0].generations[0].hung and conns[0].generations[0].done_text is None
    assert timeout <= elapsed < timeout + 3.0


async def test_a_generation_that_stops_producing_steps_is_replayed() -> None:
    timeout = 1.0
    async with VLLMRealtimeEmulator(step_time_s=0.002) as emu:
        engine = STT(base_url=emu.url, generation_timeout_s=timeout)
        speech = synthesize(
            "good morning everyone. let us begin. <pause:300> next slide please.",
            sample_rate=48000,
        )
        frames = frames_of(speech, 10)
        stream = engine.stream()
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        cut = len(frames) // 2
        for f in frames[:cut]:
            stream.push_frame(f)
        await wait_for(lambda: bool(run.interims), 5)
        emu.step_time_s = 3600.0  # the engine stops stepping; the socket stays healthy
        stalled = time.monotonic()
        for f in frames[cut:]:
            stream.push_frame(f)
            await asyncio.sleep(0.001)
        await emu.wait_until(lambda: len(emu.connections) >= 2, timeout + 2)
        detected = time.monotonic() - stalled
        emu.step_time_s = 0.002  # the replacement server is healthy
        stream.end_input()
        await asyncio.wait_for(reader, 10)
        await stream.aclose()
        await engine.aclose()
        first = emu.connections[0]
    assert normalize(run.text) == normalize(speech.text)
    assert timeout * 0.9 <= detected < timeout + 1.5
    assert stream.stats.lost_generations >= 1
    assert not first.is_open and first.generations[0].done_text is None


# -- what discovery of the vLLM version changes ------------------------------------------------


async def _transcribe(engine: STT, text: str, conn: APIConnectOptions | None = None) -> Run:
    speech = synthesize(text, sample_rate=48000)
    stream = engine.stream(conn_options=conn) if conn else engine.stream()
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    for f in frames_of(speech, 10):
        stream.push_frame(f)
    stream.end_input()
    try:
        await asyncio.wait_for(reader, 20)
    finally:
        await stream.aclose()
    assert normalize(run.text) == normalize(speech.text)
    return run


async def test_version_is_read_once_per_stt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm")
    async with VLLMRealtimeEmulator(fast=True, vllm_version="0.24.0") as emu:
        engine = STT(base_url=emu.url)
        await _transcribe(engine, "hello world.")
        await asyncio.gather(
            _transcribe(engine, "thank you."), _transcribe(engine, "good morning.")
        )
        await _transcribe(engine, "let us begin.")
        assert engine.server_info is not None and engine.server_info.version == "0.24.0"
        once = emu.stats().http_requests
        other = STT(base_url=emu.url)
        await _transcribe(other, "next slide.")
        twice = emu.stats().http_requests
        await engine.aclose()
        await other.aclose()
    assert once.get("/version") == 1 and once.get("/v1/models") == 1
    assert twice.get("/version") == 2
    # the quirks of 0.24 are described once per STT, not once per stream
    hang_notes = [r for r in caplog.records if "hangs silently" in r.getMessage()]
    assert len(hang_notes) == 2
    assert all("0.24.0" in r.getMessage() for r in hang_notes)


async def test_vllm_0_19_with_an_api_key_is_refused_naming_version_and_fix() -> None:
    async with VLLMRealtimeEmulator(fast=True, vllm_version="0.19.0", api_key=KEY) as emu:
        engine = STT(base_url=emu.url, api_key=KEY)
        errors: list[stt.STTError] = []
        engine.on("error", errors.append)
        err, elapsed, _ = await run_until_error(
            engine, APIConnectOptions(max_retry=3, retry_interval=0.05, timeout=2.0)
        )
        await engine.aclose()
        upgrades = emu.stats().http_requests.get("/v1/realtime", 0)
    assert isinstance(err, APIStatusError) and not err.retryable
    message = str(err)
    assert "0.19.0" in message and "--api-key" in message
    assert "0.20" in message and "upgrade" in message.lower()
    assert KEY not in message
    assert upgrades == 0, "no WebSocket is tried against a server known to fail them all"
    assert len(errors) == 1 and not errors[0].recoverable
    assert elapsed < 2.0


async def test_vllm_0_19_without_an_api_key_works() -> None:
    async with VLLMRealtimeEmulator(fast=True, vllm_version="0.19.0") as emu:
        engine = STT(base_url=emu.url)
        await _transcribe(engine, "hello world.")
        await engine.aclose()


LONG_UTTERANCE = " <pause:500> ".join(
    ["hello world the meeting starts now.", "we can hear the quick brown fox."] * 3
    + ["thank you everyone."]
)  # ~14 s, pauses shorter than min_silence_ms: one utterance of ~175 steps


async def _rollover_on_0_31(burst: bool) -> tuple[Run, str, bool, int, list[int]]:
    steps = 100
    async with VLLMRealtimeEmulator(
        fast=True, vllm_version="0.31.0", max_model_len=39 + steps
    ) as emu:
        engine = STT(base_url=emu.url, min_silence_ms=1500)  # max_model_len not given
        speech = synthesize(LONG_UTTERANCE, sample_rate=48000)
        stream = engine.stream(conn_options=APIConnectOptions(max_retry=0, timeout=5.0))
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        for i, f in enumerate(frames_of(speech, 10)):
            stream.push_frame(f)
            if not burst and i % 10 == 9:
                await asyncio.sleep(0.005)  # 100 ms of audio every 5 ms: 20x real time
        stream.end_input()
        try:
            await asyncio.wait_for(reader, 20)
        except APIError:
            pass
        assert engine._opts.max_model_len is None
        await stream.aclose()
        await engine.aclose()
        gens = [g.steps for c in emu.connections for g in c.generations]
        dead = emu.engine_dead or emu.stats().engine_deaths > 0
    return run, speech.text, dead, steps, gens


async def test_vllm_0_31_rollover_without_being_told_max_model_len(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """< 0.32 kills the engine (every session on the server) at max_model_len: the plugin,
    told nothing, learns the limit from /v1/models and rolls over before it."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm")
    run, text, dead, steps, gens = await _rollover_on_0_31(burst=False)
    assert not dead
    assert normalize(run.text) == normalize(text)
    assert all(g <= steps for g in gens)
    assert len(gens) >= 2, "the long utterance was rolled over"
    assert len(run.of(T.START_OF_SPEECH)) == 1
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "0.31.0" in notes and "max_model_len" in notes


async def test_vllm_0_31_a_burst_of_audio_never_overruns_max_model_len() -> None:
    run, text, dead, steps, gens = await _rollover_on_0_31(burst=True)
    assert not dead
    assert all(g <= steps for g in gens)
    assert normalize(run.text) == normalize(text)


async def test_vllm_0_31_without_a_reported_limit_assumes_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When /v1/models does not list the model (here: name validation skipped on the server and
    another name used), a < 0.32 server still gets a limit, with a warning."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm")
    async with VLLMRealtimeEmulator(
        fast=True, vllm_version="0.31.0", skip_model_name_validation=True
    ) as emu:
        engine = STT(base_url=emu.url, model="alias-the-server-does-not-list")
        speech = synthesize("hello world.", sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 10), timeout=10)
        assert isinstance(run.stream, SpeechStream)
        core = run.stream._core
        await engine.aclose()
    assert normalize(run.text) == normalize(speech.text)
    assert core is not None and core._opts.max_model_len == 4096
    assert any("assuming 4096" in r.getMessage() for r in caplog.records)


async def test_vllm_0_33_has_no_quirk_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm")
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url)
        await _transcribe(engine, "hello world.")
        await engine.aclose()
    assert not [r for r in caplog.records if r.getMessage().startswith("vLLM 0.33")]
