"""The blank-token rut: vLLM keeps answering, but only with empty deltas (sans-I/O).

vllm-project/vllm#47614: a Voxtral Realtime session can fall into a state where every step
emits the streaming pad over real speech, for minutes, while the socket stays healthy. Nothing
on the wire says so; the only sign is a long stretch of speech that got no text at all.

:class:`RutDetector` counts, across consecutive generations, the seconds of *endpointed*
speech whose steps all came back empty, and reports:

- :attr:`RutSignal.RUT` once that reaches ``threshold_s`` (default 10 s): most utterances are
  shorter than that, and the model writes a word within about a second of hearing it (even
  when it holds text back under load, for a few seconds), so 10 s of speech with no text is
  not the model's rhythm. The stream then continues on a fresh socket, replaying from the last
  word.
- :attr:`RutSignal.PERSISTENT` if, in the same episode, another ``threshold_s`` of speech
  comes back empty (fresh sockets rut too): reported once; the stream keeps transcribing what
  comes.

Any text ends the episode. Only speech counts, and only from ``min_utterance_s`` into an
utterance, so silence, a cough or a door slam never counts; music or noise that the endpointer
takes for long speech can (it then costs one replay and a warning per episode).

A step counts only once the endpointing has *judged* its audio (:meth:`RutDetector.judged_to`):
an utterance's end is known only after its trailing silence, and a LiveKit VAD may judge
seconds behind the audio the stream already sent (a burst of frames, a busy executor). Until
then an utterance still open would pass that silence, or the next utterances' pauses, off as
speech. A step is judged once the endpointing is ``settle_s`` past it, or an utterance ended
after it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from .protocol import SAMPLE_RATE

__all__ = [
    "DEFAULT_BLANK_RUT_S",
    "MIN_BLANK_RUT_S",
    "MAX_BLANK_RUT_S",
    "RutOptions",
    "RutSignal",
    "RutDetector",
    "blank_rut_options",
]

_MAX_INTERVALS = 64
_MAX_PENDING = 1024  # blank steps waiting for the endpointing (80 s of 80 ms steps)

DEFAULT_BLANK_RUT_S = 10.0
MIN_BLANK_RUT_S = 3.0
"""Below this, text the model holds back for a few seconds (it does, under load) would
look like a rut."""
MAX_BLANK_RUT_S = 600.0


@dataclass(frozen=True)
class RutOptions:
    """When silence from the model over speech counts as the rut."""

    threshold_s: float = DEFAULT_BLANK_RUT_S
    """Seconds of speech with only empty deltas, across generations."""
    min_utterance_s: float = 1.0
    """Speech counts from this far into an utterance (a cough or a slam is shorter)."""
    settle_s: float = 1.0
    """A step's audio is judged once the endpointing is this far past it (longer than the
    silence that ends an utterance: 0.4-0.6 s for the built-in endpointers and Silero's)."""

    def __post_init__(self) -> None:
        for name in ("threshold_s", "min_utterance_s", "settle_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"RutOptions.{name} must be a number >= 0, got {value!r}")
        if self.threshold_s <= 0:
            raise ValueError(f"RutOptions.threshold_s must be > 0, got {self.threshold_s!r}")


class RutSignal(enum.Enum):
    RUT = "rut"
    """A new episode: continue on a fresh socket, replaying from :attr:`RutDetector.since`."""
    PERSISTENT = "persistent"
    """The fresh socket ruts too: report it; nothing more to do in this episode."""


class RutDetector:
    """Feed it the speech boundaries and every step's outcome; it says when to act.

    Positions are absolute 16 kHz samples of the stream.
    """

    def __init__(self, options: RutOptions | None = None) -> None:
        self.options = options or RutOptions()
        self._speech: deque[tuple[int, int | None]] = deque()  # (start, end or None if open)
        self._blank = 0  # speech samples with only empty deltas since the last text / signal
        self._episode = 0  # signals given in the current episode (0: none)
        self._last_text_end: int | None = None
        self._stretch_start: int | None = None
        self._pending: deque[tuple[int, int]] = deque()  # blank steps not judged yet
        self._judged = 0  # the endpointing has judged the audio before this sample
        self._closed_end = 0  # the end of the last utterance that ended

    @property
    def in_episode(self) -> bool:
        """Whether a rut was reported and no text came since."""
        return self._episode > 0

    @property
    def since(self) -> int | None:
        """Where a replay should begin: the end of the last step that carried text, or, if
        none ever did, the start of the first utterance of the blank stretch."""
        return self._last_text_end if self._last_text_end is not None else self._stretch_start

    def speech_started(self, sample: int) -> None:
        if self._speech and self._speech[-1][1] is None:
            return
        self._speech.append((sample, None))
        if len(self._speech) > _MAX_INTERVALS:
            self._speech.popleft()

    def speech_ended(self, sample: int) -> None:
        if self._speech and self._speech[-1][1] is None:
            start = self._speech[-1][0]
            end = max(start, sample)
            self._speech[-1] = (start, end)
            self._closed_end = max(self._closed_end, end)

    def judged_to(self, sample: int) -> None:
        """The endpointing has judged the audio before ``sample`` (absolute): the built-in
        endpointer, as the audio arrives; a LiveKit VAD, at each of its events."""
        self._judged = max(self._judged, sample)

    def step(self, lo: int, hi: int, text: bool) -> RutSignal | None:
        """One engine step that transcribed samples ``[lo, hi)``; ``text``: its delta was not
        empty."""
        if text:
            self._blank = 0
            self._episode = 0
            self._last_text_end = max(hi, self._last_text_end or 0)
            self._stretch_start = None
            self._pending.clear()
            return None
        pending = self._pending
        pending.append((lo, hi))
        if len(pending) > _MAX_PENDING:  # the endpointing stopped judging: forget the oldest
            pending.popleft()
        judged = max(self._judged - int(self.options.settle_s * SAMPLE_RATE), self._closed_end)
        while pending and pending[0][1] <= judged:  # (in order but for overlapping lanes)
            a, b = pending.popleft()
            signal = self._count(a, b)
            if signal is not None:
                pending.clear()  # the socket is replaced: its other steps say nothing more
                return signal
        return None

    def _count(self, lo: int, hi: int) -> RutSignal | None:
        counted = self._speech_in(lo, hi)
        if counted and self._stretch_start is None:
            self._stretch_start = self._utterance_start(lo)
        self._blank += counted
        if self._blank < self.options.threshold_s * SAMPLE_RATE:
            return None
        self._blank = 0
        self._episode += 1
        if self._episode == 1:
            return RutSignal.RUT
        if self._episode == 2:
            return RutSignal.PERSISTENT
        return None

    def _utterance_start(self, at: int) -> int:
        for start, _ in reversed(self._speech):
            if start <= at:
                return start
        return at

    def _speech_in(self, lo: int, hi: int) -> int:
        skip = int(self.options.min_utterance_s * SAMPLE_RATE)
        total = 0
        for start, end in reversed(self._speech):  # newest first: a step is mostly recent
            if end is not None and end <= lo:
                break  # (in order and disjoint: every older one ended before too)
            a = max(lo, start + skip)
            b = hi if end is None else min(hi, end)
            if b > a:
                total += b - a
        return total


def blank_rut_options(blank_rut_s: float | None) -> RutOptions | None:
    """``STT(blank_rut_s=...)`` checked: seconds of speech with only empty deltas that count
    as the rut, or None to never watch for it."""
    if blank_rut_s is None:
        return None
    if (
        isinstance(blank_rut_s, bool)
        or not isinstance(blank_rut_s, (int, float))
        or not math.isfinite(blank_rut_s)
        or not MIN_BLANK_RUT_S <= blank_rut_s <= MAX_BLANK_RUT_S
    ):
        raise ValueError(
            f"blank_rut_s must be a number of seconds from {MIN_BLANK_RUT_S:g} to "
            f"{MAX_BLANK_RUT_S:g} (or None to never watch for vLLM's blank-token rut), "
            f"got {blank_rut_s!r}"
        )
    return RutOptions(threshold_s=float(blank_rut_s))
