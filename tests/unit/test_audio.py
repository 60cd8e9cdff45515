"""Unit tests of ``audio.py``: downmix, resampling to 16 kHz, 80 ms chunking.

Reference: ``vllm-realtime.md`` §3.1 (raw PCM16 LE mono 16 kHz only) and ``livekit-stt.md`` §1
(``rtc.AudioResampler`` output sizes do not match input sizes; re-chunk before sending).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import rtc

from livekit_plugins_voxtral_vllm import protocol
from livekit_plugins_voxtral_vllm.audio import (
    AudioPipeline,
    MonoResampler,
    StepChunker,
    to_mono_int16,
)

Int16Array = npt.NDArray[np.int16]


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> Int16Array:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def frame_of(samples: Int16Array, rate: int, channels: int = 1) -> rtc.AudioFrame:
    return rtc.AudioFrame(bytearray(samples.tobytes()), rate, channels, len(samples) // channels)


def peak_hz(x: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


def resample_all(
    x: Int16Array, rate: int, frame_ms: int, *, min_push_ms: int = 20
) -> tuple[Int16Array, MonoResampler]:
    r = MonoResampler(min_push_ms=min_push_ms)
    size = rate * frame_ms // 1000
    out = [r.push(x[i : i + size], rate) for i in range(0, len(x), size)]
    out.append(r.flush())
    return np.concatenate(out), r


class TestToMono:
    """Downmix of interleaved int16: average, no overflow, zero-copy when mono."""

    def test_mono_frame_is_zero_copy(self) -> None:
        buf = bytearray(tone(440, 0.01, 48000).tobytes())
        frame = rtc.AudioFrame(buf, 48000, 1, 480)
        out = to_mono_int16(frame)
        assert out.dtype == np.int16 and len(out) == 480
        assert np.shares_memory(out, np.frombuffer(buf, dtype=np.int16))

    def test_mono_array_is_returned_as_is(self) -> None:
        x = tone(440, 0.01, 16000)
        assert to_mono_int16(x) is x
        assert to_mono_int16(x, 1) is x

    def test_bytes_are_read_as_native_int16(self) -> None:
        x = tone(440, 0.01, 16000)
        assert np.array_equal(to_mono_int16(x.tobytes()), x)

    def test_identical_channels_are_bit_exact(self) -> None:
        x = tone(1000, 0.02, 48000, amplitude=1.0)
        frame = frame_of(np.repeat(x, 2), 48000, 2)
        assert np.array_equal(to_mono_int16(frame), x)

    @pytest.mark.parametrize(
        ("left", "right", "mono"),
        [(32767, 32767, 32767), (-32768, -32768, -32768), (32767, -32768, -1), (3, 4, 3)],
    )
    def test_stereo_average_does_not_overflow(self, left: int, right: int, mono: int) -> None:
        x = np.array([left, right] * 4, dtype=np.int16)
        assert to_mono_int16(x, 2).tolist() == [mono] * 4

    @pytest.mark.parametrize("channels", [3, 4, 6, 8])
    def test_multichannel_average(self, channels: int) -> None:
        rng = np.random.default_rng(channels)
        x = rng.integers(-32768, 32768, size=(100, channels)).astype(np.int16)
        expected = np.floor(x.astype(np.int64).sum(axis=1) / channels).astype(np.int16)
        frame = frame_of(x.ravel(), 48000, channels)
        assert np.array_equal(to_mono_int16(frame), expected)

    def test_frame_buffer_longer_than_its_samples_is_trimmed(self) -> None:
        buf = bytearray(np.arange(20, dtype=np.int16).tobytes())
        frame = rtc.AudioFrame(buf, 16000, 2, 4)  # 8 samples used, 20 in the buffer
        assert to_mono_int16(frame).tolist() == [0, 2, 4, 6]

    def test_errors(self) -> None:
        frame = frame_of(np.zeros(960, np.int16), 48000, 2)
        with pytest.raises(ValueError, match="contradicts"):
            to_mono_int16(frame, 1)
        with pytest.raises(ValueError, match="whole number of 2-channel"):
            to_mono_int16(np.zeros(5, np.int16), 2)
        with pytest.raises(ValueError, match="num_channels must be >= 1"):
            to_mono_int16(np.zeros(4, np.int16), 0)
        with pytest.raises(TypeError, match="int16"):
            to_mono_int16(np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="1-D"):
            to_mono_int16(np.zeros((4, 2), np.int16), 2)


class TestMonoResampler:
    """LiveKit's soxr at quality HIGH to 16 kHz; counts stay exact; one rate per stream."""

    @pytest.mark.parametrize("rate", [48000, 44100, 24000, 16000, 8000])
    @pytest.mark.parametrize("frame_ms", [10, 20, 50])
    @pytest.mark.parametrize("min_push_ms", [0, 20])
    def test_length_and_frequency(self, rate: int, frame_ms: int, min_push_ms: int) -> None:
        x = tone(1000, 2.0, rate)
        y, r = resample_all(x, rate, frame_ms, min_push_ms=min_push_ms)
        assert abs(len(y) - 32000) <= 4
        assert r.samples_in == len(x)
        assert r.samples_out == len(y)
        assert r.input_rate == rate
        assert abs(peak_hz(y[1600:-1600], 16000) - 1000) < 2

    def test_passthrough_at_16k_returns_the_input(self) -> None:
        r = MonoResampler()
        x = tone(440, 0.01, 16000)
        assert r.push(x, 16000) is x
        assert len(r.flush()) == 0
        assert (r.samples_in, r.samples_out, r.pending_samples) == (160, 160, 0)

    def test_output_is_time_aligned(self) -> None:
        """soxr compensates its filter delay: 16 kHz sample n is input time n / 16000 s."""
        x = np.concatenate([np.zeros(24000, np.int16), tone(1000, 0.5, 48000)])
        y, _ = resample_all(x, 48000, 10)
        onset = int(np.argmax(np.abs(y) > 1000))
        assert abs(onset - 8000) <= 8

    def test_held_back_audio_is_bounded(self) -> None:
        """At most ~60 ms is inside the gathering buffer and soxr at any time."""
        r = MonoResampler()
        x = tone(1000, 3.0, 48000)
        for i in range(0, len(x), 480):
            r.push(x[i : i + 480], 48000)
            expected = r.samples_in * 16000 // 48000
            assert 0 <= expected - r.samples_out <= 960

    def test_gathering_halves_the_soxr_calls(self) -> None:
        r = MonoResampler(min_push_ms=20)
        x = tone(1000, 0.1, 48000)
        outputs = [r.push(x[i : i + 480], 48000) for i in range(0, len(x), 480)]
        assert r.pending_samples == 0
        assert all(len(o) == 0 for o in outputs[0::2])  # odd frames only fill the buffer

    def test_usable_after_flush(self) -> None:
        r = MonoResampler()
        x = tone(1000, 0.5, 48000)
        first = len(r.push(x, 48000)) + len(r.flush())
        second = len(r.push(x, 48000)) + len(r.flush())
        assert first == second == 8000
        assert r.samples_out == 16000

    def test_flush_hands_over_the_gathered_input(self) -> None:
        r = MonoResampler(min_push_ms=1000)
        assert len(r.push(tone(1000, 0.5, 48000), 48000)) == 0
        assert r.pending_samples == 24000
        assert len(r.flush()) == 8000
        assert r.pending_samples == 0

    def test_flush_before_any_push(self) -> None:
        assert len(MonoResampler().flush()) == 0

    def test_rate_change_is_an_error(self) -> None:
        r = MonoResampler()
        r.push(tone(440, 0.01, 48000), 48000)
        with pytest.raises(ValueError, match=r"48000 Hz to 24000 Hz.*create a new stream"):
            r.push(tone(440, 0.01, 24000), 24000)
        assert r.input_rate == 48000
        assert r.samples_in == 480

    def test_rate_change_from_16k_is_an_error(self) -> None:
        r = MonoResampler()
        r.push(tone(440, 0.01, 16000), 16000)
        with pytest.raises(ValueError, match="create a new stream"):
            r.push(tone(440, 0.01, 48000), 48000)

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="min_push_ms"):
            MonoResampler(min_push_ms=-1)
        with pytest.raises(ValueError, match="sample_rate must be positive"):
            MonoResampler().push(np.zeros(10, np.int16), 0)
        with pytest.raises(TypeError, match="int16"):
            MonoResampler().push(np.zeros(10, np.float32), 48000)

    def test_non_contiguous_input(self) -> None:
        x = tone(1000, 0.2, 48000)
        y = MonoResampler(min_push_ms=0)
        out = np.concatenate([y.push(np.repeat(x, 2)[::2], 48000), y.flush()])
        assert len(out) == 3200


