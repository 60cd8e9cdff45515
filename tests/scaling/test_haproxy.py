"""Several emulated vLLM replicas (real processes) behind a real HAProxy running the repository's
``deploy/haproxy.cfg``, and behind the plugin's own endpoint list.

Each test asserts every word exactly once; the failover tests also bound how long the stream
goes silent. The figures they print (``-s``) are in the README and the notes: measured on a
shared 2-core machine, so the bounds are loose.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from livekit.agents import APIConnectOptions, stt

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.testing import VOCABULARY, SynthesizedSpeech, synthesize

from ..integration.helpers import frames_of, normalize
from .cluster import (
    REPO_ROOT,
    HAProxy,
    Replica,
    need_haproxy,
    start_haproxy,
    start_replicas,
)

API_SCRIPT = REPO_ROOT / "deploy" / "haproxy-api.sh"

WORDS = [w for w in VOCABULARY if w not in ".,?"]
FRAME_MS = 20
CONN = APIConnectOptions(max_retry=5, retry_interval=0.1, timeout=5.0)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    need_haproxy()
    reps = await start_replicas(3, tmp_path)
    try:
        yield reps
    finally:
        for r in reps:
            r.terminate()


@pytest.fixture
async def lb(replicas: list[Replica], tmp_path: Path) -> AsyncIterator[HAProxy]:
    proxy = await start_haproxy(replicas, tmp_path)
    try:
        yield proxy
    finally:
        proxy.stop()


def utterances(seed: int, count: int, words: int, pause_ms: int = 1200) -> SynthesizedSpeech:
    """``count`` sentences of ``words`` words, each followed by a pause that ends it."""
    rng = random.Random(seed)
    tokens: list[str] = []
    for _ in range(count):
        tokens += [rng.choice(WORDS) for _ in range(words)] + ["."]
        tokens.append(f"<pause:{pause_ms}>")
    return synthesize(tokens, sample_rate=48000, seed=seed)


@dataclass
class Timeline:
    """A stream's events with the (monotonic) time each arrived."""

    events: list[tuple[float, stt.SpeechEvent]] = field(default_factory=list)
    stream: SpeechStream | None = None
    pace: float = 0.0
    """x real time (0: as fast as possible); may change while it speaks"""

    @property
    def text(self) -> str:
        return " ".join(
            e.alternatives[0].text
            for _, e in self.events
            if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT
        )

    def first_text_after(self, t: float) -> float | None:
        for at, e in self.events:
            if at > t and e.type in (
                stt.SpeechEventType.INTERIM_TRANSCRIPT,
                stt.SpeechEventType.FINAL_TRANSCRIPT,
            ):
                return at
        return None


async def speak(engine: STT, speech: SynthesizedSpeech, timeline: Timeline, pace: float) -> None:
    """Push ``speech`` at ``pace`` x real time (0: as fast as possible), gather every event."""
    timeline.pace = pace
    stream = engine.stream(conn_options=CONN)
    assert isinstance(stream, SpeechStream)
    timeline.stream = stream

    async def read() -> None:
        async for ev in stream:
            timeline.events.append((time.monotonic(), ev))

    reader = asyncio.create_task(read())
    try:
        for i, frame in enumerate(frames_of(speech, FRAME_MS)):
            stream.push_frame(frame)
            if timeline.pace:
                await asyncio.sleep(FRAME_MS / 1000 / timeline.pace)
            elif i % 25 == 24:
                await asyncio.sleep(0)
        stream.end_input()
        await asyncio.wait_for(reader, 60)
    finally:
        reader.cancel()
        await stream.aclose()


def assert_exact(timeline: Timeline, speech: SynthesizedSpeech) -> None:
    got, want = normalize(timeline.text).split(), normalize(speech.text).split()
    assert got == want, f"got {got}\nwant {want}"


