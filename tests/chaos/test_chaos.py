"""Chaos: minutes of synthesized speech through one stream while the emulated vLLM restarts,
drops connections, loses generations, hits max_model_len, falls behind and sends garbage.
Every test asserts the exact final text (every word once, in order) and bounded state.

Faults fire at seeded audio positions, so every run is reproducible.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest
from livekit.agents import APIConnectOptions

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.testing import (
    VOCABULARY,
    EmulatedConnection,
    SynthesizedSpeech,
    VLLMRealtimeEmulator,
    synthesize,
)

from ..integration.helpers import Run, collect, frames_of, normalize

WORDS = [w for w in VOCABULARY if w not in ".,?"]
FRAME_MS = 20
CONN = APIConnectOptions(max_retry=5, retry_interval=0.1, timeout=5.0)

Fault = Callable[[VLLMRealtimeEmulator], Awaitable[None]]


def script(seed: int, seconds: float, max_pause_ms: int = 1500) -> SynthesizedSpeech:
    """Random sentences with random pauses, about ``seconds`` long."""
    rng = random.Random(seed)
    tokens: list[str] = []
    total = 0.0
    while total < seconds:
        n = rng.randint(3, 9)
        sentence = [rng.choice(WORDS) for _ in range(n)]
        tokens += sentence + [rng.choice([".", "?", ".", ","])]
        pause = rng.randint(100, max_pause_ms)
        tokens.append(f"<pause:{pause}>")
        total += n * 0.33 + 0.15 + pause / 1000
    return synthesize(tokens, sample_rate=48000, seed=seed)


class Bounds:
    """Samples the stream's core while it runs: its state must stay small."""

    def __init__(self) -> None:
        self.max_order = 0
        self.max_pending = 0
        self.max_lanes = 0
        self.dropped_s = 0.0

    def sample(self, stream: SpeechStream) -> None:
        core = stream._core
        if core is None:
            return
        self.max_order = max(self.max_order, len(core._order))
        self.max_pending = max(self.max_pending, sum(len(g.pending) for g in core._order))
        self.max_lanes = max(self.max_lanes, core.open_lanes)
        # audio counted as never transcribed: never negative, never shrinking
        dropped = core.stats.dropped_audio_s
        assert 0.0 <= self.dropped_s <= dropped, (self.dropped_s, dropped)
        self.dropped_s = dropped

    def check(self) -> None:
        # utterances queue during an outage, but only as many as the 20 s history holds
        assert self.max_order <= 16
        assert self.max_lanes <= 2
        assert self.max_pending <= 2000  # held deltas of a generation waiting its turn


async def run_chaos(
    emu: VLLMRealtimeEmulator,
    speech: SynthesizedSpeech,
    faults: dict[int, Fault],
    *,
    speedup: float = 25.0,
    engine: STT | None = None,
) -> tuple[Run, SpeechStream]:
    """Stream ``speech`` at ``speedup`` x real time; run ``faults[i]`` before frame ``i``."""
    own = engine is None
    # (the producer pauses in wall time while a fault runs and the plugin reconnects: that is
    # not a stalled track, which input_stall_s would end the utterance for)
    engine = engine or STT(base_url=emu.url, input_stall_s=30.0)
    stream = engine.stream(conn_options=CONN)
    run = Run()
    bounds = Bounds()
    reader = asyncio.create_task(collect(stream, run))
    frames = frames_of(speech, FRAME_MS)
    batch = 10
    try:
        for i, frame in enumerate(frames):
            fault = faults.get(i)
            if fault is not None:
                await fault(emu)
                await reconnected(stream)
            stream.push_frame(frame)
            if i % batch == batch - 1:
                bounds.sample(stream)
                await asyncio.sleep(batch * FRAME_MS / 1000 / speedup)
        stream.end_input()
        await asyncio.wait_for(reader, 60)
    finally:
        reader.cancel()
        await stream.aclose()
        if own:
            await engine.aclose()
    bounds.sample(stream)
    bounds.check()
    assert 0.0 <= stream.stats.dropped_audio_s <= speech.samples.size / speech.sample_rate
    return run, stream


