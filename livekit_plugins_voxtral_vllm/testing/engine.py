"""Sans-I/O model of ONE vLLM ``/v1/realtime`` connection serving Voxtral Realtime.

Mirrors vLLM's ``RealtimeConnection`` (``entrypoints/speech_to_text/realtime/connection.py``)
and the model-side ``VoxtralRealtimeBuffer`` (``model_executor/models/voxtral_realtime.py``):
the session/model-validation flag, the unbounded audio queue with its ``None`` end sentinel,
at most one generation, the per-step frame arithmetic, ``done`` followed by a queue clear, and
the ``max_model_len`` stop. There is no asyncio, no socket and no clock here: the caller feeds
text frames with :meth:`RealtimeEngine.receive_text`, asks how many engine steps can run with
:meth:`RealtimeEngine.runnable_steps`, runs them with :meth:`RealtimeEngine.run_steps` and
collects the frames to write with :meth:`RealtimeEngine.data_to_send`. Times are whatever
monotonic seconds the caller passes as ``now``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import ValidationError

from ..protocol import (
    SAMPLE_RATE,
    STEP_SAMPLES,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    SessionCreated,
    TranscriptionDelta,
    TranscriptionDone,
    Usage,
    dump,
)
from .speech import ToneDecoder
from .tokens import TokenStream, require_tokenizer

__all__ = [
    "ENGINE_DEAD_MESSAGE",
    "FinishReason",
    "Generation",
    "OutputMode",
    "ReceivedMessage",
    "RealtimeEngine",
    "StepMath",
    "StreamingDecoder",
    "VersionProfile",
    "sanitize_message",
]

logger = logging.getLogger("livekit.plugins.voxtral_vllm.testing")

# -- model constants (tekken.json ``audio`` block of Voxtral-Mini-4B-Realtime-2602) -----------

_LEFT_PAD_TOKENS = 32
"""``streaming_n_left_pad_tokens``: 2.56 s of silence prepended at the first real chunk."""
_RIGHT_PAD_EXTRA_TOKENS = 1 + 10
"""Right pad at final = ``delay_tokens + 1 + 10`` steps of silence."""
_BOS_TOKENS = 1
_LOOK_AHEAD_SAMPLES = 40
"""``streaming_look_ahead_ms`` = 2.5 ms: each frame reaches 40 samples past its step."""
_MAX_AUDIO_SAMPLES = 25 * 1024**2
"""``VLLM_MAX_AUDIO_CLIP_FILESIZE_MB`` = 25, compared against *samples* / 2**20 by vLLM."""

ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
"""``str(EngineDeadError())`` in vLLM v1: what every running generation gets on engine death."""

_MODEL_NOT_VALIDATED = (
    "Model not validated. Make sure to validate the model by sending a session.update event."
)

FinishReason = Literal["done", "max_model_len", "error", "disconnect"]
OutputMode = Literal["tokens", "words"]
"""``"tokens"``: one real Tekken token per step, deltas as vLLM's detokenizer makes them (the
real model). ``"words"``: a whole word's text in one delta (simpler, friendlier: old tests)."""
_OUTPUT_MODES = ("tokens", "words")


