"""Sub-word token streams for core tests: the emulator's tone decoder, re-emitted the way the
real model and vLLM 0.33 would send it.

Each decoded word is mapped to a transcript text (any language), tokenized with the real
Tekken tokenizer bundled in mistral_common, queued at the word's end and released one token
per engine step. Each step's delta is what vLLM's incremental detokenizer sends: ``""`` for a
step without a token, and ``""`` while the text decoded so far ends inside a UTF-8 character
(the whole character comes with the step that completes it).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from functools import lru_cache

import numpy as np
import pytest

from livekit_plugins_voxtral_vllm.testing.speech import ToneDecoder

mistral_common = pytest.importorskip("mistral_common", reason="needs mistral_common (dev extra)")


@lru_cache(maxsize=1)
def _tekken() -> object:
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_240911.json")
    return Tekkenizer.from_file(path)


@lru_cache(maxsize=4096)
def pieces(text: str) -> tuple[bytes, ...]:
    """The byte pieces of ``text``'s Tekken tokens."""
    tok = _tekken()
    ids = tok.encode(text, bos=False, eos=False)  # type: ignore[attr-defined]
    return tuple(tok.id_to_byte_piece(i) for i in ids)  # type: ignore[attr-defined]


def deltas(text: str) -> list[str]:
    """The deltas vLLM would send for ``text`` emitted one token per step (pads excluded)."""
    out: list[str] = []
    held = b""
    for piece in pieces(text):
        held += piece
        decoded = held.decode("utf-8", errors="replace")
        if decoded.endswith("\ufffd"):
            out.append("")
        else:
            out.append(decoded)
            held = b""
    return out


class SubwordDecoder:
    """A ``StreamingDecoder`` for ``RealtimeEngine``: one token per step, real Tekken pieces.

    ``lexicon`` maps a decoded tone token (``" hello"``, ``"."``) to the text the speaker said
    (``" 2026"``, ``"公园"``); unmapped tokens keep their text.
    """

    def __init__(self, lexicon: Mapping[str, str] | None = None) -> None:
        self._tones = ToneDecoder(sample_rate=16000)
        self._lexicon = lexicon or {}
        self._queue: deque[bytes] = deque()
        self._held = b""

    def feed(self, samples: np.ndarray) -> None:
        self._tones.feed(samples)

    def pop_tokens(self, before_sample: int) -> list[str]:
        for word in self._tones.pop_tokens(before_sample):
            self._queue.extend(pieces(self._lexicon.get(word, word)))
        if not self._queue:
            return []
        self._held += self._queue.popleft()
        decoded = self._held.decode("utf-8", errors="replace")
        if decoded.endswith("\ufffd"):
            return []
        self._held = b""
        return [decoded]


def factory(lexicon: Mapping[str, str] | None = None) -> Callable[[], SubwordDecoder]:
    return lambda: SubwordDecoder(lexicon)


def spoken(words: list[str], lexicon: Mapping[str, str]) -> str:
    """The transcript of tone ``words`` (``" hello"``, ``"."``) through ``lexicon``."""
    return "".join(lexicon.get(w, w) for w in words)
