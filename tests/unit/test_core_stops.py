"""StreamCore when vLLM (>= 0.32) stops EVERY generation at max_model_len after 12-21 steps
(issue 11), in scripts without spaces: no character lost or written twice.

The continuation after a kept character resumes in the gap after it. That character's end
is placed from its token's step, which may be early (a character's token comes out at the
step covering its end); a cut from that end alone fell inside the character, and the next
generation heard it again ("今天在在公园").
"""

from __future__ import annotations

import os
import random

import pytest

from livekit_plugins_voxtral_vllm.testing import RealtimeEngine, StepMath, synthesize
from livekit_plugins_voxtral_vllm.testing.speech import ToneDecoder

from .test_stream_core import Harness, harness

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

SCRIPTS = {
    "zh": "你好 大家 ， 今天 在 公园 散步 。 <pause:900> 2026 年 北京 会议 开始 😀 吧 。",
    "ja": "こんにちは 皆さん 、 今日 は 公園 を 散歩 です 。 <pause:900> "
    "2026 年 東京 会議 始まります 😀 。",
}


# (the seeds that wrote a character twice before the fix, and a few that did not;
# I11_SEEDS=100 runs seeds 0-99 in both languages too)
_MORE = range(int(os.environ.get("I11_SEEDS", "0")))


@pytest.mark.parametrize(
    ("language", "seed"),
    [("zh", 2), ("zh", 19), ("zh", 31), ("ja", 31), ("zh", 0), ("ja", 0), ("ja", 1)]
    + [(lang, seed) for seed in _MORE for lang in ("zh", "ja")],
)
def test_every_generation_stopped_every_character_once(language: str, seed: int) -> None:
    rng = random.Random(seed)
    steps = [rng.randint(12, 21) for _ in range(300)]
    prompt = StepMath(480).prompt_tokens

    def stop(engine: RealtimeEngine, index: int) -> None:
        # a stopped generation's socket is not reused: one engine per generation
        engine.math = StepMath(480, prompt + steps[index])

    h = harness(decoder_factory=lambda: ToneDecoder(16000, language=language), on_engine=stop)
    speech = synthesize(SCRIPTS[language], language=language)
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert h.core.finished
    assert h.core.stats.unsolicited_done >= 3
    assert "".join(f.caption.text for f in h.finals()) == speech.text.strip()


@pytest.mark.parametrize("version", ["0.31.0", "0.33.0"])
def test_rollover_after_a_character_split_off_by_the_next_words_onset(version: str) -> None:
    """Dense Japanese at the smallest limits (the property test's counterexample): the next
    word began while the last token of a 4-token word ("ます") was still coming out, so that
    token became a unit of its own with the next word's onset, and the next word, taken out
    at a rollover, was placed after it: the cut fell inside the next word, which was lost.
    The split-off run is now replayed with it. (One more word at the end than the sweep's
    script: since the last stretch before a generation's allowance is held back for a quiet
    point, that one ends before a rollover is due.)"""
    w = "聞こえます"
    script = f"{w} {w} {w} {w} <pause:400> 2026 {w} {w} <pause:400> {w} {w} 。"
    h = harness(
        transcription_delay_ms=80,
        max_model_len=111,
        engine_max_model_len=111,
        version=version,
        decoder_factory=lambda: ToneDecoder(16000, language="ja"),
    )
    speech = synthesize(script, language="ja")
    h.push(speech.samples)
    h.end()
    h.advance(5.0)
    assert h.core.finished
    assert h.core.stats.rollovers >= 1
    assert "".join(f.caption.text for f in h.finals()) == speech.text.strip()


def _stopped(
    script: str, max_model_len: int, steps: list[int], language: str = "ja", delay: int = 480
) -> Harness:
    """Dense ``script`` at ``max_model_len``, the client told, while vLLM stops the
    generations of engine ``i`` after ``steps[i]`` steps (a lower max_model_len it was not
    told, as the sweep's ``--stop-every 62,80`` does); ``end_input()`` right after the audio."""
    prompt = StepMath(delay).prompt_tokens

    def stop(engine: RealtimeEngine, index: int) -> None:
        engine.math = StepMath(delay, prompt + steps[index % len(steps)])

    h = harness(
        on_engine=stop,
        transcription_delay_ms=delay,
        max_model_len=max_model_len,
        engine_max_model_len=max_model_len,
        decoder_factory=lambda: ToneDecoder(16000, language=language),
    )
    h.push(synthesize(script, language=language).samples)
    h.end()
    h.advance(5.0)
    return h


