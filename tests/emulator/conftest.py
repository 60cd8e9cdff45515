"""Fixtures for the emulator tests: a started fast emulator and a validated raw client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

from .support import Client, open_client


@pytest.fixture
async def emulator() -> AsyncIterator[VLLMRealtimeEmulator]:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        yield emu


@pytest.fixture
async def client(emulator: VLLMRealtimeEmulator) -> AsyncIterator[Client]:
    c = await open_client(emulator)
    try:
        yield c
    finally:
        await c.ws.close()
