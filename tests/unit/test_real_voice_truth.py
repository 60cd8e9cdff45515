"""The truth of benchmarks/real_voice_word_times.py: espeak-ng's own word timing, and the
scripted recogniser that hands the emulator a clip's words as their audio arrives."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _espeak_words as E  # noqa: E402
import real_voice_word_times as R  # noqa: E402

pytestmark = pytest.mark.skipif(not E.available(), reason="needs Debian's espeak-ng")


def test_every_word_is_timed_in_order_where_there_is_sound() -> None:
    text = "Okay, so the next item on the agenda is hiring."
    for _ in range(2):  # (espeak-ng's second message repeats a word event at position 0)
        spoken = E.speak("en", 200, text)
        assert " ".join(w.text for w in spoken.words) == text
        starts = [w.start_s for w in spoken.words]
        assert starts == sorted(starts)
        for w in spoken.words:
            assert w.start_s < w.end_s <= spoken.samples.size / E.RATE + 1e-9
            a, b = int(w.start_s * E.RATE), int(w.end_s * E.RATE)
            rms = np.sqrt(np.mean((spoken.samples[a:b] / 32768.0) ** 2))
            assert rms > 0.01, w  # a word's span holds speech
    # "on the" is one word event of espeak-ng's: shared by length, not scored
    assert [w.exact for w in spoken.words if w.text in ("on", "the")] == [True, False, False]


def test_scripted_recogniser_finds_a_generation_anywhere_in_the_clip() -> None:
    clip = R.make_clip("en", "en-us", 175, ("Can everyone see my screen?", "Thank you."))
    start = int(clip.words[1].start_s * R.RATE) - 160  # a continuation from the second word
    dec = R.ScriptedDecoder(clip)
    dec.feed(clip.samples[start : start + 16000])
    assert dec.offset == start
    heard = dec.pop_tokens(16000)
    assert heard and heard == [
        " " + w.text for w in clip.words[1:] if w.end_s * R.RATE <= start + 16000
    ]
    dec.feed(np.zeros(1600, np.int16))  # the right pad: no audio of the clip
    assert dec.pop_tokens(10**6) == []  # ("Thank you." was never heard)
