"""Shared by every test.

The emulator "speech" (``testing/speech.py``) is pure tone bursts: not speech to Silero's
model, so the default endpointer (``"silero"``) rightly never opens a generation for it.
Tests that drive the STT with it use the energy endpointer, through the same
``$VOXTRAL_VLLM_ENDPOINTER`` a deployment can set; the tests of the default endpointer pass
``endpointer="silero"`` explicitly and use real recorded or synthesized voices.
"""

from __future__ import annotations

import os

os.environ["VOXTRAL_VLLM_ENDPOINTER"] = "energy"
