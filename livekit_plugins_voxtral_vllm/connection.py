"""``RealtimeConnection``: the sans-I/O client of one vLLM ``/v1/realtime`` socket.

It is the mirror of vLLM's own server-side ``connection.py`` and owns every rule of vLLM's
generation lifecycle (reference ``vllm-realtime.md`` §2.2), so that no other code has to know
them:

- ``session.update`` goes first and gets no reply; ``session.created`` proves the peer is vLLM.
- A non-final commit starts a generation only when none runs (rule 3): we send one only IDLE.
- ``final: true`` with no generation running poisons the next one (rule 6): we never send it
  unless a generation runs, and never twice.
- After ``final`` nothing is sent until ``done`` (rule 7: the server clears its queue after
  ``done``, so audio sent in between is lost). Audio is never accepted in FINALIZING.
- A ``done`` we did not ask for means max_model_len was reached (§2.3, vLLM >= 0.32).
- ``processing_error`` while a generation runs means it died without ``done`` (rule 10).

Driving it: call an input method, then drain :meth:`data_to_send` (JSON text frames, in order)
and :meth:`events_received`. No method blocks, sleeps or touches a socket; time arrives as
``now`` (monotonic seconds, the glue's clock). Server input never raises; misuse raises
:class:`~.errors.InvalidState` and changes nothing.
"""

from __future__ import annotations

import numpy as np

from . import protocol
from .errors import InvalidState
from .events import (
    ConnectionEvent,
    ConnectionState,
    DeltaReceived,
    FinishReason,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    GenerationState,
    MalformedMessageReceived,
    ServerErrorReceived,
    SessionCreated,
)
from .protocol import STEP_SAMPLES, ErrorCode, ErrorKind

__all__ = [
    "RealtimeConnection",
    "first_step_samples",
    "steps_for_samples",
    "prompt_tokens",
    "min_max_model_len",
]

_LOOK_AHEAD_SAMPLES = 40  # streaming_look_ahead_ms 2.5 in tekken.json


