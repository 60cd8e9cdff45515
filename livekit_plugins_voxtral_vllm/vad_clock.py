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
"""

from __future__ import annotations

__all__ = ["VadClock"]

_SLACK_S = 0.05
"""Events may run this far past the audio counted as pushed (a frame in flight)."""


_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


class VadClock:
    """Maps a VAD stream's ``samples_index`` to 16 kHz samples from the stream's start."""

    def __init__(self) -> None:
        self._pushed_s = 0.0
        self._input_rate = 0
        self._rate = 0

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

    def to_16k(self, samples_index: int, timestamp: float = 0.0) -> int:
        """``samples_index`` (the VAD's count) as a position at 16 kHz; ``timestamp`` is the
        event's, used when it is audio time."""
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
        return round(samples_index * 16000 / rate)
