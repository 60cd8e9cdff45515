"""Test doubles: an emulator of vLLM's ``/v1/realtime`` for Voxtral Realtime, and the synthetic
"speech" it transcribes.

Nobody can run Voxtral-Mini-4B-Realtime-2602 without a GPU, so :class:`VLLMRealtimeEmulator`
reproduces vLLM 0.33's realtime server over a real socket: ``session.created`` on connect,
silent ``session.update``, every error code and text, commit/final semantics (commit ignored
while a generation runs, a final without generation poisoning the next one, the queue cleared
after ``done``), one ``transcription.delta`` per 80 ms engine step after the first
delay + 82.5 ms of audio, the right-pad flush after a final commit, the unsolicited ``done``
at ``max_model_len`` and older versions' behaviour (``vllm_version=``). It transcribes audio
made by :func:`synthesize` (tone bursts from :data:`VOCABULARY`)::

    from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

    speech = synthesize("hello world.")
    async with VLLMRealtimeEmulator(fast=True) as emu:
        ...  # connect to emu.url, session.update, commit, append speech.samples, final
        assert emu.connections[0].generations[0].done_text == speech.text  # " hello world."

Faults for resilience tests: ``conn.drop()``, ``emu.drop_all()``, ``emu.stop()`` /
``emu.restart()``, ``conn.inject_processing_error()``, ``conn.send_text()``, and
``emu.step_time_s`` to make the server fall behind real time. Standalone:
``python -m livekit_plugins_voxtral_vllm.testing serve --port 8000``.
"""

from __future__ import annotations

from .engine import Generation, RealtimeEngine, ReceivedMessage, StepMath, VersionProfile
from .server import EmulatedConnection, EmulatorStats, SendLog, VLLMRealtimeEmulator
from .speech import VOCABULARY, SynthesizedSpeech, synthesize

__all__ = [
    "VLLMRealtimeEmulator",
    "EmulatedConnection",
    "EmulatorStats",
    "SendLog",
    "Generation",
    "ReceivedMessage",
    "RealtimeEngine",
    "StepMath",
    "VersionProfile",
    "synthesize",
    "SynthesizedSpeech",
    "VOCABULARY",
]
