"""The sans-I/O engine on its own: step arithmetic, queue semantics, profiles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livekit_plugins_voxtral_vllm.protocol import COMMIT, COMMIT_FINAL, encode_append_pcm
from livekit_plugins_voxtral_vllm.testing import RealtimeEngine, StepMath, VersionProfile
from livekit_plugins_voxtral_vllm.testing.engine import sanitize_message

UPDATE = '{"type":"session.update","model":"m"}'


class _SilentDecoder:
    def feed(self, samples: np.ndarray) -> None:
        pass

    def pop_tokens(self, before_sample: int) -> list[str]:
        return []


def make(version: str = "0.33.0", max_model_len: int = 131072, delay: int = 480) -> RealtimeEngine:
    engine = RealtimeEngine(
        served_model_names=["m"],
        profile=VersionProfile.for_version(version),
        math=StepMath(delay, max_model_len),
        decoder_factory=_SilentDecoder,
    )
    engine.data_to_send()
    return engine


def append(engine: RealtimeEngine, n: int) -> None:
    engine.receive_text(encode_append_pcm(np.zeros(n, np.int16)))


def types(frames: list[str]) -> list[str]:
    return [json.loads(f)["type"] for f in frames]


@pytest.mark.parametrize(
    ("delay", "prompt", "first", "pad"),
    [(80, 34, 2600, 12), (160, 35, 3880, 13), (480, 39, 9000, 17), (960, 45, 16680, 23)],
)
def test_step_math_table(delay: int, prompt: int, first: int, pad: int) -> None:
    math = StepMath(delay)
    assert math.prompt_tokens == prompt
    assert math.first_step_samples == first  # delay + 80 ms + 2.5 ms
    assert math.right_pad_samples == pad * 1280
    assert math.max_steps == 131072 - prompt


def test_steps_possible() -> None:
    math = StepMath()
    assert math.steps_possible(0, ended=True) == 0  # no real audio: no left pad, no step
    assert math.steps_possible(8999, ended=False) == 0
    assert math.steps_possible(9000, ended=False) == 1
    assert math.steps_possible(32000, ended=False) == 18
    assert math.steps_possible(32000, ended=True) == 35
    assert math.steps_possible(8000, ended=True) == 17
    assert math.steps_possible(1, ended=True) == 10
    assert math.steps_possible(160000, ended=True) == 135


def test_runnable_steps_follow_the_audio() -> None:
    engine = make()
    engine.receive_text(UPDATE)
    append(engine, 20000)
    assert engine.runnable_steps() == 0  # no generation yet
    engine.receive_text(COMMIT)
    assert engine.runnable_steps() == 9
    assert engine.run_steps(4, now=1.0) == 4
    assert engine.runnable_steps() == 5
    engine.receive_text(COMMIT_FINAL)
    assert engine.runnable_steps() == 5 + 17
    engine.run_steps(100, now=2.0)
    frames = engine.data_to_send()
    assert types(frames) == ["transcription.delta"] * 26 + ["transcription.done"]
    gen = engine.generations[0]
    assert gen.steps_at_final == 4 and gen.steps == 26 and gen.finished_reason == "done"
    assert gen.step_times[:4] == [1.0] * 4 and gen.step_times[4:] == [2.0] * 22


def test_done_waits_for_the_running_steps() -> None:
    engine = make()
    engine.receive_text(UPDATE)
    engine.receive_text(COMMIT)
    append(engine, 16000)
    engine.receive_text(COMMIT_FINAL)
    assert engine.generation is not None and engine.runnable_steps() == 23
    assert "transcription.done" not in types(engine.data_to_send())
    engine.run_steps(23, now=0.0)
    assert types(engine.data_to_send())[-1] == "transcription.done"
    assert engine.generation is None


def test_poisoned_generation_and_queue_clear() -> None:
    engine = make()
    engine.receive_text(UPDATE)
    engine.receive_text(COMMIT_FINAL)
    append(engine, 16000)
    assert engine.queued_sentinel and engine.queued_items == 2
    engine.receive_text(COMMIT)
    # The stale sentinel ends it at once; the audio behind it is cleared after done.
    (done,) = engine.data_to_send()
    assert json.loads(done)["usage"]["total_tokens"] == 0
    assert engine.generations[0].poisoned and engine.queued_items == 0


def test_tiny_max_model_len_finishes_at_commit() -> None:
    engine = make(max_model_len=39)
    engine.receive_text(UPDATE)
    engine.receive_text(COMMIT)
    assert types(engine.data_to_send()) == ["transcription.done"]
    assert engine.generations[0].finished_reason == "max_model_len"


def test_engine_fatal_before_0_32() -> None:
    engine = make("0.31.0", max_model_len=39 + 3)
    engine.receive_text(UPDATE)
    engine.receive_text(COMMIT)
    append(engine, 32000)
    assert engine.run_steps(100, now=0.0) == 3
    assert engine.engine_fatal and engine.runnable_steps() == 0
    engine.kill_engine(now=0.0)
    assert json.loads(engine.data_to_send()[-1])["code"] == "processing_error"
    engine.receive_text(COMMIT)
    assert json.loads(engine.data_to_send()[-1])["code"] == "processing_error"


def test_hang_only_after_a_late_output() -> None:
    engine = make("0.20.0")
    engine.engine_iteration_timeout_s = 60.0
    engine.receive_text(UPDATE)
    engine.receive_text(COMMIT, now=0.0)
    append(engine, 9000 + 1280 * 3)
    engine.run_steps(1, now=59.0)  # in time: its token is fed back
    engine.run_steps(1, now=118.0)  # in time again
    engine.run_steps(1, now=179.0)  # 61 s after the previous output: never fed back
    assert engine.generations[0].hung and engine.runnable_steps() == 0
    engine.receive_text(COMMIT_FINAL)
    assert engine.generation is not None and engine.runnable_steps() == 0


def test_profiles() -> None:
    p = VersionProfile.for_version("0.33.0")
    assert p.validates_model and p.stops_at_max_model_len and p.usage_has_completion_details
    assert p.engine_iteration_timeout_s is None and not p.api_key_breaks_websocket
    old = VersionProfile.for_version("v0.17.1")
    assert not old.validates_model and not old.stops_at_max_model_len
    assert not old.usage_has_completion_details and old.api_key_breaks_websocket
    assert old.engine_iteration_timeout_s == 60.0 and not old.sanitizes_errors
    assert VersionProfile.for_version("0.28").usage_has_completion_details
    assert not VersionProfile.for_version("0.27.1").usage_has_completion_details
    with pytest.raises(ValueError):
        VersionProfile.for_version("latest")


def test_sanitize_message() -> None:
    assert sanitize_message("<object at 0x7f00ab12>") == "<object>"
    assert sanitize_message("failed in /home/u/vllm/x.py: boom") == "failed in <path>: boom"
    assert (
        sanitize_message('oops\n  File "/x/y.py", line 3, in run\n    call()\nend') == "oops\nend"
    )
    url = "visit https://errors.pydantic.dev/2.14/v/missing"
    assert sanitize_message(url) == url


def test_huge_append_is_invalid_audio() -> None:
    engine = make()
    samples = np.zeros(25 * 1024**2 + 1, np.int16)
    engine.receive_text(encode_append_pcm(samples))
    assert json.loads(engine.data_to_send()[0])["code"] == "invalid_audio"
    assert engine.audio_samples == 0


def test_disconnect_ends_the_generation_silently() -> None:
    engine = make()
    engine.receive_text(UPDATE)
    engine.receive_text(COMMIT)
    append(engine, 16000)
    engine.disconnect(now=1.0)
    assert engine.generations[0].finished_reason == "disconnect"
    assert engine.data_to_send() == [] and engine.runnable_steps() == 0
