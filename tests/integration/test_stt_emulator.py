"""The real SpeechStream against the emulator, over a real WebSocket on 127.0.0.1."""

from __future__ import annotations

import pytest
from livekit.agents import stt

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import frames_of, normalize, transcribe

SCRIPT = (
    "hello world. the meeting starts now. <pause:900> we can hear the quick brown fox. "
    "<pause:1000> thank you everyone."
)


@pytest.mark.parametrize(("rate", "frame_ms"), [(48000, 10), (24000, 50)])
async def test_exact_text_multi_sentence(engine: STT, rate: int, frame_ms: int) -> None:
    speech = synthesize(SCRIPT, sample_rate=rate)
    run = await transcribe(engine, frames_of(speech, frame_ms))
    assert normalize(run.text) == normalize(speech.text)