class TestAlignedPushes:
    """``align_samples``: soxr is called when the chunk being filled can be completed."""

    @staticmethod
    def run(rate: int, frame_ms: int, r: MonoResampler) -> tuple[int, list[float]]:
        """soxr calls, and for each 80 ms chunk the ms of input between its end and the push
        that completed it."""
        calls = 0

        class Counting:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def resample_chunk(self, x: Int16Array, last: bool = False) -> Int16Array:
                nonlocal calls
                calls += 1
                out: Int16Array = self.inner.resample_chunk(x, last)
                return out

        x = tone(1000, 4.0, rate)
        size = rate * frame_ms // 1000
        lags: list[float] = []
        boundary = protocol.STEP_SAMPLES
        for i in range(0, len(x), size):
            r.push(x[i : i + size], rate)
            if i == 0:
                r._soxr = Counting(r._soxr)  # count from the first call on
            while r.samples_out >= boundary:
                lags.append(r.samples_in * 1000 / rate - boundary / 16)
                boundary += protocol.STEP_SAMPLES
        return calls, lags

    @pytest.mark.parametrize(("rate", "frame_ms"), [(48000, 10), (24000, 50), (44100, 10)])
    def test_fewer_calls_and_no_later_chunks(self, rate: int, frame_ms: int) -> None:
        aligned_calls, aligned = self.run(rate, frame_ms, MonoResampler(align_samples=1280))
        gathered_calls, gathered = self.run(rate, frame_ms, MonoResampler(min_push_ms=20))
        assert len(aligned) == len(gathered) >= 48
        assert aligned_calls < gathered_calls * 0.75
        assert max(aligned) <= max(gathered) + 1e-6
        assert np.mean(aligned) <= np.mean(gathered) + 2.5

    def test_same_audio_as_every_frame_pushed(self) -> None:
        x = tone(1000, 2.0, 48000)
        gathered, _ = resample_all(x, 48000, 10)  # min_push_ms=20
        r = MonoResampler(align_samples=1280)
        y = np.concatenate([r.push(x[i : i + 480], 48000) for i in range(0, len(x), 480)])
        y = np.concatenate([y, r.flush()])
        assert len(y) == len(gathered)
        # soxr's float rounding depends a little on the call sizes
        assert np.max(np.abs(y.astype(np.int32) - gathered)) <= 4

    def test_realigns_after_flush(self) -> None:
        r = MonoResampler(align_samples=1280)
        x = tone(1000, 0.25, 48000)
        out = [r.push(x[i : i + 480], 48000) for i in range(0, len(x), 480)]
        out.append(r.flush())
        assert sum(len(o) for o in out) == 4000
        after = [len(r.push(x[i : i + 480], 48000)) for i in range(0, 480 * 12, 480)]
        assert sum(after) >= 1280  # the first chunk after the flush completes as before
        assert after.index(next(n for n in after if n)) >= 8  # nothing pushed too early

    def test_bad_argument(self) -> None:
        with pytest.raises(ValueError, match="align_samples"):
            MonoResampler(align_samples=-1)


