"""Unit tests of ``resampling.py``: the low-latency FIR resampler to 16 kHz."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_plugins_voxtral_vllm.resampling import FirResampler, supports

Int16Array = npt.NDArray[np.int16]
RATES = [48000, 24000, 32000, 96000, 8000, 12000]


def tone(freq: float, seconds: float, rate: int, amplitude: float = 10000.0) -> Int16Array:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def run(x: Int16Array, rate: int, frame: int) -> Int16Array:
    r = FirResampler(rate)
    out = [r.push(x[i : i + frame], r.samples_out + 1) for i in range(0, len(x), frame)]
    out.append(r.flush())
    return np.concatenate(out)


def level_db(y: npt.NDArray[np.float64], amplitude: float) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(y**2)) / (amplitude / np.sqrt(2)) + 1e-12))


def test_supported_rates() -> None:
    assert all(supports(r) for r in RATES)
    assert not supports(16000)
    assert not supports(44100) and not supports(22050) and not supports(0)
    with pytest.raises(ValueError, match="got 44100"):
        FirResampler(44100)


@pytest.mark.parametrize("rate", RATES)
def test_in_phase_with_the_input_clock(rate: int) -> None:
    """Output sample n is input time n / 16000 s: the filter's delay is compensated."""
    y = run(tone(1000, 1.0, rate), rate, rate // 100)
    assert abs(len(y) - 16000) <= 1
    ref = 10000 * np.sin(2 * np.pi * 1000 * np.arange(len(y)) / 16000)
    assert np.abs(y[400:-400] - ref[400:-400]).max() <= 2.0


@pytest.mark.parametrize("rate", [48000, 24000, 32000, 96000])
def test_passband_and_stopband(rate: int) -> None:
    for freq in (300, 3000, 5944, 6800):
        y = run(tone(freq, 0.5, rate), rate, 10**9).astype(np.float64)[800:-800]
        assert abs(level_db(y, 10000)) < 0.1, freq
    for freq in (8400, 9000, 11000):
        if freq < rate / 2:
            y = run(tone(freq, 0.5, rate), rate, 10**9).astype(np.float64)[800:-800]
            assert level_db(y, 10000) < -65, freq


@pytest.mark.parametrize("rate", [48000, 24000])
def test_latency_is_the_filter_delay_only(rate: int) -> None:
    """After every push, all the output up to 1.4 ms before the input's end is out."""
    r = FirResampler(rate)
    x = tone(440, 0.5, rate)
    size = rate // 100
    for i in range(0, len(x), size):
        r.push(x[i : i + size], r.samples_out + 1)
        assert (i + size) / rate - r.samples_out / 16000 < 0.0014


def test_nothing_is_computed_before_the_requested_output_is_possible() -> None:
    r = FirResampler(48000)
    x = tone(440, 0.2, 48000)
    need = r.needs_input(1280)
    assert len(r.push(x[: need - 1], 1280)) == 0
    assert r.samples_out == 0
    out = r.push(x[need - 1 : need], 1280)
    assert len(out) >= 1280
    assert r.samples_out == len(out)


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([48000, 24000, 32000]),
    cuts=st.lists(st.integers(1, 4000), min_size=1, max_size=12),
)
def test_output_does_not_depend_on_how_input_is_split(rate: int, cuts: list[int]) -> None:
    x = tone(700, 0.25, rate)
    whole = run(x, rate, 10**9)
    r = FirResampler(rate)
    out: list[Int16Array] = []
    pos = 0
    for c in cuts:
        out.append(r.push(x[pos : pos + c], r.samples_out + 7))
        pos += c
    out.append(r.push(x[pos:], r.samples_out + 1))
    out.append(r.flush())
    np.testing.assert_array_equal(np.concatenate(out), whole)


def test_flush_then_more_input_starts_a_new_stretch() -> None:
    r = FirResampler(48000)
    x = tone(1000, 0.1, 48000)
    a = np.concatenate([r.push(x, 1), r.flush()])
    assert len(a) == 1600 and r.samples_out == 1600 and r.samples_in == 4800
    b = np.concatenate([r.push(x, r.samples_out + 1), r.flush()])
    np.testing.assert_array_equal(a, b)
    assert r.samples_out == 3200
