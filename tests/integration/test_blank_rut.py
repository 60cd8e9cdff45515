"""The blank-token rut (vllm-project/vllm#47614) through the real STT and the emulator: the
``blank_rut_s`` threshold decides when long speech with only empty deltas counts as the rut."""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.stream_core import BlankRut
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, frames_of, normalize, transcribe

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

# one utterance of about 5 s: under the default 10 s, over a 3 s threshold
SHORT = "hello world the meeting starts now . <pause:300> we can hear the quick brown fox ."
# one utterance of about 14 s: over the default
LONG = " <pause:300> ".join(
    ["hello world the meeting starts now .", "we can hear the quick brown fox .",
     "jumps over the lazy dog .", "good morning everyone let us begin .",
     "next slide please , thank you .", "hello world the meeting starts now ."]
)  # fmt: skip


async def _run(
    emu: VLLMRealtimeEmulator, script: str, **kwargs: object
) -> tuple[Run, list[BlankRut]]:
    engine = STT(base_url=emu.url, **kwargs)  # type: ignore[arg-type]
    seen: list[BlankRut] = []
    engine.on("blank_rut", seen.append)
    try:
        run = await transcribe(
            engine, frames_of(synthesize(script, sample_rate=48000), 20), timeout=60.0
        )
    finally:
        await engine.aclose()
    return run, seen


async def test_a_lower_threshold_catches_a_rut_the_default_lets_pass() -> None:
    """The same 5 s utterance on a socket that ruts: the default (10 s) never sees enough
    blank speech and the utterance is lost; with blank_rut_s=3 the rut is caught after 3 s
    of speech and a fresh socket transcribes all of it."""
    speech = synthesize(SHORT)
    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.rut_next_connections(1)
        default_run, default_seen = await _run(emu, SHORT)
    assert default_seen == [] and default_run.finals == []
    assert default_run.stream.stats.blank_ruts == 0  # type: ignore[union-attr]

    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.rut_next_connections(1)
        run, seen = await _run(emu, SHORT, blank_rut_s=3)
    assert [(ev.persistent, ev.speech_s) for ev in seen] == [(False, 3.0)]
    assert normalize(run.text) == normalize(speech.text)
    stats = run.stream.stats  # type: ignore[union-attr]
    assert (stats.blank_ruts, stats.blank_ruts_persistent) == (1, 0)


async def test_none_never_watches_for_the_rut(caplog: pytest.LogCaptureFixture) -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.rut = True
        with caplog.at_level("WARNING", logger="livekit.plugins.voxtral_vllm"):
            run, seen = await _run(emu, LONG, blank_rut_s=None)
    assert seen == [] and run.finals == []
    stats = run.stream.stats  # type: ignore[union-attr]
    assert (stats.blank_ruts, stats.blank_ruts_persistent) == (0, 0)
    assert not any("47614" in r.getMessage() for r in caplog.records)
    assert stats.generations >= 1  # it did run: the server answered, with pads only
