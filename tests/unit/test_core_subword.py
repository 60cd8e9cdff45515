"""StreamCore with real sub-word tokens (issue 11): the emulator's engine, its tone decoder
re-emitted one Tekken token per step (``subword.py``), faults at every token position.

A generation that stops inside a multi-token word or a multi-byte character must lose nothing
and show nothing twice: the next generation hears the whole word again and its text replaces
the partial one.
"""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm.testing import RealtimeEngine, StepMath, synthesize

from .subword import deltas, factory, spoken
from .test_stream_core import Final, harness

LEXICON = {
    " hello": " In",
    " world": " 2026",
    " the": " Zoë",
    " quick": "公园",
    " brown": " 😀",
    " fox": " went",
    " jumps": " home",
    ".": ".",
}
SCRIPT = "hello world the quick brown fox jumps ."
TONES = [" hello", " world", " the", " quick", " brown", " fox", " jumps", "."]
EXPECTED = spoken(TONES, LEXICON)  # " In 2026 Zoë公园 😀 went home."


def _run(on_engine: object = None, **options: object) -> tuple[str, object]:
    h = harness(decoder_factory=factory(LEXICON), on_engine=on_engine, **options)
    speech = synthesize(SCRIPT)
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert h.core.finished
    text = "".join(_joined(f) for f in h.finals())
    return text, h


def _joined(final: Final) -> str:
    """A final as it sits in the transcript: a space before it unless it starts with a
    character of a script written without spaces."""
    text = final.caption.text
    return text if "\u4e00" <= text[0] <= "\u9fff" else " " + text


def _word_steps(word: str) -> list[int]:
    """The steps of the first generation that carry ``word``'s tokens, in a clean run."""
    seen: list[list[str]] = []

    def keep(engine: RealtimeEngine, index: int) -> None:
        if index == 0:
            seen.append(engine.generations[0].deltas if engine.generations else [])
            engines.append(engine)

    engines: list[RealtimeEngine] = []
    text, _ = _run(on_engine=keep)
    assert text == EXPECTED
    got = engines[0].generations[0].deltas
    want = deltas(word)
    for i in range(len(got) - len(want) + 1):
        if got[i : i + len(want)] == want:
            return list(range(i, i + len(want)))
    raise AssertionError(f"{word!r} ({want}) not found in {got}")


def test_clean_run_is_exact() -> None:
    text, _ = _run()
    assert text == EXPECTED


@pytest.mark.parametrize("word", [" 2026", "公园", " 😀", " Zoë"])
@pytest.mark.parametrize("fault", ["unsolicited_done", "processing_error", "drop"])
def test_stop_after_every_token_of_a_word(word: str, fault: str) -> None:
    """A stop after each token of a multi-token word or a multi-byte character: the word
    comes out whole and once, no character is broken."""
    steps = _word_steps(word)
    for step in steps:
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

        text, h = _run(on_engine=inject)
        assert "\ufffd" not in text
        assert text == EXPECTED, f"stop after step {step} ({fault})"
        first = h.all_engines[0].generations[0]  # type: ignore[attr-defined]
        assert first.steps == n, "the fault fired where intended"


def test_a_generation_of_punctuation_only_is_no_caption() -> None:
    """Issue 11, item 7: a generation whose only output is "." becomes no caption."""
    h = harness(decoder_factory=factory({}))
    h.push(synthesize(". <pause:1500> hello world .").samples)
    h.advance(1.0)
    h.end()
    assert [f.caption.text for f in h.finals()] == ["hello world."]
