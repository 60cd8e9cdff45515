"""examples/multi_user_transcriber.py without a LiveKit server.

- Configuration: every missing or bad variable is named.
- ``MultiUserTranscriber``: the per-participant lifecycle, driven by a fake room emitting the
  SDK's events, with fake pipelines.
- Captions: speech events through LiveKit's real transcription output, and through a real
  ``AgentSession`` built by the example's ``CaptionSessionFactory`` (a scripted STT stands in
  for Voxtral), checking the ``lk.transcription`` streams a frontend would receive.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, CloseEvent, CloseReason, stt
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    ATTRIBUTE_PUBLISH_ON_BEHALF,
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    NOT_GIVEN,
    TOPIC_TRANSCRIPTION,
    NotGivenOr,
)
from livekit.agents.voice.room_io import _ParticipantStreamTranscriptionOutput
from livekit.agents.voice.room_io._output import _ParticipantTranscriptionOutput

from ._fakes import (
    AGENT,
    CAMERA,
    EGRESS,
    SIP,
    FakeFactory,
    FakeJobContext,
    FakeRoom,
    PublishedText,
    load_example,
    make_participant,
    make_publication,
    settle,
    wait_until,
)

mut = load_example("multi_user_transcriber")

SpeechEventType = stt.SpeechEventType

VALID_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "secret",
}


# ============================================================================================
# Configuration
# ============================================================================================


class TestConfig:
    @pytest.mark.parametrize("missing", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"])
    def test_missing_livekit_variable_is_named(self, missing: str) -> None:
        env = {k: v for k, v in VALID_ENV.items() if k != missing}
        with pytest.raises(mut.ConfigError) as exc:
            mut.load_livekit_settings(env)
        assert exc.value.problems == [p for p in exc.value.problems if missing in p]
        assert len(exc.value.problems) == 1
        assert f"{missing} is not set" in str(exc.value)

    def test_all_missing_livekit_variables_reported_together(self) -> None:
        with pytest.raises(mut.ConfigError) as exc:
            mut.load_livekit_settings({})
        message = str(exc.value)
        for name in VALID_ENV:
            assert name in message

    def test_blank_counts_as_missing(self) -> None:
        with pytest.raises(mut.ConfigError, match="LIVEKIT_API_SECRET is not set"):
            mut.load_livekit_settings({**VALID_ENV, "LIVEKIT_API_SECRET": "  "})

    def test_bad_livekit_url(self) -> None:
        with pytest.raises(mut.ConfigError, match="LIVEKIT_URL='localhost:7880'"):
            mut.load_livekit_settings({**VALID_ENV, "LIVEKIT_URL": "localhost:7880"})

    def test_livekit_settings_and_no_secret_in_repr(self) -> None:
        settings = mut.load_livekit_settings({**VALID_ENV, "LIVEKIT_API_SECRET": "s3cr3t-value"})
        assert settings.url == "ws://127.0.0.1:7880"
        assert settings.api_key == "devkey"
        assert "s3cr3t-value" not in repr(settings)
        assert "devkey" not in repr(settings)

    def test_defaults(self) -> None:
        config = mut.load_config({})
        assert config == mut.TranscriberConfig()
        assert config.vllm_base_url == "ws://127.0.0.1:8000/v1/realtime"
        assert config.vllm_model is None
        assert config.language is None
        assert config.transcription_delay_ms == 480
        assert config.vad == "none"
        assert config.max_participants == 50

    def test_values(self) -> None:
        config = mut.load_config(
            {
                "VOXTRAL_VLLM_BASE_URL": "wss://gpu.example:8443/v1/realtime",
                "VOXTRAL_VLLM_MODEL": "mistralai/Voxtral-Mini-4B-Realtime-2602",
                "VOXTRAL_VLLM_API_KEY": "vllm-key-123",
                "VOXTRAL_LANGUAGE": "fr",
                "VOXTRAL_TRANSCRIPTION_DELAY_MS": "2400",
                "VOXTRAL_VAD": "NONE",
                "MAX_PARTICIPANTS": "7",
            }
        )
        assert config.vllm_base_url == "wss://gpu.example:8443/v1/realtime"
        assert config.vllm_model == "mistralai/Voxtral-Mini-4B-Realtime-2602"
        assert config.vllm_api_key == "vllm-key-123"
        assert config.language == "fr"
        assert config.transcription_delay_ms == 2400
        assert config.max_participants == 7
        assert "vllm-key-123" not in repr(config)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("VOXTRAL_VLLM_BASE_URL", "vllm:8000"),
            ("VOXTRAL_VLLM_BASE_URL", "ftp://vllm:8000/v1/realtime"),
            ("VOXTRAL_TRANSCRIPTION_DELAY_MS", "500"),
            ("VOXTRAL_TRANSCRIPTION_DELAY_MS", "1280"),
            ("VOXTRAL_TRANSCRIPTION_DELAY_MS", "fast"),
            ("VOXTRAL_LANGUAGE", "english please"),
            ("VOXTRAL_VAD", "webrtc"),
            ("MAX_PARTICIPANTS", "0"),
            ("MAX_PARTICIPANTS", "lots"),
        ],
    )
    def test_bad_value_is_named(self, name: str, value: str) -> None:
        with pytest.raises(mut.ConfigError) as exc:
            mut.load_config({name: value})
        assert len(exc.value.problems) == 1
        assert exc.value.problems[0].startswith(f"{name}=")

    def test_several_problems_reported_at_once(self) -> None:
        with pytest.raises(mut.ConfigError) as exc:
            mut.load_config({"MAX_PARTICIPANTS": "-1", "VOXTRAL_VAD": "maybe"})
        assert len(exc.value.problems) == 2

    @pytest.mark.skipif(mut._silero is not None, reason="livekit-plugins-silero is installed")
    def test_silero_requested_but_not_installed(self) -> None:
        with pytest.raises(mut.ConfigError, match="livekit-plugins-silero"):
            mut.load_config({"VOXTRAL_VAD": "silero"})

    def test_cli_flags_stand_in_for_livekit_variables(self) -> None:
        livekit, _ = mut.check_startup_config(
            {}, ["start", "--url", "ws://lk:7880", "--api-key=k", "--api-secret", "s"]
        )
        assert (livekit.url, livekit.api_key, livekit.api_secret) == ("ws://lk:7880", "k", "s")

    def test_startup_check_reports_livekit_and_stt_problems_together(self) -> None:
        with pytest.raises(mut.ConfigError) as exc:
            mut.check_startup_config({"VOXTRAL_TRANSCRIPTION_DELAY_MS": "100"})
        message = str(exc.value)
        assert "LIVEKIT_URL" in message and "VOXTRAL_TRANSCRIPTION_DELAY_MS=100" in message


class TestMain:
    @pytest.fixture
    def run_app(self, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
        calls: list[Any] = []
        monkeypatch.setattr(mut.cli, "run_app", calls.append)
        for name in list(VALID_ENV) + ["VOXTRAL_VLLM_BASE_URL", "MAX_PARTICIPANTS", "VOXTRAL_VAD"]:
            monkeypatch.delenv(name, raising=False)
        return calls

    def test_start_fails_before_running_and_names_the_variable(
        self, run_app: list[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exc:
            mut.main(["start"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "LIVEKIT_URL is not set" in err
        assert "LIVEKIT_API_SECRET is not set" in err
        assert run_app == []

    def test_bad_stt_setting_fails_dev_too(
        self,
        run_app: list[Any],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        for name, value in VALID_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MAX_PARTICIPANTS", "none")
        with pytest.raises(SystemExit):
            mut.main(["dev"])
        assert "MAX_PARTICIPANTS='none' is not an integer" in capsys.readouterr().err
        assert run_app == []

    def test_valid_configuration_hands_over_to_livekit_cli(
        self, run_app: list[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in VALID_ENV.items():
            monkeypatch.setenv(name, value)
        mut.main(["start"])
        assert run_app == [mut.server]

    def test_help_needs_no_configuration(self, run_app: list[Any]) -> None:
        mut.main(["start", "--help"])
        mut.main([])
        assert run_app == [mut.server, mut.server]

    def test_emulator_flag_points_the_worker_at_an_in_process_emulator(
        self, run_app: list[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in VALID_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", "ws://unused:1/v1/realtime")
        monkeypatch.setattr(mut.sys, "argv", ["multi_user_transcriber.py"])
        monkeypatch.setattr(mut, "_start_emulator", lambda: "ws://127.0.0.1:9/v1/realtime")
        mut.main(["dev", "--emulator"])
        assert run_app == [mut.server]
        # stripped for LiveKit's CLI; inherited by the job processes through the environment
        assert mut.sys.argv == ["multi_user_transcriber.py", "dev"]
        assert mut.os.environ["VOXTRAL_VLLM_BASE_URL"] == "ws://127.0.0.1:9/v1/realtime"

    def test_background_emulator_serves_and_stops(self) -> None:
        emulator = mut.BackgroundEmulator()
        url = emulator.start()
        try:
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
            health = url.replace("ws://", "http://").replace("/v1/realtime", "/health")
            with urllib.request.urlopen(health, timeout=5) as response:
                assert response.status == 200
        finally:
            emulator.stop()
        assert not emulator._thread.is_alive()

    def test_server_registers_the_entrypoint_and_setup(self) -> None:
        assert mut.server.setup_fnc is mut.prewarm
        assert mut.server._entrypoint_fnc is mut.entrypoint


class _FakeProc:
    def __init__(self) -> None:
        self.userdata: dict[str, Any] = {}


def test_prewarm_loads_config_and_vad_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    sentinel = object()

    def fake_load_vad(choice: str) -> object:
        loads.append(choice)
        return sentinel

    monkeypatch.setattr(mut, "load_vad", fake_load_vad)
    monkeypatch.setenv("MAX_PARTICIPANTS", "3")
    proc = _FakeProc()
    mut.prewarm(proc)
    assert loads == ["none"]
    assert proc.userdata[mut._CONFIG_KEY].max_participants == 3
    assert proc.userdata[mut._VAD_KEY] is sentinel


def test_no_vad_by_default() -> None:
    assert mut.load_vad("none") is None


# ============================================================================================
# MultiUserTranscriber: the per-participant lifecycle
# ============================================================================================


@pytest.fixture
def room() -> FakeRoom:
    return FakeRoom()


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


@pytest.fixture
async def transcriber(room: FakeRoom, factory: FakeFactory) -> AsyncIterator[Any]:
    t = mut.MultiUserTranscriber(
        room, factory, max_participants=50, restart_delay=0.01, max_restart_delay=0.05
    )
    t.start()
    yield t
    await t.aclose()


class TestLifecycle:
    async def test_join_with_microphone_starts_one_pipeline(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        room.join("alice")
        await wait_until(lambda: transcriber.pipeline_for("alice") is not None)
        await settle()
        # published + subscribed + connected events collapse into a single pipeline
        assert [p.identity for p in factory.pipelines] == ["alice"]
        assert factory.pipelines[0].calls == []
        assert transcriber.captioned == {"alice"}

    async def test_pipeline_waits_for_a_microphone(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        bob = room.join("bob", mic=False)
        room.publish(bob, source=CAMERA)
        await settle()
        assert factory.pipelines == []
        room.publish(bob)
        await wait_until(lambda: factory.live() == {"bob"})

    async def test_mute_and_unmute_reach_the_running_pipeline(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        pub = next(iter(alice.track_publications.values()))
        room.set_muted(alice, pub, True)
        await wait_until(lambda: factory.pipelines[0].calls == ["mute"])
        room.set_muted(alice, pub, False)
        await wait_until(lambda: factory.pipelines[0].calls == ["mute", "unmute"])
        await settle()
        assert len(factory.pipelines) == 1  # muting never restarts the session

    async def test_joining_muted_starts_muted(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        room.join("carol", muted=True)
        await wait_until(lambda: [p.calls for p in factory.of("carol")] == [["mute"]])

    async def test_own_and_local_track_mutes_are_ignored(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        # the SDK also reports mutes of the agent's own (local) tracks
        room.emit("track_muted", room.local_participant, make_publication())
        await settle()
        assert factory.pipelines[0].calls == []

    async def test_unpublish_closes_and_republish_starts_fresh(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        first_pub = next(iter(alice.track_publications.values()))
        room.unpublish(alice, first_pub)
        await wait_until(lambda: factory.pipelines[0].closed)
        assert factory.pipelines[0].calls == ["drain", "close"]
        assert transcriber.captioned == frozenset()
        room.publish(alice)
        await wait_until(lambda: factory.live() == {"alice"})
        assert len(factory.of("alice")) == 2

    async def test_camera_unpublish_does_not_touch_captions(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        camera = room.publish(alice, source=CAMERA)
        await wait_until(lambda: factory.live() == {"alice"})
        room.unpublish(alice, camera)
        await settle()
        assert factory.pipelines[0].calls == []

    async def test_quick_republish_gets_a_new_pipeline(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        pub = next(iter(alice.track_publications.values()))
        # both events land before the slot's task runs again
        room.unpublish(alice, pub)
        room.publish(alice)
        await wait_until(lambda: len(factory.of("alice")) == 2 and factory.live() == {"alice"})
        assert factory.pipelines[0].calls == ["drain", "close"]

    async def test_leave_drains_then_closes(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        room.leave(alice)
        await wait_until(lambda: transcriber.captioned == frozenset())
        assert factory.pipelines[0].calls == ["drain", "close"]

    async def test_reconnecting_participant_gets_a_new_pipeline(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        room.leave(alice, rtc.DisconnectReason.SIGNAL_CLOSE)
        room.join("alice")  # same identity, new participant object
        await wait_until(lambda: len(factory.of("alice")) == 2 and factory.live() == {"alice"})
        assert factory.pipelines[0].calls == ["drain", "close"]

    async def test_many_participants_at_once(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        people = [room.join(f"user{i:02d}", muted=i % 3 == 0) for i in range(30)]
        await wait_until(lambda: len(factory.live()) == 30)
        await settle()
        for i, person in enumerate(people):
            expected = [["mute"] if i % 3 == 0 else []]  # one pipeline each; muted ones muted
            assert [p.calls for p in factory.of(person.identity)] == expected
        for person in people[::2]:
            room.leave(person)
        await wait_until(lambda: len(factory.live()) == 15)
        assert factory.live() == {p.identity for p in people[1::2]}
        assert len(factory.pipelines) == 30

    @pytest.mark.parametrize(
        ("kind", "attributes"),
        [
            (AGENT, {}),
            (EGRESS, {}),
            # an avatar worker joins as STANDARD but publishes on behalf of an agent
            (rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, {ATTRIBUTE_PUBLISH_ON_BEHALF: "a"}),
        ],
    )
    async def test_agents_are_ignored(
        self,
        room: FakeRoom,
        factory: FakeFactory,
        transcriber: Any,
        kind: rtc.ParticipantKind.ValueType,
        attributes: dict[str, str],
    ) -> None:
        other = room.join("other-agent", kind=kind, attributes=attributes)
        room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        pub = next(iter(other.track_publications.values()))
        room.set_muted(other, pub, True)
        room.leave(other)
        await settle()
        assert transcriber.captioned == {"alice"}
        assert [p.identity for p in factory.pipelines] == ["alice"]

    async def test_sip_callers_are_captioned(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        room.join("+15550100", kind=SIP)
        await wait_until(lambda: factory.live() == {"+15550100"})

    async def test_participants_present_before_connect_via_reconcile(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        room.add_existing("early")
        room.add_existing("muted-early", muted=True)
        room.add_existing("listener", mic=False)
        transcriber.reconcile()
        await wait_until(lambda: factory.live() == {"early", "muted-early"})
        await wait_until(lambda: factory.of("muted-early")[0].calls == ["mute"])

    async def test_room_reconnection_reconciles(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        alice = room.join("alice")
        room.join("bob")
        await wait_until(lambda: factory.live() == {"alice", "bob"})
        # while the agent was reconnecting, alice left and dave joined, unseen
        del room.remote_participants[alice.identity]
        room.add_existing("dave")
        room.emit("reconnected")
        await wait_until(lambda: factory.live() == {"bob", "dave"})

    async def test_cap_reached_logs_and_admits_when_a_slot_frees(
        self, room: FakeRoom, factory: FakeFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        transcriber = mut.MultiUserTranscriber(room, factory, max_participants=2)
        transcriber.start()
        try:
            alice = room.join("alice")
            room.join("bob")
            with caplog.at_level(logging.WARNING, logger="voxtral-transcriber"):
                room.join("carol")
                room.join("dave")
                await settle()
            assert factory.live() == {"alice", "bob"}
            assert transcriber.waiting == ("carol", "dave")
            reached = [r.getMessage() for r in caplog.records if "MAX_PARTICIPANTS" in r.message]
            assert len(reached) == 2  # one line per participant turned away, not per event
            assert (
                "MAX_PARTICIPANTS=2 reached: not captioning 'carol' in room 'standup'"
                in (reached[0])
            )

            room.leave(alice)
            await wait_until(lambda: factory.live() == {"bob", "carol"})
            assert transcriber.waiting == ("dave",)
        finally:
            await transcriber.aclose()

    async def test_waiting_participant_who_leaves_is_forgotten(
        self, room: FakeRoom, factory: FakeFactory
    ) -> None:
        transcriber = mut.MultiUserTranscriber(room, factory, max_participants=1)
        transcriber.start()
        try:
            alice = room.join("alice")
            bob = room.join("bob")
            await settle()
            room.leave(bob)
            assert transcriber.waiting == ()
            room.leave(alice)
            await wait_until(lambda: transcriber.captioned == frozenset())
            assert [p.identity for p in factory.pipelines] == ["alice"]
        finally:
            await transcriber.aclose()

    async def test_pipeline_that_ends_by_itself_is_restarted(
        self,
        room: FakeRoom,
        factory: FakeFactory,
        transcriber: Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        alice = room.join("alice", muted=True)
        await wait_until(lambda: factory.live() == {"alice"})
        with caplog.at_level(logging.WARNING, logger="voxtral-transcriber"):
            factory.pipelines[0].fail()
            await wait_until(lambda: len(factory.of("alice")) == 2)
        assert "stopped unexpectedly" in caplog.text
        assert factory.pipelines[0].calls == ["mute", "failed", "release"]
        # the replacement starts in the participant's current (muted) state
        await wait_until(lambda: factory.pipelines[1].calls == ["mute"])
        room.leave(alice)
        await wait_until(lambda: factory.live() == set())

    async def test_failed_start_is_retried(
        self,
        room: FakeRoom,
        factory: FakeFactory,
        transcriber: Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        factory.failures_left = 2
        with caplog.at_level(logging.ERROR, logger="voxtral-transcriber"):
            room.join("alice")
            await wait_until(lambda: factory.live() == {"alice"})
        assert caplog.text.count("could not start captions for 'alice'") == 2

    async def test_participant_leaving_while_start_fails_stops_retrying(
        self, room: FakeRoom, factory: FakeFactory, transcriber: Any
    ) -> None:
        factory.failures_left = 1_000
        alice = room.join("alice")
        await settle()
        room.leave(alice)
        await wait_until(lambda: transcriber.captioned == frozenset())
        assert factory.pipelines == []


class TestShutdown:
    async def test_clean_shutdown_closes_everything_and_leaves_no_task(
        self, room: FakeRoom, factory: FakeFactory
    ) -> None:
        baseline = asyncio.all_tasks()
        listeners_before = room.listener_count()
        transcriber = mut.MultiUserTranscriber(room, factory, max_participants=3)
        transcriber.start()
        transcriber.start()  # idempotent
        for name in ("alice", "bob", "carol", "dave"):
            room.join(name)
        await wait_until(lambda: len(factory.live()) == 3)

        await transcriber.aclose()

        assert all(p.calls == ["drain", "close"] for p in factory.pipelines)
        assert factory.live() == set()
        assert transcriber.captioned == frozenset()
        assert transcriber.waiting == ()
        assert room.listener_count() == listeners_before
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
        assert leftover == {asyncio.current_task()} or leftover == set()

        # events after shutdown are ignored, and closing again is a no-op
        room.join("eve")
        transcriber.reconcile()
        await settle()
        assert len(factory.pipelines) == 3
        await transcriber.aclose()

    async def test_pipeline_that_will_not_close_is_cancelled(
        self, room: FakeRoom, factory: FakeFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        factory.hang_on_close = True
        baseline = asyncio.all_tasks()
        transcriber = mut.MultiUserTranscriber(room, factory, close_timeout=0.05)
        transcriber.start()
        room.join("alice")
        await wait_until(lambda: factory.live() == {"alice"})
        with caplog.at_level(logging.WARNING, logger="voxtral-transcriber"):
            await transcriber.aclose()
        assert "did not close within" in caplog.text
        assert factory.pipelines[0].calls == ["drain"]
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
        assert leftover <= {asyncio.current_task()}

    async def test_close_without_start(self, room: FakeRoom, factory: FakeFactory) -> None:
        transcriber = mut.MultiUserTranscriber(room, factory)
        await transcriber.aclose()
        assert room.listener_count() == 0

    def test_rejects_a_zero_cap(self, room: FakeRoom, factory: FakeFactory) -> None:
        with pytest.raises(ValueError, match="max_participants"):
            mut.MultiUserTranscriber(room, factory, max_participants=0)


# ============================================================================================
# AgentSessionPipeline over a stub session
# ============================================================================================


class _StubInput:
    def __init__(self, log: list[str]) -> None:
        self._log = log

    def set_audio_enabled(self, enabled: bool) -> None:
        self._log.append(f"audio_enabled={enabled}")


class _StubSTT:
    def __init__(self, log: list[str]) -> None:
        self._log = log

    async def aclose(self) -> None:
        self._log.append("stt.aclose")


class _StubSession:
    """Just what AgentSessionPipeline calls on an AgentSession."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.stt = _StubSTT(self.log)
        self.input = _StubInput(self.log)
        self.listeners: dict[str, Any] = {}
        self.running = True

    def on(self, event: str, callback: Any) -> None:
        self.listeners[event] = callback

    def commit_user_turn(self, **kwargs: Any) -> asyncio.Future[str]:
        if not self.running:
            raise RuntimeError("AgentSession isn't running")
        self.log.append(f"commit_user_turn(skip_reply={kwargs.get('skip_reply')})")
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_exception(RuntimeError("no transcript"))  # must not leak as "never retrieved"
        return fut

    async def drain(self) -> None:
        if not self.running:
            raise RuntimeError("AgentSession isn't running")
        self.log.append("drain")

    async def aclose(self) -> None:
        self.log.append("aclose")
        if self.running:
            self.running = False
            self.listeners["close"](CloseEvent(reason=CloseReason.USER_INITIATED))


