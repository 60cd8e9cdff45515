"""Fault injection: drops, crashes and restarts, generation errors, malformed frames."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .support import Client, open_client, silence


async def test_drop_now_has_no_close_frame(emulator: VLLMRealtimeEmulator, client: Client) -> None:
    await client.commit()
    await client.append(silence(1.0))
    await client.deltas(6)
    conn = emulator.connections[0]
    conn.drop()
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.rcvd is None and info.value.sent is None
    await conn.wait_closed(2)
    assert conn.close_reason == "dropped"
    assert conn.generations[0].finished_reason == "disconnect"
    assert emulator.stats().dropped == 1


async def test_drop_after_n_steps(emulator: VLLMRealtimeEmulator, client: Client) -> None:
    emulator.connections[0].drop(after_steps=5)
    await client.commit()
    await client.append(silence(2.0))
    assert len(await client.deltas(5)) == 5
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.rcvd is None
    assert emulator.connections[0].generations[0].steps == 5


async def test_drop_all(emulator: VLLMRealtimeEmulator) -> None:
    clients = [await open_client(emulator) for _ in range(3)]
    emulator.drop_all()
    for client in clients:
        with pytest.raises(ConnectionClosedError) as info:
            await client.recv()
        assert info.value.rcvd is None
    await emulator.wait_until(lambda: not emulator.active_connections)
    # The server itself keeps serving.
    other = await open_client(emulator)
    speech = synthesize("okay.")
    _, done = await other.transcribe(speech.samples)
    assert done["text"] == speech.text


async def test_crash_and_restart_on_the_same_port(emulator: VLLMRealtimeEmulator) -> None:
    client = await open_client(emulator)
    port = emulator.port
    await emulator.stop()
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.rcvd is None
    with pytest.raises(OSError):
        await connect(emulator.url, open_timeout=2)
    await emulator.restart()
    assert emulator.port == port
    other = await open_client(emulator)
    speech = synthesize("ready.")
    _, done = await other.transcribe(speech.samples)
    assert done["text"] == speech.text
    assert len(emulator.connections) == 2
    assert emulator.connections[0].close_reason == "server_stopped"
    assert emulator.stats().restarts == 1


async def test_graceful_shutdown_closes_with_1012() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        client = await open_client(emu)
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012


async def test_processing_error_after_n_steps(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    conn = emulator.connections[0]
    conn.inject_processing_error("CUDA error: an illegal memory access", after_steps=4)
    speech = synthesize("the project update is done.")
    await client.commit()
    await client.append(silence(1.0))
    assert len(await client.deltas(4)) == 4
    assert await client.recv() == {
        "type": "error",
        "error": "CUDA error: an illegal memory access",
        "code": "processing_error",
    }
    gen = conn.generations[0]
    assert gen.finished_reason == "error" and gen.done_text is None
    # No generation runs now: audio and a final only queue up, with no reply.
    await client.append(speech.samples)
    await client.commit(final=True)
    await client.expect_nothing()
    # The next commit starts a new generation, which reads that queue.
    await client.commit()
    deltas, done = await client.until_done()
    assert done["text"] == "".join(deltas) == speech.text
    # Nothing was cleared: the silence left over after the error and the speech.
    assert gen.audio_samples + conn.generations[1].audio_samples == conn.audio_samples


async def test_processing_error_keeps_the_queue(emulator: VLLMRealtimeEmulator) -> None:
    emulator.step_time_s = 0.02
    client = await open_client(emulator)
    first, queued = synthesize("one."), synthesize("two.")
    conn = emulator.connections[0]
    await client.commit()
    await client.append(first.samples)
    await client.commit(final=True)
    await client.append(queued.samples)  # lands behind the consumed sentinel
    await emulator.wait_until(lambda: conn.engine.queued_items > 0)
    conn.inject_processing_error(after_steps=2)
    while (await client.recv())["type"] != "error":
        pass
    emulator.step_time_s = 0
    # Unlike done, the error path does not clear the queue: "two." feeds the next generation.
    _, done = await client.transcribe(np.zeros(0, np.int16))
    assert done["text"] == queued.text


async def test_processing_error_armed_while_idle(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    emulator.connections[0].inject_processing_error("Engine generate failed")
    await client.expect_nothing()
    await client.commit()
    assert await client.recv() == {
        "type": "error",
        "error": "Engine generate failed",
        "code": "processing_error",
    }
    speech = synthesize("good.")
    _, done = await client.transcribe(speech.samples)
    assert done["text"] == speech.text


async def test_malformed_frames_are_sent_in_order(
    emulator: VLLMRealtimeEmulator, client: Client
) -> None:
    conn = emulator.connections[0]
    conn.send_text("garbage {")
    conn.send_text('{"type":"transcription.delta"}')
    assert await client.recv_raw() == "garbage {"
    assert await client.recv_raw() == '{"type":"transcription.delta"}'
    await client.send("x")
    assert (await client.recv())["code"] == "invalid_json"
    assert conn.sent[1:3] == ["garbage {", '{"type":"transcription.delta"}']


async def test_emulator_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    async with VLLMRealtimeEmulator(step_time_s=0.01) as emu:
        client = await open_client(emu)
        await client.commit()
        await client.append(silence(1.0))
        await client.deltas(2)
        emu.connections[0].drop(after_steps=100)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
