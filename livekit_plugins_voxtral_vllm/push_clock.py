"""The wall time behind the audio clock: when each stretch of a stream's audio was pushed.

A stream has two clocks (the style guide keeps them apart): audio positions in samples, and
``now`` in monotonic seconds. Latency is measured across them: from the moment a word's
audio was pushed to the moment its caption came out. :class:`PushClock` remembers, for each
push, the sample where it ended and ``now`` (only for the audio the history still holds), and
answers :meth:`PushClock.since`: how long ago the audio at a sample was pushed.
"""

from __future__ import annotations

import bisect
import collections

__all__ = ["PushClock"]


class PushClock:
    """``(end sample, now)`` of each push still in the history."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: collections.deque[tuple[int, float]] = collections.deque()

    def pushed(self, end_sample: int, now: float, history_start: int) -> None:
        """Audio up to ``end_sample`` (absolute) arrived at ``now``; the history now starts
        at ``history_start``."""
        marks = self._marks
        marks.append((end_sample, now))
        while len(marks) > 2 and marks[1][0] < history_start:
            marks.popleft()

    def since(self, sample: int, now: float) -> float | None:
        """Wall time since the audio at absolute ``sample`` was pushed (None: not yet)."""
        marks = self._marks
        i = bisect.bisect_left(marks, (sample, float("-inf")))
        if i >= len(marks):
            return None
        return max(0.0, now - marks[i][1])
