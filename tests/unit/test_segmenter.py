"""Unit tests of ``segmenter.py``: realistic ``transcription.delta`` streams, one per 80 ms step.

References: ``vllm-realtime.md`` (deltas, ``done``, timing) and ``livekit-stt.md`` §3 (captions).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_plugins_voxtral_vllm.errors import InvalidState, LocalProtocolError
from livekit_plugins_voxtral_vllm.segmenter import (
    CaptionEvent,
    CaptionFinal,
    CaptionInterim,
    CaptionSegmenter,
    ResumePoint,
    SegmenterOptions,
    Word,
)
from livekit_plugins_voxtral_vllm.words import CharKind, char_kind

_WORDISH = re.compile(r"\w")
_NOT_LETTERS = (CharKind.PUNCT, CharKind.SPACE, CharKind.JOINER)

STEP = 0.08


class Feeder:
    """Drives a segmenter as the glue does: step k (1-based) of a generation started at
    ``start_s`` ends at ``start_s + k * 80 ms``."""

    def __init__(self, options: SegmenterOptions | None = None, start_s: float | None = 0.0):
        self.seg = CaptionSegmenter(options) if options is not None else CaptionSegmenter()
        self.events: list[CaptionEvent] = []
        self.deltas: list[str] = []
        self.start_s = 0.0
        self.steps = 0
        if start_s is not None:
            self.start(start_s)

    def start(self, start_s: float = 0.0) -> None:
        self.seg.start_generation(start_s)
        self.start_s, self.steps, self.deltas = start_s, 0, []

    @property
    def t(self) -> float:
        """End of the last step fed."""
        return self.start_s + self.steps * STEP

    def feed(self, *deltas: str) -> list[CaptionEvent]:
        out: list[CaptionEvent] = []
        for delta in deltas:
            self.steps += 1
            self.deltas.append(delta)
            out += self.seg.receive_delta(delta, self.start_s + self.steps * STEP)
        self.events += out
        return out

    def silence(self, n: int) -> list[CaptionEvent]:
        return self.feed(*[""] * n)

    def finish(self, done_text: str | None = "<deltas>") -> list[CaptionEvent]:
        text = "".join(self.deltas) if done_text == "<deltas>" else done_text
        out = self.seg.finish_generation(text, self.t)
        self.events += out
        return out

    def abandon(self) -> ResumePoint:
        return self.seg.abandon_generation()


def finals(events: list[CaptionEvent]) -> list[CaptionFinal]:
    return [e for e in events if isinstance(e, CaptionFinal)]


def one_final(events: Sequence[CaptionEvent]) -> CaptionFinal:
    (final,) = events
    assert isinstance(final, CaptionFinal)
    return final


def interims(events: list[CaptionEvent]) -> list[CaptionInterim]:
    return [e for e in events if isinstance(e, CaptionInterim)]


def texts(events: list[CaptionEvent]) -> list[tuple[str, int, str]]:
    return [("F" if isinstance(e, CaptionFinal) else "I", e.segment, e.text) for e in events]


def normalise(text: str) -> str:
    return " ".join(text.split())


class TestOptions:
    """Brief: SegmenterOptions are validated at construction; the message names the value."""

    def test_defaults(self) -> None:
        opts = SegmenterOptions()
        assert (opts.sentence_pause_s, opts.max_pause_s, opts.max_segment_s) == (0.4, 1.2, 12.0)

    @pytest.mark.parametrize("name", ["sentence_pause_s", "max_pause_s", "max_segment_s"])
    @pytest.mark.parametrize("value", [-0.5, 0.0, float("nan"), float("inf")])
    def test_rejects_non_positive_or_non_finite(self, name: str, value: float) -> None:
        with pytest.raises(ValueError, match=rf"{name} .*got {value!r}"):
            SegmenterOptions(**{name: value})

    def test_rejects_sentence_pause_longer_than_max_pause(self) -> None:
        with pytest.raises(ValueError, match=r"sentence_pause_s \(2\.0\).*max_pause_s \(1\.2\)"):
            SegmenterOptions(sentence_pause_s=2.0)

    def test_options_can_change_between_deltas(self) -> None:
        f = Feeder()
        assert f.seg.options == SegmenterOptions()
        f.feed(" and")
        f.seg.options = SegmenterOptions(sentence_pause_s=0.16, max_pause_s=0.16)
        assert texts(f.silence(2)) == [("F", 1, "and")]

    def test_rejects_non_number(self) -> None:
        with pytest.raises(ValueError, match="max_segment_s .*got '12'"):
            SegmenterOptions(max_segment_s="12")  # type: ignore[arg-type]


class TestCumulativeInterims:
    """livekit-stt.md §3: every interim carries the segment's full text; vllm-realtime.md §1.2."""

    def test_realistic_stream(self) -> None:
        f = Feeder()
        assert f.silence(7) == []
        f.feed(" hello", "", " world", ".")
        assert texts(f.events) == [
            ("I", 1, "hello"),
            ("I", 1, "hello world"),
            ("I", 1, "hello world."),
        ]

    def test_empty_deltas_emit_nothing(self) -> None:
        f = Feeder()
        f.feed(" hello")
        assert f.silence(3) == []

    def test_punctuation_joins_previous_word(self) -> None:
        f = Feeder()
        f.feed(" fox", ",", " and", " dog", ".")
        assert [e.text for e in interims(f.events)] == [
            "fox",
            "fox,",
            "fox, and",
            "fox, and dog",
            "fox, and dog.",
        ]

    def test_sub_word_piece_joins_word(self) -> None:
        f = Feeder()
        f.feed(" the", " phon", "ograph", "'s")
        assert interims(f.events)[-1].text == "the phonograph's"

    def test_delta_with_several_tokens(self) -> None:
        f = Feeder()
        assert texts(f.feed(" the", " quick fox. the")) == [
            ("I", 1, "the"),
            ("I", 1, "the quick fox. the"),
        ]

    def test_whitespace_only_delta_adds_no_text_but_ends_the_word(self) -> None:
        f = Feeder()
        f.feed(" hello")
        assert f.feed(" ") == []
        assert texts(f.feed("world")) == [("I", 1, "hello world")]

    def test_trailing_space_ends_the_word(self) -> None:
        f = Feeder()
        f.feed(" hello ", "world")
        assert interims(f.events)[-1].text == "hello world"

    def test_whitespace_is_normalised(self) -> None:
        f = Feeder()
        f.feed("  hello  \n", "\t world ")
        assert [e.text for e in interims(f.events)] == ["hello", "hello world"]

    def test_first_token_without_space_starts_a_word(self) -> None:
        f = Feeder()
        assert texts(f.feed("Hello")) == [("I", 1, "Hello")]

    def test_lone_punctuation_at_generation_start_is_dropped(self) -> None:
        """Punctuation-only output is never a caption of its own (issue 11, item 7)."""
        f = Feeder()
        assert f.feed(".") == [] and f.feed(" ?") == []
        assert f.finish() == []
        assert f.seg.dropped_punctuation == 1  # one punctuation-only segment

    def test_interim_reports_the_newest_word_end(self) -> None:
        f = Feeder()
        f.silence(4)
        (hello,) = f.feed(" hello")
        (period,) = f.feed(".")
        (piece,) = f.feed(" phon")
        (more,) = f.feed("ograph")
        assert isinstance(hello, CaptionInterim) and hello.words_end_s == pytest.approx(0.36)
        assert isinstance(period, CaptionInterim) and period.words_end_s == pytest.approx(0.36)
        assert isinstance(piece, CaptionInterim) and piece.words_end_s == pytest.approx(0.52)
        # a later piece of the word does not move its end: its first token came at the end
        assert isinstance(more, CaptionInterim) and more.words_end_s == pytest.approx(0.52)


