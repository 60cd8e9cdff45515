"""Behaviour profiles of older vLLM releases (``vllm_version=``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .support import open_client, silence

ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


async def test_engine_death_at_max_model_len_before_0_32() -> None:
    async with VLLMRealtimeEmulator(
        fast=True, vllm_version="0.31.0", max_model_len=39 + 30, engine_death_exit_delay_s=0.2
    ) as emu:
        victim, bystander, idle = [await open_client(emu) for _ in range(3)]
        await bystander.commit()
        await bystander.append(silence(0.7))
        await bystander.deltas(2)
        await victim.commit()
        await victim.append(silence(4.0))  # step 30 overruns max_model_len
        assert len(await victim.deltas(30)) == 30
        dead = {"type": "error", "error": ENGINE_DEAD, "code": "processing_error"}
        assert await victim.recv() == dead
        assert await bystander.recv() == dead
        assert emu.engine_dead
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emu.http_url}/health") as resp:
                assert resp.status == 503
        # Then the API server exits: every socket goes, and the port is closed.
        for client in (victim, bystander, idle):
            with pytest.raises(ConnectionClosedError) as info:
                await client.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
        assert not emu.is_serving
        with pytest.raises(OSError):
            await connect(emu.url, open_timeout=2)
        assert emu.stats().engine_deaths == 1
        await emu.restart()
        assert not emu.engine_dead
        client = await open_client(emu)
        speech = synthesize("yes.")  # 21 steps: fits
        _, done = await client.transcribe(speech.samples)
        assert done["text"] == speech.text


async def test_0_18_accepts_any_model_and_commits_without_validation() -> None:
    async with VLLMRealtimeEmulator(fast=True, vllm_version="0.18.1") as emu:
        client = await open_client(emu, update=False)
        speech = synthesize("hello.")
        await client.commit()
        error = await client.recv()
        assert error["code"] == "model_not_validated"
        # The missing `return`: the generation runs anyway, and so does the final commit.
        await client.append(speech.samples)
        await client.commit(final=True)
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "transcription.done":
            events.append(await client.recv())
        assert [e.get("code") for e in events if e["type"] == "error"] == ["model_not_validated"]
        done = events[-1]
        assert done["text"] == speech.text
        assert list(done["usage"]) == [  # < 0.28: four keys
            "prompt_tokens",
            "total_tokens",
            "completion_tokens",
            "prompt_tokens_details",
        ]
        await client.update("no/such-model")
        await client.expect_nothing()
        await client.send({"type": "session.update"})
        assert await client.recv() == {
            "type": "error",
            "error": "'model'",
            "code": "processing_error",
        }


async def test_api_key_breaks_websockets_before_0_20() -> None:
    async with VLLMRealtimeEmulator(fast=True, vllm_version="0.19.0", api_key="k") as emu:
        with pytest.raises(InvalidStatus) as info:
            await connect(emu.url, additional_headers={"Authorization": "Bearer k"})
        assert info.value.response.status_code == 500


async def test_token_feedback_hang_in_0_17_to_0_24() -> None:
    async with VLLMRealtimeEmulator(
        fast=True, vllm_version="0.24.0", engine_iteration_timeout_s=0.2
    ) as emu:
        client = await open_client(emu)
        await client.commit()
        await asyncio.sleep(0.3)  # no audio for longer than the timeout
        await client.append(silence(2.0))
        await client.commit(final=True)
        # Step 0 runs on the prompt tokens; its output is never fed back: silence forever.
        assert len(await client.deltas(1)) == 1
        await client.expect_nothing(0.3)
        await client.commit()  # ignored: the generation is still "running"
        await client.expect_nothing(0.1)
        gen = emu.connections[0].generations[0]
        assert gen.hung and gen.running


async def test_no_hang_when_audio_keeps_flowing_in_0_24() -> None:
    async with VLLMRealtimeEmulator(
        step_time_s=0.01, vllm_version="0.24.0", engine_iteration_timeout_s=0.3
    ) as emu:
        client = await open_client(emu)
        speech = synthesize("one two.")
        await client.commit()
        for chunk in speech.frames(100):
            await client.append(chunk)
            await asyncio.sleep(0.05)
        await client.commit(final=True)
        _, done = await client.until_done()
        assert done["text"] == speech.text


def test_unsupported_versions() -> None:
    with pytest.raises(ValueError, match="not emulated"):
        VLLMRealtimeEmulator(vllm_version="0.16.0")
    with pytest.raises(ValueError, match="no token-feedback timeout"):
        VLLMRealtimeEmulator(vllm_version="0.33.0", engine_iteration_timeout_s=1.0)
