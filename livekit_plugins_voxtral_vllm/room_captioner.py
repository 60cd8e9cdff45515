"""Live captions for everyone in a LiveKit room: :class:`RoomCaptioner`.

In an existing worker's entrypoint::

    captioner = RoomCaptioner(ctx.room, stt_factory=voxtral_vllm.STT)
    ctx.add_shutdown_callback(captioner.aclose)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    captioner.start()

Each captioned participant gets an ``AgentSession`` with its own STT and no LLM or TTS, linked
to them through RoomIO (see :mod:`.caption_session`), so captions reach the room the way
LiveKit publishes every user transcription: ``lk.transcription`` text streams on behalf of the
speaker, with ``lk.segment_id``, ``lk.transcription_final`` and ``lk.transcribed_track_id``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, room_io
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.agent_session import SessionConnectOptions

from .caption_session import (
    CaptionSession,
    SessionSettings,
    STTFactory,
    default_audio_input,
    start_caption_session,
)
from .log import logger

__all__ = ["RoomCaptioner", "DEFAULT_CAPTIONED_KINDS"]

DEFAULT_CAPTIONED_KINDS: tuple[rtc.ParticipantKind.ValueType, ...] = (
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
)
"""People (STANDARD), phone callers (SIP), connector and ingress streams. Agents (this one,
others, avatar workers) and egress recorders are not captioned by default."""

_MIC = rtc.TrackSource.SOURCE_MICROPHONE
_ALL_KINDS = frozenset(rtc.ParticipantKind.values())


@dataclass(eq=False)
class _Slot:
    """Desired state for one identity; its task converges the session towards it."""

    participant: rtc.RemoteParticipant
    wanted: bool = True
    muted: bool = False
    # bumped when the participant leaves or loses its microphone, so that a rejoin or a
    # republish gets a fresh session even if the slot's task has not run in between
    epoch: int = 0
    reason: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    caption: CaptionSession | None = None
    task: asyncio.Task[None] | None = None

    @property
    def identity(self) -> str:
        return self.participant.identity


class RoomCaptioner:
    """Keeps one caption session per eligible remote participant publishing a microphone.

    - A session starts when an eligible participant has a microphone publication; each
      session gets a new STT from ``stt_factory`` and closes it when it ends.
    - Muting stops feeding the STT and publishes the caption in progress as final;
      unmuting resumes. Neither restarts the session.
    - Leaving, or unpublishing the last microphone, drains the session (the caption in
      progress is finalized) and closes it. Rejoining or republishing starts a fresh one.
    - A session that ends on its own (e.g. its STT gave up) or fails to start is restarted
      with exponential backoff for as long as the participant is there.
    - At most ``max_participants`` participants are captioned at once; later ones wait in
      arrival order (see :attr:`waiting`) and are admitted as slots free up.
    - After a reconnection of the room, everything is re-derived from
      ``room.remote_participants``.

    Room events only update a per-identity slot (wanted, muted, epoch); one task per slot
    starts, mutes, restarts and closes that participant's session, so operations for one
    participant never overlap and a burst of events collapses into the final state.

    Args:
        room: the job's room (``ctx.room``). Connect it with ``AutoSubscribe.AUDIO_ONLY`` (or
            ``SUBSCRIBE_ALL``): RoomIO reads subscribed tracks only.
        stt_factory: returns a new STT for one participant, e.g. ``voxtral_vllm.STT`` or
            ``lambda: voxtral_vllm.STT(language="fr")``. Called once per session, never
            shared: AgentSession subscribes to its STT's ``error`` event.
        participant_kinds: which kinds of participant are captioned. Whatever the kinds,
            a participant publishing on behalf of an agent (an avatar worker; attribute
            ``lk.publish_on_behalf``) is not: its speech is the agent's.
        participant_filter: called with a participant of an accepted kind; return False to
            leave them uncaptioned. Re-checked when their attributes change.
        max_participants: participants captioned at once (>= 1).
        restart_delay, max_restart_delay: backoff after a session failed to start or ended
            on its own, in seconds: ``restart_delay``, doubling up to ``max_restart_delay``;
            back to ``restart_delay`` once a session has run for ``max_restart_delay``.
        audio_input: RoomIO's audio input options; default 16 kHz mono without the
            pre-connect buffer (see :func:`~.caption_session.default_audio_input`). Noise
            cancellation goes here. ``pre_connect_audio=True`` is refused: its handler is
            room-wide and cannot serve one session per participant.
        conn_options: the sessions' ``SessionConnectOptions`` (STT retries and timeouts).
        close_transcript_timeout: how long closing a session waits for the STT's final
            transcript of a caption in progress (AgentSession's
            ``session_close_transcript_timeout``).
        close_timeout: how long :meth:`aclose` waits for sessions to drain before cancelling
            them; keep it below LiveKit's ``shutdown_process_timeout`` (10 s).

    Raises:
        ValueError, TypeError: an option is invalid; the message names it and its value.
    """

    def __init__(
        self,
        room: rtc.Room,
        stt_factory: STTFactory,
        *,
        participant_kinds: Iterable[rtc.ParticipantKind.ValueType] = DEFAULT_CAPTIONED_KINDS,
        participant_filter: Callable[[rtc.RemoteParticipant], bool] | None = None,
        max_participants: int = 50,
        restart_delay: float = 2.0,
        max_restart_delay: float = 30.0,
        audio_input: room_io.AudioInputOptions | None = None,
        conn_options: SessionConnectOptions | None = None,
        close_transcript_timeout: float = 2.0,
        close_timeout: float = 8.0,
    ) -> None:
        if not callable(stt_factory):
            raise TypeError(
                f"stt_factory must be callable (e.g. voxtral_vllm.STT), got {stt_factory!r}"
            )
        if participant_filter is not None and not callable(participant_filter):
            raise TypeError(
                f"participant_filter must be callable or None, got {participant_filter!r}"
            )
        kinds = tuple(participant_kinds) if isinstance(participant_kinds, Iterable) else ()
        if not kinds or any(k not in _ALL_KINDS for k in kinds):
            raise ValueError(
                "participant_kinds must be a non-empty list of rtc.ParticipantKind values, "
                f"got {participant_kinds!r}"
            )
        if isinstance(max_participants, bool) or not isinstance(max_participants, int):
            raise TypeError(f"max_participants must be an integer, got {max_participants!r}")
        if max_participants < 1:
            raise ValueError(f"max_participants must be at least 1, got {max_participants}")
        _check_seconds("restart_delay", restart_delay, positive=True)
        _check_seconds("max_restart_delay", max_restart_delay, positive=True)
        if max_restart_delay < restart_delay:
            raise ValueError(
                f"max_restart_delay ({max_restart_delay!r}) must be at least restart_delay "
                f"({restart_delay!r})"
            )
        _check_seconds("close_transcript_timeout", close_transcript_timeout, positive=False)
        _check_seconds("close_timeout", close_timeout, positive=True)
        if audio_input is None:
            audio_input = default_audio_input()
        elif not isinstance(audio_input, room_io.AudioInputOptions):
            raise TypeError(
                f"audio_input must be a room_io.AudioInputOptions or None, got {audio_input!r}"
            )
        elif audio_input.pre_connect_audio:
            raise ValueError(
                "audio_input.pre_connect_audio=True cannot work with one session per "
                "participant (its byte-stream handler is room-wide); set it to False"
            )
        if conn_options is not None and not isinstance(conn_options, SessionConnectOptions):
            raise TypeError(
                f"conn_options must be a SessionConnectOptions or None, got {conn_options!r}"
            )

        self._room = room
        self._filter = participant_filter
        self._max_participants = max_participants
        self._restart_delay = float(restart_delay)
        self._max_restart_delay = float(max_restart_delay)
        self._close_timeout = float(close_timeout)
        self._settings = SessionSettings(
            stt_factory=stt_factory,
            audio_input=audio_input,
            participant_kinds=kinds,
            close_transcript_timeout=float(close_transcript_timeout),
            conn_options=conn_options,
        )
        self._slots: dict[str, _Slot] = {}
        self._waiting: dict[str, rtc.RemoteParticipant] = {}
        self._started = False
        self._closing = False
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("participant_connected", self._on_participant_connected),
            ("participant_disconnected", self._on_participant_disconnected),
            ("participant_attributes_changed", self._on_attributes_changed),
            ("track_published", self._on_track_event),
            ("track_subscribed", self._on_track_subscribed),
            ("track_unpublished", self._on_track_event),
            ("track_muted", self._on_mute_changed),
            ("track_unmuted", self._on_mute_changed),
            ("connection_state_changed", self._on_connection_state_changed),
            ("reconnected", self._reconcile),
        ]

    # -- public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the room's events and caption the participants already there.

        Call it before or after connecting the room: it re-reads the participants whenever
        the room (re)connects. Idempotent; does nothing once closing.
        """
        if self._started or self._closing:
            return
        self._started = True
        for event, handler in self._handlers:
            self._room.on(event, handler)  # type: ignore[arg-type]
        if self._room.isconnected():
            self._reconcile()

    async def aclose(self) -> None:
        """Stop following the room, drain and close every session, and leave no task behind.

        Sessions still closing after ``close_timeout`` are cancelled. Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        if self._started:
            for event, handler in self._handlers:
                self._room.off(event, handler)  # type: ignore[arg-type]
        self._waiting.clear()
        for slot in self._slots.values():
            slot.wanted = False
            slot.reason = "captioner closing"
            slot.changed.set()
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
        if pending:
            logger.warning(
                "%d caption session(s) did not close within %gs; cancelling",
                len(pending),
                self._close_timeout,
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    async def __aenter__(self) -> RoomCaptioner:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def captioned(self) -> frozenset[str]:
        """Identities holding a slot: their session is starting, running, restarting or
        closing."""
        return frozenset(self._slots)

    @property
    def waiting(self) -> tuple[str, ...]:
        """Identities waiting for a free slot, in admission order."""
        return tuple(self._waiting)

    @property
    def max_participants(self) -> int:
        return self._max_participants

    def session(self, identity: str) -> AgentSession[None] | None:
        """The running ``AgentSession`` captioning ``identity``, if any (e.g. to listen to
        its ``user_input_transcribed`` events)."""
        slot = self._slots.get(identity)
        if slot is None or slot.caption is None:
            return None
        return slot.caption.session

    # -- room events ------------------------------------------------------------------------

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._update(participant)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._release(participant.identity, "left the room")

    def _on_attributes_changed(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if isinstance(participant, rtc.RemoteParticipant):
            self._update(participant)

    def _on_track_event(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if publication.source == _MIC:
            self._update(participant)

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self._on_track_event(publication, participant)

    def _on_mute_changed(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        # also fired for our own local tracks; only remote microphones matter
        if isinstance(participant, rtc.RemoteParticipant) and publication.source == _MIC:
            self._update(participant)

    def _on_connection_state_changed(self, state: rtc.ConnectionState.ValueType) -> None:
        if state == rtc.ConnectionState.CONN_CONNECTED:
            self._reconcile()

    def _reconcile(self) -> None:
        """Align the slots with the participants now in the room."""
        if self._closing:
            return
        present = self._room.remote_participants
        for identity in list(self._slots) + list(self._waiting):
            if identity not in present:
                self._release(identity, "left the room")
        for participant in list(present.values()):
            self._update(participant)

    # -- desired state ----------------------------------------------------------------------

    def _eligible(self, participant: rtc.RemoteParticipant) -> bool:
        if participant.kind not in self._settings.participant_kinds:
            return False
        # avatar workers and similar publish on behalf of an agent; their speech is the agent's
        if participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF):
            return False
        if self._filter is None:
            return True
        try:
            return bool(self._filter(participant))
        except Exception:
            logger.exception(
                "participant_filter failed for %r; not captioning", participant.identity
            )
            return False

    def _update(self, participant: rtc.RemoteParticipant) -> None:
        if self._closing:
            return
        identity = participant.identity
        if not self._eligible(participant):
            self._release(identity, "not eligible for captions")
            return
        mics = [p for p in participant.track_publications.values() if p.source == _MIC]
        if not mics:
            self._release(identity, "no microphone published")
            return
        muted = all(pub.muted for pub in mics)

        slot = self._slots.get(identity)
        if slot is None:
            if len(self._slots) >= self._max_participants:
                if identity not in self._waiting:
                    logger.warning(
                        "max_participants=%d reached: not captioning %r in room %r until a "
                        "slot frees up (%d waiting)",
                        self._max_participants,
                        identity,
                        self._room.name,
                        len(self._waiting) + 1,
                    )
                self._waiting[identity] = participant
                return
            slot = _Slot(participant=participant, muted=muted)
            self._slots[identity] = slot
            slot.task = asyncio.create_task(self._run_slot(slot), name=f"captions:{identity}")
            return

        if slot.participant is not participant or not slot.wanted or slot.muted != muted:
            slot.participant = participant
            slot.wanted = True
            slot.muted = muted
            slot.changed.set()

    def _release(self, identity: str, reason: str) -> None:
        self._waiting.pop(identity, None)
        slot = self._slots.get(identity)
        if slot is not None and slot.wanted:
            slot.wanted = False
            slot.epoch += 1
            slot.reason = reason
            slot.changed.set()

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._slots) < self._max_participants and not self._closing:
            identity = next(iter(self._waiting))
            del self._waiting[identity]
            # prefer the room's current object: the participant may have reconnected
            participant = self._room.remote_participants.get(identity)
            if participant is not None:
                self._update(participant)

    # -- slot task --------------------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        delay = self._restart_delay
        try:
            while slot.wanted and not self._closing:
                epoch = slot.epoch
                try:
                    caption = await start_caption_session(
                        self._room, slot.participant, self._settings
                    )
                except Exception:
                    logger.exception(
                        "could not start captions for %r; retrying in %gs", slot.identity, delay
                    )
                    await self._wait_for_change(slot, delay)
                    delay = min(delay * 2, self._max_restart_delay)
                    continue

                slot.caption = caption
                logger.info("captioning %r in room %r", slot.identity, self._room.name)
                started_at = loop.time()
                try:
                    ended_by_itself = await self._supervise(slot, caption, epoch)
                finally:
                    slot.caption = None
                if ended_by_itself:
                    # a session that ran for a while is not part of a crash loop
                    if loop.time() - started_at >= self._max_restart_delay:
                        delay = self._restart_delay
                    logger.warning(
                        "captions for %r stopped unexpectedly; restarting in %gs",
                        slot.identity,
                        delay,
                    )
                    await self._wait_for_change(slot, delay)
                    delay = min(delay * 2, self._max_restart_delay)
                else:
                    delay = self._restart_delay
                    logger.info("stopped captioning %r (%s)", slot.identity, slot.reason)
        finally:
            if self._slots.get(slot.identity) is slot:
                del self._slots[slot.identity]
            self._admit_waiting()

    async def _supervise(self, slot: _Slot, caption: CaptionSession, epoch: int) -> bool:
        """Apply mute changes until the slot is released, then close the session.

        Returns True if the session ended by itself rather than being released.
        """
        ended = asyncio.ensure_future(caption.wait_closed())
        ended_by_itself = False
        applied_muted = False  # a new session listens
        # a session that starts muted has no caption in progress to finalize when muting
        listened = not slot.muted
        try:
            while True:
                slot.changed.clear()
                if not slot.wanted or slot.epoch != epoch or self._closing:
                    break
                if ended.done():
                    ended_by_itself = True
                    break
                if slot.muted != applied_muted:
                    applied_muted = slot.muted
                    listened = listened or not applied_muted
                    try:
                        caption.set_muted(applied_muted, finalize=listened)
                    except Exception:
                        logger.exception("could not (un)mute captions for %r", slot.identity)
                    continue
                changed = asyncio.ensure_future(slot.changed.wait())
                try:
                    await asyncio.wait({ended, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            ended.cancel()
            try:
                await caption.aclose()
            except Exception:
                logger.exception("error while closing captions for %r", slot.identity)
        return ended_by_itself

    async def _wait_for_change(self, slot: _Slot, timeout: float) -> None:
        slot.changed.clear()
        if not slot.wanted or self._closing:
            return
        try:
            await asyncio.wait_for(slot.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def _check_seconds(name: str, value: Any, *, positive: bool) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a number of seconds {bound}, got {value!r}")