class TestAgentSessionPipeline:
    async def test_mute_detaches_audio_and_finalizes_the_caption(self) -> None:
        session = _StubSession()
        pipeline = mut.AgentSessionPipeline(session, "alice", owned_stt=session.stt)
        await pipeline.set_muted(True)
        await pipeline.set_muted(False)
        assert session.log == [
            "audio_enabled=False",
            "commit_user_turn(skip_reply=True)",
            "audio_enabled=True",
        ]

    async def test_aclose_drains_then_closes_once(self) -> None:
        session = _StubSession()
        pipeline = mut.AgentSessionPipeline(session, "alice", owned_stt=session.stt)
        await pipeline.aclose()
        await asyncio.wait_for(pipeline.wait_closed(), 1)
        await pipeline.aclose()
        # AgentSession does not close the STT it was given; the pipeline owns it
        assert session.log == ["drain", "aclose", "stt.aclose"]
        assert pipeline.close_event is not None

    async def test_session_closing_by_itself_ends_the_pipeline(self) -> None:
        session = _StubSession()
        pipeline = mut.AgentSessionPipeline(session, "alice", owned_stt=session.stt)
        waiter = asyncio.ensure_future(pipeline.wait_closed())
        await settle()
        assert not waiter.done()
        await session.aclose()  # e.g. the STT failed for good
        await asyncio.wait_for(waiter, 1)
        await pipeline.set_muted(True)  # a closed session is not committed
        await pipeline.aclose()  # releases the STT; the session is not closed twice
        assert session.log == ["aclose", "audio_enabled=False", "stt.aclose"]


