"""The synthetic speech format and its streaming decoder (``testing/speech.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import rtc

from livekit_plugins_voxtral_vllm.testing.lexicon import lexicon
from livekit_plugins_voxtral_vllm.testing.speech import (
    MARKERS,
    VOCABULARY,
    SynthesizedSpeech,
    ToneDecoder,
    WordTiming,
    burst_ms,
    concat,
    expected_text,
    synthesize,
)

Pcm = npt.NDArray[np.int16]

SCRIPT = (
    "hello everyone, welcome to the meeting. <pause:500> can you hear me? "
    "yes, we can hear you. the quick brown fox jumps over the lazy dog."
)
HOP = 160  # decoder hop at 16 kHz
CONFIRM = 320  # audio after a burst end within which the decoder must confirm it (20 ms)


def decode(samples: Pcm, chunk: int = 1280, *, mark_damage: bool = False) -> str:
    dec = ToneDecoder(mark_damage=mark_damage)
    for i in range(0, len(samples), chunk):
        dec.feed(samples[i : i + chunk])
    dec.feed(np.zeros(CONFIRM, np.int16))
    return "".join(dec.pop_tokens(dec.samples_fed))


def sample_at(speech: SynthesizedSpeech, t: float, rate: int = 16000) -> int:
    return round(t * rate)


def resample_soxr(samples: Pcm, rate: int) -> Pcm:
    resampler = rtc.AudioResampler(rate, 16000, quality=rtc.AudioResamplerQuality.HIGH)
    n = rate // 100
    out: list[Pcm] = []
    for i in range(0, len(samples), n):
        frame = np.zeros(n, np.int16)
        frame[: len(samples[i : i + n])] = samples[i : i + n]
        for f in resampler.push(rtc.AudioFrame(frame.tobytes(), rate, 1, n)):
            out.append(np.frombuffer(f.data, np.int16))
    for f in resampler.flush():
        out.append(np.frombuffer(f.data, np.int16))
    result: Pcm = np.concatenate(out)
    return result


def resample_linear(samples: Pcm, rate: int) -> Pcm:
    n = len(samples) * 16000 // rate
    y = np.interp(np.arange(n) * rate / 16000, np.arange(len(samples)), samples.astype(float))
    result: Pcm = np.round(y).astype(np.int16)
    return result


def assert_ends(dec: ToneDecoder, words: Sequence[WordTiming], tolerance: int) -> None:
    """Each token pops at its burst end, within ``tolerance`` samples, in order."""
    for w in words:
        end = round(w.end_s * 16000)
        assert dec.pop_tokens(end - tolerance - 1) == [], w
        assert dec.pop_tokens(end + tolerance) == [w.text], w


class TestVocabulary:
    def test_size_and_spelling(self) -> None:
        words = [t for t in VOCABULARY if t not in MARKERS]
        assert len(words) >= 60
        assert all(w == w.lower() and not w.isspace() for w in words)
        assert {"2026", "don't", "😀"} <= set(words)  # a number, an apostrophe, an emoji
        assert set(MARKERS) == {".", ",", "?"} <= set(VOCABULARY)

    def test_frequencies_survive_resampling(self) -> None:
        freqs = sorted(VOCABULARY.values())
        assert 400 <= freqs[0] and freqs[-1] <= 6000
        assert min(np.diff(freqs)) >= 80

    @pytest.mark.parametrize(
        ("token", "ms"), [("a", 150), ("dog", 210), ("meeting", 330), ("everyone", 360), (".", 90)]
    )
    def test_burst_ms(self, token: str, ms: int) -> None:
        assert burst_ms(token) == ms

    def test_burst_ms_belongs_to_the_slot(self) -> None:
        # "😀" took the slot of "tomorrow": same tone, same length, in every language
        assert burst_ms("😀") == 360
        assert burst_ms("公园", language="zh") == burst_ms(lexicon("en").words[12])


class TestSynthesize:
    def test_text_and_timings(self) -> None:
        s = synthesize("hello world. <pause:800> the meeting starts now", gap_ms=60, lead_ms=300)
        assert s.text == " hello world. the meeting starts now"
        assert s.text == expected_text("hello world. <pause:800> the meeting starts now")
        assert [w.text for w in s.words] == [
            " hello",
            " world",
            ".",
            " the",
            " meeting",
            " starts",
            " now",
        ]
        assert s.words[0].start_s == pytest.approx(0.300)
        for w in s.words:
            assert w.end_s - w.start_s == pytest.approx(burst_ms(w.text.strip()) / 1000)
        gaps = [b.start_s - a.end_s for a, b in zip(s.words, s.words[1:], strict=False)]
        assert gaps == pytest.approx([0.06, 0.06, 0.86, 0.06, 0.06, 0.06])
        assert s.duration_s == pytest.approx(s.words[-1].end_s + 0.300)
        assert len(s.samples) == round(s.duration_s * 16000)

    def test_samples(self) -> None:
        s = synthesize("hello")
        assert s.samples.dtype == np.int16 and s.samples.ndim == 1
        assert not s.samples.flags.writeable
        peak = np.abs(s.samples.astype(float)).max() / 32768
        assert 20 * np.log10(peak) == pytest.approx(-12.0, abs=0.1)
        assert not s.samples[: sample_at(s, s.words[0].start_s)].any()

    def test_sequence_input_matches_string(self) -> None:
        a = synthesize("hello, world? <pause:100> yes")
        b = synthesize(["hello", ",", "world", "?", "<pause:100>", "yes"])
        assert np.array_equal(a.samples, b.samples) and a.words == b.words

    def test_sample_rate(self) -> None:
        a, b = synthesize(SCRIPT), synthesize(SCRIPT, 48000)
        assert b.sample_rate == 48000 and len(b.samples) == 3 * len(a.samples)
        assert a.words == b.words

    def test_noise_is_seeded(self) -> None:
        a = synthesize("hello", noise_dbfs=-50, seed=1)
        assert np.array_equal(a.samples, synthesize("hello", noise_dbfs=-50, seed=1).samples)
        assert not np.array_equal(a.samples, synthesize("hello", noise_dbfs=-50, seed=2).samples)
        lead = a.samples[: sample_at(a, a.words[0].start_s)].astype(float) / 32768
        assert 10 * np.log10(np.mean(lead**2)) == pytest.approx(-50, abs=0.5)

    @pytest.mark.parametrize(
        ("script", "match"),
        [
            ("hello wrld", r"unknown en word 'wrld'.*'world'.*lexicon\('en'\)"),
            ("Hello world", r"unknown word 'Hello'.*lowercase"),
            ("hello!", r"unknown en word 'hello!'.*lexicon\('en'\)"),
            (["hello world"], r"unknown en word 'hello world'"),
            ("hello <pause:soon>", r"bad pause token"),
            ("hello <pause:10", r"cannot parse"),
        ],
    )
    def test_unknown_word(self, script: str | list[str], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            synthesize(script)
        with pytest.raises(ValueError, match=match):
            expected_text(script)

    def test_gap_too_short_for_the_decoder(self) -> None:
        with pytest.raises(ValueError, match="gap_ms"):
            synthesize("hello world", gap_ms=10)

    def test_frames(self) -> None:
        s = synthesize("hello", lead_ms=5, tail_ms=0)  # 275 ms = 13 frames of 20 ms + 240
        frames = s.frames(20)
        assert [len(f) for f in frames] == [320] * 14
        assert np.array_equal(np.concatenate(frames)[: len(s.samples)], s.samples)
        assert not frames[-1][240:].any()
        assert [len(f) for f in s.frames(20, pad=False)] == [320] * 13 + [240]
        with pytest.raises(ValueError, match="whole number"):
            synthesize("hello", 44100).frames(1)

    def test_concat(self) -> None:
        a, b = synthesize("hello world."), synthesize("yes")
        c = concat(a, b)
        assert c.text == " hello world. yes"
        assert c.words[-1].start_s == pytest.approx(a.duration_s + b.words[0].start_s)
        assert c.duration_s == pytest.approx(a.duration_s + b.duration_s)
        assert decode(c.samples) == c.text
        with pytest.raises(ValueError):
            concat(a, synthesize("yes", 24000))


class TestRoundTrip:
    """Synthesize, feed, pop: the decoder returns ``.text`` with each token at its burst end."""

    def test_random_chunks(self) -> None:
        s = synthesize(SCRIPT)
        rng = np.random.default_rng(7)
        dec = ToneDecoder()
        pos = 0
        while pos < len(s.samples):
            n = int(rng.integers(1, 3000))
            dec.feed(s.samples[pos : pos + n])
            pos += n
        assert dec.samples_fed == len(s.samples)
        assert_ends(dec, s.words, tolerance=0)  # defaults are whole hops: ends are exact
        assert dec.pop_tokens(dec.samples_fed) == []

    def test_unaligned_ends_within_10ms(self) -> None:
        s = synthesize(SCRIPT, lead_ms=303.7, gap_ms=61.3, noise_dbfs=-50)
        dec = ToneDecoder()
        dec.feed(s.samples)
        assert_ends(dec, s.words, tolerance=HOP)

    @pytest.mark.parametrize("lead_ms", [300, 303.7])
    def test_confirmed_within_20ms(self, lead_ms: float) -> None:
        s = synthesize(SCRIPT, lead_ms=lead_ms)
        dec = ToneDecoder()
        fed = 0
        for w in s.words:
            upto = round(w.end_s * 16000) + CONFIRM
            dec.feed(s.samples[fed:upto])
            fed = upto
            assert dec.pop_tokens(upto) == [w.text]

    def test_float_input(self) -> None:
        s = synthesize(SCRIPT, noise_dbfs=-50)
        dec = ToneDecoder()
        dec.feed(s.samples.astype(np.float32) / 32768)
        dec.feed(np.zeros(CONFIRM, np.float64))
        assert "".join(dec.pop_tokens(dec.samples_fed)) == s.text

    @pytest.mark.parametrize("rate", [48000, 24000])
    @pytest.mark.parametrize("resample", [resample_soxr, resample_linear])
    def test_resampled(self, rate: int, resample: Callable[[Pcm, int], Pcm]) -> None:
        s = synthesize(SCRIPT, rate, noise_dbfs=-50, lead_ms=307)
        dec = ToneDecoder()
        dec.feed(resample(s.samples, rate))
        dec.feed(np.zeros(CONFIRM, np.int16))
        assert_ends(dec, s.words, tolerance=HOP)

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(1, 2500), min_size=1, max_size=12))
    def test_chunking_invariance(self, sizes: list[int]) -> None:
        samples = _INVARIANCE.samples
        dec = ToneDecoder()
        pos, k = 0, 0
        while pos < len(samples):
            dec.feed(samples[pos : pos + sizes[k % len(sizes)]])
            pos += sizes[k % len(sizes)]
            k += 1
        assert _pop_trace(dec) == _INVARIANCE_TRACE


_INVARIANCE = synthesize(
    "yes, the fox . now <pause:100> welcome ?", lead_ms=11, gap_ms=33.3, noise_dbfs=-50
)


def _pop_trace(dec: ToneDecoder) -> list[list[str]]:
    return [dec.pop_tokens(b) for b in range(0, dec.samples_fed + HOP, HOP)]


def _reference_trace() -> list[list[str]]:
    dec = ToneDecoder()
    dec.feed(_INVARIANCE.samples)
    return _pop_trace(dec)


_INVARIANCE_TRACE = _reference_trace()
assert "".join(sum(_INVARIANCE_TRACE, [])) == _INVARIANCE.text


class TestLostAudio:
    """Damage the engine or transport could do shows up in the transcript."""

    s = synthesize("the meeting starts now", noise_dbfs=-50)
    start = sample_at(s, s.words[1].start_s)
    end = sample_at(s, s.words[1].end_s)
    mid = (start + end) // 2

    def test_cut_inside_a_word(self) -> None:
        x = np.delete(self.s.samples, np.s_[self.mid - 480 : self.mid + 480])
        assert decode(x) == " the starts now"  # the model cannot make out the word
        assert decode(x, mark_damage=True) == " the <partial:meeting> starts now"

    def test_small_cut_is_tolerated(self) -> None:
        x = np.delete(self.s.samples, np.s_[self.mid - 160 : self.mid + 160])
        assert decode(x) == self.s.text

    def test_word_removed(self) -> None:
        assert decode(np.delete(self.s.samples, np.s_[self.start : self.end])) == " the starts now"

    def test_word_duplicated(self) -> None:
        burst = self.s.samples[self.start : self.end]
        assert decode(np.insert(self.s.samples, self.end, burst)) == " the starts now"
        assert decode(np.insert(self.s.samples, self.end, burst), mark_damage=True) == (
            " the <long:meeting> starts now"
        )
        with_gap = self.s.samples[self.start : sample_at(self.s, self.s.words[2].start_s)]
        assert decode(np.insert(self.s.samples, self.start, with_gap)) == (
            " the meeting meeting starts now"
        )

    def test_gap_lost_between_words(self) -> None:
        gap = np.s_[self.end : sample_at(self.s, self.s.words[2].start_s)]
        assert decode(np.delete(self.s.samples, gap)) == self.s.text


class TestDecoder:
    def test_pop_tokens_only_returns_ended_bursts(self) -> None:
        s = synthesize("hello world")
        dec = ToneDecoder()
        dec.feed(s.samples)
        end0, end1 = (sample_at(s, w.end_s) for w in s.words)
        assert dec.pop_tokens(0) == []
        assert dec.pop_tokens(end0 - 1) == []
        assert dec.pop_tokens(end1 - 1) == [" hello"]
        assert dec.pop_tokens(end1 - 1) == []
        assert dec.pop_tokens(end1) == [" world"]
        assert dec.pop_tokens(10**9) == []

    def test_unconfirmed_burst_is_held(self) -> None:
        s = synthesize("hello", tail_ms=0)
        dec = ToneDecoder()
        dec.feed(s.samples)
        assert dec.pop_tokens(10**9) == []
        dec.feed(np.zeros(HOP, np.int16))
        assert dec.pop_tokens(10**9) == [" hello"]

    def test_unknown_frequency(self) -> None:
        hz = VOCABULARY["fox"] + 44  # halfway to the next grid slot
        assert decode(_tone(hz, 0.3)) == ""
        assert decode(_tone(hz, 0.3), mark_damage=True) == ""

    def test_endless_tone(self) -> None:
        assert decode(_tone(VOCABULARY["fox"], 5.0)) == ""
        assert decode(_tone(VOCABULARY["fox"], 5.0), mark_damage=True) == " <long:fox>"

    def test_harmonic_sound_at_a_slot_frequency_is_not_a_word(self) -> None:
        # a voiced sound: fundamental on a slot, the right length, but with harmonics
        t = np.arange(round(burst_ms("fox") / 1000 * 16000)) / 16000
        f0 = VOCABULARY["fox"]
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3) if k * f0 < 7800)
        pcm = np.round(6000 * np.asarray(x)).astype(np.int16)
        silence = np.zeros(4800, np.int16)
        assert decode(np.concatenate((silence, pcm, silence))) == ""

    def test_clicks_and_noise_are_ignored(self) -> None:
        x = np.zeros(16000, np.int16)
        x[8000:8200] = 20000
        rng = np.random.default_rng(0)
        x += (rng.normal(0, 10 ** (-40 / 20), x.size) * 32768).astype(np.int16)
        assert decode(x) == ""

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError):
            ToneDecoder(16050)
        with pytest.raises(TypeError):
            ToneDecoder().feed(np.zeros(10, np.int32))


def _tone(hz: float, seconds: float) -> Pcm:
    t = np.arange(round(seconds * 16000)) / 16000
    return np.round(8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