class TestSentencePause:
    """vllm-realtime.md §1.2/§3: sentence-final punctuation then sentence_pause_s of empty steps."""

    def test_split_after_five_empty_steps(self) -> None:
        f = Feeder()
        f.silence(7)
        f.feed(" hello", "", " world", ".")
        assert f.silence(4) == []
        final = one_final(f.silence(1))
        assert final == CaptionFinal(1, "hello world.", 0.0, 0.76, final.words)
        assert [w.text for w in final.words] == ["hello", "world."]
        assert texts(f.feed(" next")) == [("I", 2, "next")]

    @pytest.mark.parametrize("end", ["?", "!", '."', "?)", "…", "。"])
    def test_other_sentence_ends(self, end: str) -> None:
        f = Feeder()
        f.feed(" really", end)
        assert len(finals(f.silence(5))) == 1

    def test_punctuation_inside_the_word_delta(self) -> None:
        f = Feeder()
        f.feed(" done.")
        assert len(finals(f.silence(5))) == 1

    @pytest.mark.parametrize("end", [",", ";", ":", "-"])
    def test_other_punctuation_waits_for_max_pause(self, end: str) -> None:
        f = Feeder()
        f.feed(" wait", end)
        assert f.silence(14) == []
        assert len(finals(f.silence(1))) == 1

    def test_text_before_the_pause_completes_continues_the_segment(self) -> None:
        f = Feeder()
        f.feed(" one.")
        f.silence(4)
        assert texts(f.feed(" two")) == [("I", 1, "one. two")]

    def test_pause_counted_from_the_punctuation_step(self) -> None:
        f = Feeder()
        f.feed(" hello", "", "", ".")
        assert f.silence(4) == []
        assert len(finals(f.silence(1))) == 1

    def test_custom_sentence_pause(self) -> None:
        f = Feeder(SegmenterOptions(sentence_pause_s=0.24))
        f.feed(" hi.")
        assert f.silence(2) == []
        assert len(finals(f.silence(1))) == 1


