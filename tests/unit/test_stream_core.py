"""StreamCore wired to the emulator's sans-I/O engine: no sockets, a hand-stepped clock.

Each lane of the core is one ``RealtimeEngine`` (vLLM's connection logic); the harness moves
frames between them and runs engine steps, so the core's decisions (lanes, replay, rollover,
backpressure, timers) are tested in milliseconds of CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from livekit_plugins_voxtral_vllm.endpointer import Endpointer
from livekit_plugins_voxtral_vllm.errors import InvalidState
from livekit_plugins_voxtral_vllm.protocol import SAMPLE_RATE, ErrorCode
from livekit_plugins_voxtral_vllm.stream_core import (
    CloseLane,
    CoreOptions,
    Final,
    Interim,
    LagPolicy,
    OpenLane,
    SendOnLane,
    SpeechEnded,
    SpeechStarted,
    StreamCore,
    StreamFailed,
    UsageReport,
)
from livekit_plugins_voxtral_vllm.stt import SpeechStream
from livekit_plugins_voxtral_vllm.testing import (
    RealtimeEngine,
    StepMath,
    VersionProfile,
    synthesize,
)
from livekit_plugins_voxtral_vllm.testing.engine import StreamingDecoder

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
CHUNK = 1280  # the glue pushes 80 ms chunks


@dataclass
class Harness:
    """The core, its lanes as engines, and a manual clock."""

    core: StreamCore
    max_model_len: int = 131072
    version: str = "0.33.0"
    model: str = MODEL
    now: float = 0.0
    engines: dict[int, RealtimeEngine] = field(default_factory=dict)
    all_engines: list[RealtimeEngine] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    failed: StreamFailed | None = None
    closed: list[CloseLane] = field(default_factory=list)
    refuse_connects: bool = False
    step_budget: int | None = None  # engine steps per pump (None: all runnable)
    frozen: set[int] = field(default_factory=set)  # lanes whose engine does not step
    delay_ms: int = 480
    decoder_factory: Callable[[], StreamingDecoder] | None = None
    on_engine: Callable[[RealtimeEngine, int], None] | None = None
    """Called with each new engine and its index (0 for the first): to inject faults."""
    dropped_seen: float = 0.0

    def __post_init__(self) -> None:
        self.endpointer = Endpointer()
        self.core.start(self.now)
        self.pump()

    def pump(self) -> None:
        for _ in range(10_000):
            moved = False
            for action in self.core.actions():
                moved = True
                if isinstance(action, OpenLane):
                    if self.refuse_connects:
                        self.core.lane_lost(action.lane, self.now, "connection refused")
                        continue
                    extra = (
                        {"decoder_factory": self.decoder_factory} if self.decoder_factory else {}
                    )
                    engine = RealtimeEngine(
                        served_model_names=[MODEL],
                        profile=VersionProfile.for_version(self.version),
                        math=StepMath(self.delay_ms, self.max_model_len),
                        now=self.now,
                        **extra,  # type: ignore[arg-type]
                    )
                    self.engines[action.lane] = engine
                    self.all_engines.append(engine)
                    if self.on_engine is not None:
                        self.on_engine(engine, len(self.all_engines) - 1)
                    self.core.lane_connected(action.lane, self.now)
                elif isinstance(action, SendOnLane):
                    engine = self.engines[action.lane]
                    for frame in action.frames:
                        engine.receive_text(frame, self.now)
                elif isinstance(action, CloseLane):
                    self.closed.append(action)
                    engine_or_none = self.engines.pop(action.lane, None)
                    if engine_or_none is not None:
                        engine_or_none.disconnect(self.now)
                elif isinstance(action, StreamFailed):
                    self.failed = action
                else:
                    self.events.append(action)
            for lane, engine in list(self.engines.items()):
                if lane not in self.frozen:
                    budget = self.step_budget if self.step_budget is not None else 1_000_000
                    engine.run_steps(budget, self.now)
                for text in engine.data_to_send():
                    moved = True
                    self.core.lane_received(lane, text, self.now)
                if engine.drop_requested and self.engines.get(lane) is engine:
                    moved = True
                    del self.engines[lane]
                    self.core.lane_lost(lane, self.now, "connection dropped")
            if not moved:
                self.check_dropped()
                return
        raise AssertionError("the core and the engines never settled")

    def check_dropped(self) -> None:
        """``stats.dropped_audio_s`` (checked after every pump, so in every core test and
        sweep): never negative, never shrinking, the length of the ranges counted (each
        sample once), all of them in the audio pushed."""
        core = self.core
        dropped = core.stats.dropped_audio_s
        assert 0.0 <= self.dropped_seen <= dropped, (self.dropped_seen, dropped)
        ranges = core._dropped.ranges
        assert all(0 <= a < b <= core._history.end for a, b in ranges), ranges
        assert round(dropped * SAMPLE_RATE) == sum(b - a for a, b in ranges), (dropped, ranges)
        self.dropped_seen = dropped

    def push(self, samples: np.ndarray, dt: float | None = None) -> None:
        """Push audio in 80 ms chunks through the built-in endpointer, like the glue."""
        for i in range(0, samples.size, CHUNK):
            chunk = samples[i : i + CHUNK]
            self.now += chunk.size / SAMPLE_RATE if dt is None else dt
            SpeechStream._push_endpointed(self.core, self.endpointer, chunk, self.now)
            self.core.handle_timer(self.now)
            self.pump()

    def advance(self, seconds: float) -> None:
        """Let wall time pass with no audio, firing timers as the glue would."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + 0.1)
            self.core.handle_timer(self.now)
            self.pump()

    def end(self) -> None:
        self.core.end_input(self.now)
        self.pump()

    def finals(self) -> list[Final]:
        return [e for e in self.events if isinstance(e, Final)]

    @property
    def text(self) -> str:
        return " ".join(f.caption.text for f in self.finals())


