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
from bisect import bisect_right, insort
from dataclasses import dataclass, field

from .errors import InvalidState, LocalProtocolError
from .log import logger
from .protocol import STEP_SECONDS
from .words import (
    CharKind,
    Unit,
    assign_onsets,
    char_kind,
    place_units,
    show_units,
    utf8_len,
)

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
# A word that began at an onset has not ended, so cannot have come out, this soon after it.
_MIN_WORD_LEN_S = 0.12
# Step times are sums of 0.08 in float: absorb the rounding when comparing durations.
_EPS = 1e-6
_MAX_ONSETS = 32
_MAX_OFFSETS = 8
# A unit's first token may have been back-dated a step or two (see receive_delta): for the
# shown times, any onset before it can be the unit's own.
_SHOW_MIN_LEN_S = 0.0
# An onset this soon after a word followed by punctuation may be the punctuation's pause.
_PUNCT_SOUND_S = 0.3
_SENTENCE_END = frozenset(".?!…。？！")
_CLOSERS = "\"'”’)]»"
# Attached to the word before when no space precedes them; with no word open, they start one
# (punctuation-only words are dropped: see _drop_punctuation_only).
_ATTACHED = (CharKind.JOINER, CharKind.MARK, CharKind.PUNCT)
_NOT_WORDS = (CharKind.SPACE, CharKind.PUNCT, CharKind.JOINER, CharKind.OPENER)


def _wordish(text: str) -> bool:
    """Whether ``text`` holds something said (a letter, digit, symbol or emoji)."""
    return any(char_kind(c) not in _NOT_WORDS for c in text)


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
    before_s: float | None = field(default=None, compare=False)
    """Set when an incomplete word was taken out of the caption: where that word's sound
    began (estimated). The replay must start by then, so the next generation hears it whole."""
    units: int = field(default=0, compare=False)
    """How many stretches of sound (the incomplete word's, and the runs replayed with it) were
    taken out (see :meth:`CaptionSegmenter.peek_resume`)."""


_DEFAULT_OPTIONS = SegmenterOptions()


class _Draft:
    """A word of the open segment; it may still grow."""

    __slots__ = (
        "text",
        "spaced",
        "unit",
        "slot",
        "wordish",
        "start_s",
        "end_s",
        "punct_s",
        "token_start",
    )

    def __init__(self, text: str, spaced: bool, unit: int, slot: int, wordish: bool) -> None:
        self.text = text
        # began a token (a later character of the same token is most likely the same word)
        self.token_start = True
        self.spaced = spaced  # written after a space in the caption
        self.unit = unit  # index of its unit in the open segment
        self.slot = slot  # index among the unit's words; -1 for a punctuation-only word
        self.wordish = wordish
        self.start_s = 0.0
        self.end_s = 0.0
        self.punct_s: float | None = None  # just past the step of punctuation after it


class _OpenUnit(Unit):
    """A unit of the open segment, and the generation that produced it."""

    def __init__(self, first_s: float, contiguous: bool, gen: int) -> None:
        super().__init__(first_s, contiguous)
        self.generation = gen


def _glued(text: str) -> int:
    """How many times ``text`` (one word) goes on after punctuation with no space: words
    written into the one before (``彼。2026``), each with its own onset."""
    n = 0
    for a, b in zip(text, text[1:], strict=False):
        if char_kind(a) is CharKind.PUNCT and b not in _CLOSERS and _wordish(b):
            n += 1
    return n


def _normalise(text: str) -> str:
    return " ".join(text.split())