# -- version profiles ----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionProfile:
    """Which vLLM release's realtime behaviour to reproduce (0.17.0 to 0.33.x)."""

    version: str
    validates_model: bool
    """>= 0.19: ``model_not_found`` / ``invalid_event`` and commits refused until validated.
    <= 0.18: any model accepted, a missing ``model`` is a KeyError (``processing_error``
    ``'model'``) and a commit before ``session.update`` errors but still executes."""
    stops_at_max_model_len: bool
    """>= 0.32: the buffer stops feeding at max_model_len and an unsolicited ``done`` follows.
    Before, the engine core asserts and dies, dropping every session on the server."""
    usage_has_completion_details: bool
    """>= 0.28: ``usage`` carries ``completion_tokens_details`` (5 keys instead of 4)."""
    sanitizes_errors: bool
    """>= 0.24: ``processing_error`` texts go through ``sanitize_message``."""
    api_key_breaks_websocket: bool
    """< 0.20: the auth middleware reads ``scope["method"]`` and every WS upgrade fails."""
    engine_iteration_timeout_s: float | None
    """0.17 to 0.24: token feedback waits ``VLLM_ENGINE_ITERATION_TIMEOUT_S`` (60 s) for the
    next engine output and dies silently after it; the generation then hangs forever."""

    @classmethod
    def for_version(cls, version: str) -> VersionProfile:
        """The profile of a vLLM version string such as ``"0.33.0"`` or ``"0.31"``."""
        parts = re.findall(r"\d+", version)
        if len(parts) < 2:
            raise ValueError(f"not a vLLM version: {version!r}")
        v = (int(parts[0]), int(parts[1]))
        if v < (0, 17):
            # 0.16 had a pre-allocated 30 s buffer, no right padding, and an empty commit
            # killed the engine: too different to emulate honestly.
            raise ValueError(f"vLLM {version} is not emulated (supported: 0.17.0 and later)")
        return cls(
            version=version,
            validates_model=v >= (0, 19),
            stops_at_max_model_len=v >= (0, 32),
            usage_has_completion_details=v >= (0, 28),
            sanitizes_errors=v >= (0, 24),
            api_key_breaks_websocket=v < (0, 20),
            engine_iteration_timeout_s=60.0 if v < (0, 25) else None,
        )


def sanitize_message(message: str) -> str:
    """vLLM's ``sanitize_message``: strip memory addresses, traceback lines and file paths."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


# -- step arithmetic -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepMath:
    """``VoxtralRealtimeBuffer`` frame arithmetic, expressed in samples of REAL audio.

    The prompt is BOS + (32 left-pad + delay) streaming-pad tokens; step 0 consumes all of
    them, each later step one more token and 1280 more samples. The left pad is only
    prepended once real audio arrives, so with no real audio no step ever runs.
    """

    transcription_delay_ms: int = 480
    max_model_len: int = 131072

    def __post_init__(self) -> None:
        if self.transcription_delay_ms <= 0 or self.transcription_delay_ms % 80:
            # mistral_common asserts this when loading tekken.json.
            raise ValueError(
                f"transcription_delay_ms must be a positive multiple of 80, "
                f"got {self.transcription_delay_ms}"
            )
        if self.max_model_len <= 0:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")

    @cached_property  # read several times per engine step
    def delay_tokens(self) -> int:
        return self.transcription_delay_ms // 80

    @cached_property
    def prompt_tokens(self) -> int:
        """Length of the prefill prompt (``usage.prompt_tokens``): 39 at 480 ms."""
        return _BOS_TOKENS + _LEFT_PAD_TOKENS + self.delay_tokens

    @cached_property
    def first_step_samples(self) -> int:
        """Real samples needed before step 0 can run: delay + 80 ms + 2.5 ms (9000 at 480)."""
        return (self.prompt_tokens - _LEFT_PAD_TOKENS) * STEP_SAMPLES + _LOOK_AHEAD_SAMPLES

    @cached_property
    def right_pad_samples(self) -> int:
        """Silence appended when the stream ends (final commit): 17 steps' worth at 480 ms."""
        return (self.delay_tokens + _RIGHT_PAD_EXTRA_TOKENS) * STEP_SAMPLES

    @cached_property
    def max_steps(self) -> int:
        """Steps one generation may run before max_model_len (>= 0.32 stops there)."""
        return max(0, self.max_model_len - self.prompt_tokens)

    def samples_for_step(self, step: int) -> int:
        """Real (or right-pad) samples that must have arrived before step ``step`` can run."""
        return self.first_step_samples + STEP_SAMPLES * step

    def steps_possible(self, real_samples: int, ended: bool) -> int:
        """How many steps the audio allows (ignoring max_model_len)."""
        if real_samples <= 0:
            return 0
        available = real_samples + (self.right_pad_samples if ended else 0)
        if available < self.first_step_samples:
            return 0
        return (available - self.first_step_samples) // STEP_SAMPLES + 1


