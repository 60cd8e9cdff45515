"""A LiveKit VAD that lags the audio pushed: its ``END_OF_SPEECH`` comes after more audio went
to the core. The utterance's generation must end where the VAD decided (as the built-in
endpointer's ``decided_sample``), not at all the audio pushed so far: the audio after it is
the next utterance's, and every word comes once, in its own utterance."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from livekit_plugins_voxtral_vllm.protocol import SAMPLE_RATE
from livekit_plugins_voxtral_vllm.testing import synthesize

from .test_stream_core import CHUNK, Harness, harness

FIRST = "hello world."
SECOND = "the meeting starts now."
PAUSE_MS = 700  # between the turns: a little longer than the VAD's silence
SILENCE_S = 0.55  # the VAD's min_silence (Silero's default)
SPEECH_S = 0.05  # speech before the VAD's START


@dataclass
class Turns:
    h: Harness
    first_decided_s: float  # where the VAD's END for the first turn lies
    captions: list[str]
    second_start_s: float  # the second turn's caption's start


def _run(lag_s: float, abort_on_close: bool = True, noise_dbfs: float | None = None) -> Turns:
    """Both turns pushed in 80 ms chunks; each VAD event reaches the core once ``lag_s`` more
    audio was pushed (as the glue's _vad_loop: speech_judged, then the event)."""
    h = harness(abort_on_close=abort_on_close)
    speech = synthesize(f"{FIRST} <pause:{PAUSE_MS}> {SECOND}", tail_ms=1500, noise_dbfs=noise_dbfs)
    split_s = next(w.end_s for w in speech.words if w.text == ".")
    events: list[tuple[int, str, int]] = []  # (where decided, kind, where speech starts/ends)
    for turn in (
        [w for w in speech.words if w.start_s < split_s],
        [w for w in speech.words if w.start_s > split_s],
    ):
        start, end = turn[0].start_s, turn[-1].end_s
        events.append(
            (round((start + SPEECH_S) * SAMPLE_RATE), "start", round(start * SAMPLE_RATE))
        )
        events.append((round((end + SILENCE_S) * SAMPLE_RATE), "end", round(end * SAMPLE_RATE)))
    first_decided_s = events[1][0] / SAMPLE_RATE
    core = h.core

    def judge(until: int) -> None:
        while events and events[0][0] <= until:
            at, kind, pos = events.pop(0)
            core.speech_judged(at)
            if kind == "start":
                core.speech_started(pos, h.now)
            else:
                core.speech_ended(pos, h.now, decided_sample=at)
            h.pump()

    lag = round(lag_s * SAMPLE_RATE)
    for i in range(0, speech.samples.size, CHUNK):
        chunk = speech.samples[i : i + CHUNK]
        h.now += chunk.size / SAMPLE_RATE
        core.push_audio(chunk, h.now)
        judge(core.samples_received - lag)
        core.handle_timer(h.now)
        h.pump()
    judge(core.samples_received)  # (the glue waits for the VAD at the end of the input)
    h.advance(1.0)
    h.end()
    h.advance(1.0)
    finals = [f.caption for f in h.finals()]
    start = finals[1].start_s if len(finals) > 1 else 0.0
    return Turns(h, first_decided_s, [f.text for f in finals], start)


@pytest.mark.parametrize("abort_on_close", [True, False], ids=["vllm>=0.32", "older"])
@pytest.mark.parametrize("lag_s", [0.0, 0.3, 0.6, 1.0, 1.6])
def test_a_lagging_vad_ends_the_utterance_where_it_decided(
    lag_s: float, abort_on_close: bool
) -> None:
    """From 0.3 s of lag, the second turn's first sounds were pushed before the VAD's END for
    the first reached the core: they are the second turn's, once, in its own caption. Before,
    the first generation took all the audio pushed: its end inside a word lost the word ("the"
    at 0.3 s, "meeting" at 0.6 s, "starts" at 1.0 s), and at 1.6 s the second turn came out of
    the first generation, its caption timed 0.8 s early. The generation that heard too much
    is stopped: its socket closed (vLLM >= 0.32), or finished with its output ignored."""
    run = _run(lag_s, abort_on_close)
    assert run.captions == [FIRST, SECOND]
    assert run.second_start_s >= run.first_decided_s  # its own generation timed it
    assert run.h.core.stats.dropped_audio_s == 0
    gens = [g for e in run.h.all_engines for g in e.generations]
    aborted = sum(not g.final_received for g in gens)
    assert aborted == (1 if abort_on_close and lag_s >= 0.3 else 0)


def test_a_vad_lagging_over_a_gap_costs_no_replay() -> None:
    """Audio sent past the VAD's decision that is only silence does no harm: the generation
    ends with it and nothing is transcribed twice (live, a VAD always lags a little)."""
    run = _run(0.1)
    assert run.captions == [FIRST, SECOND]
    assert len([g for e in run.h.all_engines for g in e.generations]) == 2


def test_noise_past_the_vad_decision_costs_no_replay() -> None:
    """In a noisy room (noise 15 dB under the speech), audio sent past the VAD's decision is
    as loud as the silence the VAD judged before it: a gap, not the next turn."""
    run = _run(0.1, noise_dbfs=-30.0)
    assert len([g for e in run.h.all_engines for g in e.generations]) == 2
