"""Step arithmetic (reference §3.2) seen over the wire, and real-time pacing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from livekit_plugins_voxtral_vllm.protocol import encode_append_pcm
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .support import Client, open_client, silence


@pytest.mark.parametrize(
    ("seconds", "before_final", "total"),
    [(2.0, 18, 35), (0.5, 0, 17), (10.0, 118, 135)],
)
async def test_steps_before_and_after_final(
    emulator: VLLMRealtimeEmulator,
    client: Client,
    seconds: float,
    before_final: int,
    total: int,
) -> None:
    await client.commit()
    await client.append(silence(seconds))
    assert await client.deltas(before_final) == [""] * before_final
    await client.expect_nothing(0.1)
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert len(deltas) == total - before_final
    assert done["usage"]["completion_tokens"] == total
    gen = emulator.connections[0].generations[0]
    assert gen.steps == total and gen.audio_samples == round(seconds * 16000)


async def test_first_delta_needs_delay_plus_82_5_ms_of_audio(client: Client) -> None:
    await client.commit()
    await client.append(silence(8999 / 16000))
    await client.expect_nothing()
    await client.ws.send(encode_append_pcm(np.zeros(1, np.int16)))  # sample 9000
    assert await client.deltas(1) == [""]
    await client.ws.send(encode_append_pcm(np.zeros(1279, np.int16)))
    await client.expect_nothing()
    await client.ws.send(encode_append_pcm(np.zeros(1, np.int16)))  # + 1280: step 1
    assert await client.deltas(1) == [""]


async def test_audio_before_commit_counts_for_the_first_step(client: Client) -> None:
    await client.append(silence(1.0))
    await client.expect_nothing()
    await client.commit()
    # (16000 - 9000) // 1280 + 1 = 6 steps run as soon as the generation starts.
    assert len(await client.deltas(6)) == 6
    await client.expect_nothing(0.1)


@pytest.mark.parametrize(
    ("delay_ms", "first_step_samples", "pad_steps", "prompt_tokens"),
    [(80, 2600, 12, 34), (160, 3880, 13, 35), (480, 9000, 17, 39), (2400, 39720, 41, 63)],
)
async def test_delay_table(
    delay_ms: int, first_step_samples: int, pad_steps: int, prompt_tokens: int
) -> None:
    async with VLLMRealtimeEmulator(fast=True, transcription_delay_ms=delay_ms) as emu:
        client = await open_client(emu)
        await client.commit()
        await client.append(np.zeros(first_step_samples - 1, np.int16))
        await client.expect_nothing(0.1)
        await client.ws.send(encode_append_pcm(np.zeros(1, np.int16)))
        assert len(await client.deltas(1)) == 1
        await client.commit(final=True)
        deltas, done = await client.until_done()
        # The right pad is (delay_tokens + 11) whole steps of silence.
        assert len(deltas) == pad_steps
        assert done["usage"]["prompt_tokens"] == prompt_tokens


async def test_delay_must_be_a_multiple_of_80() -> None:
    with pytest.raises(ValueError, match="multiple of 80"):
        VLLMRealtimeEmulator(transcription_delay_ms=500)


async def test_real_time_pacing_and_right_pad_flush() -> None:
    """Steps never run ahead of the audio; after final the flush runs at step_time_s each."""
    speech = synthesize("hello world.")
    chunks = speech.frames(100)
    async with VLLMRealtimeEmulator(step_time_s=0.01) as emu:
        client = await open_client(emu)
        await client.commit()
        loop = asyncio.get_running_loop()
        sent = 0
        arrivals: list[tuple[float, int]] = []  # (time, samples sent before it)

        async def reader() -> None:
            while True:
                event = await client.recv(10)
                arrivals.append((loop.time(), sent))
                if event["type"] == "transcription.done":
                    return

        task = asyncio.create_task(reader())
        start = loop.time()
        for i, chunk in enumerate(chunks):
            # Like a capture device: chunk i is sent once its 100 ms have been recorded.
            await asyncio.sleep(max(0.0, start + 0.1 * (i + 1) - loop.time()))
            await client.ws.send(encode_append_pcm(chunk))
            sent += len(chunk)
        final_at = loop.time()
        await client.commit(final=True)
        await asyncio.wait_for(task, 10)

    deltas = [e for e in client.events if e["type"] == "transcription.delta"]
    done = client.events[-1]
    assert done["text"] == speech.text == "".join(e["delta"] for e in deltas)
    total = (sent + 21760 - 9000) // 1280 + 1
    assert len(deltas) == total
    # Delta k never arrives before 9000 + 1280 k samples were sent.
    for k, (_, sent_before) in enumerate(arrivals[: len(deltas)]):
        assert sent_before >= 9000 + 1280 * k or sent_before == sent
    # The first delta comes once 562.5 ms of audio have streamed, in real time.
    assert arrivals[0][0] - start >= 0.5625
    # The right-pad flush: ~17 steps at 10 ms each, not 17 x 80 ms of real time.
    assert arrivals[-1][0] - final_at < 1.0
    # The modelled engine: steps are sequential, 10 ms of compute each.
    gen = emu.connections[0].generations[0]
    gaps = np.diff(gen.step_times)
    assert gaps.min() >= 0.01 - 1e-9
    assert gen.final_at is not None and gen.step_times[-1] - gen.final_at < 0.25


async def test_slow_steps_fall_behind_real_time() -> None:
    async with VLLMRealtimeEmulator(step_time_s=0.01) as emu:
        client = await open_client(emu)
        await client.commit()
        emu.step_time_s = 0.05  # the GPU is overloaded: 50 ms per step
        await client.append(silence(2.0))  # 18 steps' worth arrives at once
        await asyncio.sleep(0.3)
        backlog = emu.connections[0].engine.runnable_steps()
        assert emu.connections[0].generations[0].steps <= 8
        assert backlog >= 10
        emu.step_time_s = 0  # recover: steps run as fast as audio allows again
        await client.deltas(18)
        await client.expect_nothing(0.1)


async def test_lowering_step_time_reschedules_a_step_already_due_late() -> None:
    async with VLLMRealtimeEmulator(step_time_s=0.01) as emu:
        client = await open_client(emu)
        await client.commit()
        emu.step_time_s = 3600.0  # the engine stalls: the next step is an hour away
        await client.append(silence(1.0))
        await client.expect_nothing(0.2)
        emu.step_time_s = 0.01  # it recovers: the pending step is due by the new time
        assert len(await client.deltas(6, timeout=1.0)) == 6


async def test_two_hundred_real_time_connections() -> None:
    """The emulator scales to 200 concurrent real-time streams in one process."""
    speech = synthesize("hello world.")
    chunks = speech.frames(100)
    async with VLLMRealtimeEmulator(step_time_s=0.01, record_audio=False) as emu:
        clients = await asyncio.gather(*(open_client(emu) for _ in range(200)))
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def stream(client: Client) -> str:
            await client.commit()
            for i, chunk in enumerate(chunks):
                await asyncio.sleep(max(0.0, start + 0.1 * i - loop.time()))
                await client.ws.send(encode_append_pcm(chunk))
            await client.commit(final=True)
            _, done = await client.until_done(timeout=10)
            text: str = done["text"]
            return text

        texts = await asyncio.wait_for(asyncio.gather(*(stream(c) for c in clients)), 30)
        elapsed = loop.time() - start
        assert texts == [speech.text] * 200
        # Clients and server share one process here, so only a loose bound on wall time; the
        # modelled engine itself never lags: each step ends 10 ms after its input is there.
        assert elapsed < speech.duration_s + 5.0
        for conn in emu.connections:
            gen = conn.generations[0]
            assert np.diff(gen.step_times).min() >= 0.01 - 1e-9
            assert gen.final_at is not None and gen.step_times[-1] - gen.final_at < 0.25
        await asyncio.gather(*(c.ws.close() for c in clients))
        assert emu.stats().dones == 200