class TestLongPause:
    """vllm-realtime.md §2.2 rule 9: vLLM never ends a segment itself; max_pause_s does."""

    def test_split_after_max_pause(self) -> None:
        f = Feeder()
        f.feed(" and", " then")
        assert f.silence(14) == []
        final = one_final(f.silence(1))
        assert final.text == "and then"
        assert f.silence(30) == []
        assert texts(f.feed(" more")) == [("I", 2, "more")]

    def test_custom_max_pause(self) -> None:
        f = Feeder(SegmenterOptions(max_pause_s=0.4))
        f.feed(" and")
        assert f.silence(4) == []
        assert len(finals(f.silence(1))) == 1

    def test_gap_in_step_times_ends_the_segment_before_the_new_text(self) -> None:
        seg = CaptionSegmenter()
        seg.start_generation(0.0)
        seg.receive_delta(" hello", 0.08)
        events = seg.receive_delta(" world", 2.0)
        assert texts(events) == [("F", 1, "hello"), ("I", 2, "world")]


class TestMaxSegment:
    """livekit-stt.md §3: a segment longer than max_segment_s ends at the next word boundary."""

    def test_split_before_the_word_that_overflows(self) -> None:
        f = Feeder(SegmenterOptions(max_segment_s=1.0))
        f.seg.receive_onset(0.1)
        f.feed("", " a", "", " b", "", " c", "", " d", "", " e", "", " f", "", " g", "")
        assert finals(f.events) == []  # "g" ends at 1.08, 0.98 s after "a" started
        assert texts(f.feed(" h")) == [("F", 1, "a b c d e f g"), ("I", 2, "h")]
        final = one_final(finals(f.events))
        assert final.start_s == 0.1 and final.end_s == pytest.approx(1.08)
        next_start = one_final(f.seg.finish_generation(None, 2.0)).words[0].start_s
        assert next_start == pytest.approx(final.end_s + 0.04)

    def test_default_twelve_seconds(self) -> None:
        f = Feeder()
        f.seg.receive_onset(0.0)
        for _ in range(80):  # a word every 160 ms, no pause: 12.8 s
            f.feed(" la", "")
        done = finals(f.events)
        assert len(done) == 1
        assert done[0].end_s - done[0].start_s <= 12.0
        assert done[0].end_s - done[0].start_s > 12.0 - 0.16
        f.finish()
        assert [e.segment for e in finals(f.events)] == [1, 2]
        assert normalise(" ".join(e.text for e in finals(f.events))) == normalise(" la" * 80)

    def test_split_inside_a_multi_token_delta(self) -> None:
        f = Feeder(SegmenterOptions(max_segment_s=0.5))
        f.feed(" one")  # from 0.0 (generation start)
        f.silence(4)
        # "ograph." completes the last word at 0.52; "four" would stretch the segment past 0.5 s.
        events = f.feed(" phon", "ograph. four")
        assert texts(events) == [
            ("I", 1, "one phon"),
            ("F", 1, "one phonograph."),
            ("I", 2, "four"),
        ]
        # "four" came right behind "phonograph.": it was spoken after phonograph ended
        four = Word("four", pytest.approx(0.48), pytest.approx(0.52))  # type: ignore[arg-type]
        assert f.finish() == [CaptionFinal(2, "four", four.start_s, four.end_s, (four,))]

    def test_never_splits_inside_a_word(self) -> None:
        f = Feeder(SegmenterOptions(max_segment_s=0.3))
        f.feed(" a", " phon", "", "", "ograph")
        assert finals(f.events) == []
        assert interims(f.events)[-1].text == "a phonograph"
        final = one_final(f.finish())
        word = final.words[-1]
        assert word.text == "phonograph"
        # its first token came right behind "a" (a burst): the two share the audio since the
        # generation began, in proportion to their length, never 40 ms for ten letters
        assert word.end_s == pytest.approx(0.12)
        assert word.end_s - word.start_s >= 0.09
        assert final.words[0].end_s == pytest.approx(word.start_s)


