"""Where a LiveKit VAD's events fall on the core's 16 kHz clock, whatever rate it counts at.

LiveKit documents ``VADEvent.samples_index`` as relative to the VAD's *inference* rate, which
is not announced anywhere: Silero counts at 16 kHz (or 8 kHz), a third-party VAD may count at
its input rate (48 kHz from a WebRTC track). Taken as 16 kHz, a 48 kHz count puts every
utterance three times too late.

:class:`VadClock` infers the rate, per event, in this order:

1. **The event's own timestamp**, when it is audio time (Silero's is: seconds of audio
   processed): ``samples_index / timestamp`` within 3 % of a plausible rate (8, 16, 22.05,
   24, 32, 44.1 or 48 kHz) names the rate. A wall-clock timestamp never matches and is
   ignored.
2. **The audio pushed**: a VAD cannot report a position in audio it has not received, so
   ``samples_index / rate`` is at most the seconds pushed so far. Of 16 kHz and the input's
   rate, the lowest that keeps the event within the audio pushed is taken; a 16 kHz count of
   48 kHz input stays within, a 48 kHz count read as 16 kHz lies three times beyond. This
   needs the VAD to keep up with the audio (it does live, where frames come in real time); a
   VAD that lags seconds behind a burst of frames and gives no audio-time timestamp cannot
   be told apart this way.

Once a rate is chosen it is kept until an event's timestamp names another or an event lies
beyond the audio pushed (then it moves up).

**Flushes.** Some VADs start counting again at 0 after ``flush()`` (Silero resets its sample
count and timestamp, and drops the part window it held), others count on. The glue calls
:meth:`VadClock.flushed` when it sends a flush: the audio pushed until then is that flush's
origin. An event whose count goes backwards is a reset VAD's first in a new epoch: it and the
events after it count from the earliest flush not yet taken as an origin. When the glue knows
the VAD has taken every flush sent and every earlier event was placed
(:meth:`VadClock.flush_taken`), the next event decides even without a step backwards (the
epoch before may have had a single event): if it does not lie past the last event, or
placed from the current origin it would lie before the flush's audio, the VAD reset;
otherwise it counts on, and keeps its origin.
"""

from __future__ import annotations

__all__ = ["VadClock"]

_SLACK_S = 0.05
"""Events may run this far past the audio counted as pushed (a frame in flight)."""


_RESET_SLACK_S = 0.1
"""A VAD that counts on through a flush may drop the part window it held (up to ~32 ms)."""

_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


class VadClock:
    """Maps a VAD stream's ``samples_index`` to 16 kHz samples from the stream's start."""

    def __init__(self) -> None:
        self._pushed_s = 0.0
        self._input_rate = 0
        self._rate = 0
        self._origin_s = 0.0  # where the VAD's current count starts, in audio pushed
        self._last_s = 0.0  # the last event's position in the VAD's own count
        self._pending: list[float] = []  # origins of flushes sent, not yet taken as one
        self._taken = False  # the VAD took every pending flush; earlier events were placed

    @property
    def rate(self) -> int:
        """The counting rate inferred so far (0 before the first event)."""
        return self._rate

    def pushed(self, samples: int, sample_rate: int) -> None:
        """``samples`` per channel at ``sample_rate`` were pushed to the VAD stream."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self._input_rate = sample_rate
        self._pushed_s += samples / sample_rate

    def flushed(self) -> None:
        """A flush was sent to the VAD stream after the audio pushed so far."""
        self._pending.append(self._pushed_s)
        self._taken = False

    def flush_taken(self) -> None:
        """The VAD has taken every flush sent so far, and every event it sent before them was
        placed: the next event is from after the last flush."""
        if self._pending:
            self._pending = self._pending[-1:]
            self._taken = True

    def to_16k(self, samples_index: int, timestamp: float = 0.0) -> int:
        """``samples_index`` (the VAD's count) as a position at 16 kHz from the stream's
        start; ``timestamp`` is the event's, used when it is audio time."""
        rate = self._infer_rate(samples_index, timestamp)
        pos_s = samples_index / rate
        if self._pending:
            if pos_s < self._last_s - 1e-6:  # the count went backwards: the VAD reset
                self._origin_s = self._pending.pop(0)
                self._taken = False
            elif self._taken:
                # (one counting on is past its last event: it judged audio after the flush)
                if (
                    pos_s <= self._last_s + 1e-6
                    or self._origin_s + pos_s < self._pending[-1] - _RESET_SLACK_S
                ):
                    self._origin_s = self._pending[-1]
                self._pending.clear()
                self._taken = False
        self._last_s = pos_s
        return round(self._origin_s * 16000) + round(samples_index * 16000 / rate)

    def _infer_rate(self, samples_index: int, timestamp: float) -> int:
        limit = self._pushed_s + _SLACK_S
        rate = self._rate
        if samples_index > 0 and 0.0 < timestamp <= limit:
            est = samples_index / timestamp
            match = next((r for r in _RATES if abs(est - r) <= 0.03 * r), 0)
            if match:
                rate = self._rate = match
        if rate == 0 or samples_index / rate > limit:
            candidates = sorted({16000, self._input_rate or 16000})
            rate = next((r for r in candidates if r >= rate and samples_index / r <= limit), 0)
            if rate == 0:  # beyond every candidate: the fastest one is the least wrong
                rate = max(candidates[-1], self._rate)
            self._rate = rate
        return rate
