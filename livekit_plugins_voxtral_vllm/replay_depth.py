"""How much of a stopped generation's incomplete last word the next generation replays.

When a generation stops inside a word (vLLM's unsolicited ``done`` at max_model_len, or a
rollover at the allowance), the segmenter takes the incomplete last word out of the caption,
with the runs of characters it may belong to in a script without spaces (each came right
behind the one before, or took an onset that may be this word's), and the next generation
starts before them, so it hears them whole (:meth:`~.segmenter.CaptionSegmenter.peek_resume`).

In dense speech those runs can reach back to the generation's start. A replay from there
would make no progress: the next generation hears the same audio, stops at the same place
and replays it again, forever. Keeping the word as it is then (as before) lost the rest of
it, or wrote runs twice when the next generation started after a placed end that was too
early (a glued "😀😀202620262026😀" is six spoken words; its end was placed after the
first). :func:`replay_depth` keeps as many of those runs as still move on, nearest the word
first, and keeps the word as it is only when not even the word alone moves on (it filled the
generation).
"""

from __future__ import annotations

from collections.abc import Callable

from .log import logger
from .segmenter import ResumePoint

__all__ = ["replay_depth"]


def replay_depth(
    peek: Callable[[int | None], ResumePoint],
    moves_on: Callable[[ResumePoint], bool],
    generation: int,
) -> tuple[bool, int | None]:
    """(keep the incomplete last word as it is, at most how many units to take out; None:
    all the runs it may belong to).

    Args:
        peek: where the next generation would resume taking out at most that many units
            (None: all), like ``CaptionSegmenter.peek_resume(most_units=...)``.
        moves_on: whether a generation resuming there starts later than the stopped one.
        generation: the stopped generation's id, for the log.
    """
    deepest = peek(None)
    if deepest.before_s is None:
        return False, None  # nothing to take out
    if moves_on(deepest):
        return False, None
    for most in range(deepest.units - 1, 0, -1):
        if moves_on(peek(most)):
            logger.info(
                "generation %d: its last word's runs reach back to its start; replaying %d of %d",
                generation,
                most,
                deepest.units,
            )
            return False, most
    logger.info("generation %d: one word filled it; keeping it as it is", generation)
    return True, None
