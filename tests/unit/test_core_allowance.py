"""StreamCore at a generation's max_model_len allowance in unbroken speech: the next
generation never starts inside a word the kept text does not hold whole.

A generation near its allowance holds back its last 480 ms of audio and ends at the quietest
point of it. When audio was already sent past that window (max_model_len learned after the
generation started, from a late discovery answer), the quiet point had to be found in what
was left before the allowance, which can lie inside a word: the split fell there, the word
was heard in part by both generations and written by neither (the soak lost an `a` this way
before the hold-back window existed). Such a split is now made after the last whole word
instead, and that word is replayed.
"""

from __future__ import annotations

import logging
import random

import pytest

from livekit_plugins_voxtral_vllm.context_budget import ContextBudget
from livekit_plugins_voxtral_vllm.stream_core import CoreOptions
from livekit_plugins_voxtral_vllm.testing import lexicon, synthesize
from livekit_plugins_voxtral_vllm.testing.speech import burst_ms

from .test_stream_core import harness

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

RATE = 16000
WORDS = (
    "the quick brown fox jumps over the lazy dog and thank you everyone welcome to the update"
).split()


def _room_s(max_model_len: int) -> float:
    opts = CoreOptions(model="m")
    room = ContextBudget(
        max_model_len,
        transcription_delay_ms=opts.transcription_delay_ms,
        pad_steps=opts.transcription_delay_ms // 80 + 11,
        rollover_fraction=opts.rollover_fraction,
    ).room
    assert room is not None
    return room / RATE


def _monologue(breath_ms: int) -> str:
    """About 24 s of words with only the synthesizer's 60 ms gaps between them, but for one
    breath (too short to end the utterance) after the first two words."""
    words = [WORDS[i % len(WORDS)] for i in range(80)]
    return " ".join([*words[:2], f"<pause:{breath_ms}>", *words[2:]])


@pytest.mark.parametrize("into_word_ms", [40, 70, 100])
@pytest.mark.parametrize("version", ["0.31.0", "0.33.0"])
def test_allowance_learned_late_never_splits_inside_a_word(into_word_ms: int, version: str) -> None:
    max_model_len = 256
    room = _room_s(max_model_len)
    preroll = 0.3
    # Place the script so that the generation's allowance ends ``into_word_ms`` + 30 ms
    # into a word (it starts at the first word's onset less the pre-roll).
    speech = None
    for breath in range(100, 400):
        cand = synthesize(_monologue(breath))
        onset = cand.words[0].start_s
        cap_at = onset - preroll + room
        word = next((w for w in cand.words if w.start_s <= cap_at < w.end_s), None)
        if word is None or word.end_s - word.start_s < 0.2:
            continue
        if abs((cap_at - word.start_s) - (into_word_ms + 30) / 1000) < 0.0015:
            speech = cand
            break
    assert speech is not None, "no placement found"
    h = harness(
        max_model_len=None,  # not known yet: discovery has not answered
        engine_max_model_len=max_model_len,
        version=version,
    )
    # all the audio up to 30 ms before the allowance is sent before max_model_len is known
    sent = int(round((cap_at - 0.03) * RATE))
    h.push(speech.samples[:sent])
    live = h.core._live
    assert live is not None and abs(live.start / RATE - (onset - preroll)) < 0.011
    h.core.set_server_facts(max_model_len=max_model_len, abort_on_close=version >= "0.32")
    h.push(speech.samples[sent:])
    h.advance(1.0)
    h.end()
    h.advance(5.0)
    assert h.core.finished
    assert h.core.stats.rollovers >= 1
    assert not any(e.engine_fatal for e in h.all_engines)
    assert h.text.split() == speech.text.split()


def _soak_monologue(rng: random.Random, seconds: float) -> str:
    """Sentences with only breaths (150-450 ms) between them, like benchmarks/soak.py's: the
    utterance never ends, so every generation runs into its allowance."""
    lex = [w for w in lexicon("en").words if w not in lexicon("en").markers]
    parts: list[str] = []
    total = 0.3
    while total < seconds:
        sentence = [rng.choice(lex) for _ in range(rng.randint(4, 10))]
        total += sum(burst_ms(t) + 60 for t in sentence) / 1000
        parts += [*sentence, rng.choice("....?,")]
        pause = rng.randint(150, 450)
        parts.append(f"<pause:{pause}>")
        total += pause / 1000
    return " ".join(parts)


@pytest.mark.parametrize("seed", [1, 2])
def test_backed_up_output_at_every_allowance_loses_no_word(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The soak's situation at core level: minutes of monologue at max_model_len=256 (a
    generation every ~16 s), audio pushed half a second at a time while the server stalls
    now and then (output up to a few seconds behind), so that generations reach their
    allowance with no rollover done yet and are split there. Before the hold-back window,
    a dozen of such splits per 35 minutes fell inside a word, which was lost."""
    rng = random.Random(seed)
    speech = synthesize(_soak_monologue(rng, 240.0))
    h = harness(max_model_len=256, engine_max_model_len=256, warm_lanes=0)
    batch = 6 * 1280  # 480 ms
    with caplog.at_level(logging.INFO, logger="livekit.plugins.voxtral_vllm"):
        stalled = 0
        for i in range(0, speech.samples.size, batch):
            h.step_budget = 0  # the server is busy: nothing answered while it arrives
            h.push(speech.samples[i : i + batch])
            # stalls of up to 2.4 s (under the 5 s lag that makes the core catch up)
            stalled = stalled + 1 if stalled < 5 and rng.random() < 0.6 else 0
            h.step_budget = 0 if stalled else None
            h.pump()
        h.step_budget = None
        h.advance(1.0)
        h.end()
        h.advance(5.0)
    splits = [r for r in caplog.records if "allowance is used" in r.getMessage()]
    assert len(splits) >= 3  # the case under test happened
    assert h.core.finished
    assert h.core.stats.dropped_audio_s == 0.0
    assert h.text.split() == speech.text.split()
