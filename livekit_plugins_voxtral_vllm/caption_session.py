"""One participant's captions: an ``AgentSession`` with STT only, linked to them by RoomIO.

:class:`~.room_captioner.RoomCaptioner` starts one of these per captioned participant. The
session has no LLM, TTS, VAD or turn model; RoomIO reads that participant's microphone and its
``text_output`` publishes the user transcription, which is the caption: ``lk.transcription``
text streams sent on behalf of the speaker with ``lk.segment_id`` (the interims of one caption
share it), ``lk.transcription_final`` and ``lk.transcribed_track_id``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    CloseEvent,
    StopResponse,
    TurnHandlingOptions,
    llm,
    room_io,
    stt,
)
from livekit.agents.voice.agent_session import SessionConnectOptions

from .log import logger
from .stream_core import BlankRut, StreamStats
from .stt import STT as VoxtralSTT

STTFactory = Callable[[], stt.STT[Any]]
"""Builds the STT of one participant's caption session (called once per session)."""


def default_audio_input() -> room_io.AudioInputOptions:
    """RoomIO audio input for captions: 16 kHz mono, no pre-connect buffer.

    WebRTC's audio stream resamples anyway, and 16 kHz is what Voxtral takes, so the STT
    resamples nothing. The pre-connect buffer is one room-wide byte-stream handler: with one
    session per participant the second registration fails and the first close removes it for
    everyone.
    """
    return room_io.AudioInputOptions(sample_rate=16000, num_channels=1, pre_connect_audio=False)


def caption_room_options(
    participant_identity: str,
    *,
    audio_input: room_io.AudioInputOptions,
    participant_kinds: Sequence[rtc.ParticipantKind.ValueType],
) -> room_io.RoomOptions:
    """RoomIO for a caption session: the participant's microphone in, their captions out."""
    return room_io.RoomOptions(
        audio_input=audio_input,
        # text_output carries the *user* transcription: the captions
        text_output=True,
        # lk.chat has one handler per room too, and captions take no text input
        text_input=False,
        audio_output=False,
        video_input=False,
        participant_identity=participant_identity,
        participant_kinds=list(participant_kinds),
        # the captioner owns the lifecycle (drain, then close, on leave)
        close_on_disconnect=False,
    )


def caption_turn_handling() -> TurnHandlingOptions:
    """Turns end on the STT's END_OF_SPEECH; nothing else (no turn model, no VAD) runs."""
    return TurnHandlingOptions(
        turn_detection="stt",
        interruption={"enabled": False},
        preemptive_generation={"enabled": False},
    )


class _CaptionAgent(Agent):
    """Listens only: each finished user turn is dropped instead of answered."""

    def __init__(self, participant_identity: str) -> None:
        super().__init__(instructions="You produce live captions and never reply.")
        self._participant_identity = participant_identity

    async def on_user_turn_completed(
        self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage
    ) -> None:
        # no LLM reply, and the turn is not added to the chat history either, so a session
        # that runs for hours does not accumulate its whole transcript
        raise StopResponse()


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """What every caption session of one captioner shares."""

    stt_factory: STTFactory
    audio_input: room_io.AudioInputOptions
    participant_kinds: tuple[rtc.ParticipantKind.ValueType, ...]
    close_transcript_timeout: float
    conn_options: SessionConnectOptions | None