class CaptionSegmenter:
    """Turns the deltas of successive vLLM generations into caption events.

    Feed it with :meth:`start_generation`, then one :meth:`receive_delta` per
    ``transcription.delta``, then :meth:`finish_generation` (``done`` or a clean end),
    :meth:`continue_generation` (the server stopped it; the next one carries on),
    :meth:`roll_over` (closed early at a cut) or :meth:`abandon_generation` (lost).
    :meth:`receive_onset` and :meth:`receive_offset` may come at any time. Each input
    returns the events it caused, in order. Segment numbers start at 1 and increase; each
    segment gets interims with its full text and exactly one non-empty final, except a
    segment kept open across an abandoned generation, which continues in the next one.
    Misuse raises :class:`~.errors.InvalidState` or :class:`~.errors.LocalProtocolError` and
    changes nothing.

    Words (see :mod:`.words`): a token with leading whitespace starts one, and so does every
    character of a script written without spaces; other pieces extend the word before them.
    The last word is *complete* once whitespace or closing punctuation follows it, or its
    generation finished normally. A generation that stops otherwise leaves its last word
    incomplete: :meth:`continue_generation` and :meth:`roll_over` take that word (with the
    stretch of sound it belongs to) out of the caption and resume before it, so the next
    generation hears all of it and its text replaces the partial one.
    """

    def __init__(self, options: SegmenterOptions = _DEFAULT_OPTIONS) -> None:
        self.options = options
        self._last_segment = 0
        self._onsets: list[float] = []
        self._offsets: list[float] = []  # where utterances ended (for the shown times)
        self._last_final_end_s: float | None = None
        # The open segment: its number (also while reserved by an abandoned generation),
        # its words and the units they belong to.
        self._segment: int | None = None
        self._words: list[_Draft] = []
        self._units: list[_OpenUnit] = []
        self._seg_after_s = 0.0  # where the open segment's audio can begin
        self._seg_after_word = False  # ... right after a word (else a generation start)
        # The same for the times shown in finals (see _show), which may be earlier than the
        # conservative ones continuations cut at; and whether the last final ended with
        # punctuation (the first onset after it may be a pause, not a word).
        self._show_last_end: float | None = None
        self._show_after_s = 0.0
        self._show_after_word = False
        self._show_lead_punct = False
        self._text = ""
        self._ends_sentence = False
        self._tail_complete = True
        self._word_closed = False
        self._frozen = False  # word times are kept as they are (see _cut_incomplete)
        # The end of the step of punctuation after the last word: the model wrote it after
        # hearing what followed, so a replay resumes after it (else it comes twice).
        self._punct_s: float | None = None
        self._shown = False  # the open segment's number was shown in an interim
        self.dropped_punctuation = 0
        """Punctuation-only output that had no open caption to join (dropped)."""
        # The running generation.
        self._generation = 0
        self._gen_open = False
        self._gen_start_s = 0.0
        self._gen_final_end_s: float | None = None
        self._last_step_s: float | None = None
        self._last_text_step_s: float | None = None
        self._last_token_s: float | None = None  # midpoint of the latest step with text
        self._space_pending = False
        self._space_s: float | None = None  # midpoint of the step that brought that space
        self._token_open = False  # a character of the current delta was applied
        self._empty_steps = 0  # empty steps since the latest token
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
            self._place()
            return self._words[-1].end_s
        return self._last_final_end_s

    @property
    def last_word_complete(self) -> bool:
        """Whether the open segment's last word is known to be whole (see the class doc)."""
        return self._tail_complete

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
        self._last_step_s = None
        self._last_text_step_s = None
        self._last_token_s = None
        self._space_pending = False
        self._space_s = None
        self._empty_steps = 0
        self._raw = []
        self._raw_len = 0
        self._raw_final = 0
        if not self._words:
            last = self._last_final_end_s
            self._seg_after_word = last is not None and last >= start_s
            self._seg_after_s = last if last is not None and last >= start_s else start_s
            shown = self._show_last_end
            self._show_after_word = shown is not None and shown >= start_s
            self._show_after_s = shown if shown is not None and shown >= start_s else start_s

    def receive_onset(self, at_s: float) -> None:
        """Hint from the endpointer: speech (re)started at ``at_s`` after a pause.

        A word that follows a pause starts at the first hint after the previous word; in a
        burst, each stretch of sound starts at its own hint.
        """
        if not self._onsets or at_s >= self._onsets[-1]:
            self._onsets.append(at_s)
        else:
            insort(self._onsets, at_s)
        if len(self._onsets) > _MAX_ONSETS:
            del self._onsets[:-_MAX_ONSETS]

    def receive_offset(self, at_s: float) -> None:
        """Hint from the endpointer: the utterance ended at ``at_s`` (its last sound).

        The word before it ended by then; only the times shown in finals use it (a held
        word's token can come a second after its end, with no onset after it yet).
        """
        insort(self._offsets, at_s)
        if len(self._offsets) > _MAX_OFFSETS:
            del self._offsets[:-_MAX_OFFSETS]

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
        mid = step_end_s - _HALF_STEP_S
        if not delta:
            self._empty_steps += 1  # a pad, or a token that ends inside a UTF-8 character
            return self._check_pause(step_end_s)
        if delta.isspace():
            self._append_raw(delta)
            if not self._space_pending:
                self._space_s = mid
            self._space_pending = True
            self._tail_complete = True
            # the word this space begins is timed (and checked for contiguity) from here
            self._empty_steps = 0
            return self._check_pause(step_end_s)

        # A step with text ends no pause itself, but the steps before it may have (a gap).
        events = self._check_pause(step_end_s - STEP_SECONDS)
        base = self._raw_len
        first = True
        token_s = likely_s = mid
        changed = False
        self._token_open = False
        for i, ch in enumerate(delta):
            kind = char_kind(ch)
            if kind is CharKind.SPACE:
                if not self._space_pending:
                    self._space_s = mid
                self._space_pending = True
                self._tail_complete = True
                continue
            if first:
                # The step whose token began this text: an earlier whitespace-only step, or
                # up to two empty steps for a character of 3-4 bytes (held by the detokenizer).
                # (a space in this same delta was held with the character's first bytes)
                space_s = self._space_s
                if (
                    self._space_pending
                    and space_s is not None
                    and space_s < mid - _EPS
                    and mid - space_s < STEP_SECONDS + _EPS
                ):
                    token_s = space_s
                elif self._empty_steps and utf8_len(ch) >= 3:
                    token_s = mid - min(self._empty_steps, utf8_len(ch) - 2) * STEP_SECONDS
                    # (shown: a character of 3 bytes is most likely one token; see Unit)
                    likely_s = mid if utf8_len(ch) == 3 else token_s
                first = False
            changed |= self._add_char(ch, kind, token_s, base + i, events, likely_s)
            self._token_open = True
            self._space_pending = self._word_closed = False
            self._token_at(mid)
        self._space_pending = delta[-1].isspace()
        if not self._space_pending:
            self._space_s = None
        self._append_raw(delta)
        self._token_at(mid)
        if not changed:
            return events
        self._last_text_step_s = step_end_s
        tail = self._text.rstrip(_CLOSERS)
        self._ends_sentence = bool(tail) and tail[-1] in _SENTENCE_END
        if self._segment is not None and self._has_words():
            # (the newest word ended by its first token's step; finals get the placed times)
            end = self._units[-1].first_s if self._units else None
            events.append(CaptionInterim(self._segment, self._text, end))
            self._shown = True
        return events

    def split_generation(self) -> list[CaptionEvent]:
        """Finalise the open segment now, at the end of its last word; the generation goes on.

        A later piece without leading space starts a new word.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("split_generation")
        return [self._finalise(self._raw_len, cut=True)] if self._has_words() else []

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
            if self._has_words():
                events.append(self._finalise(self._raw_len))
            else:
                self._drop_punctuation_only()
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
        self._tail_complete = True
        self._gen_open = False
        return events

    def continue_generation(
        self,
        done_text: str | None,
        *,
        keep_incomplete: bool = False,
        most_units: int | None = None,
    ) -> tuple[list[CaptionEvent], ResumePoint | None]:
        """The server ended the generation by itself (max_model_len) while speech went on,
        and the next generation carries on from where it stopped.

        The open segment stays open, so the continuation's first tokens (often the
        punctuation of the last word) extend it rather than opening a new caption. An
        incomplete last word is taken out of it (see the class doc). The next generation is
        opened at once; a later :meth:`abandon_generation` resumes before the open segment.

        Returns:
            The events, and where the next generation must start: after the last word kept
            (``after_word``), or, when the generation kept no word, from ``resume_s`` exactly.
            The resume point is None when the done text disagreed with the deltas (the
            segment was then settled like a normal end).

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("continue_generation")
        raw = "".join(self._raw)
        if done_text is not None and _normalise(done_text) != _normalise(raw):
            # text we cannot trust to carry over: settle it like a normal end
            return self.finish_generation(done_text, self._last_step_s or self._gen_start_s), None
        resume = self._cut_incomplete(keep_incomplete, most_units)
        last_text, ends_sentence = self._last_text_step_s, self._ends_sentence
        gen_start, final_end = self._gen_start_s, self._gen_final_end_s
        self._gen_open = False
        self.start_generation(gen_start)
        self._gen_final_end_s = final_end
        self._last_text_step_s, self._ends_sentence = last_text, ends_sentence
        self._word_closed = True  # its last word is whole: the next piece starts another
        events: list[CaptionEvent] = []
        if self._segment is not None and self._has_words():
            events.append(CaptionInterim(self._segment, self._text, self._words[-1].end_s))
        return events, resume

    def roll_over(
        self, *, keep_incomplete: bool = False, most_units: int | None = None
    ) -> tuple[list[CaptionEvent], ResumePoint]:
        """Close the generation early at a cut (rollover before max_model_len, catch-up):
        the open segment's complete words are finalised, an incomplete last word is taken
        out (its segment number is kept when nothing else was finalised), and the returned
        point says where the next generation must start.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("roll_over")
        resume = self._cut_incomplete(keep_incomplete, most_units)
        events: list[CaptionEvent] = []
        if self._has_words():
            events.append(self._finalise(self._raw_len, cut=True))
            end = self._gen_final_end_s
            resume = ResumePoint(
                resume.resume_s if end is None else end,
                None,
                before_s=resume.before_s,
                units=resume.units,
            )
        else:
            self._drop_punctuation_only()
        self._tail_complete = True
        self._gen_open = False
        return events, resume

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
        point = self._gen_start_s if resume_s is None else resume_s
        return ResumePoint(point, self._segment, after_word=resume_s is not None)

    # -- private --------------------------------------------------------------------------

    def _require_generation(self, method: str) -> None:
        if not self._gen_open:
            raise InvalidState(f"{method}() with no open generation (last was {self._generation})")

    def _append_raw(self, delta: str) -> None:
        self._raw.append(delta)
        self._raw_len += len(delta)

    def _token_at(self, token_s: float) -> None:
        self._last_token_s = token_s
        self._empty_steps = 0

    def _has_words(self) -> bool:
        return any(w.wordish for w in self._words)

    def _add_char(
        self,
        ch: str,
        kind: CharKind,
        token_s: float,
        raw_pos: int,
        events: list[CaptionEvent],
        likely_s: float,
    ) -> bool:
        """Apply one non-space character; returns whether the caption text changed.
        ``token_s``: the step its token began in, at the earliest; ``likely_s``: most likely."""
        cur = self._words[-1] if self._words else None
        spaced = self._space_pending
        if cur is not None and not spaced and kind in _ATTACHED:
            cur.text += ch
            self._text += ch
            self._tail_complete = kind is CharKind.PUNCT
            if kind is CharKind.PUNCT:
                self._punct_s = cur.punct_s = self._after_step()
            return True
        if kind is CharKind.PUNCT and cur is not None:  # spaced (French " !")
            self._words.append(_Draft(ch, True, cur.unit, -1, False))
            self._text += " " + ch
            self._tail_complete = True
            self._punct_s = self._words[-1].punct_s = self._after_step()
            return True
        self._tail_complete = False
        self._punct_s = None
        last_solo = cur is not None and cur.text and char_kind(cur.text[-1]) is CharKind.SOLO
        closed = self._word_closed
        if (
            cur is not None
            and not (spaced or closed)
            and kind is not CharKind.SOLO
            and not last_solo
        ):
            cur.text += ch  # a sub-word piece
            self._text += ch
            if not cur.wordish and _wordish(ch):
                self._promote(cur, token_s)
            return True
        # (next to a script without spaces, no space; nor after digits or emoji written with
        # no space in such a script: "公园2026" + "😀" is "公园2026😀")
        closed = closed and kind is not CharKind.SOLO and not last_solo and not self._glued(cur)
        self._new_word(
            ch, (spaced or closed) and cur is not None, token_s, raw_pos, events, likely_s
        )
        return True

    def _glued(self, draft: _Draft | None) -> bool:
        """Whether ``draft`` was written with no space after a script without spaces."""
        return (
            draft is not None
            and not draft.spaced
            and any(char_kind(c) is CharKind.SOLO for c in self._text)
        )

    def _new_word(
        self,
        text: str,
        spaced: bool,
        token_s: float,
        raw_pos: int,
        events: list[CaptionEvent],
        likely_s: float,
    ) -> None:
        if self._words and not self._has_words():
            # punctuation that opened the segment, with no word of its own: dropped
            self._drop_punctuation_only()
        wordish = _wordish(text)
        contiguous = self._last_token_s is not None and token_s - self._last_token_s < (
            STEP_SECONDS + _EPS
        )
        cur_unit = self._units[-1] if self._units else None
        # A character of a script without spaces that came right behind the previous one
        # may be the same word: it joins its unit (never cut from it, never replayed alone).
        cur = self._words[-1] if self._words else None
        joins = (
            cur_unit is not None
            and cur is not None
            and not spaced
            and contiguous
            and cur_unit.generation == self._generation
            and char_kind(cur.text[-1]) is CharKind.SOLO
        )
        if joins:
            # ... unless sound began again after the unit's first token and ended by this one
            # (a backed-up queue: the next word's first character right behind the last)
            assert cur_unit is not None
            # (from the step it came in: an empty step before it may have been a pad)
            seen = (self._last_step_s or token_s) - _HALF_STEP_S
            lo, hi = cur_unit.first_s, seen - _MIN_WORD_LEN_S + _EPS
            joins = not any(lo < o <= hi for o in self._onsets)
            if not joins and not spaced:
                token_s = likely_s = seen  # a word of its own: it ended by its own step
        # (a caption starts no earlier than _seg_after_s: place its words only when it may be
        # too long, not on every word)
        if not joins and self._words and token_s - self._seg_after_s > self._max_segment_s:
            self._place()
            if token_s - self._words[0].start_s > self._max_segment_s:
                events.append(self._finalise(raw_pos, cut=True))
                spaced = False
        if not self._words:
            joins = False
            spaced = False
        if self._segment is None:
            self._last_segment += 1
            self._segment = self._last_segment
            self._shown = False
        if joins:
            assert cur_unit is not None
            unit_idx = len(self._units) - 1
        else:
            cur_unit = _OpenUnit(token_s, contiguous, self._generation)
            cur_unit.fresh = self._last_token_s is None
            if likely_s > token_s:
                cur_unit.likely_first_s = likely_s
            self._units.append(cur_unit)
            self._frozen = False
            unit_idx = len(self._units) - 1
        slot = -1
        if wordish:
            slot = len(cur_unit.weights)
            cur_unit.weights.append(1)
        self._words.append(_Draft(text, spaced, unit_idx, slot, wordish))
        self._words[-1].token_start = not self._token_open
        if self._text and spaced:
            self._text += " " + text
        else:
            self._text += text

    def _promote(self, draft: _Draft, token_s: float) -> None:
        """An opener-only word (``¿``) got its first letter: it now counts as a word."""
        unit = self._units[draft.unit]
        draft.wordish = True
        draft.slot = len(unit.weights)
        unit.weights.append(1)

    def _place(self) -> None:
        """Re-time the open segment's words (a burst may have grown)."""
        for draft in self._words:
            if draft.wordish:
                self._units[draft.unit].weights[draft.slot] = max(1, len(draft.text))
        if self._frozen:
            return
        lo = self._seg_after_s
        onsets = [o for o in self._onsets if o > lo]
        assign_onsets(self._units, onsets, self._seg_after_s if self._seg_after_word else -math.inf)
        place_units(
            self._units,
            self._seg_after_s,
            onsets,
            gap_s=_INTER_WORD_GAP_S,
            max_word_s=_MAX_WORD_S,
            after_word=self._seg_after_word,
        )
        prev = self._seg_after_s
        for draft in self._words:
            unit = self._units[draft.unit]
            if draft.wordish:
                draft.start_s, draft.end_s = unit.starts[draft.slot], unit.ends[draft.slot]
            else:
                draft.start_s = draft.end_s = prev
            prev = draft.end_s

    def _cut_incomplete(
        self, keep: bool = False, most_units: int | None = None, dry_run: bool = False
    ) -> ResumePoint:
        """Take an incomplete last word, with the unit it belongs to, out of the open segment
        (only if this generation produced it, and unless ``keep``); where the next generation
        must start. ``most_units``: take out at most this many units (None: all that the
        word's run reaches back to). ``dry_run``: only say where (nothing changes)."""
        dropped: _OpenUnit | None = None
        taken = 0
        kept = self._words
        cut_from = len(self._units)
        if self._space_pending and self._space_s is not None and not keep:
            # A lone space came: a word's first token, the word still to come. It began
            # after the last word, by the space's step.
            flight = _OpenUnit(self._space_s, False, self._generation)
            onsets = [o for o in self._onsets if o > self._seg_after_s]
            assign_onsets(self._units + [flight], onsets, -math.inf)
            prev_end = self._words[-1].end_s if self._words else self._seg_after_s
            flight.start_s = (
                flight.onset_s
                if flight.onset_s is not None
                else max(prev_end, self._space_s - _MAX_WORD_S)
            )
            if self._units:
                assign_onsets(self._units, onsets, -math.inf)  # as they were
            dropped = flight
        elif not self._tail_complete and self._units and not keep:
            units = self._units
            idx = len(units) - 1
            if units[idx].generation == self._generation:
                self._place()
                # Characters of a script without spaces that came right behind each other
                # may be one word however the onsets split them: replay them all.
                while idx > 0 and (self._solo_chain(idx) or self._glued_before(idx)):
                    idx -= 1
                while (
                    idx > 1
                    and self._solo_meet(idx)
                    and self._solo_chain(idx - 1)
                    and not self._owns_onset(idx)
                ):
                    # The unit before it was split off its run by an onset, which may be
                    # this word's instead (the run's last character still coming out when
                    # this word began): that run is replayed too, from before its start
                    # (and so on, while the run's head is in the same case).
                    idx -= 1
                    while idx > 0 and (self._solo_chain(idx) or self._glued_before(idx)):
                        idx -= 1
                if most_units is not None:
                    idx = max(idx, len(units) - most_units)
                kept = [w for w in self._words if w.unit < idx]
                dropped, cut_from = units[idx], idx
                taken = len(units) - idx
        if dropped is not None and not dry_run:
            self._words = kept
            del self._units[cut_from:]
            # The words kept keep the times they had next to it (its onset would otherwise
            # go to the word before it) until the replayed word comes.
            self._frozen = True
            self._text = self._compose()
            tail = self._text.rstrip(_CLOSERS)
            self._ends_sentence = bool(tail) and tail[-1] in _SENTENCE_END
            logger.debug("generation %d stopped inside a word: replaying it", self._generation)
        if not dry_run:
            self._tail_complete = True
        before = None if dropped is None else dropped.start_s
        if kept:
            if dropped is None:
                self._place()
            end = kept[-1].end_s
            if kept[-1].punct_s is not None:
                end = max(end, kept[-1].punct_s)  # (see _sound_end)
            onset = self._units[kept[-1].unit].onset_s
            if onset is not None and before is not None:
                # A stretch of sound that began at an onset lasts a while: its words end no
                # sooner, and the word taken out began after them (an early placed end, e.g.
                # a one-token "あなた" back-dated by a pad taken for a held byte, put the cut
                # in the gap before the kept word). (Only with that bound: the onset may be
                # the next word's when the output backed up.)
                end = max(end, min(onset + _MIN_WORD_LEN_S, before))
            return ResumePoint(end, self._segment, before_s=before, units=taken)
        if self._gen_final_end_s is not None:
            return ResumePoint(self._gen_final_end_s, self._segment, before_s=before, units=taken)
        if dropped is None and not keep:
            # No word came out: speech that began after the last word may still be on its
            # way (a character's first tokens are held as empty deltas). Resume before it.
            start = max(self._seg_after_s, self._gen_start_s)
            pending = [o for o in self._onsets if o > start and o < (self._last_step_s or 0.0)]
            if pending:
                before = pending[0]
                at = max(start, before - 0.3)
                return ResumePoint(at, self._segment, after_word=False, before_s=before)
        if dropped is not None:
            # no word before it in this generation: from a little before where it began
            at = max(self._seg_after_s, self._gen_start_s, dropped.start_s - 0.3)
            return ResumePoint(at, self._segment, after_word=False, before_s=before, units=taken)
        return ResumePoint(self._gen_start_s, self._segment, after_word=False)

    def _after_step(self) -> float:
        """A point just past the current step (its real step, never back-dated): a resume
        point after it searches for quiet from the step's end on."""
        return (self._last_step_s or 0.0) + _HALF_STEP_S

    def _solo_chain(self, idx: int) -> bool:
        """Whether unit ``idx`` came right behind unit ``idx - 1`` of the same generation,
        both in a script without spaces where they meet."""
        return self._units[idx].contiguous and self._solo_meet(idx)

    def _solo_meet(self, idx: int) -> bool:
        """Whether units ``idx - 1`` and ``idx`` are of the same generation and meet in a
        script without spaces."""
        unit, prev = self._units[idx], self._units[idx - 1]
        if prev.generation != unit.generation:
            return False
        # (onsets do not settle it: when the output backs up, a word's last characters come
        # out after the next word began). A unit starts with no space only next to a script
        # without spaces; digits and emoji there ("会议😀2026") meet the same way.
        first = next(w for w in self._words if w.unit == idx)
        return not first.spaced

    def _owns_onset(self, idx: int) -> bool:
        """Whether unit ``idx``, which came after an empty step (not backed up), surely began
        at the onset it was given: its first token came at least a shortest word after it.
        A word's first token comes at the step that covers its end, so an onset that late is
        no later word's; and the onset of the unit before it, which is earlier, is not this
        unit's. (With no onset, or one too close to its first token for a word to fit, its
        sound may have begun earlier, at the onset the unit before it took.)"""
        unit = self._units[idx]
        onset = unit.onset_s
        return (
            not unit.contiguous
            and onset is not None
            and unit.first_s - onset >= _MIN_WORD_LEN_S - _EPS
        )

    def _glued_before(self, idx: int) -> bool:
        """Whether unit ``idx`` meets unit ``idx - 1`` with no space and that unit ends in
        digits, letters or emoji written with no space after a script without spaces: such
        a run can be several spoken words ("😀2026 2026" comes out as "😀20262026"), and
        its first token tells only where the first of them ended. It is replayed with the
        word after it."""
        if not self._solo_meet(idx):
            return False
        last = [w for w in self._words if w.unit == idx - 1][-1]
        return not last.spaced and char_kind(last.text[-1]) is CharKind.TEXT

    def peek_resume(
        self, *, keep_incomplete: bool = False, most_units: int | None = None
    ) -> ResumePoint:
        """Where :meth:`roll_over` or :meth:`continue_generation` would resume (with the
        same ``keep_incomplete`` and ``most_units``); nothing changes.

        An incomplete last word of a script without spaces is taken out with the runs it
        may belong to (see :meth:`_cut_incomplete`); in dense speech they can reach back to
        the generation's start. ``most_units`` caps how many units go (the word's own, then
        the nearest runs); :attr:`ResumePoint.units` says how many did.

        Raises:
            InvalidState: no generation is open.
        """
        self._require_generation("peek_resume")
        return self._cut_incomplete(keep_incomplete, most_units, dry_run=True)

    def _sound_end(self, end_s: float) -> float:
        """Where to resume after a word ending at ``end_s``: after the step of the
        punctuation written after it, if any (the model wrote it after hearing what followed
        the word; a replay from before that step may write it again)."""
        return end_s if self._punct_s is None else max(end_s, self._punct_s)

    def _compose(self) -> str:
        parts: list[str] = []
        for draft in self._words:
            if parts and draft.spaced:
                parts.append(" ")
            parts.append(draft.text)
        return "".join(parts)

    def _check_pause(self, until_s: float) -> list[CaptionEvent]:
        """Finalise the open segment if the silence up to ``until_s`` ends it."""
        if not self._words or self._last_text_step_s is None:
            return []
        limit = self._opts.sentence_pause_s if self._ends_sentence else self._opts.max_pause_s
        if until_s - self._last_text_step_s < limit - _EPS:
            return []
        if not self._has_words():
            self._drop_punctuation_only()
            return []
        return [self._finalise(self._raw_len)]

    def _drop_open_text(self) -> None:
        self._frozen = False
        self._words = []
        self._units = []
        self._text = ""
        self._ends_sentence = False
        self._tail_complete = True

    def _drop_punctuation_only(self) -> None:
        """A segment with punctuation but no word is never a caption."""
        if self._words:
            self.dropped_punctuation += 1
            self._drop_open_text()
            if self._segment is not None and not self._shown:
                # never shown: its number goes to the next caption
                if self._segment == self._last_segment:
                    self._last_segment -= 1
                self._segment = None

    def _finalise(self, raw_end: int, cut: bool = False) -> CaptionFinal:
        """Close the open segment (it has words); ``raw_end`` = raw characters it covers;
        ``cut``: it was closed while speech went on (not at a pause or a generation's end)."""
        assert self._segment is not None
        self._place()
        safe_end = self._words[-1].end_s
        words = self._show(cut)
        final = CaptionFinal(self._segment, self._text, words[0].start_s, words[-1].end_s, words)
        self._segment = None
        self._drop_open_text()
        self._raw_final = raw_end
        if len(self._raw) > 1:  # one string, not one object per delta, in a day-long generation
            self._raw = ["".join(self._raw)]
        # Continuations cut at the conservative end; the next caption's display times start
        # after the shown one.
        self._last_final_end_s = safe_end
        self._gen_final_end_s = self._sound_end(safe_end)
        self._seg_after_s, self._seg_after_word = safe_end, True
        self._shown_after(final)
        old = bisect_right(self._onsets, min(safe_end, final.end_s))
        if old:
            del self._onsets[:old]
        return final

    def _shown_after(self, final: CaptionFinal) -> None:
        self._show_last_end = final.end_s
        self._show_after_s, self._show_after_word = final.end_s, True
        tail = final.text.rstrip(_CLOSERS)
        self._show_lead_punct = bool(tail) and char_kind(tail[-1]) is CharKind.PUNCT

    def _show(self, cut: bool) -> tuple[Word, ...]:
        """The open segment's words with the times shown in its final (after :meth:`_place`;
        the units' times are then the shown ones: call it only as the segment closes).

        Those from :meth:`_place` are conservative (a continuation cuts the audio at them);
        these are the likeliest, from a monotone alignment of its units to the onsets
        (:func:`~.words.show_units`), so words the model held back and released in a burst
        are shown where they were spoken, not one or more words late. Never before the
        previous final's words. ``cut``: later words' onsets may lie before its last token.
        """
        after = self._show_after_s
        word_after = self._show_after_word
        onsets = [o for o in self._onsets if o > after or (not word_after and o >= after)]
        punct = [False] * len(self._units)
        splits: list[list[bool]] = [[False] * len(u.weights) for u in self._units]
        glued = [0] * len(self._units)
        for draft in self._words:
            if draft.punct_s is not None:
                punct[draft.unit] = True
            if draft.wordish:
                splits[draft.unit][draft.slot] = draft.token_start
                glued[draft.unit] += _glued(draft.text)
        show_units(
            self._units,
            splits,
            glued,
            punct,
            onsets,
            [o for o in self._offsets if o > after],
            after,
            after_word=word_after,
            settled=not cut,
            # (the punctuation's pause, or tone, comes right after the word)
            lead_punct=self._show_lead_punct
            and word_after
            and bool(onsets)
            and onsets[0] <= after + _PUNCT_SOUND_S,
            gap_s=_INTER_WORD_GAP_S,
            min_len_s=_SHOW_MIN_LEN_S,
            max_word_s=_MAX_WORD_S,
        )
        out: list[Word] = []
        prev = after
        for draft in self._words:
            if draft.wordish:
                unit = self._units[draft.unit]
                start, end = unit.starts[draft.slot], unit.ends[draft.slot]
            else:
                start = end = prev
            out.append(Word(draft.text, start, end))
            prev = end
        return tuple(out)

    def _reconcile(self, done_text: str, raw: str, end_s: float) -> CaptionFinal | None:
        """The final of the open segment, taken from ``done_text`` past what was finalised."""
        done = _normalise(done_text)
        finalised = _normalise(raw[: self._raw_final])
        if done.startswith(finalised):
            rest = done[len(finalised) :].strip()
        else:
            rest = " ".join(done.split()[len(finalised.split()) :])
        if not rest or not _wordish(rest):
            self._drop_open_text()
            return None
        texts = rest.split()
        if [w.text for w in self._words] != texts:
            if self._words:
                self._place()
                start_s, stop_s = self._words[0].start_s, self._words[-1].end_s
            else:
                start_s = (
                    self._gen_start_s if self._gen_final_end_s is None else self._gen_final_end_s
                )
                stop_s = max(start_s, end_s)
            self._drop_open_text()
            if self._segment is None:
                self._last_segment += 1
                self._segment = self._last_segment
            unit = _OpenUnit(stop_s, False, self._generation)
            unit.onset_s = start_s
            self._units.append(unit)
            for i, text in enumerate(texts):
                self._words.append(_Draft(text, i > 0, 0, i, True))
                unit.weights.append(max(1, len(text)))
            self._text = " ".join(texts)
            place_units(self._units, start_s, [], gap_s=0.0, max_word_s=_MAX_WORD_S)
            for w in self._words:
                w.start_s, w.end_s = unit.starts[w.slot], unit.ends[w.slot]
            final = self._finalise_placed(len(raw))
            return final
        return self._finalise(len(raw))

    def _finalise_placed(self, raw_end: int) -> CaptionFinal:
        """Like :meth:`_finalise` for words whose times are already set."""
        assert self._segment is not None
        words = tuple(Word(w.text, w.start_s, w.end_s) for w in self._words)
        final = CaptionFinal(self._segment, self._text, words[0].start_s, words[-1].end_s, words)
        self._segment = None
        self._drop_open_text()
        self._raw_final = raw_end
        self._gen_final_end_s = self._last_final_end_s = final.end_s
        self._seg_after_s, self._seg_after_word = final.end_s, True
        self._shown_after(final)
        return final
