"""The multi-user transcriber end to end, minus the LiveKit server.

Real pieces: ``MultiUserTranscriber``, ``CaptionSessionFactory`` (one ``AgentSession`` with
RoomIO per participant), the Voxtral STT built by ``build_stt``, and the vLLM emulator on
127.0.0.1. Stand-ins: the room (``FakeRoom``, recording ``lk.transcription`` streams) and the
participants' microphones (synthesized speech pushed into each session's audio input).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
)
from livekit.agents.voice.io import AudioInput

from ._fakes import FakeJobContext, FakeRoom, PublishedText, load_example, wait_until

testing = pytest.importorskip("livekit_plugins_voxtral_vllm.testing")
mut = load_example("multi_user_transcriber")

SCRIPTS = {
    "alice": "hello world. <pause:900> the meeting starts now.",
    "bob": "good morning everyone.",
    "carol": "thank you. <pause:900> next slide please.",
}


class Microphone(AudioInput):
    """Frames pushed by the test, read by the session as if from the participant's track."""

    def __init__(self) -> None:
        super().__init__(label="test-microphone")
        self._frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()

    async def __anext__(self) -> rtc.AudioFrame:
        return await self._frames.get()

    async def speak(self, script: str, *, rate: int = 48000, frame_ms: int = 10) -> str:
        speech = testing.synthesize(script, sample_rate=rate)
        # trailing silence lets the endpointer close the last caption
        samples = np.concatenate([speech.samples, np.zeros(rate * 2, dtype=np.int16)])
        n = rate * frame_ms // 1000
        for start in range(0, len(samples) - n + 1, n):
            chunk = samples[start : start + n].astype(np.int16)
            self._frames.put_nowait(rtc.AudioFrame(chunk.tobytes(), rate, 1, n))
            await asyncio.sleep(0.001)
        return str(speech.text)


@pytest.fixture
async def emulator() -> AsyncIterator[object]:
    async with testing.VLLMRealtimeEmulator(fast=True) as emu:
        yield emu


def _finals(captions: list[PublishedText]) -> list[str]:
    return [c.text for c in captions if c.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] == "true"]


async def test_every_participant_gets_their_own_live_captions(
    emulator: object, caplog: pytest.LogCaptureFixture
) -> None:
    room = FakeRoom()
    baseline = asyncio.all_tasks()
    config = mut.load_config({"VOXTRAL_VLLM_BASE_URL": emulator.url})  # type: ignore[attr-defined]
    transcriber = mut.MultiUserTranscriber(
        room,
        mut.CaptionSessionFactory(
            room, stt_factory=lambda: mut.build_stt(config), close_transcript_timeout=0.5
        ),
        max_participants=config.max_participants,
    )
    transcriber.start()
    participants = {name: room.join(name, subscribe=False) for name in SCRIPTS}
    await wait_until(lambda: all(transcriber.pipeline_for(n) for n in SCRIPTS), timeout=10)

    microphones = {}
    for name in SCRIPTS:
        microphones[name] = Microphone()
        transcriber.pipeline_for(name).session.input.audio = microphones[name]

    spoken = await asyncio.gather(*(microphones[n].speak(SCRIPTS[n]) for n in SCRIPTS))
    expected = {name: " ".join(text.split()) for name, text in zip(SCRIPTS, spoken, strict=True)}

    def captions(name: str) -> list[PublishedText]:
        return [c for c in room.local_participant.published if c.sender_identity == name]

    def all_finalized() -> bool:
        # one final caption per sentence
        return all(len(_finals(captions(n))) == expected[n].count(".") for n in SCRIPTS)

    await wait_until(all_finalized, timeout=10)

    for name, participant in participants.items():
        mine = captions(name)
        # each caption segment is final exactly once, after its updates, on the speaker's mic
        by_segment: dict[str, list[PublishedText]] = {}
        for c in mine:
            by_segment.setdefault(c.attributes[ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID], []).append(c)
            assert c.attributes[ATTRIBUTE_TRANSCRIPTION_TRACK_ID] == next(
                iter(participant.track_publications)
            )
        for updates in by_segment.values():
            flags = [u.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] for u in updates]
            assert flags[-1] == "true" and flags.count("true") == 1
        finals = " ".join(_finals(mine))
        assert " ".join(finals.split()) == expected[name]

    room.leave(participants["bob"])
    await wait_until(lambda: transcriber.captioned == {"alice", "carol"}, timeout=10)
    await transcriber.aclose()

    leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
    assert leftover <= {asyncio.current_task()}
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "Unclosed client session" not in caplog.text


async def test_entrypoint_wires_config_vad_and_shutdown(emulator: object) -> None:
    """The worker entrypoint: settings from the setup function, captions for participants
    already present and joining later, everything closed by the job's shutdown callback."""
    room = FakeRoom()
    room.add_existing("early")
    config = mut.load_config(
        {"VOXTRAL_VLLM_BASE_URL": emulator.url, "MAX_PARTICIPANTS": "1"}  # type: ignore[attr-defined]
    )
    ctx = FakeJobContext(room, {mut._CONFIG_KEY: config, mut._VAD_KEY: None})

    await mut.entrypoint(ctx)

    assert ctx.connected_with == mut.AutoSubscribe.AUDIO_ONLY
    [shutdown] = ctx.shutdown_callbacks
    transcriber = shutdown.__self__  # type: ignore[attr-defined]
    await wait_until(lambda: transcriber.pipeline_for("early") is not None, timeout=10)
    room.join("late", subscribe=False)
    assert transcriber.waiting == ("late",)  # MAX_PARTICIPANTS=1 from the config

    await shutdown()
    assert transcriber.captioned == frozenset()
