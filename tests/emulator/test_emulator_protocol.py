"""The emulator's /v1/realtime wire behaviour, rule by rule (reference §1, §2, §8.8)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError

from livekit_plugins_voxtral_vllm.protocol import encode_append_pcm
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .support import MODEL, Client, open_client, silence

NOT_VALIDATED = (
    "Model not validated. Make sure to validate the model by sending a session.update event."
)
EMPTY_DONE = (
    '{"type":"transcription.done","text":"","usage":{"prompt_tokens":0,"total_tokens":0,'
    '"completion_tokens":0,"prompt_tokens_details":null,"completion_tokens_details":null}}'
)


# -- session ------------------------------------------------------------------------------------


async def test_session_created_on_connect(emulator: VLLMRealtimeEmulator) -> None:
    client = await open_client(emulator, update=False)
    raw = json.dumps(client.events[0], separators=(",", ":"))
    assert re.fullmatch(r'\{"type":"session.created","id":"sess-[0-9a-f]{16}","created":\d+\}', raw)
    assert abs(client.events[0]["created"] - time.time()) < 5
    conn = emulator.connections[0]
    assert conn.sent[0] == raw
    assert conn.session_id == client.events[0]["id"]
    await client.ws.close()


async def test_session_update_success_is_silent(client: Client) -> None:
    await client.update()
    await client.send({"type": "ping"})
    # The first frame after two session.updates is the reply to the ping.
    assert await client.recv() == {
        "type": "error",
        "error": "Unknown event type: ping",
        "code": "unknown_event",
    }


async def test_session_update_ignores_everything_but_model(client: Client) -> None:
    await client.send(
        {"type": "session.update", "model": MODEL, "language": "fr", "turn_detection": None}
    )
    await client.expect_nothing()


async def test_invalid_model_is_rejected_with_its_name(emulator: VLLMRealtimeEmulator) -> None:
    client = await open_client(emulator, update=False)
    await client.update("mistralai/Voxtral-Mini-3B-2507")
    event = await client.recv()
    assert event == {
        "type": "error",
        "error": "The model `mistralai/Voxtral-Mini-3B-2507` does not exist.",
        "code": "model_not_found",
    }
    assert not emulator.connections[0].model_validated
    await client.commit()
    assert (await client.recv())["code"] == "model_not_validated"


async def test_empty_model_name_is_accepted(emulator: VLLMRealtimeEmulator) -> None:
    client = await open_client(emulator, update=False)
    await client.update("")
    await client.commit()
    await client.commit(final=True)
    assert await client.recv_raw() == EMPTY_DONE


@pytest.mark.parametrize(
    "event",
    [
        {"type": "session.update"},
        {"type": "session.update", "model": None},
        {"type": "session.update", "session": {"model": MODEL}},
    ],
)
async def test_session_update_without_model(
    emulator: VLLMRealtimeEmulator, event: dict[str, object]
) -> None:
    client = await open_client(emulator, update=False)
    await client.send(event)
    assert await client.recv() == {
        "type": "error",
        "error": "Missing required field: model",
        "code": "invalid_event",
    }


@pytest.mark.parametrize("final", [False, True])
async def test_commit_without_session_update(emulator: VLLMRealtimeEmulator, final: bool) -> None:
    client = await open_client(emulator, update=False)
    await client.append(silence(1.0))
    await client.commit(final=final)
    assert await client.recv() == {
        "type": "error",
        "error": NOT_VALIDATED,
        "code": "model_not_validated",
    }
    # The commit was dropped: no generation, no deltas.
    await client.expect_nothing()
    assert emulator.connections[0].generations == []


# -- error catalogue -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "code"),
    [
        ("not json", "Invalid JSON", "invalid_json"),
        ("", "Invalid JSON", "invalid_json"),
        ('{"type": "input_audio_buffer.clear"}', "Unknown event type: input_audio_buffer.clear",
         "unknown_event"),
        ('{"type": "response.create"}', "Unknown event type: response.create", "unknown_event"),
        ("{}", "Unknown event type: None", "unknown_event"),
        ("[1, 2]", "'list' object has no attribute 'get'", "processing_error"),
        ('"text"', "'str' object has no attribute 'get'", "processing_error"),
        ("42", "'int' object has no attribute 'get'", "processing_error"),
        ("null", "'NoneType' object has no attribute 'get'", "processing_error"),
    ],
)  # fmt: skip
async def test_error_catalogue(client: Client, frame: str, error: str, code: str) -> None:
    await client.send(frame)
    assert await client.recv() == {"type": "error", "error": error, "code": code}


async def test_append_without_audio_is_a_pydantic_processing_error(client: Client) -> None:
    await client.send({"type": "input_audio_buffer.append"})
    event = await client.recv()
    assert event["code"] == "processing_error"
    assert event["error"].startswith(
        "1 validation error for InputAudioBufferAppend\naudio\n  Field required [type=missing, "
        "input_value={'type': 'input_audio_buffer.append'}, input_type=dict]\n"
        "    For further information visit https://errors.pydantic.dev/"
    )


async def test_final_null_is_a_pydantic_processing_error(client: Client) -> None:
    await client.send({"type": "input_audio_buffer.commit", "final": None})
    event = await client.recv()
    assert event["code"] == "processing_error"
    assert event["error"].startswith("1 validation error for InputAudioBufferCommit\nfinal\n")
    assert "[type=bool_type, input_value=None, input_type=NoneType]" in event["error"]


@pytest.mark.parametrize(
    "audio",
    [
        "abc",  # bad padding
        base64.b64encode(b"\x01\x02\x03").decode(),  # odd byte count
        "",  # empty
    ],
)
async def test_invalid_audio(client: Client, audio: str) -> None:
    await client.send({"type": "input_audio_buffer.append", "audio": audio})
    assert await client.recv() == {
        "type": "error",
        "error": "Invalid audio data",
        "code": "invalid_audio",
    }
    assert client.ws.state.name == "OPEN"


async def test_errors_never_close_the_socket(client: Client) -> None:
    for frame in ["x", "[]", "{}", '{"type":"input_audio_buffer.append","audio":"!"}']:
        await client.send(frame)
        assert (await client.recv())["type"] == "error"
    speech = synthesize("hello world.")
    deltas, done = await client.transcribe(speech.samples)
    assert done["text"] == speech.text


async def test_appends_are_accepted_any_time_and_feed_the_next_generation(
    emulator: VLLMRealtimeEmulator,
) -> None:
    speech = synthesize("good morning everyone.")
    client = await open_client(emulator, update=False)
    # Before session.update and before any commit: silently queued.
    await client.append(speech.samples[:16000])
    await client.expect_nothing()
    await client.update()
    await client.append(speech.samples[16000:])
    await client.expect_nothing()
    conn = emulator.connections[0]
    assert conn.audio_samples == len(speech.samples)
    assert conn.engine.queued_items > 0 and conn.generations == []
    await client.commit()
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert done["text"] == speech.text == "".join(deltas)


async def test_binary_frame_drops_the_connection_without_close_frame(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    await client.ws.send(b"\x00\x01")
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.rcvd is None  # no close frame from the server
    conn = emulator.connections[0]
    await conn.wait_closed(2)
    assert conn.close_reason == "binary_frame"


async def test_replies_precede_a_binary_drop(client: Client) -> None:
    await client.send("oops")
    await client.ws.send(b"\x00")
    assert (await client.recv())["code"] == "invalid_json"
    with pytest.raises(ConnectionClosedError):
        await client.recv()


async def test_client_close_is_answered_normally(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    await client.commit()
    await client.append(silence(1.0))
    await client.ws.close()
    conn = emulator.connections[0]
    await conn.wait_closed(2)
    assert conn.close_reason == "client_closed"
    assert conn.generations[0].finished_reason == "disconnect"
    assert emulator.active_connections == []


# -- generations ----------------------------------------------------------------------------------


async def test_vllm_multi_chunk_streaming_flow(emulator: VLLMRealtimeEmulator) -> None:
    """vLLM's test_multi_chunk_streaming: warm-up utterance, then a full one, same socket."""
    speech = synthesize("welcome everyone. the meeting starts now. <pause:500> next slide please.")
    client = await open_client(emulator)
    await client.commit()
    await client.append(speech.samples[:1600])
    await client.commit(final=True)
    while (await client.recv())["type"] not in ("transcription.done", "error"):
        pass
    deltas, done = await client.transcribe(speech.samples)
    assert done["text"] == "".join(deltas) == speech.text
    generations = emulator.connections[0].generations
    assert [g.finished_reason for g in generations] == ["done", "done"]
    assert generations[1].sent == emulator.connections[0].sent[-len(deltas) - 1 :]