def first_step_samples(transcription_delay_ms: int) -> int:
    """Real audio a generation needs before its first step: delay + 80 ms + 2.5 ms (§3.2)."""
    return (transcription_delay_ms // 80 + 1) * STEP_SAMPLES + _LOOK_AHEAD_SAMPLES


def prompt_tokens(transcription_delay_ms: int) -> int:
    """Prefill tokens of every generation: BOS + 32 left-pad + delay tokens (39 at 480 ms)."""
    return 33 + transcription_delay_ms // 80


def min_max_model_len(transcription_delay_ms: int) -> int:
    """The smallest max_model_len a stream can work with: the prompt, the right padding vLLM
    runs after ``final`` (delay + 11 steps), a 3-step margin and 62 steps (5 s) of audio past
    the first step: a generation then holds several words, and the model's output, which
    backs up behind words of many tokens, has room to catch up inside one (121 at 480 ms)."""
    delay = transcription_delay_ms // 80
    return prompt_tokens(transcription_delay_ms) + (delay + 11) + 3 + 62


def steps_for_samples(samples: int, transcription_delay_ms: int) -> int:
    """How many steps vLLM can have run for a generation fed ``samples`` of real audio."""
    first = first_step_samples(transcription_delay_ms)
    if samples < first:
        return 0
    return 1 + (samples - first) // STEP_SAMPLES


class RealtimeConnection:
    """Protocol state of one vLLM realtime socket.

    Args:
        model: the served model name sent in ``session.update``.
        language: sent in ``session.update`` too (vLLM 0.33 ignores it; newer servers may not).
        transcription_delay_ms: the server's delay (tekken.json), for step accounting.
    """

    def __init__(
        self,
        *,
        model: str,
        language: str | None = None,
        transcription_delay_ms: int = 480,
    ) -> None:
        self._model = model
        self._language = language
        self._delay_ms = transcription_delay_ms
        self.state = ConnectionState.CONNECTING
        self.generation_state = GenerationState.IDLE
        self.session_id: str | None = None
        self.failure: ServerErrorReceived | None = None
        self._generation = 0
        self._steps = 0
        self._samples_sent = 0
        self._first = first_step_samples(transcription_delay_ms)
        self._cut = self._first  # where the next append ends, in samples into the generation
        self._pending = np.zeros(0, dtype=np.int16)
        self._expected = 0  # expected_steps, kept current: it is read several times per step
        self._to_send: list[str] = []
        self._events: list[ConnectionEvent] = []
        self.last_received_at: float | None = None
        # A connection that saw an unsolicited done or a lost generation may hold stale audio
        # (or a stale final sentinel) in vLLM's queue: it must not start another generation.
        self.reusable = True
        self._send_session_update()

    # -- properties -----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Number of the current (or last) generation on this socket, from 1."""
        return self._generation

    @property
    def steps(self) -> int:
        """Steps (deltas) received in the current generation."""
        return self._steps

    @property
    def samples_sent(self) -> int:
        """Audio samples sent in the current generation (including the unsent remainder)."""
        return self._samples_sent

    @property
    def expected_steps(self) -> int:
        """Steps vLLM would have returned by now if it kept up with the audio we sent."""
        return self._expected

    @property
    def lag_steps(self) -> int:
        """How many steps the server is behind the audio it has been sent."""
        if self.generation_state is not GenerationState.RUNNING:
            return 0
        lag = self._expected - self._steps
        return lag if lag > 0 else 0

    @property
    def can_start_generation(self) -> bool:
        return (
            self.state is ConnectionState.OPEN
            and self.generation_state is GenerationState.IDLE
            and self.reusable
        )

    # -- outputs ---------------------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        """JSON text frames to write, in order. Clears the list."""
        out, self._to_send = self._to_send, []
        return out

    def events_received(self) -> list[ConnectionEvent]:
        """Events since the last call, in order. Clears the list."""
        out, self._events = self._events, []
        return out

    # -- app inputs ------------------------------------------------------------------------------

    def start_generation(self, now: float) -> None:
        """Send a non-final commit: a new generation starts and consumes what follows.

        Raises:
            InvalidState: unless OPEN (or CONNECTING: vLLM reads messages in order, so a commit
                pipelined after ``session.update`` is fine), IDLE and reusable.
        """
        if self.state not in (ConnectionState.OPEN, ConnectionState.CONNECTING):
            raise InvalidState(f"cannot start a generation when the connection is {self.state}")
        if self.generation_state is not GenerationState.IDLE:
            raise InvalidState(
                f"cannot start a generation while generation {self._generation} is "
                f"{self.generation_state.value} (vLLM would ignore the commit)"
            )
        if not self.reusable:
            raise InvalidState("this connection may hold stale audio; open a new one")
        self._generation += 1
        self._steps = 0
        self._samples_sent = 0
        self._cut = self._first
        self._expected = 0
        self.generation_state = GenerationState.RUNNING
        self._to_send.append(protocol.COMMIT)
        self._events.append(GenerationStarted(self._generation))

    def send_audio(self, samples: np.ndarray) -> None:
        """Queue 16 kHz mono int16 audio for the running generation, sent in appends that each
        complete one step (the first ``delay + 80 ms + 2.5 ms``, then 80 ms each).

        Raises:
            InvalidState: unless a generation is RUNNING (audio between ``final`` and ``done``
                would be discarded by vLLM; audio with no generation would feed the next one).
        """
        if self.generation_state is not GenerationState.RUNNING or self.state in (
            ConnectionState.FAILED,
            ConnectionState.CLOSED,
        ):
            raise InvalidState(
                f"cannot send audio when the generation is {self.generation_state.value} "
                f"and the connection {self.state.value}"
            )
        if samples.size == 0:
            return
        self._samples_sent += int(samples.size)
        pending = np.concatenate((self._pending, samples)) if self._pending.size else samples
        start = self._samples_sent - pending.size  # where pending[0] lies in the generation
        end = self._samples_sent
        cut = self._cut
        if end >= cut:
            # Each append ends where a step's audio is complete (the first step needs
            # delay + 80 ms + 2.5 ms, each later one 80 ms more), so vLLM can run the step the
            # moment the append arrives: one append per step, none waiting for the next.
            last = cut + (end - cut) // STEP_SAMPLES * STEP_SAMPLES
            data = pending[: last - start].astype("<i2", copy=False).tobytes()
            i = 0
            for boundary in range(cut, last + 1, STEP_SAMPLES):
                j = 2 * (boundary - start)
                self._to_send.append(protocol.encode_append(data[i:j]))
                i = j
            self._cut = last + STEP_SAMPLES
            pending = pending[last - start :]
            self._pending = pending.copy() if pending.size else _EMPTY
        else:
            self._pending = pending if pending is not samples else samples.copy()
        self._update_expected()

    @property
    def next_step_samples(self) -> int:
        """Audio (samples into the generation) that completes the next step vLLM can run:
        the point where the next append will be cut."""
        return self._cut

    def finish_generation(self, now: float) -> None:
        """Send the unsent remainder and ``final: true``: the server pads and sends ``done``.

        A no-op unless a generation is RUNNING, so a final is never sent with no generation
        (which would poison the next one) and never twice.
        """
        if self.generation_state is not GenerationState.RUNNING:
            return
        if self.state in (ConnectionState.FAILED, ConnectionState.CLOSED):
            return
        if self._pending.size:
            self._to_send.append(protocol.encode_append_pcm(self._pending))
            self._pending = _EMPTY
            self._update_expected()
        self.generation_state = GenerationState.FINALIZING
        self._to_send.append(protocol.COMMIT_FINAL)

    def close(self) -> None:
        """Stop using this connection; the glue closes the socket. Idempotent."""
        self._lose("connection closed by the client")
        self.state = ConnectionState.CLOSED

    # -- network inputs -------------------------------------------------------------------------

    def connection_lost(self, now: float) -> None:
        """The socket ended. A running generation is reported failed. Idempotent."""
        self._lose("connection lost")
        if self.state is not ConnectionState.FAILED:
            self.state = ConnectionState.CLOSED

    def receive_text(self, text: str, now: float) -> None:
        """Handle one text frame from the server. Never raises; dropped once FAILED or CLOSED."""
        if self.state in (ConnectionState.FAILED, ConnectionState.CLOSED):
            # FAILED is sticky: the follow-up errors vLLM sends (a pipelined commit after a bad
            # model answers model_not_validated) must not replace the cause in `failure`.
            return
        self.last_received_at = now
        message = protocol.parse_server_message(text)
        if isinstance(message, protocol.TranscriptionDelta):
            self._receive_transcription_delta(message, text)
        elif isinstance(message, protocol.TranscriptionDone):
            self._receive_transcription_done(message, text)
        elif isinstance(message, protocol.ErrorEvent):
            self._receive_error(message)
        elif isinstance(message, protocol.SessionCreated):
            self._receive_session_created(message, text)
        else:
            self._events.append(MalformedMessageReceived(raw=message.raw, reason=message.reason))

    # -- private ---------------------------------------------------------------------------------

    def _send_session_update(self) -> None:
        update = protocol.SessionUpdate(model=self._model)
        if self._language:
            # Ignored by vLLM 0.33 (only `model` is read); forward-compatible with servers that
            # accept a language hint.
            update = protocol.SessionUpdate.model_validate(
                {"model": self._model, "language": self._language}
            )
        self._to_send.append(protocol.dump(update))

    # The handlers report the frame as received: re-serialising it would alter it and raises
    # on a lone surrogate escape ("\ud800" is valid JSON but not UTF-8).

    def _receive_session_created(self, message: protocol.SessionCreated, raw: str) -> None:
        if self.session_id is not None:
            self._events.append(MalformedMessageReceived(raw=raw, reason="second session.created"))
            return
        self.session_id = message.id
        if self.state is ConnectionState.CONNECTING:
            self.state = ConnectionState.OPEN
        self._events.append(SessionCreated(message.id))

    def _receive_transcription_delta(self, message: protocol.TranscriptionDelta, raw: str) -> None:
        if self.generation_state is GenerationState.IDLE:
            self._events.append(
                MalformedMessageReceived(raw=raw, reason="delta with no generation running")
            )
            return
        step = self._steps
        self._steps += 1
        self._events.append(DeltaReceived(self._generation, step, message.delta))

    def _receive_transcription_done(self, message: protocol.TranscriptionDone, raw: str) -> None:
        state = self.generation_state
        if state is GenerationState.IDLE:
            self._events.append(
                MalformedMessageReceived(raw=raw, reason="done with no generation running")
            )
            return
        if state is GenerationState.RUNNING:
            # We never sent final: vLLM >= 0.32 stopped the generation at max_model_len. Appends
            # we sent after the server wrote `done` may survive its queue clear and would feed
            # the next generation out of order, so this socket is not reused.
            reason = FinishReason.MAX_MODEL_LEN
            self.reusable = False
        else:
            reason = FinishReason.REQUESTED
        self.generation_state = GenerationState.IDLE
        self._pending = _EMPTY
        self._update_expected()
        self._events.append(
            GenerationFinished(
                generation=self._generation,
                text=message.text,
                usage=message.usage,
                reason=reason,
                steps=self._steps,
                samples_sent=self._samples_sent,
                reusable=self.reusable,
            )
        )

    def _update_expected(self) -> None:
        self._expected = steps_for_samples(self._samples_sent - self._pending.size, self._delay_ms)

    def _receive_error(self, message: protocol.ErrorEvent) -> None:
        code = ErrorCode.parse(message.code)
        kind = code.kind if code is not None else ErrorKind.CLIENT_BUG
        event = ServerErrorReceived(code=code, message=message.error, kind=kind)
        self._events.append(event)
        if kind is ErrorKind.CONFIGURATION:
            self.failure = event
            self._lose(f"configuration error: {message.error}")
            self.state = ConnectionState.FAILED
        elif kind is ErrorKind.GENERATION_LOST:
            # vLLM's errors name no message; a processing_error while a generation runs is the
            # generation task dying (§1.3 case c): no done follows and the queue is not cleared.
            self._lose(f"processing_error: {message.error}")

    def _lose(self, reason: str) -> None:
        if self.generation_state is not GenerationState.IDLE:
            self._events.append(
                GenerationFailed(
                    generation=self._generation,
                    reason=reason,
                    steps=self._steps,
                    samples_sent=self._samples_sent,
                )
            )
            self.generation_state = GenerationState.IDLE
            self.reusable = False
            self._pending = _EMPTY
            self._update_expected()


_EMPTY = np.zeros(0, dtype=np.int16)