def test_full_stop_after_an_allowance_split_whose_generation_vllm_stopped() -> None:
    """A generation split at its allowance (the next one carries its caption on) was then
    stopped by vLLM inside its last word, and the generation replaying that word took its
    place, but not the hand-over: it closed the caption when it finished, and the next
    generation's first token, the full stop, had no caption to join and was dropped
    (limits_sweep --delays 480 --stop-every 62,80, seeds 417 and 1613)."""
    script = (
        "😀 <pause:900> ラーメン <pause:900> ラーメン 😀 ラーメン 2026 <pause:1500> ラーメン "
        "ラーメン <pause:1500> スライド ラーメン 2026 <pause:900> スライド <pause:900> 始まります "
        "<pause:400> 新幹線 <pause:400> 新幹線 コーヒー <pause:150> 新幹線 <pause:400> ラーメン "
        "<pause:150> スライド 始まります 新幹線 <pause:400> 😀 2026 。"
    )
    h = _stopped(script, 125, [72, 64, 74, 67, 73, 73, 72, 66])
    assert h.core.finished
    assert h.core.stats.rollovers >= 1 and h.core.stats.unsolicited_done >= 1
    assert h.core.stats.dropped_punctuation == 0
    want = synthesize(script, language="ja").text.strip()
    assert "".join(f.caption.text for f in h.finals()) == want


@pytest.mark.parametrize(
    ("script", "max_model_len", "steps"),
    [
        (  # 新幹線 came out as 新 (limits_sweep --delays 480 --stop-every 62,80, seed 480)
            "スライド 新幹線 コーヒー <pause:1500> コーヒー 😀 😀 聞こえます <pause:400> "
            "聞こえます 2026 聞こえます 聞こえます <pause:400> 😀 <pause:150> 2026 コーヒー "
            "始まります <pause:400> 新幹線 <pause:400> 始まります <pause:900> コーヒー "
            "聞こえます <pause:1500> ラーメン 。",
            157,
            [74, 80, 71, 78, 76, 68],
        ),
        (  # 2026 came out as 202 (seed 744)
            "2026 <pause:1500> 聞こえます ラーメン 新幹線 😀 <pause:400> 新幹線 😀 2026 "
            "<pause:400> ラーメン スライド <pause:150> ラーメン スライド <pause:400> 2026 😀 "
            "始まります <pause:1500> スライド 新幹線 <pause:1500> 始まります <pause:150> "
            "コーヒー <pause:150> 始まります 。",
            155,
            [71, 79, 72, 78, 65, 62],
        ),
    ],
    ids=["新幹線", "2026"],
)
def test_stopped_inside_a_word_after_dense_speech_replays_that_word(
    script: str, max_model_len: int, steps: list[int]
) -> None:
    """vLLM stopped a generation of dense Japanese inside a word that came out alone, after
    a pause, at least a shortest word after its own onset. Taking it out, the segmenter also
    took out the run it came behind (as if that run had taken this word's onset), then that
    run's own, and so on back to the generation's start: a replay from there would make no
    progress, so the incomplete word was kept as it was and the rest of it lost. A unit that
    surely began at its onset now ends the chain, and only the word is replayed."""
    h = _stopped(script, max_model_len, steps)
    assert h.core.finished
    assert h.core.stats.unsolicited_done >= 1
    want = synthesize(script, language="ja").text.strip()
    assert "".join(f.caption.text for f in h.finals()) == want


def test_stopped_after_dense_speech_whose_runs_reach_back_to_its_start() -> None:
    """vLLM stopped a generation of dense Japanese right after "😀😀202620262026😀" (six
    spoken words written as one, its onset taken by the run before it). Every run before it
    may be part of it (each came right behind the one before, or is a glued digit run), back
    to the generation's start: a replay from there makes no progress, so the run was kept as
    it was, and the next generation started after its first spoken word, by its placed end,
    and wrote the other five again (limits_sweep --delays 480 --stop-every 62,80, seed 3128).
    The runs nearest it that still move on are now replayed with it."""
    script = (
        "新幹線 <pause:400> コーヒー <pause:900> 聞こえます コーヒー <pause:900> ラーメン 2026 "
        "<pause:150> ラーメン <pause:150> 2026 <pause:400> 始まります コーヒー コーヒー 😀 "
        "<pause:400> 😀 2026 <pause:150> 2026 <pause:400> 2026 <pause:400> 😀 ラーメン "
        "<pause:150> 始まります 。"
    )
    h = _stopped(script, 128, [62, 65, 78, 71, 77, 79])
    assert h.core.finished
    assert h.core.stats.unsolicited_done >= 1
    want = synthesize(script, language="ja").text.strip()
    assert "".join(f.caption.text for f in h.finals()) == want
