"""``CaptionSegmenter``: cuts the Voxtral transcript into caption segments (sans-I/O).

vLLM streams one ``transcription.delta`` per 80 ms engine step: mostly ``""``, words with a
leading space, punctuation and sub-word pieces without one; ``done.text`` is the concatenation of
the deltas (``vllm-realtime.md`` §1.2, §3). It never ends a segment by itself (§2.2 rule 9).
LiveKit wants, per caption segment, cumulative interims and exactly one non-empty final
(``livekit-stt.md`` §3). This module maps the former onto the latter:

- a token with leading whitespace starts a word; one without extends the previous word (text
  only for punctuation, text and end time for a sub-word piece);
- a segment ends after ``sentence_pause_s`` of empty steps when its text ends a sentence, after
  ``max_pause_s`` of empty steps otherwise, before a word that would stretch it past
  ``max_segment_s``, and when its generation finishes;
- a segment's number survives an abandoned generation, so the replay replaces its caption.

Time is the stream's audio clock in seconds; the caller converts steps to it. No I/O, no clock.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right, insort
from dataclasses import dataclass, field

from .errors import InvalidState, LocalProtocolError
from .log import logger
from .protocol import STEP_SECONDS

__all__ = [
    "SegmenterOptions",
    "Word",
    "CaptionInterim",
    "CaptionFinal",
    "CaptionEvent",
    "ResumePoint",
    "CaptionSegmenter",
]

_HALF_STEP_S = STEP_SECONDS / 2
# Fewer empty steps than this between two words (i.e. one) is the model's rhythm, not a pause.
_WORD_GAP_S = 0.12
# After a pause with no onset hint, a word is assumed to start at most this long before its
# step; otherwise one word after a long silence would span the silence (and trip max_segment_s).
_INTER_WORD_GAP_S = 0.04  # typical silence between two words of running speech
_MAX_WORD_S = 1.0
# Step times are sums of 0.08 in float: absorb the rounding when comparing durations.
_EPS = 1e-6
_MAX_ONSETS = 32
_SENTENCE_END = frozenset(".?!…。？！")
_CLOSERS = "\"'”’)]»"
_TOKEN = re.compile(r"(\s*)(\S+)")
_WORDISH = re.compile(r"\w")


@dataclass(frozen=True)
class SegmenterOptions:
    """When a caption segment ends. All durations are seconds of stream audio, > 0."""

    sentence_pause_s: float = 0.4
    """Sentence-final punctuation (``. ? !``) followed by this much silence ends a segment."""
    max_pause_s: float = 1.2
    """Any silence this long ends a segment."""
    max_segment_s: float = 12.0
    """A segment longer than this ends before its next word."""

    def __post_init__(self) -> None:
        for name in ("sentence_pause_s", "max_pause_s", "max_segment_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.sentence_pause_s > self.max_pause_s:
            raise ValueError(
                f"sentence_pause_s ({self.sentence_pause_s!r}) must not exceed "
                f"max_pause_s ({self.max_pause_s!r})"
            )


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a final, punctuation included; times are estimates on the stream clock."""

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class CaptionInterim:
    """The whole text so far of segment ``segment`` (never empty); it replaces the previous one."""

    segment: int
    text: str
    words_end_s: float | None = None
    """End of the newest word this delta added or extended; None if it added only punctuation."""


@dataclass(frozen=True, slots=True)
class CaptionFinal:
    """The one final of segment ``segment``: non-empty text, its words and their time span."""

    segment: int
    text: str
    start_s: float
    end_s: float
    words: tuple[Word, ...]


CaptionEvent = CaptionInterim | CaptionFinal


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where to replay audio from after an abandoned generation."""

    resume_s: float
    """End of the generation's last finalised word, or its start if it finalised none."""
    segment: int | None
    """The segment the replayed text continues (its caption is replaced), if any."""
    after_word: bool = field(default=True, compare=False)
    """False when ``resume_s`` is a generation start (no word to cut after): replay from
    exactly there."""


_DEFAULT_OPTIONS = SegmenterOptions()


class _Draft:
    """A word of the open segment; it may still grow."""

    __slots__ = ("text", "start_s", "end_s")

    def __init__(self, text: str, start_s: float, end_s: float) -> None:
        self.text = text
        self.start_s = start_s
        self.end_s = end_s


def _normalise(text: str) -> str:
    return " ".join(text.split())


