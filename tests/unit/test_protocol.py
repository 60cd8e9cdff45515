"""Unit tests of ``protocol.py``: the typed wire messages of vLLM's ``/v1/realtime``.

Every server frame below is byte for byte what vLLM 0.33 sends (pydantic ``model_dump_json``:
compact, ``type`` first, fields in declaration order). Reference: ``vllm-realtime.md`` §1.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from livekit_plugins_voxtral_vllm import protocol
from livekit_plugins_voxtral_vllm.protocol import (
    COMMIT,
    COMMIT_FINAL,
    ErrorCode,
    ErrorEvent,
    ErrorKind,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    MalformedMessage,
    SessionCreated,
    SessionUpdate,
    TranscriptionDelta,
    TranscriptionDone,
    Usage,
    dump,
    encode_append,
    encode_append_pcm,
    parse_server_message,
)

from .strategies import ANY_FRAME

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"

SESSION_CREATED = '{"type":"session.created","id":"sess-8be46ea79d150628","created":1795316382}'
DELTA_EMPTY = '{"type":"transcription.delta","delta":""}'
DELTA_WORD = '{"type":"transcription.delta","delta":" First"}'
DONE_HI = (
    '{"type":"transcription.done","text":" hi","usage":{"prompt_tokens":39,"total_tokens":45,'
    '"completion_tokens":6,"prompt_tokens_details":null,"completion_tokens_details":null}}'
)
DONE_EMPTY = (
    '{"type":"transcription.done","text":"","usage":{"prompt_tokens":0,"total_tokens":0,'
    '"completion_tokens":0,"prompt_tokens_details":null,"completion_tokens_details":null}}'
)
# vLLM 0.16-0.27: no completion_tokens_details key
DONE_HI_027 = (
    '{"type":"transcription.done","text":" hi","usage":{"prompt_tokens":39,"total_tokens":45,'
    '"completion_tokens":6,"prompt_tokens_details":null}}'
)
ERROR_INVALID_AUDIO = '{"type":"error","error":"Invalid audio data","code":"invalid_audio"}'

# No deadline: the property tests share the CPU with the rest of the suite.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def usage_39_6() -> Usage:
    return Usage(prompt_tokens=39, total_tokens=45, completion_tokens=6)


class TestParseServerEvents:
    """§1.2: the four server events, as vLLM 0.33 sends them"""

    def test_session_created(self) -> None:
        assert parse_server_message(SESSION_CREATED) == SessionCreated(
            id="sess-8be46ea79d150628", created=1795316382
        )

    @pytest.mark.parametrize(("text", "delta"), [(DELTA_EMPTY, ""), (DELTA_WORD, " First")])
    def test_delta(self, text: str, delta: str) -> None:
        assert parse_server_message(text) == TranscriptionDelta(delta=delta)

    def test_done_with_usage(self) -> None:
        assert parse_server_message(DONE_HI) == TranscriptionDone(text=" hi", usage=usage_39_6())

    def test_done_of_vllm_before_028_has_no_completion_tokens_details(self) -> None:
        assert parse_server_message(DONE_HI_027) == TranscriptionDone(
            text=" hi", usage=usage_39_6()
        )

    def test_empty_generation_done(self) -> None:
        assert parse_server_message(DONE_EMPTY) == TranscriptionDone(
            text="", usage=Usage(prompt_tokens=0, total_tokens=0, completion_tokens=0)
        )

    def test_done_without_usage(self) -> None:
        assert parse_server_message('{"type":"transcription.done","text":" a"}') == (
            TranscriptionDone(text=" a", usage=None)
        )

    def test_error_is_flat(self) -> None:
        assert parse_server_message(ERROR_INVALID_AUDIO) == ErrorEvent(
            error="Invalid audio data", code="invalid_audio"
        )

    @pytest.mark.parametrize(
        "text", ['{"type":"error","error":"x","code":null}', '{"type":"error","error":"x"}']
    )
    def test_error_code_is_nullable(self, text: str) -> None:
        assert parse_server_message(text) == ErrorEvent(error="x", code=None)

    def test_processing_error_keeps_its_multiline_text(self) -> None:
        text = json.dumps(
            {
                "type": "error",
                "error": "1 validation error for InputAudioBufferAppend\naudio\n  Field required",
                "code": "processing_error",
            },
            separators=(",", ":"),
        )
        event = parse_server_message(text)
        assert isinstance(event, ErrorEvent)
        assert event.error.splitlines()[1] == "audio"

    @pytest.mark.parametrize(
        "text",
        [
            '{"type":"transcription.delta","delta":" a","start_s":1.2}',
            '{"type":"session.created","id":"sess-1","created":1,"session":{}}',
            '{"type":"error","error":"x","code":"invalid_json","event_id":"e1"}',
        ],
    )
    def test_extra_fields_are_allowed(self, text: str) -> None:
        """vLLM's OpenAIBaseModel allows extra fields; a newer server may add some (PR #50783)."""
        assert not isinstance(parse_server_message(text), MalformedMessage)

    @pytest.mark.parametrize(
        "text", [SESSION_CREATED, DELTA_EMPTY, DELTA_WORD, DONE_HI, DONE_EMPTY, ERROR_INVALID_AUDIO]
    )
    def test_dump_round_trips_byte_for_byte(self, text: str) -> None:
        event = parse_server_message(text)
        assert not isinstance(event, MalformedMessage)
        assert dump(event) == text
        assert parse_server_message(dump(event)) == event


