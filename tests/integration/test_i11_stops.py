"""Issue 11: vLLM (>= 0.32) stops generations at max_model_len with an unsolicited ``done``
after 12-21 steps, through the real STT, in scripts with and without spaces: every word and
character exactly once."""

from __future__ import annotations

import os
import random

import pytest

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import frames_of, transcribe

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

# CI runs 4 seeds per case; I11_SEEDS=40 runs more
SEEDS = range(int(os.environ.get("I11_SEEDS", "4")))

SCRIPTS = {
    "en": "hello world , 2026 😀 don't stop the meeting now . <pause:900> "
    "we can hear the quick brown fox . thank you everyone .",
    "zh": "你好 大家 ， 今天 在 公园 散步 。 <pause:900> 2026 年 北京 会议 开始 😀 吧 。",
    "ja": "こんにちは 皆さん 、 今日 は 公園 を 散歩 です 。 <pause:900> "
    "2026 年 東京 会議 始まります 😀 。",
}


async def _run(language: str, limit: dict[int, int]) -> None:
    async with VLLMRealtimeEmulator(fast=True, language=language) as emu:
        emu.generation_max_steps = limit.get
        engine = STT(base_url=emu.url, language=language)
        script = SCRIPTS[language] + " <pause:900> " + SCRIPTS[language]
        speech = synthesize(script, language=language, sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 20), timeout=60.0)
        await engine.aclose()
        assert emu.generations_started > 4  # the stops were hit
    text = " ".join(e.alternatives[0].text for e in run.finals)
    assert text.replace(" ", "") == speech.text.replace(" ", "")


@pytest.mark.parametrize("parity", [0, 1], ids=["first", "continuations"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("language", sorted(SCRIPTS))
async def test_max_model_len_stops_every_other_generation(
    language: str, seed: int, parity: int
) -> None:
    """Every other generation (the utterance's own, or the continuations) is stopped. Our
    final commit, and the audio sent after the server stopped, then wait in vLLM's queue
    (§2.2 rules 6-7): a continuation on that socket would hear them first, its steps
    shifted against the audio we count, and words would repeat or swap (this failed before
    the stopped generation's socket was retired)."""
    rng = random.Random(seed)
    await _run(language, {i: rng.randint(12, 21) for i in range(parity, 200, 2)})


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("language", sorted(SCRIPTS))
async def test_max_model_len_stops_every_generation(language: str, seed: int) -> None:
    """Every generation stopped, continuations included (40 seeds each passed when this
    was written; before the cut after a kept character reached the gap, 9 of 120 wrote a
    character twice, e.g. 今天在在公园)."""
    rng = random.Random(seed)
    await _run(language, {i: rng.randint(12, 21) for i in range(200)})
