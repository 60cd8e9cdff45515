"""Unit tests of ``connection.py``: the sans-I/O client of one vLLM ``/v1/realtime`` socket.

Each test builds a :class:`RealtimeConnection`, feeds it the exact JSON vLLM 0.33 sends, steps
``now`` by hand, and checks what it wants written (as parsed JSON) and what it reports (by
dataclass equality). Reference: ``vllm-realtime.md`` §1-§3; one class per lifecycle rule.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from livekit_plugins_voxtral_vllm.connection import (
    RealtimeConnection,
    first_step_samples,
    steps_for_samples,
)
from livekit_plugins_voxtral_vllm.errors import InvalidState
from livekit_plugins_voxtral_vllm.events import (
    ConnectionEvent,
    ConnectionState,
    DeltaReceived,
    FinishReason,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    GenerationState,
    MalformedMessageReceived,
    ServerErrorReceived,
    SessionCreated,
)
from livekit_plugins_voxtral_vllm.protocol import ErrorCode, ErrorKind, Usage

from .strategies import ANY_FRAME

Int16Array = npt.NDArray[np.int16]
Frame = dict[str, object]

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
STEP = 1280  # samples per 80 ms engine step
FIRST = 9000  # audio before the first step at 480 ms: delay + 80 ms + 2.5 ms (§3.2)
TICK = 0.08

# -- server frames, exactly as vLLM 0.33 writes them (§1.2) ----------------------------------------

SESSION_ID = "sess-8be46ea79d150628"
SESSION_CREATED = '{"type":"session.created","id":"sess-8be46ea79d150628","created":1795316382}'
DELTA_EMPTY = '{"type":"transcription.delta","delta":""}'
DONE_HI = (
    '{"type":"transcription.done","text":" hi","usage":{"prompt_tokens":39,"total_tokens":45,'
    '"completion_tokens":6,"prompt_tokens_details":null,"completion_tokens_details":null}}'
)
USAGE_HI = Usage(prompt_tokens=39, total_tokens=45, completion_tokens=6)
# vLLM 0.16-0.27: the usage object has no completion_tokens_details
DONE_HI_027 = (
    '{"type":"transcription.done","text":" hi","usage":{"prompt_tokens":39,"total_tokens":45,'
    '"completion_tokens":6,"prompt_tokens_details":null}}'
)
DONE_EMPTY = (
    '{"type":"transcription.done","text":"","usage":{"prompt_tokens":0,"total_tokens":0,'
    '"completion_tokens":0,"prompt_tokens_details":null,"completion_tokens_details":null}}'
)

NOT_FOUND_TEXT = "The model `mistralai/Voxtral-Mini-4B-Realtime-2603` does not exist."
NOT_VALIDATED_TEXT = (
    "Model not validated. Make sure to validate the model by sending a session.update event."
)
ENGINE_DEAD_TEXT = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def delta(text: str) -> str:
    return json.dumps({"type": "transcription.delta", "delta": text}, separators=(",", ":"))


def error(message: str, code: str | None) -> str:
    frame = {"type": "error", "error": message, "code": code}
    return json.dumps(frame, separators=(",", ":"))


# -- helpers ---------------------------------------------------------------------------------------


def assert_sent(conn: RealtimeConnection, expected: list[Frame]) -> None:
    assert [json.loads(frame) for frame in conn.data_to_send()] == expected


def assert_nothing_sent(conn: RealtimeConnection) -> None:
    assert conn.data_to_send() == []


def assert_events(conn: RealtimeConnection, expected: list[ConnectionEvent]) -> None:
    assert conn.events_received() == expected


def pcm(n: int, offset: int = 0) -> Int16Array:
    """``n`` distinct-looking int16 samples spanning the full range, negative ones included."""
    idx = np.arange(offset, offset + n, dtype=np.int64)
    return ((idx * 7919 + 12345) % 65536 - 32768).astype(np.int16)


def append(samples: Int16Array) -> Frame:
    audio = base64.b64encode(samples.astype("<i2").tobytes()).decode("ascii")
    return {"type": "input_audio_buffer.append", "audio": audio}


COMMIT: Frame = {"type": "input_audio_buffer.commit"}
COMMIT_FINAL: Frame = {"type": "input_audio_buffer.commit", "final": True}


def decode(frame: Frame) -> Int16Array:
    assert frame["type"] == "input_audio_buffer.append"
    audio = frame["audio"]
    assert isinstance(audio, str)
    return np.frombuffer(base64.b64decode(audio), dtype="<i2").astype(np.int16)


def connecting(transcription_delay_ms: int = 480) -> RealtimeConnection:
    conn = RealtimeConnection(model=MODEL, transcription_delay_ms=transcription_delay_ms)
    conn.data_to_send()
    return conn


def opened(transcription_delay_ms: int = 480) -> RealtimeConnection:
    conn = connecting(transcription_delay_ms)
    conn.receive_text(SESSION_CREATED, 0.0)
    conn.events_received()
    return conn


def running(transcription_delay_ms: int = 480) -> RealtimeConnection:
    conn = opened(transcription_delay_ms)
    conn.start_generation(0.0)
    conn.data_to_send()
    conn.events_received()
    return conn


def finalizing() -> RealtimeConnection:
    conn = running()
    conn.send_audio(pcm(3 * STEP))
    conn.finish_generation(0.0)
    conn.data_to_send()
    return conn


def after_unsolicited_done() -> RealtimeConnection:
    conn = running()
    conn.receive_text(DONE_HI, 0.0)
    conn.events_received()
    return conn


def after_lost_generation() -> RealtimeConnection:
    conn = running()
    conn.receive_text(error(ENGINE_DEAD_TEXT, "processing_error"), 0.0)
    conn.events_received()
    return conn


def failed() -> RealtimeConnection:
    conn = opened()
    conn.receive_text(error(NOT_FOUND_TEXT, "model_not_found"), 0.0)
    conn.events_received()
    return conn


def closed() -> RealtimeConnection:
    conn = running()
    conn.close()
    conn.events_received()
    return conn


def lost() -> RealtimeConnection:
    conn = running()
    conn.connection_lost(0.0)
    conn.events_received()
    return conn


BUILDERS: dict[str, Callable[[], RealtimeConnection]] = {
    "connecting": connecting,
    "open": opened,
    "running": running,
    "finalizing": finalizing,
    "after_unsolicited_done": after_unsolicited_done,
    "after_lost_generation": after_lost_generation,
    "failed": failed,
    "closed": closed,
    "lost": lost,
}


@dataclass(frozen=True)
class Snapshot:
    state: ConnectionState
    generation_state: GenerationState
    generation: int
    steps: int
    samples_sent: int
    reusable: bool
    session_id: str | None
    failure: ServerErrorReceived | None


def snapshot(conn: RealtimeConnection) -> Snapshot:
    return Snapshot(
        conn.state,
        conn.generation_state,
        conn.generation,
        conn.steps,
        conn.samples_sent,
        conn.reusable,
        conn.session_id,
        conn.failure,
    )


def assert_refused(conn: RealtimeConnection, action: Callable[[], None], match: str) -> None:
    """``action`` raises InvalidState and changes nothing: no state, no frame, no event."""
    before = snapshot(conn)
    with pytest.raises(InvalidState, match=match):
        action()
    assert snapshot(conn) == before
    assert_nothing_sent(conn)
    assert_events(conn, [])


# -- tests -----------------------------------------------------------------------------------------


class TestSessionHandshake:
    """§1.1 session.update, §1.2 session.created, §2.2 rule 1"""

    def test_session_update_is_the_first_frame_and_carries_only_the_model(self) -> None:
        conn = RealtimeConnection(model=MODEL)
        assert conn.data_to_send() == [
            '{"type":"session.update","model":"mistralai/Voxtral-Mini-4B-Realtime-2602"}'
        ]
        assert conn.state is ConnectionState.CONNECTING
        assert conn.generation_state is GenerationState.IDLE
        assert_events(conn, [])

    def test_language_is_added_when_given(self) -> None:
        conn = RealtimeConnection(model=MODEL, language="fr")
        assert conn.data_to_send() == [
            '{"type":"session.update","model":"mistralai/Voxtral-Mini-4B-Realtime-2602",'
            '"language":"fr"}'
        ]

    def test_empty_language_is_not_sent(self) -> None:
        conn = RealtimeConnection(model=MODEL, language="")
        assert_sent(conn, [{"type": "session.update", "model": MODEL}])

    def test_session_created_opens_and_is_reported(self) -> None:
        conn = connecting()
        now = 12.5
        conn.receive_text(SESSION_CREATED, now)
        assert conn.state is ConnectionState.OPEN
        assert conn.session_id == SESSION_ID
        assert conn.last_received_at == now
        assert_events(conn, [SessionCreated(SESSION_ID)])
        assert_nothing_sent(conn)  # session.update gets no reply and needs no follow-up

    def test_second_session_created_is_malformed(self) -> None:
        conn = opened()
        second = '{"type":"session.created","id":"sess-0000000000000001","created":1795316390}'
        conn.receive_text(second, 1.0)
        assert_events(conn, [MalformedMessageReceived(raw=second, reason="second session.created")])
        assert conn.session_id == SESSION_ID
        assert conn.state is ConnectionState.OPEN

    def test_a_commit_may_be_pipelined_before_session_created(self) -> None:
        """vLLM reads messages in order: a commit right behind session.update is valid."""
        conn = connecting()
        conn.start_generation(0.0)
        assert_sent(conn, [COMMIT])
        assert_events(conn, [GenerationStarted(1)])
        conn.receive_text(SESSION_CREATED, TICK)
        assert_events(conn, [SessionCreated(SESSION_ID)])
        assert conn.state is ConnectionState.OPEN
        assert conn.generation_state is GenerationState.RUNNING

    def test_outputs_are_cleared_when_read(self) -> None:
        conn = RealtimeConnection(model=MODEL)
        conn.receive_text(SESSION_CREATED, 0.0)
        assert len(conn.data_to_send()) == 1
        assert len(conn.events_received()) == 1
        assert_nothing_sent(conn)
        assert_events(conn, [])


class TestStartGeneration:
    """§2.2 rules 3, 4 and 8: a non-final commit starts a generation only if none runs"""

    def test_sends_exactly_a_non_final_commit(self) -> None:
        conn = opened()
        assert conn.can_start_generation
        conn.start_generation(1.0)
        assert conn.data_to_send() == ['{"type":"input_audio_buffer.commit"}']
        assert_events(conn, [GenerationStarted(1)])
        assert conn.generation_state is GenerationState.RUNNING
        assert (conn.generation, conn.steps, conn.samples_sent) == (1, 0, 0)
        assert not conn.can_start_generation

    def test_refused_while_running(self) -> None:
        """vLLM would silently ignore the commit: no generation, never a done."""
        conn = running()
        assert_refused(conn, lambda: conn.start_generation(TICK), "generation 1 is running")

    def test_refused_while_finalizing(self) -> None:
        conn = finalizing()
        assert_refused(conn, lambda: conn.start_generation(TICK), "generation 1 is finalizing")

    @pytest.mark.parametrize("build", [failed, closed, lost], ids=["failed", "closed", "lost"])
    def test_refused_once_the_connection_is_over(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        conn = build()
        assert not conn.can_start_generation
        assert_refused(conn, lambda: conn.start_generation(TICK), "when the connection is")

    @pytest.mark.parametrize(
        "build", [after_unsolicited_done, after_lost_generation], ids=["max_model_len", "lost"]
    )
    def test_refused_on_a_non_reusable_connection(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        """§2.3 / rule 10: vLLM's queue may hold stale audio, which would feed the next one."""
        conn = build()
        assert conn.state is ConnectionState.OPEN
        assert conn.generation_state is GenerationState.IDLE
        assert not conn.can_start_generation
        assert_refused(conn, lambda: conn.start_generation(TICK), "stale audio")

    def test_generations_run_strictly_one_after_another(self) -> None:
        """Rule 8: commit → append* → final → done → commit → ..."""
        conn = running()
        conn.send_audio(pcm(STEP))
        conn.receive_text(delta(" a"), TICK)
        conn.finish_generation(TICK)
        conn.receive_text(DONE_HI, 2 * TICK)
        conn.data_to_send()
        conn.events_received()
        assert conn.can_start_generation
        conn.start_generation(3 * TICK)
        assert_sent(conn, [COMMIT])
        assert_events(conn, [GenerationStarted(2)])
        assert (conn.generation, conn.steps, conn.samples_sent) == (2, 0, 0)