class TestStepChunker:
    """Exact 1280-sample (80 ms) chunks whatever the push sizes."""

    @settings(max_examples=200, deadline=None)
    @given(sizes=st.lists(st.integers(min_value=0, max_value=6000), max_size=30))
    def test_any_push_sizes_give_the_same_stream(self, sizes: list[int]) -> None:
        total = sum(sizes)
        x = (np.arange(total) % 65536 - 32768).astype(np.int16)
        c = StepChunker()
        chunks: list[Int16Array] = []
        pos = 0
        for n in sizes:
            chunks.extend(c.push(x[pos : pos + n]))
            pos += n
            assert 0 <= c.pending_samples < protocol.STEP_SAMPLES
        assert all(len(ch) == protocol.STEP_SAMPLES for ch in chunks)
        rest = c.flush()
        if total % protocol.STEP_SAMPLES:
            assert rest is not None and len(rest) == total % protocol.STEP_SAMPLES
            chunks.append(rest)
        else:
            assert rest is None
        joined = np.concatenate(chunks) if chunks else np.empty(0, np.int16)
        assert np.array_equal(joined, x)
        assert c.samples_in == c.samples_out == total
        assert c.flush() is None and c.pending_samples == 0

    def test_chunks_do_not_alias_the_input(self) -> None:
        c = StepChunker()
        x = np.ones(1000, np.int16)
        y = np.full(4000, 2, np.int16)
        chunks = c.push(x) + c.push(y)
        x[:] = 9
        y[:] = 9
        assert [set(ch.tolist()) for ch in chunks] == [{1, 2}, {2}, {2}]
        assert c.pending_samples == 5000 - 3 * 1280

    def test_small_pushes(self) -> None:
        c = StepChunker()
        outs = [c.push(np.full(160, k, np.int16)) for k in range(16)]
        assert [len(o) for o in outs] == [0] * 7 + [1] + [0] * 7 + [1]
        assert outs[7][0].tolist() == np.repeat(np.arange(8), 160).tolist()

    def test_custom_step_and_validation(self) -> None:
        c = StepChunker(160)
        assert c.step_samples == 160
        assert len(c.push(np.zeros(480, np.int16))) == 3
        with pytest.raises(ValueError, match="step_samples"):
            StepChunker(0)


