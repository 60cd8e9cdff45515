"""The word times shown in finals (issue 11, item 4): a monotone alignment of words to the
endpointer's onsets, so text the model held back and released in a burst is stamped where it
was spoken; continuations keep cutting at the conservative times."""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm.segmenter import CaptionFinal, CaptionSegmenter
from livekit_plugins_voxtral_vllm.words import Unit, align_display, assign_onsets, show_units

STEP = 0.08


def firsts(start: float, n: int) -> list[float]:
    """First-token times of ``n`` units released in a burst, one per step from ``start``."""
    return [start + i * STEP for i in range(n)]


class TestAlignDisplay:
    def test_a_held_burst_takes_the_onsets_in_order_from_the_first(self) -> None:
        onsets = [0.3, 0.6, 0.9, 1.2, 1.5, 1.8]  # six words; the fifth and sixth still coming
        f = firsts(1.4, 4)  # the first four held until 1.4 s, then released one per step
        got = align_display(f, [1] * 4, [False] * 4, onsets, lead_punct=False, min_len_s=0.0)
        assert got == [[0], [1], [2], [3]]
        # the conservative rule (each the latest onset before its token) is one word late
        units = [Unit(x, contiguous=i > 0) for i, x in enumerate(f)]
        assign_onsets(units, onsets, float("-inf"))
        assert [u.onset_s for u in units] == [0.6, 0.9, 1.2, 1.5]

    def test_punctuation_onset_right_after_a_word_is_skipped(self) -> None:
        # "hello world , stop": the comma's tone (or pause) has an onset of its own
        onsets = [0.3, 0.6, 0.9, 1.05]
        f = firsts(1.5, 3)
        got = align_display(
            f, [1] * 3, [False, True, False], onsets, lead_punct=False, min_len_s=0.0
        )
        assert got == [[0], [1], [3]]

    def test_a_word_that_came_alone_starts_at_the_latest_onset_after_the_one_before(
        self,
    ) -> None:
        # "a" came out at 0.5; a breath at 0.8, then "b" at 0.9, out at 1.3 after empty steps
        onsets = [0.1, 0.8, 0.9]
        got = align_display(
            [0.5, 1.3],
            [1, 1],
            [False, False],
            onsets,
            contiguous=[False, False],
            lead_punct=False,
            min_len_s=0.0,
        )
        assert got == [[0], [2]]

    def test_a_word_that_came_alone_leaves_the_latest_onset_to_its_punctuation(
        self,
    ) -> None:
        # "a" out at 5.2; "😀。" out alone at 5.6: the emoji's onset (5.28), then the mark's
        # sound (5.55) before the token. Before, the word skipped its own onset as a false
        # start and took the mark's, 270 ms late.
        onsets = [4.9, 5.28, 5.55]
        got = align_display(
            [5.2, 5.6],
            [1, 1],
            [0, 1],
            onsets,
            contiguous=[False, False],
            lead_punct=False,
            min_len_s=0.0,
        )
        assert got == [[0], [1]]

    def test_a_word_written_into_the_one_before_keeps_the_next_words_onset_for_it(
        self,
    ) -> None:
        # "彼。2026 いいえ": "2026" came with no space after "。", in the word of "彼" (first
        # token at 0.76); its onset (1.02) and the mark's (0.87) are that unit's, not "いいえ"'s
        onsets = [0.6, 0.87, 1.02, 1.32]
        got = align_display([0.76, 1.56], [1, 1], [2, 0], onsets, lead_punct=False, min_len_s=0.0)
        assert got == [[0], [3]]

    def test_onsets_after_a_units_token_are_never_its_own(self) -> None:
        got = align_display([0.5], [1], [False], [0.5, 0.6], lead_punct=False, min_len_s=0.0)
        assert got == [[]]

    def test_characters_of_one_run_take_several_onsets(self) -> None:
        # "今天在" came out as one run at 1.4 s: two token groups ("今天", "在"), two onsets
        got = align_display([1.4], [2], [False], [0.3, 0.6, 1.6], lead_punct=False, min_len_s=0.0)
        assert got == [[0, 1]]


def held_final() -> tuple[CaptionFinal, CaptionSegmenter]:
    """Five words spoken at 0.3 s intervals (0.25 s each), all held until 1.6 s, then
    released one per step, then a pause; a sixth word begins at 1.8 s."""
    seg = CaptionSegmenter()
    seg.start_generation(0.0)
    for i in range(6):
        seg.receive_onset(0.3 + 0.3 * i)
    t = 0.0
    events = []
    deltas = [""] * 20 + [" one", " two", " three", " four", " five", "."] + [""] * 8
    for d in deltas:
        t += STEP
        events += seg.receive_delta(d, t)
    events += seg.finish_generation("".join(deltas), t)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) == 1
    return finals[0], seg


