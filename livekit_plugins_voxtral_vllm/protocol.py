"""Typed models of vLLM's ``/v1/realtime`` WebSocket messages (vLLM 0.33).

vLLM speaks JSON text frames only: three client events and four server events. The models
serialise exactly as vLLM builds and reads them (pydantic ``model_dump_json``: compact,
``type`` first, fields in declaration order). No state lives here.

Reference: ``vllm/entrypoints/speech_to_text/realtime/protocol.py`` and ``connection.py``.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "SAMPLE_RATE",
    "STEP_SAMPLES",
    "STEP_SECONDS",
    "ErrorCode",
    "ErrorKind",
    "SessionUpdate",
    "InputAudioBufferAppend",
    "InputAudioBufferCommit",
    "SessionCreated",
    "TranscriptionDelta",
    "TranscriptionDone",
    "Usage",
    "ErrorEvent",
    "MalformedMessage",
    "ClientEvent",
    "ServerEvent",
    "parse_server_message",
    "describe_refusal",
    "dump",
    "encode_append",
    "encode_append_pcm",
    "COMMIT",
    "COMMIT_FINAL",
]

SAMPLE_RATE = 16000
"""The only rate vLLM accepts: raw PCM16 little-endian mono at 16 kHz, no negotiation."""
STEP_SAMPLES = 1280
"""One engine step (one output token, one ``transcription.delta``) per 80 ms of audio."""
STEP_SECONDS = STEP_SAMPLES / SAMPLE_RATE


class _Message(BaseModel):
    # vLLM's OpenAIBaseModel allows extra fields; so do we, on both sides.
    model_config = ConfigDict(extra="allow")


# -- client -> server -------------------------------------------------------------------------


class SessionUpdate(_Message):
    """``session.update``. vLLM reads only ``model``; anything else is ignored silently."""

    type: Literal["session.update"] = "session.update"
    model: str


class InputAudioBufferAppend(_Message):
    """``input_audio_buffer.append``: base64 of PCM16 LE mono 16 kHz, non-empty, even length."""

    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str


class InputAudioBufferCommit(_Message):
    """``input_audio_buffer.commit``. Non-final starts a generation if none runs; final ends the
    audio of the running one (and poisons the next generation if none runs)."""

    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"
    final: bool = False


ClientEvent = SessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit


# -- server -> client -------------------------------------------------------------------------


class SessionCreated(_Message):
    """Sent once right after the upgrade: ``id`` is ``sess-`` + 16 hex, ``created`` int seconds."""

    type: Literal["session.created"] = "session.created"
    id: str
    created: int


class TranscriptionDelta(_Message):
    """One per 80 ms engine step; mostly ``""``; words carry a leading space."""

    type: Literal["transcription.delta"] = "transcription.delta"
    delta: str


class Usage(_Message):
    """vLLM's ``UsageInfo``; ``completion_tokens_details`` exists only from 0.28."""

    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class TranscriptionDone(_Message):
    """End of a generation: ``text`` is literally the concatenation of its deltas."""

    type: Literal["transcription.done"] = "transcription.done"
    text: str
    usage: Usage | None = None


class ErrorEvent(_Message):
    """A flat error: ``error`` is a string, ``code`` one of :class:`ErrorCode` (nullable)."""

    type: Literal["error"] = "error"
    error: str
    code: str | None = None


ServerEvent = SessionCreated | TranscriptionDelta | TranscriptionDone | ErrorEvent


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A server frame that is not one of the four events. Carries the raw text and why."""

    raw: str
    reason: str


# -- error codes --------------------------------------------------------------------------------


class ErrorKind(enum.Enum):
    """What an error code means for a client."""

    CONFIGURATION = "configuration"
    """Fatal: the session cannot work until the user fixes a setting."""
    GENERATION_LOST = "generation_lost"
    """Recoverable: the running generation died (no ``done`` follows); start a new one."""
    CLIENT_BUG = "client_bug"
    """We sent something vLLM could not read. Never expected; logged and counted."""


class ErrorCode(str, enum.Enum):
    """The ``code`` values vLLM's realtime handler sends (reference §1.3)."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_EVENT = "invalid_event"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_NOT_VALIDATED = "model_not_validated"
    INVALID_AUDIO = "invalid_audio"
    PROCESSING_ERROR = "processing_error"

    @property
    def kind(self) -> ErrorKind:
        return _ERROR_KINDS[self]

    @classmethod
    def parse(cls, code: str | None) -> ErrorCode | None:
        """The enum member for ``code``, or None for a null or unknown code."""
        try:
            return cls(code)
        except ValueError:
            return None


