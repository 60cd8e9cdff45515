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
from bisect import bisect_left
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
    likely_first_s: float | None = None
    """Where its first token most likely came, for the shown times, when that is later than
    ``first_s``: a character of 3 bytes after an empty step is back-dated over it in case
    the step held its first bytes, but nearly every common CJK character and kana is one
    Tekken token, and the empty step a pad."""
    start_s: float = 0.0
    end_s: float = 0.0
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    @property
    def shown_first_s(self) -> float:
        """``likely_first_s`` if set, else ``first_s``."""
        return self.first_s if self.likely_first_s is None else self.likely_first_s


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


# -- display times -------------------------------------------------------------------------
#
# The times above are conservative: continuations cut the audio at them, so they lean towards
# the latest onset before a token. After the model held text back, that onset is a later
# word's, and every word of the burst is shown one or more words late. The captions' word
# times come from a monotone alignment of units to onsets instead (:func:`align_display`),
# which uses what the conservative rule cannot: the onsets come in the order of the words,
# from the segment's start.

# Costs of the alignment (only their order matters): an onset no unit explains (a noise,
# or a sign that the words were matched one off), a unit with no onset (a word run into the
# one before, with no pause the endpointer saw), a further onset inside a unit of several
# words (characters of a script without spaces that came out in one run), an onset left over
# after the last unit although it lies well before that unit's token (a word that should
# have come out already; some do, behind a burst), an onset right after a word followed by
# punctuation (a pause or, in the emulator's tone speech, the punctuation's own tone), and a
# tie-break per second between a unit's onset and its first token (less delay is likelier).
_SKIP_COST = 1.0
_NONE_COST = 0.6
_EXTRA_COST = 0.1
_TRAIL_COST = 0.3
_PUNCT_COST = 0.0
_DELAY_COST = 0.02
_BEAM = 3.0
# A word lasts at most about this long per character, and a short one this long (slow speech
# is 12-15 characters per second; for an end that only the word's token bounds).
_MAX_CHAR_S = 0.1
# A stretch of speech whose last token came this much after it ended was held back.
_HELD_S = 0.15
_MAX_SHORT_WORD_S = 0.3


def align_display(
    firsts: Sequence[float],
    words: Sequence[int],
    punct: Sequence[int],
    onsets: Sequence[float],
    *,
    contiguous: Sequence[bool] | None = None,
    lead_punct: bool,
    min_len_s: float,
    settled: bool = True,
) -> list[list[int]]:
    """For each unit (``firsts``: its first token's step time; ``words``: how many words it
    holds), the indices of the onsets that started its words (none, or one to ``words``, in
    order): a monotone alignment at least cost (see the costs above).

    A unit takes only onsets more than ``min_len_s`` before its first token (a word is heard
    whole before it is written). ``punct[i]``: unit ``i`` has that many punctuation marks
    (or words written into it with no space after one, as ``彼。2026``), so that many onsets
    right after its own may be pauses, the marks' sounds or those words, not other units;
    ``lead_punct``: the same for the first onset (the caption before ended with punctuation).
    ``contiguous[i]``: unit ``i`` came right behind the one before; one of one word that
    came alone (after empty steps) may skip, at no cost, onsets heard after the unit before
    came out (they can only be its own: a false start, a breath), so it starts at the latest
    that leaves one onset before its token for each of its punctuation marks.
    ``settled``: the units end at a pause or a generation's end, so an onset left over well
    before the last unit's token is unlikely (else a caption cut inside speech: later words'
    onsets are expected there). Cost O(units x onsets x words per unit).
    """
    n, m = len(firsts), len(onsets)
    inf = math.inf
    alone = [not c for c in contiguous] if contiguous is not None else [False] * n
    alone.append(False)
    # cost[i][j]: i units placed, j onsets used; back[i][j]: (previous j, onsets taken)
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int]]] = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    lo, top = 0, 0  # the row's states lie between them
    for i in range(n + 1):
        row = cost[i]
        nxt = cost[i + 1] if i < n else None
        f = firsts[i] if i < n else 0.0
        p = punct[i] if i < n else 0
        k = words[i] if i < n else 0
        # onsets unit i may take (an onset skipped here is one it could have taken; a later
        # one is the next units' to skip, or left over)
        usable = bisect_left(onsets, f - min_len_s) if i < n else 0
        top = max(top, usable)
        # (a state this much worse than the row's best is never on the best path)
        cutoff = min(row[lo : top + 1]) + _BEAM
        while row[lo] > cutoff:
            lo += 1
        for j in range(lo, top + 1):
            c = row[j]
            if c > cutoff:
                continue
            if j < usable:  # onset j explains no unit
                if i == 0:
                    skip = _PUNCT_COST if (j == 0 and lead_punct) else _SKIP_COST
                elif alone[i] and k == 1 and onsets[j] > firsts[i - 1] and usable - j > p + 1:
                    skip = 0.0  # (the onsets after it: the unit's, then its marks')
                else:
                    skip = _SKIP_COST
                if c + skip < row[j + 1]:
                    row[j + 1] = c + skip
                    back[i][j + 1] = (j, -1)
            if nxt is None:
                continue
            if c + _NONE_COST < nxt[j]:  # unit i has no onset
                nxt[j] = c + _NONE_COST
                back[i + 1][j] = (j, 0)
            if j >= usable:
                continue
            took = c + _DELAY_COST * (f - onsets[j])
            for t in range(1, min(k, usable - j) + 1):  # its words start at onsets j..j+t-1
                e = j + t
                if took < nxt[e]:
                    nxt[e] = took
                    back[i + 1][e] = (j, t)
                for q in range(1, min(p, m - e) + 1):
                    # ... and the onsets after them are its punctuation's (or glued words')
                    if took + _PUNCT_COST * q < nxt[e + q]:
                        nxt[e + q] = took + _PUNCT_COST * q
                        back[i + 1][e + q] = (j, t)
                took += _EXTRA_COST * (2 * t - 1)  # (t - 1)^2 in all
        top = min(m, top + 1)  # (a punctuation's onset after the last usable one)
    last = firsts[-1] - min_len_s if n else -inf
    best, j = inf, 0
    trail = sum(1 for o in onsets if o < last) if settled else 0
    for e in range(top + 1):
        total = cost[n][e] + _TRAIL_COST * max(0, trail - e)
        if total < best:
            best, j = total, e
    out: list[list[int]] = [[] for _ in range(n)]
    i = n
    while i > 0:
        pj, t = back[i][j]
        if t >= 0:
            out[i - 1] = list(range(pj, pj + t))
            i -= 1
        j = pj
    return out