def test_room_options_publish_user_captions_for_the_linked_participant() -> None:
    options = mut.caption_room_options("alice")
    assert options.participant_identity == "alice"
    # text output on: that is where RoomIO publishes the *user* transcription
    assert options.get_text_output_options() is not None
    assert options.get_audio_input_options() is not None
    assert options.get_audio_input_options().pre_connect_audio is False
    assert options.get_text_input_options() is None
    assert options.get_audio_output_options() is None
    assert options.close_on_disconnect is False
    assert rtc.ParticipantKind.PARTICIPANT_KIND_AGENT not in options.participant_kinds
    assert mut.caption_turn_handling()["turn_detection"] == "stt"


# ============================================================================================
# Captions as published to the room
# ============================================================================================


def _speech(kind: stt.SpeechEventType, text: str = "") -> stt.SpeechEvent:
    alternatives = [stt.SpeechData(language=LanguageCode("en"), text=text)] if text else []
    return stt.SpeechEvent(type=kind, alternatives=alternatives)


SCRIPT = [
    _speech(SpeechEventType.START_OF_SPEECH),
    _speech(SpeechEventType.INTERIM_TRANSCRIPT, "good"),
    _speech(SpeechEventType.INTERIM_TRANSCRIPT, "good morning every"),
    _speech(SpeechEventType.FINAL_TRANSCRIPT, "Good morning, everyone."),
    _speech(SpeechEventType.END_OF_SPEECH),
    _speech(SpeechEventType.START_OF_SPEECH),
    _speech(SpeechEventType.INTERIM_TRANSCRIPT, "let's"),
    _speech(SpeechEventType.FINAL_TRANSCRIPT, "Let's start."),
    _speech(SpeechEventType.END_OF_SPEECH),
]


