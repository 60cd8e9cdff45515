"""StreamCore with real sub-word tokens (issue 11): the emulator's engine in its real-token
mode (one Tekken token per step, vLLM's incremental deltas), faults at every token position.

A generation that stops inside a multi-token word or a multi-byte character must lose nothing
and show nothing twice: the next generation hears the whole word again and its text replaces
the partial one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from livekit_plugins_voxtral_vllm.testing import RealtimeEngine, StepMath, synthesize
from livekit_plugins_voxtral_vllm.testing.speech import ToneDecoder
from livekit_plugins_voxtral_vllm.testing.tokens import expected_deltas

from .test_stream_core import Final, Harness, harness

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

# Multi-token words and multi-byte characters in the middle of running speech.
SCRIPTS = {
    "en": "hello world 2026 😀 don't stop the meeting now .",
    "fr": "bonjour Zoë aujourd'hui 2026 c'est prêt .",
    "de": "hallo Größe Besprechung 🎉 geht's los 2026 danke .",
    "es": "hola ¿qué pingüino 😀 mañana 2026 gracias .",
    "zh": "你好 他 在 公园 散步 吧 。",
    "ja": "今日 は 公園 を コーヒー 😀 2026 始まります です 。",
}
PROBES = [
    ("en", " 2026"),
    ("en", " 😀"),
    ("en", " don't"),
    ("fr", " Zoë"),
    ("de", " Besprechung"),
    ("de", " 🎉"),
    ("de", " geht's"),
    ("es", " pingüino"),
    ("es", " ¿qué"),
    ("zh", "公园"),
    ("ja", "コーヒー"),
    ("ja", "😀"),
    ("ja", "2026"),
]


def transcript(finals: list[Final]) -> str:
    """The finals as one text: a space between captions unless one is in a script without
    spaces."""
    out = ""
    for f in finals:
        text = f.caption.text
        cjk = "\u3040" <= text[0] <= "\u9fff" or (out and "\u3040" <= out[-1] <= "\u9fff")
        out += text if not out or cjk else " " + text
    return out


def run(
    language: str, on_engine: Callable[[RealtimeEngine, int], None] | None = None, **opts: object
) -> Harness:
    h = harness(
        decoder_factory=lambda: ToneDecoder(16000, language=language),
        on_engine=on_engine,
        **opts,
    )
    speech = synthesize(SCRIPTS[language], language=language)
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert h.core.finished
    return h


def expected(language: str) -> str:
    return synthesize(SCRIPTS[language], language=language).text.strip()


def word_steps(language: str, word: str) -> list[int]:
    """The steps of the first generation that carry ``word``'s tokens, in a clean run."""
    h = run(language)
    assert transcript(h.finals()) == expected(language)
    got = h.all_engines[0].generations[0].deltas
    want = expected_deltas(word)
    for i in range(len(got) - len(want) + 1):
        if got[i : i + len(want)] == want:
            return list(range(i, i + len(want)))
    raise AssertionError(f"{word!r} ({want}) not found in {got}")


@pytest.mark.parametrize("language", sorted(SCRIPTS))
def test_clean_run_is_exact(language: str) -> None:
    h = run(language)
    assert transcript(h.finals()) == expected(language)


@pytest.mark.parametrize(("language", "word"), PROBES)
@pytest.mark.parametrize("fault", ["unsolicited_done", "processing_error", "drop"])
def test_stop_after_every_token_of_a_word(language: str, word: str, fault: str) -> None:
    """A stop after each token of a multi-token word or a multi-byte character: the word
    comes out whole and once, no character is broken."""
    for step in word_steps(language, word):
        n = step + 1  # the first generation sends exactly this many deltas

        def inject(engine: RealtimeEngine, index: int, n: int = n) -> None:
            if index != 0:
                return
            if fault == "unsolicited_done":
                engine.math = StepMath(480, StepMath(480).prompt_tokens + n)
            elif fault == "processing_error":
                engine.inject_processing_error("engine hiccup", after_steps=n)
            else:
                engine.schedule_drop(after_steps=n)

        h = run(language, on_engine=inject)
        text = transcript(h.finals())
        assert "\ufffd" not in text
        assert text == expected(language), f"stop after step {step} ({fault})"
        assert h.all_engines[0].generations[0].steps == n, "the fault fired where intended"


def test_a_generation_of_punctuation_only_is_no_caption() -> None:
    """Issue 11, item 7: a generation whose only output is "." becomes no caption."""
    h = harness()
    h.push(synthesize(". <pause:1500> hello world .").samples)
    h.advance(1.0)
    h.end()
    assert [f.caption.text for f in h.finals()] == ["hello world."]


# -- the blank-token rut (vllm-project/vllm#47614) -------------------------------------------

RUT_SCRIPT = " <pause:300> ".join(
    ["hello world the meeting starts now .", "we can hear the quick brown fox .",
     "jumps over the lazy dog .", "good morning everyone let us begin .",
     "next slide please , thank you ."] * 2
)  # fmt: skip  # one utterance of about 23 s


def _rut_run(
    caplog: pytest.LogCaptureFixture, which: Callable[[RealtimeEngine, int], None]
) -> tuple[Harness, str, list[str]]:
    h = harness(on_engine=which)
    speech = synthesize(RUT_SCRIPT)
    with caplog.at_level("WARNING", logger="livekit.plugins.voxtral_vllm"):
        h.push(speech.samples)
        h.advance(2.0)
        h.end()
    assert h.core.finished, "end_input() ends the stream, rut or not"
    warnings = [r.getMessage() for r in caplog.records if "47614" in r.getMessage()]
    return h, speech.text.strip(), warnings


def test_rut_on_one_socket_is_recovered_on_a_fresh_one(caplog: pytest.LogCaptureFixture) -> None:
    def first_ruts(engine: RealtimeEngine, index: int) -> None:
        engine.rut = index == 0

    h, spoken, warnings = _rut_run(caplog, first_ruts)
    assert transcript(h.finals()) == spoken, "replayed from the last word: nothing lost"
    assert (h.core.stats.blank_ruts, h.core.stats.blank_ruts_persistent) == (1, 0)
    assert len(warnings) == 1 and "fresh socket" in warnings[0]
    assert h.all_engines[0].generations[-1].rut_steps > 0


def test_rut_on_every_socket_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    def all_rut(engine: RealtimeEngine, index: int) -> None:
        engine.rut = True

    h, _, warnings = _rut_run(caplog, all_rut)
    assert h.finals() == []
    assert (h.core.stats.blank_ruts, h.core.stats.blank_ruts_persistent) == (1, 1)
    assert len(warnings) == 2 and "persists" in warnings[1]


def test_silence_and_coughs_are_no_rut() -> None:
    """A minute of room noise with a cough every two seconds: short utterances, no text."""
    rng = np.random.default_rng(7)
    cough = (rng.standard_normal(int(0.45 * 16000)) * 6000).astype(np.int16)
    quiet = (rng.standard_normal(int(1.55 * 16000)) * 30).astype(np.int16)
    h = harness()
    for _ in range(30):
        h.push(np.concatenate([cough, quiet]))
    h.end()
    assert h.core.finished and h.finals() == []
    assert h.core.stats.generations >= 20  # the endpointer did take the coughs for speech
    assert h.core.stats.blank_ruts == 0