class TestAudioPipeline:
    """Frames of any rate and layout → 16 kHz chunks, released where the caller's cut (the
    live generation's next step) is reached, else every 80 ms of the stream."""

    @pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (24000, 1), (16000, 1)])
    def test_frames_to_chunks(self, rate: int, channels: int) -> None:
        x = tone(1000, 3.0, rate)
        inter = np.repeat(x, channels)
        size = rate // 100 * channels
        p = AudioPipeline()
        chunks: list[Int16Array] = []
        for i in range(0, len(inter), size):
            got = p.push_frame(frame_of(inter[i : i + size], rate, channels))
            assert len(got) <= 1
            if got:
                # released on the frame that reached the next 80 ms of the stream
                end = sum(len(c) for c in chunks) + len(got[0])
                assert end % protocol.STEP_SAMPLES < 160 + 40
            chunks.extend(got)
        chunks.extend(p.flush())
        total = sum(len(ch) for ch in chunks)
        assert abs(total - 48000) <= 4
        assert p.samples_out == total
        assert abs(peak_hz(np.concatenate(chunks)[1600:-1600], 16000) - 1000) < 2
        message = json.loads(protocol.encode_append_pcm(chunks[5]))
        assert message["type"] == "input_audio_buffer.append"
        assert np.array_equal(np.frombuffer(base64.b64decode(message["audio"]), "<i2"), chunks[5])

    @pytest.mark.parametrize(("rate", "frame_ms"), [(48000, 10), (24000, 50), (16000, 50)])
    @pytest.mark.parametrize("cut", [9000, 9000 + 1280 * 3, 777])
    def test_a_chunk_goes_on_the_frame_that_reaches_the_cut(
        self, rate: int, frame_ms: int, cut: int
    ) -> None:
        """No look-ahead beyond the resampler's filter (1.3 ms): the release comes with the
        first frame whose end is at least the cut's time plus that delay."""
        x = tone(440, 2.0, rate)
        size = rate * frame_ms // 1000
        p = AudioPipeline()
        p.cut = cut
        delay_s = 0.0 if rate == 16000 else 0.0014
        for i in range(0, len(x), size):
            got = p.push_frame(frame_of(x[i : i + size], rate))
            frame_end_s = (i + size) / rate
            if got:
                assert p.samples_out >= cut
                assert frame_end_s - frame_ms / 1000 < cut / 16000 + delay_s <= frame_end_s
                return
            assert frame_end_s < cut / 16000 + delay_s
        pytest.fail("no chunk released")

    def test_the_cut_moves_with_the_caller(self) -> None:
        p = AudioPipeline()
        frames = [frame_of(x, 48000) for x in np.split(tone(440, 1.0, 48000), 100)]
        p.cut = 3000
        released: list[int] = []
        for f in frames:
            if p.push_frame(f):
                released.append(p.samples_out)
                p.cut = p.samples_out + 500  # e.g. the next step of a generation
        assert released[0] >= 3000
        assert all(b - a >= 500 for a, b in zip(released, released[1:], strict=False))
        assert all(b - a < 500 + 160 + 40 for a, b in zip(released, released[1:], strict=False))

    def test_a_44k1_stream_goes_through_soxr(self) -> None:
        p = AudioPipeline()
        x = tone(1000, 1.0, 44100)
        chunks = [
            c for i in range(0, 44100, 441) for c in p.push_frame(frame_of(x[i : i + 441], 44100))
        ]
        chunks.extend(p.flush())
        y = np.concatenate(chunks)
        assert abs(len(y) - 16000) <= 4
        assert abs(peak_hz(y[1600:-1600], 16000) - 1000) < 2

    def test_read_only_frames(self) -> None:
        """Frames built on ``bytes`` expose read-only buffers."""
        p = AudioPipeline()
        data = tone(1000, 0.01, 48000).tobytes()
        chunks = [c for _ in range(100) for c in p.push_frame(rtc.AudioFrame(data, 48000, 1, 480))]
        chunks.extend(p.flush())
        assert sum(len(c) for c in chunks) == 16000

    def test_rate_change_raises(self) -> None:
        p = AudioPipeline()
        p.push_frame(frame_of(np.zeros(480, np.int16), 48000))
        with pytest.raises(ValueError, match="create a new stream"):
            p.push_frame(frame_of(np.zeros(160, np.int16), 16000))

    def test_flush_when_empty(self) -> None:
        assert AudioPipeline().flush() == []