class TestFinishGeneration:
    """vllm-realtime.md §1.2/§2.1: transcription.done ends the generation and its segment."""

    def test_finish_emits_the_last_final(self) -> None:
        f = Feeder()
        f.silence(7)
        f.feed(" hello", "", " world")
        f.silence(3)
        final = one_final(f.finish(" hello world"))
        assert final.text == "hello world" and final.segment == 1
        assert f.seg.open_segment is None and not f.seg.has_open_generation

    def test_done_text_with_trailing_whitespace(self) -> None:
        f = Feeder()
        f.feed(" hello", "", " world.")
        assert texts(f.finish(" hello world. \n")) == [("F", 1, "hello world.")]

    def test_finish_without_done(self) -> None:
        f = Feeder()
        f.feed(" cut", " off")
        assert texts(f.finish(None)) == [("F", 1, "cut off")]

    def test_generation_without_text_emits_nothing(self) -> None:
        f = Feeder()
        f.silence(17)
        assert f.finish("") == []
        assert f.events == []

    def test_empty_generation(self) -> None:
        f = Feeder()
        assert f.finish("") == []

    def test_finish_after_the_segment_already_ended(self) -> None:
        f = Feeder()
        f.feed(" done.")
        f.silence(17)
        assert f.finish() == []
        assert len(finals(f.events)) == 1

    def test_segment_numbers_continue_over_generations(self) -> None:
        f = Feeder()
        f.feed(" one")
        f.finish()
        f.start(5.0)
        f.feed(" two")
        f.finish()
        assert texts(f.events) == [
            ("I", 1, "one"),
            ("F", 1, "one"),
            ("I", 2, "two"),
            ("F", 2, "two"),
        ]


