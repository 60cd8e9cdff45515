"""RoomCaptioner: options, and the per-participant lifecycle with real AgentSessions.

Only the LiveKit server edge is faked (``FakeRoom`` emits the SDK's events) and the model
(``ScriptedSTT``); every caption session is a real ``AgentSession`` with RoomIO.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import AgentSession, room_io
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.agent_session import SessionConnectOptions

from livekit_plugins_voxtral_vllm import RoomCaptioner

from ..fake_livekit import (
    AGENT,
    CAMERA,
    EGRESS,
    SIP,
    FakeRoom,
    ScriptedSTT,
    STTFactory,
    make_publication,
    settle,
    wait_until,
)

LOGGER = "livekit.plugins.voxtral_vllm"
# closing a session waits this long for a pending final when nothing is pending
CLOSE_TRANSCRIPT_TIMEOUT = 0.05
# one unrecoverable STT error closes a session, so a failure needs one fail()
FRAGILE = SessionConnectOptions(max_unrecoverable_errors=0)


def make_captioner(room: FakeRoom, stts: STTFactory, **options: Any) -> RoomCaptioner:
    defaults: dict[str, Any] = {
        "restart_delay": 0.01,
        "max_restart_delay": 0.05,
        "close_transcript_timeout": CLOSE_TRANSCRIPT_TIMEOUT,
        "conn_options": FRAGILE,
    }
    return RoomCaptioner(room, stts, **{**defaults, **options})  # type: ignore[arg-type]


@pytest.fixture
async def captioner(room: FakeRoom, stts: STTFactory) -> AsyncIterator[RoomCaptioner]:
    c = make_captioner(room, stts)
    c.start()
    yield c
    await c.aclose()


def session_of(captioner: RoomCaptioner, identity: str) -> AgentSession[None]:
    session = captioner.session(identity)
    assert session is not None, f"no running session for {identity!r}"
    return session


def stt_of(captioner: RoomCaptioner, identity: str) -> ScriptedSTT:
    model = session_of(captioner, identity).stt
    assert isinstance(model, ScriptedSTT)
    return model


def live_sessions(captioner: RoomCaptioner) -> set[str]:
    return {i for i in captioner.captioned if captioner.session(i) is not None}


# ============================================================================================
# Options
# ============================================================================================


class TestOptions:
    def test_defaults(self, room: FakeRoom) -> None:
        captioner = RoomCaptioner(room, ScriptedSTT)  # type: ignore[arg-type]
        assert captioner.max_participants == 50
        assert captioner.captioned == frozenset()
        assert captioner.waiting == ()
        audio = captioner._settings.audio_input
        assert (audio.sample_rate, audio.num_channels, audio.pre_connect_audio) == (16000, 1, False)
        assert AGENT not in captioner._settings.participant_kinds
        assert room.listener_count() == 0  # nothing happens before start()

    @pytest.mark.parametrize(
        ("options", "named"),
        [
            ({"max_participants": 0}, "max_participants must be at least 1, got 0"),
            ({"max_participants": -3}, "got -3"),
            ({"max_participants": 2.5}, "max_participants must be an integer, got 2.5"),
            ({"max_participants": True}, "got True"),
            ({"restart_delay": 0}, "restart_delay must be a number of seconds > 0, got 0"),
            ({"restart_delay": float("nan")}, "restart_delay must be a number of seconds > 0"),
            ({"restart_delay": "2"}, "got '2'"),
            ({"max_restart_delay": 1.0}, "max_restart_delay (1.0) must be at least restart_delay"),
            ({"close_timeout": -1}, "close_timeout must be a number of seconds > 0, got -1"),
            ({"close_transcript_timeout": -0.5}, "close_transcript_timeout must be"),
            ({"participant_kinds": []}, "participant_kinds must be a non-empty list"),
            ({"participant_kinds": [42]}, "got [42]"),
            ({"participant_kinds": 1}, "participant_kinds must be a non-empty list"),
            (
                {"audio_input": room_io.AudioInputOptions(sample_rate=16000)},
                "audio_input.pre_connect_audio=True cannot work",
            ),
            ({"audio_input": {"sample_rate": 16000}}, "audio_input must be a"),
            ({"conn_options": {"max_unrecoverable_errors": 1}}, "conn_options must be a"),
            ({"participant_filter": "humans"}, "participant_filter must be callable"),
        ],
    )
    def test_bad_option_is_named(self, room: FakeRoom, options: dict[str, Any], named: str) -> None:
        options.setdefault("restart_delay", 2.0)
        with pytest.raises((ValueError, TypeError), match=re.escape(named)):
            RoomCaptioner(room, ScriptedSTT, **options)  # type: ignore[arg-type]

    def test_stt_factory_must_be_callable(self, room: FakeRoom) -> None:
        with pytest.raises(TypeError, match="stt_factory must be callable"):
            RoomCaptioner(room, ScriptedSTT())  # type: ignore[arg-type]

    async def test_factory_returning_no_stt_is_reported(
        self, room: FakeRoom, caplog: pytest.LogCaptureFixture
    ) -> None:
        captioner = RoomCaptioner(room, lambda: "not an stt", restart_delay=0.01)  # type: ignore[arg-type,return-value]
        captioner.start()
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            room.join("alice")
            await wait_until(lambda: "stt_factory must return" in caplog.text)
        await captioner.aclose()
        assert "got <class 'str'>" in caplog.text


# ============================================================================================
# Lifecycle
# ============================================================================================


class TestLifecycle:
    async def test_join_with_microphone_starts_one_session(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        # connected + published + subscribed (no session yet, so RoomIO sees no fake track)
        room.join("alice", subscribe=True)
        await wait_until(lambda: captioner.session("alice") is not None)
        await settle()
        assert len(stts.made) == 1
        assert captioner.captioned == {"alice"}
        session = session_of(captioner, "alice")
        assert session.stt is stts.made[0]
        assert session.room_io.linked_participant is room.remote_participants["alice"]
        assert session.input.audio_enabled

    async def test_session_waits_for_a_microphone(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        bob = room.join("bob", mic=False)
        room.publish(bob, source=CAMERA)
        await settle()
        assert stts.made == [] and captioner.captioned == frozenset()
        room.publish(bob)
        await wait_until(lambda: live_sessions(captioner) == {"bob"})

    async def test_mute_and_unmute_reach_the_running_session(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        session = session_of(captioner, "alice")
        pub = next(iter(alice.track_publications.values()))
        room.set_muted(alice, pub, True)
        await wait_until(lambda: not session.input.audio_enabled)
        room.set_muted(alice, pub, False)
        await wait_until(lambda: session.input.audio_enabled)
        await settle()
        assert len(stts.made) == 1  # muting never restarts the session
        assert captioner.session("alice") is session

    async def test_joining_muted_starts_muted(
        self, room: FakeRoom, captioner: RoomCaptioner
    ) -> None:
        room.join("carol", muted=True)
        await wait_until(lambda: captioner.session("carol") is not None)
        await wait_until(lambda: not session_of(captioner, "carol").input.audio_enabled)

    async def test_own_and_local_track_mutes_are_ignored(
        self, room: FakeRoom, captioner: RoomCaptioner
    ) -> None:
        room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        # the SDK also reports mutes of the agent's own (local) tracks
        room.emit("track_muted", room.local_participant, make_publication())
        await settle()
        assert session_of(captioner, "alice").input.audio_enabled

    async def test_unpublish_closes_and_republish_starts_fresh(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        first = session_of(captioner, "alice")
        room.unpublish(alice, next(iter(alice.track_publications.values())))
        await wait_until(lambda: captioner.captioned == frozenset())
        assert stts.made[0].closed  # the session's STT is closed with it
        room.publish(alice)
        await wait_until(lambda: captioner.session("alice") is not None)
        assert captioner.session("alice") is not first
        assert len(stts.made) == 2 and not stts.made[1].closed

    async def test_camera_unpublish_does_not_touch_captions(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        camera = room.publish(alice, source=CAMERA)
        await wait_until(lambda: captioner.session("alice") is not None)
        session = session_of(captioner, "alice")
        room.unpublish(alice, camera)
        await settle()
        assert captioner.session("alice") is session and len(stts.made) == 1

    async def test_quick_republish_gets_a_new_session(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        # both events land before the slot's task runs again
        room.unpublish(alice, next(iter(alice.track_publications.values())))
        room.publish(alice)
        await wait_until(lambda: len(stts.made) == 2 and captioner.session("alice") is not None)
        assert stts.made[0].closed and not stts.made[1].closed

    async def test_leave_closes_the_session_and_its_stt(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        session = session_of(captioner, "alice")
        closed: list[Any] = []
        session.on("close", closed.append)
        room.leave(alice)
        await wait_until(lambda: captioner.captioned == frozenset())
        assert stts.made[0].closed
        assert len(closed) == 1 and closed[0].error is None

    async def test_reconnecting_participant_gets_a_new_session(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        room.leave(alice, rtc.DisconnectReason.SIGNAL_CLOSE)
        room.join("alice")  # same identity, new participant object
        await wait_until(lambda: len(stts.made) == 2 and captioner.session("alice") is not None)
        assert stts.made[0].closed
        linked = session_of(captioner, "alice").room_io.linked_participant
        assert linked is room.remote_participants["alice"]

    async def test_many_participants_at_once(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        people = [room.join(f"user{i:02d}", muted=i % 3 == 0) for i in range(20)]
        await wait_until(lambda: len(live_sessions(captioner)) == 20, timeout=10)
        await settle()
        for i, person in enumerate(people):
            enabled = session_of(captioner, person.identity).input.audio_enabled
            assert enabled == (i % 3 != 0), person.identity
        assert len(stts.made) == 20  # one session, and one STT, each
        for person in people[::2]:
            room.leave(person)
        await wait_until(lambda: captioner.captioned == {p.identity for p in people[1::2]})
        assert sum(s.closed for s in stts.made) == 10

    @pytest.mark.parametrize(
        ("kind", "attributes"),
        [
            (AGENT, {}),
            (EGRESS, {}),
            # an avatar worker joins as STANDARD but publishes on behalf of an agent
            (rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, {ATTRIBUTE_PUBLISH_ON_BEHALF: "a"}),
        ],
    )
    async def test_agents_are_skipped(
        self,
        room: FakeRoom,
        stts: STTFactory,
        captioner: RoomCaptioner,
        kind: rtc.ParticipantKind.ValueType,
        attributes: dict[str, str],
    ) -> None:
        other = room.join("other-agent", kind=kind, attributes=attributes)
        room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        room.set_muted(other, next(iter(other.track_publications.values())), True)
        room.leave(other)
        await settle()
        assert captioner.captioned == {"alice"} and len(stts.made) == 1

    async def test_sip_callers_are_captioned(
        self, room: FakeRoom, captioner: RoomCaptioner
    ) -> None:
        room.join("+15550100", kind=SIP)
        await wait_until(lambda: live_sessions(captioner) == {"+15550100"})

    async def test_participant_kinds_and_filter_choose_who_is_captioned(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        captioner = make_captioner(
            room,
            stts,
            participant_kinds=[SIP, rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD],
            participant_filter=lambda p: p.attributes.get("captions") != "off",
        )
        captioner.start()
        try:
            room.join("caller", kind=SIP)
            bob = room.join("bob", attributes={"captions": "off"})
            room.join("ingress", kind=rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS)
            await wait_until(lambda: live_sessions(captioner) == {"caller"})
            # attributes changing makes bob eligible, then not again
            room.set_attributes(bob, {"captions": "on"})
            await wait_until(lambda: live_sessions(captioner) == {"caller", "bob"})
            room.set_attributes(bob, {"captions": "off"})
            await wait_until(lambda: captioner.captioned == {"caller"})
        finally:
            await captioner.aclose()

    async def test_becoming_an_agents_avatar_stops_captions(
        self, room: FakeRoom, captioner: RoomCaptioner
    ) -> None:
        avatar = room.join("avatar")
        await wait_until(lambda: captioner.session("avatar") is not None)
        room.set_attributes(avatar, {ATTRIBUTE_PUBLISH_ON_BEHALF: "agent-1"})
        await wait_until(lambda: captioner.captioned == frozenset())

    async def test_a_failing_filter_is_logged_and_captions_nobody(
        self, room: FakeRoom, stts: STTFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(p: rtc.RemoteParticipant) -> bool:
            raise KeyError("team")

        captioner = make_captioner(room, stts, participant_filter=broken)
        captioner.start()
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            room.join("alice")
            await settle()
        await captioner.aclose()
        assert "participant_filter failed for 'alice'" in caplog.text and stts.made == []

    async def test_start_after_connect_captions_participants_already_there(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        room.add_existing("early")
        room.add_existing("muted-early", muted=True)
        room.add_existing("listener", mic=False)
        captioner = make_captioner(room, stts)
        captioner.start()
        try:
            await wait_until(lambda: live_sessions(captioner) == {"early", "muted-early"})
            await wait_until(lambda: not session_of(captioner, "muted-early").input.audio_enabled)
        finally:
            await captioner.aclose()

    async def test_start_before_connect_captions_once_connected(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        room.connected = False
        captioner = make_captioner(room, stts)
        captioner.start()
        try:
            room.add_existing("early")  # arrives with the connection, without an event
            await settle()
            assert stts.made == []
            room.connect()
            await wait_until(lambda: live_sessions(captioner) == {"early"})
        finally:
            await captioner.aclose()

    async def test_room_reconnection_reconciles(
        self, room: FakeRoom, captioner: RoomCaptioner
    ) -> None:
        alice = room.join("alice")
        room.join("bob")
        await wait_until(lambda: live_sessions(captioner) == {"alice", "bob"})
        # while the agent was reconnecting, alice left and dave joined, unseen
        del room.remote_participants[alice.identity]
        room.add_existing("dave")
        room.emit("reconnected")
        await wait_until(lambda: live_sessions(captioner) == {"bob", "dave"})
        assert captioner.captioned == {"bob", "dave"}


class TestCap:
    async def test_cap_reached_logs_and_admits_when_a_slot_frees(
        self, room: FakeRoom, stts: STTFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        captioner = make_captioner(room, stts, max_participants=2)
        captioner.start()
        try:
            alice = room.join("alice")
            room.join("bob")
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                room.join("carol")
                room.join("dave")
                dave = room.remote_participants["dave"]
                room.set_muted(dave, next(iter(dave.track_publications.values())), True)
                await settle()
            await wait_until(lambda: live_sessions(captioner) == {"alice", "bob"})
            assert captioner.waiting == ("carol", "dave")
            reached = [r.getMessage() for r in caplog.records if "reached" in r.getMessage()]
            assert len(reached) == 2  # one line per participant turned away, not per event
            assert reached[0].startswith(
                "max_participants=2 reached: not captioning 'carol' in room 'standup'"
            )

            room.leave(alice)
            await wait_until(lambda: live_sessions(captioner) == {"bob", "carol"})
            assert captioner.waiting == ("dave",)
            assert len(stts.made) == 3
        finally:
            await captioner.aclose()

    async def test_waiting_participant_who_leaves_is_forgotten(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        captioner = make_captioner(room, stts, max_participants=1)
        captioner.start()
        try:
            alice = room.join("alice")
            bob = room.join("bob")
            await settle()
            assert captioner.waiting == ("bob",)
            room.leave(bob)
            assert captioner.waiting == ()
            room.leave(alice)
            await wait_until(lambda: captioner.captioned == frozenset())
            assert len(stts.made) == 1
        finally:
            await captioner.aclose()

    async def test_waiting_participant_who_unpublishes_is_forgotten(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        captioner = make_captioner(room, stts, max_participants=1)
        captioner.start()
        try:
            room.join("alice")
            bob = room.join("bob")
            room.unpublish(bob, next(iter(bob.track_publications.values())))
            assert captioner.waiting == ()
        finally:
            await captioner.aclose()


class TestRestart:
    async def test_session_that_ends_by_itself_is_restarted(
        self,
        room: FakeRoom,
        stts: STTFactory,
        captioner: RoomCaptioner,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        room.join("alice", muted=True)
        await wait_until(lambda: captioner.session("alice") is not None)
        first = session_of(captioner, "alice")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            stts.made[0].fail()  # the STT gave up: AgentSession closes with an error
            await wait_until(lambda: len(stts.made) == 2 and captioner.session("alice"))
        assert "captions for 'alice' stopped unexpectedly; restarting in 0.01s" in caplog.text
        assert "caption session for 'alice' closed: " in caplog.text  # with the error
        assert stts.made[0].closed and captioner.session("alice") is not first
        # the replacement starts in the participant's current (muted) state
        await wait_until(lambda: not session_of(captioner, "alice").input.audio_enabled)

    async def test_restarts_back_off_then_reset_after_a_clean_stop(
        self, room: FakeRoom, stts: STTFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        captioner = make_captioner(room, stts, restart_delay=0.01, max_restart_delay=0.03)
        captioner.start()
        try:
            stts.failures_left = 4
            with caplog.at_level(logging.ERROR, logger=LOGGER):
                room.join("alice")
                await wait_until(lambda: captioner.session("alice") is not None)
            delays = re.findall(
                r"could not start captions for 'alice'; retrying in (\S+)s", caplog.text
            )
            assert delays == ["0.01", "0.02", "0.03", "0.03"]  # doubling, capped
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                stts.made[0].fail()  # at once: still backing off
                await wait_until(lambda: len(stts.made) == 2 and captioner.session("alice"))
                await asyncio.sleep(0.05)  # longer than max_restart_delay
                stts.made[1].fail()
                await wait_until(lambda: len(stts.made) == 3 and captioner.session("alice"))
            delays = re.findall(r"'alice' stopped unexpectedly; restarting in (\S+)s", caplog.text)
            # a session that ran for max_restart_delay restarts at the base delay again
            assert delays == ["0.03", "0.01"]
        finally:
            await captioner.aclose()

    async def test_participant_leaving_while_start_fails_stops_retrying(
        self, room: FakeRoom, stts: STTFactory, captioner: RoomCaptioner
    ) -> None:
        stts.failures_left = 1_000
        alice = room.join("alice")
        await settle()
        room.leave(alice)
        await wait_until(lambda: captioner.captioned == frozenset())
        assert stts.made == []


class TestShutdown:
    async def test_clean_shutdown_closes_everything_and_leaves_no_task(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        baseline = asyncio.all_tasks()
        captioner = make_captioner(room, stts, max_participants=3)
        captioner.start()
        captioner.start()  # idempotent
        for name in ("alice", "bob", "carol", "dave"):
            room.join(name)
        await wait_until(lambda: len(live_sessions(captioner)) == 3)

        await captioner.aclose()

        assert len(stts.made) == 3 and all(s.closed for s in stts.made)
        assert captioner.captioned == frozenset() and captioner.waiting == ()
        assert room.listener_count() == 0  # the captioner's and every RoomIO's
        await settle()
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
        assert leftover <= {asyncio.current_task()}

        # events after shutdown are ignored, and closing again is a no-op
        room.join("eve")
        captioner.start()
        await settle()
        assert len(stts.made) == 3
        await captioner.aclose()

    async def test_session_that_will_not_close_is_cancelled(
        self, room: FakeRoom, stts: STTFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        stts.hang_on_close = True
        baseline = asyncio.all_tasks()
        captioner = make_captioner(room, stts, close_timeout=0.2)
        captioner.start()
        room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await captioner.aclose()
        assert "1 caption session(s) did not close within 0.2s; cancelling" in caplog.text
        assert not stts.made[0].closed
        await settle()
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
        assert leftover <= {asyncio.current_task()}

    async def test_close_without_start(self, room: FakeRoom, stts: STTFactory) -> None:
        captioner = make_captioner(room, stts)
        await captioner.aclose()
        captioner.start()  # closed for good
        assert room.listener_count() == 0

    async def test_async_context_manager(self, room: FakeRoom, stts: STTFactory) -> None:
        async with make_captioner(room, stts) as captioner:
            room.join("alice")
            await wait_until(lambda: captioner.session("alice") is not None)
        assert stts.made[0].closed and room.listener_count() == 0

    async def test_cancelling_the_owner_still_closes_sessions(
        self, room: FakeRoom, stts: STTFactory
    ) -> None:
        """aclose() awaited by a task that is cancelled: the cancellation propagates, and
        the sessions are closed anyway."""
        captioner = make_captioner(room, stts)
        captioner.start()
        room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None)
        closer = asyncio.create_task(captioner.aclose())
        await asyncio.sleep(0)
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        await wait_until(lambda: stts.made[0].closed and captioner.captioned == frozenset())
