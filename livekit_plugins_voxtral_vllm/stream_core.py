"""``StreamCore``: the sans-I/O heart of one speech stream.

It takes the stream's 16 kHz audio, speech boundaries (from the endpointer or a LiveKit VAD),
flushes, the clock and what each vLLM socket ("lane") receives, and returns actions: open or
close a lane, send text frames on a lane, emit a stream event, or fail the stream (those,
its options and its counters are defined in :mod:`~.core_types`, re-exported here).

How an utterance becomes captions:

1. ``speech_started`` opens a *generation* on a lane that can take one (an OPEN, IDLE,
   reusable socket) with pre-roll audio from :class:`~.history.AudioHistory`; live audio then
   follows. If every lane is busy (the previous utterance is still finishing), a second lane
   is opened at once instead of waiting for its ``done``.
2. ``speech_ended`` / ``flush`` send ``final``; the lane's ``done`` closes the generation.
3. Deltas are fed to the :class:`~.segmenter.CaptionSegmenter` strictly in generation order
   (a later generation's deltas wait until the earlier one is done), so captions stay in order.
4. A generation that is lost (socket drop, ``processing_error``, watchdog) or stopped by the
   server (unsolicited ``done`` at max_model_len), one that nears max_model_len (rollover), or
   one that lags too far behind (backpressure) is *continued* by a new generation that starts
   at a quiet point after the last word already captioned, replaying the audio from there.
   Finals already emitted are never emitted again; every word is transcribed once.

The core decides *what* to do; when a threshold is crossed is asked of small policies, each
in its own module: :class:`~.context_budget.ContextBudget` (max_model_len),
:class:`~.generation_cap.GenerationCap` (long generations), :class:`~.lag.LagWatch`
(backpressure), :class:`~.reconnect.ReconnectBackoff` (an unreachable server),
:class:`~.rut.RutDetector` (vLLM's blank-token rut) and :func:`~.replay_depth.replay_depth`
(how much a stopped generation's next one replays).

Nothing here blocks or touches a socket; ``now`` is monotonic seconds from the glue.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from dataclasses import dataclass, field

import numpy as np

from .connection import RealtimeConnection, first_step_samples, steps_for_samples
from .context_budget import AT_LIMIT, ContextBudget
from .core_types import (
    Action,
    BlankRut,
    CloseLane,
    CoreOptions,
    Final,
    Interim,
    LagPolicy,
    OpenLane,
    SendOnLane,
    SpeechEnded,
    SpeechStarted,
    StreamEvent,
    StreamFailed,
    StreamStats,
    UsageReport,
)
from .dropped import DroppedAudio
from .errors import InvalidState
from .events import (
    ConnectionState,
    DeltaReceived,
    FinishReason,
    GenerationFailed,
    GenerationFinished,
    MalformedMessageReceived,
    ServerErrorReceived,
    SessionCreated,
)
from .history import AudioHistory
from .lag import LagWatch
from .log import logger
from .protocol import SAMPLE_RATE, STEP_SAMPLES, ErrorCode, ErrorKind, Usage, describe_refusal
from .push_clock import PushClock
from .reconnect import ReconnectBackoff
from .replay_depth import replay_depth
from .rut import RutDetector, RutSignal
from .segmenter import (
    CaptionEvent,
    CaptionInterim,
    CaptionSegmenter,
    ResumePoint,
    SegmenterOptions,
)

__all__ = [
    "CoreOptions",
    "LagPolicy",
    "StreamCore",
    "StreamStats",
    "OpenLane",
    "SendOnLane",
    "CloseLane",
    "SpeechStarted",
    "SpeechEnded",
    "Interim",
    "Final",
    "UsageReport",
    "BlankRut",
    "StreamFailed",
    "Action",
    "StreamEvent",
]

_MS = SAMPLE_RATE // 1000
# A generation about to reach its allowance ends at the quietest point of its last this-many
# ms of audio (held back until all of it is here).
_SPLIT_WINDOW_MS = 480


# -- internal records ------------------------------------------------------------------------


class _Phase(enum.Enum):
    WAITING = "waiting"  # no lane yet
    RUNNING = "running"  # commit sent, audio flowing
    FINALIZING = "finalizing"  # final sent, waiting for done
    ENDED = "ended"  # done, or lost and replaced


@dataclass(eq=False)
class _Generation:
    """One vLLM generation: the stream audio ``[start, end)`` (``end`` None while live)."""

    gid: int
    start: int
    lag: LagWatch  # how far its output is behind its audio
    end: int | None = None
    sent_until: int = 0
    phase: _Phase = _Phase.WAITING
    lane: int | None = None
    muted: bool = False  # its captions were closed at a cut; later output is ignored
    continued: bool = False  # stopped by the server at max_model_len; its caption carries on
    steps: int = 0
    last_text_step: int = -1
    onset_s: float | None = None
    pending: list[DeltaReceived | GenerationFinished] = field(default_factory=list)
    finished: bool = False
    last_activity: float = 0.0
    full: bool = False  # sent all max_model_len allows; hands over at its end
    # its range ends at an allowance split: the next one carries its caption on (and so
    # does a generation that replays the end of its range in its place)
    handed_over: bool = False


@dataclass(eq=False)
class _Lane:
    lane: int
    conn: RealtimeConnection | None = None  # None while the socket is connecting
    gen: _Generation | None = None
    fault: str | None = None  # a generation was lost on it
    refused: str | None = None  # the server does not serve the model (refusal_failover)


class StreamCore:
    """The sans-I/O core of one stream. See the module docstring.

    After every input, drain :meth:`actions` and re-arm :meth:`get_timer`.
    """

    def __init__(self, options: CoreOptions) -> None:
        self._opts = options
        self.stats = StreamStats()
        self._history = AudioHistory(int(options.history_s * SAMPLE_RATE))
        self._dropped = DroppedAudio()  # what stats.dropped_audio_s counts, each sample once
        self._segmenter = CaptionSegmenter(options.segmenter)
        self._rut = RutDetector(options.rut) if options.rut is not None else None
        self._judged_by_caller = False  # speech_judged() was called: a VAD that may lag
        self._actions: list[Action] = []
        self._lanes: dict[int, _Lane] = {}
        self._next_lane = 1
        self._next_gid = 1
        # generations whose captions are still to come, in caption order
        self._order: collections.deque[_Generation] = collections.deque()
        self._live: _Generation | None = None
        self._speaking = False
        self._last_gen_end = 0
        self._input_ended = False
        self._resume_on_audio = False
        self._failed = False
        self._fatal = False
        self._last_audio_at: float | None = None
        self._reconnects = ReconnectBackoff(
            max_attempts=options.max_reconnects,
            interval_s=options.reconnect_interval_s,
            max_outage_s=options.max_outage_s,
        )
        self._losses = 0  # generations lost in a row; reset by a requested done
        self._push_clock = PushClock()  # for latency stats (push_clock.py)
        self._first_step = first_step_samples(options.transcription_delay_ms)
        # steps vLLM runs after ``final`` on its right padding (delay tokens + 1 + 10, §3.2)
        self._pad_steps = options.transcription_delay_ms // 80 + 11
        self._budget = self._context_budget()  # max_model_len (context_budget.py)

    # -- properties ------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once input ended and every generation's captions were emitted."""
        return self._input_ended and self._live is None and not self._order

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def samples_received(self) -> int:
        return self._history.end

    @property
    def open_lanes(self) -> int:
        return len(self._lanes)

    @property
    def next_step_sample(self) -> int | None:
        """The absolute 16 kHz sample at which the live generation's next step has all its
        audio (its first step needs delay + 80 ms + 2.5 ms, each later one 80 ms more); None
        when no generation is live. Audio pushed up to there goes out at once, so the glue
        hands audio over at these points rather than every 80 ms of the stream."""
        gen = self._live
        if gen is None:
            return None
        first = gen.start + self._first_step
        done = self._history.end - first
        if done < 0:
            return first
        return first + (done // STEP_SAMPLES + 1) * STEP_SAMPLES

    # -- outputs ---------------------------------------------------------------------------------

    def actions(self) -> list[Action]:
        """Actions since the last call, in order (lane frames last). Clears the list."""
        for lane in self._lanes.values():
            if lane.conn is not None:
                frames = lane.conn.data_to_send()
                if frames:
                    self._actions.append(SendOnLane(lane.lane, frames))
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        """The next ``now`` at which :meth:`handle_timer` must be called, if any."""
        deadlines: list[float] = []
        if self._reconnects.retry_at is not None:
            deadlines.append(self._reconnects.retry_at)
        if self._live is not None and self._last_audio_at is not None:
            deadlines.append(self._last_audio_at + self._opts.input_stall_s)
        for lane in self._lanes.values():
            gen = lane.gen
            if gen is not None and gen.phase in (_Phase.RUNNING, _Phase.FINALIZING):
                deadlines.append(gen.last_activity + self._opts.generation_timeout_s)
        return min(deadlines) if deadlines else None

    # -- app inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Open the warm lane (prewarm), unless ``warm_lanes`` is 0."""
        self._ensure_lanes(self._opts.warm_lanes)

    def push_audio(self, samples: np.ndarray, now: float) -> None:
        """Append 16 kHz mono int16 audio to the stream and send it to the live generation."""
        if self._failed or samples.size == 0:
            return
        self._history.append(samples)
        self._last_audio_at = now
        if self._rut is not None and not self._judged_by_caller:
            self._rut.judged_to(self._history.end)  # (the built-in endpointer keeps up)
        self._push_clock.pushed(self._history.end, now, self._history.start)
        if self._resume_on_audio and self._live is None:
            self._resume_on_audio = False
            self.speech_started(self._history.end - int(samples.size), now)
        elif self._live is not None:
            self._feed(self._live, now)

    def speech_started(self, start_sample: int, now: float) -> None:
        """Speech began at ``start_sample`` (absolute, 16 kHz): start a generation with
        pre-roll, on a lane that can take it (opening one if the others are busy)."""
        logger.debug(
            "speech started at %.2fs (live: %s)",
            start_sample / SAMPLE_RATE,
            self._live.gid if self._live else None,
        )
        if self._failed or self._input_ended or self._live is not None:
            return
        if self._rut is not None:
            self._rut.speech_started(start_sample)
        if not self._speaking:
            self._speaking = True
            self._actions.append(SpeechStarted())
        start = max(
            start_sample - self._opts.preroll_ms * _MS, self._last_gen_end, self._history.start
        )
        gen = self._new_generation(start, now, "speech started")
        gen.onset_s = max(start_sample, start) / SAMPLE_RATE
        self._live = gen
        self._order.append(gen)
        self._assign(now)

    def speech_judged(self, sample: int) -> None:
        """The endpointing has judged the audio before ``sample`` (absolute): for a VAD that
        may lag the audio pushed (a LiveKit VAD). Once called, only these calls (not the
        audio pushed) say how far speech and silence are known."""
        self._judged_by_caller = True
        if self._rut is not None:
            self._rut.judged_to(sample)

    def speech_resumed(self, start_sample: int, now: float) -> None:
        """Inside an utterance, speech resumed after a short silence (a word onset): a hint
        for the start times of caption words."""
        if self._live is not None:
            self._segmenter.receive_onset(start_sample / SAMPLE_RATE)

    def speech_ended(self, end_sample: int, now: float, decided_sample: int | None = None) -> None:
        """The endpointer saw enough silence after ``end_sample`` (the last sound): finish the
        live generation (``final``) with the audio before ``decided_sample``, where the
        silence was long enough (None: all the audio pushed, as the built-in endpointer's
        glue pushes exactly that much). A LiveKit VAD may decide after more audio was pushed:
        the audio after its decision is the next utterance's."""
        logger.debug("speech ended at %.2fs", end_sample / SAMPLE_RATE)
        self._segmenter.receive_offset(end_sample / SAMPLE_RATE)
        if self._rut is not None:
            self._rut.speech_ended(end_sample)
        self._end_live(now, decided_sample, end_sample)

    def flush(self, now: float) -> None:
        """End the current utterance now (LiveKit's flush, end of turn)."""
        self._end_live(now)

    def end_input(self, now: float) -> None:
        """No more audio: finish everything; :attr:`finished` turns True when all is emitted."""
        if self._rut is not None:
            self._rut.judged_to(1 << 62)  # (all the audio there is, judged)
        self._end_live(now)
        self._input_ended = True
        self._maybe_speech_ended()
        self._trim_idle_lanes()

    def resume(self, now: float) -> None:
        """Carry on after the glue lost every socket (LiveKit retries the stream's ``_run``):
        what was in flight is replayed and the reconnect budget starts over. Audio history,
        captions and the sample clock are kept.

        Raises:
            InvalidState: the stream failed for a configuration error; make a new one.
        """
        if self._failed and self._fatal:
            raise InvalidState("the stream failed for a configuration error")
        for lane_id in list(self._lanes):
            lane = self._lanes.pop(lane_id)
            if lane.conn is not None:
                lane.conn.connection_lost(now)
                self._process_lane_events(lane, now, assign=False)
            if lane.gen is not None and lane.gen.phase is not _Phase.ENDED:
                gen, lane.gen = lane.gen, None
                self._continue_after_loss(gen, now, "stream restarted")
        self._failed = False
        self._reconnects.reset()
        self._losses = 0
        self._actions = [
            a
            for a in self._actions
            if not isinstance(a, (StreamFailed, OpenLane, CloseLane, SendOnLane))
        ]
        self._assign(now)
        self._ensure_lanes(self._opts.warm_lanes)

    def close(self) -> None:
        """Forget every lane (the glue closes the sockets)."""
        for lane in self._lanes.values():
            if lane.conn is not None:
                lane.conn.close()
        self._lanes.clear()

    def set_server_facts(self, *, max_model_len: int | None, abort_on_close: bool) -> None:
        """What discovery learned after the stream started: the context limit (enables
        rollover) and whether closing a socket aborts its request (vLLM >= 0.32)."""
        self._opts = dataclasses.replace(
            self._opts, max_model_len=max_model_len, abort_on_close=abort_on_close
        )
        self._budget = self._context_budget()

    def update_options(self, *, language: str | None, segmenter: SegmenterOptions) -> None:
        """New language label (sent in ``session.update`` of new sockets) and segmentation,
        applied from the next utterance."""
        self._opts = dataclasses.replace(self._opts, language=language, segmenter=segmenter)
        self._segmenter.options = segmenter

    def stall_due(self, now: float) -> bool:
        """Whether an open utterance has had no audio for ``input_stall_s``."""
        return (
            self._live is not None
            and self._last_audio_at is not None
            and now - self._last_audio_at >= self._opts.input_stall_s
        )

    def input_held(self, now: float) -> None:
        """The glue holds the input back on purpose (it waits for a LiveKit VAD to judge the
        audio pushed): no audio is not a stall, so the stall timer starts over from ``now``."""
        if self._last_audio_at is not None:
            self._last_audio_at = now

    def input_stalled(self, now: float) -> None:
        """A muted track or a stalled producer: end the open utterance (the glue first pushes
        what its resampler still holds). A generation is never left open without audio:
        vLLM 0.17-0.24 kill it silently after 60 s (§2.4)."""
        if self._live is None:
            return
        logger.debug("no audio for %.1fs, ending the utterance", now - (self._last_audio_at or now))
        self._end_live(now)
        # The endpointer still sees this utterance as open, so it will not announce the
        # speech that follows when the audio comes back: open a generation for it then.
        self._resume_on_audio = True

    def handle_timer(self, now: float) -> None:
        if self._failed:
            return
        if self._reconnects.retry_due(now):
            self._assign(now)
            self._ensure_lanes(self._opts.warm_lanes)
        if self.stall_due(now):
            self.input_stalled(now)
        for lane in list(self._lanes.values()):
            gen, conn = lane.gen, lane.conn
            if gen is None or conn is None or gen.phase not in (_Phase.RUNNING, _Phase.FINALIZING):
                continue
            if now - gen.last_activity < self._opts.generation_timeout_s:
                continue
            if gen.phase is _Phase.FINALIZING or conn.expected_steps > conn.steps:
                logger.warning(
                    "generation %d: no output from vLLM for %.1fs, treating it as lost",
                    gen.gid,
                    now - gen.last_activity,
                )
                self._drop_lane(lane.lane, now, "no output from the server")
            else:
                gen.last_activity = now  # nothing owed yet (less audio than one step)

    # -- lane inputs -----------------------------------------------------------------------------

    def lane_connected(self, lane_id: int, now: float) -> None:
        """The glue opened the socket of ``lane_id``; ``session.update`` goes out now."""
        lane = self._lanes.get(lane_id)
        if lane is None:
            return
        lane.conn = RealtimeConnection(
            model=self._opts.model,
            language=self._opts.language,
            transcription_delay_ms=self._opts.transcription_delay_ms,
        )
        self._assign(now)

    def lane_received(self, lane_id: int, text: str, now: float) -> None:
        """A text frame arrived on ``lane_id``."""
        lane = self._lanes.get(lane_id)
        if lane is None or lane.conn is None:
            return
        lane.conn.receive_text(text, now)
        self._process_lane_events(lane, now)

    def lane_lost(self, lane_id: int, now: float, reason: str) -> None:
        """The socket of ``lane_id`` ended, or could not be opened."""
        lane = self._lanes.get(lane_id)
        if lane is None:
            return
        if lane.conn is None or lane.conn.session_id is None:
            self._reconnects.connect_failed()
        self.stats.reconnects += 1
        self._drop_lane(lane_id, now, reason)

    # -- internals: lanes ------------------------------------------------------------------------

    def _drop_lane(self, lane_id: int, now: float, reason: str) -> None:
        lane = self._lanes.pop(lane_id, None)
        if lane is None:
            return
        self._actions.append(CloseLane(lane_id, fault=reason))
        if lane.conn is not None:
            lane.conn.connection_lost(now)
            self._process_lane_events(lane, now, assign=False)
        if lane.gen is not None and lane.gen.phase is not _Phase.ENDED:
            gen, lane.gen = lane.gen, None
            self._continue_after_loss(gen, now, reason)
        reconnects = self._reconnects  # (reconnect.py)
        reconnects.lane_dropped(now)
        if reconnects.exhausted(now):
            self._fail(reconnects.give_up_message(now, reason), configuration=False)
            return
        if reconnects.schedule_retry(now):
            return
        self._assign(now)
        self._ensure_lanes(self._opts.warm_lanes)

    def _ensure_lanes(self, wanted: int) -> None:
        """Open lanes until ``wanted`` exist (at most max_lanes), unless backing off."""
        if self._failed or self._reconnects.retry_at is not None:
            return
        if self._reconnects.failures and any(ln.conn is None for ln in self._lanes.values()):
            return  # the server is not answering: one attempt at a time
        while len(self._lanes) < min(wanted, self._opts.max_lanes):
            lane_id = self._next_lane
            self._next_lane += 1
            self._lanes[lane_id] = _Lane(lane_id)
            self._actions.append(OpenLane(lane_id))
            logger.debug("opening lane %d", lane_id)

    def _assign(self, now: float) -> None:
        """Give waiting generations, in order, a lane that can start one; open another lane
        when none is free or connecting."""
        for dead in list(self._lanes.values()):
            if dead.gen is None and dead.conn is not None and not dead.conn.reusable:
                self._retire_lane(dead.lane)  # may hold stale audio in vLLM's queue
        waiting = [g for g in self._order if g.phase is _Phase.WAITING]
        if (
            self._live is not None
            and self._live.phase is _Phase.WAITING
            and self._live not in waiting
        ):
            waiting.append(self._live)
        for gen in list(waiting):
            if gen.end is not None and gen.end <= self._history.start:
                # An outage outlasted the history: this utterance's audio is gone.
                self._lost_from_history(gen.start, gen.end)
                gen.phase, gen.finished = _Phase.ENDED, True
                waiting.remove(gen)
                self._advance(now)
        for gen in waiting:
            lane = next(
                (
                    ln
                    for ln in self._lanes.values()
                    if ln.gen is None and ln.conn is not None and ln.conn.can_start_generation
                ),
                None,
            )
            if lane is None:
                connecting = any(
                    ln.gen is None
                    and (ln.conn is None or ln.conn.state is ConnectionState.CONNECTING)
                    for ln in self._lanes.values()
                )
                if not connecting:
                    self._ensure_lanes(len(self._lanes) + 1)
                return
            assert lane.conn is not None
            lane.gen = gen
            gen.lane = lane.lane
            gen.phase = _Phase.RUNNING
            gen.last_activity = now
            lane.conn.start_generation(now)
            self.stats.generations += 1
            self._feed(gen, now)
        self._trim_idle_lanes()

    def _trim_idle_lanes(self) -> None:
        """Keep ``warm_lanes`` idle lanes (none after end of input); close the rest."""
        keep = 0 if self._input_ended else self._opts.warm_lanes
        for lane in list(self._lanes.values()):
            if lane.gen is not None or lane.conn is None:
                continue
            if lane.conn.can_start_generation and keep:
                keep -= 1
                continue
            if lane.conn.state is ConnectionState.CONNECTING and lane.conn.reusable and keep:
                keep -= 1
                continue
            self._retire_lane(lane.lane)

    def _retire_lane(self, lane_id: int | None) -> None:
        if lane_id is None:
            return
        lane = self._lanes.pop(lane_id, None)
        if lane is not None:
            logger.debug("closing lane %d", lane_id)
            if lane.conn is not None:
                lane.conn.close()
                self._collect(lane)
            self._actions.append(CloseLane(lane_id, fault=lane.fault, refused=lane.refused))

    def _collect(self, lane: _Lane) -> None:
        if lane.conn is not None:
            frames = lane.conn.data_to_send()
            if frames:
                self._actions.append(SendOnLane(lane.lane, frames))

    # -- internals: audio ------------------------------------------------------------------------

    def _count_dropped(self, start: int, end: int) -> int:
        """Count ``[start, end)`` as never transcribed; return the samples of it not counted
        before (a reversed range counts nothing; an overlap with an earlier drop counts once)."""
        new = self._dropped.add(start, end)
        self.stats.dropped_audio_s = self._dropped.total / SAMPLE_RATE
        return new

    def _lost_from_history(self, start: int, end: int) -> None:
        """Audio ``[start, end)`` left the history before any generation transcribed it (an
        outage longer than ``history_s``): count it and say so, never lose it silently."""
        if self._count_dropped(start, end) == 0:
            return
        logger.warning(
            "%.2fs of audio (%.2fs-%.2fs) left the %.0fs history before vLLM could transcribe "
            "it; it is not captioned (counted in stats.dropped_audio_s)",
            (end - start) / SAMPLE_RATE,
            start / SAMPLE_RATE,
            end / SAMPLE_RATE,
            self._opts.history_s,
        )

    def _new_generation(
        self, start: int, now: float, why: str, end: int | None = None
    ) -> _Generation:
        """A generation over ``[start, end)`` (``end``: where the caller will end it, None
        while live): a start the history no longer holds is moved up, and what of the range
        is lost counted (only up to ``end``: after it is another utterance's, or silence)."""
        if start < self._history.start:
            # the history no longer holds it (a very long outage): count what is lost
            hist = self._history.start
            self._lost_from_history(start, hist if end is None else min(end, hist))
            start = hist
        opts = self._opts
        gen = _Generation(
            gid=self._next_gid,
            start=start,
            lag=LagWatch(opts.max_lag_s, opts.lag_grace_s, opts.lag_policy),
            sent_until=start,
            last_activity=now,
        )
        self._next_gid += 1
        logger.debug(
            "generation %d from %.2fs (%s); audio up to %.2fs",
            gen.gid,
            start / SAMPLE_RATE,
            why,
            self._history.end / SAMPLE_RATE,
        )
        return gen

    def _feed(self, gen: _Generation, now: float) -> None:
        """Send ``gen`` the audio it is owed; send ``final`` once its range is complete."""
        if gen.phase is not _Phase.RUNNING or gen.lane is None:
            return
        lane = self._lanes.get(gen.lane)
        if lane is None or lane.conn is None:
            return
        conn = lane.conn
        if gen.sent_until < self._history.start:
            # The history moved past audio it was owed (a long outage, or audio arriving
            # faster than a generation capped at max_model_len can take it). Its start anchors
            # its step timestamps, so only one that has sent nothing yet can start later.
            hist = self._history.start
            self._lost_from_history(gen.sent_until, hist if gen.end is None else min(gen.end, hist))
            if gen.sent_until != gen.start:
                self._split_at(gen, conn, self._history.start, now, "after a gap")
                return
            gen.start = gen.sent_until = self._history.start
        until = self._history.end if gen.end is None else min(gen.end, self._history.end)
        if (room := self._budget.room) is not None and (
            gen.end is None or gen.end > gen.start + room
        ):
            # A generation must not run past max_model_len: it takes audio up to a quiet
            # point near its allowance, then hands the rest to the next (_check_capacity).
            # The last stretch before the allowance is held back until all of it is here, so
            # the quiet point can be anywhere in it (a word already sent in part would be cut
            # between two generations, and neither would hear it whole).
            cap_at = gen.start + room
            window = max(gen.start, cap_at - _SPLIT_WINDOW_MS * _MS)
            if until >= cap_at:
                lo = max(gen.sent_until, window)
                until = self._history.quietest(lo, cap_at) if cap_at > lo else cap_at
                gen.full = True
            else:
                until = min(until, max(window, gen.sent_until))
        sent = until > gen.sent_until
        if sent:
            audio = self._history.slice(gen.sent_until, until)
            conn.send_audio(audio)
            gen.sent_until = until
            self.stats.audio_sent_s += audio.size / SAMPLE_RATE
        if gen.end is not None and gen.sent_until >= gen.end:
            conn.finish_generation(now)
            gen.phase = _Phase.FINALIZING  # the watchdog keeps counting from the last output
            return
        if gen is self._live:
            self._check_lag(gen, conn, now)
        # with no new audio the budget did not grow; what else it depends on changes with
        # the server's output, after which _after_step checks it
        if (sent or gen.full) and gen.phase is _Phase.RUNNING and not gen.muted:
            self._check_capacity(gen, conn, now)

    def _split_at(
        self,
        gen: _Generation,
        conn: RealtimeConnection,
        start: int,
        now: float,
        why: str,
        hand_over: bool = False,
    ) -> None:
        """Finish ``gen`` where its audio stops and carry on from ``start`` (where it stops,
        or, when it lost audio it was owed, what the history still holds) in a new
        generation, right behind it (``hand_over``: which carries ``gen``'s caption on)."""
        rest_end = gen.end
        gen.end = gen.sent_until
        conn.finish_generation(now)
        gen.phase = _Phase.FINALIZING
        logger.info("generation %d: %s; continuing from %.2fs", gen.gid, why, start / SAMPLE_RATE)
        new = self._new_generation(start, now, f"{why}, after {gen.gid}", end=rest_end)
        new.end = rest_end
        new.handed_over, gen.handed_over = gen.handed_over, hand_over
        if self._live is gen:
            self._live = new
        if gen in self._order:
            self._order.insert(self._order.index(gen) + 1, new)
        else:
            self._order.appendleft(new)
        self._assign(now)

    def _end_live(
        self, now: float, decided: int | None = None, speech_end: int | None = None
    ) -> None:
        """End the live utterance at ``decided`` (None: all the audio pushed), its sound at
        ``speech_end``."""
        gen = self._live
        if gen is None:
            return
        self._live = None
        end = self._history.end
        if decided is not None:
            end = max(gen.start, min(decided, end))
        self._last_gen_end = end  # the next utterance may start there
        if gen.sent_until > end:  # (a LiveKit VAD decided after more audio was sent)
            silence = end if speech_end is None else max(gen.start, min(speech_end, end))
            gap = self._gap_level(gen.start, silence, end)
            if self._history.loudest(end, gen.sent_until) > gap:
                self._replay_to(gen, end, gap, now)
                return
            # (a gap: it heard no more than silence)
        gen.end = max(end, gen.sent_until)
        self._feed(gen, now)

    def _gap_level(self, start: int, silence: int, end: int) -> float:
        """How loud a 10 ms hop after the utterance ``[start, end)`` may be and still be a
        gap, not the next utterance: up to 6 dB over the silence the endpointer heard from
        ``silence`` (noise), or 20 dB under the utterance's loudest hop."""
        history = self._history
        return max(history.loudest(start, end) * 0.01, history.loudest(silence, end) * 4.0) + 1.0

    def _replay_to(self, gen: _Generation, end: int, gap: float, now: float) -> None:
        """``gen`` was sent sound past its utterance's ``end`` (a LiveKit VAD decided late):
        the next utterance's start, which it would transcribe too, or cut in a word. It is
        stopped unheard, and what it had not finalised is replayed up to ``end`` in a new
        generation in its place (unless that is a gap, no hop over ``gap``: its finals hold
        all its words). Should its finals reach past ``end``, nothing is replayed and the next
        utterance starts after them."""
        gen.end = end
        cut = self._replay_point(gen)
        gen.pending.clear()
        gen.muted = True
        replay = cut < end and self._history.loudest(cut, end) > gap
        logger.info(
            "generation %d: its utterance ended at %.2fs, but it was sent sound up to %.2fs; %s",
            gen.gid,
            end / SAMPLE_RATE,
            gen.sent_until / SAMPLE_RATE,
            f"replaying it from {cut / SAMPLE_RATE:.2f}s" if replay else "its finals hold it all",
        )
        if replay:
            self._continue(gen, cut, now, after=False)
        else:
            self._last_gen_end = max(end, cut)
            self._remove(gen)
        # (a VAD far behind a burst of frames: it may have been sent seconds of audio)
        self._stop_unheard(gen, now, abort=True)
        self._advance(now)

    # -- internals: server output ------------------------------------------------------------------

    def _process_lane_events(self, lane: _Lane, now: float, assign: bool = True) -> None:
        assert lane.conn is not None
        # Lanes and generations change state only on events other than deltas (a rollover a
        # delta sets off assigns by itself): after deltas alone there is nothing to assign.
        changed = False
        for ev in lane.conn.events_received():
            gen = lane.gen
            if isinstance(ev, DeltaReceived):
                if gen is not None:
                    gen.last_activity = now
                    gen.steps = ev.step + 1
                    if ev.delta:  # (a lone space is a word's first token)
                        gen.last_text_step = ev.step
                    if not gen.muted:
                        self._route(gen, ev, now)
                        self._after_step(gen, lane.conn, now)
                        if self._rut is not None:
                            lo = gen.start + ev.step * STEP_SAMPLES
                            signal = self._rut.step(lo, lo + STEP_SAMPLES, bool(ev.delta))
                            if signal is not None:
                                self._on_rut(self._rut, gen, signal, now)
                                return
                continue
            changed = True
            if isinstance(ev, GenerationFinished):
                if gen is None:
                    continue
                lane.gen = None
                self._on_finished(gen, ev, now)
            elif isinstance(ev, GenerationFailed):
                if gen is None:
                    continue
                lane.gen = None
                lane.fault = ev.reason
                if lane.refused is not None:  # not lost: it goes on another server
                    self._continue_after_loss(gen, now, lane.refused)
                    continue
                self.stats.lost_generations += 1
                self._losses += 1
                logger.warning("generation %d lost: %s", gen.gid, ev.reason)
                if self._losses > self._opts.max_reconnects + 1:
                    self._fail(
                        f"vLLM lost {self._losses} generations in a row (last: {ev.reason})",
                        configuration=False,
                    )
                    return
                self._continue_after_loss(gen, now, ev.reason)
            elif isinstance(ev, ServerErrorReceived):
                self.stats.server_errors += 1
                if ev.kind is ErrorKind.CONFIGURATION:
                    if lane.refused is not None:
                        continue  # (the commits after it: model_not_validated)
                    if self._opts.refusal_failover and ev.code is ErrorCode.MODEL_NOT_FOUND:
                        lane.refused = lane.fault = ev.message
                        continue  # retired below; its generation (failed next) goes elsewhere
                    self._fail(describe_refusal(ev.code, ev.message), True, ev.code)
                    return
                if ev.kind is ErrorKind.CLIENT_BUG:
                    logger.error("vLLM rejected a message: %s (%s)", ev.message, ev.code)
            elif isinstance(ev, MalformedMessageReceived):
                self.stats.malformed_messages += 1
                logger.warning(
                    "ignoring a malformed message from vLLM: %s",
                    ev.reason,
                    extra={"lk.pii.data": ev.raw[:200]},
                )
            elif isinstance(ev, SessionCreated):
                self._reconnects.connected()
                logger.debug("lane %d: vLLM session %s", lane.lane, ev.session_id)
        if lane.refused is not None and lane.gen is None:
            self._retire_lane(lane.lane)
        if assign and changed and not self._failed:
            self._assign(now)

    def _route(self, gen: _Generation, ev: DeltaReceived | GenerationFinished, now: float) -> None:
        """Feed ``gen``'s output to the segmenter if it is first in order, else hold it."""
        if self._order and self._order[0] is gen:
            self._apply(gen, ev, now)
        else:
            gen.pending.append(ev)

    def _apply(self, gen: _Generation, ev: DeltaReceived | GenerationFinished, now: float) -> None:
        seg = self._segmenter
        if not seg.has_open_generation:
            seg.start_generation(gen.start / SAMPLE_RATE)
            if gen.onset_s is not None:
                seg.receive_onset(gen.onset_s)
        if isinstance(ev, DeltaReceived):
            step_end = gen.start + (ev.step + 1) * STEP_SAMPLES
            if ev.delta.strip() and self.stats.first_text_latency_s is None:
                self.stats.first_text_latency_s = self._push_clock.since(
                    step_end - STEP_SAMPLES // 2, now
                )
            self._emit_captions(seg.receive_delta(ev.delta, step_end / SAMPLE_RATE), now)
            if ev.delta:
                self.stats.dropped_punctuation = seg.dropped_punctuation
        else:
            resume: ResumePoint | None = None
            if gen.continued:
                transcribed_end = gen.start + ev.steps * STEP_SAMPLES
                keep, most = self._replay(gen, transcribed_end, gen.sent_until)
                captions, resume = seg.continue_generation(
                    ev.text, keep_incomplete=keep, most_units=most
                )
            elif gen.handed_over:
                # Split at a quiet point at its allowance: its words are whole, and the
                # caption stays open, like after a rollover, so the next generation's first
                # tokens (the punctuation of its last word) join it.
                captions, _ = seg.continue_generation(ev.text, keep_incomplete=True)
            else:
                end_s = (gen.start + ev.steps * STEP_SAMPLES) / SAMPLE_RATE
                captions = seg.finish_generation(ev.text, end_s)
            self._emit_captions(captions, now)
            self._report_usage(gen, ev)
            gen.finished = True
            if gen.continued:
                # The server stopped it while audio still flowed (§2.3): carry on from a quiet
                # point after the last whole word, with the audio it had not consumed.
                cut = self._resume_cut(gen, resume, transcribed_end, gen.sent_until)
                self._continue(gen, cut, now, after=True)

    def _emit_captions(self, captions: list[CaptionEvent], now: float) -> None:
        for cap in captions:
            if isinstance(cap, CaptionInterim):
                self._actions.append(Interim(cap.segment, cap.text))
            else:
                self._actions.append(Final(cap.segment, cap))
                lat = self._push_clock.since(int(cap.end_s * SAMPLE_RATE), now)
                if lat is not None:
                    self.stats.final_latency_s = lat

    def _report_usage(self, gen: _Generation, ev: GenerationFinished) -> None:
        usage: Usage | None = ev.usage
        self._actions.append(
            UsageReport(
                generation=gen.gid,
                audio_s=ev.samples_sent / SAMPLE_RATE,
                input_tokens=usage.prompt_tokens if usage else 0,
                output_tokens=(usage.completion_tokens or 0) if usage else 0,
            )
        )

    def _on_finished(self, gen: _Generation, ev: GenerationFinished, now: float) -> None:
        stopped = ev.reason is FinishReason.MAX_MODEL_LEN
        if not stopped and not gen.muted and ev.samples_sent > 0:
            # After our final, but short of the steps its audio and the right padding make:
            # it reached max_model_len while working through them; the rest is unheard.
            pad = self._pad_steps * STEP_SAMPLES
            full = steps_for_samples(ev.samples_sent + pad, self._opts.transcription_delay_ms)
            if ev.steps + 1 < full:
                stopped = True
                self.stats.unsolicited_done += 1
                logger.info(
                    "generation %d stopped at max_model_len after its final (%d of %d steps); "
                    "continuing in a new one",
                    gen.gid,
                    ev.steps,
                    full,
                )
        if ev.reason is FinishReason.REQUESTED and not stopped:
            self._losses = 0  # a whole generation worked: the budget starts over
        elif ev.reason is FinishReason.MAX_MODEL_LEN:
            self.stats.unsolicited_done += 1
            logger.info("generation %d reached max_model_len; continuing in a new one", gen.gid)
        if stopped:
            # What reached the server after it stopped (audio, and our final if we sent one)
            # sits in its queue and would feed the next generation on this socket, shifting
            # its audio against the steps we count (vllm-realtime.md §2.2 rules 6-7): a fresh one.
            self._retire_lane(gen.lane)
        gen.phase = _Phase.ENDED
        if gen.muted:
            # rolled over: its captions were closed at the cut; only usage remains
            self._report_usage(gen, ev)
            return
        gen.continued = stopped
        # (a continued generation's successor is made when its done reaches the captions:
        # where to resume depends on whether its last word was whole)
        self._route(gen, ev, now)
        self._advance(now)

    def _on_rut(self, rut: RutDetector, gen: _Generation, signal: RutSignal, now: float) -> None:
        """vLLM's blank-token rut (vllm-project/vllm#47614): long speech, only empty deltas."""
        threshold = rut.options.threshold_s
        self._actions.append(BlankRut(signal is RutSignal.PERSISTENT, threshold))
        if signal is RutSignal.PERSISTENT:
            self.stats.blank_ruts_persistent += 1
            logger.warning(
                "vLLM still sends only empty deltas on a fresh socket (another %.0fs of speech): "
                "the blank-token rut (vllm-project/vllm#47614) persists; captions are missing "
                "until the server recovers or is restarted",
                threshold,
            )
            return
        self.stats.blank_ruts += 1
        logger.warning(
            "vLLM sent only empty deltas for %.0fs of speech: the blank-token rut "
            "(vllm-project/vllm#47614); continuing on a fresh socket from the last word",
            threshold,
        )
        if gen.phase not in (_Phase.RUNNING, _Phase.FINALIZING) or gen.lane is None:
            return
        lane_id, gen.lane = gen.lane, None
        if lane_id in self._lanes:
            self._lanes[lane_id].gen = None
            self._retire_lane(lane_id)  # a fresh socket: the ruined one is not reused
        gen.phase = _Phase.ENDED
        gen.pending.clear()
        cut = gen.start
        if self._order and self._order[0] is gen:
            resume = (
                self._segmenter.abandon_generation()
                if self._segmenter.has_open_generation
                else None
            )
            since = rut.since
            if resume is not None and (since is None or since >= gen.start):
                # it had text before the rut: from after its last final, like a lost one
                self._lost_before_replay(gen, min(gen.start, int(resume.resume_s * SAMPLE_RATE)))
                cut = max(self._history.start, min(gen.start, int(resume.resume_s * SAMPLE_RATE)))
            elif since is not None:
                # the rut began in an earlier generation: from its last word
                cut = self._cut_after(since, self._history.start, gen.start)
        self._continue(gen, cut, now, after=False)
        self._advance(now)

    def _continue_after_loss(self, gen: _Generation, now: float, reason: str) -> None:
        """``gen`` died without ``done``: replay its audio from after the last final."""
        if gen.phase is _Phase.ENDED:
            return
        gen.phase = _Phase.ENDED
        if gen.muted:
            return
        cut = self._replay_point(gen)
        gen.pending.clear()
        self._continue(gen, cut, now, after=False)
        self._advance(now)

    def _replay_point(self, gen: _Generation) -> int:
        """Where a replay of ``gen`` starts: after its last final when its output reached the
        captions (the open caption's text is dropped, its number kept for the replay), else
        where it started."""
        if not (self._order and self._order[0] is gen and self._segmenter.has_open_generation):
            return gen.start  # none of its output reached the captions
        resume = self._segmenter.abandon_generation()
        resume_sample = int(resume.resume_s * SAMPLE_RATE)
        self._lost_before_replay(gen, min(gen.start, resume_sample))
        if resume.after_word:
            # may lie before gen.start when gen continued a server-stopped generation
            lo = max(self._history.start, min(gen.start, resume_sample))
            return self._cut_after(resume_sample, lo, gen.sent_until)
        return max(self._history.start, min(gen.start, resume_sample))

    def _lost_before_replay(self, gen: _Generation, want: int) -> None:
        """A replay of ``gen`` should start at ``want``: count what of ``[want, gen.end)`` the
        history no longer holds (the replay starts where it begins)."""
        hist = self._history.start
        if want < hist:
            self._lost_from_history(want, hist if gen.end is None else min(gen.end, hist))

    def _continue(self, old: _Generation, cut: int, now: float, after: bool) -> None:
        """A new generation over ``[cut, old.end)`` that takes ``old``'s place in caption order
        (``after``: right behind ``old``, whose captions are still to be released)."""
        new = self._new_generation(cut, now, f"continuing {old.gid}", end=old.end)
        new.end, new.handed_over = old.end, old.handed_over
        if old.end is None and self._live is old:
            self._live = new
        if old in self._order:
            idx = self._order.index(old)
            if after:
                self._order.insert(idx + 1, new)
            else:
                self._order[idx] = new
        else:
            self._order.appendleft(new)
        self._assign(now)

    def _advance(self, now: float) -> None:
        """Pop finished generations from the head and release the next one's held output."""
        while self._order:
            head = self._order[0]
            if head.finished:
                self._order.popleft()
                continue
            if head.pending:
                held, head.pending = head.pending, []
                for ev in held:
                    self._apply(head, ev, now)
                continue
            break
        if self._order and (head := self._order[0]).phase is _Phase.RUNNING and head.lane:
            conn = self._lanes[head.lane].conn if head.lane in self._lanes else None
            if conn is not None and not head.muted:
                self._check_capacity(head, conn, now)  # it may be waiting to be split
        self._maybe_speech_ended()

    def _maybe_speech_ended(self) -> None:
        if self._speaking and self._live is None and not self._order:
            self._speaking = False
            self._actions.append(SpeechEnded())

    # -- internals: cut points, rollover, lag ----------------------------------------------------

    def _replay(
        self, gen: _Generation, transcribed_end: int, limit: int
    ) -> tuple[bool, int | None]:
        """What the generation after ``gen`` replays of its incomplete last word (see
        replay_depth.py): (keep it as it is, at most how many units to take out)."""
        start = gen.start + STEP_SAMPLES
        return replay_depth(
            lambda most: self._segmenter.peek_resume(most_units=most),
            lambda point: self._resume_cut(gen, point, transcribed_end, limit) > start,
            gen.gid,
        )

    def _resume_cut(
        self, gen: _Generation, resume: ResumePoint | None, transcribed_end: int, limit: int
    ) -> int:
        """Where the generation after ``gen`` starts, from the segmenter's resume point: a
        quiet point after the last whole word (before ``limit``), or before the incomplete
        word that was taken out; near the end of what ``gen`` transcribed if it had no word."""
        if resume is None:  # settled like a normal end
            return self._cut_after(None, gen.start, transcribed_end)
        at = int(resume.resume_s * SAMPLE_RATE)
        before = None if resume.before_s is None else int(resume.before_s * SAMPLE_RATE)
        if resume.after_word:
            # may lie before gen.start when gen continued a server-stopped generation
            lo = max(self._history.start, min(gen.start, at))
            # A word ending at the very last step has its gap in audio the server never
            # transcribed, which the history still holds.
            if before is None:
                return self._cut_after(at, lo, limit)
            # The word taken out starts at ``before``: the gap after the kept word lies
            # before it, however early the kept word's end was placed (a character's token
            # comes out at the step covering its end, so a cut from its placed end alone
            # fell inside it and the next generation heard it again).
            lo = max(lo, at - 40 * _MS)
            hi = min(limit, max(before, lo + 1))
            return self._history.quietest(lo, hi) if hi > lo else lo
        if before is not None:
            lo = max(self._history.start, at)
            return self._history.quietest(lo, before) if before > lo else lo
        return self._cut_after(None, gen.start, transcribed_end)

    def _cut_after(self, word_end: int | None, gen_start: int, limit: int) -> int:
        """A quiet cut point just after a word whose end was estimated at ``word_end`` (the
        step's midpoint, so ±40 ms), before ``limit``; or in the last 300 ms if no word."""
        if word_end is None:
            lo = max(gen_start, limit - 300 * _MS)
            return self._history.quietest(lo, limit) if limit > lo else max(gen_start, limit)
        lo = max(gen_start, word_end - 40 * _MS)
        # the first gap after the word; never as far as the gap after the next word
        hi = min(limit, word_end + 120 * _MS)
        if hi <= lo:
            return lo
        return self._history.quietest(lo, hi)

    def _after_step(self, gen: _Generation, conn: RealtimeConnection, now: float) -> None:
        if gen.phase is not _Phase.RUNNING:
            return
        lag = conn.lag_steps * STEP_SAMPLES / SAMPLE_RATE
        self.stats.lag_s = lag
        self.stats.peak_lag_s = max(self.stats.peak_lag_s, lag)
        gen.lag.stepped(lag)
        self._check_capacity(gen, conn, now)

    def _check_capacity(self, gen: _Generation, conn: RealtimeConnection, now: float) -> None:
        """Roll the live generation over before max_model_len (§2.3; before vLLM 0.32 reaching
        it kills the engine for every session). What counts is every step the generation will
        run once finished: the audio already sent (some still queued at the server) plus the
        right padding vLLM appends at ``final``."""
        budget = self._budget
        gen_cap = self._opts.generation_cap
        if (
            (budget.room is None and gen_cap is None)
            or not self._order
            or self._order[0] is not gen
        ):
            return
        if gen.phase is not _Phase.RUNNING:
            return
        if gen_cap is not None:
            # Long generations make every step slower (generation_cap.py). The cut falls
            # after the last captioned word, in audio the server has transcribed, however far
            # behind it is.
            reason = gen_cap.check(
                gen.sent_until - gen.start,
                self._segmenter.open_segment is None,
                conn.steps - gen.last_text_step > 2,
            )
            if reason is not None:
                self._roll_over(gen, now, reason=reason)
                return
        if budget.room is None:
            return
        if gen.full and (gen.end is None or gen.end > gen.sent_until):
            # Its allowance is sent, up to a quiet point, and more audio waits (no rollover
            # found a pause after a word: dense tokens, a backed-up output): it finishes
            # normally with all it heard, and the next generation takes the audio from there.
            if not self._history.is_quiet(gen.sent_until, _SPLIT_WINDOW_MS * _MS):
                # Unless its audio stops inside a sound: no quiet point was left before the
                # allowance (audio had gone past the held-back window before max_model_len
                # was known). Split there, the word would be heard in part by both
                # generations and written by neither: roll over after its last whole word
                # instead, once its output has caught up, and replay the rest.
                if conn.lag_steps <= 2:
                    self._roll_over(gen, now, reason=AT_LIMIT)
                return
            self.stats.rollovers += 1
            self._split_at(gen, conn, gen.sent_until, now, "its allowance is used", True)
            return
        if conn.lag_steps > 2:
            # The cut must fall in audio the server has transcribed; until it catches up,
            # _feed holds back whatever would not fit.
            return
        reason = budget.rollover_reason(
            conn.expected_steps,
            at_pause=self._segmenter.open_segment is None,
            after_gap=conn.steps - gen.last_text_step > 2,
        )
        if reason is not None:
            self._roll_over(gen, now, reason=reason)

    def _context_budget(self) -> ContextBudget:
        return ContextBudget(
            self._opts.max_model_len,
            transcription_delay_ms=self._opts.transcription_delay_ms,
            pad_steps=self._pad_steps,
            rollover_fraction=self._opts.rollover_fraction,
        )

    def _check_lag(self, gen: _Generation, conn: RealtimeConnection, now: float) -> None:
        """Backpressure (lag.py): catch up when the lag policy says so."""
        lag_s = conn.lag_steps * STEP_SAMPLES / SAMPLE_RATE
        if gen.lag.catch_up_due(lag_s, now) and self._order and self._order[0] is gen:
            self._roll_over(gen, now, reason="catching up", catch_up=True)

    def _roll_over(self, gen: _Generation, now: float, reason: str, catch_up: bool = False) -> None:
        """Close ``gen``'s captions at a cut and continue its audio in a new generation (the
        live audio, or the rest of an utterance that already ended).

        Rollover: the cut is a quiet point after the last whole word, ``gen`` is finished
        normally (final → done) and its output after the cut is ignored; the caption stays
        open for the next generation. Catch-up: the cut is
        near the live edge, the backlog in between is dropped (and counted), and the lagging
        socket is closed, which aborts its backlog on the server (vLLM >= 0.32).
        """
        transcribed_end = gen.start + gen.steps * STEP_SAMPLES
        seg = self._segmenter
        resume: ResumePoint | None = None
        keep = False
        most: int | None = None
        if not catch_up:
            # A rollover must move on: a cut where gen started (a word still coming out
            # filled it) would start it over forever. Wait for more output, unless gen can
            # take no more: then its last word is kept as it is.
            peek = seg.peek_resume() if seg.has_open_generation else None
            if self._resume_cut(gen, peek, transcribed_end, transcribed_end) <= (
                gen.start + STEP_SAMPLES
            ):
                room = self._budget.room
                full = reason == AT_LIMIT or (
                    room is not None and gen.sent_until - gen.start >= room
                )
                if not full or transcribed_end <= gen.start:
                    return
                keep, most = (
                    self._replay(gen, transcribed_end, transcribed_end)
                    if peek is not None
                    else (True, None)
                )
        if seg.has_open_generation:
            # An incomplete last word goes to the next generation. Catch-up closes the caption
            # (audio is dropped after it); a rollover keeps it open, so the next generation's
            # first tokens (often the punctuation of the last word) join it.
            if catch_up:
                captions, resume = seg.roll_over(keep_incomplete=keep)
            else:
                captions, resume = seg.continue_generation(
                    None, keep_incomplete=keep, most_units=most
                )
            self._emit_captions(captions, now)
        if catch_up:
            # the backlog after the last whole word is dropped (a word it cut is not shown)
            kept = transcribed_end
            if resume is not None and resume.before_s is not None:
                kept = min(kept, max(gen.start, int(resume.before_s * SAMPLE_RATE)))
            lo = max(transcribed_end, self._history.end - self._opts.preroll_ms * _MS)
            cut = self._history.quietest(lo, self._history.end)
            self._count_dropped(kept, cut)
        else:
            cut = self._resume_cut(gen, resume, transcribed_end, transcribed_end)
            if cut <= gen.start:
                cut = transcribed_end  # its allowance is used: keep all it transcribed
            self.stats.rollovers += 1
        logger.info("generation %d: %s at %.2fs", gen.gid, reason, cut / SAMPLE_RATE)
        gen.muted = True
        self._remove(gen)
        new = self._new_generation(
            cut, now, f"{reason}, after {gen.gid}", end=None if self._live is gen else gen.end
        )
        if self._live is gen:
            self._live = new
        else:
            new.end = gen.end  # an utterance that had ended: the rest of it
            new.handed_over = gen.handed_over
        self._order.appendleft(new)
        self._stop_unheard(gen, now, abort=catch_up)
        self._assign(now)

    def _stop_unheard(self, gen: _Generation, now: float, abort: bool) -> None:
        """Stop ``gen``, whose later output is ignored (muted): with ``abort``, close its
        socket, which aborts its backlog on the server (vLLM >= 0.32); else (or before 0.32,
        where closing mid-generation can orphan the engine request, §2.4) finish it and let
        the server work through the backlog unheard."""
        if abort and self._opts.abort_on_close:
            gen.phase = _Phase.ENDED
            lane_id, gen.lane = gen.lane, None
            if lane_id is not None and lane_id in self._lanes:
                self._lanes[lane_id].gen = None
                self._retire_lane(lane_id)
        else:
            gen.end = gen.sent_until
            self._feed(gen, now)  # sends final: vLLM finishes it and frees the slot

    def _remove(self, gen: _Generation) -> None:
        try:
            self._order.remove(gen)
        except ValueError:
            pass

    def _fail(self, message: str, configuration: bool, code: ErrorCode | None = None) -> None:
        if self._failed:
            return
        self._failed = True
        self._fatal = configuration
        self._actions.append(StreamFailed(message, configuration, code))