class CaptionSession:
    """One started ``AgentSession`` captioning one participant, and the STT it owns.

    AgentSession does not close the models it was given, so the STT is closed here.
    """

    def __init__(
        self, session: AgentSession[None], participant_identity: str, owned_stt: stt.STT[Any]
    ) -> None:
        self._session = session
        self._identity = participant_identity
        self._stt = owned_stt
        self._closed = asyncio.Event()
        self._released = False
        self.close_event: CloseEvent | None = None
        session.on("close", self._on_close)
        if isinstance(owned_stt, VoxtralSTT):
            owned_stt.on("blank_rut", self._on_blank_rut)

    @property
    def session(self) -> AgentSession[None]:
        return self._session

    @property
    def stt(self) -> stt.STT[Any]:
        return self._stt

    @property
    def ended(self) -> bool:
        """Whether the session has closed (by ``aclose`` or on its own)."""
        return self._closed.is_set()

    def _on_close(self, ev: CloseEvent) -> None:
        self.close_event = ev
        if ev.error is not None:
            logger.warning("caption session for %r closed: %s", self._identity, ev.error)
        self._closed.set()

    def _on_blank_rut(self, ev: BlankRut) -> None:
        # the stream logs the episode too, but cannot say whose captions are missing
        if ev.persistent:
            logger.error(
                "captions for %r are missing: vLLM answers their speech with blank tokens on "
                "fresh sockets too (vllm-project/vllm#47614); restart the vLLM server",
                self._identity,
            )
        else:
            logger.warning(
                "captions for %r: vLLM answered %.0fs of speech with blank tokens "
                "(vllm-project/vllm#47614); continuing on a fresh socket",
                self._identity,
                ev.speech_s,
            )

    def set_muted(self, muted: bool, *, finalize: bool = True) -> None:
        """Stop (True) or resume (False) feeding the participant's audio to the STT.

        With ``finalize``, muting also publishes the caption in progress as final now rather
        than when the microphone comes back: the STT is flushed, and its final transcript ends
        the segment. (A session that starts muted has nothing to finalize; committing would
        only hold its close up for the transcript timeout.)
        """
        self._session.input.set_audio_enabled(not muted)
        if not muted or not finalize:
            return
        try:
            done = self._session.commit_user_turn(skip_reply=True, transcript_timeout=3.0)
        except RuntimeError:  # the session is not running (closing)
            return
        done.add_done_callback(_consume_result)

    async def aclose(self) -> None:
        """Finish the caption in progress, then release everything. Idempotent."""
        if self._released:
            return
        self._released = True
        streams: list[StreamStats] = []
        try:
            if not self._closed.is_set():
                try:
                    await self._session.drain()
                except RuntimeError:  # "AgentSession isn't running": already closed
                    pass
                streams = _stream_stats(self._stt)
                # closing commits the user turn, waiting briefly for the final transcript
                await self._session.aclose()
        finally:
            await self._stt.aclose()
            if isinstance(self._stt, VoxtralSTT):
                self._stt.off("blank_rut", self._on_blank_rut)
            self._closed.set()
        for stats in streams:
            _log_stats(self._identity, stats)

    async def wait_closed(self) -> None:
        """Return once the session has ended, whether closed or failed on its own."""
        await self._closed.wait()


def _consume_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _stream_stats(model: stt.STT[Any]) -> list[StreamStats]:
    """The counters of the Voxtral streams still open on ``model`` (none for other STTs)."""
    if not isinstance(model, VoxtralSTT):
        return []
    return [stream.stats for stream in model.streams]


def _log_stats(identity: str, stats: StreamStats) -> None:
    """One line per stream when its session closes: every ``StreamStats`` field, so that a
    counter added there is logged without a change here. A warning when the stream met vLLM's
    blank-token rut (``blank_ruts``, counted by the stream where the rut is detected)."""
    fields = ", ".join(
        f"{name}={value:.2f}" if isinstance(value, float) else f"{name}={value}"
        for name, value in dataclasses.asdict(stats).items()
        if value is not None
    )
    if getattr(stats, "blank_ruts", 0):
        logger.warning(
            "caption stream stats for %r: %s (vLLM answered speech with blank tokens, "
            "vllm-project/vllm#47614; restart vLLM if it persists)",
            identity,
            fields,
        )
    else:
        logger.info("caption stream stats for %r: %s", identity, fields)


async def start_caption_session(
    room: rtc.Room, participant: rtc.RemoteParticipant, settings: SessionSettings
) -> CaptionSession:
    """Start an ``AgentSession`` linked to ``participant``, with a new STT of its own.

    One STT per session: AgentSession subscribes to the STT's ``error`` event, so a shared
    STT would let one participant's failure close every session.
    """
    participant_stt = settings.stt_factory()
    if not isinstance(participant_stt, stt.STT):
        raise TypeError(
            f"stt_factory must return a livekit.agents.stt.STT, got {type(participant_stt)!r}"
        )
    extra: dict[str, Any] = {}
    if settings.conn_options is not None:
        extra["conn_options"] = settings.conn_options
    try:
        session: AgentSession[None] = AgentSession(
            stt=participant_stt,
            vad=None,  # not the default local Silero: the STT endpoints, or owns its own VAD
            turn_handling=caption_turn_handling(),
            user_away_timeout=None,
            aec_warmup_duration=None,
            session_close_transcript_timeout=settings.close_transcript_timeout,
            **extra,
        )
    except BaseException:
        await participant_stt.aclose()
        raise
    caption = CaptionSession(session, participant.identity, participant_stt)
    try:
        await session.start(
            _CaptionAgent(participant.identity),
            room=room,
            room_options=caption_room_options(
                participant.identity,
                audio_input=settings.audio_input,
                participant_kinds=settings.participant_kinds,
            ),
            # one job, many sessions: none of them records or hosts remote control
            record=False,
            session_host=False,
        )
    except BaseException:
        await caption.aclose()
        raise
    return caption