async def reconnected(stream: SpeechStream, timeout_s: float = 10.0) -> None:
    """Wait (in wall time, with no audio pushed) until connects refused during a fault have
    given way to a session again.

    The audio runs 25x faster than real time, so the 20 s history is 0.8 s of wall time: a
    reconnect backoff grown by a few refused attempts (a restart that took a while on a
    loaded machine) would otherwise outlast the history, and the audio it no longer holds
    is dropped by design (counted in ``stats.dropped_audio_s``). In real time the same
    backoff is a small fraction of the history. No audio arrives while we wait, so what the
    plugin must replay after the fault is the same however long the reconnect takes (the
    engines run_chaos makes do not take the pause for a stalled track)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        core = stream._core
        if core is None or not core._reconnects.failures:
            return
        await asyncio.sleep(0.01)


def schedule(seed: int, n_frames: int, count: int, fault: Fault) -> dict[int, Fault]:
    rng = random.Random(seed)
    points = sorted(rng.sample(range(50, n_frames - 50), count))
    return dict.fromkeys(points, fault)


def assert_exact(run: Run, speech: SynthesizedSpeech) -> None:
    got, want = normalize(run.text).split(), normalize(speech.text).split()
    assert got == want, _diff(got, want)
    rids = [e.request_id for e in run.finals]
    assert len(rids) == len(set(rids)), "one final per segment"
    assert all(e.alternatives[0].text.strip() for e in run.finals)


def _diff(got: list[str], want: list[str]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"first difference at word {i}: got {got[i : i + 8]} want {want[i : i + 8]}"
    return f"lengths differ: got {len(got)} words, want {len(want)}"


async def restart(emu: VLLMRealtimeEmulator) -> None:
    await emu.restart()


async def drop_running(emu: VLLMRealtimeEmulator) -> None:
    for conn in emu.active_connections:
        gen = conn.generation
        if gen is not None and gen.running:
            conn.drop()


async def processing_error(emu: VLLMRealtimeEmulator) -> None:
    for conn in emu.active_connections:
        gen = conn.generation
        if gen is not None and gen.running:
            conn.inject_processing_error("CUDA error: an illegal memory access was encountered")


MALFORMED = [
    "not json at all",
    "[1, 2, 3]",
    '{"type": "transcription.delta"}',
    '{"type": "response.created", "response": {}}',
    '{"type": "error", "error": "Invalid audio data", "code": "invalid_audio"}',
    '{"type": "error", "error": "something odd", "code": null}',
    '{"type": "session.created", "id": "sess-0000000000000000", "created": 1}',
]


def malformed(seed: int) -> Fault:
    rng = random.Random(seed)

    async def send(emu: VLLMRealtimeEmulator) -> None:
        for conn in emu.active_connections:
            conn.send_text(rng.choice(MALFORMED))

    return send


@pytest.mark.parametrize("seed", [1, 2])
async def test_server_restarts(seed: int) -> None:
    """10 crashes and restarts per run (20 across the suite), at random points."""
    async with VLLMRealtimeEmulator(fast=True) as emu:
        speech = script(seed, 150)
        n = len(speech.frames(FRAME_MS))
        run, stream = await run_chaos(emu, speech, schedule(seed, n, 10, restart))
        assert emu.stats().restarts == 10
    assert stream.stats.dropped_audio_s == 0  # (else words are lost by design: not this test)
    assert_exact(run, speech)
    assert stream.stats.reconnects >= 10


async def slow_restart(emu: VLLMRealtimeEmulator) -> None:
    """A crash, then the server is down for 2 s before it is back (connects refused)."""
    await emu.stop()
    await asyncio.sleep(2.0)
    await emu.start()


async def test_slow_restarts_replay_from_the_history() -> None:
    """Connects refused for a while grow the reconnect backoff; what the server missed is
    replayed from the history once it is back, every word once (the harness gives the
    backoff its wall time: see reconnected())."""
    async with VLLMRealtimeEmulator(fast=True) as emu:
        speech = script(12, 60)
        n = len(speech.frames(FRAME_MS))
        run, stream = await run_chaos(emu, speech, schedule(12, n, 3, slow_restart))
    assert stream.stats.dropped_audio_s == 0
    assert_exact(run, speech)
    assert stream.stats.reconnects >= 3


async def test_dropped_connections_mid_generation() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        speech = script(3, 150)
        n = len(speech.frames(FRAME_MS))
        run, stream = await run_chaos(emu, speech, schedule(3, n, 15, drop_running))
    assert_exact(run, speech)
    assert stream.stats.lost_generations >= 5


async def test_processing_errors() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        speech = script(4, 120)
        n = len(speech.frames(FRAME_MS))
        run, stream = await run_chaos(emu, speech, schedule(4, n, 12, processing_error))
    assert_exact(run, speech)
    assert stream.stats.lost_generations >= 5


async def test_malformed_frames_are_ignored() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        speech = script(5, 90)
        n = len(speech.frames(FRAME_MS))
        run, stream = await run_chaos(emu, speech, schedule(5, n, 40, malformed(5)))
    assert_exact(run, speech)
    assert stream.stats.malformed_messages + stream.stats.server_errors >= 10


async def test_tiny_max_model_len_rolls_over_many_times() -> None:
    """The plugin learns max_model_len from /v1/models and rolls over before it."""
    async with VLLMRealtimeEmulator(fast=True, max_model_len=39 + 120) as emu:
        speech = script(6, 150, max_pause_ms=550)  # long utterances: pauses < min_silence
        run, stream = await run_chaos(emu, speech, {})
        gens = [g for c in emu.connections for g in c.generations]
        assert all(g.finished_reason is None or g.steps <= 120 for g in gens)
    assert_exact(run, speech)
    assert stream.stats.rollovers >= 3


async def test_unsolicited_done_is_continued() -> None:
    """The plugin does not know max_model_len: vLLM >= 0.32 stops the generation itself."""
    async with VLLMRealtimeEmulator(fast=True, max_model_len=39 + 120) as emu:
        engine = STT(base_url=emu.url, discover_server=False)
        speech = script(7, 150, max_pause_ms=550)
        run, stream = await run_chaos(emu, speech, {}, engine=engine)
        await engine.aclose()
    assert_exact(run, speech)
    assert stream.stats.unsolicited_done >= 3


async def test_old_vllm_engine_never_dies_at_max_model_len() -> None:
    """vLLM < 0.32 kills every session at max_model_len: rollover must always come first."""
    async with VLLMRealtimeEmulator(
        fast=True, max_model_len=39 + 150, vllm_version="0.31.0"
    ) as emu:
        speech = script(8, 120, max_pause_ms=550)
        run, stream = await run_chaos(emu, speech, {})
        assert not emu.engine_dead
        assert emu.stats().engine_deaths == 0
    assert_exact(run, speech)
    assert stream.stats.rollovers >= 2


def stall(speech: SynthesizedSpeech, seconds: float) -> dict[int, Fault]:
    """The server does no step while the client sends ``seconds`` of audio (inside the
    longest stretch of speech, so one generation runs throughout): a lag of that size,
    whatever the machine's load does to either side's speed."""
    words = speech.words
    runs: list[tuple[float, float]] = []
    first = 0
    for i in range(1, len(words) + 1):
        if i == len(words) or words[i].start_s - words[i - 1].end_s > 0.5:
            runs.append((words[first].start_s, words[i - 1].end_s))
            first = i
    lo, hi = max(runs, key=lambda r: r[1] - r[0])
    begin = lo + 1.0
    assert begin + seconds + 1.0 <= hi, "the script has no stretch of speech long enough"
    at: list[tuple[EmulatedConnection, int, float]] = []

    async def freeze(emu: VLLMRealtimeEmulator) -> None:
        # the newest socket with a generation: the live utterance's (per_utterance sockets)
        conn = [c for c in emu.active_connections if c.generation is not None][-1]
        at.append((conn, conn.audio_samples, emu.step_time_s))
        emu.step_time_s = 3600.0  # no step until thawed

    async def thaw(emu: VLLMRealtimeEmulator) -> None:
        conn, before, step_time = at[0]
        want = before + int((seconds - 0.1) * 16000)
        # (frames pushed are sent by the stream's own task: wait until they reached the server)
        for _ in range(500):
            if conn.audio_samples >= want:
                break
            await asyncio.sleep(0.01)
        assert conn.audio_samples >= want, "the stalled server never got the audio"
        emu.step_time_s = step_time

    start = int(begin * 1000) // FRAME_MS
    return {start: freeze, start + int(seconds * 1000) // FRAME_MS: thaw}


async def test_slow_server_lags_without_losing_words() -> None:
    """Steps slower than the audio: lag builds (and is measured) but nothing is lost.

    How far a server 20 % slower than the client falls behind depends on how fast the client
    really pushes, which CPU load changes (on a busy machine it measured 0.4 s); a stall of
    1.5 s of audio inside one utterance makes a lag of at least that, whatever the load."""
    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.step_time_s = 0.004  # 250 steps/s, while audio arrives at ~310 steps/s
        engine = STT(base_url=emu.url, max_lag_s=60.0, lag_policy="wait")
        speech = script(9, 60)
        run, stream = await run_chaos(emu, speech, stall(speech, 1.5), engine=engine)
        await engine.aclose()
    assert_exact(run, speech)
    assert stream.stats.peak_lag_s > 1.0


async def test_everything_at_once() -> None:
    async with VLLMRealtimeEmulator(fast=True, max_model_len=39 + 200) as emu:
        speech = script(10, 180, max_pause_ms=900)
        n = len(speech.frames(FRAME_MS))
        rng = random.Random(10)
        faults: dict[int, Fault] = {}
        kinds: list[Fault] = [restart, drop_running, processing_error, malformed(10)]
        for point in sorted(rng.sample(range(50, n - 50), 24)):
            faults[point] = rng.choice(kinds)
        run, _ = await run_chaos(emu, speech, faults)
    assert_exact(run, speech)


async def test_a_burst_longer_than_the_history_into_a_capped_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stalled producer delivers 44 s at once while the generation is capped by a small
    max_model_len: audio the 20 s history cannot hold is dropped, counted and logged, never a
    crash."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm")
    speech = script(11, 45, max_pause_ms=450)
    frames = frames_of(speech, FRAME_MS)
    async with VLLMRealtimeEmulator(fast=True, max_model_len=256, record_audio=False) as emu:
        engine = STT(base_url=emu.url)
        stream = engine.stream(conn_options=CONN)
        run = Run()
        reader = asyncio.create_task(collect(stream, run))
        for f in frames[:50]:
            stream.push_frame(f)
        await asyncio.sleep(0.5)
        for f in frames[50:]:
            stream.push_frame(f)
        stream.end_input()
        await asyncio.wait_for(reader, 60)  # raises if the stream failed
        await stream.aclose()
        await engine.aclose()
    assert stream.stats.dropped_audio_s > 1.0
    lost = [r for r in caplog.records if "left the 20s history" in r.getMessage()]
    assert lost and all(r.levelno == logging.WARNING for r in lost)
    got = normalize(run.text).split()
    assert got and got[-3:] == normalize(speech.text).split()[-3:]  # kept going to the end
