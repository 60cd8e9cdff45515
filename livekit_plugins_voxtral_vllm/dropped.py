"""Which stretches of a stream's audio were never transcribed, each sample counted once.

The core drops audio in several places (a catch-up skipping a backlog, audio that left the
history during an outage, a replay that finds its audio gone). Those places compute ranges
from different anchors and may overlap, or come out reversed when the history has moved past
a generation's whole range; adding their lengths made ``stats.dropped_audio_s`` count a
stretch twice or go negative (-3.6 s was seen). :class:`DroppedAudio` keeps the union of
the ranges counted so far and says how much of a new range was not counted yet.
"""

from __future__ import annotations

__all__ = ["DroppedAudio"]

_MAX_RANGES = 256


class DroppedAudio:
    """A union of disjoint ``[start, end)`` sample ranges, and its total length.

    Bounded: past ``_MAX_RANGES`` disjoint ranges the two oldest are merged (the gap between
    them then counts as already dropped, so a later range over that gap is under-counted,
    never counted twice).
    """

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []  # sorted, disjoint, not touching
        self.total = 0
        """Samples counted: the length of the union."""

    def add(self, start: int, end: int) -> int:
        """Count ``[start, end)``; return how many of its samples were not counted before
        (0 for an empty or reversed range)."""
        if end <= start:
            return 0
        new = end - start
        kept: list[tuple[int, int]] = []
        lo, hi = start, end
        for a, b in self._ranges:
            if b < start or a > end:
                kept.append((a, b))
                continue
            new -= max(0, min(b, end) - max(a, start))  # the overlap was counted already
            lo, hi = min(lo, a), max(hi, b)
        kept.append((lo, hi))
        kept.sort()
        if len(kept) > _MAX_RANGES:
            (a0, _), (_, b1) = kept[0], kept[1]
            kept[:2] = [(a0, b1)]
        self._ranges = kept
        self.total += new
        return new

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The ranges counted, sorted and disjoint (a copy)."""
        return list(self._ranges)
