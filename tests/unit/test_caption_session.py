"""Captions as the room receives them: ``lk.transcription`` streams with segment ids.

Speech events from a scripted STT go through RoomCaptioner's real AgentSessions and RoomIO;
the fake room records every text stream the agent opens, as a frontend would receive them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import pytest
from livekit import rtc
from livekit.agents import stt
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)
from livekit.agents.voice.room_io import _ParticipantStreamTranscriptionOutput
from livekit.agents.voice.room_io._output import _ParticipantTranscriptionOutput

from livekit_plugins_voxtral_vllm import RoomCaptioner
from livekit_plugins_voxtral_vllm.caption_session import (
    _log_stats,
    caption_room_options,
    caption_turn_handling,
    default_audio_input,
)
from livekit_plugins_voxtral_vllm.room_captioner import DEFAULT_CAPTIONED_KINDS
from livekit_plugins_voxtral_vllm.stream_core import StreamStats

from ..fake_livekit import (
    FakeRoom,
    PublishedText,
    ScriptedStream,
    ScriptedSTT,
    STTFactory,
    make_participant,
    speech,
    wait_until,
)

SpeechEventType = stt.SpeechEventType

SCRIPT = [
    speech(SpeechEventType.START_OF_SPEECH),
    speech(SpeechEventType.INTERIM_TRANSCRIPT, "good"),
    speech(SpeechEventType.INTERIM_TRANSCRIPT, "good morning every"),
    speech(SpeechEventType.FINAL_TRANSCRIPT, "Good morning, everyone."),
    speech(SpeechEventType.END_OF_SPEECH),
    speech(SpeechEventType.START_OF_SPEECH),
    speech(SpeechEventType.INTERIM_TRANSCRIPT, "let's"),
    speech(SpeechEventType.FINAL_TRANSCRIPT, "Let's start."),
    speech(SpeechEventType.END_OF_SPEECH),
]
SCRIPT_CAPTIONS = [
    ["good", "good morning every", "Good morning, everyone.", "Good morning, everyone."],
    ["let's", "Let's start.", "Let's start."],
]


def captions(room: FakeRoom, identity: str | None = None) -> list[PublishedText]:
    return [
        p
        for p in room.local_participant.published
        if p.topic == TOPIC_TRANSCRIPTION and (identity is None or p.sender_identity == identity)
    ]


def assert_segment_rules(published: list[PublishedText], track_sid: str) -> list[list[str]]:
    """Check LiveKit's caption contract and return the texts grouped by segment."""
    segments: dict[str, list[PublishedText]] = {}
    for caption in published:
        assert caption.closed
        assert caption.attributes[ATTRIBUTE_TRANSCRIPTION_TRACK_ID] == track_sid
        segments.setdefault(caption.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID], []).append(
            caption
        )
    grouped = []
    for updates in segments.values():
        finals = [u for u in updates if u.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] == "true"]
        # exactly one final per segment, and it is the last update of that segment
        assert len(finals) == 1 and updates[-1] is finals[0]
        grouped.append([u.text for u in updates])
    # segments do not interleave: a new id starts only after the previous one is final
    ids = [c.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID] for c in published]
    assert ids == sorted(ids, key=list(segments).index)
    return grouped


@pytest.fixture
async def captioner(room: FakeRoom, stts: STTFactory) -> AsyncIterator[RoomCaptioner]:
    async with RoomCaptioner(room, stts, close_transcript_timeout=0.2) as c:
        yield c


async def stream_of(captioner: RoomCaptioner, identity: str) -> ScriptedStream:
    await wait_until(lambda: captioner.session(identity) is not None)
    session = captioner.session(identity)
    assert session is not None and isinstance(session.stt, ScriptedSTT)
    model = session.stt
    await wait_until(lambda: bool(model.streams))
    return model.streams[0]


async def say(stream: ScriptedStream, events: list[stt.SpeechEvent]) -> None:
    for ev in events:
        stream.say(ev)
        await asyncio.sleep(0.01)


