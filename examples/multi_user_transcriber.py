"""Live captions for every participant of a LiveKit room, transcribed by Voxtral on vLLM.

The agent joins each room it is dispatched to and runs one caption pipeline per remote
participant that publishes a microphone: an ``AgentSession`` with the Voxtral STT and no LLM
or TTS, linked to that participant through RoomIO. Captions go out the way LiveKit publishes
every user transcription: ``lk.transcription`` text streams sent on behalf of the speaker,
with ``lk.segment_id`` (interims of one caption share it), ``lk.transcription_final`` and
``lk.transcribed_track_id``. LiveKit's frontend components (``useTranscriptions``) render them
as captions that update in place.

Run it against a LiveKit server and a vLLM serving Voxtral Realtime::

    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    export VOXTRAL_VLLM_BASE_URL=ws://127.0.0.1:8000/v1/realtime
    python examples/multi_user_transcriber.py dev      # development worker
    python examples/multi_user_transcriber.py start    # production worker

Add ``--emulator`` to serve an emulator of vLLM's ``/v1/realtime`` from the worker itself,
to check the wiring with a LiveKit server but no GPU. It is not a speech recogniser: it
transcribes only the synthetic test speech of ``livekit_plugins_voxtral_vllm.testing``, so
people talking get no captions.

``python examples/multi_user_transcriber.py ...`` goes through ``cli.run_app``, which
livekit-agents 1.8 still supports but marks deprecated; the module also exposes ``server``,
so ``python -m livekit.agents start examples/multi_user_transcriber.py`` and ``lk agent``
work too (without the up-front configuration check below: errors then surface when a job
process starts).

Configuration (environment; every value is checked at start and a bad one names itself):

=================================  ==========================================================
``LIVEKIT_URL``                    LiveKit server, ``ws(s)://`` or ``http(s)://`` (required)
``LIVEKIT_API_KEY``                API key (required)
``LIVEKIT_API_SECRET``             API secret (required)
``LIVEKIT_AGENT_NAME``             set it to use explicit dispatch instead of joining every room
``VOXTRAL_VLLM_BASE_URL``          vLLM realtime endpoint (default
                                   ``ws://127.0.0.1:8000/v1/realtime``)
``VOXTRAL_VLLM_MODEL``             served model name (default
                                   ``mistralai/Voxtral-Mini-4B-Realtime-2602``)
``VOXTRAL_VLLM_API_KEY``           vLLM ``--api-key``, if the server requires one
``VOXTRAL_LANGUAGE``               language hint such as ``en`` (default: auto-detect)
``VOXTRAL_TRANSCRIPTION_DELAY_MS`` the delay the server's model is configured with
                                   (default 480; a multiple of 80 in 80..1200, or 2400)
``VOXTRAL_VAD``                    ``none`` (default: the plugin's built-in endpointer) or
                                   ``silero`` (needs ``livekit-plugins-silero``)
``MAX_PARTICIPANTS``               participants captioned at once in one room, i.e. by one
                                   job (default 50); later arrivals wait for a free slot
=================================  ==========================================================
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    AutoSubscribe,
    CloseEvent,
    JobContext,
    JobProcess,
    StopResponse,
    TurnHandlingOptions,
    cli,
    llm,
    room_io,
    stt,
    vad,
)
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.plugins import voxtral_vllm

# Plugins must be imported on the main thread (livekit.agents.Plugin.register_plugin), so the
# optional Silero VAD is imported here rather than in the setup function.
_silero: ModuleType | None
try:
    _silero = importlib.import_module("livekit.plugins.silero")
except ImportError:
    _silero = None

logger = logging.getLogger("voxtral-transcriber")

# Participants that get captions: people (STANDARD), phone callers (SIP), connector and
# ingress streams. AGENT participants (this agent, other agents, avatar workers) and EGRESS
# recorders never do.
CAPTIONED_KINDS: tuple[rtc.ParticipantKind.ValueType, ...] = (
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
)

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

DEFAULT_VLLM_BASE_URL = "ws://127.0.0.1:8000/v1/realtime"
DEFAULT_TRANSCRIPTION_DELAY_MS = 480
DEFAULT_MAX_PARTICIPANTS = 50

_URL_SCHEMES = ("ws", "wss", "http", "https")
_LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
VadChoice = Literal["none", "silero"]


class ConfigError(ValueError):
    """One or more settings are missing or invalid; the message names every one of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid transcriber configuration:\n{lines}")