def harness(**options: object) -> Harness:
    max_model_len = options.pop("engine_max_model_len", 131072)
    version = options.pop("version", "0.33.0")
    model = options.pop("model", MODEL)
    factory = options.pop("decoder_factory", None)
    on_engine = options.pop("on_engine", None)
    assert isinstance(max_model_len, int) and isinstance(version, str) and isinstance(model, str)
    core = StreamCore(CoreOptions(model=model, **options))  # type: ignore[arg-type]
    delay = core._opts.transcription_delay_ms
    return Harness(
        core=core,
        max_model_len=max_model_len,
        version=version,
        model=model,
        delay_ms=delay,
        decoder_factory=factory,  # type: ignore[arg-type]
        on_engine=on_engine,  # type: ignore[arg-type]
    )


def words(text: str) -> list[str]:
    return text.split()


SCRIPT = "hello world. <pause:900> the meeting starts now. <pause:900> thank you everyone."


def test_utterances_in_order_with_one_final_each() -> None:
    """Deltas → captions; each utterance its own generation; all engines stay error-free."""
    h = harness()
    speech = synthesize(SCRIPT)
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
    assert h.core.finished
    kinds = [type(e) for e in h.events]
    assert kinds[0] is SpeechStarted and kinds[-1] is SpeechEnded
    segments = [f.segment for f in h.finals()]
    assert segments == sorted(set(segments))
    for engine in h.all_engines:
        assert not engine.errors_sent, engine.errors_sent  # never a protocol error
        assert not any(g.poisoned for g in engine.generations)  # never a stray final
    assert sum(isinstance(e, UsageReport) for e in h.events) == 3


def test_interims_are_cumulative_and_precede_their_final() -> None:
    h = harness()
    h.push(synthesize("good morning everyone. let us begin.").samples)
    h.advance(1.0)
    h.end()
    last: dict[int, str] = {}
    for e in h.events:
        if isinstance(e, Interim):
            assert e.text.startswith(last.get(e.segment, ""))
            last[e.segment] = e.text
        elif isinstance(e, Final):
            assert e.caption.text.startswith(last.get(e.segment, ""))


