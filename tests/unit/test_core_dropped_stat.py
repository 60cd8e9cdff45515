"""``stats.dropped_audio_s`` counts each sample of audio never transcribed once, and is never
negative (a helper once saw -3.56 s after audio was pushed in a burst faster than real time).

The path that made it negative: an utterance has ended and waits for its output when its
audio is pushed out of the history (a burst, or an outage), then its generation is lost. The
replay was clamped to start at the history's start, past the utterance's end, and the
generation over that reversed range was then counted as lost: ``end - start`` < 0. The
utterance's own untranscribed audio was not counted at all.
"""

from __future__ import annotations

import numpy as np
import pytest

from livekit_plugins_voxtral_vllm.dropped import DroppedAudio
from livekit_plugins_voxtral_vllm.testing import synthesize

from .test_stream_core import harness, words

RATE = 16000


@pytest.mark.parametrize("steps_out", [0, 25])
def test_a_generation_lost_after_its_audio_left_the_history_counts_it_once(
    steps_out: int,
) -> None:
    """The server answers ``steps_out`` steps (interims, no final) of an utterance that has
    ended, then hangs; 8 s of audio arrive in a burst past the 5 s history, then the lane
    drops. Nothing of the utterance is left to replay: all of it is counted as dropped, once,
    and the next utterance is transcribed."""
    h = harness(history_s=5.0)
    h.step_budget = 0  # the server is busy: no output while the utterance arrives
    first = synthesize("hello world the meeting starts now. <pause:900>")
    h.push(first.samples, dt=0.001)
    assert h.core._live is None and len(h.core._order) == 1  # ended, waiting for output
    gen = h.core._order[0]
    assert gen.lane is not None and gen.end is not None
    h.frozen.add(gen.lane)
    h.step_budget = None
    h.engines[gen.lane].run_steps(steps_out, h.now)  # its first words come out
    h.pump()
    assert h.core._segmenter.has_open_generation == (steps_out > 0)
    # a burst: 8 s of silence in 0.1 s of wall time, past the 5 s history
    h.push(np.zeros(8 * RATE, dtype=np.int16), dt=0.001)
    assert gen.end <= h.core._history.start
    for lane in list(h.engines):
        h.engines.pop(lane).disconnect(h.now)
        h.core.lane_lost(lane, h.now, "dropped")
    h.pump()
    late = synthesize("thank you everyone.")
    h.push(late.samples)
    h.advance(1.0)
    h.end()
    h.advance(5.0)
    assert h.core.finished
    dropped = h.core.stats.dropped_audio_s
    assert dropped == pytest.approx((gen.end - gen.start) / RATE, abs=1e-9)
    assert words(h.text) == words(late.text)


def test_dropped_audio_counts_a_range_once_and_a_reversed_range_not_at_all() -> None:
    d = DroppedAudio()
    assert d.add(100, 50) == 0 and d.add(10, 10) == 0
    assert d.add(0, 100) == 100
    assert d.add(50, 150) == 50  # only what was not counted
    assert d.add(200, 300) == 100
    assert d.add(0, 400) == 150  # the gaps 150-200 and 300-400
    assert d.total == 400 and d.ranges == [(0, 400)]
