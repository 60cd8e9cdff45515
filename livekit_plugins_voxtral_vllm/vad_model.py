"""Silero VAD on onnxruntime, batched across every stream of the process.

The weights are the ``silero_vad.onnx`` that ``livekit-plugins-silero`` ships in its wheel
(MIT licence, 2.3 MB); nothing is downloaded. One ONNX call costs about 0.1 ms for one
32 ms window but only about 0.035 ms per window in a batch of 32 or more (measured on this
project's 2-core CI machine), so every stream of the process shares one :class:`SileroBatch`:
streams queue the windows they need scored, and one call scores the next window of every
stream that has one.

When the call runs (:meth:`SileroBatch.due`): once every stream that is using the model has a
window waiting, or when a stream comes back with a window from its previous push still
unscored (someone went quiet or stopped). A stream therefore learns its scores at its next
push at the latest (80 ms later with the STT glue's chunks), or at once when it is the only
one. Plain computation on numpy arrays: no thread, no I/O, no clock.
"""

from __future__ import annotations

import importlib.util
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "WINDOW",
    "SileroBatch",
    "SileroSlot",
    "load_session",
    "shared_session",
    "weights_path",
]

WINDOW = 512
"""Samples per scored window at 16 kHz (32 ms): what the Silero v5 model takes."""
_CONTEXT = 64
"""Samples of the previous window the model sees in front of each window."""

F32 = npt.NDArray[np.float32]


def weights_path() -> Path:
    """``silero_vad.onnx`` from the installed ``livekit-plugins-silero``.

    Found without importing that plugin: its import registers a LiveKit plugin, which LiveKit
    allows only on the main thread, and an STT may be built on another.

    Raises:
        RuntimeError: if that package is not installed (it is a dependency of this one).
    """
    spec = importlib.util.find_spec("livekit.plugins.silero")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / "resources" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise RuntimeError(
        "the default endpointer needs the Silero weights from livekit-plugins-silero: "
        "pip install livekit-plugins-silero (or pass vad= / endpointer='energy')"
    )


def load_session() -> Any:
    """A single-threaded onnxruntime CPU session on the Silero weights."""
    import onnxruntime  # type: ignore[import-untyped]

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(weights_path()), sess_options=opts, providers=["CPUExecutionProvider"]
    )


_session: Any | None = None
_session_lock = threading.Lock()


def shared_session() -> Any:
    """The process's onnxruntime session (loaded on first use; sessions are thread-safe)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = load_session()
        return _session


class SileroSlot:
    """One stream's place in a :class:`SileroBatch`: its model state and its queue."""

    __slots__ = ("state", "context", "pending", "scores", "active", "idle_runs")

    def __init__(self) -> None:
        self.state: F32 = np.zeros((2, 128), dtype=np.float32)
        self.context: F32 = np.zeros(_CONTEXT, dtype=np.float32)
        self.pending: deque[F32] = deque()
        self.scores: deque[float] = deque()
        """Scores of the windows submitted, in order, not yet taken."""
        self.active = False
        """Whether the stream is using the model now (it then submits every window)."""
        self.idle_runs = 0

    def reset_state(self) -> None:
        """Forget the audio heard so far (the next window starts a fresh model state)."""
        self.state.fill(0.0)
        self.context.fill(0.0)


class SileroBatch:
    """Scores 32 ms windows of many streams with one ONNX call per step. See the module doc.

    Counters keep :meth:`due` O(1): it runs on every push of every stream.
    """

    _shared: SileroBatch | None = None
    _shared_lock = threading.Lock()

    def __init__(self, session: Any | None = None) -> None:
        self._session = session if session is not None else shared_session()
        self._slots: set[SileroSlot] = set()
        self._lock = threading.RLock()
        self._sr = np.array(16000, dtype=np.int64)
        self._n_active = 0
        self._n_active_waiting = 0
        self._n_waiting = 0
        self.calls = 0
        """ONNX calls made (for benchmarks)."""
        self.windows = 0
        """Windows scored (for benchmarks)."""

    @classmethod
    def shared(cls) -> SileroBatch:
        """The process-wide batch (created, and the weights loaded, on first use)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def streams(self) -> int:
        """Slots registered (streams alive)."""
        return len(self._slots)

    def slot(self, owner: object) -> SileroSlot:
        """A new slot for ``owner``; it leaves the batch when ``owner`` is garbage-collected
        (or at :meth:`release`)."""
        s = SileroSlot()
        with self._lock:
            self._slots.add(s)
        weakref.finalize(owner, self.release, s)
        return s

    def release(self, slot: SileroSlot) -> None:
        """Take ``slot`` out of the batch; its queued windows are dropped."""
        with self._lock:
            if slot not in self._slots:
                return
            self.set_active(slot, False)
            if slot.pending:
                self._n_waiting -= 1
                slot.pending.clear()
            self._slots.discard(slot)

    def set_active(self, slot: SileroSlot, active: bool) -> None:
        """Whether ``slot``'s stream is using the model (submits every window) from now."""
        with self._lock:
            if slot.active == active:
                return
            slot.active = active
            slot.idle_runs = 0
            step = 1 if active else -1
            self._n_active += step
            if slot.pending:
                self._n_active_waiting += step

    def submit(self, slot: SileroSlot, window: F32) -> None:
        """Queue one float32 window of ``WINDOW`` samples (scale: 1.0 = full scale)."""
        with self._lock:
            if not slot.pending:
                self._n_waiting += 1
                if slot.active:
                    self._n_active_waiting += 1
            slot.pending.append(window)

    def due(self) -> bool:
        """Whether every stream that is using the model has a window waiting."""
        return self._n_waiting > 0 and self._n_active_waiting == self._n_active

    def run(self) -> None:
        """Score every queued window: one ONNX call per step, the next window of every
        stream that has one. A stream that stays active without submitting for a few runs
        (it stopped pushing) no longer holds the others back."""
        with self._lock:
            slots = [s for s in self._slots if s.pending]
            for s in self._slots:
                if s.pending:
                    s.idle_runs = 0
                elif s.active:
                    s.idle_runs += 1
                    if s.idle_runs >= 4:
                        self.set_active(s, False)
            while slots:
                n = len(slots)
                x = np.empty((n, _CONTEXT + WINDOW), dtype=np.float32)
                state = np.empty((2, n, 128), dtype=np.float32)
                for i, s in enumerate(slots):
                    x[i, :_CONTEXT] = s.context
                    x[i, _CONTEXT:] = s.pending.popleft()
                    state[:, i, :] = s.state
                out, new_state = self._session.run(
                    None, {"input": x, "state": state, "sr": self._sr}
                )
                self.calls += 1
                self.windows += n
                probs = out[:, 0].tolist()
                for i, s in enumerate(slots):
                    s.state[:] = new_state[:, i, :]
                    s.context[:] = x[i, -_CONTEXT:]
                    s.scores.append(probs[i])
                slots = [s for s in slots if s.pending]
            self._n_waiting = 0
            self._n_active_waiting = 0
