"""Several endpoints in one ``STT`` (no proxy), against in-process emulators: options, the
choice of endpoint, per-endpoint discovery and failover on each kind of failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from livekit.agents import APIConnectOptions, APIStatusError

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import frames_of, normalize, transcribe

CONN = APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=3.0)
MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[VLLMRealtimeEmulator, VLLMRealtimeEmulator]]:
    async with VLLMRealtimeEmulator(fast=True) as a, VLLMRealtimeEmulator(fast=True) as b:
        yield a, b


def speech(text: str = "hello world . <pause:900> good morning everyone .") -> object:
    return synthesize(text.split(), sample_rate=48000)


def sessions(emu: VLLMRealtimeEmulator) -> int:
    return emu.stats().connections_total


class TestOptions:
    def test_a_list_and_the_env_var(self, monkeypatch: pytest.MonkeyPatch) -> None:
        stt = STT(base_url=["gpu-1:8000", "gpu-2:8000"])
        assert stt.endpoints == ("ws://gpu-1:8000/v1/realtime", "ws://gpu-2:8000/v1/realtime")
        assert stt.base_url == "ws://gpu-1:8000/v1/realtime"
        assert "gpu-2" in repr(stt)
        monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", "ws://a:1,ws://b:2")
        assert STT().endpoints == ("ws://a:1/v1/realtime", "ws://b:2/v1/realtime")

    @pytest.mark.parametrize(
        ("base_url", "match"),
        [
            ([], "empty list"),
            (["ws://a:1", "ws://a:1/v1/realtime"], r"entry 2 .* same server as entry 1"),
            (["ws://a:1", "wss://b:2"], r"entry 2 \('wss://b:2'\) uses wss://"),
            (["ws://a:1", "ws://b:x"], r"entry 2 \('ws://b:x'\).*invalid port"),
            ("ws://a:1,,ws://b:2", r"entry 2 \(''\) is empty"),
        ],
    )
    def test_bad_lists(self, base_url: object, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            STT(base_url=base_url)  # type: ignore[arg-type]

    def test_bad_socket_mode_and_cooldown(self) -> None:
        with pytest.raises(ValueError, match="socket_mode must be 'warm' or 'per_utterance'"):
            STT(socket_mode="pooled")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="endpoint_cooldown_s must be a number >= 0.1"):
            STT(endpoint_cooldown_s=0)


async def test_streams_start_on_random_endpoints(
    pair: tuple[VLLMRealtimeEmulator, VLLMRealtimeEmulator],
) -> None:
    a, b = pair
    sp = speech()
    engine = STT(base_url=[a.url, b.url])
    try:
        runs = await asyncio.gather(*(transcribe(engine, frames_of(sp, 20)) for _ in range(12)))
    finally:
        await engine.aclose()
    for run in runs:
        assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
    # each stream starts on a random endpoint: both get some (p(fail) ~ 5e-4)
    assert sessions(a) >= 2 and sessions(b) >= 2


async def test_a_dead_endpoint_in_the_list_is_skipped(
    pair: tuple[VLLMRealtimeEmulator, VLLMRealtimeEmulator],
) -> None:
    a, b = pair
    await b.stop()  # refuses connections
    sp = speech()
    engine = STT(base_url=[a.url, b.url])
    failed_connects = 0
    try:
        for _ in range(4):
            run = await transcribe(engine, frames_of(sp, 20), conn_options=CONN)
            assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
            assert run.stream is not None
            failed_connects += run.stream.stats.reconnects  # type: ignore[attr-defined]
    finally:
        await engine.aclose()
    # at most one stream tries the dead endpoint: the pool (shared) skips it afterwards
    assert failed_connects <= 1
    assert sessions(a) >= 4


async def test_a_processing_error_moves_the_stream_to_another_endpoint(
    pair: tuple[VLLMRealtimeEmulator, VLLMRealtimeEmulator],
) -> None:
    a, b = pair
    sp = speech("the quick brown fox jumps over the lazy dog . good morning everyone .")
    engine = STT(base_url=[a.url, b.url])
    stream = engine.stream(conn_options=CONN)
    try:
        frames = frames_of(sp, 20)  # type: ignore[arg-type]
        events = []

        async def read() -> None:
            async for ev in stream:
                events.append(ev)

        reader = asyncio.create_task(read())
        for i, frame in enumerate(frames):
            stream.push_frame(frame)
            if i == 60:
                await asyncio.sleep(0.2)
                first = stream.endpoint
                emu = a if first == a.url else b
                for conn in emu.active_connections:
                    conn.inject_processing_error("CUDA error: an illegal memory access")
            await asyncio.sleep(0.002)
        stream.end_input()
        await asyncio.wait_for(reader, 20)
    finally:
        await stream.aclose()
        await engine.aclose()
    text = " ".join(e.alternatives[0].text for e in events if e.type.name == "FINAL_TRANSCRIPT")
    assert normalize(text) == normalize(sp.text)  # type: ignore[attr-defined]
    assert stream.stats.lost_generations == 1
    assert stream.endpoint != first


async def test_discovery_per_endpoint_skips_one_that_does_not_serve_the_model() -> None:
    async with (
        VLLMRealtimeEmulator(fast=True, served_model_name="someone/else") as wrong,
        VLLMRealtimeEmulator(fast=True, max_model_len=2048) as small,
        VLLMRealtimeEmulator(fast=True, max_model_len=8192) as big,
    ):
        sp = speech()
        engine = STT(base_url=[wrong.url, small.url, big.url])
        try:
            for _ in range(4):
                run = await transcribe(engine, frames_of(sp, 20), conn_options=CONN)
                assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
                stream = run.stream
                assert stream is not None and stream._core is not None
                # a generation may continue on either: the smaller limit applies
                assert stream._core._opts.max_model_len == 2048
            assert sessions(wrong) == 0
            info = engine.endpoint_info(wrong.url)
            assert info is not None and info.models[0].id == "someone/else"
        finally:
            await engine.aclose()


async def test_no_endpoint_serves_the_model() -> None:
    async with (
        VLLMRealtimeEmulator(fast=True, served_model_name="x/one") as one,
        VLLMRealtimeEmulator(fast=True, served_model_name="x/two") as two,
    ):
        engine = STT(base_url=[one.url, two.url])
        try:
            with pytest.raises(APIStatusError) as err:
                await transcribe(engine, frames_of(speech(), 20), conn_options=CONN)  # type: ignore[arg-type]
        finally:
            await engine.aclose()
    msg = str(err.value)
    assert one.url in msg and two.url in msg and MODEL in msg and "x/two" in msg


async def test_max_outage_counts_every_endpoint_down(
    pair: tuple[VLLMRealtimeEmulator, VLLMRealtimeEmulator],
) -> None:
    a, b = pair
    await a.stop()
    await b.stop()
    engine = STT(base_url=[a.url, b.url], max_outage_s=1.0, discover_server=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(Exception, match="could not reach the vLLM server"):
            await transcribe(
                engine,
                frames_of(speech(), 20),  # type: ignore[arg-type]
                conn_options=APIConnectOptions(max_retry=0, retry_interval=0.1, timeout=2.0),
            )
    finally:
        await engine.aclose()
    assert loop.time() - started >= 1.0


# -- a replica that refuses the model (model_not_found) ------------------------------------------


async def test_a_replica_refusing_the_model_is_skipped_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad deploy after discovery: one replica now serves another model and answers
    session.update with model_not_found. The refused utterance goes to the other replica,
    every word once; the replica is skipped for a cooldown and logged once, not fatal."""
    async with VLLMRealtimeEmulator(fast=True) as bad, VLLMRealtimeEmulator(fast=True) as good:
        sp = speech()
        engine = STT(base_url=[bad.url, good.url])
        try:
            run = await transcribe(engine, frames_of(sp, 20), conn_options=CONN)  # discovery
            assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
            bad.served_model_names = ("someone/else",)  # the bad deploy
            before = sessions(bad)
            # make the next stream start on the bad replica
            engine._pool.failed(good.url, asyncio.get_running_loop().time(), "test")
            with caplog.at_level("INFO", logger="livekit.plugins.voxtral_vllm"):
                refused = 0
                for i in range(3):
                    run = await transcribe(engine, frames_of(sp, 20), conn_options=CONN)
                    assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
                    assert run.stream is not None
                    assert run.stream.stats.lost_generations == 0  # type: ignore[attr-defined]
                    assert run.stream.endpoint == good.url  # type: ignore[attr-defined]
                    if i == 0:
                        refused = sessions(bad) - before
        finally:
            await engine.aclose()
    # refused on the sockets opened before the first refusal came (one per lane), then skipped
    assert 1 <= refused <= 2 and sessions(bad) - before == refused
    skipped = [r for r in caplog.records if "skipping vLLM endpoint" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelname == "WARNING"
    assert bad.url in skipped[0].getMessage() and MODEL in skipped[0].getMessage()
    assert "model_not_found" in skipped[0].getMessage()


async def test_a_refusing_replica_is_tried_again_after_its_cooldown() -> None:
    async with (
        VLLMRealtimeEmulator(fast=True, served_model_name="someone/else") as bad,
        VLLMRealtimeEmulator(fast=True) as good,
    ):
        sp = speech()
        engine = STT(base_url=[bad.url, good.url], discover_server=False, endpoint_cooldown_s=0.3)
        loop = asyncio.get_running_loop()
        try:
            engine._pool.failed(good.url, loop.time(), "test")
            run = await transcribe(engine, frames_of(sp, 20), conn_options=CONN)
            assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
            assert 1 <= sessions(bad) <= 2 and bad.url in engine._facts.excluded
            bad.served_model_names = (MODEL,)  # the deploy is fixed
            await asyncio.sleep(0.4)
            engine._pool.failed(good.url, loop.time(), "test")
            run = await transcribe(engine, frames_of(sp, 20), conn_options=CONN)
            assert normalize(run.text) == normalize(sp.text)  # type: ignore[attr-defined]
            assert run.stream is not None and run.stream.endpoint == bad.url  # type: ignore[attr-defined]
            assert bad.url not in engine._facts.excluded
        finally:
            await engine.aclose()


async def test_every_replica_refusing_the_model_is_a_configuration_error() -> None:
    """No discovery up front: both replicas refuse the session; the error names the model,
    each replica and what each serves (asked when the stream fails)."""
    async with (
        VLLMRealtimeEmulator(fast=True, served_model_name="x/one") as one,
        VLLMRealtimeEmulator(fast=True, served_model_name="x/two") as two,
    ):
        engine = STT(base_url=[one.url, two.url], discover_server=False)
        try:
            with pytest.raises(APIStatusError) as err:
                await transcribe(engine, frames_of(speech(), 20), conn_options=CONN)  # type: ignore[arg-type]
        finally:
            await engine.aclose()
        assert 1 <= sessions(one) <= 2 and 1 <= sessions(two) <= 2  # (a lane each, no loop)
    msg = str(err.value)
    assert not err.value.retryable and err.value.status_code == 404
    assert f"no vLLM endpoint serves model {MODEL!r}" in msg
    assert f"{one.url} serves x/one" in msg and f"{two.url} serves x/two" in msg
    assert "model=" in msg


async def test_recognize_retries_on_another_replica_when_one_refuses_the_model() -> None:
    async with (
        VLLMRealtimeEmulator(fast=True, served_model_name="someone/else") as bad,
        VLLMRealtimeEmulator(fast=True) as good,
    ):
        sp = speech("hello world . good morning everyone .")
        engine = STT(base_url=[bad.url, good.url], discover_server=False)
        try:
            engine._pool.failed(good.url, asyncio.get_running_loop().time(), "test")
            ev = await engine.recognize(frames_of(sp, 20), conn_options=CONN)  # type: ignore[arg-type]
        finally:
            await engine.aclose()
        assert sessions(bad) == 1 and sessions(good) == 1
    assert normalize(ev.alternatives[0].text) == normalize(sp.text)  # type: ignore[attr-defined]
