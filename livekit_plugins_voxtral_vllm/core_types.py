"""The vocabulary of :class:`~.stream_core.StreamCore`: its settings, its actions, its counters.

- :class:`CoreOptions` (and :class:`LagPolicy`): what a core is built with (``STT`` validates
  them first).
- The actions :meth:`StreamCore.actions` returns, for the glue to carry out in order: lane
  actions (:class:`OpenLane`, :class:`SendOnLane`, :class:`CloseLane`), stream events
  (:class:`SpeechStarted`, :class:`SpeechEnded`, :class:`Interim`, :class:`Final`,
  :class:`UsageReport`, :class:`BlankRut`), and :class:`StreamFailed`.
- :class:`StreamStats`: the counters a user reads as ``stream.stats``.

Nothing here has behaviour; ``stream_core`` re-exports all of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .generation_cap import GenerationCap
from .protocol import ErrorCode
from .rut import RutOptions
from .segmenter import CaptionFinal, SegmenterOptions

__all__ = [
    "Action",
    "BlankRut",
    "CloseLane",
    "CoreOptions",
    "Final",
    "Interim",
    "LagPolicy",
    "OpenLane",
    "SendOnLane",
    "SpeechEnded",
    "SpeechStarted",
    "StreamEvent",
    "StreamFailed",
    "StreamStats",
    "UsageReport",
]


class LagPolicy(str, enum.Enum):
    """What to do when the server falls further behind the audio than ``max_lag_s``."""

    CATCH_UP = "catch_up"
    """Stay live: abandon the lagging generation, caption what it had, drop the backlog
    (counted in ``dropped_audio_s``) and continue from the live edge."""
    WAIT = "wait"
    """Keep everything; captions arrive later and later (a warning is logged per episode)."""


@dataclass(frozen=True)
class CoreOptions:
    """Settings of :class:`StreamCore` (validated by ``STT``)."""

    model: str
    language: str | None = None
    transcription_delay_ms: int = 480
    preroll_ms: int = 300
    max_model_len: int | None = None
    rollover_fraction: float = 0.85
    max_lanes: int = 2
    warm_lanes: int = 1
    """Idle sockets kept open for the next utterance: 1 (a warm socket), or 0 (one socket per
    utterance, opened at speech start and closed after ``done``, so a least-connections
    balancer in front of several servers counts running generations)."""
    refusal_failover: bool = False
    """Several servers: a session refused because the server does not serve the model
    (``model_not_found``, e.g. one replica deployed with another model) closes that lane as
    :attr:`CloseLane.refused` and the generation goes on another lane, instead of failing the
    stream. The glue stops using that server and fails the stream when none is left."""
    history_s: float = 20.0
    max_lag_s: float = 5.0
    lag_grace_s: float = 2.0
    lag_policy: LagPolicy = LagPolicy.CATCH_UP
    input_stall_s: float = 2.0
    generation_timeout_s: float = 10.0
    max_reconnects: int = 3
    reconnect_interval_s: float = 2.0
    max_outage_s: float = 180.0
    abort_on_close: bool = True
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    generation_cap: GenerationCap | None = None
    """Roll generations over once they have taken this much audio (None: only for
    max_model_len)."""
    rut: RutOptions | None = field(default_factory=RutOptions)
    """When long speech with only empty deltas counts as vLLM's blank-token rut (None: never
    watched for)."""


# -- actions and stream events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenLane:
    lane: int


@dataclass(frozen=True, slots=True)
class SendOnLane:
    lane: int
    frames: list[str]


@dataclass(frozen=True, slots=True)
class CloseLane:
    lane: int
    fault: str | None = None
    """Why, when the server failed the lane (a generation lost on it, no output): the glue
    tells its endpoint pool. None for an ordinary close."""
    refused: str | None = None
    """With :attr:`CoreOptions.refusal_failover`: the server refused the session for the
    model (``model_not_found``; the server's message). The glue stops using that server."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    pass


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    pass


@dataclass(frozen=True, slots=True)
class Interim:
    segment: int
    text: str


@dataclass(frozen=True, slots=True)
class Final:
    segment: int
    caption: CaptionFinal


@dataclass(frozen=True, slots=True)
class UsageReport:
    generation: int
    audio_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class BlankRut:
    """vLLM's blank-token rut (vllm-project/vllm#47614) was detected: ``speech_s`` of speech
    got only empty deltas. ``persistent``: on a fresh socket too (reported once per episode;
    the first report of an episode says the stream continued on a fresh socket)."""

    persistent: bool
    speech_s: float


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The stream cannot go on. ``configuration`` errors are the user's to fix (no retry);
    ``code`` is vLLM's error code when the server refused the session."""

    message: str
    configuration: bool
    code: ErrorCode | None = None


StreamEvent = SpeechStarted | SpeechEnded | Interim | Final | UsageReport | BlankRut
Action = OpenLane | SendOnLane | CloseLane | StreamEvent | StreamFailed


@dataclass
class StreamStats:
    """Counters a user can read or log (``stream.stats``)."""

    generations: int = 0
    """vLLM generations started (utterances, continuations, replays, rollovers)."""
    reconnects: int = 0
    """Sockets lost, or that could not be opened, and replaced."""
    rollovers: int = 0
    """Generations rolled over before max_model_len."""
    unsolicited_done: int = 0
    """Generations the server stopped at max_model_len (vLLM >= 0.32), then continued."""
    lost_generations: int = 0
    """Generations lost without ``done`` (drop, processing_error, watchdog) and replayed."""
    dropped_audio_s: float = 0.0
    """Audio never transcribed: a backlog dropped by the catch-up policy, or audio that left
    the 20 s history during an outage."""
    lag_s: float = 0.0
    """How far vLLM is behind the audio sent, now."""
    peak_lag_s: float = 0.0
    first_text_latency_s: float | None = None
    """Wall time from a word's audio being pushed to its first interim (first word only)."""
    final_latency_s: float | None = None
    """Wall time from the end of the latest final's audio to that final."""
    malformed_messages: int = 0
    server_errors: int = 0
    audio_sent_s: float = 0.0
    blank_ruts: int = 0
    """Episodes of vLLM's blank-token rut (vllm-project/vllm#47614): long endpointed speech
    that got only empty deltas; each was continued on a fresh socket from the last word."""
    blank_ruts_persistent: int = 0
    """Of those, episodes where the fresh socket rutted too (the server needs a restart;
    captions are missing meanwhile)."""
    dropped_punctuation: int = 0
    """Punctuation-only output with no open caption to join (never a caption by itself)."""