def show_units(
    units: Sequence[Unit],
    splits: Sequence[Sequence[bool]],
    glued: Sequence[int],
    punct: Sequence[bool],
    onsets: Sequence[float],
    offsets: Sequence[float],
    after_s: float,
    *,
    after_word: bool,
    settled: bool,
    lead_punct: bool,
    gap_s: float,
    min_len_s: float,
    max_word_s: float,
) -> None:
    """Set the units' display times (``starts``, ``ends``, ``start_s``, ``end_s``) in
    place, replacing the conservative ones of :func:`place_units`; non-decreasing.

    Units take onsets by :func:`align_display`. A unit with onsets starts at the first and
    ends by its first token, before the next onset (the next stretch of sound began), and by
    the first of the endpointer's ``offsets`` (utterance ends, sorted) after it. A unit whose
    words took several onsets (characters of a script without spaces that came out in one
    run) shares them among its words in order, as evenly as their number allows, a new group
    only at a word that began a token (``splits[unit][word]``). ``glued[unit]``: words
    written into its words with no space after punctuation (``彼。2026``), whose onsets it
    may take after its own, like its punctuation's. Units with no
    onset that came right behind the one before (a burst) share the span from that unit's
    onset to the run's last token (or the next onset a unit took) by their length; one that
    came alone ends by its token and starts at most ``max_word_s`` a word before it, never
    before the previous word's end plus ``gap_s``.
    """
    n = len(units)
    idx = align_display(
        [u.shown_first_s for u in units],
        [max(1, sum(1 for b in sp[1:] if b) + 1) for sp in splits],
        [int(p) + g for p, g in zip(punct, glued, strict=True)],
        onsets,
        contiguous=[u.contiguous for u in units],
        lead_punct=lead_punct,
        min_len_s=min_len_s,
        settled=settled,
    )
    heard = _heard_by(units, idx, onsets, offsets, gap_s)
    prev_end = after_s
    gap = gap_s if after_word else 0.0
    i = 0
    while i < n:
        # a run: this unit and the burst of units with no onset right behind it
        k = i + 1
        while k < n and not idx[k] and units[k].contiguous and len(idx[i]) < 2:
            k += 1
        run = units[i:k]
        head = idx[i]
        end = heard[k - 1]
        if head:
            start = onsets[head[0]]
            nxt: int | None = head[-1] + 1 if k - i == 1 else None
            if nxt is None and k < n and idx[k]:
                nxt = idx[k][0]
            if nxt is not None and nxt < len(onsets):
                end = min(end, onsets[nxt] - gap_s)
            # nothing else bounds it when the next onset is not known yet (a new utterance's
            # comes with its generation), and a held word's token may come a second late
            end = min(end, onsets[head[-1]] + sum(_spoken_s(u) for u in run))
        else:
            words = sum(max(1, len(u.weights)) for u in run)
            start = max(prev_end + gap, heard[i] - max_word_s * words)
            if k < n and idx[k]:
                end = min(end, onsets[idx[k][0]] - gap_s)
        gap = gap_s
        start = max(min(start, heard[i]), prev_end)
        for off in offsets:  # the utterance ended there: its words too
            if off > start + _MIN_WORD_S:
                end = min(end, off)
                break
        end = max(end, start + _MIN_WORD_S * sum(max(1, len(u.weights)) for u in run))
        if head and len(head) > 1:
            unit = units[i]
            marks = [max(onsets[o], start) for o in head] + [end]
            for g in range(1, len(marks)):
                marks[g] = max(marks[g], marks[g - 1])
            unit.starts, unit.ends = [], []
            _groups(unit, splits[i], marks, gap_s, (unit.starts, unit.ends))
            unit.start_s, unit.end_s = unit.starts[0], unit.ends[-1]
            prev_end = unit.end_s
            i = k
            continue
        total = sum(max(1, sum(u.weights)) for u in run)
        t = start
        for r, u in enumerate(run):
            share = (end - start) * max(1, sum(u.weights)) / total
            u_end = end if r == len(run) - 1 else min(heard[i + r], t + share)
            u_end = max(u_end, t + _MIN_WORD_S * max(1, len(u.weights)))
            u.starts, u.ends = [], []
            _spread(u.weights or [1], t, u_end, (u.starts, u.ends))
            u.start_s, u.end_s = t, u_end
            t = u_end
        prev_end = t
        i = k