def mic_sid(participant: rtc.RemoteParticipant) -> str:
    return next(iter(participant.track_publications))


async def test_captions_published_for_the_participant(
    room: FakeRoom, captioner: RoomCaptioner
) -> None:
    alice = room.join("alice")
    await say(await stream_of(captioner, "alice"), SCRIPT)
    await wait_until(lambda: len(captions(room)) == 7)

    published = captions(room)
    assert {c.sender_identity for c in published} == {"alice"}
    assert assert_segment_rules(published, mic_sid(alice)) == SCRIPT_CAPTIONS
    # the agent never answered: only user transcriptions went out
    assert all(c.topic == TOPIC_TRANSCRIPTION for c in room.local_participant.published)


async def test_two_participants_get_their_own_captions(
    room: FakeRoom, captioner: RoomCaptioner
) -> None:
    alice = room.join("alice")
    bob = room.join("bob")
    alice_stream = await stream_of(captioner, "alice")
    bob_stream = await stream_of(captioner, "bob")
    await asyncio.gather(say(alice_stream, SCRIPT), say(bob_stream, SCRIPT[:5]))
    await wait_until(lambda: len(captions(room, "alice")) == 7)
    await wait_until(lambda: len(captions(room, "bob")) == 4)

    assert assert_segment_rules(captions(room, "alice"), mic_sid(alice)) == SCRIPT_CAPTIONS
    assert assert_segment_rules(captions(room, "bob"), mic_sid(bob)) == SCRIPT_CAPTIONS[:1]
    seg = ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID
    assert not {c.attributes[seg] for c in captions(room, "alice")} & {
        c.attributes[seg] for c in captions(room, "bob")
    }


async def test_mute_finalizes_the_caption_in_progress(
    room: FakeRoom, captioner: RoomCaptioner
) -> None:
    alice = room.join("alice")
    stream = await stream_of(captioner, "alice")
    await say(
        stream,
        [
            speech(SpeechEventType.START_OF_SPEECH),
            speech(SpeechEventType.INTERIM_TRANSCRIPT, "one more thing"),
        ],
    )
    room.set_muted(alice, next(iter(alice.track_publications.values())), True)
    await wait_until(lambda: captions(room)[-1].attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] == "true")
    assert captions(room)[-1].text == "one more thing"
    assert len({c.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID] for c in captions(room)}) == 1


async def test_leaving_mid_sentence_still_publishes_a_final(
    room: FakeRoom, captioner: RoomCaptioner
) -> None:
    alice = room.join("alice")
    await say(
        await stream_of(captioner, "alice"),
        [
            speech(SpeechEventType.START_OF_SPEECH),
            speech(SpeechEventType.INTERIM_TRANSCRIPT, "see you"),
        ],
    )
    await wait_until(lambda: len(captions(room)) == 1)
    room.leave(alice)  # drain, then close: the STT is flushed before RoomIO closes
    await wait_until(lambda: captioner.captioned == frozenset())
    # LiveKit publishes the final text once more as an update, then as the final
    assert [(c.text, c.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL]) for c in captions(room)] == [
        ("see you", "false"),
        ("see you", "false"),
        ("see you", "true"),
    ]
    assert len({c.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID] for c in captions(room)}) == 1


async def test_closing_the_captioner_finalizes_every_caption_in_progress(
    room: FakeRoom, stts: STTFactory
) -> None:
    captioner = RoomCaptioner(room, stts, close_transcript_timeout=0.2)
    captioner.start()
    for name in ("alice", "bob"):
        room.join(name)
        await say(
            await stream_of(captioner, name),
            [
                speech(SpeechEventType.START_OF_SPEECH),
                speech(SpeechEventType.INTERIM_TRANSCRIPT, f"bye from {name}"),
            ],
        )
    await captioner.aclose()
    for name in ("alice", "bob"):
        final = captions(room, name)[-1]
        assert (final.text, final.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL]) == (
            f"bye from {name}",
            "true",
        )