class TestSendAudio:
    """§1.1 append, §3.1 chunk size, §3.2 steps: each append ends where a step's audio is
    complete (the first step needs delay + 80 ms + 2.5 ms, each later one 80 ms more), so vLLM
    runs the step the moment it arrives"""

    def test_appends_end_where_steps_are_complete_and_the_remainder_is_carried(self) -> None:
        conn = running()
        audio = pcm(FIRST + 2000)
        conn.send_audio(audio[: FIRST - 100])  # the first step is not complete yet
        assert_nothing_sent(conn)
        assert conn.next_step_samples == FIRST
        conn.send_audio(audio[FIRST - 100 : FIRST + 1500])  # completes it and the second
        assert_sent(conn, [append(audio[:FIRST]), append(audio[FIRST : FIRST + STEP])])
        assert conn.samples_sent == FIRST + 1500
        assert conn.next_step_samples == FIRST + 2 * STEP
        conn.send_audio(audio[FIRST + 1500 :])  # 220 carried + 500: less than a step
        assert_nothing_sent(conn)
        assert conn.samples_sent == FIRST + 2000
        conn.finish_generation(TICK)
        assert_sent(conn, [append(audio[FIRST + STEP :]), COMMIT_FINAL])
        assert_events(conn, [])

    def test_a_step_runs_on_the_append_that_completes_it(self) -> None:
        conn = running()
        conn.send_audio(pcm(FIRST - 1))
        assert conn.expected_steps == 0
        conn.send_audio(pcm(1))
        assert len(conn.data_to_send()) == 1
        assert conn.expected_steps == 1
        conn.send_audio(pcm(STEP))
        assert len(conn.data_to_send()) == 1
        assert conn.expected_steps == 2

    def test_exact_base64_of_little_endian_int16(self) -> None:
        conn = running()
        samples = np.zeros(FIRST, dtype=np.int16)
        samples[:4] = [1, -2, 32767, -32768]
        conn.send_audio(samples)
        frame = json.loads(conn.data_to_send()[0])
        raw = base64.b64decode(frame["audio"])
        assert raw[:8] == b"\x01\x00\xfe\xff\xff\x7f\x00\x80"
        assert raw[8:] == bytes(2 * FIRST - 8)

    def test_big_endian_input_is_sent_little_endian(self) -> None:
        conn = running()
        samples = pcm(FIRST + 7)
        conn.send_audio(samples.astype(">i2"))
        conn.finish_generation(TICK)
        assert_sent(conn, [append(samples[:FIRST]), append(samples[FIRST:]), COMMIT_FINAL])

    def test_one_call_may_carry_many_steps(self) -> None:
        conn = running()
        audio = pcm(FIRST + 10 * STEP)
        conn.send_audio(audio)
        assert_sent(
            conn,
            [append(audio[:FIRST])]
            + [append(audio[FIRST + i * STEP : FIRST + (i + 1) * STEP]) for i in range(10)],
        )

    @pytest.mark.parametrize("delay_ms", [80, 480, 960, 2400])
    def test_the_first_append_follows_the_delay(self, delay_ms: int) -> None:
        conn = RealtimeConnection(model=MODEL, transcription_delay_ms=delay_ms)
        conn.receive_text(SESSION_CREATED, 0.0)
        conn.start_generation(0.0)
        conn.data_to_send()
        first = (delay_ms // 80 + 1) * STEP + 40
        conn.send_audio(pcm(first + STEP))
        assert [decode(json.loads(f)).size for f in conn.data_to_send()] == [first, STEP]

    def test_empty_audio_changes_nothing(self) -> None:
        conn = running()
        conn.send_audio(np.zeros(0, dtype=np.int16))
        assert_nothing_sent(conn)
        assert conn.samples_sent == 0

    def test_the_carried_remainder_does_not_alias_the_callers_buffer(self) -> None:
        conn = running()
        buf = pcm(FIRST + 100)
        expected = buf[FIRST:].copy()
        conn.send_audio(buf)
        conn.data_to_send()
        buf[:] = 0  # the caller reuses its buffer
        conn.finish_generation(TICK)
        assert_sent(conn, [append(expected), COMMIT_FINAL])

    @pytest.mark.parametrize(
        "build",
        [connecting, opened, after_unsolicited_done, after_lost_generation, failed, closed, lost],
        ids=lambda b: b.__name__,
    )
    def test_refused_with_no_generation_running(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        """Rule 2: audio with no generation would sit in vLLM's queue and feed the next one."""
        conn = build()
        assert_refused(conn, lambda: conn.send_audio(pcm(STEP)), "cannot send audio")

    def test_refused_while_finalizing(self) -> None:
        """Rule 7: vLLM clears its queue after done; audio sent after final is discarded."""
        conn = finalizing()
        assert_refused(conn, lambda: conn.send_audio(pcm(STEP)), "generation is finalizing")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        audio=hnp.arrays(np.int16, st.integers(0, FIRST + 6 * STEP)),
        cuts=st.lists(st.integers(0, FIRST + 6 * STEP), max_size=8),
    )
    def test_any_split_gives_one_append_per_step_then_the_rest(
        self, audio: Int16Array, cuts: list[int]
    ) -> None:
        conn = running()
        bounds = [0, *sorted(min(c, audio.size) for c in cuts), audio.size]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            conn.send_audio(audio[lo:hi])
        assert conn.samples_sent == audio.size
        conn.finish_generation(TICK)
        frames = [json.loads(f) for f in conn.data_to_send()]
        assert frames[-1] == COMMIT_FINAL
        chunks = [decode(f) for f in frames[:-1]]
        if audio.size < FIRST:
            sizes = [audio.size] if audio.size else []
        else:
            rest = audio.size - FIRST
            sizes = [FIRST] + [STEP] * (rest // STEP) + ([rest % STEP] if rest % STEP else [])
        assert [c.size for c in chunks] == sizes
        sent = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        np.testing.assert_array_equal(sent, audio)


class TestFinishGeneration:
    """§2.2 rules 5 and 6: final only while a generation runs, and only once"""

    def test_flushes_the_remainder_as_a_shorter_last_append_then_final(self) -> None:
        conn = running()
        audio = pcm(FIRST + 300)
        conn.send_audio(audio)
        assert_sent(conn, [append(audio[:FIRST])])
        conn.finish_generation(TICK)
        assert conn.data_to_send() == [
            json.dumps(append(audio[FIRST:]), separators=(",", ":")),
            '{"type":"input_audio_buffer.commit","final":true}',
        ]
        assert conn.generation_state is GenerationState.FINALIZING
        assert conn.samples_sent == FIRST + 300
        assert_events(conn, [])

    def test_no_remainder_means_final_only(self) -> None:
        conn = running()
        conn.send_audio(pcm(FIRST + 2 * STEP))
        conn.data_to_send()
        conn.finish_generation(TICK)
        assert_sent(conn, [COMMIT_FINAL])

    def test_a_generation_with_no_audio_may_be_finished(self) -> None:
        """§1.2: commit then final with no audio gives an empty done; it is legal."""
        conn = running()
        conn.finish_generation(TICK)
        assert_sent(conn, [COMMIT_FINAL])
        conn.receive_text(DONE_EMPTY, 2 * TICK)
        assert_events(
            conn,
            [
                GenerationFinished(
                    generation=1,
                    text="",
                    usage=Usage(prompt_tokens=0, total_tokens=0, completion_tokens=0),
                    reason=FinishReason.REQUESTED,
                    steps=0,
                    samples_sent=0,
                    reusable=True,
                )
            ],
        )

    def test_never_twice(self) -> None:
        conn = finalizing()
        before = snapshot(conn)
        conn.finish_generation(TICK)
        assert_nothing_sent(conn)
        assert_events(conn, [])
        assert snapshot(conn) == before

    @pytest.mark.parametrize(
        "build",
        [connecting, opened, after_unsolicited_done, after_lost_generation, failed, closed, lost],
        ids=lambda b: b.__name__,
    )
    def test_a_no_op_with_no_generation_running(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        """Rule 6: a final with no generation poisons the next one with an empty done."""
        conn = build()
        before = snapshot(conn)
        conn.finish_generation(TICK)
        assert_nothing_sent(conn)
        assert_events(conn, [])
        assert snapshot(conn) == before

    def test_a_no_op_after_done(self) -> None:
        conn = finalizing()
        conn.receive_text(DONE_HI, TICK)
        conn.events_received()
        conn.finish_generation(2 * TICK)
        assert_nothing_sent(conn)


class TestDeltas:
    """§1.2 transcription.delta: one per 80 ms engine step, mostly empty"""

    def test_counted_per_generation_with_zero_based_steps(self) -> None:
        conn = running()
        now = 0.0
        for text in ["", " First", "", " words"]:
            now += TICK
            conn.receive_text(delta(text), now)
        assert_events(
            conn,
            [
                DeltaReceived(1, 0, ""),
                DeltaReceived(1, 1, " First"),
                DeltaReceived(1, 2, ""),
                DeltaReceived(1, 3, " words"),
            ],
        )
        assert conn.steps == 4
        assert conn.last_received_at == now
        assert_nothing_sent(conn)

    def test_the_count_restarts_with_each_generation(self) -> None:
        conn = running()
        conn.receive_text(DELTA_EMPTY, TICK)
        conn.finish_generation(TICK)
        conn.receive_text(delta(" hi"), 2 * TICK)
        conn.receive_text(DONE_HI, 3 * TICK)
        conn.start_generation(4 * TICK)
        conn.receive_text(DELTA_EMPTY, 5 * TICK)
        events = conn.events_received()
        assert [e for e in events if isinstance(e, DeltaReceived)] == [
            DeltaReceived(1, 0, ""),
            DeltaReceived(1, 1, " hi"),
            DeltaReceived(2, 0, ""),
        ]
        assert conn.steps == 1

    def test_counted_while_finalizing(self) -> None:
        """Rule 5: after final the right-pad flush steps still arrive as deltas."""
        conn = finalizing()
        for _ in range(17):
            conn.receive_text(DELTA_EMPTY, TICK)
        assert conn.events_received()[-1] == DeltaReceived(1, 16, "")
        assert conn.steps == 17

    @pytest.mark.parametrize(
        "build",
        [connecting, opened, after_unsolicited_done, after_lost_generation],
        ids=lambda b: b.__name__,
    )
    def test_a_delta_with_no_generation_is_malformed(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        conn = build()
        before = snapshot(conn)
        conn.receive_text(DELTA_EMPTY, TICK)
        assert_events(
            conn,
            [MalformedMessageReceived(raw=DELTA_EMPTY, reason="delta with no generation running")],
        )
        assert snapshot(conn) == before

    def test_the_malformed_event_carries_the_frame_as_received(self) -> None:
        """A lone surrogate escape is valid JSON; reporting it must neither alter nor raise."""
        conn = opened()
        text = '{"type":"transcription.delta","delta":"\\ud800", "extra": 1}'
        conn.receive_text(text, TICK)
        assert_events(
            conn, [MalformedMessageReceived(raw=text, reason="delta with no generation running")]
        )


class TestRequestedDone:
    """§2.2 rules 5, 7 and 8: done after our final ends the generation; the socket is reused"""

    def test_done_after_final(self) -> None:
        conn = running()
        audio = pcm(2 * STEP + 10)
        conn.send_audio(audio)
        conn.receive_text(DELTA_EMPTY, TICK)
        conn.finish_generation(TICK)
        conn.receive_text(delta(" hi"), 2 * TICK)
        conn.events_received()
        conn.receive_text(DONE_HI, 3 * TICK)
        assert_events(
            conn,
            [
                GenerationFinished(
                    generation=1,
                    text=" hi",
                    usage=USAGE_HI,
                    reason=FinishReason.REQUESTED,
                    steps=2,
                    samples_sent=2 * STEP + 10,
                    reusable=True,
                )
            ],
        )
        assert conn.generation_state is GenerationState.IDLE
        assert conn.reusable
        assert conn.can_start_generation
        assert_sent(
            conn,
            [
                append(audio),
                COMMIT_FINAL,
            ],
        )

    def test_done_of_vllm_before_028(self) -> None:
        conn = finalizing()
        conn.receive_text(DONE_HI_027, TICK)
        [event] = conn.events_received()
        assert isinstance(event, GenerationFinished)
        assert event.usage == USAGE_HI
        assert event.reason is FinishReason.REQUESTED

    def test_the_text_is_the_servers(self) -> None:
        """§1.2: done.text is the concatenation of the deltas; the core does not re-derive it."""
        conn = finalizing()
        conn.receive_text(delta(" a"), TICK)
        conn.receive_text('{"type":"transcription.done","text":" b"}', TICK)
        events = conn.events_received()
        assert isinstance(events[-1], GenerationFinished)
        assert events[-1].text == " b"
        assert events[-1].usage is None

    def test_no_audio_is_accepted_after_done_until_the_next_commit(self) -> None:
        conn = finalizing()
        conn.receive_text(DONE_HI, TICK)
        conn.events_received()
        assert_refused(conn, lambda: conn.send_audio(pcm(STEP)), "generation is idle")


class TestUnsolicitedDone:
    """§2.3 max_model_len (vLLM >= 0.32): a done while RUNNING was not asked for"""

    def test_reported_as_max_model_len_and_not_reusable(self) -> None:
        conn = running()
        conn.send_audio(pcm(STEP + 500))
        conn.receive_text(DELTA_EMPTY, TICK)
        conn.receive_text(DONE_HI, 2 * TICK)
        assert_events(
            conn,
            [
                DeltaReceived(1, 0, ""),
                GenerationFinished(
                    generation=1,
                    text=" hi",
                    usage=USAGE_HI,
                    reason=FinishReason.MAX_MODEL_LEN,
                    steps=1,
                    samples_sent=STEP + 500,
                    reusable=False,
                ),
            ],
        )
        assert conn.generation_state is GenerationState.IDLE
        assert conn.state is ConnectionState.OPEN
        assert not conn.reusable
        assert not conn.can_start_generation

    def test_then_start_generation_raises_and_the_remainder_is_never_sent(self) -> None:
        conn = running()
        conn.send_audio(pcm(STEP + 500))
        conn.data_to_send()
        conn.receive_text(DONE_HI, TICK)
        conn.events_received()
        assert_refused(conn, lambda: conn.start_generation(2 * TICK), "stale audio")
        conn.finish_generation(2 * TICK)  # a final now would poison the next generation
        assert_nothing_sent(conn)


class TestDoneWithoutGeneration:
    """§1.2 / §2.2 rule 6: a done while IDLE is no generation of ours"""

    @pytest.mark.parametrize("text", [DONE_HI, DONE_HI_027, DONE_EMPTY])
    def test_malformed_and_nothing_changes(self, text: str) -> None:
        conn = opened()
        before = snapshot(conn)
        conn.receive_text(text, TICK)
        assert_events(
            conn, [MalformedMessageReceived(raw=text, reason="done with no generation running")]
        )
        assert snapshot(conn) == before
        assert conn.can_start_generation

    def test_a_second_done_is_malformed(self) -> None:
        conn = finalizing()
        conn.receive_text(DONE_HI, TICK)
        conn.events_received()
        conn.receive_text(DONE_HI, 2 * TICK)
        assert_events(
            conn, [MalformedMessageReceived(raw=DONE_HI, reason="done with no generation running")]
        )
        assert conn.reusable


CONFIGURATION_ERRORS = [
    (NOT_FOUND_TEXT, ErrorCode.MODEL_NOT_FOUND),
    (NOT_VALIDATED_TEXT, ErrorCode.MODEL_NOT_VALIDATED),
    ("Missing required field: model", ErrorCode.INVALID_EVENT),
]


class TestConfigurationErrors:
    """§1.3 model_not_found / model_not_validated / invalid_event: fatal; FAILED is sticky"""

    @pytest.mark.parametrize(("message", "code"), CONFIGURATION_ERRORS)
    def test_fails_the_connection(self, message: str, code: ErrorCode) -> None:
        conn = opened()
        conn.receive_text(error(message, code.value), TICK)
        expected = ServerErrorReceived(code=code, message=message, kind=ErrorKind.CONFIGURATION)
        assert_events(conn, [expected])
        assert conn.state is ConnectionState.FAILED
        assert conn.failure == expected
        assert not conn.can_start_generation
        assert_nothing_sent(conn)

    @pytest.mark.parametrize(("message", "code"), CONFIGURATION_ERRORS)
    def test_a_running_generation_is_reported_failed(self, message: str, code: ErrorCode) -> None:
        conn = running()
        conn.send_audio(pcm(STEP + 3))
        conn.receive_text(DELTA_EMPTY, TICK)
        conn.events_received()
        conn.receive_text(error(message, code.value), 2 * TICK)
        assert_events(
            conn,
            [
                ServerErrorReceived(code=code, message=message, kind=ErrorKind.CONFIGURATION),
                GenerationFailed(
                    generation=1,
                    reason=f"configuration error: {message}",
                    steps=1,
                    samples_sent=STEP + 3,
                ),
            ],
        )
        assert conn.state is ConnectionState.FAILED
        assert conn.generation_state is GenerationState.IDLE

    def test_while_finalizing_the_generation_is_reported_failed(self) -> None:
        conn = finalizing()
        conn.receive_text(error(NOT_VALIDATED_TEXT, "model_not_validated"), TICK)
        events = conn.events_received()
        assert [type(e) for e in events] == [ServerErrorReceived, GenerationFailed]

    def test_later_app_inputs_raise(self) -> None:
        conn = failed()
        assert_refused(conn, lambda: conn.start_generation(TICK), "when the connection is")
        assert_refused(conn, lambda: conn.send_audio(pcm(STEP)), "cannot send audio")

    @pytest.mark.parametrize(
        "text",
        [
            SESSION_CREATED,
            DELTA_EMPTY,
            DONE_HI,
            error(NOT_VALIDATED_TEXT, "model_not_validated"),
            error("Invalid audio data", "invalid_audio"),
            "not json",
        ],
        ids=["session.created", "delta", "done", "model_not_validated", "invalid_audio", "junk"],
    )
    def test_later_server_frames_are_dropped_without_raising(self, text: str) -> None:
        conn = failed()
        before = snapshot(conn)
        conn.receive_text(text, TICK)
        assert_events(conn, [])
        assert_nothing_sent(conn)
        assert snapshot(conn) == before

    def test_the_first_cause_is_kept(self) -> None:
        """A bad model with a pipelined commit: vLLM answers model_not_found, then
        model_not_validated for the commit. The failure to explain is the first one."""
        conn = connecting()
        conn.start_generation(0.0)
        conn.receive_text(SESSION_CREATED, TICK)
        conn.receive_text(error(NOT_FOUND_TEXT, "model_not_found"), TICK)
        conn.receive_text(error(NOT_VALIDATED_TEXT, "model_not_validated"), TICK)
        assert_events(
            conn,
            [
                GenerationStarted(1),
                SessionCreated(SESSION_ID),
                ServerErrorReceived(
                    code=ErrorCode.MODEL_NOT_FOUND,
                    message=NOT_FOUND_TEXT,
                    kind=ErrorKind.CONFIGURATION,
                ),
                GenerationFailed(
                    generation=1,
                    reason=f"configuration error: {NOT_FOUND_TEXT}",
                    steps=0,
                    samples_sent=0,
                ),
            ],
        )
        assert conn.failure is not None
        assert conn.failure.code is ErrorCode.MODEL_NOT_FOUND

    def test_before_session_created(self) -> None:
        conn = connecting()
        conn.receive_text(error(NOT_FOUND_TEXT, "model_not_found"), 0.0)
        assert conn.state is ConnectionState.FAILED
        conn.receive_text(SESSION_CREATED, TICK)
        assert conn.state is ConnectionState.FAILED
        assert conn.session_id is None

    def test_connection_lost_after_failure_keeps_it_failed(self) -> None:
        conn = failed()
        conn.connection_lost(TICK)
        assert conn.state is ConnectionState.FAILED
        assert_events(conn, [])

    def test_close_after_failure(self) -> None:
        conn = failed()
        conn.close()
        assert conn.state is ConnectionState.CLOSED
        assert conn.failure is not None
        assert_events(conn, [])


class TestGenerationLost:
    """§1.3 processing_error case (c), §2.2 rule 10: the generation died and no done follows"""

    @pytest.mark.parametrize("build", [running, finalizing], ids=["running", "finalizing"])
    def test_during_a_generation(self, build: Callable[[], RealtimeConnection]) -> None:
        conn = build()
        samples = conn.samples_sent
        conn.receive_text(DELTA_EMPTY, TICK)
        conn.events_received()
        conn.receive_text(error(ENGINE_DEAD_TEXT, "processing_error"), 2 * TICK)
        assert_events(
            conn,
            [
                ServerErrorReceived(
                    code=ErrorCode.PROCESSING_ERROR,
                    message=ENGINE_DEAD_TEXT,
                    kind=ErrorKind.GENERATION_LOST,
                ),
                GenerationFailed(
                    generation=1,
                    reason=f"processing_error: {ENGINE_DEAD_TEXT}",
                    steps=1,
                    samples_sent=samples,
                ),
            ],
        )
        assert conn.state is ConnectionState.OPEN
        assert conn.generation_state is GenerationState.IDLE
        assert not conn.reusable  # the queue is not cleared: stale audio would feed the next one
        assert_nothing_sent(conn)

    def test_then_the_connection_takes_no_more_audio_or_generations(self) -> None:
        conn = after_lost_generation()
        assert_refused(conn, lambda: conn.start_generation(TICK), "stale audio")
        assert_refused(conn, lambda: conn.send_audio(pcm(STEP)), "cannot send audio")
        conn.finish_generation(TICK)
        assert_nothing_sent(conn)

    def test_while_idle_only_the_error_is_reported(self) -> None:
        """§1.3 cases (a) and (b): a message of ours vLLM could not read."""
        conn = opened()
        before = snapshot(conn)
        text = "'list' object has no attribute 'get'"
        conn.receive_text(error(text, "processing_error"), TICK)
        assert_events(
            conn,
            [
                ServerErrorReceived(
                    code=ErrorCode.PROCESSING_ERROR, message=text, kind=ErrorKind.GENERATION_LOST
                )
            ],
        )
        assert snapshot(conn) == before
        assert conn.can_start_generation


class TestClientBugErrors:
    """§1.3 invalid_audio / unknown_event / invalid_json: our bug; nothing else changes"""

    @pytest.mark.parametrize(
        ("text", "code"),
        [
            (
                '{"type":"error","error":"Invalid audio data","code":"invalid_audio"}',
                ErrorCode.INVALID_AUDIO,
            ),
            (
                '{"type":"error","error":"Unknown event type: ping","code":"unknown_event"}',
                ErrorCode.UNKNOWN_EVENT,
            ),
            (
                '{"type":"error","error":"Invalid JSON","code":"invalid_json"}',
                ErrorCode.INVALID_JSON,
            ),
            # an unknown or null code is never fatal
            ('{"type":"error","error":"Rate limited","code":"rate_limited"}', None),
            ('{"type":"error","error":"Rate limited","code":null}', None),
            ('{"type":"error","error":"Rate limited"}', None),
        ],
    )
    @pytest.mark.parametrize("build", [opened, running, finalizing], ids=lambda b: b.__name__)
    def test_reported_and_nothing_else_changes(
        self, build: Callable[[], RealtimeConnection], text: str, code: ErrorCode | None
    ) -> None:
        conn = build()
        before = snapshot(conn)
        conn.receive_text(text, TICK)
        message = json.loads(text)["error"]
        assert_events(
            conn, [ServerErrorReceived(code=code, message=message, kind=ErrorKind.CLIENT_BUG)]
        )
        assert snapshot(conn) == before
        assert_nothing_sent(conn)

    def test_the_generation_goes_on(self) -> None:
        conn = running()
        conn.receive_text(error("Invalid audio data", "invalid_audio"), TICK)
        conn.receive_text(DELTA_EMPTY, 2 * TICK)
        assert conn.events_received()[-1] == DeltaReceived(1, 0, "")
        conn.send_audio(pcm(FIRST))
        assert_sent(conn, [append(pcm(FIRST))])


class TestMalformedFrames:
    """§1.2: anything but the four events is reported, never raised"""

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("not json", "not JSON: Expecting value: line 1 column 1 (char 0)"),
            ("[1, 2]", "not a JSON object: list"),
            ('{"type":"session.updated"}', "unknown event type: 'session.updated'"),
            ('{"type":"transcription.delta"}', "invalid transcription.delta: 1 error(s)"),
        ],
    )
    def test_reported_with_the_raw_text(self, text: str, reason: str) -> None:
        conn = running()
        before = snapshot(conn)
        conn.receive_text(text, TICK)
        assert_events(conn, [MalformedMessageReceived(raw=text, reason=reason)])
        assert snapshot(conn) == before
        assert conn.last_received_at == TICK

    def test_nesting_deeper_than_the_recursion_limit(self) -> None:
        conn = running()
        text = "[" * 100_000
        conn.receive_text(text, TICK)
        [event] = conn.events_received()
        assert isinstance(event, MalformedMessageReceived)
        assert event.raw == text
        assert event.reason.startswith("not JSON: ")


class TestConnectionLost:
    """§2.4 disconnect: a generation in flight is lost; connection_lost is idempotent"""

    @pytest.mark.parametrize("build", [running, finalizing], ids=["running", "finalizing"])
    def test_a_generation_in_flight_fails_once(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        conn = build()
        samples = conn.samples_sent
        conn.receive_text(DELTA_EMPTY, TICK)
        conn.events_received()
        conn.connection_lost(2 * TICK)
        assert_events(
            conn,
            [
                GenerationFailed(
                    generation=1, reason="connection lost", steps=1, samples_sent=samples
                )
            ],
        )
        assert conn.state is ConnectionState.CLOSED
        assert conn.generation_state is GenerationState.IDLE
        conn.connection_lost(3 * TICK)
        assert_events(conn, [])
        assert conn.state is ConnectionState.CLOSED
        assert_nothing_sent(conn)

    @pytest.mark.parametrize("build", [connecting, opened], ids=["connecting", "open"])
    def test_with_no_generation_nothing_is_reported(
        self, build: Callable[[], RealtimeConnection]
    ) -> None:
        conn = build()
        conn.connection_lost(TICK)
        assert_events(conn, [])
        assert conn.state is ConnectionState.CLOSED

    def test_later_frames_are_dropped(self) -> None:
        conn = lost()
        conn.receive_text(DELTA_EMPTY, 5.0)
        conn.receive_text(DONE_HI, 5.0)
        assert_events(conn, [])
        assert conn.last_received_at == 0.0


class TestClose:
    """§2.4: the client closes; prefer final → done → close"""

    def test_close_while_running_reports_the_generation_failed(self) -> None:
        conn = running()
        conn.close()
        assert_events(
            conn,
            [
                GenerationFailed(
                    generation=1,
                    reason="connection closed by the client",
                    steps=0,
                    samples_sent=0,
                )
            ],
        )
        assert conn.state is ConnectionState.CLOSED
        assert_nothing_sent(conn)

    def test_close_is_idempotent_and_absorbs_connection_lost(self) -> None:
        conn = opened()
        conn.close()
        conn.close()
        conn.connection_lost(TICK)
        assert_events(conn, [])
        assert conn.state is ConnectionState.CLOSED
        assert_refused(conn, lambda: conn.send_audio(pcm(STEP)), "cannot send audio")
        assert_refused(conn, lambda: conn.start_generation(TICK), "when the connection is")


class TestStepAccounting:
    """§3.2: how audio becomes engine steps (80 ms = 1280 samples per step)"""

    @pytest.mark.parametrize(
        ("delay_ms", "first_ms", "flush_steps"),
        [
            (80, 162.5, 12),
            (160, 242.5, 13),
            (480, 562.5, 17),
            (960, 1042.5, 23),
            (2400, 2482.5, 41),
        ],
    )
    def test_reference_table(self, delay_ms: int, first_ms: float, flush_steps: int) -> None:
        first = first_step_samples(delay_ms)
        assert first * 1000 / 16000 == first_ms
        assert steps_for_samples(first - 1, delay_ms) == 0
        assert steps_for_samples(first, delay_ms) == 1
        # right padding at final: (delay tokens + 1 + 10) steps of silence
        right_pad = (delay_ms // 80 + 11) * STEP
        assert steps_for_samples(first + right_pad, delay_ms) - 1 == flush_steps

    def test_first_step_at_480_ms(self) -> None:
        assert first_step_samples(480) == 9000

    @pytest.mark.parametrize(
        ("seconds", "before_final", "total"), [(0.5, 0, 17), (2.0, 18, 35), (10.0, 118, 135)]
    )
    def test_simulated_generations_at_480_ms(
        self, seconds: float, before_final: int, total: int
    ) -> None:
        samples = round(seconds * 16000)
        assert steps_for_samples(samples, 480) == before_final
        assert steps_for_samples(samples + 17 * STEP, 480) == total

    @pytest.mark.parametrize(
        ("samples", "steps"), [(0, 0), (8999, 0), (9000, 1), (10279, 1), (10280, 2), (11560, 3)]
    )
    def test_one_more_step_per_1280_samples(self, samples: int, steps: int) -> None:
        assert steps_for_samples(samples, 480) == steps

    def test_expected_and_lag_steps_follow_the_audio_sent(self) -> None:
        conn = running()
        now = 0.0
        for _ in range(20):  # 2.0 s in 100 ms chunks, as vLLM's own test sends it
            now += 0.1
            conn.send_audio(pcm(1600))
        assert conn.samples_sent == 32000
        assert conn.expected_steps == 18
        assert conn.lag_steps == 18
        for _ in range(10):
            conn.receive_text(DELTA_EMPTY, now)
        assert conn.lag_steps == 8
        for _ in range(10):
            conn.receive_text(DELTA_EMPTY, now)
        assert conn.lag_steps == 0  # never negative
        for _ in range(80):  # up to 10 s
            conn.send_audio(pcm(1600))
        assert conn.expected_steps == 118

    def test_the_unsent_remainder_does_not_count(self) -> None:
        conn = running()
        conn.send_audio(pcm(FIRST - 1))  # one sample short of the first step: carried
        assert conn.samples_sent == FIRST - 1
        assert conn.expected_steps == 0
        conn.send_audio(pcm(STEP))  # the first step's append goes; the second is carried
        assert conn.expected_steps == 1
        conn.finish_generation(TICK)
        assert conn.expected_steps == 1  # flushed, but still a sample short of step 2

    def test_no_lag_unless_running(self) -> None:
        conn = running()
        conn.send_audio(pcm(20 * STEP))
        assert conn.lag_steps > 0
        conn.finish_generation(TICK)
        assert conn.lag_steps == 0  # the right-pad flush runs at GPU speed
        assert opened().lag_steps == 0

    def test_the_delay_is_the_servers(self) -> None:
        conn = running(transcription_delay_ms=80)
        conn.send_audio(pcm(2 * STEP + 40))
        conn.finish_generation(TICK)
        assert conn.expected_steps == 1
        conn = running(transcription_delay_ms=2400)
        conn.send_audio(pcm(39719))
        assert conn.expected_steps == 0
        conn.send_audio(pcm(1))
        assert conn.expected_steps == 1


# -- receive_text never raises ---------------------------------------------------------------------

FRAMES = st.lists(ANY_FRAME, min_size=1, max_size=6)
EVENT_TYPES = (
    SessionCreated,
    GenerationStarted,
    DeltaReceived,
    GenerationFinished,
    GenerationFailed,
    ServerErrorReceived,
    MalformedMessageReceived,
)


class TestReceiveTextNeverRaises:
    """style.md "Error model": whatever the server sends becomes an event, in any state"""

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(state=st.sampled_from(sorted(BUILDERS)), frames=FRAMES)
    def test_any_frames_in_any_state(self, state: str, frames: list[str]) -> None:
        conn = BUILDERS[state]()
        now = 0.0
        for text in frames:
            now += TICK
            conn.receive_text(text, now)
            for event in conn.events_received():
                assert isinstance(event, EVENT_TYPES)
                if isinstance(event, MalformedMessageReceived):
                    assert event.raw == text
            assert_nothing_sent(conn)  # server input never makes the client write
            assert conn.steps >= 0
            if conn.generation_state is not GenerationState.IDLE:
                assert conn.state in (ConnectionState.CONNECTING, ConnectionState.OPEN)
