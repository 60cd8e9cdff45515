"""Words from sub-word tokens: where a word starts, and when it was spoken (sans-I/O).

Voxtral emits one Tekken token per 80 ms step (``vllm-realtime.md`` §3.2): ``" 2026"`` comes
as ``" "``, ``"2"``, ``"0"``, ``"2"``, ``"6"``; ``"公园"`` as ``"公"``, ``""``, ``"园"``. This
module holds the two rules the caption segmenter builds words with:

- :func:`char_kind`: what a character does to the word being built. Whitespace ends it; a
  character of a script written without spaces (CJK, kana, Thai, Lao, Khmer, Myanmar) is a
  word of its own; combining marks and word-internal joiners (``'`` ``-``) extend it;
  punctuation attaches to it and completes it; anything else extends it.
- :func:`place_units`: the times of words that arrived in a burst. A word's first token comes
  from the step covering the word's end, later than that when the model's output backs up
  (several tokens queued) or when it held text back for a while. A *unit* is a run of words
  the endpointer heard as one stretch of sound; its start is the endpointer's onset and its
  end the first token's step, clipped to the next onset, since a word cannot end after the
  next one started. Units with no onset share the audio since the previous unit evenly, so a
  burst is never stamped into 40 ms.
"""

from __future__ import annotations

import enum
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["CharKind", "char_kind", "utf8_len", "Unit", "assign_onsets", "place_units"]


class CharKind(enum.Enum):
    SPACE = "space"
    SOLO = "solo"
    """A character of a script written without spaces: a word by itself."""
    MARK = "mark"
    """A combining mark: always part of the character before it."""
    JOINER = "joiner"
    """Word-internal punctuation (apostrophe, hyphen): extends the word, does not end it."""
    OPENER = "opener"
    """Opening punctuation (``¿ ¡ ( « “``): starts a word when spaced."""
    PUNCT = "punct"
    """Closing punctuation (``. , ? ! 。 ， 、 ？ ！``): attaches to the word and completes it."""
    TEXT = "text"


# Scripts written without spaces between words (code point ranges, inclusive).
_SOLO_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3134F),  # CJK extensions B-G
)
_JOINERS = frozenset("'’-‐‑")
_OPENERS = frozenset("¿¡")


def _solo(code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in _SOLO_RANGES)


def char_kind(ch: str) -> CharKind:
    """What ``ch`` (one character) does to the word being built."""
    if ch.isspace():
        return CharKind.SPACE
    code = ord(ch)
    if code < 0x80:
        if ch.isalnum():
            return CharKind.TEXT
        if ch in _JOINERS:
            return CharKind.JOINER
        if ch in '([{"':
            return CharKind.OPENER
        return CharKind.PUNCT if unicodedata.category(ch).startswith("P") else CharKind.TEXT
    cat = unicodedata.category(ch)
    if cat.startswith("M"):
        return CharKind.MARK
    if ch in _JOINERS:
        return CharKind.JOINER
    if ch in _OPENERS or cat in ("Ps", "Pi"):
        return CharKind.OPENER
    if cat.startswith("P"):
        return CharKind.PUNCT
    if _solo(code):
        return CharKind.SOLO
    return CharKind.TEXT


def utf8_len(ch: str) -> int:
    """Bytes of ``ch`` in UTF-8: a character of 3 or 4 bytes may span several tokens."""
    code = ord(ch)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


@dataclass(eq=False)
class Unit:
    """Words heard as one stretch of sound, with what is known about their time.

    ``first_s`` is the midpoint of the step of the unit's first token: the unit ended by then.
    ``weights`` are the words' lengths in characters. :func:`assign_onsets` sets ``onset_s``
    (the endpointer's onset that started it, if one did) and :func:`place_units` the times.
    """

    first_s: float
    contiguous: bool
    """Its first token followed the previous unit's tokens with no empty step in between:
    the output may have been backed up, so the unit may have ended well before ``first_s``."""
    fresh: bool = False
    """The first unit of a generation: nothing relates its step times to the unit before."""
    weights: list[int] = field(default_factory=list)
    onset_s: float | None = None
    start_s: float = 0.0
    end_s: float = 0.0
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)


_MIN_WORD_S = 0.02
_MIN_SOUND_S = 0.2


