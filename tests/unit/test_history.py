"""Unit tests of ``history.py``: the ring buffer generations are replayed and cut from.

Samples are addressed by absolute index since the stream began; the buffer holds the newest
``capacity`` of them. A reference numpy array of everything ever appended is the oracle.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livekit_plugins_voxtral_vllm.history import AudioHistory

Int16Array = npt.NDArray[np.int16]
HOP = 160  # 10 ms at 16 kHz


def ramp(n: int, offset: int = 0) -> Int16Array:
    """Sample ``i`` of the stream has a value derived from ``i``: any misplacement shows."""
    idx = np.arange(offset, offset + n, dtype=np.int64)
    return ((idx * 7919 + 12345) % 65536 - 32768).astype(np.int16)


def tone(n: int, amplitude: float = 0.3) -> Int16Array:
    t = np.arange(n) / 16000
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def noise(n: int, rms: float, seed: int) -> Int16Array:
    rng = np.random.default_rng(seed)
    return np.round(rng.standard_normal(n) * rms).astype(np.int16)


def filled(capacity: int, *sizes: int) -> tuple[AudioHistory, Int16Array]:
    history = AudioHistory(capacity)
    total = 0
    for n in sizes:
        history.append(ramp(n, total))
        total += n
    return history, ramp(total)


def assert_same(a: Int16Array, b: Int16Array) -> None:
    assert a.dtype == np.int16
    np.testing.assert_array_equal(a, b)


class TestAppendAndSlice:
    """Absolute addressing across the ring's wrap-around"""

    def test_empty(self) -> None:
        history = AudioHistory(1000)
        assert (history.start, history.end) == (0, 0)
        assert_same(history.slice(0, 100), np.zeros(0, dtype=np.int16))

    def test_within_capacity(self) -> None:
        history, ref = filled(1000, 300, 200)
        assert (history.start, history.end) == (0, 500)
        assert_same(history.slice(0, 500), ref)
        assert_same(history.slice(250, 320), ref[250:320])

    def test_wrap_around(self) -> None:
        history, ref = filled(1000, 700, 700)
        assert (history.start, history.end) == (400, 1400)
        assert_same(history.slice(400, 1400), ref[400:])
        assert_same(history.slice(900, 1100), ref[900:1100])  # across the seam
        assert_same(history.slice(1000, 1400), ref[1000:])

    def test_exactly_full(self) -> None:
        history, ref = filled(1000, 1000)
        assert (history.start, history.end) == (0, 1000)
        assert_same(history.slice(0, 1000), ref)
        history.append(ramp(1, 1000))
        assert history.start == 1
        assert_same(history.slice(0, 1001), ramp(1001)[1:])

    @pytest.mark.parametrize("sizes", [(2500,), (300, 2345), (999, 1000), (1, 1001, 7)])
    def test_appends_larger_than_capacity_keep_the_newest(self, sizes: tuple[int, ...]) -> None:
        history, ref = filled(1000, *sizes)
        assert history.end == ref.size
        assert history.start == ref.size - 1000
        assert_same(history.slice(0, ref.size), ref[-1000:])
        history.append(ramp(123, ref.size))  # the ring stays consistent afterwards
        assert_same(history.slice(0, ref.size + 123), ramp(ref.size + 123)[-1000:])

    def test_empty_append_changes_nothing(self) -> None:
        history, ref = filled(1000, 600)
        history.append(np.zeros(0, dtype=np.int16))
        assert history.end == 600
        assert_same(history.slice(0, 600), ref)

    @pytest.mark.parametrize(
        ("lo", "hi", "expected"),
        [
            (0, 1400, (400, 1400)),  # evicted samples are clamped away
            (-50, 500, (400, 500)),
            (1300, 5000, (1300, 1400)),  # the future is clamped away
            (600, 600, None),
            (700, 600, None),
            (0, 400, None),  # entirely evicted
            (1400, 1500, None),  # entirely in the future
        ],
    )
    def test_clamping(self, lo: int, hi: int, expected: tuple[int, int] | None) -> None:
        history, ref = filled(1000, 700, 700)
        want = ref[expected[0] : expected[1]] if expected else np.zeros(0, dtype=np.int16)
        assert_same(history.slice(lo, hi), want)

    def test_slices_are_copies(self) -> None:
        history, ref = filled(1000, 700, 700)
        for lo, hi in [(500, 600), (900, 1100)]:
            part = history.slice(lo, hi)
            part[:] = 0
            assert_same(history.slice(lo, hi), ref[lo:hi])

    def test_appended_arrays_are_copied(self) -> None:
        history = AudioHistory(1000)
        for n in (300, 5000):
            buf = ramp(n, history.end)
            history.append(buf)
            buf[:] = 0  # the caller reuses its buffer
        assert_same(history.slice(0, 5300), ramp(5300)[-1000:])

    @pytest.mark.parametrize("capacity", [0, -1])
    def test_capacity_must_be_positive(self, capacity: int) -> None:
        with pytest.raises(ValueError, match=f"capacity_samples must be positive, got {capacity}"):
            AudioHistory(capacity)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        capacity=st.integers(1, 500),
        steps=st.lists(
            st.tuples(st.integers(0, 1200), st.integers(-100, 3000), st.integers(-100, 3000)),
            min_size=1,
            max_size=12,
        ),
    )
    def test_matches_a_reference_array(
        self, capacity: int, steps: list[tuple[int, int, int]]
    ) -> None:
        history = AudioHistory(capacity)
        ref = np.zeros(0, dtype=np.int16)
        for size, a, b in steps:
            chunk = ramp(size, ref.size)
            history.append(chunk)
            ref = np.concatenate((ref, chunk))
            start = max(0, ref.size - capacity)
            assert (history.start, history.end) == (start, ref.size)
            assert_same(history.slice(start, ref.size), ref[start:])
            lo, hi = max(a, start), min(b, ref.size)
            want = ref[lo:hi] if hi > lo else np.zeros(0, dtype=np.int16)
            assert_same(history.slice(a, b), want)