_ERROR_KINDS: dict[ErrorCode, ErrorKind] = {
    ErrorCode.MODEL_NOT_FOUND: ErrorKind.CONFIGURATION,
    ErrorCode.MODEL_NOT_VALIDATED: ErrorKind.CONFIGURATION,
    ErrorCode.INVALID_EVENT: ErrorKind.CONFIGURATION,
    ErrorCode.PROCESSING_ERROR: ErrorKind.GENERATION_LOST,
    ErrorCode.INVALID_AUDIO: ErrorKind.CLIENT_BUG,
    ErrorCode.UNKNOWN_EVENT: ErrorKind.CLIENT_BUG,
    ErrorCode.INVALID_JSON: ErrorKind.CLIENT_BUG,
}


_REFUSAL_HINTS: dict[ErrorCode, str] = {
    ErrorCode.MODEL_NOT_FOUND: "set model= (or VOXTRAL_VLLM_MODEL) to a name the server serves "
    "(its --served-model-name, else the model path)",
    ErrorCode.MODEL_NOT_VALIDATED: "the server did not accept session.update; check the model name",
    ErrorCode.INVALID_EVENT: "the server rejected session.update",
}


def describe_refusal(code: ErrorCode | None, error: str) -> str:
    """A user-facing message for a configuration error from vLLM, saying what to fix."""
    hint = _REFUSAL_HINTS.get(code) if code is not None else None
    name = code.value if code is not None else "error"
    return f"vLLM refused the session ({name}): {error}" + (f"; {hint}" if hint else "")


# -- parsing and serialising -------------------------------------------------------------------

_SERVER_MODELS: dict[str, type[BaseModel]] = {
    "session.created": SessionCreated,
    "transcription.delta": TranscriptionDelta,
    "transcription.done": TranscriptionDone,
    "error": ErrorEvent,
}


_EMPTY_DELTA_FRAME = '{"type":"transcription.delta","delta":""}'
_EMPTY_DELTA = TranscriptionDelta.model_construct(type="transcription.delta", delta="")


def parse_server_message(text: str) -> ServerEvent | MalformedMessage:
    """Turn one text frame from the server into a typed event.

    Never raises: anything that is not JSON, not an object, of an unknown type or missing
    fields becomes a :class:`MalformedMessage` carrying the raw text.

    Treat the result as read-only: the empty delta vLLM sends for most 80 ms steps, byte for
    byte as it serialises it, is one shared instance (no JSON parse, no model built).
    """
    if text == _EMPTY_DELTA_FRAME:
        return _EMPTY_DELTA
    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError) as e:
        # RecursionError: json's C decoder gives up on nesting deeper than the recursion limit
        return MalformedMessage(raw=text, reason=f"not JSON: {e}")
    if not isinstance(data, dict):
        return MalformedMessage(raw=text, reason=f"not a JSON object: {type(data).__name__}")
    kind = data.get("type")
    # The hot path: most frames are empty or one-word deltas.
    if kind == "transcription.delta":
        delta = data.get("delta")
        if isinstance(delta, str):
            return TranscriptionDelta.model_construct(type="transcription.delta", delta=delta)
    model = _SERVER_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return MalformedMessage(raw=text, reason=f"unknown event type: {kind!r}")
    try:
        event = model.model_validate(data)
    except ValidationError as e:
        return MalformedMessage(raw=text, reason=f"invalid {kind}: {e.error_count()} error(s)")
    assert isinstance(event, (SessionCreated, TranscriptionDelta, TranscriptionDone, ErrorEvent))
    return event


def dump(message: BaseModel) -> str:
    """Serialise a message exactly as vLLM's pydantic models do (compact, declaration order)."""
    return message.model_dump_json()


COMMIT = '{"type":"input_audio_buffer.commit"}'
"""A non-final commit, pre-serialised."""
COMMIT_FINAL = '{"type":"input_audio_buffer.commit","final":true}'
"""A final commit, pre-serialised."""

_APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_SUFFIX = '"}'


def encode_append(pcm16: bytes | bytearray | memoryview) -> str:
    """An ``input_audio_buffer.append`` frame for raw PCM16 LE mono 16 kHz bytes.

    Equal to ``dump(InputAudioBufferAppend(audio=b64))`` but built without pydantic or
    ``json``: base64 needs no JSON escaping, and this runs for every 80 ms of every stream.
    """
    if len(pcm16) == 0 or len(pcm16) % 2:
        raise ValueError(
            f"PCM16 audio must be a non-empty, even number of bytes, got {len(pcm16)}; "
            "vLLM answers invalid_audio otherwise"
        )
    return _APPEND_PREFIX + base64.b64encode(pcm16).decode("ascii") + _APPEND_SUFFIX


def encode_append_pcm(samples: np.ndarray) -> str:
    """Like :func:`encode_append` for an int16 sample array (converted to little-endian)."""
    if samples.dtype != np.dtype("<i2"):
        samples = samples.astype("<i2")
    return encode_append(samples.tobytes())