class TestDoneReconciliation:
    """vllm-realtime.md §1.2: done.text is the concatenation of the deltas; finals add up to it."""

    def test_finals_concatenate_to_done_text(self) -> None:
        f = Feeder()
        f.feed(" First", " words.")
        f.silence(5)
        f.feed(" I", " spoke", ".")
        f.silence(16)
        f.feed(" in the", " original")
        f.finish()
        assert [e.text for e in finals(f.events)] == ["First words.", "I spoke.", "in the original"]
        joined = " ".join(e.text for e in finals(f.events))
        assert joined == normalise("".join(f.deltas))

    def test_disagreeing_done_wins_for_the_open_segment(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        f = Feeder()
        f.feed(" one.")
        f.silence(5)
        f.feed(" tow")
        with caplog.at_level(logging.WARNING, logger="livekit.plugins.voxtral_vllm"):
            final = one_final(f.finish(" one. two three"))
        assert (final.segment, final.text) == (2, "two three")
        assert [w.text for w in final.words] == ["two", "three"]
        assert final.start_s <= final.end_s
        assert "disagrees" in caplog.text
        assert caplog.records[0].__dict__["lk.pii.data"]["done"] == " one. two three"

    def test_disagreement_in_a_finalised_part_keeps_the_open_words(self) -> None:
        f = Feeder()
        f.feed(" alpha.")
        f.silence(5)
        f.feed(" gamma")
        final = one_final(f.finish(" beta. gamma"))
        assert final.text == "gamma"
        assert final.words[0].end_s == pytest.approx(0.52)

    def test_done_with_text_the_deltas_lacked(self) -> None:
        f = Feeder(start_s=2.0)
        f.silence(10)
        final = one_final(f.finish(" lost words"))
        assert final.text == "lost words"
        # the span of the missing text, shared in proportion to the words' lengths
        assert final.words == (
            Word("lost", 2.0, pytest.approx(2.0 + 0.8 * 4 / 9)),  # type: ignore[arg-type]
            Word("words", pytest.approx(2.0 + 0.8 * 4 / 9), 2.8),  # type: ignore[arg-type]
        )

    def test_done_with_less_text_keeps_the_segment_for_the_next_generation(self) -> None:
        f = Feeder()
        f.feed(" one.")
        f.silence(5)
        f.feed(" two")
        assert f.finish(" one.") == []
        assert f.seg.open_segment == 2
        f.start(1.0)
        f.feed(" two")
        f.finish()
        assert texts(f.events)[-3:] == [("I", 2, "two"), ("I", 2, "two"), ("F", 2, "two")]


class TestNoEmptyFinals:
    """livekit-stt.md §3: an empty final is dropped and leaves the caption open."""

    def test_whitespace_only_generation(self) -> None:
        f = Feeder()
        f.feed(" ", "", "  ")
        f.silence(20)
        assert f.finish() == []
        assert f.events == []

    def test_split_without_text(self) -> None:
        f = Feeder()
        assert f.seg.split_generation() == []

    def test_pause_without_text(self) -> None:
        f = Feeder()
        assert f.silence(100) == []


class TestWordTimestamps:
    """vllm-realtime.md §3 Output timing: a word ends at its step's frame midpoint."""

    def test_word_end_is_the_frame_midpoint(self) -> None:
        f = Feeder()
        f.silence(7)
        f.feed(" hello")
        final = one_final(f.finish())
        assert final.words[0].end_s == pytest.approx(8 * STEP - 0.04)

    def test_without_hint_a_word_starts_a_short_gap_after_the_previous(self) -> None:
        """Running speech: words are separated by a short gap (40 ms), not glued."""
        f = Feeder()
        f.feed(" a", "", " b", "", " c")
        final = one_final(f.finish())
        a, b, c = final.words
        assert b.start_s == pytest.approx(a.end_s + 0.04)
        assert c.start_s == pytest.approx(b.end_s + 0.04)
        assert c.end_s == pytest.approx(0.36)

    def test_a_gap_never_puts_the_start_after_the_end(self) -> None:
        f = Feeder()
        f.feed(" a", " b")
        a, b = one_final(f.finish()).words
        assert a.start_s <= a.end_s and b.start_s <= b.end_s

    def test_punctuation_step_does_not_move_the_next_word(self) -> None:
        """A sentence mark is output, not sound: the next word starts after the word."""
        f = Feeder()
        f.feed(" a", "", ".", "", " b")
        final = one_final(f.finish())
        a, b = final.words
        assert a.text == "a." and a.end_s == pytest.approx(0.04)  # "." does not lengthen "a"
        assert b.start_s == pytest.approx(0.04 + 0.04)

    def test_after_a_pause_the_latest_onset_hint_starts_the_word(self) -> None:
        f = Feeder()
        f.feed(" a")  # ends at 0.04
        f.seg.receive_onset(0.01)  # before the previous word: ignored
        f.seg.receive_onset(0.30)
        f.seg.receive_onset(0.35)
        f.seg.receive_onset(0.9)  # after the word: ignored
        f.silence(5)
        f.feed(" b")  # ends at 0.52
        final = one_final(f.finish())
        assert final.words[1] == Word("b", 0.35, pytest.approx(0.52))  # type: ignore[arg-type]

    def test_onset_hint_can_arrive_before_the_generation(self) -> None:
        seg = CaptionSegmenter()
        seg.receive_onset(3.2)
        seg.start_generation(3.0)
        seg.receive_delta(" hi", 3.6)
        final = one_final(seg.finish_generation(" hi", 4.0))
        assert final.start_s == 3.2

    def test_onset_hints_out_of_order(self) -> None:
        f = Feeder()
        f.seg.receive_onset(0.3)
        f.seg.receive_onset(0.2)
        f.silence(5)
        f.feed(" x")
        final = one_final(f.finish())
        # (the shown time: the first onset after the segment's start, in time order)
        assert final.start_s == 0.2

    def test_many_onset_hints_are_bounded(self) -> None:
        f = Feeder()
        for i in range(1000):
            f.seg.receive_onset(i * 0.001)
        f.silence(20)
        f.feed(" x")
        final = one_final(f.finish())
        assert final.start_s == pytest.approx(0.968)  # the oldest of the 32 kept

    def test_without_hint_the_start_falls_back_to_just_after_the_previous_word(self) -> None:
        f = Feeder()
        f.feed(" a")
        f.silence(3)
        f.feed(" b")
        final = one_final(f.finish())
        assert final.words[1].start_s == pytest.approx(final.words[0].end_s + 0.04)

    def test_fallback_start_is_at_most_one_second_before_the_end(self) -> None:
        f = Feeder(start_s=10.0)
        f.silence(49)
        f.feed(" late")  # ends at 13.96
        final = one_final(f.finish())
        assert final.start_s == pytest.approx(12.96)

    def test_first_word_falls_back_to_the_generation_start(self) -> None:
        f = Feeder(start_s=4.0)
        f.silence(6)
        f.feed(" soon")
        final = one_final(f.finish())
        assert final.start_s == 4.0

    def test_punctuation_has_no_word_and_keeps_the_end(self) -> None:
        f = Feeder()
        f.feed(" end", "", "", ".")
        final = one_final(f.finish())
        assert final.words == (Word("end.", 0.0, pytest.approx(0.04)),)  # type: ignore[arg-type]
        assert final.end_s == pytest.approx(0.04)

    def test_sub_word_piece_does_not_move_the_end(self) -> None:
        """A word's first token comes from the step covering its end; the rest of its tokens
        follow one per step, later than the sound."""
        f = Feeder()
        f.feed(" phon", "", "ograph")
        final = one_final(f.finish())
        assert final.end_s == pytest.approx(0.04)

    def test_start_never_after_end(self) -> None:
        seg = CaptionSegmenter()
        seg.start_generation(1.0)
        seg.receive_delta(" early", 0.5)
        final = one_final(seg.finish_generation(" early", 1.0))
        assert final.start_s <= final.end_s

    def test_final_spans_first_start_to_last_end(self) -> None:
        f = Feeder()
        f.seg.receive_onset(0.15)
        f.silence(4)
        f.feed(" a", " b")
        final = one_final(f.finish())
        assert (final.start_s, final.end_s) == (final.words[0].start_s, final.words[-1].end_s)
        assert final.start_s == 0.15


class TestAbandonAndReplay:
    """vllm-realtime.md §2.2 rule 10, §2.4: a lost generation sends no done; replay its audio."""

    def test_replay_keeps_the_segment_and_replaces_its_text(self) -> None:
        f = Feeder()
        f.feed(" first.")  # 0.04
        f.silence(5)
        f.feed(" second", " half")
        resume = f.abandon()
        assert resume == ResumePoint(pytest.approx(0.12), 2)  # type: ignore[arg-type]
        assert f.seg.open_segment == 2 and not f.seg.has_open_generation
        assert f.seg.last_word_end_s == pytest.approx(0.04)
        f.start(resume.resume_s)
        f.silence(6)
        assert texts(f.feed(" second")) == [("I", 2, "second")]
        f.feed(" half", " done")
        f.finish()
        assert [(e.segment, e.text) for e in finals(f.events)] == [
            (1, "first."),
            (2, "second half done"),
        ]

    def test_abandon_right_after_a_final(self) -> None:
        f = Feeder()
        f.feed(" done.")
        f.silence(5)
        resume = f.abandon()
        # after the step that wrote the "." (the model wrote it on hearing what followed)
        assert resume == ResumePoint(pytest.approx(0.12), None)  # type: ignore[arg-type]
        assert f.seg.open_segment is None
        f.start(resume.resume_s)
        f.feed(" next")
        f.finish()
        assert [(e.segment, e.text) for e in finals(f.events)] == [(1, "done."), (2, "next")]

    def test_abandon_without_finals_resumes_at_the_generation_start(self) -> None:
        f = Feeder(start_s=7.5)
        f.feed(" lost")
        assert f.abandon() == ResumePoint(7.5, 1)

    def test_abandon_twice_keeps_the_segment(self) -> None:
        f = Feeder()
        f.feed(" lost")
        f.abandon()
        f.start(0.0)
        f.silence(3)
        assert f.abandon() == ResumePoint(0.0, 1)
        f.start(0.0)
        f.feed(" found")
        f.finish()
        assert texts(f.events) == [("I", 1, "lost"), ("I", 1, "found"), ("F", 1, "found")]

    def test_replay_without_text_leaves_the_segment_open(self) -> None:
        f = Feeder()
        f.feed(" noise")
        f.abandon()
        f.start(0.0)
        f.silence(10)
        assert f.finish() == []
        assert f.seg.open_segment == 1

    def test_never_a_second_final_for_a_segment(self) -> None:
        f = Feeder()
        for _ in range(3):
            f.feed(" a.")
            f.silence(5)
            f.feed(" b")
            resume = f.abandon()
            f.start(resume.resume_s)
            f.feed(" b")
            f.finish()
            f.start(f.t)
        f.finish()
        numbers = [e.segment for e in finals(f.events)]
        assert numbers == sorted(set(numbers)) == list(range(1, 7))


class TestSplitGeneration:
    """vllm-realtime.md §2.3: a rollover before max_model_len cuts at a word boundary."""

    def test_split_finalises_and_the_generation_goes_on(self) -> None:
        f = Feeder()
        f.feed(" one", " two")
        assert texts(f.seg.split_generation()) == [("F", 1, "one two")]
        assert f.seg.has_open_generation
        assert texts(f.feed(" three")) == [("I", 2, "three")]
        assert f.abandon() == ResumePoint(pytest.approx(0.12), 2)  # type: ignore[arg-type]

    def test_piece_after_a_split_starts_a_new_word(self) -> None:
        f = Feeder()
        f.feed(" phon")
        f.seg.split_generation()
        assert texts(f.feed("ograph")) == [("I", 2, "ograph")]


class TestMisuse:
    """style.md error model: misuse raises InvalidState / LocalProtocolError, changes nothing."""

    def test_start_while_open(self) -> None:
        f = Feeder()
        with pytest.raises(InvalidState, match="generation 1 is open"):
            f.seg.start_generation(1.0)

    @pytest.mark.parametrize("call", ["delta", "finish", "abandon", "split"])
    def test_input_without_generation(self, call: str) -> None:
        seg = CaptionSegmenter()
        with pytest.raises(InvalidState, match="no open generation"):
            if call == "delta":
                seg.receive_delta(" x", 0.08)
            elif call == "finish":
                seg.finish_generation("", 0.0)
            elif call == "abandon":
                seg.abandon_generation()
            else:
                seg.split_generation()

    def test_step_time_going_backwards(self) -> None:
        seg = CaptionSegmenter()
        seg.start_generation(0.0)
        seg.receive_delta(" a", 0.8)
        with pytest.raises(LocalProtocolError, match="step_end_s=0.4"):
            seg.receive_delta(" b", 0.4)
        assert texts(seg.receive_delta(" c", 0.88)) == [("I", 1, "a c")]


# -- properties --------------------------------------------------------------------------

_PIECES = [" hello", " world", " the", " fox", " phon", "ograph", "'s", ".", ",", "?", "!",
           " ça", " 你好", " ", "  two  words", " end.", "\n"]  # fmt: skip


@st.composite
def _streams(draw: st.DrawFn, pause_before_pieces: bool) -> tuple[list[str], str, SegmenterOptions]:
    """Deltas (one per step) cut at random from a random text, random silences, and the done
    text. Unless ``pause_before_pieces``, a delta that continues a word follows fewer empty
    steps than a sentence pause, so no segment can end inside a word."""
    text = "".join(draw(st.lists(st.sampled_from(_PIECES), max_size=40)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=30)))
    bounds = [0, *(c for c in cuts if c < len(text)), len(text)]
    steps: list[str] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        delta = text[a:b]
        if not delta:
            continue
        free = pause_before_pieces or delta[0].isspace()
        steps += [""] * draw(st.integers(0, 25 if free else 4))
        steps.append(delta)
    steps += [""] * draw(st.integers(0, 20))
    done = text + draw(st.sampled_from(["", " ", " \n"]))
    options = SegmenterOptions(max_segment_s=draw(st.sampled_from([0.5, 2.0, 12.0])))
    return steps, done, options


