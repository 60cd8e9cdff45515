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


# -- flushes: a VAD that counts from 0 again (Silero) and one that counts on ----------------

WIN = 512  # Silero's window at 16 kHz: an INFERENCE_DONE event each


def _push_windows(c: VadClock, n: int, counted: int, *, reset_at: int = 0) -> list[int]:
    """Push ``n`` 32 ms windows (48 kHz frames) and return where each window's event lands;
    the VAD's count (16 kHz, with an audio-time timestamp) starts at ``counted``."""
    out = []
    for k in range(1, n + 1):
        c.pushed(1536, 48000)
        index = counted + k * WIN - reset_at
        out.append(c.to_16k(index, index / 16000))
    return out


def test_reset_vad_counts_from_the_flush_after_a_waited_flush() -> None:
    c = VadClock()
    first = _push_windows(c, 50, 0)  # 1.6 s
    c.flushed()
    c.flush_taken()  # the glue waited: the next event is from after the flush
    second = _push_windows(c, 20, 0)  # Silero starts at 0 again
    assert first[-1] == 50 * WIN
    assert second == [50 * WIN + k * WIN for k in range(1, 21)]


def test_reset_vad_found_by_its_count_going_backwards_without_a_wait() -> None:
    c = VadClock()
    _push_windows(c, 50, 0)
    c.flushed()  # (end_input's flush: no wait, so no flush_taken)
    second = _push_windows(c, 5, 0)
    assert second == [50 * WIN + k * WIN for k in range(1, 6)]


def test_vad_that_counts_on_through_a_flush_keeps_its_origin() -> None:
    c = VadClock()
    _push_windows(c, 50, 0)
    c.flushed()
    c.flush_taken()
    second = _push_windows(c, 20, 50 * WIN)  # counts on from 50 windows
    assert second == [50 * WIN + k * WIN for k in range(1, 21)]
    c.flushed()  # and without a wait
    third = _push_windows(c, 5, 70 * WIN)
    assert third == [70 * WIN + k * WIN for k in range(1, 6)]


def test_several_flushes_of_a_reset_vad() -> None:
    c = VadClock()
    ends = []
    total = 0
    for n, waited in ((30, True), (1, True), (40, True), (25, False), (10, True)):
        got = _push_windows(c, n, 0)
        assert got == [total + k * WIN for k in range(1, n + 1)]
        total += n * WIN
        ends.append(got[-1])
        c.flushed()
        if waited:
            c.flush_taken()
    assert ends[-1] == (30 + 1 + 40 + 25 + 10) * WIN


def test_events_before_an_unwaited_flush_stay_in_their_epoch() -> None:
    # a lagging VAD: the flush is sent before the VAD judged the audio before it
    c = VadClock()
    for _ in range(60):
        c.pushed(1536, 48000)
    c.flushed()
    for _ in range(10):
        c.pushed(1536, 48000)
    before = [c.to_16k(k * WIN, k * WIN / 16000) for k in range(55, 61)]
    after = [c.to_16k(k * WIN, k * WIN / 16000) for k in range(1, 11)]
    assert before == [k * WIN for k in range(55, 61)]
    assert after == [(60 + k) * WIN for k in range(1, 11)]
