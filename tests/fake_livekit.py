"""Stand-ins for the LiveKit server edge, so real AgentSessions run without a server.

Participants and publications are the real ``rtc.RemoteParticipant`` /
``rtc.RemoteTrackPublication`` classes built from protobuf info with the invalid FFI handle
(0), which they never dereference; the room is an ``rtc.EventEmitter`` that emits the SDK's
event names with the SDK's argument order, and mutates ``remote_participants`` and
``track_publications`` before emitting, as ``rtc.Room._on_room_event`` does. Captions that
RoomIO publishes are recorded by ``FakeLocalParticipant``.

``ScriptedSTT`` stands in for the model: a real ``stt.STT`` whose streams emit what the test
says (a flush finalizes the interim in progress, as Voxtral's does).

A track subscription carries no real track: emit it (``subscribe=True``) only while no caption
session of that participant is running, since RoomIO would open an audio stream on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, stt
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.rtc._proto import handle_pb2, participant_pb2, track_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"

STANDARD = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
EGRESS = rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS
SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
MICROPHONE = rtc.TrackSource.SOURCE_MICROPHONE
CAMERA = rtc.TrackSource.SOURCE_CAMERA


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path (the examples are scripts, not a package)."""
    # the plugin lives at the repo root (livekit/plugins/voxtral_vllm), which is not on
    # sys.path when pytest is run through its console script
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    module_name = f"_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


_sids = itertools.count(1)


def make_participant(
    identity: str,
    *,
    kind: rtc.ParticipantKind.ValueType = STANDARD,
    attributes: Mapping[str, str] | None = None,
    client_protocol: int = 3,
) -> rtc.RemoteParticipant:
    info = participant_pb2.ParticipantInfo(
        sid=f"PA_{identity}",
        identity=identity,
        name=identity.title(),
        kind=kind,
        attributes=dict(attributes or {}),
        client_protocol=client_protocol,
    )
    owned = participant_pb2.OwnedParticipant(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)
    return rtc.RemoteParticipant(owned)


def make_publication(
    *, source: rtc.TrackSource.ValueType = MICROPHONE, muted: bool = False, sid: str | None = None
) -> rtc.RemoteTrackPublication:
    kind = rtc.TrackKind.KIND_AUDIO if source == MICROPHONE else rtc.TrackKind.KIND_VIDEO
    info = track_pb2.TrackPublicationInfo(
        sid=sid or f"TR_{next(_sids):04d}", name="mic", kind=kind, source=source, muted=muted
    )
    owned = track_pb2.OwnedTrackPublication(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)
    return rtc.RemoteTrackPublication(owned)


@dataclass
class PublishedText:
    """One ``stream_text`` call: LiveKit opens one stream per caption update."""

    topic: str
    sender_identity: str | None
    attributes: dict[str, str]
    text: str = ""
    closed: bool = False


class FakeTextWriter:
    def __init__(self, record: PublishedText) -> None:
        self._record = record

    async def write(self, text: str) -> None:
        self._record.text += text

    async def aclose(self, *, reason: str = "", attributes: dict[str, str] | None = None) -> None:
        if attributes:
            self._record.attributes.update(attributes)
        self._record.closed = True


class FakeLocalParticipant:
    """What RoomIO's outputs touch on ``room.local_participant``."""

    identity = "agent-transcriber"
    sid = "PA_agent"
    kind = AGENT

    def __init__(self) -> None:
        self.track_publications: dict[str, Any] = {}
        self.published: list[PublishedText] = []
        self.legacy_transcriptions: list[Any] = []
        self.attributes: dict[str, str] = {}

    async def stream_text(
        self,
        *,
        topic: str = "",
        sender_identity: str | None = None,
        attributes: dict[str, str] | None = None,
        **_: Any,
    ) -> FakeTextWriter:
        record = PublishedText(topic, sender_identity, dict(attributes or {}))
        self.published.append(record)
        return FakeTextWriter(record)

    async def publish_transcription(self, transcription: Any) -> None:
        self.legacy_transcriptions.append(transcription)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        self.attributes.update(attributes)


