"""Unit tests of ``endpointer.py``: the energy endpointer on the 16 kHz sample clock.

Signals: the emulator's synthetic speech (``testing/speech.py``: tone bursts at -12 dBFS peak,
60 ms word gaps, optional white noise) and speech-like amplitude-modulated noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_plugins_voxtral_vllm.endpointer import (
    Endpointer,
    EndpointerEvent,
    EndpointerOptions,
    SpeechEnded,
    SpeechResumed,
    SpeechStarted,
)
from livekit_plugins_voxtral_vllm.testing.speech import synthesize

Int16Array = npt.NDArray[np.int16]
Event = EndpointerEvent
RATE = 16000
TOLERANCE = 480  # ±30 ms
SENTENCE = "hello world. the quick brown fox jumps over the lazy dog"


def ms(n: float) -> int:
    return round(n * RATE / 1000)


def noise(duration_ms: float, dbfs: float, seed: int = 0) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 10 ** (dbfs / 20), ms(duration_ms))


def sine(duration_ms: float, rms_dbfs: float, hz: float = 700.0) -> npt.NDArray[np.float64]:
    t = np.arange(ms(duration_ms)) / RATE
    out: npt.NDArray[np.float64] = np.sin(2 * np.pi * hz * t) * (2**0.5 * 10 ** (rms_dbfs / 20))
    return out


def pcm(x: npt.NDArray[np.float64]) -> Int16Array:
    out: Int16Array = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    return out


def syllables(
    duration_ms: float, peak_dbfs: float, rate_hz: float = 4.0, seed: int = 1
) -> npt.NDArray[np.float64]:
    """Speech-like: white noise under a syllable envelope (sin², full dips between syllables)."""
    n = ms(duration_ms)
    t = np.arange(n) / RATE
    envelope: npt.NDArray[np.float64] = np.sin(np.pi * rate_hz * t) ** 2
    return np.random.default_rng(seed).normal(0.0, 10 ** (peak_dbfs / 20), n) * envelope


def run(x: Int16Array, chunk: int = 1280, ep: Endpointer | None = None) -> list[Event]:
    ep = ep if ep is not None else Endpointer()
    events: list[Event] = []
    for i in range(0, len(x), chunk):
        events.extend(ep.push(x[i : i + chunk]))
    return events


def pairs(events: list[Event]) -> list[tuple[int, int]]:
    """(start, end) of each utterance, checking that starts and ends alternate and that word
    onsets (``SpeechResumed``) only come inside an utterance, in order."""
    inside = False
    last = -1
    for e in events:
        position = e.end_sample if isinstance(e, SpeechEnded) else e.start_sample
        assert position > last, events
        last = position
        if isinstance(e, SpeechResumed):
            assert inside, events
        else:
            assert inside == isinstance(e, SpeechEnded), events
            inside = not inside
    assert not inside, events
    starts = [e.start_sample for e in events if isinstance(e, SpeechStarted)]
    ends = [e.end_sample for e in events if isinstance(e, SpeechEnded)]
    return list(zip(starts, ends, strict=True))


def resumed(events: list[Event]) -> list[int]:
    return [e.start_sample for e in events if isinstance(e, SpeechResumed)]


def close(actual: tuple[int, int], expected: tuple[float, float]) -> bool:
    return all(abs(a - e) <= TOLERANCE for a, e in zip(actual, expected, strict=True))


class TestSilence:
    """No speech, no events; the floor is the noise."""

    def test_digital_silence(self) -> None:
        ep = Endpointer()
        assert run(np.zeros(ms(5000), np.int16), ep=ep) == []
        assert ep.noise_floor_dbfs == pytest.approx(-120, abs=0.1)
        assert not ep.speaking
        assert ep.samples_seen == ms(5000)

    @pytest.mark.parametrize("dbfs", [-70.0, -50.0])
    def test_steady_noise(self, dbfs: float) -> None:
        ep = Endpointer()
        assert run(pcm(noise(5000, dbfs)), ep=ep) == []
        assert ep.noise_floor_dbfs == pytest.approx(dbfs, abs=2.5)

    def test_loud_steady_noise_gives_at_most_one_short_false_start(self) -> None:
        """Noise far above initial_floor_dbfs looks like speech until a window is heard."""
        ep = Endpointer()
        events = run(pcm(noise(6000, -35.0)), ep=ep)
        assert len(events) <= 2
        if events:
            [(start, end)] = pairs(events)
            assert start == 0 and end <= ms(1500)
        assert ep.noise_floor_dbfs == pytest.approx(-35.0, abs=2.5)
        assert not ep.speaking

    def test_floor_is_nan_before_a_frame(self) -> None:
        ep = Endpointer()
        ep.push(np.zeros(100, np.int16))
        assert np.isnan(ep.noise_floor_dbfs)


class TestOneUtterance:
    """One sentence → exactly one start/end pair within ±30 ms; 60 ms word gaps never split."""

    @pytest.mark.parametrize("noise_dbfs", [None, -50.0])
    @pytest.mark.parametrize("chunk", [160, 1280, 333, 10**7])
    def test_synthetic_sentence(self, noise_dbfs: float | None, chunk: int) -> None:
        s = synthesize(SENTENCE, lead_ms=1000, tail_ms=1500, noise_dbfs=noise_dbfs)
        events = run(s.samples, chunk)
        assert len(s.words) == 12  # eleven 60 ms gaps inside
        [pair] = pairs(events)
        assert close(pair, (s.words[0].start_s * RATE, s.words[-1].end_s * RATE))

    @pytest.mark.parametrize("frame_ms", [10, 20])
    def test_frame_sizes(self, frame_ms: int) -> None:
        s = synthesize(SENTENCE, lead_ms=1000, tail_ms=1500, noise_dbfs=-50)
        events = run(s.samples, ep=Endpointer(EndpointerOptions(frame_ms=frame_ms)))
        [pair] = pairs(events)
        assert close(pair, (s.words[0].start_s * RATE, s.words[-1].end_s * RATE))

    def test_start_is_confirmed_after_min_speech_and_end_after_min_silence(self) -> None:
        s = synthesize("hello world", lead_ms=1000, tail_ms=1500)
        ep = Endpointer()
        when: list[tuple[int, Event]] = []
        for i in range(0, len(s.samples), 160):
            when.extend((ep.samples_seen, e) for e in ep.push(s.samples[i : i + 160]))
        (t_start, start), (t_resumed, resume), (t_end, end) = when
        assert isinstance(start, SpeechStarted) and isinstance(end, SpeechEnded)
        assert isinstance(resume, SpeechResumed)
        assert t_resumed - resume.start_sample == ms(10)  # one frame: reported at once
        assert t_start - start.start_sample == ms(120)
        assert t_end - end.end_sample == ms(600)

    def test_pauses_shorter_than_min_silence_do_not_split(self) -> None:
        s = synthesize("hello <pause:400> world <pause:480> okay", lead_ms=1000, tail_ms=1000)
        assert len(pairs(run(s.samples))) == 1

    def test_min_silence_splits(self) -> None:
        s = synthesize("hello world. <pause:700> thank you", lead_ms=1000, tail_ms=1000)
        got = pairs(run(s.samples))
        w = s.words
        assert len(got) == 2
        assert close(got[0], (w[0].start_s * RATE, w[2].end_s * RATE))
        assert close(got[1], (w[3].start_s * RATE, w[4].end_s * RATE))

    @settings(max_examples=50, deadline=None)
    @given(sizes=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=40))
    def test_chunking_does_not_change_decisions(self, sizes: list[int]) -> None:
        s = synthesize("hello world. <pause:700> thank you", lead_ms=500, tail_ms=800)
        x = s.samples
        reference = run(x, 10**7)
        ep = Endpointer()
        events: list[Event] = []
        pos = 0
        while pos < len(x):
            for n in sizes:
                events.extend(ep.push(x[pos : pos + n]))
                pos += n
        assert events == reference
        assert ep.samples_seen == len(x)

    def test_speech_like_noise_bursts(self) -> None:
        """Amplitude-modulated noise (4 syllables/s, full dips) over -55 dBFS noise."""
        lead, utterance, pause = 1000, 1500, 1000
        x = noise(lead + 2 * utterance + pause + 1500, -55.0)
        for k, start in enumerate((lead, lead + utterance + pause)):
            x[ms(start) : ms(start + utterance)] += syllables(utterance, -20.0, seed=k)
        got = pairs(run(pcm(x)))
        assert len(got) == 2
        for (s, e), start in zip(got, (lead, lead + utterance + pause), strict=True):
            # A sin² onset is soft: the first frame above the bar comes ~20 ms in.
            assert abs(s - ms(start)) <= ms(40)
            assert abs(e - ms(start + utterance)) <= ms(40)


class TestWordOnsets:
    """``SpeechResumed`` marks speech after >= resume_gap_ms of silence inside an utterance."""

    @pytest.mark.parametrize("noise_dbfs", [None, -50.0])
    def test_every_word_after_a_gap(self, noise_dbfs: float | None) -> None:
        s = synthesize(SENTENCE, lead_ms=1000, tail_ms=1500, noise_dbfs=noise_dbfs)
        events = run(s.samples)
        assert len(pairs(events)) == 1
        onsets = resumed(events)
        assert len(onsets) == len(s.words) - 1
        for onset, word in zip(onsets, s.words[1:], strict=True):
            assert abs(onset - word.start_s * RATE) <= ms(10)

    def test_gaps_shorter_than_resume_gap_are_not_onsets(self) -> None:
        s = synthesize("hello world okay", gap_ms=30, lead_ms=1000, tail_ms=1000)
        events = run(s.samples)
        assert len(pairs(events)) == 1
        assert resumed(events) == []

    def test_a_pause_inside_the_utterance(self) -> None:
        s = synthesize("hello <pause:400> world", gap_ms=30, lead_ms=1000, tail_ms=1000)
        events = run(s.samples)
        assert len(pairs(events)) == 1
        [onset] = resumed(events)
        assert abs(onset - s.words[1].start_s * RATE) <= ms(10)


class TestNoiseFloor:
    """The floor falls at once and rises after about noise_window_ms."""

    def test_quiet_speech_over_loud_noise(self) -> None:
        """Speech at -30 dBFS RMS over -45 dBFS noise is 15 dB up: detected."""
        x = noise(5000, -45.0)
        x[ms(2000) : ms(3000)] += sine(1000, -30.0)
        ep = Endpointer()
        *false_start, pair = pairs(run(pcm(x), ep=ep))
        assert close(pair, (ms(2000), ms(3000)))
        # noise above initial_floor_dbfs + threshold may open one short utterance at the start
        assert all(s == 0 and e <= ms(1500) for s, e in false_start)
        assert ep.noise_floor_dbfs == pytest.approx(-45, abs=2.5)

    def test_level_step_is_absorbed(self) -> None:
        """-65 → -40 dBFS noise: at most one false utterance, then nothing once adapted."""
        x = np.concatenate([noise(3000, -65.0, seed=1), noise(10000, -40.0, seed=2)])
        ep = Endpointer()
        events = run(pcm(x), ep=ep)
        assert len(pairs(events)) <= 1
        window = ep.options.noise_window_ms * 5 / 4  # the window spans 4 to 5 blocks
        adapted = ms(3000 + window + ep.options.min_silence_ms + 100)
        assert all(getattr(e, "end_sample", 0) < adapted for e in events)
        assert not ep.speaking
        assert ep.noise_floor_dbfs == pytest.approx(-40, abs=2.5)
        # Adapted: speech over the new floor is found again.
        y = noise(3000, -40.0, seed=3)
        y[ms(1000) : ms(2000)] += sine(1000, -20.0)
        [pair] = pairs(run(pcm(y), ep=ep))
        assert close(pair, (len(x) + ms(1000), len(x) + ms(2000)))

    def test_slow_rise_never_triggers(self) -> None:
        """Noise rising 2.5 dB/s stays under the bar: the floor keeps up."""
        n = ms(10000)
        gain = 10 ** (np.linspace(-65.0, -40.0, n) / 20)
        x = np.random.default_rng(4).normal(0.0, 1.0, n) * gain
        assert run(pcm(x)) == []

    def test_floor_falls_at_once(self) -> None:
        x = np.concatenate([noise(3000, -40.0), noise(100, -70.0, seed=5)])
        ep = Endpointer()
        run(pcm(x), ep=ep)
        assert ep.noise_floor_dbfs < -65

    def test_min_level_applies_in_digital_silence(self) -> None:
        """Over a -120 dBFS floor, -60 dBFS is 60 dB up but still below min_level_dbfs."""
        x = np.zeros(ms(4000))
        x[ms(1000) : ms(2000)] = sine(1000, -60.0)
        x[ms(2500) : ms(3000)] = sine(500, -50.0)
        assert pairs(run(pcm(x))) == [(ms(2500), ms(3000))]

    def test_speech_at_the_very_start_is_found_at_once(self) -> None:
        """Until a window is heard the floor is initial_floor_dbfs, not the first frame."""
        s = synthesize(SENTENCE, lead_ms=0, tail_ms=1500)
        [pair] = pairs(run(s.samples))
        assert close(pair, (s.words[0].start_s * RATE, s.words[-1].end_s * RATE))


class TestMinSpeech:
    """Short sounds are never speech."""

    @pytest.mark.parametrize("click_ms", [10, 50, 100])
    def test_short_bursts_are_ignored(self, click_ms: int) -> None:
        x = noise(3000, -60.0)
        x[ms(1000) : ms(1000 + click_ms)] += sine(click_ms, -15.0)
        assert run(pcm(x)) == []

    def test_a_burst_of_min_speech_counts(self) -> None:
        x = noise(3000, -60.0)
        x[ms(1000) : ms(1150)] += sine(150, -15.0)
        assert close(pairs(run(pcm(x)))[0], (ms(1000), ms(1150)))

    def test_clicks_in_a_row_do_not_add_up(self) -> None:
        """50 ms clicks 60 ms apart: every gap exceeds max_onset_gap_ms, the count restarts."""
        x = noise(4000, -60.0)
        for k in range(10):
            start = 1000 + 110 * k
            x[ms(start) : ms(start + 50)] += sine(50, -15.0)
        assert run(pcm(x)) == []

    def test_dips_within_an_onset_are_bridged(self) -> None:
        x = noise(3000, -60.0)
        for start in (1000, 1080):  # 60 ms, a 20 ms dip, 60 ms
            x[ms(start) : ms(start + 60)] += sine(60, -15.0)
        assert close(pairs(run(pcm(x)))[0], (ms(1000), ms(1140)))


class TestLifecycle:
    """flush() closes an open utterance; reset() forgets everything."""

    def test_flush_while_speaking(self) -> None:
        s = synthesize("hello world", lead_ms=1000, tail_ms=0)
        ep = Endpointer()
        events = run(s.samples, ep=ep)
        assert ep.speaking and isinstance(events[0], SpeechStarted)
        [end] = ep.flush()
        assert isinstance(end, SpeechEnded)
        assert abs(end.end_sample - s.words[-1].end_s * RATE) <= TOLERANCE
        assert not ep.speaking
        assert ep.flush() == []

    def test_flush_drops_an_onset(self) -> None:
        ep = Endpointer()
        x = np.concatenate([np.zeros(ms(1000)), sine(100, -15.0), sine(100, -15.0)])
        run(pcm(x[: ms(1100)]), ep=ep)
        assert ep.flush() == []
        assert run(pcm(x[ms(1100) :]), ep=ep) == []  # only 100 ms after the flush

    def test_reset(self) -> None:
        ep = Endpointer()
        run(synthesize("hello", lead_ms=500, tail_ms=0).samples, ep=ep)
        assert ep.speaking
        ep.reset()
        assert (ep.speaking, ep.samples_seen) == (False, 0)
        assert np.isnan(ep.noise_floor_dbfs)
        s = synthesize("hello", lead_ms=500, tail_ms=1000)
        [(start, _)] = pairs(run(s.samples, ep=ep))
        assert abs(start - ms(500)) <= TOLERANCE

    def test_bad_dtype(self) -> None:
        with pytest.raises(TypeError, match="int16"):
            Endpointer().push(np.zeros(160, np.float32))

    def test_tiny_pushes(self) -> None:
        """Pushes shorter than a frame are gathered; decisions match one big push."""
        s = synthesize("hello world", lead_ms=1000, tail_ms=1000)
        assert run(s.samples, 7) == run(s.samples, 10**7)

    def test_empty_push(self) -> None:
        ep = Endpointer()
        assert ep.push(np.zeros(0, np.int16)) == []
        assert ep.samples_seen == 0


class TestOptions:
    """Bad options fail at construction, naming the field and the value."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("frame_ms", 0),
            ("frame_ms", 250),
            ("min_speech_ms", -1),
            ("min_silence_ms", 5),
            ("threshold_db", 0.0),
            ("threshold_db", -3.0),
            ("min_level_dbfs", 3.0),
            ("min_level_dbfs", -130.0),
            ("hysteresis_db", -1.0),
            ("hysteresis_db", 9.0),
            ("noise_window_ms", 20),
            ("max_onset_gap_ms", -10),
            ("resume_gap_ms", 5),
            ("resume_gap_ms", 600),
        ],
    )
    def test_invalid(self, field: str, value: float) -> None:
        with pytest.raises(ValueError, match=rf"EndpointerOptions\.{field} .*got {value!r}"):
            EndpointerOptions(**{field: value})  # type: ignore[arg-type]

    def test_defaults_are_valid_and_frozen(self) -> None:
        opts = EndpointerOptions()
        assert (opts.min_speech_ms, opts.min_silence_ms, opts.threshold_db) == (120, 600, 9.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            opts.min_speech_ms = 1  # type: ignore[misc]
        assert Endpointer().options == opts

    def test_zero_min_speech_starts_on_the_first_frame(self) -> None:
        x = np.concatenate([noise(1000, -60.0), sine(30, -15.0), noise(1000, -60.0)])
        ep = Endpointer(EndpointerOptions(min_speech_ms=0, min_silence_ms=100))
        assert close(pairs(run(pcm(x), ep=ep))[0], (ms(1000), ms(1030)))