class TestSegmenterShowsSpokenTimes:
    def test_a_held_burst_is_shown_where_it_was_spoken(self) -> None:
        final, _ = held_final()
        assert final.text == "one two three four five."
        for i, w in enumerate(final.words):
            assert w.start_s == pytest.approx(0.3 + 0.3 * i, abs=1e-6)
            assert w.end_s <= 0.3 + 0.3 * (i + 1)  # before the next word's onset
            assert w.end_s - w.start_s >= 0.2
        assert (final.start_s, final.end_s) == (final.words[0].start_s, final.words[-1].end_s)

    def test_continuations_keep_the_conservative_end(self) -> None:
        # The shown end is the spoken one; a continuation after this caption resumes after
        # the conservative end (the held token's step), which the shown times do not move.
        final, seg = held_final()
        assert seg.last_word_end_s is not None
        assert final.end_s < seg.last_word_end_s

    def test_a_held_word_that_nothing_else_bounds_ends_within_a_words_length(self) -> None:
        seg = CaptionSegmenter()
        seg.start_generation(0.0)
        seg.receive_onset(0.3)
        t = 0.0
        events = []
        for d in [""] * 20 + [" slide"] + [""] * 20:
            t += STEP
            events += seg.receive_delta(d, t)
        final = next(e for e in events if isinstance(e, CaptionFinal))
        assert final.words[0].start_s == pytest.approx(0.3)
        assert final.words[0].end_s <= 0.3 + 0.1 * len("slide") + 1e-9  # not its token's 1.6 s


def test_show_units_groups_a_runs_characters_at_token_starts() -> None:
    # "公园散步" out as one run at 2.0 s, tokens "公", "园", "散步"; onsets of 公园, 散步
    unit = Unit(2.0, contiguous=False, weights=[1, 1, 1, 1])
    show_units(
        [unit],
        [[True, True, True, False]],
        [0],
        [False],
        [1.0, 1.5],
        [],
        0.5,
        after_word=True,
        settled=True,
        lead_punct=False,
        gap_s=0.04,
        min_len_s=0.0,
        max_word_s=1.0,
    )
    assert unit.starts[0] == pytest.approx(1.0)
    assert unit.starts[2] == pytest.approx(1.5)  # the group starts at "散", a token start
    assert unit.ends[1] <= 1.5 - 0.04 + 1e-9
    assert all(a <= b for a, b in zip(unit.starts, unit.ends, strict=True))
    assert all(b <= a + 1e-9 for a, b in zip(unit.starts[1:], unit.ends[:-1], strict=True))


def test_a_held_word_ends_where_the_endpointer_heard_its_utterance_end() -> None:
    seg = CaptionSegmenter()
    seg.start_generation(0.0)
    seg.receive_onset(0.3)
    seg.receive_offset(0.57)  # "speech ended" (the glue passes the endpointer's end)
    t = 0.0
    events = []
    for d in [""] * 20 + [" slide"] + [""] * 20:
        t += STEP
        events += seg.receive_delta(d, t)
    final = next(e for e in events if isinstance(e, CaptionFinal))
    assert (final.words[0].start_s, final.words[0].end_s) == pytest.approx((0.3, 0.57))
    assert seg.last_word_end_s is not None and seg.last_word_end_s > 1.5  # resume: unchanged


def test_words_held_back_are_shown_where_their_stretch_was_spoken() -> None:
    # Real speech: one onset (0.5) and one offset (1.82) for four words; the model held each
    # 0.40-0.45 s, so every token came that late, with empty steps between (no burst). The
    # last token came 0.4 s after the utterance ended: the stretch was held that long.
    truth = [(0.50, 0.75), (0.78, 1.10), (1.12, 1.40), (1.43, 1.80)]
    held = [0.45, 0.40, 0.45, 0.42]
    units = [
        Unit(end + h, contiguous=False, weights=[w])
        for (_, end), h, w in zip(truth, held, [5, 7, 6, 8], strict=True)
    ]
    show_units(
        units,
        [[True]] * 4,
        [0] * 4,
        [False, False, False, True],
        [0.5],
        [1.82],
        0.0,
        after_word=False,
        settled=True,
        lead_punct=False,
        gap_s=0.04,
        min_len_s=0.0,
        max_word_s=1.0,
    )
    for unit, (start, end) in zip(units, truth, strict=True):
        # (by the token times alone, up to 0.43 s late)
        assert unit.start_s == pytest.approx(start, abs=0.05)
        assert unit.end_s == pytest.approx(end, abs=0.05)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(units, units[1:], strict=False))


def test_a_cjk_character_after_pads_is_shown_at_its_own_step() -> None:
    # "我们": each character one token, pads between (slow speech: 0.4 s a character). An
    # empty step before a 3-byte character may have held its first bytes, so the resume
    # point is back-dated over it; the shown end is not (common characters are one token).
    seg = CaptionSegmenter()
    seg.start_generation(0.0)
    t = 0.0
    events = []
    deltas = [""] * 4 + ["我"] + [""] * 4 + ["们"] + [""] * 20
    steps: dict[str, float] = {}
    for d in deltas:
        t += STEP
        if d:
            steps[d] = t - STEP / 2  # the step's middle
        events += seg.receive_delta(d, t)
    events += seg.finish_generation("".join(deltas), t)
    final = next(e for e in events if isinstance(e, CaptionFinal))
    assert [w.text for w in final.words] == ["我", "们"]
    for w in final.words:
        assert w.end_s == pytest.approx(steps[w.text], abs=1e-6)
    assert seg.last_word_end_s is not None
    assert seg.last_word_end_s <= steps["们"] - STEP + 1e-6  # (resume: conservative)
