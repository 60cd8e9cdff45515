"""max_model_len as a budget: how much audio one generation may take, and when to roll over.

vLLM gives every realtime generation ``max_model_len`` tokens: the prompt (BOS, 32 left-pad
tokens and the delay tokens), then one token per 80 ms step, including the steps it runs on
its right padding after ``final`` (delay + 11). A generation that reaches the limit is
stopped by the server (vLLM >= 0.32, an unsolicited ``done``) or, before 0.32, kills the
engine for every session (vllm-realtime.md §2.3). So the core rolls a long utterance over to a
new generation before that, and :class:`ContextBudget` holds the arithmetic:

- :attr:`ContextBudget.room`: the audio one generation may be sent and still finish, right
  padding included, three steps short of the limit (the core sends no more, and hands the rest
  to the next generation at a quiet point);
- :meth:`ContextBudget.rollover_reason`: whether the steps a generation has committed to (the
  audio sent plus the right padding) call for a rollover now: at a caption pause once
  ``rollover_fraction`` is used, in the first gap after a word in the last stretch, or
  unconditionally three steps before the limit (:data:`AT_LIMIT`).

With ``max_model_len`` unknown there is no budget (``room`` is None, no rollover is asked for).
"""

from __future__ import annotations

from .connection import first_step_samples, prompt_tokens
from .protocol import STEP_SAMPLES

__all__ = ["AT_LIMIT", "ContextBudget"]

AT_LIMIT = "rollover at the limit"


class ContextBudget:
    """The budget of one generation under ``max_model_len`` (None: unknown, no budget).

    Args:
        max_model_len: the server's context, in tokens.
        transcription_delay_ms: the server's delay (sets the prompt and the first step).
        pad_steps: the steps vLLM runs after ``final`` on its right padding.
        rollover_fraction: the share of the budget after which a caption pause rolls over.
    """

    __slots__ = ("room", "_cap_steps", "_pad_steps", "_fraction", "_no_pause_window")

    def __init__(
        self,
        max_model_len: int | None,
        *,
        transcription_delay_ms: int,
        pad_steps: int,
        rollover_fraction: float,
    ) -> None:
        self._pad_steps = pad_steps
        self._fraction = rollover_fraction
        self._cap_steps: int | None = None
        self._no_pause_window = 12
        self.room: int | None = None
        """Samples of audio one generation may be sent (None: no budget)."""
        if max_model_len is None:
            return
        # steps a generation may run in all (max_model_len less the prompt), and how much
        # audio one may be sent and still finish, right padding included, three steps short
        cap = max(1, max_model_len - prompt_tokens(transcription_delay_ms))
        steps = max(1, cap - 3 - pad_steps)
        self._cap_steps = cap
        # the last steps before the limit where a rollover no longer waits for a caption
        # pause: never more than half of what a generation can take (small limits)
        self._no_pause_window = min(max(12, cap // 20), max(1, steps // 2))
        self.room = first_step_samples(transcription_delay_ms) + (steps - 1) * STEP_SAMPLES

    def rollover_reason(
        self, expected_steps: int, *, at_pause: bool, after_gap: bool
    ) -> str | None:
        """Why a generation that owes ``expected_steps`` for the audio it was sent must roll
        over now, or None. ``at_pause``: no caption is open; ``after_gap``: a short gap
        follows its last token (never between a word and its punctuation a step later)."""
        cap = self._cap_steps
        if cap is None:
            return None
        committed = expected_steps + self._pad_steps
        if committed >= cap * self._fraction and at_pause:
            return "rollover at a pause"
        if committed >= cap - self._no_pause_window and after_gap:
            return "rollover (no pause came)"
        if committed >= cap - 3:
            return AT_LIMIT
        return None
