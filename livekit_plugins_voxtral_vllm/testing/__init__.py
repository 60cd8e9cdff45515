"""Test doubles: an emulator of vLLM's ``/v1/realtime`` for Voxtral Realtime, and the synthetic
"speech" it transcribes.

Nobody can run Voxtral-Mini-4B-Realtime-2602 without a GPU, so :class:`VLLMRealtimeEmulator`
reproduces vLLM 0.33's realtime server over a real socket: ``session.created`` on connect,
silent ``session.update``, every error code and text, commit/final semantics (commit ignored
while a generation runs, a final without generation poisoning the next one, the queue cleared
after ``done``), one ``transcription.delta`` per 80 ms engine step after the first
delay + 82.5 ms of audio, the right-pad flush after a final commit, the unsolicited ``done``
at ``max_model_len`` and older versions' behaviour (``vllm_version=``). It transcribes audio
made by :func:`synthesize` (tone bursts whose meaning per language is in :func:`lexicon`), one
real Tekken token per step with vLLM's incremental deltas (``output="tokens"``, the default,
needs the ``[emulator]`` extra) or whole words (``output="words"``); anything else (real
speech, noise) gives empty deltas::

    from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

    speech = synthesize("他 在 公园 散步 。", language="zh")
    async with VLLMRealtimeEmulator(fast=True, language="zh") as emu:
        ...  # connect to emu.url, session.update, commit, append speech.samples, final
        assert emu.connections[0].generations[0].done_text == speech.text  # "他在公园散步。"

Faults for resilience tests: ``conn.drop()``, ``emu.drop_all()``, ``emu.stop()`` /
``emu.restart()``, ``conn.inject_processing_error()``, ``conn.send_text()``,
``emu.step_time_s`` to make the server fall behind real time, the blank-token rut
(``emu.rut``, ``conn.rut``, ``emu.rut_next_connections()``) and per-generation max_model_len
stops (``emu.generation_max_steps``, ``conn.limit_generation()``). Standalone:
``python -m livekit_plugins_voxtral_vllm.testing serve --port 8000``; from a synchronous
program, :class:`BackgroundEmulator` serves it from a thread.
"""

from __future__ import annotations

from .background import BackgroundEmulator
from .engine import (
    Generation,
    OutputMode,
    RealtimeEngine,
    ReceivedMessage,
    StepMath,
    VersionProfile,
)
from .lexicon import LANGUAGES, Lexicon, lexicon
from .server import (
    EmulatedConnection,
    EmulatorStats,
    GenerationLimits,
    SendLog,
    VLLMRealtimeEmulator,
)
from .speech import VOCABULARY, SynthesizedSpeech, expected_text, synthesize, vocabulary

__all__ = [
    "VLLMRealtimeEmulator",
    "BackgroundEmulator",
    "EmulatedConnection",
    "EmulatorStats",
    "SendLog",
    "Generation",
    "ReceivedMessage",
    "RealtimeEngine",
    "StepMath",
    "VersionProfile",
    "GenerationLimits",
    "OutputMode",
    "synthesize",
    "expected_text",
    "SynthesizedSpeech",
    "VOCABULARY",
    "vocabulary",
    "LANGUAGES",
    "Lexicon",
    "lexicon",
]
