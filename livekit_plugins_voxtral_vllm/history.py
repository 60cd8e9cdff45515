"""A bounded history of a stream's 16 kHz audio, addressed by absolute sample index.

Generations are replayed from it (after a lost connection, an unsolicited ``done`` or a
rollover), pre-roll is taken from it when speech starts, and cut points are chosen in it at
the quietest moment, so that a new generation never starts in the middle of a word.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AudioHistory"]

_HOP = 160  # 10 ms at 16 kHz


class AudioHistory:
    """Ring buffer of int16 mono samples; ``[start, end)`` are absolute sample indices."""

    def __init__(self, capacity_samples: int) -> None:
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, got {capacity_samples}")
        self._buf = np.zeros(capacity_samples, dtype=np.int16)
        self._cap = capacity_samples
        self._end = 0

    @property
    def start(self) -> int:
        """Oldest sample still held."""
        return max(0, self._end - self._cap)

    @property
    def end(self) -> int:
        """One past the newest sample: the total number of samples ever appended."""
        return self._end

    def append(self, samples: np.ndarray) -> None:
        n = int(samples.size)
        if n == 0:
            return
        if n >= self._cap:
            self._buf[:] = samples[-self._cap :]
            self._end += n
            # keep the invariant that index i lives at i % cap
            self._buf = np.roll(self._buf, self._end % self._cap)
            return
        pos = self._end % self._cap
        first = min(n, self._cap - pos)
        self._buf[pos : pos + first] = samples[:first]
        if first < n:
            self._buf[: n - first] = samples[first:]
        self._end += n

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of samples ``[start, end)``, clamped to what is held."""
        start = max(start, self.start)
        end = min(end, self._end)
        if end <= start:
            return np.zeros(0, dtype=np.int16)
        a = start % self._cap
        b = a + (end - start)
        if b <= self._cap:
            part: np.ndarray = self._buf[a:b].copy()
            return part
        out: np.ndarray = np.concatenate((self._buf[a:], self._buf[: b - self._cap]))
        return out

    def quietest(self, lo: int, hi: int) -> int:
        """The start of the earliest 10 ms hop in ``[lo, hi)`` whose energy is within 3 dB of the
        quietest one there; ``lo`` (clamped) when the range holds less than one hop."""
        lo = max(lo, self.start)
        hi = min(hi, self._end)
        n_hops = (hi - lo) // _HOP
        if n_hops <= 0:
            return min(lo, self._end)
        x = self.slice(lo, lo + n_hops * _HOP).astype(np.float32).reshape(n_hops, _HOP)
        energy = np.einsum("ij,ij->i", x, x)
        floor = float(energy.min())
        # earliest near-minimum: the first gap after a word, never a later one
        idx = int(np.argmax(energy <= floor * 2.0 + 1.0))
        return lo + idx * _HOP

    def loudest(self, lo: int, hi: int) -> float:
        """The mean power of the loudest 10 ms hop of ``[lo, hi)`` (a last part hop too), over
        what is held; 0.0 when none of it is."""
        x = self.slice(lo, hi).astype(np.float32)
        whole = x.size // _HOP * _HOP
        level = 0.0
        if whole:
            hops = x[:whole].reshape(-1, _HOP)
            level = float(np.max(np.einsum("ij,ij->i", hops, hops))) / _HOP
        if whole < x.size:
            level = max(level, float(np.mean(x[whole:] * x[whole:])))
        return level

    def is_quiet(self, at: int, reach: int) -> bool:
        """Whether the 10 ms at ``at`` are a gap, not sound: at least 20 dB under the loudest
        10 ms hop within ``reach`` samples before ``at`` (True when nothing there is louder
        than about one LSB, e.g. silence; False when ``at`` is not held)."""
        if not self.start <= at < self._end:
            return False
        here = self.slice(at, at + _HOP).astype(np.float32)
        level = float(np.mean(here * here))
        n_hops = (at - max(self.start, at - reach)) // _HOP
        return level <= self.loudest(at - n_hops * _HOP, at) * 0.01 + 1.0
