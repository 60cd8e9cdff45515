"""A low-latency polyphase FIR resampler to 16 kHz for the rates LiveKit delivers.

Why not soxr alone: soxr (HQ, as LiveKit's own resampler) filters in blocks, so its output
trails its input by 6 to 37 ms, 21 ms on average, and a caption waits for that before the step
holding a word can be sent. This resampler is one linear-phase FIR (Kaiser window, 70 dB
stopband, -6 dB at 95 % of the lower Nyquist frequency, 1.35 ms of delay at 48 or 24 kHz)
applied as a polyphase filter: output sample ``n`` is ready as soon as the input reaches
``n * M / L`` plus the filter's half-length, and nothing is held beyond that.

It handles rates whose ratio to 16 kHz is ``L / M`` with ``L <= 4`` (8, 12, 24, 32, 48, 96 kHz,
among others); :func:`supports` says which. Others (44.1 kHz and its family) go through soxr.

Like soxr, output sample ``n`` is input time ``n / 16000`` s (the delay is compensated), and
the work is done on demand: :meth:`FirResampler.push` buffers input and computes only once the
caller's ``until`` output sample can be produced, then returns all the output it can.

Nothing here touches a socket, a clock or asyncio.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .protocol import SAMPLE_RATE

__all__ = ["FirResampler", "supports"]

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

_MAX_L = 4
_ATTENUATION_DB = 70.0
_CUTOFF = 0.475  # -6 dB point, as a fraction of the lower of the two rates
_TRANSITION = 0.1  # transition band width, same unit

_EMPTY: Int16Array = np.empty(0, dtype=np.int16)
_EMPTY.flags.writeable = False


def _ratio(rate: int) -> tuple[int, int]:
    g = math.gcd(rate, SAMPLE_RATE)
    return SAMPLE_RATE // g, rate // g


def supports(rate: int) -> bool:
    """Whether :class:`FirResampler` takes ``rate`` (other than 16 kHz itself)."""
    if rate <= 0 or rate == SAMPLE_RATE:
        return False
    up, _ = _ratio(rate)
    return up <= _MAX_L


def _design(rate: int, up: int) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc at ``up * rate``: gain ``up``, odd length (integer delay)."""
    design_rate = up * rate
    low = min(rate, SAMPLE_RATE)
    fc = _CUTOFF * low / design_rate  # cycles per sample
    tw = _TRANSITION * low / design_rate
    a = _ATTENUATION_DB
    beta = 0.1102 * (a - 8.7)
    taps = int(math.ceil((a - 7.95) / (2.285 * 2 * math.pi * tw))) + 1
    taps |= 1
    n = np.arange(taps) - (taps - 1) / 2
    h: npt.NDArray[np.float64] = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, beta)
    h *= up / h.sum()
    return h