def _captions(room: FakeRoom, identity: str | None = None) -> list[PublishedText]:
    return [
        p
        for p in room.local_participant.published
        if p.topic == TOPIC_TRANSCRIPTION and (identity is None or p.sender_identity == identity)
    ]


def _assert_segment_rules(captions: list[PublishedText], track_sid: str) -> list[list[str]]:
    """Check LiveKit's caption contract and return the texts grouped by segment."""
    segments: dict[str, list[PublishedText]] = {}
    for caption in captions:
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
    ids = [c.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID] for c in captions]
    assert ids == sorted(ids, key=list(segments).index)
    return grouped


async def test_transcription_output_segment_ids() -> None:
    """SpeechEvents through LiveKit's real stream output, fed the way RoomIO feeds it."""
    room = FakeRoom()
    alice = room.join("alice", subscribe=False)
    mic_sid = next(iter(alice.track_publications))
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

    captions = _captions(room)
    assert all(c.sender_identity == "alice" for c in captions)
    assert _assert_segment_rules(captions, mic_sid) == [
        ["good", "good morning every", "Good morning, everyone.", "Good morning, everyone."],
        ["let's", "Let's start.", "Let's start."],
    ]


async def test_legacy_clients_also_get_transcription_packets() -> None:
    """While a participant runs an old client protocol, RoomIO's output (the one the session
    uses) also sends ``rtc.Transcription`` packets: one segment, updated, then final."""
    room = FakeRoom()
    alice = room.join("alice", subscribe=False)
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
    assert [c.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] for c in _captions(room)] == [
        "false",
        "false",
        "true",
    ]