def test_new_utterance_uses_a_second_lane_while_the_first_finishes() -> None:
    """§2.2 rule 8: the next commit must wait for done — so it goes to another socket."""
    h = harness()
    first = synthesize("hello world.", tail_ms=700)
    h.push(first.samples[: first.samples.size // 2])
    lane1 = next(iter(h.engines))
    h.frozen.add(lane1)  # its right-pad steps will not run yet
    h.push(first.samples[first.samples.size // 2 :])
    second = synthesize("thank you.", lead_ms=0)
    h.push(second.samples)
    assert len(h.engines) == 2
    busy = [e for e in h.engines.values() if e.generation is not None and e.generation.running]
    assert len(busy) == 2  # both generations run at once
    h.frozen.clear()
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(first.text + second.text)


def test_lost_generation_is_replayed_on_a_new_lane() -> None:
    h = harness()
    speech = synthesize("we can hear the quick brown fox. <pause:500> jumps over the lazy dog.")
    half = speech.samples.size * 2 // 3
    h.push(speech.samples[:half])
    live = next(lane for lane, e in h.engines.items() if e.generation and e.generation.running)
    h.engines[live].disconnect(h.now)
    h.core.lane_lost(live, h.now, "dropped")
    h.pump()
    h.push(speech.samples[half:])
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
    assert h.core.stats.lost_generations == 1


def test_processing_error_is_replayed() -> None:
    """§1.3 case c: no done follows; a new generation carries on."""
    h = harness()
    speech = synthesize("hello world. the meeting starts now. we can hear you.")
    half = speech.samples.size // 2
    h.push(speech.samples[:half])
    live = next(e for e in h.engines.values() if e.generation and e.generation.running)
    live.inject_processing_error("boom", 0, h.now)
    h.pump()
    h.push(speech.samples[half:])
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
    assert h.core.stats.lost_generations == 1


def test_unsolicited_done_is_continued_without_loss() -> None:
    """§2.3 (>= 0.32): the server stops at max_model_len; the plugin carries on."""
    h = harness(engine_max_model_len=39 + 40)  # 3.2 s per generation; the core is not told
    speech = synthesize(
        "hello world the meeting starts now we can hear the quick brown fox jumps over "
        "the lazy dog good morning everyone let us begin"
    )
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
    assert h.core.stats.unsolicited_done >= 2


def test_rollover_keeps_old_vllm_alive() -> None:
    """< 0.32 dies at max_model_len: the core rolls over, counting queued audio and padding."""
    h = harness(engine_max_model_len=39 + 80, version="0.31.0", max_model_len=39 + 80)
    speech = synthesize(
        "hello world the meeting starts now. we can hear the quick brown fox. jumps over "
        "the lazy dog good morning everyone let us begin. thank you."
    )
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert not any(e.engine_fatal for e in h.all_engines)
    assert words(h.text) == words(speech.text)
    assert h.core.stats.rollovers >= 1
    assert all(g.steps <= 80 for e in h.all_engines for g in e.generations)


def test_stalled_input_ends_the_utterance() -> None:
    """§2.4: never leave a generation open without audio."""
    h = harness(input_stall_s=1.0)
    speech = synthesize("hello world the meeting", tail_ms=0)
    h.push(speech.samples)
    assert not h.finals()
    h.advance(1.5)  # no audio for 1.5 s
    (final,) = h.finals()
    assert words(final.caption.text) == words(speech.text)


def test_input_held_by_the_glue_is_not_a_stall() -> None:
    """While the glue holds the input back (waiting for a lagging LiveKit VAD at a flush),
    the stall timer starts over; once the holding stops, a real stall still ends it."""
    h = harness(input_stall_s=1.0)
    speech = synthesize("hello world the meeting", tail_ms=0)
    h.push(speech.samples)
    for _ in range(30):  # 3 s held
        h.core.input_held(h.now)
        h.advance(0.1)
    assert not h.finals()
    h.advance(1.5)
    (final,) = h.finals()
    assert words(final.caption.text) == words(speech.text)


def test_input_resuming_after_a_stall_starts_a_new_utterance() -> None:
    """The stall ended the utterance while the endpointer still saw speech: audio that
    comes back must not be lost."""
    h = harness(input_stall_s=1.0)
    first = synthesize("hello world.", tail_ms=0)
    second = synthesize("thank you everyone.", lead_ms=0)
    h.push(first.samples)
    h.advance(1.5)
    assert len(h.finals()) == 1
    h.push(second.samples)
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(first.text + second.text)


def test_silent_generation_is_declared_lost_and_replayed() -> None:
    h = harness(generation_timeout_s=3.0)
    speech = synthesize(
        "hello world the meeting starts now we can hear the quick brown fox jumps over "
        "the lazy dog good morning everyone"
    )
    quarter = speech.samples.size // 4
    h.push(speech.samples[:quarter])
    lane = next(lane for lane, e in h.engines.items() if e.generation and e.generation.running)
    h.frozen.add(lane)  # the engine hangs (like vLLM 0.17-0.24 after its timeout)
    h.push(speech.samples[quarter:])  # audio keeps flowing in real time
    assert lane not in h.engines  # dropped by the watchdog
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
    assert h.core.stats.lost_generations == 1


def test_wrong_model_fails_as_configuration() -> None:
    h = harness(model="not-served")
    h.push(synthesize("hello").samples)
    assert h.failed is not None and h.failed.configuration
    assert h.failed.code is ErrorCode.MODEL_NOT_FOUND
    assert "not-served" in h.failed.message
    with pytest.raises(InvalidState):
        h.core.resume(h.now)


def test_with_refusal_failover_a_wrong_model_closes_the_lane_and_the_stream_goes_on() -> None:
    """Several servers: the first socket's server does not serve the model (a bad deploy);
    the lane is closed as refused and the utterance goes on a new lane (another server, for
    the glue), every word once, nothing counted as lost."""

    def first_serves_another(engine: RealtimeEngine, index: int) -> None:
        if index == 0:
            engine.served_model_names = ("someone/else",)

    h = harness(refusal_failover=True, on_engine=first_serves_another)
    speech = synthesize("hello world the meeting starts now")
    h.push(speech.samples)
    h.push(np.zeros(SAMPLE_RATE, dtype=np.int16))
    h.end()
    assert h.failed is None
    assert words(h.text) == words(speech.text)
    refused = [c for c in h.closed if c.refused]
    assert len(refused) == 1 and "does not exist" in (refused[0].refused or "")
    assert h.core.stats.lost_generations == 0 and len(h.all_engines) == 2


def test_without_refusal_failover_a_wrong_model_still_fails_the_stream() -> None:
    def first_serves_another(engine: RealtimeEngine, index: int) -> None:
        engine.served_model_names = ("someone/else",)

    h = harness(on_engine=first_serves_another)
    h.push(synthesize("hello").samples)
    assert h.failed is not None and h.failed.configuration
    assert h.failed.code is ErrorCode.MODEL_NOT_FOUND


def test_refused_connections_fail_after_the_budget_then_resume() -> None:
    h = harness(max_reconnects=2, reconnect_interval_s=0.5, max_outage_s=1.0)
    h.refuse_connects = True  # the server goes away while the stream is idle
    for lane in list(h.engines):
        h.core.lane_lost(lane, h.now, "dropped")
    h.engines.clear()
    h.pump()
    for _ in range(5):
        h.advance(0.6)
    assert h.failed is not None and not h.failed.configuration
    h.refuse_connects = False
    h.failed = None
    h.core.resume(h.now)
    h.pump()
    speech = synthesize("thank you everyone.")
    h.push(speech.samples)
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)


def test_a_long_outage_is_bridged_and_only_old_audio_is_lost() -> None:
    """A vLLM restart takes minutes: keep retrying, replay what the history still holds."""
    h = harness(max_reconnects=3, reconnect_interval_s=2.0, max_outage_s=180.0)
    h.refuse_connects = True
    for lane in list(h.engines):
        h.engines.pop(lane).disconnect(h.now)
        h.core.lane_lost(lane, h.now, "server restarting")
    h.pump()
    early = synthesize("hello world. <pause:900>" + " <pause:1000>" * 40)  # ~44 s
    h.push(early.samples)
    late = synthesize("thank you everyone.")
    h.push(late.samples)
    assert h.failed is None
    h.refuse_connects = False
    h.advance(12.0)  # the next attempt (backoff capped at 10 s) finds the server back
    h.end()
    assert h.failed is None
    assert words(h.text) == words(late.text)  # the early utterance left the 20 s history
    assert h.core.stats.dropped_audio_s > 0.5
    assert h.core.stats.reconnects >= 5


def test_catch_up_drops_a_persistent_backlog_and_stays_live() -> None:
    h = harness(max_lag_s=1.0, lag_grace_s=1.0, lag_policy=LagPolicy.CATCH_UP)
    h.step_budget = 0  # the server falls behind entirely
    speech = synthesize(
        "hello world the meeting starts now we can hear the quick brown fox <pause:400> "
        "jumps over the lazy dog good morning everyone let us begin",
    )
    h.push(speech.samples[: speech.samples.size // 2])
    h.step_budget = None
    h.push(speech.samples[speech.samples.size // 2 :])
    h.advance(1.0)
    h.end()
    assert h.core.stats.dropped_audio_s > 0.5
    assert words(h.text)[-3:] == words(speech.text)[-3:]  # live again at the end


def test_catch_up_on_old_vllm_finishes_instead_of_closing() -> None:
    """< 0.32: closing mid-generation can orphan the engine request (§2.4)."""
    h = harness(max_lag_s=1.0, lag_grace_s=1.0, abort_on_close=False)
    h.step_budget = 0
    speech = synthesize(
        "hello world the meeting starts now we can hear the quick brown fox <pause:400> "
        "jumps over the lazy dog good morning everyone let us begin",
    )
    h.push(speech.samples[: speech.samples.size // 2])
    lagging = next(lane for lane, e in h.engines.items() if e.generation and e.generation.running)
    h.step_budget = None
    h.push(speech.samples[speech.samples.size // 2 :])
    h.advance(1.0)
    h.end()
    assert h.core.stats.dropped_audio_s > 0.5
    gens = [g for e in h.all_engines for g in e.generations]
    assert all(g.finished_reason != "disconnect" for g in gens)
    assert lagging in h.engines or h.core.finished


def test_wait_policy_keeps_everything() -> None:
    h = harness(max_lag_s=1.0, lag_grace_s=1.0, lag_policy=LagPolicy.WAIT)
    h.step_budget = 0
    speech = synthesize("hello world the meeting starts now we can hear the quick brown fox")
    h.push(speech.samples[: speech.samples.size // 2])
    h.step_budget = None
    h.push(speech.samples[speech.samples.size // 2 :])
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
    assert h.core.stats.dropped_audio_s == 0
    assert h.core.stats.peak_lag_s >= 1.0


def test_audio_pushed_to_next_step_sample_completes_a_step_at_once() -> None:
    """Issue 13: the glue hands audio over at ``next_step_sample``; each such push lets vLLM
    run exactly one more step (the first needs delay + 80 ms + 2.5 ms), with no audio held
    back in the core or the connection."""
    h = harness()
    speech = synthesize("hello world. thank you everyone.", lead_ms=400, tail_ms=700)
    samples = speech.samples
    assert h.core.next_step_sample is None  # nothing live yet
    pos = 0
    steps_seen: list[int] = []
    while pos < samples.size:
        target = h.core.next_step_sample
        end = min(samples.size, pos + CHUNK if target is None or target <= pos else target)
        SpeechStream._push_endpointed(h.core, h.endpointer, samples[pos:end], h.now)
        h.now += (end - pos) / SAMPLE_RATE
        h.pump()
        pos = end
        live = h.core._live
        if target is not None and live is not None and end == target:
            gen = next(e for e in h.engines.values() if e.generation is not None).generation
            assert gen is not None
            # every sample pushed reached the engine, and the step it completes has run
            assert live.start + gen.audio_samples == end
            assert gen.steps == (gen.audio_samples - 9000) // CHUNK + 1
            steps_seen.append(gen.steps)
    assert steps_seen and steps_seen == sorted(steps_seen)
    h.advance(1.0)
    h.end()
    assert words(h.text) == words(speech.text)