class FirResampler:
    """Mono int16 at ``rate`` → mono int16 at 16 kHz, with 1-2 ms of delay and no buffering
    beyond the filter's.

    Args:
        rate: the input rate; :func:`supports` must accept it.

    ``samples_in`` / ``samples_out`` count every sample accepted and returned.
    """

    __slots__ = (
        "rate",
        "_up",
        "_down",
        "_delay",
        "_phases",
        "_window",
        "_buf",
        "_fill",
        "_buf_start",
        "_until",
        "_need",
        "_in",
        "_out",
        "_base_in",
        "_base_out",
        "samples_in",
        "samples_out",
    )

    def __init__(self, rate: int) -> None:
        if not supports(rate):
            raise ValueError(
                f"FirResampler takes rates whose ratio to 16000 is L/M with L <= {_MAX_L} "
                f"(not 16000 itself); got {rate}"
            )
        self.rate = rate
        up, down = _ratio(rate)
        self._up, self._down = up, down
        h = _design(rate, up)
        taps = len(h)
        self._delay = (taps - 1) // 2  # at the design rate
        per_phase = -(-taps // up)
        padded = np.zeros(per_phase * up)
        padded[:taps] = h
        # residue r of the output index: the input offset c_r and the (reversed) sub-filter
        # applied to the ``per_phase`` input samples ending at m * down + c_r
        phases: list[tuple[int, Float32Array]] = []
        for r in range(up):
            a = r * down + self._delay
            p, c = a % up, a // up
            g = padded[p::up]  # g[j] multiplies x[m * down + c - j]
            phases.append((c, np.ascontiguousarray(g[::-1], dtype=np.float32)))
        self._phases = phases
        self._window = per_phase
        self.samples_in = 0
        self.samples_out = 0
        self._reset()

    def _reset(self) -> None:
        self._base_in, self._base_out = self.samples_in, self.samples_out
        self._in = self._out = 0  # since the last reset
        history = self._window + self._down + 1
        # input from _buf_start (negative indices are the silence before the stream) to _fill
        self._buf: Float32Array = np.zeros(max(8192, 4 * history), dtype=np.float32)
        self._fill = history
        self._buf_start = -history
        self._until = -1  # the last ``until`` asked for, and the input it needs
        self._need = 0

    def _append(self, samples: npt.NDArray[np.int16] | Float32Array) -> None:
        n = len(samples)
        fill = self._fill
        if fill + n > len(self._buf):
            grown = np.zeros(max(fill + n, 2 * len(self._buf)), dtype=np.float32)
            grown[:fill] = self._buf[:fill]
            self._buf = grown
        self._buf[fill : fill + n] = samples
        self._fill = fill + n

    def _available(self, samples_in: int) -> int:
        """Outputs (since the reset) computable from ``samples_in`` input samples."""
        n = (self._up * samples_in - 1 - self._delay) // self._down + 1
        return max(0, n)

    def needs_input(self, until: int) -> int:
        """Input samples (``samples_in``) needed before output ``until - 1`` can be made."""
        n = until - self._base_out
        if n <= 0:
            return 0
        return self._base_in + ((n - 1) * self._down + self._delay) // self._up + 1

    def push(self, samples: Int16Array, until: int) -> Int16Array:
        """Add input; once it allows output up to ``until`` (``samples_out`` counting),
        return all the output it allows (else an empty array)."""
        n = len(samples)
        if n:
            self._append(samples)
            self.samples_in += n
            self._in += n
        if until != self._until:
            self._until = until
            self._need = self.needs_input(until)
        if self.samples_in < self._need:
            return _EMPTY
        return self._compute(self._available(self._in))

    def flush(self) -> Int16Array:
        """Everything the input so far makes (its end padded with silence), then start over
        (the next push is filtered as the start of a stream)."""
        total = -(-self._in * self._up // self._down)  # ceil: as many as the input spans
        pad = self._window + self._delay // self._up + self._down + 1
        self._append(np.zeros(pad, dtype=np.float32))
        out = self._compute(total) if total > self._out else _EMPTY
        self._reset()
        return out

    def _compute(self, n_end: int) -> Int16Array:
        n0 = self._out
        if n_end <= n0:
            return _EMPTY
        buf, start = self._buf, self._buf_start
        up, down, window = self._up, self._down, self._window
        out = np.empty(n_end - n0, dtype=np.float32)
        for r, (c, g) in enumerate(self._phases):
            m_lo = -(-(n0 - r) // up)
            m_hi = -(-(n_end - r) // up)
            count = m_hi - m_lo
            if count <= 0:
                continue
            s = m_lo * down + c - window + 1 - start
            # row m is the window buf[s + m * down : s + m * down + window] (a strided view)
            view: Float32Array = np.ndarray((count, window), np.float32, buf, s * 4, (down * 4, 4))
            out[m_lo * up + r - n0 :: up] = np.einsum("mk,k->m", view, g)
        self._out = n_end
        # keep what the next outputs can reach back to
        keep = (n_end * down + self._delay) // up - window - down - 1
        drop = keep - start
        if drop > 0:
            fill = self._fill
            buf[: fill - drop] = buf[drop:fill]
            self._fill = fill - drop
            self._buf_start = keep
        np.rint(out, out=out)
        np.minimum(out, 32767.0, out=out)
        np.maximum(out, -32768.0, out=out)
        result: Int16Array = out.astype(np.int16)
        self.samples_out += len(result)
        return result