def _captionable(done: str) -> str:
    """``done`` as captions show it: punctuation before the first word has no caption to
    join and is dropped."""
    text = normalise(done)
    while text and char_kind(text[0]) in (CharKind.PUNCT, CharKind.SPACE):
        word = text.split(" ", 1)[0]
        if all(char_kind(c) is CharKind.PUNCT for c in word):
            text = text[len(word) :].lstrip()  # a lone mark
        elif text[0] == " ":
            text = text[1:]
        else:
            break  # a mark that starts a word (".NET") stays
    return text


def _no_lone_punctuation(text: str) -> str:
    return " ".join(w for w in text.split() if any(char_kind(c) is not CharKind.PUNCT for c in w))


def _squash(text: str) -> str:
    """``text`` without the spaces next to a character of a script without spaces."""
    solo = [char_kind(c) is CharKind.SOLO for c in text]
    return "".join(
        c
        for i, c in enumerate(text)
        if not (c == " " and ((i and solo[i - 1]) or (i + 1 < len(text) and solo[i + 1])))
    )


def _run(
    steps: list[str], done: str, options: SegmenterOptions, onsets: list[float]
) -> list[CaptionEvent]:
    seg = CaptionSegmenter(options)
    seg.start_generation(0.0)
    events: list[CaptionEvent] = []
    hints = sorted(onsets)
    for k, delta in enumerate(steps, 1):
        while hints and hints[0] <= k * STEP:
            seg.receive_onset(hints.pop(0))
        events += seg.receive_delta(delta, k * STEP)
    events += seg.finish_generation(done, len(steps) * STEP)
    assert not seg.has_open_generation and seg.open_segment is None
    return events


