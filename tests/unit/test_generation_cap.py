"""Unit tests of ``generation_cap.py``: when a long generation is rolled over (issue 13)."""

from __future__ import annotations

import math

import pytest

from livekit_plugins_voxtral_vllm.generation_cap import DEFAULT_MAX_GENERATION_S, GenerationCap

SR = 16000


def test_default_is_a_minute() -> None:
    assert DEFAULT_MAX_GENERATION_S == 60.0
    assert GenerationCap().max_generation_s == 60.0


@pytest.mark.parametrize("bad", [0, 4.99, -1, math.nan, math.inf, "60", True, None, 10**6])
def test_bad_values_are_refused_with_their_value(bad: object) -> None:
    with pytest.raises(ValueError, match="max_generation_s") as info:
        GenerationCap(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [-1.0, math.nan, "1"])
def test_bad_grace_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="grace_s"):
        GenerationCap(60, grace_s=bad)  # type: ignore[arg-type]


def test_nothing_before_the_cap() -> None:
    cap = GenerationCap(60)
    assert cap.check(60 * SR - 1, at_caption_pause=True, after_word_gap=True) is None


def test_at_the_cap_it_waits_for_a_caption_pause() -> None:
    cap = GenerationCap(60, grace_s=20)
    assert cap.check(60 * SR, at_caption_pause=False, after_word_gap=True) is None
    assert cap.check(61 * SR, at_caption_pause=True, after_word_gap=False) is not None


def test_after_the_grace_a_gap_after_a_word_will_do() -> None:
    cap = GenerationCap(60, grace_s=20)
    assert cap.check(80 * SR - 1, at_caption_pause=False, after_word_gap=True) is None
    assert cap.check(80 * SR, at_caption_pause=False, after_word_gap=False) is None
    assert cap.check(80 * SR, at_caption_pause=False, after_word_gap=True) is not None


def test_value_semantics() -> None:
    assert GenerationCap(90) == GenerationCap(90.0)
    assert GenerationCap(90) != GenerationCap(90, grace_s=1)
    assert "90" in repr(GenerationCap(90))
