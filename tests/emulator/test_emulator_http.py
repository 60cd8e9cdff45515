"""HTTP side of the emulator: /health, /v1/models, /version and the API-key middleware."""

from __future__ import annotations

import time

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

from .support import MODEL, open_client


async def test_health_version_and_not_found(emulator: VLLMRealtimeEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.http_url}/health") as resp:
            assert resp.status == 200
            assert await resp.read() == b""
        async with http.get(f"{emulator.http_url}/version") as resp:
            assert resp.status == 200
            assert await resp.text() == '{"version":"0.33.0"}'
        async with http.get(f"{emulator.http_url}/nope") as resp:
            assert resp.status == 404
            assert await resp.json() == {"detail": "Not Found"}
        async with http.get(f"{emulator.http_url}/v1/realtime") as resp:
            assert resp.status == 404  # no HTTP route, only the WebSocket one
    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{emulator.port}/v1/transcriptions")
    assert info.value.response.status_code == 403  # Starlette: unrouted WebSocket


async def test_models_listing_has_vllm_shape() -> None:
    async with VLLMRealtimeEmulator(fast=True, max_model_len=4096) as emu:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emu.http_url}/v1/models") as resp:
                assert resp.status == 200
                body = await resp.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert list(card) == [
        "id",
        "object",
        "created",
        "owned_by",
        "root",
        "parent",
        "max_model_len",
        "permission",
    ]
    assert card["id"] == card["root"] == MODEL
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["parent"] is None and card["max_model_len"] == 4096
    assert isinstance(card["created"], int) and abs(card["created"] - time.time()) < 60
    (perm,) = card["permission"]
    assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")


async def test_api_key_guards_v1_only() -> None:
    async with VLLMRealtimeEmulator(fast=True, api_key="s3cret") as emu:
        with pytest.raises(InvalidStatus) as info:
            await connect(emu.url, open_timeout=2)
        assert info.value.response.status_code == 401
        assert info.value.response.body == b'{"error":"Unauthorized"}'
        for header in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearer  s3cret"):
            with pytest.raises(InvalidStatus) as info:
                await connect(emu.url, additional_headers={"Authorization": header})
            assert info.value.response.status_code == 401
        client = await open_client(emu, headers={"Authorization": "bearer s3cret"})
        await client.ws.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emu.http_url}/v1/models") as resp:
                assert resp.status == 401
                assert await resp.json() == {"error": "Unauthorized"}
            auth = {"Authorization": "Bearer s3cret"}
            async with http.get(f"{emu.http_url}/v1/models", headers=auth) as resp:
                assert resp.status == 200
            async with http.get(f"{emu.http_url}/health") as resp:
                assert resp.status == 200
            async with http.get(f"{emu.http_url}/version") as resp:
                assert resp.status == 200
        assert emu.stats().unauthorized == 6


async def test_several_served_model_names() -> None:
    async with VLLMRealtimeEmulator(fast=True, served_model_name=["voxtral", MODEL]) as emu:
        client = await open_client(emu, update=False)
        await client.update("voxtral")
        await client.update(MODEL)
        await client.expect_nothing()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emu.http_url}/v1/models") as resp:
                ids = [card["id"] for card in (await resp.json())["data"]]
        assert ids == ["voxtral", MODEL]
