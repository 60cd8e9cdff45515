"""The default endpointer: Silero's decisions, run only when a cheap gate says it may matter.

Two stages, on the 16 kHz clock, in 32 ms windows:

1. **Gate** (numpy, a few microseconds per 80 ms): the energy of each window through two
   cheap filters, a high-pass (each sample minus the mean of the 80 around it: rumble under
   100 Hz goes) and a pre-emphasis (``x[n] - 0.95 x[n-1]``: 1-4 kHz weigh most), each against
   its own noise floor (the quietest window over the last ``noise_window_ms``, minimum
   statistics). A window ``gate_db`` above either floor opens the gate; it stays open
   ``gate_hold_ms`` after the last such window, and while an utterance is open or the model's
   last score was not clearly silence. Until a first floor is known (the first
   ``noise_window_ms / 4`` of a stream) the gate is open. Steady noise (white, pink,
   ventilation rumble), a silent participant's microphone and digital silence keep it shut
   (the model ran on 3-6 % of the windows of a minute of each in ``benchmarks/endpointing.py``);
   keyboard, knocks and music open it (there the model decides, and says no).
2. **Silero VAD** (``vad_model.SileroBatch``, shared by every stream of the process: one
   ONNX call per 32 ms step for all streams that need one) scores each window while the gate
   is open. When the gate opens, the model (which keeps its state from the last time it ran)
   first hears the last ``warmup_ms`` before it, so an onset that the gate caught late is
   still found at its start. (Starting from a fresh state instead clipped 4 of 51 onsets in
   pink noise at 0 dB in ``benchmarks/endpointing.py``; keeping it, none.)

Decisions from the scores, as LiveKit's Silero plugin makes them: ``SpeechStarted`` after
``min_speech_ms`` of windows at or above ``activation`` (a window below ``deactivation``
restarts the count), at the first of them; ``SpeechEnded`` after ``min_silence_ms`` of windows
below ``deactivation``, at the end of the last window above it (unless the window that would
end it is loud enough to open the gate after a quiet pause: that is often a word starting,
which the model scores late in noise, so the end waits up to 160 ms for the model to hear it);
``SpeechResumed`` when a window
above ``activation`` follows at least ``resume_gap_ms`` below ``deactivation`` inside an
utterance (a word onset, 32 ms resolution).

With several streams, a stream learns the scores of a push at its next push at the latest
(the batch waits for the other streams' windows), so a start may come up to one push later
than the audio that made it (the pre-roll covers that); its sample position is exact. An end
is never late: when the windows just pushed may complete the silence that ends an utterance,
the batch runs at once, so the utterance's audio stops at the decision instead of running a
push into the next word. Use :class:`Endpointer`
(``endpointer="energy"`` in the STT) for the previous energy-only endpointer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .endpointer import EndpointerEvent, SpeechEnded, SpeechResumed, SpeechStarted
from .vad_model import WINDOW, SileroBatch, SileroSlot

__all__ = ["VadEndpointerOptions", "VadEndpointer"]

_FLOOR_BLOCKS = 4
_END_HOLD_WINDOWS = 5
"""An end that falls on a window loud enough to open the gate waits up to this many windows
(160 ms) for the model to hear the speech there."""
_QUIET_IN_PAUSE = 3
"""...if the pause before it had at least this many windows below that (a quiet pause)."""
_HP_TAPS = 80
"""The gate's high-pass: a sample minus the mean of the 80 around it (5 ms): -20 dB at 50 Hz,
-9 dB at 100 Hz, 0 dB from 200 Hz; rumble goes, voices stay. Two cumulative sums a push."""
_SILENCE_DB = -100.0  # digital silence stays finite
_MAX_QUEUE_WINDOWS = 64
"""Unscored windows one stream may hold (2 s) before it scores the batch itself."""


@dataclass(frozen=True)
class VadEndpointerOptions:
    """Tuning of :class:`VadEndpointer`. Durations in milliseconds of audio."""

    min_speech_ms: int = 64
    """Speech (windows at or above ``activation``) needed before ``SpeechStarted``."""
    min_silence_ms: int = 416
    """Non-speech (windows below ``deactivation``) that ends an utterance."""
    activation: float = 0.5
    """Silero score at or above which a window is speech."""
    deactivation: float = 0.45
    """Silero score below which a window is silence (in between: neither)."""
    resume_gap_ms: int = 64
    """Inside an utterance, speech after at least this much silence is a ``SpeechResumed``."""
    gate_db: float = 4.0
    """How far above its noise floor a window's energy must be to open the gate."""
    gate_hold_ms: int = 320
    """The gate stays open this long after the last window that opened it."""
    noise_window_ms: int = 1600
    """The gate's noise floor is the quietest window over about this long."""
    warmup_ms: int = 256
    """Audio before the gate opened that the model hears first."""
    gate_min_dbfs: float = -75.0
    """Nothing quieter than this opens the gate (a muted or disconnected microphone)."""

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> ValueError:
            return ValueError(f"VadEndpointerOptions.{name} must be {rule}, got {value!r}")

        if not (0 <= self.min_speech_ms <= 2000):
            raise bad("min_speech_ms", self.min_speech_ms, "in [0, 2000]")
        if not (32 <= self.min_silence_ms <= 10_000):
            raise bad("min_silence_ms", self.min_silence_ms, "in [32, 10000]")
        if not (0.0 < self.activation < 1.0):
            raise bad("activation", self.activation, "in (0, 1)")
        if not (0.0 < self.deactivation <= self.activation):
            raise bad("deactivation", self.deactivation, f"in (0, activation={self.activation}]")
        if not (32 <= self.resume_gap_ms < self.min_silence_ms):
            raise bad(
                "resume_gap_ms",
                self.resume_gap_ms,
                f"in [32, min_silence_ms={self.min_silence_ms})",
            )
        if not (0.0 < self.gate_db <= 40.0):
            raise bad("gate_db", self.gate_db, "in (0, 40]")
        if not (0 <= self.gate_hold_ms <= 10_000):
            raise bad("gate_hold_ms", self.gate_hold_ms, "in [0, 10000]")
        if not (4 * 32 <= self.noise_window_ms <= 60_000):
            raise bad("noise_window_ms", self.noise_window_ms, "in [128, 60000]")
        if not (0 <= self.warmup_ms <= 2000):
            raise bad("warmup_ms", self.warmup_ms, "in [0, 2000]")
        if not (-120.0 < self.gate_min_dbfs <= 0.0):
            raise bad("gate_min_dbfs", self.gate_min_dbfs, "in (-120, 0]")


