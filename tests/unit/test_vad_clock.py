"""``vad_clock.VadClock``: a LiveKit VAD's ``samples_index`` on the 16 kHz clock, whatever
rate the VAD counts at."""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm.vad_clock import VadClock


def clock_after(seconds: float, rate: int = 48000) -> VadClock:
    c = VadClock()
    for _ in range(round(seconds * 100)):
        c.pushed(rate // 100, rate)
    return c


@pytest.mark.parametrize("count_rate", [16000, 48000])
def test_live_vad_counting_at_16k_or_its_input_rate(count_rate: int) -> None:
    # 48 kHz frames; the VAD keeps up (30 ms behind) and counts at count_rate
    c = VadClock()
    positions = []
    for k in range(1, 501):  # 5 s of 10 ms frames
        c.pushed(480, 48000)
        if k % 100 == 0:
            index = round((k / 100 - 0.03) * count_rate)
            positions.append(c.to_16k(index))
    assert c.rate == count_rate
    assert positions == [round((s - 0.03) * 16000) for s in (1, 2, 3, 4, 5)]


def test_audio_time_timestamps_name_the_rate_even_far_behind_a_burst() -> None:
    c = clock_after(10.0)  # a burst: 10 s pushed before the VAD reports anything
    assert c.to_16k(48000, timestamp=1.0) == 16000  # 48 kHz count, 1 s in
    assert c.rate == 48000
    c = clock_after(10.0)
    assert c.to_16k(8000, timestamp=1.0) == 16000  # Silero at 8 kHz
    assert c.rate == 8000


def test_wall_clock_timestamps_are_ignored() -> None:
    c = clock_after(3.0)
    assert c.to_16k(32000, timestamp=1_765_000_000.0) == 32000
    assert c.rate == 16000


def test_a_count_beyond_the_audio_pushed_moves_the_rate_up() -> None:
    c = clock_after(1.0)
    assert c.to_16k(8000) == 8000  # 0.5 s: plausible at 16 kHz
    assert c.rate == 16000
    for _ in range(100):
        c.pushed(480, 48000)  # 2 s pushed now
    assert c.to_16k(90000) == 30000  # 5.6 s at 16 kHz is impossible: 1.875 s at 48 kHz
    assert c.rate == 48000


def test_bad_rate_is_named() -> None:
    with pytest.raises(ValueError, match="sample_rate must be > 0, got 0"):
        VadClock().pushed(10, 0)
