"""``STT`` construction: every option validated up front with a message naming the bad value,
environment-variable defaults, URL normalisation, and reprs that never show the API key."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from livekit.agents import vad as lk_vad

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.stream_core import LagPolicy
from livekit_plugins_voxtral_vllm.stt import DEFAULT_BASE_URL, DEFAULT_MODEL

KEY = "sk-unit-5d1e0b7a"
ENV = ("VOXTRAL_VLLM_BASE_URL", "VOXTRAL_VLLM_MODEL", "VOXTRAL_VLLM_API_KEY")
PLUGIN_LOGGER = "livekit.plugins.voxtral_vllm"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


# -- defaults and environment -----------------------------------------------------------------


def test_defaults_without_environment() -> None:
    stt = STT()
    assert stt.base_url == DEFAULT_BASE_URL == "ws://127.0.0.1:8000/v1/realtime"
    assert stt.model == DEFAULT_MODEL
    assert stt._opts.api_key is None
    assert stt._opts.language == ""
    assert stt._opts.lag_policy is LagPolicy.CATCH_UP
    assert stt._opts.generation_cap is not None
    assert stt._opts.generation_cap.max_generation_s == 60.0
    assert STT(max_generation_s=None)._opts.generation_cap is None
    assert stt.provider == "vllm"
    caps = stt.capabilities
    assert caps.streaming and caps.interim_results


def test_environment_supplies_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", "https://gpu.internal/voxtral")
    monkeypatch.setenv("VOXTRAL_VLLM_MODEL", "voxtral-rt")
    monkeypatch.setenv("VOXTRAL_VLLM_API_KEY", KEY)
    stt = STT()
    assert stt.base_url == "wss://gpu.internal/voxtral/v1/realtime"
    assert stt.model == "voxtral-rt"
    assert stt._opts.api_key == KEY


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", "https://gpu.internal/voxtral")
    monkeypatch.setenv("VOXTRAL_VLLM_MODEL", "voxtral-rt")
    monkeypatch.setenv("VOXTRAL_VLLM_API_KEY", KEY)
    stt = STT(base_url="gpu2:9000", model="other", api_key="sk-explicit")
    assert stt.base_url == "ws://gpu2:9000/v1/realtime"
    assert stt.model == "other"
    assert stt._opts.api_key == "sk-explicit"


def test_empty_environment_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.setenv(name, "")
    stt = STT()
    assert stt.base_url == DEFAULT_BASE_URL
    assert stt.model == DEFAULT_MODEL
    assert stt._opts.api_key is None


def test_a_bad_url_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", "ftp://gpu:8000")
    with pytest.raises(ValueError, match="'ftp'"):
        STT()


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://gpu:8000", "ws://gpu:8000/v1/realtime"),
        ("wss://gpu:8443/v1", "wss://gpu:8443/v1/realtime"),
        ("http://gpu:8000/v1/realtime", "ws://gpu:8000/v1/realtime"),
        (
            "https://proxy.example.com/asr/voxtral",
            "wss://proxy.example.com/asr/voxtral/v1/realtime",
        ),
        ("gpu:8000", "ws://gpu:8000/v1/realtime"),
    ],
)
def test_base_url_is_normalised(url: str, expected: str) -> None:
    stt = STT(base_url=url)
    assert stt.base_url == expected
    assert expected in repr(stt)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ws://admin:s3cr3t-pw@gpu:8000", "credentials"),
        ("ftp://gpu:8000", "unexpected scheme 'ftp'"),
        ("ws://gpu:8000/v1/realtime?api_key=s3cr3t-pw", "query"),
        ("", "empty"),
        ("ws://:8000", "no host"),
        ("ws://gpu:port", "invalid port"),
    ],
)
def test_bad_base_url_is_a_value_error_at_construction(url: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        STT(base_url=url)
    assert needle in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)


# -- option validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"transcription_delay_ms": 500}, "transcription_delay_ms"),
        ({"transcription_delay_ms": 0}, "transcription_delay_ms"),
        ({"transcription_delay_ms": 2480}, "transcription_delay_ms"),
        ({"transcription_delay_ms": 480.0}, "transcription_delay_ms"),
        ({"transcription_delay_ms": True}, "transcription_delay_ms"),
        ({"preroll_ms": -1}, "preroll_ms"),
        ({"preroll_ms": 2001}, "preroll_ms"),
        ({"max_model_len": 10}, "max_model_len"),
        ({"max_model_len": "4096"}, "max_model_len"),
        ({"max_generation_s": 0}, "max_generation_s"),
        ({"max_generation_s": 4.9}, "max_generation_s"),
        ({"max_generation_s": -60}, "max_generation_s"),
        ({"max_generation_s": float("nan")}, "max_generation_s"),
        ({"max_generation_s": float("inf")}, "max_generation_s"),
        ({"max_generation_s": "60"}, "max_generation_s"),
        ({"max_generation_s": True}, "max_generation_s"),
        ({"blank_rut_s": 2.9}, "blank_rut_s"),
        ({"blank_rut_s": 0}, "blank_rut_s"),
        ({"blank_rut_s": -10}, "blank_rut_s"),
        ({"blank_rut_s": 601}, "blank_rut_s"),
        ({"blank_rut_s": float("nan")}, "blank_rut_s"),
        ({"blank_rut_s": float("inf")}, "blank_rut_s"),
        ({"blank_rut_s": "10"}, "blank_rut_s"),
        ({"blank_rut_s": True}, "blank_rut_s"),
        ({"max_lag_s": 0.1}, "max_lag_s"),
        ({"max_lag_s": "5"}, "max_lag_s"),
        ({"lag_policy": "drop"}, "lag_policy"),
        ({"input_stall_s": 0.0}, "input_stall_s"),
        ({"input_stall_s": -2}, "input_stall_s"),
        ({"generation_timeout_s": 0.5}, "generation_timeout_s"),
        ({"generation_timeout_s": None}, "generation_timeout_s"),
        ({"model": ""}, "model"),
        ({"model": "   "}, "model"),
        ({"min_silence_ms": 0}, "min_silence_ms"),
        ({"min_speech_ms": -5}, "min_speech_ms"),
        ({"sentence_pause_s": 0}, "sentence_pause_s"),
        ({"max_segment_s": -1.0}, "max_segment_s"),
        ({"sentence_pause_s": 2.0, "max_pause_s": 1.0}, "sentence_pause_s"),
    ],
)
def test_bad_option_is_a_value_error_naming_it_and_its_value(
    kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError) as info:
        STT(**kwargs)
    message = str(info.value)
    assert needle in message
    bad = kwargs[needle]
    assert repr(bad) in message or str(bad) in message, message


def test_transcription_delay_message_explains_the_step() -> None:
    with pytest.raises(ValueError, match=r"multiple of 80.*500"):
        STT(transcription_delay_ms=500)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transcription_delay_ms": 80},
        {"transcription_delay_ms": 2400},
        {"preroll_ms": 0},
        {"max_model_len": 121},  # the least for 480 ms (connection.min_max_model_len)
        {"max_generation_s": 5},
        {"max_generation_s": 86400.0},
        {"max_generation_s": None},
        {"blank_rut_s": 3},
        {"blank_rut_s": 600.0},
        {"blank_rut_s": None},
        {"max_lag_s": 0.5},
        {"lag_policy": "wait"},
        {"lag_policy": LagPolicy.CATCH_UP},
        {"input_stall_s": 0.1},
        {"generation_timeout_s": 1.0},
        {"generation_timeout_s": 3},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict[str, Any]) -> None:
    STT(**kwargs)


def test_blank_rut_message_gives_the_range_and_how_to_disable() -> None:
    with pytest.raises(ValueError, match=r"blank_rut_s .* from 3 to 600 \(or None .*got 1\.5"):
        STT(blank_rut_s=1.5)


def test_blank_rut_threshold_reaches_the_stream_options() -> None:
    assert STT()._opts.rut is not None and STT()._opts.rut.threshold_s == 10.0
    rut = STT(blank_rut_s=4)._opts.rut
    assert rut is not None and rut.threshold_s == 4.0
    assert STT(blank_rut_s=None)._opts.rut is None


def test_lag_policy_string_becomes_the_enum() -> None:
    assert STT(lag_policy="wait")._opts.lag_policy is LagPolicy.WAIT


@pytest.mark.parametrize("name", ["max_lag_s", "input_stall_s", "generation_timeout_s"])
def test_nan_durations_are_refused(name: str) -> None:
    kwargs: dict[str, Any] = {name: math.nan}
    with pytest.raises(ValueError, match=name):
        STT(**kwargs)


@pytest.mark.parametrize("vad", ["silero", object(), 1.0])
def test_vad_of_a_wrong_type_is_a_type_error(vad: object) -> None:
    with pytest.raises(TypeError) as info:
        STT(vad=vad)  # type: ignore[arg-type]
    assert "vad" in str(info.value)
    assert type(vad).__name__ in str(info.value)


def test_a_livekit_vad_is_accepted() -> None:
    class _Vad(lk_vad.VAD):
        def __init__(self) -> None:
            super().__init__(capabilities=lk_vad.VADCapabilities(update_interval=0.01))

        def stream(self) -> lk_vad.VADStream:
            raise NotImplementedError

    vad = _Vad()
    assert STT(vad=vad)._vad is vad


def test_target_streaming_delay_is_accepted_and_logged_once_as_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    STT()
    assert not [r for r in caplog.records if "target_streaming_delay_ms" in r.getMessage()]
    stt = STT(target_streaming_delay_ms=240)
    notes = [r for r in caplog.records if "target_streaming_delay_ms" in r.getMessage()]
    assert len(notes) == 1
    (note,) = notes
    assert note.name == PLUGIN_LOGGER
    assert note.levelno >= logging.INFO
    assert "ignored" in note.getMessage() and "240" in note.getMessage()
    # the server's delay is what counts; the ignored option changes nothing
    assert stt._opts.transcription_delay_ms == 480


# -- reprs --------------------------------------------------------------------------------------


def test_reprs_never_show_the_api_key() -> None:
    stt = STT(base_url="wss://gpu.example.com", api_key=KEY)
    for text in (repr(stt), str(stt), repr(stt._opts), str(stt._opts)):
        assert KEY not in text
    assert "api_key='***'" in repr(stt._opts)
    assert "api_key=None" in repr(STT()._opts)
    assert "wss://gpu.example.com/v1/realtime" in repr(stt)


def test_update_options_validates_like_the_constructor() -> None:
    stt = STT(language="en")
    with pytest.raises(ValueError, match="sentence_pause_s"):
        stt.update_options(sentence_pause_s=-1.0)
    with pytest.raises(ValueError, match="max_pause_s"):
        stt.update_options(sentence_pause_s=5.0)  # > max_pause_s (1.2)
    # nothing changed on failure
    assert stt._opts.segmenter.sentence_pause_s == 0.4
    stt.update_options(language="fr", max_pause_s=2.0, sentence_pause_s=1.5)
    assert stt._opts.language == "fr"
    assert stt._opts.segmenter.sentence_pause_s == 1.5
    assert stt._opts.segmenter.max_pause_s == 2.0
