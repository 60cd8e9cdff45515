"""examples/multi_user_transcriber.py, a smoke test: its configuration, its CLI hand-over and
its entrypoint wiring. The captioning itself is RoomCaptioner's, tested in tests/unit
(lifecycle, captions) and tests/integration (with the Voxtral STT and the emulator)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import AutoSubscribe

import livekit_plugins_voxtral_vllm.testing as testing
from livekit_plugins_voxtral_vllm import STT, RoomCaptioner

from ..fake_livekit import FakeJobContext, FakeRoom, ScriptedSTT, load_example, wait_until

mut = load_example("multi_user_transcriber")

VALID_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "secret",
}
ALL_VARIABLES = [*VALID_ENV, *mut.STT_ENV, "VOXTRAL_VAD", "MAX_PARTICIPANTS"]


class TestConfig:
    def test_valid_and_defaults(self) -> None:
        assert mut.check_config(VALID_ENV) == []
        assert mut.stt_options({}) == {"transcription_delay_ms": 480}

    def test_values_reach_the_stt(self) -> None:
        env = {
            "VOXTRAL_VLLM_BASE_URL": "wss://gpu.example:8443/v1/realtime",
            "VOXTRAL_VLLM_MODEL": "mistralai/Voxtral-Mini-4B-Realtime-2602",
            "VOXTRAL_VLLM_API_KEY": "vllm-key-123",
            "VOXTRAL_LANGUAGE": " fr ",
            "VOXTRAL_TRANSCRIPTION_DELAY_MS": "2400",
        }
        assert mut.check_config({**VALID_ENV, **env}) == []
        stt = STT(**mut.stt_options(env))
        assert stt.base_url == "wss://gpu.example:8443/v1/realtime"
        assert stt._opts.api_key == "vllm-key-123" and stt._opts.language == "fr"
        assert stt._opts.transcription_delay_ms == 2400

    @pytest.mark.parametrize("missing", list(VALID_ENV))
    def test_missing_livekit_variable_is_named(self, missing: str) -> None:
        env = {k: v for k, v in VALID_ENV.items() if k != missing}
        assert mut.check_config({**env, missing: "  "}) == [f"{missing} is not set"]

    @pytest.mark.parametrize(
        ("name", "value", "says"),
        [
            ("LIVEKIT_URL", "localhost:7880", "is not a URL"),
            ("VOXTRAL_VLLM_BASE_URL", "ftp://vllm:8000/v1/realtime", "ftp"),
            ("VOXTRAL_TRANSCRIPTION_DELAY_MS", "500", "a multiple of 80"),
            ("VOXTRAL_TRANSCRIPTION_DELAY_MS", "fast", "must be an integer"),
            ("VOXTRAL_VAD", "webrtc", "'none' or 'silero'"),
            ("MAX_PARTICIPANTS", "0", "at least 1"),
            ("MAX_PARTICIPANTS", "lots", "at least 1"),
        ],
    )
    def test_bad_value_is_named(self, name: str, value: str, says: str) -> None:
        [problem] = mut.check_config({**VALID_ENV, name: value})
        assert problem.startswith(f"{name}={value!r}") and says in problem

    def test_every_problem_reported_at_once(self) -> None:
        problems = mut.check_config(
            {
                "MAX_PARTICIPANTS": "-1",
                "VOXTRAL_VAD": "maybe",
                "VOXTRAL_TRANSCRIPTION_DELAY_MS": "1",
            }
        )
        assert len(problems) == 6  # three LIVEKIT_* missing, and the three bad values

    def test_cli_flags_stand_in_for_livekit_variables(self) -> None:
        argv = ["start", "--url", "ws://lk:7880", "--api-key=k", "--api-secret", "s"]
        assert mut.check_config({}, argv) == []

    def test_silero_vad_is_accepted(self) -> None:
        assert mut.check_config({**VALID_ENV, "VOXTRAL_VAD": "silero"}) == []


class TestMain:
    @pytest.fixture
    def run_app(self, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
        calls: list[Any] = []
        monkeypatch.setattr(mut.cli, "run_app", calls.append)
        for name in ALL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        return calls

    def test_start_fails_before_running_and_names_the_variables(
        self, run_app: list[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exc:
            mut.main(["start"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "LIVEKIT_URL is not set" in err and "LIVEKIT_API_SECRET is not set" in err
        assert run_app == []

    def test_valid_configuration_hands_over_to_livekit_cli(
        self, run_app: list[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in VALID_ENV.items():
            monkeypatch.setenv(name, value)
        mut.main(["dev"])
        mut.main(["start", "--help"])
        mut.main([])
        assert run_app == [mut.server] * 3
        assert mut.server.setup_fnc is mut.prewarm
        assert mut.server._entrypoint_fnc is mut.entrypoint

    def test_emulator_flag_points_the_worker_at_an_in_process_emulator(
        self, run_app: list[Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in VALID_ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", "ws://unused:1/v1/realtime")
        monkeypatch.setattr(sys, "argv", ["multi_user_transcriber.py"])
        started: list[testing.BackgroundEmulator] = []

        class Emulator(testing.BackgroundEmulator):
            def start(self, timeout: float = 10.0) -> str:
                started.append(self)
                return super().start(timeout)

        monkeypatch.setattr(testing, "BackgroundEmulator", Emulator)
        try:
            mut.main(["dev", "--emulator"])
            assert run_app == [mut.server]
            # stripped for LiveKit's CLI; inherited by the job processes through the environment
            assert sys.argv == ["multi_user_transcriber.py", "dev"]
            assert os.environ["VOXTRAL_VLLM_BASE_URL"] == started[0].url
            assert started[0].running
        finally:
            for emulator in started:
                emulator.stop()


def test_prewarm_loads_no_vad_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXTRAL_VAD", raising=False)
    proc = type("FakeJobProcess", (), {"userdata": {}})()
    mut.prewarm(proc)
    assert proc.userdata == {"vad": None}


@pytest.fixture
async def emulator() -> AsyncIterator[testing.VLLMRealtimeEmulator]:
    async with testing.VLLMRealtimeEmulator(fast=True) as emu:
        yield emu


async def test_entrypoint_captions_the_room_with_the_configured_stt(
    emulator: testing.VLLMRealtimeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings from the environment, captions for participants already present and joining
    later, all closed by the job's shutdown callback."""
    monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", emulator.url)
    monkeypatch.setenv("VOXTRAL_TRANSCRIPTION_DELAY_MS", "960")
    monkeypatch.setenv("MAX_PARTICIPANTS", "1")
    room = FakeRoom()
    room.add_existing("early")
    ctx = FakeJobContext(room, {"vad": None})
    await mut.entrypoint(ctx)

    assert ctx.connected_with == AutoSubscribe.AUDIO_ONLY
    [shutdown] = ctx.shutdown_callbacks
    captioner = shutdown.__self__  # type: ignore[attr-defined]
    assert isinstance(captioner, RoomCaptioner)
    await wait_until(lambda: captioner.session("early") is not None, timeout=10)
    room.join("late")
    assert captioner.waiting == ("late",)  # MAX_PARTICIPANTS=1
    room.leave(room.remote_participants["early"])
    await wait_until(lambda: captioner.session("late") is not None, timeout=10)
    stt = captioner.session("late").stt
    assert isinstance(stt, STT) and stt.base_url == emulator.url
    assert stt._opts.transcription_delay_ms == 960

    await shutdown()
    assert captioner.captioned == frozenset() and room.listener_count() == 0


async def test_entrypoint_shares_the_process_vad_between_participants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VAD is loaded by ``prewarm`` once per process; every participant's STT gets it."""
    shared_vad = object()
    built: list[dict[str, Any]] = []

    def stt(**options: Any) -> ScriptedSTT:
        built.append(options)
        return ScriptedSTT()

    monkeypatch.setattr(mut.voxtral_vllm, "STT", stt)
    room = FakeRoom()
    ctx = FakeJobContext(room, {"vad": shared_vad})
    await mut.entrypoint(ctx)
    room.join("alice")
    room.join("bob")
    [shutdown] = ctx.shutdown_callbacks
    await wait_until(lambda: len(built) == 2)
    assert [b["vad"] for b in built] == [shared_vad, shared_vad]
    await shutdown()
