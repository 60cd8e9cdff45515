"""The generation cap: how much audio one vLLM generation may take before it is rolled over.

vLLM's realtime steps do work that grows with the generation's length: each session's step
gets about 3 ms slower per minute of audio in one generation (vllm-project/vllm#58324). A
speaker who talks for ten minutes without a pause the endpointer accepts would push the steps
of everyone batched with them past 80 ms, and every session on that server would fall behind.

So a generation that has taken ``max_generation_s`` of audio is rolled over: :class:`StreamCore`
asks :meth:`GenerationCap.check` on every step, and when it answers, closes the captions at a
quiet point after the last word and continues the audio in a new generation (the rollover it
already does before max_model_len; no word is lost or repeated). It waits for a caption pause
(the open caption was just finalised) so the cut falls between captions; if none comes within
``grace_s``, it cuts in the first gap after a word.

The default, 60 s, keeps the slowdown of the longest generation near 3 ms per step (under 4 %
of the 80 ms a step may take), and costs one generation start per minute of unbroken speech:
the same as an utterance, which conversation starts every few seconds anyway.
"""

from __future__ import annotations

import math

from .protocol import SAMPLE_RATE

__all__ = ["DEFAULT_MAX_GENERATION_S", "GenerationCap"]

DEFAULT_MAX_GENERATION_S = 60.0
_MIN_S = 5.0
_MAX_S = 24 * 3600.0


class GenerationCap:
    """Roll a generation over once it has taken ``max_generation_s`` of audio.

    Args:
        max_generation_s: audio per generation, seconds (5 s to 24 h).
        grace_s: after the cap, how long to wait for a caption pause before cutting in the
            first gap after a word.

    Raises:
        ValueError: naming the bad value.
    """

    __slots__ = ("max_generation_s", "grace_s", "_limit", "_hard")

    def __init__(
        self, max_generation_s: float = DEFAULT_MAX_GENERATION_S, *, grace_s: float = 20.0
    ) -> None:
        value: object = max_generation_s
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not _MIN_S <= value <= _MAX_S
        ):
            raise ValueError(
                f"max_generation_s must be a number of seconds in [{_MIN_S:g}, {_MAX_S:g}] "
                f"(or None for no cap), got {value!r}"
            )
        grace: object = grace_s
        if (
            isinstance(grace, bool)
            or not isinstance(grace, (int, float))
            or not math.isfinite(grace)
            or grace < 0
        ):
            raise ValueError(f"grace_s must be a number >= 0, got {grace!r}")
        self.max_generation_s = float(max_generation_s)
        self.grace_s = float(grace_s)
        self._limit = int(self.max_generation_s * SAMPLE_RATE)
        self._hard = int((self.max_generation_s + self.grace_s) * SAMPLE_RATE)

    def __repr__(self) -> str:
        return f"GenerationCap({self.max_generation_s:g}, grace_s={self.grace_s:g})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationCap):
            return NotImplemented
        return (self.max_generation_s, self.grace_s) == (other.max_generation_s, other.grace_s)

    def __hash__(self) -> int:
        return hash((self.max_generation_s, self.grace_s))

    def check(self, audio_samples: int, at_caption_pause: bool, after_word_gap: bool) -> str | None:
        """Whether a generation that has taken ``audio_samples`` (16 kHz) should roll over
        now, as the reason to log; None to go on.

        Args:
            at_caption_pause: no caption is open (the last one ended at a pause).
            after_word_gap: the last steps brought no text (a gap after a word).
        """
        if audio_samples < self._limit:
            return None
        if at_caption_pause:
            return "generation cap, at a pause"
        if after_word_gap and audio_samples >= self._hard:
            return "generation cap (no pause came)"
        return None