@dataclass(frozen=True)
class LiveKitSettings:
    """Where the worker registers. Secrets stay out of ``repr``."""

    url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)


@dataclass(frozen=True)
class TranscriberConfig:
    """Everything a job needs besides the LiveKit credentials."""

    vllm_base_url: str = DEFAULT_VLLM_BASE_URL
    vllm_model: str | None = None
    vllm_api_key: str | None = field(default=None, repr=False)
    language: str | None = None
    transcription_delay_ms: int = DEFAULT_TRANSCRIPTION_DELAY_MS
    vad: VadChoice = "none"
    max_participants: int = DEFAULT_MAX_PARTICIPANTS


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _check_url(name: str, value: str, problems: list[str]) -> None:
    parts = urlsplit(value)
    if parts.scheme not in _URL_SCHEMES or not parts.hostname:
        problems.append(
            f"{name}={value!r} is not a URL of the form ws://host:port/... "
            f"(scheme one of {', '.join(_URL_SCHEMES)})"
        )


def _parse_int(name: str, raw: str, problems: list[str]) -> int | None:
    try:
        return int(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not an integer")
        return None


def _valid_delay(ms: int) -> bool:
    # mistral_common requires a multiple of 80 ms; the vLLM recipe lists 80..1200 and 2400.
    return ms % 80 == 0 and (80 <= ms <= 1200 or ms == 2400)


def load_livekit_settings(environ: Mapping[str, str] | None = None) -> LiveKitSettings:
    """Read ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET``.

    Raises:
        ConfigError: naming each missing or malformed variable.
    """
    problems: list[str] = []
    settings = _livekit_settings(os.environ if environ is None else environ, problems)
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _livekit_settings(environ: Mapping[str, str], problems: list[str]) -> LiveKitSettings | None:
    url = _get(environ, "LIVEKIT_URL")
    key = _get(environ, "LIVEKIT_API_KEY")
    secret = _get(environ, "LIVEKIT_API_SECRET")
    if url is None:
        problems.append("LIVEKIT_URL is not set (the LiveKit server, e.g. ws://127.0.0.1:7880)")
    else:
        _check_url("LIVEKIT_URL", url, problems)
    if key is None:
        problems.append("LIVEKIT_API_KEY is not set (for `livekit-server --dev`: devkey)")
    if secret is None:
        problems.append("LIVEKIT_API_SECRET is not set (for `livekit-server --dev`: secret)")
    if url is None or key is None or secret is None:
        return None
    return LiveKitSettings(url=url, api_key=key, api_secret=secret)


def load_config(environ: Mapping[str, str] | None = None) -> TranscriberConfig:
    """Read the STT and transcriber settings from the environment.

    Pure: reads only ``environ`` (default ``os.environ``), except that ``VOXTRAL_VAD=silero``
    checks that ``livekit-plugins-silero`` is installed.

    Raises:
        ConfigError: naming each missing or malformed variable.
    """
    problems: list[str] = []
    config = _transcriber_config(os.environ if environ is None else environ, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _transcriber_config(environ: Mapping[str, str], problems: list[str]) -> TranscriberConfig:
    base_url = _get(environ, "VOXTRAL_VLLM_BASE_URL") or DEFAULT_VLLM_BASE_URL
    _check_url("VOXTRAL_VLLM_BASE_URL", base_url, problems)

    language = _get(environ, "VOXTRAL_LANGUAGE")
    if language is not None and not _LANGUAGE_RE.match(language):
        problems.append(f"VOXTRAL_LANGUAGE={language!r} is not a language code such as 'en'")

    delay = DEFAULT_TRANSCRIPTION_DELAY_MS
    raw_delay = _get(environ, "VOXTRAL_TRANSCRIPTION_DELAY_MS")
    if raw_delay is not None:
        parsed = _parse_int("VOXTRAL_TRANSCRIPTION_DELAY_MS", raw_delay, problems)
        if parsed is not None and not _valid_delay(parsed):
            problems.append(
                f"VOXTRAL_TRANSCRIPTION_DELAY_MS={parsed} must be a multiple of 80 "
                "between 80 and 1200, or 2400"
            )
        elif parsed is not None:
            delay = parsed

    vad_choice: VadChoice = "none"
    raw_vad = (_get(environ, "VOXTRAL_VAD") or "none").lower()
    if raw_vad == "silero":
        vad_choice = "silero"
        if _silero is None:
            problems.append(
                "VOXTRAL_VAD=silero needs livekit-plugins-silero "
                "(pip install livekit-plugins-silero), or set VOXTRAL_VAD=none"
            )
    elif raw_vad != "none":
        problems.append(f"VOXTRAL_VAD={raw_vad!r} must be 'none' or 'silero'")

    max_participants = DEFAULT_MAX_PARTICIPANTS
    raw_max = _get(environ, "MAX_PARTICIPANTS")
    if raw_max is not None:
        parsed = _parse_int("MAX_PARTICIPANTS", raw_max, problems)
        if parsed is not None and parsed < 1:
            problems.append(f"MAX_PARTICIPANTS={parsed} must be at least 1")
        elif parsed is not None:
            max_participants = parsed

    return TranscriberConfig(
        vllm_base_url=base_url,
        vllm_model=_get(environ, "VOXTRAL_VLLM_MODEL"),
        vllm_api_key=_get(environ, "VOXTRAL_VLLM_API_KEY"),
        language=language,
        transcription_delay_ms=delay,
        vad=vad_choice,
        max_participants=max_participants,
    )


def check_startup_config(
    environ: Mapping[str, str], argv: Sequence[str] = ()
) -> tuple[LiveKitSettings, TranscriberConfig]:
    """Validate everything a worker needs, reporting all problems at once.

    ``--url``, ``--api-key`` and ``--api-secret`` on the command line stand in for the
    corresponding ``LIVEKIT_*`` variables, as they do for LiveKit's CLI.
    """
    merged = dict(environ)
    for flag, name in (
        ("--url", "LIVEKIT_URL"),
        ("--api-key", "LIVEKIT_API_KEY"),
        ("--api-secret", "LIVEKIT_API_SECRET"),
    ):
        value = _flag_value(argv, flag)
        if value is not None:
            merged[name] = value
    problems: list[str] = []
    livekit = _livekit_settings(merged, problems)
    config = _transcriber_config(merged, problems)
    if problems or livekit is None:
        raise ConfigError(problems)
    return livekit, config


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------------------------
# Per-participant lifecycle
# --------------------------------------------------------------------------------------------


class CaptionPipeline(Protocol):
    """One participant's running transcription, as ``MultiUserTranscriber`` drives it."""

    async def set_muted(self, muted: bool) -> None:
        """Stop (True) or resume (False) feeding the participant's audio to the STT."""

    async def aclose(self) -> None:
        """Finish the caption in progress, then release everything.

        Idempotent; also called once a pipeline has ended by itself, to release what is left.
        """

    async def wait_closed(self) -> None:
        """Return once the pipeline has ended, whether closed or failed on its own."""


PipelineFactory = Callable[[rtc.RemoteParticipant], Awaitable[CaptionPipeline]]


def is_captioned(participant: rtc.RemoteParticipant) -> bool:
    """Whether ``participant`` gets captions: not an agent, not publishing for one."""
    if participant.kind not in CAPTIONED_KINDS:
        return False
    # avatar workers and similar publish on behalf of an agent; their speech is the agent's
    return not participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF)


def _microphones(participant: rtc.RemoteParticipant) -> list[rtc.RemoteTrackPublication]:
    return [
        pub
        for pub in participant.track_publications.values()
        if pub.source == rtc.TrackSource.SOURCE_MICROPHONE
    ]


@dataclass(eq=False)
class _Slot:
    """Desired state for one identity; its task converges the pipeline towards it."""

    participant: rtc.RemoteParticipant
    wanted: bool = True
    muted: bool = False
    # bumped when the participant leaves or loses its microphone, so that a rejoin or a
    # republish gets a fresh pipeline even if the slot's task has not run in between
    epoch: int = 0
    reason: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pipeline: CaptionPipeline | None = None
    task: asyncio.Task[None] | None = None

    @property
    def identity(self) -> str:
        return self.participant.identity


class MultiUserTranscriber:
    """Keeps one caption pipeline per eligible, microphone-publishing remote participant.

    Room events only update a per-identity ``_Slot`` (wanted, muted, epoch); one task per
    slot starts, mutes, restarts and closes that identity's pipeline, so operations for one
    participant never overlap and a burst of events collapses into the final state.

    - A pipeline starts when an eligible participant has a microphone publication.
    - Mute and unmute are forwarded to the running pipeline (``set_muted``); nothing restarts.
    - Leaving, or unpublishing the last microphone, closes it (``aclose``: drain, then close).
      Rejoining or republishing starts a fresh one.
    - A pipeline that ends on its own (e.g. the STT gave up) is restarted with backoff for as
      long as the participant is still there.
    - At most ``max_participants`` slots exist; further participants wait, in arrival order,
      and are admitted as slots free up.
    - ``reconcile()`` re-derives everything from ``room.remote_participants``: call it after
      connecting and after a reconnection.

    Args:
        room: the job's room (or anything with the same events and ``remote_participants``).
        pipeline_factory: starts a pipeline for a participant; ``CaptionSessionFactory`` in
            production, a fake in tests.
        max_participants: slots available at once.
        restart_delay / max_restart_delay: backoff after a pipeline failed or ended by itself.
        close_timeout: how long ``aclose()`` waits for pipelines to drain before cancelling;
            below LiveKit's ``shutdown_process_timeout`` (10 s), which kills the job process.
    """

    def __init__(
        self,
        room: rtc.Room,
        pipeline_factory: PipelineFactory,
        *,
        max_participants: int = DEFAULT_MAX_PARTICIPANTS,
        restart_delay: float = 2.0,
        max_restart_delay: float = 30.0,
        close_timeout: float = 8.0,
    ) -> None:
        if max_participants < 1:
            raise ValueError("max_participants must be at least 1")
        self._room = room
        self._factory = pipeline_factory
        self._max_participants = max_participants
        self._restart_delay = restart_delay
        self._max_restart_delay = max_restart_delay
        self._close_timeout = close_timeout
        self._slots: dict[str, _Slot] = {}
        self._waiting: dict[str, rtc.RemoteParticipant] = {}
        self._started = False
        self._closing = False
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("participant_connected", self._on_participant_connected),
            ("participant_disconnected", self._on_participant_disconnected),
            ("track_published", self._on_track_published),
            ("track_subscribed", self._on_track_subscribed),
            ("track_unpublished", self._on_track_unpublished),
            ("track_muted", self._on_track_muted),
            ("track_unmuted", self._on_track_unmuted),
            ("reconnected", self._on_reconnected),
        ]

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the room's events. Call before ``ctx.connect()``; idempotent."""
        if self._started or self._closing:
            return
        self._started = True
        for event, handler in self._handlers:
            self._room.on(event, handler)  # type: ignore[arg-type]

    def reconcile(self) -> None:
        """Align the pipelines with the participants currently in the room."""
        if self._closing:
            return
        present = self._room.remote_participants
        for identity in list(self._slots) + list(self._waiting):
            if identity not in present:
                self._release(identity, "left the room")
        for participant in list(present.values()):
            self._update(participant)

    async def aclose(self) -> None:
        """Stop listening, drain and close every pipeline, and leave no task behind."""
        if self._closing:
            return
        self._closing = True
        if self._started:
            for event, handler in self._handlers:
                self._room.off(event, handler)  # type: ignore[arg-type]
        self._waiting.clear()
        for slot in self._slots.values():
            slot.wanted = False
            slot.reason = "transcriber shutting down"
            slot.changed.set()
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
        if pending:
            logger.warning(
                "%d caption pipeline(s) did not close within %.0fs; cancelling",
                len(pending),
                self._close_timeout,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def captioned(self) -> frozenset[str]:
        """Identities holding a slot (starting, running or closing a pipeline)."""
        return frozenset(self._slots)

    @property
    def waiting(self) -> tuple[str, ...]:
        """Identities waiting for a free slot, in admission order."""
        return tuple(self._waiting)

    def pipeline_for(self, identity: str) -> CaptionPipeline | None:
        slot = self._slots.get(identity)
        return slot.pipeline if slot is not None else None

    # -- room events --------------------------------------------------------------------------

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._update(participant)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._release(participant.identity, "left the room")

    def _on_track_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if publication.source == rtc.TrackSource.SOURCE_MICROPHONE:
            self._update(participant)

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if publication.source == rtc.TrackSource.SOURCE_MICROPHONE:
            self._update(participant)

    def _on_track_unpublished(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if publication.source == rtc.TrackSource.SOURCE_MICROPHONE:
            self._update(participant)

    def _on_track_muted(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        self._on_mute_changed(participant, publication)

    def _on_track_unmuted(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        self._on_mute_changed(participant, publication)

    def _on_mute_changed(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        # also fired for our own local tracks; only remote microphones matter
        if (
            isinstance(participant, rtc.RemoteParticipant)
            and publication.source == rtc.TrackSource.SOURCE_MICROPHONE
        ):
            self._update(participant)

    def _on_reconnected(self) -> None:
        self.reconcile()

    # -- desired state ------------------------------------------------------------------------

    def _update(self, participant: rtc.RemoteParticipant) -> None:
        if self._closing or not is_captioned(participant):
            return
        identity = participant.identity
        mics = _microphones(participant)
        if not mics:
            self._release(identity, "no microphone published")
            return
        muted = all(pub.muted for pub in mics)

        slot = self._slots.get(identity)
        if slot is None:
            if len(self._slots) >= self._max_participants:
                if identity not in self._waiting:
                    logger.warning(
                        "MAX_PARTICIPANTS=%d reached: not captioning %r in room %r until a "
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

    # -- slot task ----------------------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        delay = self._restart_delay
        try:
            while slot.wanted and not self._closing:
                epoch = slot.epoch
                try:
                    pipeline = await self._factory(slot.participant)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception(
                        "could not start captions for %r; retrying in %.0fs", slot.identity, delay
                    )
                    await self._wait_for_change(slot, delay)
                    delay = min(delay * 2, self._max_restart_delay)
                    continue

                slot.pipeline = pipeline
                logger.info("captioning %r", slot.identity)
                ended_by_itself = await self._supervise(slot, pipeline, epoch)
                slot.pipeline = None
                if ended_by_itself:
                    logger.warning(
                        "captions for %r stopped unexpectedly; restarting in %.0fs",
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

    async def _supervise(self, slot: _Slot, pipeline: CaptionPipeline, epoch: int) -> bool:
        """Apply mute changes until the slot is released, then close the pipeline.

        Returns True if the pipeline ended by itself rather than being released.
        """
        ended = asyncio.ensure_future(pipeline.wait_closed())
        ended_by_itself = False
        applied_muted = False
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
                    try:
                        await pipeline.set_muted(applied_muted)
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
            await pipeline.aclose()
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


# --------------------------------------------------------------------------------------------
# The production pipeline: one AgentSession per participant
# --------------------------------------------------------------------------------------------


class CaptionAgent(Agent):
    """Listens only: each finished user turn is dropped instead of answered."""

    def __init__(self, participant_identity: str) -> None:
        super().__init__(instructions="You produce live captions and never reply.")
        self._participant_identity = participant_identity

    async def on_user_turn_completed(
        self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage
    ) -> None:
        logger.debug(
            "caption turn completed",
            extra={
                "participant": self._participant_identity,
                "lk.pii.text": new_message.text_content,
            },
        )
        # no LLM reply, and the turn is not appended to the chat history either, so a
        # session that runs for hours does not accumulate its whole transcript
        raise StopResponse()


def caption_turn_handling() -> TurnHandlingOptions:
    """Turns end on the STT's END_OF_SPEECH; nothing else (no turn model, no VAD) runs."""
    return TurnHandlingOptions(
        turn_detection="stt",
        interruption={"enabled": False},
        preemptive_generation={"enabled": False},
    )


def caption_room_options(participant_identity: str) -> room_io.RoomOptions:
    """RoomIO for a caption session: the participant's microphone in, user captions out."""
    return room_io.RoomOptions(
        # the STT wants 16 kHz mono; let the WebRTC stream resample once
        audio_input=room_io.AudioInputOptions(
            sample_rate=16000,
            num_channels=1,
            # the pre-connect buffer is one room-wide byte-stream handler: with one session per
            # participant the second registration fails and the first close removes it for all
            pre_connect_audio=False,
        ),
        # text_output carries the *user* transcription (`lk.transcription` streams with
        # lk.segment_id / lk.transcription_final / lk.transcribed_track_id) - the captions
        text_output=True,
        # lk.chat has one handler per room too, and a transcriber takes no text input
        text_input=False,
        audio_output=False,
        video_input=False,
        participant_identity=participant_identity,
        participant_kinds=list(CAPTIONED_KINDS),
        # MultiUserTranscriber owns the lifecycle (drain, then close, on leave)
        close_on_disconnect=False,
    )


class AgentSessionPipeline:
    """``CaptionPipeline`` over one started ``AgentSession``.

    ``owned_stt`` is closed with the pipeline: AgentSession does not close the models it was
    given, and each caption session has its own STT.
    """

    def __init__(
        self,
        session: AgentSession[None],
        participant_identity: str,
        *,
        owned_stt: stt.STT[Any] | None = None,
    ) -> None:
        self._session = session
        self._identity = participant_identity
        self._owned_stt = owned_stt
        self._closed = asyncio.Event()
        self._released = False
        self.close_event: CloseEvent | None = None
        session.on("close", self._on_close)

    @property
    def session(self) -> AgentSession[None]:
        return self._session

    def _on_close(self, ev: CloseEvent) -> None:
        self.close_event = ev
        if ev.error is not None:
            logger.warning("caption session for %r closed: %s", self._identity, ev.error)
        self._closed.set()

    async def set_muted(self, muted: bool) -> None:
        self._session.input.set_audio_enabled(not muted)
        if not muted:
            return
        # publish the caption in progress as final now rather than when the mic comes back:
        # the STT is flushed (or fed silence) and its final transcript closes the segment
        try:
            done = self._session.commit_user_turn(skip_reply=True, transcript_timeout=3.0)
        except RuntimeError:  # the session is not running (closing)
            return
        done.add_done_callback(_consume_result)

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if not self._closed.is_set():
                try:
                    await self._session.drain()
                except RuntimeError:  # "AgentSession isn't running": already closed
                    pass
                # closing commits the user turn, waiting briefly for the final transcript
                await self._session.aclose()
        finally:
            if self._owned_stt is not None:
                await self._owned_stt.aclose()
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


def _consume_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class CaptionSessionFactory:
    """Starts an ``AgentSession`` linked to one participant; a ``PipelineFactory``.

    Each session gets its own STT from ``stt_factory``: AgentSession subscribes to the STT's
    ``error`` event, so a shared STT would let one participant's failure close every session.

    ``close_transcript_timeout`` is how long closing a session waits for the STT's final
    transcript of a caption still in progress (AgentSession's
    ``session_close_transcript_timeout``); it is waited out in full when nothing is pending.
    """

    def __init__(
        self,
        room: rtc.Room,
        stt_factory: Callable[[], stt.STT[Any]],
        *,
        close_transcript_timeout: float = 2.0,
    ) -> None:
        self._room = room
        self._stt_factory = stt_factory
        self._close_transcript_timeout = close_transcript_timeout

    async def __call__(self, participant: rtc.RemoteParticipant) -> AgentSessionPipeline:
        participant_stt = self._stt_factory()
        session: AgentSession[None] = AgentSession(
            stt=participant_stt,
            vad=None,  # not the default local Silero: the STT endpoints, or owns its own VAD
            turn_handling=caption_turn_handling(),
            user_away_timeout=None,
            aec_warmup_duration=None,
            session_close_transcript_timeout=self._close_transcript_timeout,
        )
        pipeline = AgentSessionPipeline(session, participant.identity, owned_stt=participant_stt)
        try:
            await session.start(
                CaptionAgent(participant.identity),
                room=self._room,
                room_options=caption_room_options(participant.identity),
                # one job, many sessions: none of them records or hosts remote control
                record=False,
                session_host=False,
            )
        except BaseException:
            await pipeline.aclose()
            raise
        return pipeline


# --------------------------------------------------------------------------------------------
# Worker wiring
# --------------------------------------------------------------------------------------------

_CONFIG_KEY = "voxtral_transcriber_config"
_VAD_KEY = "voxtral_transcriber_vad"


def load_vad(choice: VadChoice) -> vad.VAD | None:
    """Load the configured VAD; called once per job process from ``prewarm``."""
    if choice == "none":
        return None
    if _silero is None:
        raise ConfigError(["VOXTRAL_VAD=silero needs livekit-plugins-silero"])
    loaded: vad.VAD = _silero.VAD.load()
    return loaded


def build_stt(config: TranscriberConfig, vad_model: vad.VAD | None = None) -> stt.STT[Any]:
    """One Voxtral STT for one participant (``vad_model``: the process's shared VAD)."""
    return voxtral_vllm.STT(
        base_url=config.vllm_base_url,
        model=config.vllm_model,
        api_key=config.vllm_api_key,
        language=config.language,
        transcription_delay_ms=config.transcription_delay_ms,
        vad=vad_model,
    )


def prewarm(proc: JobProcess) -> None:
    """Setup function: runs once per job process, before any job, and loads the VAD once."""
    config = load_config()
    proc.userdata[_CONFIG_KEY] = config
    proc.userdata[_VAD_KEY] = load_vad(config.vad)


server = AgentServer(setup_fnc=prewarm)


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    config: TranscriberConfig = ctx.proc.userdata.get(_CONFIG_KEY) or load_config()
    vad_model: vad.VAD | None = ctx.proc.userdata.get(_VAD_KEY)

    transcriber = MultiUserTranscriber(
        ctx.room,
        CaptionSessionFactory(ctx.room, stt_factory=lambda: build_stt(config, vad_model)),
        max_participants=config.max_participants,
    )
    transcriber.start()  # before connecting, so that no track event is missed
    ctx.add_shutdown_callback(transcriber.aclose)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    transcriber.reconcile()  # participants that were already in the room
    logger.info(
        "transcriber joined room %r (vLLM %s, up to %d participants)",
        ctx.room.name,
        config.vllm_base_url,
        config.max_participants,
    )


class BackgroundEmulator:
    """The vLLM emulator served from a daemon thread of this process (``--emulator``).

    Job processes are separate processes; they reach it through ``VOXTRAL_VLLM_BASE_URL``,
    which they inherit.
    """

    def __init__(self) -> None:
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="vllm-emulator", daemon=True)

    def start(self, timeout: float = 10.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the vLLM emulator did not start: {self._error!r}")
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with VLLMRealtimeEmulator(record_audio=False) as emulator:
            self.url = emulator.url
            self._ready.set()
            await self._stop.wait()


def _start_emulator() -> str:
    return BackgroundEmulator().start()


_WORKER_COMMANDS = frozenset({"start", "dev", "connect"})


def main(argv: Sequence[str] | None = None) -> None:
    """Check the configuration, then hand over to LiveKit's CLI (``start``, ``dev``, ...)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--emulator" in args:
        args = [a for a in args if a != "--emulator"]
        sys.argv = [sys.argv[0], *args]  # LiveKit's CLI parses sys.argv and knows no such flag
        os.environ["VOXTRAL_VLLM_BASE_URL"] = _start_emulator()
        logger.warning(
            "using the vLLM emulator at %s instead of vLLM: it transcribes only synthetic "
            "test speech",
            os.environ["VOXTRAL_VLLM_BASE_URL"],
        )
    command = next((a for a in args if not a.startswith("-")), None)
    if command in _WORKER_COMMANDS and not {"-h", "--help"} & set(args):
        try:
            check_startup_config(os.environ, args)
        except ConfigError as e:
            print(f"multi_user_transcriber: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    cli.run_app(server)


if __name__ == "__main__":
    main()