async def test_transcript_and_lag_of_synthesized_speech(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    speech = synthesize("hello world. the quick brown fox jumps over the lazy dog ?")
    deltas, done = await client.transcribe(speech.samples)
    assert done["text"] == "".join(deltas) == speech.text
    # Step j covers real audio [1280 j, 1280 (j + 1)): a token never comes before its end.
    emitted = [i for i, d in enumerate(deltas) if d]
    assert len(emitted) == len(speech.words)
    for step, word in zip(emitted, speech.words, strict=True):
        assert deltas[step] == word.text
        assert 1280 * (step + 1) >= word.end_s * 16000
        assert 1280 * (step + 1) <= word.end_s * 16000 + 3 * 1280


async def test_done_frame_is_byte_exact(emulator: VLLMRealtimeEmulator, client: Client) -> None:
    speech = synthesize("yes.")
    await client.transcribe(speech.samples)
    done = emulator.connections[0].sent[-1]
    steps = emulator.connections[0].generations[0].steps
    assert done == (
        f'{{"type":"transcription.done","text":" yes.","usage":{{"prompt_tokens":39,'
        f'"total_tokens":{39 + steps},"completion_tokens":{steps},'
        f'"prompt_tokens_details":null,"completion_tokens_details":null}}}}'
    )
    assert emulator.connections[0].sent[1] == '{"type":"transcription.delta","delta":""}'


async def test_empty_commit_then_final(emulator: VLLMRealtimeEmulator, client: Client) -> None:
    """vLLM's test_empty_commit_does_not_crash_engine, then a normal second connection."""
    await client.commit()
    await client.commit(final=True)
    assert await client.recv_raw() == EMPTY_DONE
    await client.expect_nothing()
    other = await open_client(emulator)
    speech = synthesize("okay.")
    _, done = await other.transcribe(speech.samples)
    assert done["text"] == speech.text


async def test_commit_while_running_is_ignored(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    speech = synthesize("one two three.")
    await client.commit()
    await client.append(speech.samples[:8000])
    await client.commit()
    await client.commit()
    await client.append(speech.samples[8000:])
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert done["text"] == speech.text
    await client.expect_nothing()
    assert len(emulator.connections[0].generations) == 1


async def test_final_without_generation_poisons_the_next_one(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    speech = synthesize("thank you.")
    await client.commit(final=True)
    await client.expect_nothing()  # no reply, ever
    assert emulator.connections[0].engine.queued_sentinel
    await client.commit()
    # The stale sentinel ends the new generation before any audio: empty done at once.
    assert await client.recv_raw() == EMPTY_DONE
    assert emulator.connections[0].generations[0].poisoned
    # What the client streams now sits in the queue: there is no generation.
    await client.append(speech.samples)
    await client.expect_nothing()
    _, done = await client.transcribe(np.zeros(0, np.int16))
    assert done["text"] == speech.text


async def test_audio_between_final_and_done_is_discarded(emulator: VLLMRealtimeEmulator) -> None:
    emulator.step_time_s = 0.03  # the 17-step right-pad flush takes ~0.5 s
    client = await open_client(emulator)
    first, lost, kept = synthesize("one."), synthesize("two."), synthesize("three.")
    await client.commit()
    await client.append(first.samples)
    await client.commit(final=True)
    await client.append(lost.samples)  # reaches the server before done: cleared after done
    deltas, done = await client.until_done()
    assert done["text"] == first.text
    await client.append(kept.samples)  # after done: kept for the next generation
    await emulator.wait_until(
        lambda: (
            emulator.connections[0].audio_samples > 0
            and (emulator.connections[0].engine.queued_items > 0)
        )
    )
    emulator.step_time_s = 0
    _, done = await client.transcribe(np.zeros(0, np.int16))
    assert done["text"] == kept.text


async def test_usage_counts_prompt_and_steps(client: Client) -> None:
    _, done = await client.transcribe(silence(2.0))
    assert done["usage"] == {
        "prompt_tokens": 39,
        "total_tokens": 74,
        "completion_tokens": 35,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert list(done["usage"]) == [
        "prompt_tokens",
        "total_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    ]


# -- max_model_len --------------------------------------------------------------------------------


async def test_unsolicited_done_at_max_model_len() -> None:
    async with VLLMRealtimeEmulator(fast=True, max_model_len=39 + 40) as emu:
        client = await open_client(emu)
        speech = synthesize("hello world.")
        await client.commit()
        await client.append(silence(4.0))  # 4 s allows 43 steps; the limit stops at 40
        deltas, done = await client.until_done()
        assert len(deltas) == 40
        assert done["usage"]["completion_tokens"] == 40
        assert done["usage"]["prompt_tokens"] == 39
        gen = emu.connections[0].generations[0]
        assert gen.finished_reason == "max_model_len" and not gen.final_received
        # The socket stays open; later appends wait in the queue for a new commit.
        await client.append(speech.samples)
        await client.expect_nothing()
        deltas, done = await client.transcribe(np.zeros(0, np.int16))
        assert done["text"] == speech.text
        assert emu.connections[0].is_open


async def test_frames_over_16_mib_close_1009(client: Client) -> None:
    big = "A" * (16 * 1024 * 1024 + 16)
    await client.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": big}))
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_many_small_and_odd_sized_chunks(client: Client) -> None:
    speech = synthesize("the team is ready.")
    await client.commit()
    await client.append(speech.samples, chunk=333)
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert done["text"] == speech.text


async def test_received_records(emulator: VLLMRealtimeEmulator, client: Client) -> None:
    await client.send("nope")
    await client.recv()
    samples = silence(0.3)
    await client.ws.send(encode_append_pcm(samples))
    await client.commit()
    await client.commit(final=True)
    await client.until_done()
    conn = emulator.connections[0]
    types = [r.type for r in conn.received]
    assert types == [
        "session.update",
        None,
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.commit",
    ]
    assert conn.received[1].error_code == "invalid_json"
    assert conn.received[2].samples == 4800
    assert conn.received[2].event["audio"].startswith("<")
    assert conn.audio.dtype == np.int16 and len(conn.audio) == 4800
    gen = conn.generations[0]
    assert gen.audio_samples == 4800 and len(gen.audio) == 4800
    assert gen.steps == len(gen.deltas) == 14  # (4800 + 21760 - 9000) // 1280 + 1
    assert emulator.stats().errors == {"invalid_json": 1}
    await asyncio.sleep(0)
