"""Facts the sans-I/O core reports: frozen dataclasses named in the past tense.

:mod:`.connection` emits the connection events (one vLLM socket); :mod:`.stream_core` turns
them, with the caption segmenter's output, into the stream events the LiveKit glue emits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .protocol import ErrorCode, ErrorKind, Usage

__all__ = [
    "ConnectionState",
    "GenerationState",
    "FinishReason",
    "SessionCreated",
    "GenerationStarted",
    "DeltaReceived",
    "GenerationFinished",
    "GenerationFailed",
    "ServerErrorReceived",
    "MalformedMessageReceived",
    "ConnectionEvent",
]


class ConnectionState(enum.Enum):
    """Where one vLLM socket stands."""

    CONNECTING = "connecting"
    """Upgraded, ``session.update`` sent, ``session.created`` not seen yet."""
    OPEN = "open"
    FAILED = "failed"
    """A configuration error (wrong model, ...) or misuse: sticky, the socket is useless."""
    CLOSED = "closed"


class GenerationState(enum.Enum):
    """vLLM runs at most one generation per socket (reference §2.2)."""

    IDLE = "idle"
    """No generation runs: a non-final commit starts one; a final commit would poison the next."""
    RUNNING = "running"
    """Commit sent: audio is transcribed as it arrives."""
    FINALIZING = "finalizing"
    """``final: true`` sent: the server pads, runs the remaining steps and sends ``done``."""


class FinishReason(enum.Enum):
    REQUESTED = "requested"
    """``done`` after our final commit."""
    MAX_MODEL_LEN = "max_model_len"
    """An unsolicited ``done``: the generation reached max_model_len (vLLM >= 0.32, §2.3)."""


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str


@dataclass(frozen=True, slots=True)
class GenerationStarted:
    generation: int


@dataclass(frozen=True, slots=True)
class DeltaReceived:
    """One engine step: ``step`` is 0-based within the generation; it transcribed the audio
    frame ``[step * 1280, (step + 1) * 1280)`` of the generation's samples."""

    generation: int
    step: int
    delta: str


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    generation: int
    text: str
    usage: Usage | None
    reason: FinishReason
    steps: int
    samples_sent: int
    reusable: bool
    """False when the server may still hold stale audio for this socket (after an unsolicited
    ``done`` our in-flight appends may survive the queue clear), so it must not be reused."""


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    """The generation died without ``done``: a ``processing_error`` during it, or the
    connection was lost while it ran. Its audio must be replayed elsewhere."""

    generation: int
    reason: str
    steps: int
    samples_sent: int


@dataclass(frozen=True, slots=True)
class ServerErrorReceived:
    code: ErrorCode | None
    message: str
    kind: ErrorKind


@dataclass(frozen=True, slots=True)
class MalformedMessageReceived:
    raw: str
    reason: str


ConnectionEvent = (
    SessionCreated
    | GenerationStarted
    | DeltaReceived
    | GenerationFinished
    | GenerationFailed
    | ServerErrorReceived
    | MalformedMessageReceived
)
