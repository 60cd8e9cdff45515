"""The audio path: a LiveKit ``rtc.AudioFrame`` of any rate and layout → 16 kHz mono int16 →
chunks released where the live generation's steps are complete (``AudioPipeline``).

vLLM trusts the bytes it gets (vllm-realtime.md §3.1): no resampling, no channel handling, no
negotiation. A wrong rate or interleaved stereo produces garbage text and never an error, so
every frame goes through here first.

The order is downmix, then resample: a resampler works on each interleaved channel separately
(it never downmixes), so resampling first would do the work once per channel and tie the stream
to the first frame's layout. Resampling is :mod:`.resampling`'s low-latency FIR for the rates
LiveKit delivers, else soxr's (quality HQ, as LiveKit's own resampler).

Samples are the clock. Both resamplers compensate their filter delay, so 16 kHz output sample
``n`` is input time ``n / 16000`` s. Every stage counts ``samples_in`` and ``samples_out``; a chunk
returned when ``samples_out`` was ``p`` covers 16 kHz samples ``[p, p + len(chunk))``.

Nothing here touches a socket, a clock or asyncio.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from livekit import rtc

from .protocol import SAMPLE_RATE, STEP_SAMPLES
from .resampling import FirResampler, supports

__all__ = [
    "Int16Array",
    "AudioInput",
    "to_mono_int16",
    "MonoResampler",
    "StepChunker",
    "AudioPipeline",
]

Int16Array = npt.NDArray[np.int16]
"""A 1-D array of native-endian int16 samples."""

AudioInput = rtc.AudioFrame | Int16Array | bytes | bytearray | memoryview
"""What ``to_mono_int16`` accepts: a frame, or interleaved int16 samples."""

_EMPTY: Int16Array = np.empty(0, dtype=np.int16)
_EMPTY.flags.writeable = False

_ALIGN_LOOKAHEAD_MS = 20
"""Chunk-aligned pushes (``align_samples``) wait for this much input past the chunk's end:
soxr's output trails its input by 5 to 38 ms (it emits in ~33 ms bursts), so a push sooner
would mostly return nothing, and each call has a fixed cost however little it carries."""


def to_mono_int16(frame: AudioInput, num_channels: int | None = None) -> Int16Array:
    """Interleaved int16 audio as one mono int16 array.

    Args:
        frame: an ``rtc.AudioFrame``, or interleaved int16 samples (a 1-D int16 array or raw
            native-endian bytes).
        num_channels: channels interleaved in ``frame``. Defaults to the frame's own count, or
            1 for raw samples; for a frame, a different value is an error.

    Returns:
        Mono samples. Already-mono input is returned without a copy (it shares memory with
        ``frame`` and may be read-only); multichannel input is averaged (no overflow).

    Raises:
        ValueError: on a bad channel count or a length that is not a whole number of
            multichannel samples. TypeError: on a non-int16 array.
    """
    if isinstance(frame, rtc.AudioFrame):
        if num_channels is not None and num_channels != frame.num_channels:
            raise ValueError(
                f"num_channels={num_channels} contradicts the frame's {frame.num_channels}"
            )
        n = frame.num_channels
        x: Int16Array = np.frombuffer(frame.data, dtype=np.int16)
        used = frame.samples_per_channel * n
        if len(x) != used:  # an AudioFrame's buffer may be longer than its samples
            x = x[:used]
    else:
        n = 1 if num_channels is None else num_channels
        if isinstance(frame, np.ndarray):
            if frame.dtype != np.int16:
                raise TypeError(f"expected int16 samples, got dtype {frame.dtype}")
            if frame.ndim != 1:
                raise ValueError(f"expected 1-D interleaved samples, got shape {frame.shape}")
            x = frame
        else:
            x = np.frombuffer(frame, dtype=np.int16)
    if n < 1:
        raise ValueError(f"num_channels must be >= 1, got {n}")
    if n == 1:
        return x
    if len(x) % n:
        raise ValueError(f"{len(x)} samples are not a whole number of {n}-channel frames")
    # One contiguous widening, then strided adds: ~2x faster than a cast inside np.add or an
    # axis reduction at 10 ms frame sizes.
    wide = x.astype(np.int32)
    total = wide[0::n] + wide[1::n]
    for k in range(2, n):
        total += wide[k::n]
    # Floor division (a shift when it can be): identical channels stay bit-exact, and the
    # -0.5 LSB bias is inaudible.
    if n & (n - 1):
        total //= n
    else:
        total >>= n.bit_length() - 1
    return total.astype(np.int16)


class MonoResampler:
    """Mono int16 at one input rate → mono int16 at 16 kHz, through soxr.

    The soxr stream (quality HQ, the library and setting behind LiveKit's
    ``rtc.AudioResampler`` HIGH) is created on the first push for that push's rate; 16 kHz input
    passes through untouched and creates none. Every later push must have the same rate.

    soxr is called directly, not through LiveKit's FFI: per 50 ms RoomIO frame that is 18 µs
    instead of 60 µs, and the FFI request was 28 % of a 200-stream worker's CPU. Each call still
    has a fixed cost (~4 µs) and soxr emits output in bursts, so input is gathered before each
    call, in one of two ways:

    - ``min_push_ms``: until that much input is pending.
    - ``align_samples`` (what :class:`AudioPipeline` uses): until the input reaches
      ``_ALIGN_LOOKAHEAD_MS`` past the next multiple of ``align_samples`` of output (the end of
      the chunk being filled), then on every push until soxr has delivered that far. Fewer
      calls, and chunks no later, than with ``min_push_ms=20`` (``TestAlignedPushes``).
    """

    __slots__ = (
        "_soxr",
        "_rate",
        "_min_push_ms",
        "_min_push_bytes",
        "_pending",
        "_align",
        "_lookahead",
        "_base_in",
        "_base_out",
        "_need_in",
        "samples_in",
        "samples_out",
    )

    def __init__(self, *, min_push_ms: int = 20, align_samples: int = 0) -> None:
        if min_push_ms < 0:
            raise ValueError(f"min_push_ms must be >= 0, got {min_push_ms}")
        if align_samples < 0:
            raise ValueError(f"align_samples must be >= 0, got {align_samples}")
        self._min_push_ms = min_push_ms
        self._align = align_samples
        self._lookahead = 0
        self._base_in = 0  # samples_in and samples_out when soxr (re)started
        self._base_out = 0
        self._need_in = 0  # align mode: soxr is called once samples_in reaches this
        self._soxr: Any = None  # soxr.ResampleStream (soxr ships no type information)
        self._rate: int | None = None
        self._min_push_bytes = 0
        self._pending = bytearray()
        self.samples_in = 0
        """Mono samples accepted so far, at the input rate."""
        self.samples_out = 0
        """Samples returned so far, at 16 kHz."""

    @property
    def input_rate(self) -> int | None:
        """The rate of the first push, or None before it."""
        return self._rate

    @property
    def pending_samples(self) -> int:
        """Input samples gathered but not yet handed to soxr (see ``min_push_ms``)."""
        return len(self._pending) // 2

    def push(self, samples: Int16Array, sample_rate: int) -> Int16Array:
        """Resample one block of mono int16 samples.

        Returns:
            16 kHz mono int16, possibly empty (soxr and the gathering buffer hold some audio
            back; ``flush`` releases it). At 16 kHz the input array itself is returned.

        Raises:
            ValueError: if ``sample_rate`` differs from the first push's, or is not positive.
            TypeError: if ``samples`` is not int16.
        """
        # Runs for every frame (100 a second per stream with 10 ms frames): the common case,
        # input gathered until a chunk can be completed, is a comparison and a copy.
        if samples.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got dtype {samples.dtype}")
        if sample_rate != self._rate:
            self._start(sample_rate)
        n = len(samples)
        self.samples_in += n
        resampler = self._soxr
        if resampler is None:
            self.samples_out += n
            return samples
        pending = self._pending
        if self._align:
            ready = self.samples_in >= self._need_in
        else:
            ready = len(pending) + 2 * n >= self._min_push_bytes
        if not samples.flags.c_contiguous:
            samples = np.ascontiguousarray(samples)
        if not ready:
            pending += samples.data
            return _EMPTY
        if not pending:
            return self._collect(resampler.resample_chunk(samples))
        pending += samples.data
        # a view of the buffer: soxr copies what it needs during the call, and the view must be
        # gone before the buffer can be cleared
        view = np.frombuffer(pending, dtype=np.int16)
        out = resampler.resample_chunk(view)
        del view
        pending.clear()
        return self._collect(out)

    def flush(self) -> Int16Array:
        """Drain everything held back. The resampler stays usable (soxr restarts its filter).

        After a flush ``samples_out`` is within a few samples of
        ``samples_in * 16000 / input_rate``.
        """
        if self._soxr is None:
            return _EMPTY
        view = np.frombuffer(self._pending, dtype=np.int16)
        out = self._soxr.resample_chunk(view, last=True)
        del view
        self._pending.clear()
        self._soxr.clear()
        collected = self._collect(out)
        self._base_in, self._base_out = self.samples_in, self.samples_out
        self._update_need()
        return collected

    def _start(self, sample_rate: int) -> None:
        if self._rate is not None:
            raise ValueError(
                f"input sample rate changed from {self._rate} Hz to {sample_rate} Hz "
                "mid-stream; one stream resamples from one rate: create a new stream "
                "for the new rate"
            )
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._rate = sample_rate
        if sample_rate != SAMPLE_RATE:
            self._soxr = soxr.ResampleStream(
                sample_rate, SAMPLE_RATE, 1, dtype="int16", quality="HQ"
            )
            self._min_push_bytes = 2 * sample_rate * self._min_push_ms // 1000
            self._lookahead = sample_rate * _ALIGN_LOOKAHEAD_MS // 1000
            self._update_need()

    def _update_need(self) -> None:
        align, rate = self._align, self._rate
        if not align or rate is None:
            return
        # the end of the output block being filled, as an input position, plus the lookahead
        target = ((self.samples_out - self._base_out) // align + 1) * align
        self._need_in = self._base_in + -(-target * rate // SAMPLE_RATE) + self._lookahead

    def _collect(self, out: Any) -> Int16Array:
        n = len(out)
        if not n:
            return _EMPTY
        self.samples_out += n
        self._update_need()
        result: Int16Array = out
        return result


class StepChunker:
    """Re-chunks a mono int16 stream into exact ``step_samples`` chunks (80 ms at 16 kHz).

    Only the partial chunk is buffered (one preallocated array); whole chunks inside a large
    push are cut out of a single copy, so the cost per push is O(1) numpy calls.
    """

    __slots__ = ("_step", "_buf", "_fill", "samples_in", "samples_out")

    def __init__(self, step_samples: int = STEP_SAMPLES) -> None:
        if step_samples < 1:
            raise ValueError(f"step_samples must be >= 1, got {step_samples}")
        self._step = step_samples
        self._buf: Int16Array = np.empty(step_samples, dtype=np.int16)
        self._fill = 0
        self.samples_in = 0
        """Samples pushed so far."""
        self.samples_out = 0
        """Samples returned so far (chunks and flushed remainders)."""

    @property
    def step_samples(self) -> int:
        """The chunk size in samples."""
        return self._step

    @property
    def pending_samples(self) -> int:
        """Samples waiting for a chunk to fill up (always < ``step_samples``)."""
        return self._fill

    def push(self, samples: Int16Array) -> list[Int16Array]:
        """Add samples; return every chunk completed, each exactly ``step_samples`` long.

        The chunks are owned by the caller and never alias ``samples``.
        """
        n = len(samples)
        if n == 0:
            return []
        self.samples_in += n
        step = self._step
        fill = self._fill
        if fill + n < step:
            self._buf[fill : fill + n] = samples
            self._fill = fill + n
            return []
        chunks: list[Int16Array] = []
        i = 0
        if fill:
            i = step - fill
            self._buf[fill:] = samples[:i]
            chunks.append(self._buf)
            self._buf = np.empty(step, dtype=np.int16)
        whole = (n - i) // step
        if whole:
            end = i + whole * step
            chunks.extend(samples[i:end].reshape(whole, step).copy())
            i = end
        rest = n - i
        self._buf[:rest] = samples[i:]
        self._fill = rest
        self.samples_out += len(chunks) * step
        return chunks

    def flush(self) -> Int16Array | None:
        """The buffered remainder (shorter than a step), or None when nothing is pending."""
        fill = self._fill
        if not fill:
            return None
        rest: Int16Array = self._buf[:fill].copy()
        self._fill = 0
        self.samples_out += fill
        return rest


class AudioPipeline:
    """``to_mono_int16`` → resampling to 16 kHz → chunks released at the points the caller
    sets, for a stream of frames.

    One per stream. Chunks are consecutive on the 16 kHz clock. A chunk is released as soon as
    the audio reaches :attr:`cut` (an absolute 16 kHz sample: the glue sets it to where the live
    generation's next step is complete), and holds everything resampled by then; with no
    ``cut`` ahead, at every multiple of 80 ms of the stream.

    Resampling: :class:`~.resampling.FirResampler` for the rates LiveKit delivers (48, 24,
    32 kHz...; 1.3 ms of delay, computed only when a chunk can be released), soxr for others
    (``MonoResampler``, called on every frame), none at 16 kHz. ``min_push_ms`` forces soxr
    with that gathering for every rate (for comparisons).
    """

    __slots__ = ("_min_push_ms", "_rate", "_fir", "_soxr", "_parts", "_held", "cut", "samples_out")

    def __init__(self, *, min_push_ms: int | None = None) -> None:
        self._min_push_ms = min_push_ms
        self._rate: int | None = None
        self._fir: FirResampler | None = None
        self._soxr: MonoResampler | None = None
        self._parts: list[Int16Array] = []
        self._held = 0
        self.cut: int | None = None
        """Release a chunk once the audio reaches this 16 kHz sample (None, or a sample
        already passed: at the next multiple of 80 ms)."""
        self.samples_out = 0
        """16 kHz samples returned so far: the stream position of the next chunk."""

    @property
    def held_samples(self) -> int:
        """Resampled audio waiting for the next release."""
        return self._held

    def _start(self, rate: int) -> None:
        if self._rate is not None:
            raise ValueError(
                f"input sample rate changed from {self._rate} Hz to {rate} Hz "
                "mid-stream; one stream resamples from one rate: create a new stream "
                "for the new rate"
            )
        if rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {rate}")
        self._rate = rate
        if self._min_push_ms is not None:
            self._soxr = MonoResampler(min_push_ms=self._min_push_ms)
        elif supports(rate):
            self._fir = FirResampler(rate)
        elif rate != SAMPLE_RATE:
            self._soxr = MonoResampler(min_push_ms=0)

    def push_frame(self, frame: rtc.AudioFrame) -> list[Int16Array]:
        """Add one frame; return the chunk it completed, if any (at most one).

        Raises:
            ValueError: if the frame's rate differs from the first frame's.
        """
        mono = to_mono_int16(frame)
        rate = frame.sample_rate
        if rate != self._rate:
            self._start(rate)
        done = self.samples_out + self._held
        cut = self.cut
        if cut is None or cut <= done:
            cut = (done // STEP_SAMPLES + 1) * STEP_SAMPLES
        fir = self._fir
        if fir is not None:
            out = fir.push(mono, cut)
        elif self._soxr is not None:
            out = self._soxr.push(mono, rate)
        else:
            out = mono.copy()  # the frame's buffer may be reused by its producer
        n = len(out)
        if n:
            self._parts.append(out)
            self._held += n
        if done + n < cut:
            return []
        return [self._release()]

    def flush(self) -> list[Int16Array]:
        """Everything held and everything the resampler holds back, as one chunk (or none)."""
        if self._fir is not None:
            rest = self._fir.flush()
        elif self._soxr is not None:
            rest = self._soxr.flush()
        else:
            rest = _EMPTY
        if len(rest):
            self._parts.append(rest)
            self._held += len(rest)
        return [self._release()] if self._held else []

    def _release(self) -> Int16Array:
        parts = self._parts
        chunk: Int16Array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._parts = []
        self.samples_out += self._held
        self._held = 0
        return chunk