def _heard_by(
    units: Sequence[Unit],
    idx: Sequence[Sequence[int]],
    onsets: Sequence[float],
    offsets: Sequence[float],
    gap_s: float,
) -> list[float]:
    """By when each unit's words were heard, for placing them: its first token's time, less
    how late the model wrote the stretch of speech it belongs to.

    A stretch runs from a unit that took an onset to the next one (or from the first unit).
    Its last word was heard by the stretch's end: the next onset a unit took (less
    ``gap_s``), or the end of the utterance (the first offset after it). Whatever its last
    token came later than that is how long the model held the stretch's text (under load,
    after a pause), and every unit of the stretch is taken to have been held as long (never
    before the stretch's onset; non-decreasing). When that is more than ``_HELD_S`` and the
    stretch's onset is known, each unit's time is the mean of that and of where its words
    end if the stretch's words share its span by length. With no end known, the token times
    stand.
    """
    n = len(units)
    heard = [u.shown_first_s for u in units]
    heads = [i for i in range(n) if idx[i]]
    bounds = [0, *[h for h in heads if h > 0], n]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi <= lo:
            continue
        begin = onsets[idx[lo][0]] if idx[lo] else -math.inf
        if hi < n:
            end: float | None = onsets[idx[hi][0]] - gap_s
        else:
            end = next((o for o in offsets if o > max(begin, units[lo].shown_first_s - 5.0)), None)
        if end is None:
            continue
        late = units[hi - 1].shown_first_s - end
        if late <= 0:
            continue
        floor = begin
        for k in range(lo, hi):
            heard[k] = max(units[k].shown_first_s - late, floor + _MIN_WORD_S)
            floor = heard[k]
        if late <= _HELD_S or begin == -math.inf:
            continue
        # Held: each unit was held between nothing and ``late``; by length, its words take
        # their share of the stretch. Each guess is off where speech is uneven or the hold
        # was; halfway between them is closer than either (benchmarks/real_voice_word_times)
        total = sum(max(1, sum(u.weights)) for u in units[lo:hi])
        said = 0
        for k in range(lo, hi):
            said += max(1, sum(units[k].weights))
            share = min(units[k].shown_first_s, begin + (end - begin) * said / total)
            heard[k] = (heard[k] + share) / 2
    return heard


def _spoken_s(unit: Unit) -> float:
    """How long a unit's words can take to say, at most (for an end nothing else bounds)."""
    return max(_MAX_SHORT_WORD_S, _MAX_CHAR_S * sum(unit.weights or [1]))


def _spread(
    weights: Sequence[int], start: float, end: float, into: tuple[list[float], list[float]]
) -> None:
    starts, ends = into
    total = sum(weights)
    t = start
    for w in weights:
        starts.append(t)
        t += (end - start) * w / total
        ends.append(t)
    ends[-1] = end


def _groups(
    unit: Unit,
    splits: Sequence[bool],
    marks: Sequence[float],
    gap_s: float,
    into: tuple[list[float], list[float]],
) -> None:
    """Share a unit's words among ``len(marks) - 1`` onsets (``marks``: the onsets, then the
    unit's end), in order, as evenly as their number allows, starting a group only at a word
    that began a token (``splits``)."""
    weights = unit.weights or [1]
    groups = len(marks) - 1
    k = len(weights)
    cands = [w for w in range(1, k) if w < len(splits) and splits[w]]
    bounds = [0]
    for g in range(1, groups):
        want = g * k / groups
        left = groups - g  # boundaries still to place after this one, this one included
        usable = [c for c in cands if c > bounds[-1]]
        usable = usable[: max(1, len(usable) - left + 1)]
        bounds.append(min(usable, key=lambda c: abs(c - want)) if usable else bounds[-1])
    bounds.append(k)
    t = marks[0]
    pending: float | None = None  # the onset of a group left empty: the next one starts there
    for g in range(groups):
        lo, hi = bounds[g], bounds[g + 1]
        if hi == lo:
            pending = marks[g] if pending is None else pending
            continue
        start = max(marks[g] if pending is None else pending, t)
        pending = None
        end = marks[g + 1] - (gap_s if g + 1 < groups else 0.0)
        end = max(end, start + _MIN_WORD_S * (hi - lo))
        _spread(weights[lo:hi], start, end, into)
        t = end