async def busy_replica(lb: HAProxy, timeout: float = 10.0) -> str:
    """The replica that accepted the (only) WebSocket: the one HAProxy counted a 101 for
    (open sessions would also count discovery's HTTP requests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        upgraded = [name for name, row in (await lb.stats()).items() if int(row["hrsp_1xx"] or 0)]
        if len(upgraded) == 1:
            return upgraded[0]
        assert len(upgraded) < 2, f"more than one WebSocket: {upgraded}"
        await asyncio.sleep(0.02)
    raise AssertionError(f"no WebSocket upgrade within {timeout}s")


def by_name(replicas: list[Replica], name: str) -> Replica:
    return next(r for r in replicas if r.name == name)


async def test_spread_of_utterances_over_replicas(lb: HAProxy, replicas: list[Replica]) -> None:
    """20 streams x 2 utterances, one socket per utterance: HAProxy's leastconn spreads the 40
    generations within 25 % of even over the 3 replicas."""
    engine = STT(base_url=lb.url, socket_mode="per_utterance")
    speeches = [utterances(seed, 2, 4) for seed in range(20)]
    timelines = [Timeline() for _ in speeches]
    try:
        await asyncio.gather(
            *(speak(engine, sp, tl, pace=3.0) for sp, tl in zip(speeches, timelines, strict=True))
        )
    finally:
        await engine.aclose()
    for sp, tl in zip(speeches, timelines, strict=True):
        assert_exact(tl, sp)
    for r in replicas:
        r.terminate()  # flushes the send logs
    counts = {r.name: len(r.starts()) for r in replicas}
    total = sum(counts.values())
    print(f"\nspread of {total} generations over 3 replicas: {counts}")
    assert total == 40, counts  # one generation per utterance, none replayed
    even = total / len(replicas)
    assert all(0.75 * even <= n <= 1.25 * even for n in counts.values()), counts


async def crash_and_measure(
    engine: STT, replicas: list[Replica], find_busy: object, *, freeze: bool = False
) -> tuple[Timeline, SynthesizedSpeech, str, float, float]:
    """One stream speaking a long utterance at real time; its replica is killed (or frozen)
    mid-utterance. Returns the timeline, the speech, the victim, the fault's time and how long
    the stream went without new text after it."""
    speech = utterances(7, 2, 10, pause_ms=900)
    timeline = Timeline()
    task = asyncio.create_task(speak(engine, speech, timeline, pace=1.5))
    try:
        assert callable(find_busy)
        victim: str = await find_busy(timeline)
        # mid-utterance: after some text came back from the victim
        deadline = time.monotonic() + 10
        while not any(e.type == stt.SpeechEventType.INTERIM_TRANSCRIPT for _, e in timeline.events):
            assert time.monotonic() < deadline, "no interim from the first replica"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        at = time.monotonic()
        if freeze:
            by_name(replicas, victim).freeze()
        else:
            by_name(replicas, victim).kill()
        await asyncio.sleep(0.3)
        timeline.pace = 6.0  # the rest need not take real time
        await task
    finally:
        if not task.done():
            task.cancel()
    resumed = timeline.first_text_after(at)
    assert resumed is not None, "no text after the fault"
    return timeline, speech, victim, at, resumed - at


async def test_crash_of_a_replica_behind_haproxy(lb: HAProxy, replicas: list[Replica]) -> None:
    """kill -9 of the replica serving a stream mid-utterance: HAProxy closes the client side,
    the plugin reconnects (HAProxy sends it to a live replica) and replays from the last
    final: every word once, text again within 2 s."""
    engine = STT(base_url=lb.url, socket_mode="per_utterance")

    async def find(_: Timeline) -> str:
        return await busy_replica(lb)

    try:
        timeline, speech, victim, _, gap = await crash_and_measure(engine, replicas, find)
    finally:
        await engine.aclose()
    print(f"\nhaproxy, kill -9 of {victim}: text again {gap * 1000:.0f} ms after the kill")
    assert_exact(timeline, speech)
    assert timeline.stream is not None and timeline.stream.stats.reconnects >= 1
    assert gap < 2.0


async def test_freeze_of_a_replica_behind_haproxy(lb: HAProxy, replicas: list[Replica]) -> None:
    """SIGSTOP of the replica serving a stream: HAProxy's health check marks it down
    (inter 1 s, fall 2) and shuts its sessions; the stream replays elsewhere, every word once."""
    engine = STT(base_url=lb.url, socket_mode="per_utterance")

    async def find(_: Timeline) -> str:
        return await busy_replica(lb)

    try:
        timeline, speech, victim, at, gap = await crash_and_measure(
            engine, replicas, find, freeze=True
        )
        rows = await lb.stats()
    finally:
        await engine.aclose()
    print(f"\nhaproxy, SIGSTOP of {victim}: text again {gap * 1000:.0f} ms after the freeze")
    assert rows[victim]["status"].startswith("DOWN"), rows[victim]["status"]
    assert_exact(timeline, speech)
    assert gap < 6.0  # health check: ~2-3 s; the plugin's own watchdog would take 10 s


async def test_drain_sends_no_new_utterances(lb: HAProxy, replicas: list[Replica]) -> None:
    """A replica set to drain through the runtime API finishes the utterance it runs and gets
    no new one."""
    engine = STT(base_url=lb.url, socket_mode="per_utterance")
    long = utterances(11, 1, 16)
    first = Timeline()
    try:
        task = asyncio.create_task(speak(engine, long, first, pace=2.0))
        victim = await busy_replica(lb)
        # the documented way: deploy/haproxy-api.sh (`docker compose exec lb haproxy-api ...`)
        await asyncio.to_thread(
            subprocess.run,
            [str(API_SCRIPT), "set", "server", f"{lb.backend}/{victim}", "state", "drain"],
            env={**os.environ, "HAPROXY_API": f"127.0.0.1:{lb.api_port}"},
            check=True,
        )
        drained_at = time.monotonic()
        await lb.wait_status(victim, "DRAIN", timeout=2)
        others = [utterances(100 + i, 2, 3) for i in range(6)]
        timelines = [Timeline() for _ in others]
        await asyncio.gather(
            *(speak(engine, sp, tl, pace=4.0) for sp, tl in zip(others, timelines, strict=True))
        )
        await task
    finally:
        await engine.aclose()
    assert_exact(first, long)
    assert first.stream is not None and first.stream.stats.reconnects == 0
    for sp, tl in zip(others, timelines, strict=True):
        assert_exact(tl, sp)
    for r in replicas:
        r.terminate()
    drained = by_name(replicas, victim)
    assert drained.starts(), "the drained replica never ran the first utterance"
    late = [t for t in drained.starts() if t > drained_at]
    assert late == [], f"{victim} started {len(late)} generations after it was set to drain"
    assert sum(len(r.starts()) for r in replicas) == 1 + 12


@pytest.mark.parametrize("socket_mode", ["warm", "per_utterance"])
async def test_crash_with_the_plugins_endpoint_list(
    replicas: list[Replica], socket_mode: str
) -> None:
    """No proxy: ``base_url`` lists the 3 replicas. kill -9 of the stream's replica
    mid-utterance: the stream moves to another (the dead one is in cooldown), every word once,
    text again within 2 s."""
    engine = STT(
        base_url=[r.url for r in replicas],
        socket_mode=socket_mode,  # type: ignore[arg-type]
    )
    names = {r.url: r.name for r in replicas}

    async def find(timeline: Timeline) -> str:
        deadline = time.monotonic() + 10
        while timeline.stream is None or timeline.stream.endpoint is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return names[timeline.stream.endpoint]

    try:
        timeline, speech, victim, _, gap = await crash_and_measure(engine, replicas, find)
    finally:
        await engine.aclose()
    print(f"\nendpoint list ({socket_mode}), kill -9 of {victim}: text again {gap * 1000:.0f} ms")
    assert_exact(timeline, speech)
    assert timeline.stream is not None
    assert timeline.stream.endpoint is not None and names[timeline.stream.endpoint] != victim
    assert gap < 2.0


async def test_freeze_with_the_plugins_endpoint_list(replicas: list[Replica]) -> None:
    """No proxy, SIGSTOP of the stream's replica: no health check sees it, the plugin's own
    watchdog (``generation_timeout_s``) does; the lane's fault puts that replica in cooldown
    and the stream replays on another, every word once."""
    engine = STT(base_url=[r.url for r in replicas], generation_timeout_s=2.0)
    names = {r.url: r.name for r in replicas}

    async def find(timeline: Timeline) -> str:
        deadline = time.monotonic() + 10
        while timeline.stream is None or timeline.stream.endpoint is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return names[timeline.stream.endpoint]

    try:
        timeline, speech, victim, _, gap = await crash_and_measure(
            engine, replicas, find, freeze=True
        )
    finally:
        await engine.aclose()
    print(f"\nendpoint list, SIGSTOP of {victim}: text again {gap * 1000:.0f} ms (watchdog 2 s)")
    assert_exact(timeline, speech)
    assert timeline.stream is not None
    assert timeline.stream.endpoint is not None and names[timeline.stream.endpoint] != victim
    assert timeline.stream.stats.lost_generations >= 1
    assert gap < 2.0 + 2.0