class TestParseMalformed:
    """§1.2: anything but the four events is a MalformedMessage carrying the raw text"""

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("", "not JSON: "),
            ("not json", "not JSON: "),
            ('{"type":"transcription.delta"', "not JSON: "),
            ("[" * 100_000, "not JSON: "),  # deeper than json's recursion limit
            ("[1]", "not a JSON object: list"),
            ('"transcription.delta"', "not a JSON object: str"),
            ("null", "not a JSON object: NoneType"),
            ("45", "not a JSON object: int"),
            ('{"delta":""}', "unknown event type: None"),
            ('{"type":"session.updated"}', "unknown event type: 'session.updated'"),
            ('{"type":"input_audio_buffer.committed"}', "unknown event type: 'input_audio_"),
            ('{"type":5}', "unknown event type: 5"),
            ('{"type":["error"],"error":"x"}', "unknown event type: ['error']"),
            # missing fields
            ('{"type":"transcription.delta"}', "invalid transcription.delta: 1 error(s)"),
            ('{"type":"transcription.done"}', "invalid transcription.done: 1 error(s)"),
            ('{"type":"session.created"}', "invalid session.created: 2 error(s)"),
            ('{"type":"session.created","id":"sess-1"}', "invalid session.created: 1 error(s)"),
            ('{"type":"error","code":"invalid_json"}', "invalid error: 1 error(s)"),
            # wrong field types
            ('{"type":"transcription.delta","delta":5}', "invalid transcription.delta: "),
            ('{"type":"transcription.delta","delta":null}', "invalid transcription.delta: "),
            ('{"type":"transcription.done","text":null}', "invalid transcription.done: "),
            ('{"type":"transcription.done","text":"","usage":[]}', "invalid transcription.done"),
            (
                '{"type":"transcription.done","text":"","usage":{"prompt_tokens":"many"}}',
                "invalid transcription.done: ",
            ),
            ('{"type":"session.created","id":5,"created":1}', "invalid session.created: "),
            ('{"type":"session.created","id":"s","created":"soon"}', "invalid session.created"),
            # OpenAI's nested error object is not what vLLM sends
            ('{"type":"error","error":{"message":"x"}}', "invalid error: 1 error(s)"),
            ('{"type":"error","error":"x","code":5}', "invalid error: 1 error(s)"),
        ],
    )
    def test_malformed(self, text: str, reason: str) -> None:
        message = parse_server_message(text)
        assert isinstance(message, MalformedMessage)
        assert message.raw == text
        assert message.reason.startswith(reason)

    @FUZZ
    @given(ANY_FRAME)
    def test_never_raises(self, text: str) -> None:
        message = parse_server_message(text)
        if isinstance(message, MalformedMessage):
            assert message.raw == text
        else:
            assert isinstance(
                message, (SessionCreated, TranscriptionDelta, TranscriptionDone, ErrorEvent)
            )


