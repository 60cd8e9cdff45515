"""Real Tekken tokens for the emulator, and vLLM's incremental detokenizer.

The real Voxtral Realtime model emits exactly one token per 80 ms step: mostly the streaming
pad (a special token), and the text as Tekken BPE pieces, so ``" 2026"`` comes as ``" "``,
``"2"``, ``"0"``, ``"2"``, ``"6"``. vLLM 0.33 turns each step's token into the delta it sends
with ``SlowIncrementalDetokenizer`` (``vllm/v1/engine/detokenizer.py``, used for Mistral
tokenizers) calling ``detokenize_incrementally``
(``vllm/tokenizers/detokenizer_utils.py``) with ``skip_special_tokens=True``, on top of
``MistralTokenizer.convert_ids_to_tokens`` / ``convert_tokens_to_string``
(``vllm/tokenizers/mistral.py``). :class:`IncrementalDetokenizer` re-implements that logic (it
does not import vLLM), so that:

- pads and other special tokens give ``""``;
- while the decoded text ends in an unfinished UTF-8 sequence (a token holding part of a
  character's bytes), the delta is ``""``, and the whole character arrives with the step that
  completes it: ``"公园"`` gives ``"公"``, ``""``, ``"园"``; ``" 😀"`` gives ``""``, ``""``,
  ``" 😀"``;
- pure-whitespace deltas (``" "`` before digits) are normal.

The tokenizer is ``tekken_240911.json``, bundled with ``mistral_common`` (131,072 tokens: the
Tekken vocabulary Voxtral's tokenizer shares), loaded through ``mistral_common``'s own API. It
is an optional dependency: ``pip install 'livekit-plugins-voxtral-vllm[emulator]'``.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

__all__ = [
    "PAD_ID",
    "IncrementalDetokenizer",
    "TokenStream",
    "encode",
    "expected_deltas",
    "load_tokenizer",
    "preload",
    "require_tokenizer",
]

PAD_ID = 32
"""The streaming pad Voxtral emits on silence and between words (a special token: ``""``)."""

_BOS_ID = 1
_INSTALL_HINT = (
    "the emulator's real-token mode needs mistral_common: "
    "pip install 'livekit-plugins-voxtral-vllm[emulator]' "
    "(or use VLLMRealtimeEmulator(output='words'))"
)


def require_tokenizer() -> None:
    """Raise ``ImportError`` naming the ``[emulator]`` extra if mistral_common is missing
    (cheap: does not load the tokenizer)."""
    if importlib.util.find_spec("mistral_common") is None:
        raise ImportError(_INSTALL_HINT)


@lru_cache(maxsize=1)
def load_tokenizer() -> Tekkenizer:
    """The bundled Tekken tokenizer (``tekken_240911.json``), loaded once (about 1 s)."""
    try:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    # v3(is_tekken=True, is_mm=True) is mistral_common's accessor for tekken_240911.json.
    tokenizer = MistralTokenizer.v3(is_tekken=True, is_mm=True).instruct_tokenizer.tokenizer
    if not isinstance(tokenizer, Tekkenizer) or tokenizer.n_words != 131072:
        raise RuntimeError(f"unexpected bundled tokenizer {type(tokenizer).__name__}")
    return tokenizer


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (no BOS/EOS), as the model would emit them."""
    return load_tokenizer().encode(text, bos=False, eos=False)


class _Vocab:
    """What vLLM's ``MistralTokenizer`` wrapper caches about a Tekkenizer."""

    def __init__(self, tokenizer: Tekkenizer) -> None:
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        self.tokenizer = tokenizer
        # typed as enum.auto by mistral_common's stubs; its value is the member
        self.keep = cast(SpecialTokenPolicy, SpecialTokenPolicy.KEEP)
        self.size = tokenizer.n_words
        self.special_ids = frozenset(i for i in range(self.size) if tokenizer.is_special(i))
        self.special_strings = frozenset(
            tokenizer.decode([i], special_token_policy=self.keep) for i in self.special_ids
        )


@lru_cache(maxsize=1)
def _vocab() -> _Vocab:
    return _Vocab(load_tokenizer())


# A token as vLLM holds it: its piece (str, or the raw bytes when the str piece has U+FFFD)
# and its id (vLLM maps pieces back to ids; the map is one-to-one for regular tokens).
_Piece = tuple["str | bytes", int]