def assign_onsets(units: Sequence[Unit], onsets: Sequence[float], before_s: float) -> None:
    """Give each unit the onset that started it, if one did (``onset_s``), in place.

    From the last unit back, each takes the latest onset before its first token's step that
    is earlier than the onset of the unit after it, so a burst's units take the burst's onsets
    in order. A unit that came alone (after an empty step) takes only an onset later than the
    previous unit's first token: its sound began after the one before was output; an older
    onset is an earlier word's. A unit right behind the previous one (a burst) may take an
    older onset only if enough remain for the units before it (the same for a unit behind
    one that was backed up, or the first of a generation). ``before_s`` stands for the
    previous unit's first token before the first unit (or minus infinity).
    """
    hi = len(onsets)
    limit = math.inf
    for k in range(len(units) - 1, -1, -1):
        unit = units[k]
        unit.onset_s = None
        prev_first = units[k - 1].first_s if k else before_s
        # (a word is longer than a step: its onset lies before the step of its end)
        while hi and (onsets[hi - 1] >= unit.first_s or onsets[hi - 1] >= limit):
            hi -= 1
        if not hi:
            continue
        o = onsets[hi - 1]
        # the previous unit's first token may have come late (it was backed up, or came
        # from another generation): then an onset before it can still be this unit's
        maybe_late = unit.contiguous or unit.fresh or (k > 0 and units[k - 1].contiguous)
        if o <= prev_first and (not maybe_late or hi - 1 < k):
            # an earlier word's onset: its own, unless the earlier ones all have one left
            continue
        unit.onset_s = limit = o
        hi -= 1


def place_units(
    units: Sequence[Unit],
    after_s: float,
    onsets: Sequence[float],
    *,
    gap_s: float,
    max_word_s: float,
    after_word: bool = True,
) -> None:
    """Give every unit (and each of its words) a start and an end, in place.

    ``after_s``: where the audio of the first unit can begin: the end of the previous word
    (``after_word``; a gap of ``gap_s`` follows it), or the generation's start. ``onsets``:
    the endpointer's word onsets, sorted; ``onset_s`` of the units set by
    :func:`assign_onsets`. Times are non-decreasing from unit to unit and word to word.
    """
    prev_end = after_s
    gap = gap_s if after_word else 0.0
    used = {u.onset_s for u in units if u.onset_s is not None}
    for unit in units:
        words = max(1, len(unit.weights))
        if unit.onset_s is not None:
            start = max(unit.onset_s, prev_end)
        else:
            start = max(prev_end + gap, unit.first_s - max_word_s * words)
        gap = gap_s
        start = max(min(start, unit.first_s), prev_end)
        end = unit.first_s
        # A later onset that started a later unit, or any later onset when this unit came
        # right behind the previous one (the output was backed up), is where the next stretch
        # of sound began: this one ended before it. (An onset of no unit, after a unit that
        # came alone, may be a pause inside the word.)
        nxt = _next_onset(onsets, start + gap_s)
        if nxt is not None and nxt - gap_s < end and (unit.contiguous or nxt in used):
            end = nxt - gap_s
        unit.start_s, unit.end_s = start, max(end, start + _MIN_WORD_S)
        prev_end = unit.end_s
    _spread_bursts(units)
    for unit in units:
        _split(unit)


def _next_onset(onsets: Sequence[float], after_s: float) -> float | None:
    for o in onsets:
        if o > after_s:
            return o
    return None


def _spread_bursts(units: Sequence[Unit]) -> None:
    """Units with no onset that came right behind the previous one (a backed-up or held
    burst with nothing from the endpointer to place them) share the span of the whole run in
    proportion to their length, instead of a few tens of ms each."""
    i = 0
    n = len(units)
    while i < n:
        j = i + 1
        while j < n and units[j].onset_s is None and units[j].contiguous:
            j += 1
        if j - i > 1:
            run = units[i:j]
            lo, hi = run[0].start_s, run[-1].end_s
            total = sum(max(1, sum(u.weights)) for u in run)
            t = lo
            for u in run:
                width = (hi - lo) * max(1, sum(u.weights)) / total
                u.start_s = t
                u.end_s = min(u.first_s, t + width) if u is not run[-1] else hi
                u.end_s = max(u.end_s, u.start_s + _MIN_WORD_S)
                t = u.end_s
        i = j


def _split(unit: Unit) -> None:
    """Share the unit's span among its words in proportion to their length."""
    weights = unit.weights or [1]
    total = sum(weights)
    span = unit.end_s - unit.start_s
    t = unit.start_s
    unit.starts, unit.ends = [], []
    for w in weights:
        unit.starts.append(t)
        t += span * w / total
        unit.ends.append(t)
    unit.ends[-1] = unit.end_s