class TestQuietest:
    """Cut points: the earliest 10 ms hop within 3 dB of the quietest one"""

    def test_picks_the_first_gap(self) -> None:
        """tone, gap, tone, gap: the first gap after a word, never a later one."""
        history = AudioHistory(16000)
        for part in (tone(4000), np.zeros(2000, np.int16), tone(3000), np.zeros(3000, np.int16)):
            history.append(part)
        assert history.quietest(0, history.end) == 4000

    def test_hops_are_counted_from_lo(self) -> None:
        history = AudioHistory(16000)
        for part in (tone(4000), np.zeros(2000, np.int16), tone(3000)):
            history.append(part)
        # hops start at 50 + 160 k: the first one wholly in the gap starts at 4050
        assert history.quietest(50, history.end) == 4050

    def test_a_range_after_the_first_gap_picks_the_second(self) -> None:
        history = AudioHistory(16000)
        for part in (tone(4000), np.zeros(2000, np.int16), tone(3000), np.zeros(3000, np.int16)):
            history.append(part)
        # the gap starts at 9000; the first hop from 6000 wholly inside it starts at 9040
        assert history.quietest(6000, history.end) == 9040

    def test_within_3_db_the_earlier_gap_wins(self) -> None:
        history = AudioHistory(16000)
        # first gap 1.5 dB louder than the second
        for part in (tone(3200), noise(1600, 100, 1), tone(3200), noise(1600, 84, 2)):
            history.append(part)
        assert history.quietest(0, history.end) == 3200

    def test_a_much_quieter_later_gap_wins(self) -> None:
        history = AudioHistory(16000)
        # first gap 20 dB louder than the second
        for part in (tone(3200), noise(1600, 1000, 1), tone(3200), noise(1600, 100, 2)):
            history.append(part)
        assert history.quietest(0, history.end) == 8000

    def test_only_whole_hops_count(self) -> None:
        history = AudioHistory(16000)
        for part in (tone(4000), np.zeros(2000, np.int16)):
            history.append(part)
        # [0, 4100): 25 whole hops of tone; the 100 quiet samples after them are no hop
        assert history.quietest(0, 4100) < 4000

    def test_evicted_audio_is_not_considered(self) -> None:
        history = AudioHistory(8000)
        for part in (np.zeros(4000, np.int16), tone(6000), np.zeros(1600, np.int16), tone(400)):
            history.append(part)
        assert history.start == 4000
        # hops from 4000: the first one wholly inside the gap at 10000 starts at 10080
        assert history.quietest(0, history.end) == 10080

    @pytest.mark.parametrize(
        ("lo", "hi", "expected"),
        [
            (3000, 3100, 3000),  # less than one hop: lo
            (3000, 3000, 3000),
            (3000, 2900, 3000),
            (0, 100, 2000),  # lo clamped to the oldest sample held
            (5900, 9000, 5900),  # one hop would reach past the end
            (7000, 9000, 6000),  # lo clamped to the end
        ],
    )
    def test_short_or_out_of_range(self, lo: int, hi: int, expected: int) -> None:
        """Less than one hop in range: ``lo``, clamped to what is held."""
        history = AudioHistory(4000)
        history.append(tone(6000))
        assert (history.start, history.end) == (2000, 6000)
        result = history.quietest(lo, hi)
        assert result == expected
        assert history.start <= result <= history.end


def test_is_quiet_tells_a_gap_from_the_inside_of_a_word() -> None:
    """A split point must be a gap: 20 dB under the sound before it, not a point inside a
    word (a word is as loud in its middle as at its start)."""
    tone = (8000 * np.sin(np.arange(4800) * 0.2)).astype(np.int16)  # 300 ms
    gap = np.zeros(960, np.int16)  # 60 ms
    h = AudioHistory(16000 * 5)
    h.append(np.concatenate((tone, gap, tone)))
    assert h.is_quiet(4800, 7680)  # the gap's start
    assert h.is_quiet(4800 + 320, 7680)  # inside the gap
    assert not h.is_quiet(2400, 7680)  # the middle of the first word
    assert not h.is_quiet(4800 + 960 + 1600, 7680)  # inside the second word
    assert not h.is_quiet(h.end, 7680)  # not held yet
    quiet = AudioHistory(16000)
    quiet.append(np.zeros(1600, np.int16))
    assert quiet.is_quiet(800, 7680)  # silence everywhere is quiet


def test_loudest_counts_every_hop_and_a_last_part_hop() -> None:
    """The level of a stretch is its loudest 10 ms: a next word's first samples at the end of
    the stretch, in a part hop, make it loud."""
    tone = (8000 * np.sin(np.arange(4800) * 0.2)).astype(np.int16)  # 300 ms
    gap = np.zeros(4000, np.int16)  # 250 ms
    h = AudioHistory(16000 * 5)
    h.append(np.concatenate((tone, gap, tone)))
    word = h.loudest(0, 4800)
    assert word == pytest.approx(8000**2 / 2, rel=0.05)
    assert h.loudest(4800, 8800) == 0.0  # the gap
    assert h.loudest(4800, 4800) == 0.0  # nothing
    assert h.loudest(4800, 8800 + 20) > word * 0.1  # 20 samples of the next word
    assert h.loudest(h.end, h.end + 100) == 0.0  # not held yet