class IncrementalDetokenizer:
    """vLLM 0.33's ``SlowIncrementalDetokenizer`` for a Tekken ``MistralTokenizer`` with
    ``skip_special_tokens=True`` (the realtime endpoint's sampling default).

    ``step(token_id)`` returns the delta vLLM sends for that step. Stop strings play no part
    (the realtime endpoint sets none). The prompt (BOS and streaming pads) holds only special
    tokens, which leave no trace, so the state starts empty as in vLLM.
    """

    def __init__(self, prompt_ids: Sequence[int] = (_BOS_ID,)) -> None:
        self._v = _vocab()
        # convert_prompt_ids_to_tokens: the last 7 prompt ids, special ones skipped
        self._tokens: list[_Piece] = self._convert([int(i) for i in prompt_ids[-7:]])
        self._read_offset = len(self._tokens)
        self._prefix_offset = max(self._read_offset - 5, 0)
        self._parts: list[str] = []

    def step(self, token_id: int) -> str:
        """Feed the next generated token; returns its delta (often ``""``)."""
        prev = self._tokens
        if 0 <= token_id < self._v.size:
            new = self._convert([token_id])
        else:
            new = [("", -1)]
        output_count = len(prev) + len(new)
        prefix, read = self._prefix_offset, self._read_offset
        start = min(prefix, read, len(prev))
        window = prev[start:] + new
        prefix_text = self._to_string(window[prefix - start : read - start])
        new_text = self._to_string(window[prefix - start :])
        prev.extend(new)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            # an unfinished UTF-8 sequence at the end: hold it until a later token completes it
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset, self._read_offset = read, output_count
        self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        """The concatenated deltas so far."""
        return "".join(self._parts)

    # MistralTokenizer.convert_ids_to_tokens(ids, skip_special_tokens=True)
    def _convert(self, ids: list[int]) -> list[_Piece]:
        tok, v = self._v.tokenizer, self._v
        kept = [i for i in ids if i not in v.special_ids]
        pieces: list[_Piece] = [(tok.id_to_piece(i), i) for i in kept]
        if any("\ufffd" in p for p, _ in pieces):
            pieces = [(tok.id_to_byte_piece(i, v.keep), i) for i in kept]
        return pieces

    # MistralTokenizer.convert_tokens_to_string (Tekken branch)
    def _to_string(self, pieces: list[_Piece]) -> str:
        v = self._v
        kept = [(p, i) for p, i in pieces if not (isinstance(p, str) and p in v.special_strings)]
        if any(isinstance(p, bytes) for p, _ in kept):
            return v.tokenizer.decode([i for _, i in kept], special_token_policy=v.keep)
        return "".join(p for p, _ in kept if isinstance(p, str))


def expected_deltas(text: str) -> list[str]:
    """The deltas vLLM sends for ``text`` emitted one token per step (pads left out), e.g.
    ``" 2026"`` -> ``[" ", "2", "0", "2", "6"]``, ``"公园"`` -> ``["公", "", "园"]``."""
    detok = IncrementalDetokenizer()
    return [detok.step(i) for i in encode(text)]


class TokenStream:
    """One generation's output: words in, one token per step out, deltas as vLLM sends them.

    Words whose audio has been heard are queued as their tokens (:meth:`add_words`); each
    :meth:`step` emits the oldest queued token, or the pad when none is queued (or it is held).
    So a word of several tokens, or words close together, come out one token per step, later
    than the audio, as the real model holds text and releases it.

    ``hold_steps`` > 0 makes the model hold text longer, as it does under load and after
    pauses: the first word heard opens a hold of that many steps, every word heard before it
    ends joins it, and when it ends the whole lot comes out in a burst, one token per step.
    """

    def __init__(self, record: bool = True) -> None:
        # (token, first step it may go out, index of its word)
        self._queue: deque[tuple[int, int, int]] = deque()
        self._detok = IncrementalDetokenizer()
        self._hold_until = 0
        self._words = 0
        self._last_word = -1
        self._record = record
        self.steps = 0
        self.tokens: list[int] = []
        """Every token emitted, pads included (one per step), if ``record``."""

    @property
    def pending(self) -> int:
        """Tokens queued and not yet emitted."""
        return len(self._queue)

    def add_words(self, texts: Iterable[str], hold_steps: int = 0) -> None:
        """Queue the tokens of words heard by the coming step."""
        step = self.steps
        for text in texts:
            if hold_steps > 0 and self._hold_until <= step:
                self._hold_until = step + hold_steps
            release = self._hold_until if hold_steps > 0 else step
            word = self._words
            self._words += 1
            self._queue.extend((token, release, word) for token in encode(text))

    def step(self, rut: bool = False) -> str:
        """Emit one token and return its delta: the oldest queued token once released, else
        the pad. In a ``rut`` the word being emitted is finished (so no character is left
        half-sent), then only pads come and the words not begun are lost."""
        queue = self._queue
        token = PAD_ID
        if queue:
            head, release, word = queue[0]
            if rut and word != self._last_word:
                queue.clear()
            elif rut or release <= self.steps:
                queue.popleft()
                token = head
                self._last_word = word
        self.steps += 1
        if self._record:
            self.tokens.append(token)
        return self._detok.step(token)


def preload() -> None:
    """Load the tokenizer now (about 1 s, once per process), e.g. in a thread at start-up, so
    that no generation stalls on it."""
    _vocab()