class FakeRoom(rtc.EventEmitter[str]):
    """A connected room whose participants are driven by the test."""

    def __init__(self, name: str = "standup") -> None:
        super().__init__()
        self.name = name
        self.remote_participants: dict[str, rtc.RemoteParticipant] = {}
        self.local_participant = FakeLocalParticipant()
        self.text_handlers: dict[str, Callable[..., None]] = {}
        self.byte_handlers: dict[str, Callable[..., None]] = {}

    connected = True

    def isconnected(self) -> bool:
        return self.connected

    def connect(self) -> None:
        """What the SDK does when a connection completes (participants already set)."""
        self.connected = True
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_CONNECTED)

    def register_text_stream_handler(self, topic: str, handler: Callable[..., None]) -> None:
        if topic in self.text_handlers:
            raise ValueError(f"text stream handler for topic {topic!r} already set")
        self.text_handlers[topic] = handler

    def unregister_text_stream_handler(self, topic: str) -> None:
        self.text_handlers.pop(topic, None)

    def register_byte_stream_handler(self, topic: str, handler: Callable[..., None]) -> None:
        if topic in self.byte_handlers:
            raise ValueError(f"byte stream handler for topic {topic!r} already set")
        self.byte_handlers[topic] = handler

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self.byte_handlers.pop(topic, None)

    def listener_count(self) -> int:
        return sum(len(callbacks) for callbacks in self._events.values())

    # -- scenario steps, each emitting what the SDK emits ------------------------------------

    def join(
        self,
        identity: str,
        *,
        kind: rtc.ParticipantKind.ValueType = STANDARD,
        mic: bool = True,
        muted: bool = False,
        attributes: Mapping[str, str] | None = None,
        subscribe: bool = False,
    ) -> rtc.RemoteParticipant:
        participant = make_participant(identity, kind=kind, attributes=attributes)
        self.remote_participants[identity] = participant
        self.emit("participant_connected", participant)
        if mic:
            self.publish(participant, muted=muted, subscribe=subscribe)
        return participant

    def add_existing(
        self, identity: str, *, mic: bool = True, muted: bool = False
    ) -> rtc.RemoteParticipant:
        """A participant already in the room when the agent connects: no events."""
        participant = make_participant(identity)
        if mic:
            pub = make_publication(muted=muted)
            participant._track_publications[pub.sid] = pub
        self.remote_participants[identity] = participant
        return participant

    def publish(
        self,
        participant: rtc.RemoteParticipant,
        *,
        source: rtc.TrackSource.ValueType = MICROPHONE,
        muted: bool = False,
        subscribe: bool = False,
    ) -> rtc.RemoteTrackPublication:
        pub = make_publication(source=source, muted=muted)
        participant._track_publications[pub.sid] = pub
        self.emit("track_published", pub, participant)
        if subscribe:
            # AutoSubscribe.AUDIO_ONLY subscribes; the track object is opaque to the tests
            pub._subscribed = True
            self.emit("track_subscribed", object(), pub, participant)
        return pub

    def set_muted(
        self, participant: rtc.Participant, pub: rtc.TrackPublication, muted: bool
    ) -> None:
        pub._info.muted = muted
        self.emit("track_muted" if muted else "track_unmuted", participant, pub)

    def set_attributes(
        self, participant: rtc.RemoteParticipant, attributes: dict[str, str]
    ) -> None:
        participant._info.attributes.clear()
        participant._info.attributes.update(attributes)
        self.emit("participant_attributes_changed", dict(attributes), participant)

    def unpublish(
        self, participant: rtc.RemoteParticipant, pub: rtc.RemoteTrackPublication
    ) -> None:
        participant._track_publications.pop(pub.sid, None)
        self.emit("track_unpublished", pub, participant)

    def leave(
        self,
        participant: rtc.RemoteParticipant,
        reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.CLIENT_INITIATED,
    ) -> None:
        self.remote_participants.pop(participant.identity, None)
        participant._info.disconnect_reason = reason
        self.emit("participant_disconnected", participant)


class FakeJobContext:
    """The parts of ``JobContext`` an entrypoint uses: room, proc.userdata, connect, shutdown."""

    def __init__(self, room: FakeRoom, userdata: dict[str, Any]) -> None:
        self.room = room
        self.proc = type("FakeJobProcess", (), {"userdata": userdata})()
        self.connected_with: Any = None
        self.shutdown_callbacks: list[Callable[[], Awaitable[None]]] = []

    async def connect(self, *, auto_subscribe: Any = None) -> None:
        self.connected_with = auto_subscribe

    def add_shutdown_callback(self, callback: Callable[[], Awaitable[None]]) -> None:
        self.shutdown_callbacks.append(callback)


_CONN_OPTIONS = APIConnectOptions()


def speech(kind: stt.SpeechEventType, text: str = "") -> stt.SpeechEvent:
    alternatives = [stt.SpeechData(language=LanguageCode("en"), text=text)] if text else []
    return stt.SpeechEvent(type=kind, alternatives=alternatives)


class ScriptedSTT(stt.STT[Any]):
    """An STT whose streams emit what the test tells them; a flush finalizes the interim."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=True, manual_flush=True
            )
        )
        self.streams: list[ScriptedStream] = []
        self.closed = False
        self.close_gate: asyncio.Event | None = None
        """Set to an Event to make ``aclose`` hang until it is set."""

    async def _recognize_impl(
        self,
        buffer: list[rtc.AudioFrame] | rtc.AudioFrame,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        raise NotImplementedError

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = _CONN_OPTIONS,
    ) -> ScriptedStream:
        stream = ScriptedStream(stt=self, conn_options=conn_options)
        self.streams.append(stream)
        return stream

    def fail(self, times: int = 1) -> None:
        """Report unrecoverable errors, as a stream that gave up does (the base class emits
        them); past ``max_unrecoverable_errors`` the AgentSession closes itself."""
        for _ in range(times):
            error = APIConnectionError("vLLM unreachable", retryable=False)
            self.emit(
                "error",
                stt.STTError(
                    timestamp=time.time(), label=self.label, error=error, recoverable=False
                ),
            )

    async def aclose(self) -> None:
        if self.close_gate is not None:
            await self.close_gate.wait()
        self.closed = True


class ScriptedStream(stt.RecognizeStream):
    pending_interim = ""

    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel) and self.pending_interim:
                self.say(speech(stt.SpeechEventType.FINAL_TRANSCRIPT, self.pending_interim))
                self.say(speech(stt.SpeechEventType.END_OF_SPEECH))

    def say(self, ev: stt.SpeechEvent) -> None:
        if ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT:
            self.pending_interim = ev.alternatives[0].text
        elif ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            self.pending_interim = ""
        self._event_ch.send_nowait(ev)


class STTFactory:
    """``stt_factory`` for a captioner: records every STT it makes, optionally failing first."""

    def __init__(self) -> None:
        self.made: list[ScriptedSTT] = []
        self.failures_left = 0
        self.hang_on_close = False

    def __call__(self) -> ScriptedSTT:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("vLLM unreachable")
        made = ScriptedSTT()
        if self.hang_on_close:
            made.close_gate = asyncio.Event()
        self.made.append(made)
        return made

    def live(self) -> list[ScriptedSTT]:
        return [s for s in self.made if not s.closed]


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until the loop is quiet."""
    for _ in range(rounds):
        await asyncio.sleep(0)