class CaptionSegmenter:
    """Turns the deltas of successive vLLM generations into caption events.

    Feed it with :meth:`start_generation`, then one :meth:`receive_delta` per
    ``transcription.delta``, then :meth:`finish_generation` (``done`` or a clean end) or
    :meth:`abandon_generation` (the generation was lost). :meth:`receive_onset` may come at any
    time. Each input returns the events it caused, in order. Segment numbers start at 1 and
    increase; each segment gets interims with its full text and exactly one non-empty final,
    except a segment kept open across an abandoned generation, which continues in the next one.
    Misuse raises :class:`~.errors.InvalidState` or :class:`~.errors.LocalProtocolError` and
    changes nothing.
    """

    def __init__(self, options: SegmenterOptions = _DEFAULT_OPTIONS) -> None:
        self.options = options
        self._last_segment = 0
        self._onsets: list[float] = []
        self._last_final_end_s: float | None = None
        # The open segment: its number (also while reserved by an abandoned generation) and words.
        self._segment: int | None = None
        self._words: list[_Draft] = []
        self._text = ""
        self._ends_sentence = False
        # The running generation.
        self._generation = 0
        self._gen_open = False
        self._gen_start_s = 0.0
        self._gen_final_end_s: float | None = None
        self._prev_word_end_s: float | None = None
        self._last_step_s: float | None = None
        self._last_text_step_s: float | None = None
        self._space_pending = False
        self._raw: list[str] = []
        self._raw_len = 0
        self._raw_final = 0  # characters of the raw text covered by this generation's finals

    # -- state ----------------------------------------------------------------------------

    @property
    def options(self) -> SegmenterOptions:
        """The thresholds in force; a new value applies from the next delta on."""
        return self._opts

    @options.setter
    def options(self, options: SegmenterOptions) -> None:
        self._opts = options
        self._max_segment_s = options.max_segment_s + _EPS

    @property
    def open_segment(self) -> int | None:
        """Number of the segment that has text, or is kept for a replay; else None."""
        return self._segment

    @property
    def has_open_generation(self) -> bool:
        return self._gen_open

    @property
    def last_word_end_s(self) -> float | None:
        """End of the latest word still held (open or finalised); None before the first word."""
        if self._words:
            end = self._words[-1].end_s
            return end if self._prev_word_end_s is None else max(end, self._prev_word_end_s)
        return self._last_final_end_s

    # -- inputs ---------------------------------------------------------------------------

    def start_generation(self, start_s: float) -> None:
        """A new vLLM generation begins; ``start_s`` is the stream time of its first sample.

        Raises:
            InvalidState: a generation is already open.
        """
        if self._gen_open:
            raise InvalidState(
                f"start_generation() while generation {self._generation} is open; "
                "call finish_generation() or abandon_generation() first"
            )
        self._generation += 1
        self._gen_open = True
        self._gen_start_s = start_s
        self._gen_final_end_s = None
        self._prev_word_end_s = None
        self._last_step_s = None
        self._last_text_step_s = None
        self._space_pending = False
        self._raw = []
        self._raw_len = 0
        self._raw_final = 0

    def receive_onset(self, at_s: float) -> None:
        """Hint from the endpointer: speech (re)started at ``at_s`` after a pause.

        The first word after a pause starts at the latest hint since the previous word.
        """
        if not self._onsets or at_s >= self._onsets[-1]:
            self._onsets.append(at_s)
        else:
            insort(self._onsets, at_s)
        if len(self._onsets) > _MAX_ONSETS:
            del self._onsets[:-_MAX_ONSETS]

    def receive_delta(self, delta: str, step_end_s: float) -> list[CaptionEvent]:
        """One ``transcription.delta``, empty ones included.

        Args:
            delta: the delta text, verbatim.
            step_end_s: stream time of the end of the 80 ms frame this step transcribed
                (transcription delay already subtracted); non-decreasing within a generation.

        Returns:
            A final if the step closed the open segment (a pause, or a word past
            ``max_segment_s``), then an interim of the open segment if the delta added text.

        Raises:
            InvalidState: no generation is open.
            LocalProtocolError: ``step_end_s`` went backwards.
        """
        if not self._gen_open:
            raise InvalidState(
                f"receive_delta() with no open generation (last was {self._generation}); "
                "call start_generation() first"
            )
        if self._last_step_s is not None and step_end_s < self._last_step_s - _EPS:
            raise LocalProtocolError(
                f"receive_delta() step_end_s={step_end_s!r} is before the previous step "
                f"({self._last_step_s!r}) in generation {self._generation}"
            )
        self._last_step_s = step_end_s
        if not delta or delta.isspace():
            if delta:
                self._space_pending = True
                self._append_raw(delta)
            return self._check_pause(step_end_s)

        # A step with text ends no pause itself, but the steps before it may have (a gap).
        events = self._check_pause(step_end_s - STEP_SECONDS)
        end_s = step_end_s - _HALF_STEP_S
        base = self._raw_len
        words_end_s: float | None = None
        for match in _TOKEN.finditer(delta):
            spaced, token = match.group(1), match.group(2)
            if self._words and not spaced and not self._space_pending:
                word = self._words[-1]
                word.text += token
                self._text += token
                if _WORDISH.search(token) is not None:  # a sub-word piece, not punctuation
                    word.end_s = words_end_s = max(word.end_s, end_s)
                    self._prev_word_end_s = word.end_s
                elif self._prev_word_end_s is not None:
                    # Punctuation does not lengthen the word, but its step is the latest sound
                    # the model heard: the next word starts after it.
                    self._prev_word_end_s = max(self._prev_word_end_s, end_s)
            else:
                if self._words and end_s - self._words[0].start_s > self._max_segment_s:
                    events.append(self._finalise(base + match.start()))
                self._open_word(token, self._word_start(end_s), end_s)
                words_end_s = end_s
            self._space_pending = False
        self._space_pending = delta[-1].isspace()
        self._append_raw(delta)
        self._last_text_step_s = step_end_s
        tail = self._text.rstrip(_CLOSERS)
        self._ends_sentence = bool(tail) and tail[-1] in _SENTENCE_END
        assert self._segment is not None
        events.append(CaptionInterim(self._segment, self._text, words_end_s))
        return events

    def split_generation(self) -> list[CaptionEvent]:
        """Finalise the open segment now, at the end of its last word; the generation goes on.

        For a rollover: follow with :meth:`abandon_generation`, whose resume point is then
        this boundary. A later piece without leading space starts a new word.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("split_generation")
        return [self._finalise(self._raw_len)] if self._words else []

    def finish_generation(self, done_text: str | None, end_s: float) -> list[CaptionEvent]:
        """The generation ended: ``transcription.done`` carried ``done_text``, or it ended
        cleanly without one (``None``).

        Emits the final of the open segment if it has text. The finals of the generation then
        concatenate (whitespace-normalised) to ``done_text``. Should ``done_text`` disagree with
        the deltas, it is trusted for what was not finalised yet and a warning is logged; if it
        leaves nothing for a segment that showed text, the segment stays open for the next
        generation (like :meth:`abandon_generation`). ``end_s``, the stream time where the
        generation's audio ended, only times text that the deltas did not carry.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("finish_generation")
        events: list[CaptionEvent] = []
        raw = "".join(self._raw)
        if done_text is None or _normalise(done_text) == _normalise(raw):
            if self._words:
                events.append(self._finalise(self._raw_len))
        else:
            logger.warning(
                "transcription.done of generation %d disagrees with its deltas; "
                "using the done text for the unfinalised part",
                self._generation,
                extra={"lk.pii.data": {"done": done_text, "deltas": raw}},
            )
            final = self._reconcile(done_text, raw, end_s)
            if final is not None:
                events.append(final)
        self._gen_open = False
        return events

    def continue_generation(self, done_text: str | None) -> list[CaptionEvent]:
        """The server ended the generation by itself (max_model_len) while speech went on,
        and the next generation carries on from where it stopped.

        The open segment stays open, so the continuation's first tokens (often the
        punctuation of the last word) extend it rather than opening a new caption. The next
        generation is opened at once; a later :meth:`abandon_generation` resumes before the
        open segment, in this generation's audio.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("continue_generation")
        raw = "".join(self._raw)
        if done_text is not None and _normalise(done_text) != _normalise(raw):
            # text we cannot trust to carry over: settle it like a normal end
            return self.finish_generation(done_text, self._last_step_s or self._gen_start_s)
        prev_end, last_text = self._prev_word_end_s, self._last_text_step_s
        ends_sentence, space = self._ends_sentence, self._space_pending
        gen_start, final_end = self._gen_start_s, self._gen_final_end_s
        self._gen_open = False
        self.start_generation(gen_start)
        self._gen_final_end_s = final_end
        self._prev_word_end_s, self._last_text_step_s = prev_end, last_text
        self._ends_sentence, self._space_pending = ends_sentence, space
        return []

    def abandon_generation(self) -> ResumePoint:
        """The generation was lost (connection drop, ``processing_error``): no ``done`` comes.

        Finals already emitted stay. The open segment's text is dropped but its number is kept:
        replay the audio from :attr:`ResumePoint.resume_s` into a new generation and its next
        interim replaces the caption.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("abandon_generation")
        resume_s = self._gen_final_end_s
        self._drop_open_text()
        self._gen_open = False
        return ResumePoint(
            self._gen_start_s if resume_s is None else resume_s,
            self._segment,
            after_word=resume_s is not None,
        )

    # -- private --------------------------------------------------------------------------

    def _require_generation(self, method: str) -> None:
        if not self._gen_open:
            raise InvalidState(f"{method}() with no open generation (last was {self._generation})")

    def _append_raw(self, delta: str) -> None:
        self._raw.append(delta)
        self._raw_len += len(delta)

    def _check_pause(self, until_s: float) -> list[CaptionEvent]:
        """Finalise the open segment if the silence up to ``until_s`` ends it."""
        if not self._words or self._last_text_step_s is None:
            return []
        limit = self._opts.sentence_pause_s if self._ends_sentence else self._opts.max_pause_s
        if until_s - self._last_text_step_s < limit - _EPS:
            return []
        return [self._finalise(self._raw_len)]

    def _word_start(self, end_s: float) -> float:
        """Estimated start of a new word whose step midpoint is ``end_s``: the latest onset
        hint since the previous word, else just after the previous word (running speech),
        else at most ``_MAX_WORD_S`` before its end."""
        prev = self._prev_word_end_s
        ref = self._gen_start_s if prev is None else prev
        i = bisect_right(self._onsets, end_s)
        if i and self._onsets[i - 1] >= ref:
            return self._onsets[i - 1]
        if prev is None:
            return min(end_s, max(ref, end_s - _MAX_WORD_S))
        # words of running speech are separated by a short gap, not glued
        return min(end_s, max(prev + _INTER_WORD_GAP_S, end_s - _MAX_WORD_S))

    def _open_word(self, text: str, start_s: float, end_s: float) -> None:
        if self._segment is None:
            self._last_segment += 1
            self._segment = self._last_segment
        self._words.append(_Draft(text, start_s, end_s))
        self._text = f"{self._text} {text}" if self._text else text
        self._prev_word_end_s = end_s

    def _drop_open_text(self) -> None:
        self._words = []
        self._text = ""
        self._ends_sentence = False

    def _finalise(self, raw_end: int) -> CaptionFinal:
        """Close the open segment (it has words); ``raw_end`` = raw characters it covers."""
        assert self._segment is not None
        words = tuple(Word(w.text, w.start_s, w.end_s) for w in self._words)
        final = CaptionFinal(self._segment, self._text, words[0].start_s, words[-1].end_s, words)
        self._segment = None
        self._drop_open_text()
        self._raw_final = raw_end
        if len(self._raw) > 1:  # one string, not one object per delta, in a day-long generation
            self._raw = ["".join(self._raw)]
        # Where the finalised text's sound ended: a trailing "." or "?" has its own step after
        # the word, and a replay that started before it would transcribe it twice.
        sound_end = final.end_s
        if self._prev_word_end_s is not None:
            sound_end = max(sound_end, self._prev_word_end_s)
        self._gen_final_end_s = self._last_final_end_s = sound_end
        cut = bisect_right(self._onsets, final.end_s)
        if cut:
            del self._onsets[:cut]
        return final

    def _reconcile(self, done_text: str, raw: str, end_s: float) -> CaptionFinal | None:
        """The final of the open segment, taken from ``done_text`` past what was finalised."""
        done = _normalise(done_text)
        finalised = _normalise(raw[: self._raw_final])
        if done.startswith(finalised):
            rest = done[len(finalised) :].strip()
        else:
            rest = " ".join(done.split()[len(finalised.split()) :])
        if not rest:
            self._drop_open_text()
            return None
        texts = rest.split()
        if [w.text for w in self._words] != texts:
            if self._words:
                start_s, stop_s = self._words[0].start_s, self._words[-1].end_s
            else:
                start_s = (
                    self._gen_start_s if self._gen_final_end_s is None else self._gen_final_end_s
                )
                stop_s = max(start_s, end_s)
            self._drop_open_text()
            step = (stop_s - start_s) / len(texts)
            for i, text in enumerate(texts):
                self._open_word(text, start_s + i * step, start_s + (i + 1) * step)
        return self._finalise(len(raw))