def test_room_options_publish_user_captions_for_the_linked_participant() -> None:
    options = caption_room_options(
        "alice", audio_input=default_audio_input(), participant_kinds=DEFAULT_CAPTIONED_KINDS
    )
    assert options.participant_identity == "alice"
    # text output on: that is where RoomIO publishes the *user* transcription
    assert options.get_text_output_options() is not None
    audio = options.get_audio_input_options()
    assert audio is not None and audio.sample_rate == 16000 and audio.pre_connect_audio is False
    assert options.get_text_input_options() is None
    assert options.get_audio_output_options() is None
    assert options.close_on_disconnect is False
    assert rtc.ParticipantKind.PARTICIPANT_KIND_AGENT not in options.participant_kinds
    assert caption_turn_handling()["turn_detection"] == "stt"


# -- LiveKit's own output, fed the way RoomIO feeds it: the contract the captions rely on ----


async def test_transcription_output_segment_ids() -> None:
    room = FakeRoom()
    alice = room.join("alice")
    output = _ParticipantStreamTranscriptionOutput(
        room,  # type: ignore[arg-type]
        is_delta_stream=False,
        participant="alice",
    )
    # RoomIO._forward_user_transcript: capture_text(transcript), then flush() when final
    for ev in SCRIPT:
        if ev.type in (SpeechEventType.INTERIM_TRANSCRIPT, SpeechEventType.FINAL_TRANSCRIPT):
            await output.capture_text(ev.alternatives[0].text)
            if ev.type == SpeechEventType.FINAL_TRANSCRIPT:
                output.flush()
    await output.aclose()

    assert all(c.sender_identity == "alice" for c in captions(room))
    assert assert_segment_rules(captions(room), mic_sid(alice)) == SCRIPT_CAPTIONS


async def test_legacy_clients_also_get_transcription_packets() -> None:
    """While a participant runs an old client protocol, RoomIO's output also sends
    ``rtc.Transcription`` packets: one segment, updated, then final."""
    room = FakeRoom()
    alice = room.join("alice")
    room.remote_participants["old-client"] = make_participant("old-client", client_protocol=0)
    output = _ParticipantTranscriptionOutput(
        room=room,  # type: ignore[arg-type]
        is_delta_stream=False,
        participant="alice",
    )
    await output.capture_text("hi")
    await output.capture_text("hi there")
    output.flush()
    await output.aclose()

    packets = room.local_participant.legacy_transcriptions
    segments = [seg for packet in packets for seg in packet.segments]
    assert {packet.participant_identity for packet in packets} == {"alice"}
    assert {packet.track_sid for packet in packets} == set(alice.track_publications)
    assert len({seg.id for seg in segments}) == 1
    assert [(seg.text, seg.final) for seg in segments][-1] == ("hi there", True)
    assert not any(seg.final for seg in segments[:-1])
    # the stream side is unaffected: two interim updates and one final
    assert [c.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] for c in captions(room)] == [
        "false",
        "false",
        "true",
    ]


def test_stream_stats_are_logged_and_a_rut_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    @dataclasses.dataclass
    class WithRuts(StreamStats):
        blank_ruts: int = 0

    with caplog.at_level(logging.INFO, logger="livekit.plugins.voxtral_vllm"):
        _log_stats("alice", StreamStats(generations=3, dropped_audio_s=1.25))
        _log_stats("bob", WithRuts(generations=2, blank_ruts=1))
    alice, bob = caplog.records
    assert alice.levelno == logging.INFO
    assert "caption stream stats for 'alice': generations=3," in alice.getMessage()
    assert "dropped_audio_s=1.25" in alice.getMessage()
    assert "first_text_latency_s" not in alice.getMessage()  # None: not measured
    assert bob.levelno == logging.WARNING
    assert "blank_ruts=1" in bob.getMessage() and "vllm#47614" in bob.getMessage()
