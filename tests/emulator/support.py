"""A thin raw-protocol ``/v1/realtime`` client for the emulator tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from livekit_plugins_voxtral_vllm.protocol import COMMIT, COMMIT_FINAL, encode_append_pcm
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator
from livekit_plugins_voxtral_vllm.testing.server import DEFAULT_MODEL

MODEL = DEFAULT_MODEL
CHUNK = 1600  # 100 ms, as vLLM's own tests send


class Client:
    """A raw ``/v1/realtime`` client: what vLLM's tests do, with no plugin logic."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str)
        event: dict[str, Any] = json.loads(raw)
        self.events.append(event)
        return event

    async def recv_raw(self, timeout: float = 5.0) -> str:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str)
        return raw

    async def expect_nothing(self, within: float = 0.2) -> None:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), within)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {raw!r}")

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    async def update(self, model: str = MODEL) -> None:
        await self.send({"type": "session.update", "model": model})

    async def commit(self, final: bool = False) -> None:
        await self.send(COMMIT_FINAL if final else COMMIT)

    async def append(self, samples: np.ndarray, chunk: int = CHUNK) -> None:
        for i in range(0, len(samples), chunk):
            await self.ws.send(encode_append_pcm(samples[i : i + chunk]))

    async def deltas(self, n: int, timeout: float = 5.0) -> list[str]:
        """Exactly ``n`` deltas (fails on anything else first)."""
        out = []
        for _ in range(n):
            event = await self.recv(timeout)
            assert event["type"] == "transcription.delta", event
            out.append(event["delta"])
        return out

    async def until_done(self, timeout: float = 5.0) -> tuple[list[str], dict[str, Any]]:
        """Deltas until ``done`` (fails on an error first)."""
        deltas = []
        while True:
            event = await self.recv(timeout)
            if event["type"] == "transcription.delta":
                deltas.append(event["delta"])
            elif event["type"] == "transcription.done":
                return deltas, event
            else:
                raise AssertionError(f"unexpected event {event}")

    async def transcribe(self, samples: np.ndarray) -> tuple[list[str], dict[str, Any]]:
        """commit, append all, final, wait for done."""
        await self.commit()
        await self.append(samples)
        await self.commit(final=True)
        return await self.until_done()


async def open_client(
    emu: VLLMRealtimeEmulator, *, update: bool = True, headers: dict[str, str] | None = None
) -> Client:
    ws = await connect(emu.url, additional_headers=headers, open_timeout=5)
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    if update:
        await client.update()
    return client


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * 16000), dtype=np.int16)
