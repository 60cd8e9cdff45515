"""Choosing the built-in endpointer: ``STT(endpointer=...)`` / ``$VOXTRAL_VLLM_ENDPOINTER``."""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.endpointer import Endpointer, EndpointerOptions
from livekit_plugins_voxtral_vllm.vad_endpointer import VadEndpointer, VadEndpointerOptions

ENV = "VOXTRAL_VLLM_ENDPOINTER"


async def _endpointer_of(engine: STT) -> object:
    stream = engine.stream()
    try:
        return stream._endpointer
    finally:
        await stream.aclose()
        await engine.aclose()


async def test_the_default_is_the_gated_silero_endpointer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    engine = STT()
    assert engine._opts.endpointer == VadEndpointerOptions()
    assert isinstance(await _endpointer_of(engine), VadEndpointer)


async def test_the_environment_and_the_argument_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "energy")
    assert isinstance(await _endpointer_of(STT()), Endpointer)
    assert isinstance(await _endpointer_of(STT(endpointer="silero")), VadEndpointer)
    monkeypatch.setenv(ENV, "silero")
    assert isinstance(await _endpointer_of(STT(endpointer="energy")), Endpointer)


@pytest.mark.parametrize("kind", ["silero", "energy"])
def test_timing_options_reach_the_chosen_endpointer(kind: str) -> None:
    opts = STT(endpointer=kind, min_speech_ms=96, min_silence_ms=700)._opts.endpointer
    assert isinstance(opts, VadEndpointerOptions if kind == "silero" else EndpointerOptions)
    assert (opts.min_speech_ms, opts.min_silence_ms) == (96, 700)


def test_unknown_endpointer_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="endpointer must be 'silero' or 'energy', got 'webrtc'"):
        STT(endpointer="webrtc")
    monkeypatch.setenv(ENV, "Silero ")
    with pytest.raises(ValueError, match=r"\$VOXTRAL_VLLM_ENDPOINTER must be .* got 'Silero '"):
        STT()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"min_silence_ms": 0}, "min_silence_ms"), ({"min_speech_ms": -5}, "min_speech_ms")],
)
def test_bad_timing_for_the_default_is_named(kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(ValueError, match=f"{needle} must be .* got {list(kwargs.values())[0]}"):
        STT(endpointer="silero", **kwargs)  # type: ignore[arg-type]