class TestClientMessages:
    """§1.1: the three client events, serialised as vLLM's pydantic models would be"""

    def test_session_update_carries_only_the_model(self) -> None:
        assert dump(SessionUpdate(model=MODEL)) == (
            '{"type":"session.update","model":"mistralai/Voxtral-Mini-4B-Realtime-2602"}'
        )

    def test_commit_constants(self) -> None:
        assert COMMIT == '{"type":"input_audio_buffer.commit"}'
        assert COMMIT_FINAL == '{"type":"input_audio_buffer.commit","final":true}'
        assert dump(InputAudioBufferCommit(final=True)) == COMMIT_FINAL
        assert InputAudioBufferCommit.model_validate_json(COMMIT) == InputAudioBufferCommit()
        assert InputAudioBufferCommit.model_validate_json(COMMIT).final is False

    def test_append(self) -> None:
        assert dump(InputAudioBufferAppend(audio="AAA=")) == (
            '{"type":"input_audio_buffer.append","audio":"AAA="}'
        )

    @pytest.mark.parametrize(
        "message",
        [
            SessionUpdate(model=MODEL),
            InputAudioBufferCommit(),
            InputAudioBufferCommit(final=True),
            InputAudioBufferAppend(audio="AAA="),
        ],
    )
    def test_compact_with_type_first(self, message: protocol.ClientEvent) -> None:
        text = dump(message)
        assert json.dumps(json.loads(text), separators=(",", ":")) == text
        assert next(iter(json.loads(text))) == "type"

    def test_constants(self) -> None:
        assert protocol.SAMPLE_RATE == 16000
        assert protocol.STEP_SAMPLES == 1280
        assert protocol.STEP_SECONDS == 0.08


def b64(samples: npt.NDArray[np.int16]) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")


class TestEncodeAppend:
    """§1.1 append, §3.1 raw PCM16 little-endian, §1.3 invalid_audio"""

    @FUZZ
    @given(hnp.arrays(np.int16, st.integers(1, 2 * 1280 + 1)))
    def test_equals_pydantic_dump(self, samples: npt.NDArray[np.int16]) -> None:
        expected = dump(InputAudioBufferAppend(audio=b64(samples)))
        assert encode_append(samples.astype("<i2").tobytes()) == expected
        assert encode_append_pcm(samples) == expected
        audio = base64.b64decode(json.loads(expected)["audio"])
        np.testing.assert_array_equal(np.frombuffer(audio, dtype="<i2"), samples)

    def test_big_endian_samples_are_sent_little_endian(self) -> None:
        samples = np.array([1, -2, 32767, -32768], dtype=">i2")
        frame = json.loads(encode_append_pcm(samples))
        assert base64.b64decode(frame["audio"]) == b"\x01\x00\xfe\xff\xff\x7f\x00\x80"

    def test_accepts_bytearray_and_memoryview(self) -> None:
        expected = '{"type":"input_audio_buffer.append","audio":"AQD+/w=="}'
        assert encode_append(bytearray(b"\x01\x00\xfe\xff")) == expected
        assert encode_append(memoryview(b"\x01\x00\xfe\xff")) == expected

    @pytest.mark.parametrize(("data", "size"), [(b"", 0), (b"\x00", 1), (b"\x00" * 2561, 2561)])
    def test_rejects_empty_or_odd_byte_counts(self, data: bytes, size: int) -> None:
        with pytest.raises(ValueError, match=f"non-empty, even number of bytes, got {size}; vLLM"):
            encode_append(data)

    def test_rejects_empty_sample_array(self) -> None:
        with pytest.raises(ValueError, match="invalid_audio"):
            encode_append_pcm(np.zeros(0, dtype=np.int16))


class TestErrorCodes:
    """§1.3: the error catalogue and what each code means for the client"""

    def test_kind_table(self) -> None:
        assert {code: code.kind for code in ErrorCode} == {
            ErrorCode.MODEL_NOT_FOUND: ErrorKind.CONFIGURATION,
            ErrorCode.MODEL_NOT_VALIDATED: ErrorKind.CONFIGURATION,
            ErrorCode.INVALID_EVENT: ErrorKind.CONFIGURATION,
            ErrorCode.PROCESSING_ERROR: ErrorKind.GENERATION_LOST,
            ErrorCode.INVALID_AUDIO: ErrorKind.CLIENT_BUG,
            ErrorCode.UNKNOWN_EVENT: ErrorKind.CLIENT_BUG,
            ErrorCode.INVALID_JSON: ErrorKind.CLIENT_BUG,
        }

    @pytest.mark.parametrize("code", list(ErrorCode))
    def test_parse_wire_value(self, code: ErrorCode) -> None:
        assert ErrorCode.parse(code.value) is code

    def test_wire_values(self) -> None:
        assert {code.value for code in ErrorCode} == {
            "invalid_json",
            "unknown_event",
            "invalid_event",
            "model_not_found",
            "model_not_validated",
            "invalid_audio",
            "processing_error",
        }

    @pytest.mark.parametrize("code", [None, "", "rate_limited", "MODEL_NOT_FOUND", "invalid audio"])
    def test_parse_unknown_is_none(self, code: str | None) -> None:
        assert ErrorCode.parse(code) is None