# -- decoder protocol ------------------------------------------------------------------------


class StreamingDecoder(Protocol):
    """What the engine needs from a recogniser: ``testing.speech.ToneDecoder`` satisfies it."""

    def feed(self, samples: np.ndarray) -> None:
        """Feed the next real audio of the generation (int16 or float32)."""

    def pop_tokens(self, before_sample: int) -> list[str]:
        """Words' texts (``" word"``, ``"."``...) whose burst ended before that sample index."""


def _default_decoder_factory() -> StreamingDecoder:
    return ToneDecoder(sample_rate=SAMPLE_RATE)


def check_output_mode(output: str) -> OutputMode:
    """Validate an output mode; in ``"tokens"`` mode, check that mistral_common is there."""
    if output not in _OUTPUT_MODES:
        raise ValueError(f"output must be 'tokens' or 'words', got {output!r}")
    if output == "tokens":
        require_tokenizer()
    return "tokens" if output == "tokens" else "words"


# -- inspection records ----------------------------------------------------------------------


@dataclass
class ReceivedMessage:
    """One text frame the server read, as the emulator understood it.

    ``event`` is the parsed JSON (``None`` when it was not JSON); for appends the base64
    payload is replaced by ``"<N samples>"`` to keep records small; ``samples`` holds the
    decoded sample count of a valid append; ``error_code`` the error it was answered with.
    """

    at: float
    size: int
    event: Any
    type: str | None
    samples: int = 0
    error_code: str | None = None


