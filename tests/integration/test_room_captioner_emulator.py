"""RoomCaptioner end to end, minus the LiveKit server.

Real pieces: ``RoomCaptioner`` with one ``AgentSession`` and RoomIO per participant, the Voxtral
``STT``, and the vLLM emulator on 127.0.0.1. Stand-ins: the room (``FakeRoom``, recording the
``lk.transcription`` streams) and the participants' microphones (synthesized speech pushed into
each session's audio input).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
)
from livekit.agents.voice.io import AudioInput

from livekit_plugins_voxtral_vllm import STT, RoomCaptioner
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from ..fake_livekit import FakeRoom, PublishedText, wait_until

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
        speech = synthesize(script, sample_rate=rate)
        # trailing silence lets the endpointer close the last caption
        samples = np.concatenate([speech.samples, np.zeros(rate * 2, dtype=np.int16)])
        n = rate * frame_ms // 1000
        for start in range(0, len(samples) - n + 1, n):
            chunk = samples[start : start + n].astype(np.int16)
            self._frames.put_nowait(rtc.AudioFrame(chunk.tobytes(), rate, 1, n))
            await asyncio.sleep(0.001)
        return str(speech.text)


def _finals(captions: list[PublishedText]) -> list[str]:
    return [c.text for c in captions if c.attributes[ATTRIBUTE_TRANSCRIPTION_FINAL] == "true"]


def all_final(room: FakeRoom) -> str:
    """Every final caption published in the room, joined, spaces normalized."""
    return " ".join(" ".join(_finals(room.local_participant.published)).split())


async def test_every_participant_gets_their_own_live_captions(
    emulator: VLLMRealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    room = FakeRoom()
    baseline = asyncio.all_tasks()
    captioner = RoomCaptioner(
        room, lambda: STT(base_url=emulator.url), close_transcript_timeout=0.5
    )
    captioner.start()
    participants = {name: room.join(name) for name in SCRIPTS}
    await wait_until(lambda: all(captioner.session(n) for n in SCRIPTS), timeout=10)

    microphones = {}
    for name in SCRIPTS:
        microphones[name] = Microphone()
        session = captioner.session(name)
        assert session is not None
        session.input.audio = microphones[name]

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

    with caplog.at_level(logging.INFO, logger="livekit.plugins.voxtral_vllm"):
        room.leave(participants["bob"])
        await wait_until(lambda: captioner.captioned == {"alice", "carol"}, timeout=10)
    # the stream's counters are logged when its session closes
    [stats] = [r.getMessage() for r in caplog.records if "caption stream stats" in r.message]
    assert stats.startswith("caption stream stats for 'bob': ")
    fields = dict(f.split("=") for f in stats.split(": ", 1)[1].split(", "))
    assert (fields["generations"], fields["reconnects"], fields["dropped_audio_s"]) == (
        "1",
        "0",
        "0.00",
    )
    await captioner.aclose()

    leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
    assert leftover <= {asyncio.current_task()}
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "Unclosed client session" not in caplog.text


RUT_SCRIPT = " <pause:300> ".join(
    ["hello world the meeting starts now .", "we can hear the quick brown fox .",
     "jumps over the lazy dog .", "good morning everyone let us begin .",
     "next slide please , thank you .", "hello world the meeting starts now ."]
)  # fmt: skip  # one utterance of about 14 s, past the rut threshold (10 s of speech)


async def _speak_through_a_rut(
    emulator: VLLMRealtimeEmulator, until: Callable[[FakeRoom, str], bool]
) -> tuple[FakeRoom, str]:
    """Alice says RUT_SCRIPT and leaves once ``until(room, spoken)``; returns both."""
    room = FakeRoom()
    async with RoomCaptioner(
        room, lambda: STT(base_url=emulator.url), close_transcript_timeout=0.5
    ) as captioner:
        alice = room.join("alice")
        await wait_until(lambda: captioner.session("alice") is not None, timeout=10)
        microphone = Microphone()
        session = captioner.session("alice")
        assert session is not None
        session.input.audio = microphone
        spoken = " ".join((await microphone.speak(RUT_SCRIPT)).split())
        await wait_until(lambda: until(room, spoken), timeout=20)
        room.leave(alice)
        await wait_until(lambda: captioner.captioned == frozenset(), timeout=10)
    return room, spoken


async def test_a_participant_hit_by_the_blank_token_rut_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """vllm#47614 on the first socket: the stream recovers on a fresh one, the captioner says
    whose captions were affected, and their stats line at close is a warning."""
    caplog.set_level(logging.INFO, logger="livekit.plugins.voxtral_vllm")
    async with VLLMRealtimeEmulator(fast=True) as emulator:
        emulator.rut_next_connections(1)
        # every word, after the fresh socket
        await _speak_through_a_rut(emulator, lambda room, spoken: all_final(room) == spoken)
    [named] = [r for r in caplog.records if r.getMessage().startswith("captions for 'alice':")]
    assert named.levelno == logging.WARNING and "blank tokens" in named.getMessage()
    [line] = [r for r in caplog.records if "caption stream stats for 'alice'" in r.message]
    assert line.levelno == logging.WARNING
    assert "blank_ruts=1," in line.getMessage() and "blank_ruts_persistent=0" in line.getMessage()
    assert "vllm#47614" in line.getMessage()


async def test_a_persistent_rut_is_an_error_naming_the_participant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="livekit.plugins.voxtral_vllm")
    async with VLLMRealtimeEmulator(fast=True) as emulator:
        emulator.rut = True

        def reported(room: FakeRoom, spoken: str) -> bool:
            return any(
                r.levelno == logging.ERROR
                and r.getMessage().startswith("captions for 'alice' are missing")
                for r in caplog.records
            )

        room, _ = await _speak_through_a_rut(emulator, reported)
    assert _finals(room.local_participant.published) == []
    [line] = [r for r in caplog.records if "caption stream stats for 'alice'" in r.message]
    assert "blank_ruts_persistent=1" in line.getMessage()