def _check_structure(events: list[CaptionEvent]) -> None:
    closed: set[int] = set()
    last_interim: dict[int, str] = {}
    expected = 1
    prev_end = 0.0
    for ev in events:
        assert ev.segment not in closed, "event after the segment's final"
        assert ev.text and ev.text == normalise(ev.text)
        if isinstance(ev, CaptionInterim):
            assert ev.text.startswith(last_interim.get(ev.segment, ""))
            last_interim[ev.segment] = ev.text
            continue
        assert ev.segment == expected
        expected += 1
        closed.add(ev.segment)
        assert ev.text.startswith(last_interim.get(ev.segment, ""))
        assert _WORDISH.search(ev.text), "a caption of punctuation only"
        assert ev.text.replace(" ", "") == "".join(w.text for w in ev.words)
        assert (ev.start_s, ev.end_s) == (ev.words[0].start_s, ev.words[-1].end_s)
        for w in ev.words:
            assert prev_end - 1e-9 <= w.start_s <= w.end_s
            prev_end = w.end_s
    assert set(last_interim) <= closed, "a segment showed text but got no final"


class TestProperties:
    """vllm-realtime.md §1.2 (done == deltas) and livekit-stt.md §3 (one non-empty final)."""

    @settings(max_examples=300, deadline=None)
    @given(_streams(pause_before_pieces=False), st.lists(st.floats(0, 20), max_size=8))
    def test_finals_concatenate_to_done_text(
        self, stream: tuple[list[str], str, SegmenterOptions], onsets: list[float]
    ) -> None:
        steps, done, options = stream
        events = _run(steps, done, options, onsets)
        _check_structure(events)
        # (a caption may end between two characters of a script without spaces)
        # (punctuation standing alone after a pause has no open caption to join: dropped)
        got = _no_lone_punctuation(" ".join(e.text for e in finals(events)))
        assert _squash(got) == _squash(_no_lone_punctuation(_captionable(done)))

    @settings(max_examples=300, deadline=None)
    @given(_streams(pause_before_pieces=True), st.lists(st.floats(0, 20), max_size=8))
    def test_no_text_lost_with_pauses_anywhere(
        self, stream: tuple[list[str], str, SegmenterOptions], onsets: list[float]
    ) -> None:
        # A pause inside a word (never seen from vLLM) may end the segment there: the rest of
        # the word then opens the next segment, so only the spacing may differ.
        steps, done, options = stream
        events = _run(steps, done, options, onsets)
        _check_structure(events)

        # Punctuation after a pause has no open caption to join: it is dropped.
        def letters(text: str) -> str:
            return "".join(c for c in text if char_kind(c) not in _NOT_LETTERS)

        assert letters("".join(e.text for e in finals(events))) == letters(done)