@dataclass(eq=False)
class Generation:
    """One engine request (commit ... done/error) of a connection, for assertions."""

    index: int
    request_id: str
    started_at: float
    poisoned: bool = False
    """It read a stale final sentinel first and finished at once with an empty ``done``."""
    deltas: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    """The frames this generation produced: its deltas, then its done or error."""
    step_times: list[float] = field(default_factory=list)
    audio_samples: int = 0
    """Real samples this generation consumed (left/right padding excluded)."""
    final_received: bool = False
    final_at: float | None = None
    steps_at_final: int | None = None
    """Steps already run when the final sentinel reached this generation."""
    done_text: str | None = None
    usage: dict[str, Any] | None = None
    finished_reason: FinishReason | None = None
    finished_at: float | None = None
    error: str | None = None
    hung: bool = False
    """0.17-0.24 only: token feedback timed out; no further step and no ``done`` ever."""
    max_steps: int | None = None
    """A per-generation max_model_len fault: an unsolicited ``done`` after this many steps."""
    rut_steps: int = 0
    """Steps run while in the blank-token rut (only pads emitted, heard words dropped)."""
    words_heard: list[str] = field(default_factory=list)
    """Texts of the words the recogniser made out, in order (dropped ones included; kept only
    when the engine records messages)."""
    _chunks: list[np.ndarray] = field(default_factory=list, repr=False)
    _arrivals: deque[tuple[int, float]] = field(default_factory=deque, repr=False)
    """(samples available incl. right pad, time they reached the generation), for pacing."""
    _decoder: StreamingDecoder | None = field(default=None, repr=False)
    _stream: TokenStream | None = field(default=None, repr=False)
    _token_deadline: float | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        """Engine steps run (= ``transcription.delta`` events sent)."""
        return len(self.deltas)

    @property
    def text(self) -> str:
        """The concatenated deltas so far (what ``done.text`` is or will be)."""
        return "".join(self.deltas)

    @property
    def running(self) -> bool:
        return self.finished_reason is None

    @property
    def tokens(self) -> list[int]:
        """Token ids emitted, one per step, pads included (empty in ``"words"`` mode, or when
        the engine does not record messages)."""
        return list(self._stream.tokens) if self._stream is not None else []

    @property
    def pending_tokens(self) -> int:
        """Tokens heard but not yet emitted (``"tokens"`` mode)."""
        return self._stream.pending if self._stream is not None else 0

    @property
    def audio(self) -> np.ndarray:
        """The real audio consumed, int16 (empty when audio recording is off)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)


# -- the connection model ---------------------------------------------------------------------


class RealtimeEngine:
    """The state machine of one vLLM realtime WebSocket connection, without I/O.

    On construction ``session.created`` is queued. Each text frame goes through
    :meth:`receive_text`; errors are queued in reply exactly as vLLM words them. Audio is
    queued (unbounded) and consumed by the running generation; steps become runnable as
    audio arrives and run when the driver calls :meth:`run_steps`.
    """

    def __init__(
        self,
        *,
        served_model_names: Sequence[str],
        profile: VersionProfile,
        math: StepMath,
        decoder_factory: Callable[[], StreamingDecoder] = _default_decoder_factory,
        connection_id: str | None = None,
        session_id: str | None = None,
        created: int = 0,
        now: float = 0.0,
        record_audio: bool = True,
        record_messages: bool = True,
        skip_model_name_validation: bool = False,
        engine_iteration_timeout_s: float | None = None,
        output: OutputMode = "tokens",
        generation_limit: Callable[[], int | None] | None = None,
    ) -> None:
        self.output: OutputMode = check_output_mode(output)
        self.served_model_names = tuple(served_model_names)
        self.profile = profile
        self.math = math
        self.connection_id = connection_id or f"ws-{uuid.uuid4()}"
        self.session_id = session_id or f"sess-{uuid.uuid4().int & (2**64 - 1):016x}"
        self.created = created
        self.opened_at = now
        self.record_audio = record_audio
        self.record_messages = record_messages
        self.skip_model_name_validation = skip_model_name_validation
        self.engine_iteration_timeout_s = engine_iteration_timeout_s

        self.model_validated = False
        self.session_update: dict[str, Any] | None = None
        """The last ``session.update`` that validated the session, as received (its extra
        fields, e.g. ``language``, included)."""
        self.received: list[ReceivedMessage] = []
        self.generations: list[Generation] = []
        self.audio_samples = 0
        """Valid audio samples received over the whole connection."""
        self.steps_total = 0
        self.errors_sent: Counter[str] = Counter()
        """Error events queued, by ``code``."""
        self.closed = False
        self.engine_dead = False
        self.engine_fatal = False
        """Set when a < 0.32 generation overran max_model_len: the whole engine must die."""
        self.drop_requested = False
        """Set when an armed drop fault fired: the transport must be aborted after flushing."""
        self.rut = False
        """Blank-token rut (vllm#47614) on this connection: every step emits the pad."""
        self.rut_all = False
        """The same, set by a server for all of its connections."""
        self.hold_steps = 0
        """``"tokens"`` mode: the model holds what it hears for this many steps, then releases
        it in a burst (one token per step), as it does under load and after pauses."""
        self._generation_limit = generation_limit
        self._next_max_steps: int | None = None

        self._decoder_factory = decoder_factory
        self._queue: deque[np.ndarray | None] = deque()
        self._generation: Generation | None = None
        self._audio_chunks: list[np.ndarray] = []
        self._outbox: list[str] = []
        self._error_after: int | None = None
        self._error_message = ""
        self._drop_after: int | None = None
        self._rut_after: int | None = None
        self._record: ReceivedMessage | None = None

        self._emit(dump(SessionCreated(id=self.session_id, created=created)))

    # -- outputs ---------------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        """The text frames to write, in order; each call returns only the new ones."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._outbox)

    # -- inspection ------------------------------------------------------------------------

    @property
    def generation(self) -> Generation | None:
        """The running generation, if any."""
        return self._generation

    @property
    def queued_items(self) -> int:
        """Audio chunks (and stale sentinels) waiting in the queue for a future generation."""
        return len(self._queue)

    @property
    def queued_sentinel(self) -> bool:
        """True when a final sentinel waits in the queue and will poison the next generation."""
        return any(item is None for item in self._queue)

    @property
    def audio(self) -> np.ndarray:
        """All valid audio received on the connection, int16 (empty if recording is off)."""
        if not self._audio_chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._audio_chunks)

    # -- input -----------------------------------------------------------------------------

    def receive_text(self, text: str, now: float = 0.0) -> None:
        """Handle one text frame exactly as vLLM's receive loop does."""
        if self.closed:
            return
        record = ReceivedMessage(at=now, size=len(text), event=None, type=None)
        if self.record_messages:
            self.received.append(record)
        self._record = record
        try:
            event = json.loads(text)
            record.event = _redacted(event)
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                record.type = event["type"]
            self._handle_event(event, record, now)
        except json.JSONDecodeError:
            self._send_error("Invalid JSON", "invalid_json")
        except Exception as e:  # vLLM: any exception handling an event -> processing_error
            if not isinstance(e, (ValidationError, AttributeError, KeyError)):
                logger.warning(
                    "connection %s: error handling event", self.connection_id, exc_info=True
                )
            self._send_error(self._sanitize(str(e)), "processing_error")
        finally:
            self._record = None

    def _handle_event(self, event: Any, record: ReceivedMessage, now: float) -> None:
        # Mirrors RealtimeConnection.handle_event on the raw object: a non-dict raises
        # AttributeError here ("'list' object has no attribute 'get'") -> processing_error.
        event_type = event.get("type")
        if event_type == "session.update":
            if not self.profile.validates_model:
                # <= 0.18 indexed event["model"] and discarded the check's result.
                event["model"]
                self.model_validated = True
                self.session_update = event
                return
            model = event.get("model")
            if model is None:
                self._send_error("Missing required field: model", "invalid_event")
                return
            if not self._is_model_supported(model):
                self._send_error(f"The model `{model}` does not exist.", "model_not_found")
                return
            self.model_validated = True
            self.session_update = event
        elif event_type == "input_audio_buffer.append":
            append = InputAudioBufferAppend(**event)
            try:
                samples = _decode_audio(append.audio)
            except Exception as e:
                logger.debug("connection %s: invalid audio: %s", self.connection_id, e)
                self._send_error("Invalid audio data", "invalid_audio")
                return
            record.samples = len(samples)
            self.audio_samples += len(samples)
            if self.record_audio:
                self._audio_chunks.append(samples)
            self._enqueue(samples, now)
        elif event_type == "input_audio_buffer.commit":
            if not self.model_validated:
                self._send_error(_MODEL_NOT_VALIDATED, "model_not_validated")
                if self.profile.validates_model:
                    return
                # <= 0.18: the missing `return` let the commit execute anyway.
            commit = InputAudioBufferCommit(**event)
            if commit.final:
                self._enqueue(None, now)
            else:
                self._start_generation(now)
        else:
            self._send_error(f"Unknown event type: {event_type}", "unknown_event")

    def _is_model_supported(self, model: Any) -> bool:
        if not model:
            return True
        if self.skip_model_name_validation:
            return True
        return any(name == model for name in self.served_model_names)

    def _enqueue(self, item: np.ndarray | None, now: float) -> None:
        gen = self._generation
        # vLLM's feed_audio task drains the connection queue eagerly until it reads the
        # sentinel; after that, items stay queued (and are cleared after done).
        if gen is not None and not gen.final_received and not self._queue:
            self._consume(gen, item, now)
            self._maybe_finish(now)
        else:
            self._queue.append(item)

    def _consume(self, gen: Generation, item: np.ndarray | None, now: float) -> None:
        decoder = gen._decoder
        if item is None:
            gen.final_received = True
            gen.final_at = now
            gen.steps_at_final = gen.steps
            if gen.audio_samples > 0:
                gen._arrivals.append((gen.audio_samples + self.math.right_pad_samples, now))
            if decoder is not None and gen.audio_samples > 0:
                # The right pad is silence appended to the same stream.
                decoder.feed(np.zeros(self.math.right_pad_samples, dtype=np.int16))
            return
        gen.audio_samples += len(item)
        gen._arrivals.append((gen.audio_samples, now))
        if self.record_audio:
            gen._chunks.append(item)
        if decoder is not None:
            decoder.feed(item)

    def _start_generation(self, now: float) -> None:
        if self._generation is not None:
            logger.debug(
                "connection %s: generation already in progress, ignoring commit",
                self.connection_id,
            )
            return
        gen = Generation(
            index=len(self.generations),
            request_id=f"rt-{self.connection_id}-{uuid.uuid4()}",
            started_at=now,
        )
        self.generations.append(gen)
        self._generation = gen
        limits = [self._next_max_steps]
        self._next_max_steps = None
        if self._generation_limit is not None:
            limits.append(self._generation_limit())
        if any(n is not None for n in limits):
            gen.max_steps = min(n for n in limits if n is not None)
        if self.engine_dead:
            # AsyncLLM.generate raises EngineDeadError before reading the stream.
            self._fail(gen, ENGINE_DEAD_MESSAGE, now)
            return
        if self._error_after == 0:
            self._fire_injected_error(gen, now)
            return
        gen._decoder = self._decoder_factory()
        if self.output == "tokens":
            gen._stream = TokenStream(record=self.record_messages)
        if self.engine_iteration_timeout_s is not None:
            gen._token_deadline = now + self.engine_iteration_timeout_s
        # A stale sentinel at the head of the queue ends this generation before any audio.
        gen.poisoned = bool(self._queue) and self._queue[0] is None
        while self._queue and not gen.final_received:
            self._consume(gen, self._queue.popleft(), now)
        self._maybe_finish(now)

    # -- stepping --------------------------------------------------------------------------

    def runnable_steps(self) -> int:
        """Engine steps whose audio has arrived and that may run now."""
        gen = self._generation
        if gen is None or gen.hung or self.closed or self.drop_requested or self.engine_fatal:
            return 0
        possible = self.math.steps_possible(gen.audio_samples, gen.final_received)
        limit = self.math.max_steps
        if not self.profile.stops_at_max_model_len:
            # The step past the limit is scheduled and kills the engine (< 0.32).
            limit += 1
        if gen.max_steps is not None:
            limit = min(limit, gen.max_steps)
        return max(0, min(possible, limit) - gen.steps)

    def input_ready_at(self) -> float | None:
        """When the input of the next runnable step was complete (``now`` of the frame that
        completed it), or None if no step is runnable. A driver modelling compute time runs
        that step at ``max(input_ready_at(), previous step's end) + step time``."""
        gen = self._generation
        if gen is None or self.runnable_steps() == 0:
            return None
        need = self.math.samples_for_step(gen.steps)
        arrivals = gen._arrivals
        while len(arrivals) > 1 and arrivals[0][0] < need:
            arrivals.popleft()
        return arrivals[0][1] if arrivals else None

    def run_steps(self, max_steps: int, now: float) -> int:
        """Run up to ``max_steps`` runnable steps at time ``now``; returns how many ran."""
        ran = 0
        while ran < max_steps and self.runnable_steps() > 0:
            gen = self._generation
            assert gen is not None
            if gen.steps >= self.math.max_steps:
                # < 0.32: "Sampled token IDs exceed the max model length" -> EngineDeadError.
                logger.warning(
                    "connection %s: max_model_len %d overrun, engine dies (vLLM %s)",
                    self.connection_id,
                    self.math.max_model_len,
                    self.profile.version,
                )
                self.engine_fatal = True
                break
            self._step(gen, now)
            ran += 1
        if self._generation is not None:
            self._maybe_finish(now)
        return ran

    @property
    def in_rut(self) -> bool:
        """Whether steps emit only pads now (:attr:`rut` or :attr:`rut_all`)."""
        return self.rut or self.rut_all

    def schedule_rut(self, after_steps: int) -> None:
        """Fall into the rut (:attr:`rut`) once ``after_steps`` more steps have run on this
        connection (0: from the next step)."""
        if after_steps < 0:
            raise ValueError(f"after_steps must be >= 0, got {after_steps}")
        if after_steps == 0:
            self.rut = True
            self._rut_after = None
        else:
            self._rut_after = after_steps

    def _step(self, gen: Generation, now: float) -> None:
        step = gen.steps
        decoder = gen._decoder
        # Step k's token may reflect the audio up to (k + 1) * 80 ms: it runs once the
        # transcription delay's worth of audio past that has arrived.
        words = decoder.pop_tokens(STEP_SAMPLES * (step + 1)) if decoder is not None else []
        if self.record_messages:
            gen.words_heard.extend(words)
        stream = gen._stream
        if self.in_rut:
            # vllm#47614: the model is stuck on the pad; what it hears is never emitted.
            gen.rut_steps += 1
            delta = stream.step(rut=True) if stream is not None else ""
        elif stream is not None:
            stream.add_words(words, self.hold_steps)
            delta = stream.step()
        else:
            delta = "".join(words)
        gen.deltas.append(delta)
        gen.step_times.append(now)
        self.steps_total += 1
        frame = dump(TranscriptionDelta(delta=delta))
        if self.record_messages:
            gen.sent.append(frame)
        self._emit(frame)
        if gen._token_deadline is not None and self.engine_iteration_timeout_s is not None:
            if now > gen._token_deadline:
                # The feed_tokens task timed out before this output: its token never comes.
                gen.hung = True
                logger.warning(
                    "connection %s: token feedback timed out, generation hangs (vLLM %s)",
                    self.connection_id,
                    self.profile.version,
                )
            else:
                gen._token_deadline = now + self.engine_iteration_timeout_s
        if self._rut_after is not None:
            self._rut_after -= 1
            if self._rut_after <= 0:
                self._rut_after = None
                self.rut = True
        if self._drop_after is not None:
            self._drop_after -= 1
            if self._drop_after <= 0:
                self._drop_after = None
                self.drop_requested = True
        if self._error_after is not None:
            self._error_after -= 1
            if self._error_after <= 0:
                self._fire_injected_error(gen, now)

    def _maybe_finish(self, now: float) -> None:
        gen = self._generation
        if gen is None or gen.hung or self.engine_fatal:
            return
        if gen.max_steps is not None and gen.steps >= gen.max_steps:
            # A limit the client did not learn: vLLM >= 0.32's unsolicited done.
            possible = self.math.steps_possible(gen.audio_samples, gen.final_received)
            limited = not gen.final_received or possible > gen.steps
            self._finish(gen, "max_model_len" if limited else "done", now)
            return
        if self.profile.stops_at_max_model_len and gen.steps >= self.math.max_steps:
            # get_input_stream returns before waiting for audio: unsolicited done.
            possible = self.math.steps_possible(gen.audio_samples, gen.final_received)
            limited = not gen.final_received or possible > gen.steps
            self._finish(gen, "max_model_len" if limited else "done", now)
            return
        if gen.final_received and self.runnable_steps() == 0:
            self._finish(gen, "done", now)

    def _finish(self, gen: Generation, reason: FinishReason, now: float) -> None:
        prompt = self.math.prompt_tokens if gen.steps else 0
        usage = Usage(
            prompt_tokens=prompt,
            total_tokens=prompt + gen.steps,
            completion_tokens=gen.steps,
        )
        done = TranscriptionDone(text=gen.text, usage=usage)
        if self.profile.usage_has_completion_details:
            frame = dump(done)
        else:
            frame = done.model_dump_json(exclude={"usage": {"completion_tokens_details"}})
        if self.record_messages:
            gen.sent.append(frame)
        self._emit(frame)
        gen.done_text = gen.text
        gen.usage = json.loads(frame)["usage"]
        gen.finished_reason = reason
        gen.finished_at = now
        gen._decoder = None
        if not self.record_messages:
            gen._stream = None
        self._generation = None
        # vLLM clears the queue AFTER sending done: whatever arrived in between is lost.
        self._queue.clear()

    def _fail(self, gen: Generation, message: str, now: float) -> None:
        # An exception in the generation task: processing_error, no done, queue kept.
        frame = dump(ErrorEvent(error=self._sanitize(message), code="processing_error"))
        if self.record_messages:
            gen.sent.append(frame)
        if not self.closed:
            self.errors_sent["processing_error"] += 1
        if self._record is not None:
            self._record.error_code = "processing_error"
        self._emit(frame)
        gen.error = message
        gen.finished_reason = "error"
        gen.finished_at = now
        gen._decoder = None
        self._generation = None

    # -- faults ----------------------------------------------------------------------------

    def inject_processing_error(self, message: str, after_steps: int = 0, now: float = 0.0) -> None:
        """Fail the running generation (or the next one) after ``after_steps`` more steps.

        Like an engine exception in vLLM's generation task: ``processing_error``, no
        ``done``, the queue is not cleared, and the next commit starts a new generation.
        """
        if after_steps < 0:
            raise ValueError("after_steps must be >= 0")
        self._error_message = message
        self._error_after = after_steps
        if after_steps == 0 and self._generation is not None:
            self._fire_injected_error(self._generation, now)

    def _fire_injected_error(self, gen: Generation, now: float) -> None:
        self._error_after = None
        self._fail(gen, self._error_message, now)

    def limit_generation(self, steps: int, now: float = 0.0) -> None:
        """Stop the running generation (or the next one) with an unsolicited ``done`` once it
        has run ``steps`` steps in all, as vLLM >= 0.32 does at a max_model_len of
        ``prompt_tokens + steps`` (a limit the client may not know). A running generation
        already past it stops before its next step."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        gen = self._generation
        if gen is not None and gen.running:
            gen.max_steps = steps if gen.max_steps is None else min(gen.max_steps, steps)
            self._maybe_finish(now)
        else:
            self._next_max_steps = steps

    def schedule_drop(self, after_steps: int) -> None:
        """Set :attr:`drop_requested` once ``after_steps`` more steps have run."""
        if after_steps <= 0:
            self.drop_requested = True
        else:
            self._drop_after = after_steps

    def kill_engine(self, now: float) -> None:
        """The engine core died: the running generation errors, every later one too."""
        self.engine_dead = True
        gen = self._generation
        if gen is not None:
            self._fail(gen, ENGINE_DEAD_MESSAGE, now)

    def send_text(self, text: str) -> None:
        """Queue an arbitrary text frame (fault injection: malformed server frames)."""
        self._emit(text)

    def disconnect(self, now: float) -> None:
        """The socket is gone: cancel the running generation (vLLM ``cleanup``)."""
        if self.closed:
            return
        self.closed = True
        gen = self._generation
        if gen is not None:
            gen.finished_reason = "disconnect"
            gen.finished_at = now
            gen._decoder = None
            self._generation = None
        self._outbox.clear()

    # -- helpers ---------------------------------------------------------------------------

    def _emit(self, frame: str) -> None:
        if not self.closed:
            self._outbox.append(frame)

    def _send_error(self, message: str, code: str) -> None:
        if self._record is not None:
            self._record.error_code = code
        if not self.closed:
            self.errors_sent[code] += 1
        self._emit(dump(ErrorEvent(error=message, code=code)))

    def _sanitize(self, message: str) -> str:
        return sanitize_message(message) if self.profile.sanitizes_errors else message


def _decode_audio(audio: str) -> np.ndarray:
    # vLLM: b64decode (non-validating: bad padding raises binascii.Error) then
    # np.frombuffer(int16), which raises ValueError on an odd byte count.
    samples = np.frombuffer(base64.b64decode(audio), dtype="<i2")
    if len(samples) > _MAX_AUDIO_SAMPLES:
        raise ValueError("Maximum file size exceeded")
    if len(samples) == 0:
        raise ValueError("Can't process empty audio.")
    return samples.astype(np.int16)


def _redacted(event: Any) -> Any:
    if isinstance(event, dict) and isinstance(event.get("audio"), str):
        event = dict(event)
        event["audio"] = f"<{len(event['audio'])} base64 chars>"
    return event
