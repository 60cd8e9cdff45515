"""Issue 13: a generation is rolled over once it has taken ``max_generation_s`` of audio, so
vLLM's per-step cost (which grows with the generation, vllm-project/vllm#58324) stays bounded
however long someone speaks; no word is lost or repeated."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from livekit.agents import APIConnectOptions

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.stream_core import StreamStats
from livekit_plugins_voxtral_vllm.testing import VOCABULARY, VLLMRealtimeEmulator, synthesize
from livekit_plugins_voxtral_vllm.testing.speech import MARKERS, SynthesizedSpeech

from .helpers import Run, collect, frames_of, normalize

WORDS = sorted(w for w in VOCABULARY if w not in MARKERS)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)


def monologue(seconds: float, pause_ms: int, seed: int = 13, mark: str = ".") -> str:
    """Sentences of 4-9 words, each followed by ``pause_ms`` of silence: shorter than the
    endpointer's 600 ms, so the whole monologue is one utterance."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0.0
    while total < seconds:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        parts.append(" ".join(sentence) + mark)
        total += sum(min(120 + 30 * len(w), 360) + 60 for w in sentence) / 1000 + 0.15
        total += pause_ms / 1000
    return f" <pause:{pause_ms}> ".join(parts)


async def keep_pace(stream: SpeechStream) -> None:
    """500 ms of audio at a time, as fast as the emulator keeps up (far faster than real
    time): a server that falls behind would get its backlog dropped (the catch-up policy)."""
    await asyncio.sleep(0.001)
    for _ in range(2000):
        if stream.stats.lag_s <= 0.5:
            return
        await asyncio.sleep(0.001)


async def transcribe_paced(
    emu: VLLMRealtimeEmulator,
    speech: SynthesizedSpeech,
    timeout: float,
    conn_options: APIConnectOptions | None = None,
    **options: Any,
) -> tuple[Run, StreamStats]:
    """Push ``speech`` in 50 ms frames, keeping pace with the emulator; the run and stats."""
    engine = STT(base_url=emu.url, **options)
    stream = engine.stream() if conn_options is None else engine.stream(conn_options=conn_options)
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    for i, frame in enumerate(frames_of(speech, 50)):
        stream.push_frame(frame)
        if i % 10 == 9:
            await keep_pace(stream)
    stream.end_input()
    await asyncio.wait_for(reader, timeout)
    stats = stream.stats
    await stream.aclose()
    await engine.aclose()
    return run, stats


async def test_a_ten_minute_monologue_rolls_over_every_minute_with_every_word_once() -> None:
    speech = synthesize(monologue(600, pause_ms=450), sample_rate=16000)
    assert speech.samples.size / 16000 >= 600
    async with VLLMRealtimeEmulator(fast=True, record_audio=False) as emu:
        run, stats = await transcribe_paced(
            emu, speech, 120, conn_options=NO_RETRY, max_generation_s=60
        )
        generations = [g for c in emu.connections for g in c.generations]
        errors = emu.stats().errors
    assert normalize(run.text) == normalize(speech.text)  # every word, once, in order
    assert stats.rollovers >= 9
    assert stats.lost_generations == 0 and stats.dropped_audio_s == 0
    assert not errors
    # no generation ran much past the cap: each was cut at the first caption pause after it
    longest = max(g.audio_samples for g in generations) / 16000
    assert 60 <= longest < 60 + 6, longest
    assert len(generations) >= 10


async def test_no_cap_means_one_generation() -> None:
    speech = synthesize(monologue(75, pause_ms=450), sample_rate=16000)
    async with VLLMRealtimeEmulator(fast=True, record_audio=False) as emu:
        run, stats = await transcribe_paced(emu, speech, 60, max_generation_s=None)
    assert normalize(run.text) == normalize(speech.text)
    assert stats.rollovers == 0 and stats.generations == 1
    assert stats.dropped_audio_s == 0


async def test_with_no_caption_pause_it_cuts_in_a_gap_after_a_word() -> None:
    """No sentence-final marks and pauses far shorter than ``max_pause_s``: no caption ever
    ends at a pause. After the grace (20 s past the cap) the generation is cut in the first
    gap after a word."""
    speech = synthesize(monologue(200, pause_ms=200, seed=7, mark=""), sample_rate=16000)
    async with VLLMRealtimeEmulator(fast=True, record_audio=False) as emu:
        run, stats = await transcribe_paced(
            emu, speech, 60, conn_options=NO_RETRY, max_generation_s=30
        )
        generations = [g for c in emu.connections for g in c.generations]
    assert normalize(run.text) == normalize(speech.text)
    assert stats.rollovers >= 3
    assert stats.lost_generations == 0 and stats.dropped_audio_s == 0
    longest = max(g.audio_samples for g in generations) / 16000
    assert 50 <= longest < 30 + 20 + 3, longest