_CONN_OPTIONS = APIConnectOptions()


class ScriptedSTT(stt.STT[Any]):
    """An STT whose streams emit what the test tells them; a flush finalizes the interim."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True, interim_results=True, manual_flush=True
            )
        )
        self.streams: list[ScriptedStream] = []

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


class ScriptedStream(stt.RecognizeStream):
    pending_interim = ""

    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel) and self.pending_interim:
                self.say(_speech(SpeechEventType.FINAL_TRANSCRIPT, self.pending_interim))
                self.say(_speech(SpeechEventType.END_OF_SPEECH))

    def say(self, ev: stt.SpeechEvent) -> None:
        if ev.type == SpeechEventType.INTERIM_TRANSCRIPT:
            self.pending_interim = ev.alternatives[0].text
        elif ev.type == SpeechEventType.FINAL_TRANSCRIPT:
            self.pending_interim = ""
        self._event_ch.send_nowait(ev)


@pytest.fixture
def scripted() -> dict[str, ScriptedSTT]:
    return {}


# closing a session waits this long for a pending final; the scripted STT answers a flush at
# once, so a short timeout only shortens the wait when nothing is pending
CLOSE_TIMEOUT = 0.2


async def _start_session(
    room: FakeRoom, identity: str, stts: dict[str, ScriptedSTT]
) -> tuple[Any, ScriptedStream]:
    stts[identity] = ScriptedSTT()
    factory = mut.CaptionSessionFactory(
        room, stt_factory=lambda: stts[identity], close_transcript_timeout=CLOSE_TIMEOUT
    )
    pipeline = await factory(room.remote_participants[identity])
    await wait_until(lambda: bool(stts[identity].streams))
    return pipeline, stts[identity].streams[0]


async def _say(stream: ScriptedStream, events: list[stt.SpeechEvent]) -> None:
    for ev in events:
        stream.say(ev)
        await asyncio.sleep(0.01)


class TestCaptionSessions:
    """The example's real AgentSession wiring, with a scripted STT in place of Voxtral."""

    async def test_captions_published_for_the_participant(
        self, scripted: dict[str, ScriptedSTT]
    ) -> None:
        room = FakeRoom()
        alice = room.join("alice", subscribe=False)
        mic_sid = next(iter(alice.track_publications))
        pipeline, stream = await _start_session(room, "alice", scripted)

        await _say(stream, SCRIPT)
        await wait_until(lambda: len(_captions(room)) == 7)
        await pipeline.aclose()

        captions = _captions(room)
        assert {c.sender_identity for c in captions} == {"alice"}
        assert _assert_segment_rules(captions, mic_sid) == [
            ["good", "good morning every", "Good morning, everyone.", "Good morning, everyone."],
            ["let's", "Let's start.", "Let's start."],
        ]
        # the agent never answered, and only user transcriptions went out
        assert all(c.topic == TOPIC_TRANSCRIPTION for c in room.local_participant.published)

    async def test_two_participants_get_their_own_captions(
        self, scripted: dict[str, ScriptedSTT]
    ) -> None:
        room = FakeRoom()
        alice = room.join("alice", subscribe=False)
        bob = room.join("bob", subscribe=False)
        alice_pipeline, alice_stream = await _start_session(room, "alice", scripted)
        bob_pipeline, bob_stream = await _start_session(room, "bob", scripted)

        await asyncio.gather(_say(alice_stream, SCRIPT), _say(bob_stream, SCRIPT[:5]))
        await wait_until(lambda: len(_captions(room, "alice")) == 7)
        await wait_until(lambda: len(_captions(room, "bob")) == 4)
        await asyncio.gather(alice_pipeline.aclose(), bob_pipeline.aclose())

        alice_ids = _assert_segment_rules(
            _captions(room, "alice"), next(iter(alice.track_publications))
        )
        bob_ids = _assert_segment_rules(_captions(room, "bob"), next(iter(bob.track_publications)))
        assert len(alice_ids) == 2 and len(bob_ids) == 1
        seg = ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID
        assert not {c.attributes[seg] for c in _captions(room, "alice")} & {
            c.attributes[seg] for c in _captions(room, "bob")
        }

    async def test_mute_finalizes_the_caption_in_progress(
        self, scripted: dict[str, ScriptedSTT]
    ) -> None:
        room = FakeRoom()
        room.join("alice", subscribe=False)
        pipeline, stream = await _start_session(room, "alice", scripted)
        await _say(
            stream,
            [
                _speech(SpeechEventType.START_OF_SPEECH),
                _speech(SpeechEventType.INTERIM_TRANSCRIPT, "one more thing"),
            ],
        )
        await pipeline.set_muted(True)
        await wait_until(
            lambda: _captions(room)[-1].attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] == "true"
        )
        assert _captions(room)[-1].text == "one more thing"
        await pipeline.set_muted(False)
        await pipeline.aclose()

    async def test_leaving_mid_sentence_still_publishes_a_final(
        self, scripted: dict[str, ScriptedSTT]
    ) -> None:
        room = FakeRoom()
        room.join("alice", subscribe=False)
        pipeline, stream = await _start_session(room, "alice", scripted)
        await _say(
            stream,
            [
                _speech(SpeechEventType.START_OF_SPEECH),
                _speech(SpeechEventType.INTERIM_TRANSCRIPT, "see you"),
            ],
        )
        await wait_until(lambda: len(_captions(room)) == 1)
        await pipeline.aclose()  # drain, then close: the STT is flushed before RoomIO closes
        captions = _captions(room)
        # LiveKit publishes the final text once more as an update, then as the final
        assert [(c.text, c.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL]) for c in captions] == [
            ("see you", "false"),
            ("see you", "false"),
            ("see you", "true"),
        ]
        assert len({c.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID] for c in captions}) == 1

    async def test_transcriber_with_real_sessions_shuts_down_cleanly(
        self, scripted: dict[str, ScriptedSTT]
    ) -> None:
        room = FakeRoom()
        baseline = asyncio.all_tasks()
        stts: list[ScriptedSTT] = []

        def new_stt() -> ScriptedSTT:
            stts.append(ScriptedSTT())
            return stts[-1]

        transcriber = mut.MultiUserTranscriber(
            room,
            mut.CaptionSessionFactory(
                room, stt_factory=new_stt, close_transcript_timeout=CLOSE_TIMEOUT
            ),
        )
        transcriber.start()
        alice = room.join("alice", subscribe=False)
        room.join("bob", subscribe=False)
        room.join("carol", subscribe=False, muted=True)  # joins muted: audio detached at start
        await wait_until(lambda: len(stts) == 3 and all(s.streams for s in stts))
        await wait_until(lambda: transcriber.pipeline_for("carol") is not None)
        await wait_until(lambda: transcriber.pipeline_for("bob") is not None)
        await _say(stts[0].streams[0], SCRIPT[:5])
        room.leave(alice)
        # nothing is pending, so closing waits out the close-transcript timeout
        await wait_until(lambda: transcriber.captioned == {"bob", "carol"})
        carol_session = transcriber.pipeline_for("carol").session
        assert carol_session.input.audio_enabled is False
        await transcriber.aclose()

        assert len(_captions(room, "alice")) == 4
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
        assert leftover <= {asyncio.current_task()}


async def test_entrypoint_shares_the_process_vad_between_participants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VAD is loaded by ``prewarm`` once per process; every participant's STT gets it."""
    shared_vad = object()
    given: list[object] = []

    def fake_build_stt(config: Any, vad_model: Any = None) -> ScriptedSTT:
        given.append(vad_model)
        return ScriptedSTT()

    def no_loading(choice: str) -> None:
        raise AssertionError("the entrypoint must not load a VAD")

    monkeypatch.setattr(mut, "build_stt", fake_build_stt)
    monkeypatch.setattr(mut, "load_vad", no_loading)
    room = FakeRoom()
    ctx = FakeJobContext(room, {mut._CONFIG_KEY: mut.TranscriberConfig(), mut._VAD_KEY: shared_vad})
    await mut.entrypoint(ctx)
    room.join("alice", subscribe=False)
    room.join("bob", subscribe=False)
    [shutdown] = ctx.shutdown_callbacks
    await wait_until(lambda: len(shutdown.__self__.captioned) == 2)  # type: ignore[attr-defined]
    await wait_until(lambda: len(given) == 2)
    assert given == [shared_vad, shared_vad]
    await shutdown()
