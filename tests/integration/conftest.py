from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator


@pytest.fixture
async def emulator() -> AsyncIterator[VLLMRealtimeEmulator]:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        yield emu


@pytest.fixture
async def engine(emulator: VLLMRealtimeEmulator) -> AsyncIterator[STT]:
    stt = STT(base_url=emulator.url)
    yield stt
    await stt.aclose()