def _windows(ms: int) -> int:
    return -(-ms * 16 // WINDOW)  # ms -> 32 ms windows, rounded up


class _Floor:
    """A signal's noise floor in dB: the quietest window of the last few blocks (minimum
    statistics: it falls at once, and rises once a louder level has lasted a noise window)."""

    __slots__ = ("blocks", "block_min", "count", "block_len", "value", "known")

    def __init__(self, block_len: int) -> None:
        self.blocks: deque[float] = deque(maxlen=_FLOOR_BLOCKS)
        self.block_min = math.inf
        self.count = 0
        self.block_len = block_len
        self.value = math.inf
        self.known = False

    def add(self, db: float) -> None:
        if db < self.block_min:
            self.block_min = db
        self.count += 1
        if self.count == self.block_len:
            self.blocks.append(self.block_min)
            self.block_min = math.inf
            self.count = 0
            self.known = True
        floor = min(self.blocks) if self.blocks else math.inf
        self.value = floor if floor < self.block_min else self.block_min


class VadEndpointer:
    """Gated, batched Silero endpointer over int16 mono 16 kHz audio. See the module doc.

    Same interface as :class:`~livekit_plugins_voxtral_vllm.endpointer.Endpointer`:
    ``push(samples) -> events``, ``flush()``, ``reset()``, ``samples_seen``, ``speaking``.

    Args:
        options: tuning; the defaults are what ``benchmarks/endpointing.py`` chose.
        batch: the :class:`SileroBatch` to score with; default the process-wide one.
        gate: False runs the model on every window (for comparison).
    """

    def __init__(
        self,
        options: VadEndpointerOptions | None = None,
        *,
        batch: SileroBatch | None = None,
        gate: bool = True,
    ) -> None:
        self.options = opts = options if options is not None else VadEndpointerOptions()
        self._batch = batch if batch is not None else SileroBatch.shared()
        self._use_gate = gate
        self._gate_raw = True
        self._min_speech = max(1, _windows(opts.min_speech_ms))
        self._min_silence = _windows(opts.min_silence_ms)
        self._resume = max(1, opts.resume_gap_ms * 16 // WINDOW)
        self._hold = _windows(opts.gate_hold_ms)
        self._warmup = opts.warmup_ms * 16 // WINDOW
        self._floor_block = max(1, _windows(opts.noise_window_ms) // _FLOOR_BLOCKS)
        # window energies are sums of squares of 512 samples: dBFS + 10 log10(512)
        self._db_offset = 10.0 * math.log10(WINDOW)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the clock restarts at 0, the floors and model state too."""
        if getattr(self, "_slot", None) is not None:
            self._batch.release(self._slot)
        self._slot: SileroSlot = self._batch.slot(self)
        self._partial = np.empty(0, dtype=np.float32)
        self._prev_sample = 0.0  # last sample of the previous window (pre-emphasis)
        self._samples_seen = 0
        self._next_window = 0
        self._recent: deque[npt.NDArray[np.float32]] = deque(maxlen=max(1, self._warmup))
        self._hp_floor = _Floor(self._floor_block)
        self._pre_floor = _Floor(self._floor_block)
        self._hp_tail = np.zeros(_HP_TAPS, dtype=np.float64)
        self._gate_open = False
        self._since_trigger = 0
        # (index, scored, loud): scored ones take their score from the slot; loud: the window
        # opened the gate (its energy is over the noise floor)
        self._queue: deque[tuple[int, bool, bool]] = deque()
        self._postponed = 0
        self._quiet_in_pause = 0
        self._last_score = 0.0
        self._speaking = False
        self._onset: int | None = None
        self._onset_count = 0
        self._last_speech_end = 0  # window index after the last window above deactivation
        self._silence = 0

    @property
    def speaking(self) -> bool:
        """Whether an utterance is open (``SpeechStarted`` sent, ``SpeechEnded`` not yet)."""
        return self._speaking

    @property
    def samples_seen(self) -> int:
        """Samples pushed since construction or ``reset()``."""
        return self._samples_seen

    @property
    def model_active(self) -> bool:
        """Whether the gate is open (the model scores this stream's windows)."""
        return self._gate_open

    def push(self, samples: npt.NDArray[np.int16]) -> list[EndpointerEvent]:
        """Analyse int16 mono 16 kHz samples of any length; returns the events decided so
        far, in order (their positions may lie before these samples).

        Raises:
            TypeError: if ``samples`` is not int16.
        """
        if samples.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got dtype {samples.dtype}")
        if samples.size == 0:
            return []
        self._samples_seen += samples.size
        slot = self._slot
        batch = self._batch
        if slot.pending:  # our previous windows are still waiting for the others: score now
            batch.run()
        x = samples.astype(np.float32)
        x *= 1.0 / 32768.0
        if self._partial.size:
            x = np.concatenate((self._partial, x))
        whole = x.size // WINDOW
        self._partial = x[whole * WINDOW :]
        if whole:
            self._gate(x[: whole * WINDOW].reshape(whole, WINDOW))
        if slot.pending and (
            batch.due()
            or len(slot.pending) > _MAX_QUEUE_WINDOWS
            # an end may be due in these windows: decide it now, not a push later, so the
            # utterance's audio stops at the decision (a late end cuts into the next word)
            or (self._speaking and self._silence + len(self._queue) >= self._min_silence)
        ):
            batch.run()
        return self._decide()

    def flush(self) -> list[EndpointerEvent]:
        """Decide every window pushed so far, then close an open utterance (end of input)."""
        if self._slot.pending:
            self._batch.run()
        events = self._decide()
        self._onset = None
        if self._speaking:
            self._speaking = False
            end = self._next_window * WINDOW
            events.append(SpeechEnded(self._last_speech_end * WINDOW, end))
        return events

    # -- private -------------------------------------------------------------------------------

    def _gate(self, frames: npt.NDArray[np.float32]) -> None:
        n = frames.shape[0]
        flat = frames.reshape(-1)
        # high-passed (rumble out) and pre-emphasised (tilted up: 1-4 kHz weigh most)
        buf: npt.NDArray[np.float64] = np.concatenate((self._hp_tail, flat.astype(np.float64)))
        self._hp_tail = buf[-_HP_TAPS:]
        cs = np.cumsum(buf)
        half = _HP_TAPS // 2
        # sample j of buf minus the mean of buf[j - half + 1 .. j + half]: delayed by half
        hp: npt.NDArray[np.float64] = (
            buf[half : half + flat.size] - (cs[_HP_TAPS:] - cs[:-_HP_TAPS]) / _HP_TAPS
        )
        pre = np.empty_like(flat)
        pre[1:] = flat[1:] - 0.95 * flat[:-1]
        pre[0] = flat[0] - 0.95 * self._prev_sample
        self._prev_sample = float(flat[-1])
        hp2 = hp.reshape(n, WINDOW)
        pre2 = pre.reshape(n, WINDOW)
        energies = np.stack((np.einsum("ij,ij->i", hp2, hp2), np.einsum("ij,ij->i", pre2, pre2)))
        db = 10.0 * np.log10(np.maximum(energies, 1e-30)) - self._db_offset
        np.maximum(db, _SILENCE_DB, out=db)
        hp_db, pre_db = db.tolist()
        slot = self._slot
        batch = self._batch
        gate_db, gate_min = self.options.gate_db, self.options.gate_min_dbfs
        hf, pf = self._hp_floor, self._pre_floor
        for k in range(n):
            h, p = hp_db[k], pre_db[k]
            hf.add(h)
            pf.add(p)
            if not self._use_gate:
                trigger = True
            elif not hf.known:
                trigger = h >= gate_min
            else:
                trigger = h >= gate_min and (h >= hf.value + gate_db or p >= pf.value + gate_db)
            index = self._next_window
            self._next_window += 1
            window = frames[k]
            if trigger:
                self._since_trigger = 0
            else:
                self._since_trigger += 1
            if not self._gate_open and trigger:
                self._gate_open = True
                batch.set_active(slot, True)
                first = index - len(self._recent)
                for j, w in enumerate(self._recent):
                    batch.submit(slot, w)
                    self._queue.append((first + j, True, False))
                self._recent.clear()
            if self._gate_open:
                batch.submit(slot, window)
                self._queue.append((index, True, trigger))
            else:
                self._queue.append((index, False, False))
                if self._warmup:
                    self._recent.append(window)
            if (
                self._gate_open
                and self._since_trigger >= self._hold
                and not self._speaking
                and self._onset is None
                and self._last_score < self.options.deactivation
                and len(slot.pending) <= 1
            ):
                self._gate_open = False
                batch.set_active(slot, False)

    def _decide(self) -> list[EndpointerEvent]:
        events: list[EndpointerEvent] = []
        queue = self._queue
        scores = self._slot.scores
        opts = self.options
        act, deact = opts.activation, opts.deactivation
        while queue:
            index, scored, loud = queue[0]
            if scored:
                if not scores:
                    break
                p = scores.popleft()
                self._last_score = p
            else:
                p = 0.0
            queue.popleft()
            if self._speaking:
                if p >= deact:
                    if p >= act and self._silence >= self._resume:
                        events.append(SpeechResumed(index * WINDOW))
                    self._last_speech_end = index + 1
                    self._silence = 0
                    self._postponed = 0
                    self._quiet_in_pause = 0
                else:
                    self._silence += 1
                    if not loud:
                        self._quiet_in_pause += 1
                    if self._silence < self._min_silence:
                        pass
                    elif (
                        loud
                        and self._quiet_in_pause >= _QUIET_IN_PAUSE
                        and self._postponed < _END_HOLD_WINDOWS
                    ):
                        # energy over the floor after a quiet pause, where the model hears
                        # silence: often the next word's first 100 ms, which the model scores
                        # late in noise. Ending here would cut that word: wait a little for
                        # the model. (Not in music, where no pause is quiet.)
                        self._postponed += 1
                    else:
                        self._speaking = False
                        self._postponed = 0
                        events.append(
                            SpeechEnded(self._last_speech_end * WINDOW, (index + 1) * WINDOW)
                        )
            elif p >= act:
                if self._onset is None or index < self._onset:
                    self._onset = index
                    self._onset_count = 0
                self._onset_count += 1
                if self._onset_count >= self._min_speech:
                    self._speaking = True
                    events.append(SpeechStarted(self._onset * WINDOW))
                    self._onset = None
                    self._last_speech_end = index + 1
                    self._silence = 0
            elif p < deact:
                self._onset = None
        return events


def benchmark_candidates() -> dict[str, object]:
    """Factories of the candidates ``benchmarks/endpointing.py`` compares with the default:
    the same decisions with the model on every window, and gated but one ONNX call per
    stream (no batch across streams)."""

    def private(gate: bool) -> object:
        return lambda: VadEndpointer(batch=SileroBatch(), gate=gate)

    def pre_only() -> VadEndpointer:
        ep = VadEndpointer()
        ep._gate_raw = False
        return ep

    return {
        "default": VadEndpointer,
        "silero-ungated": private(False),
        "silero-gated-1": private(True),
    }
