"""RutDetector alone: what counts as blank speech, and when (sans-I/O, positions in samples)."""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm.rut import RutDetector, RutOptions, RutSignal, blank_rut_options

S = 16000
STEP = 1280  # 80 ms


def blank_steps(rut: RutDetector, lo_s: float, hi_s: float) -> list[RutSignal]:
    out = []
    for lo in range(int(lo_s * S), int(hi_s * S), STEP):
        signal = rut.step(lo, lo + STEP, False)
        if signal is not None:
            out.append(signal)
    return out


def test_speech_counts_from_one_second_into_each_utterance() -> None:
    rut = RutDetector(RutOptions(threshold_s=3.0))
    rut.speech_started(0)
    rut.judged_to(60 * S)
    assert blank_steps(rut, 0, 3.9) == []  # 2.9 s counted
    assert blank_steps(rut, 3.9, 4.2) == [RutSignal.RUT]


def test_a_lagging_vad_does_not_pass_silence_off_as_speech() -> None:
    """The VAD has judged only 2 s while the generation already ran 30 s of audio (a burst):
    the utterance ended at 2.5 s, which the VAD says only later. Nothing past it counts."""
    rut = RutDetector(RutOptions(threshold_s=3.0))
    rut.speech_started(0)
    rut.judged_to(2 * S)
    assert blank_steps(rut, 0, 30) == []  # waiting for the VAD: nothing counted yet
    rut.speech_ended(int(2.5 * S))
    rut.judged_to(31 * S)
    assert blank_steps(rut, 30, 30.08) == []  # 1.5 s counted, not 29
    rut.speech_started(40 * S)
    rut.judged_to(60 * S)
    assert blank_steps(rut, 40, 42.5) == [RutSignal.RUT]  # 1.5 + 1.5 s


def test_a_step_counts_once_the_endpointing_is_settle_s_past_it() -> None:
    rut = RutDetector(RutOptions(threshold_s=3.0))
    rut.speech_started(0)
    rut.judged_to(int(4.5 * S))
    assert blank_steps(rut, 0, 4.5) == []  # judged to 3.5 s: 2.5 s counted
    rut.judged_to(int(5.5 * S))
    assert blank_steps(rut, 4.5, 4.58) == [RutSignal.RUT]  # judged to 4.5 s: 3.5 s


def test_text_forgets_the_blank_steps_waiting_for_the_endpointing() -> None:
    rut = RutDetector(RutOptions(threshold_s=3.0))
    rut.speech_started(0)
    assert blank_steps(rut, 0, 10) == []  # nothing judged yet
    rut.step(10 * S, 10 * S + STEP, True)
    rut.judged_to(20 * S)
    assert blank_steps(rut, 10.08, 12) == []  # (only 1.9 s since the text)


def test_two_signals_never_come_from_one_batch() -> None:
    """A VAD far behind releases 25 s of blank speech at once: one RUT, and the rest of that
    socket's steps are not held against the fresh one."""
    rut = RutDetector(RutOptions(threshold_s=3.0))
    rut.speech_started(0)
    assert blank_steps(rut, 0, 25) == []
    rut.judged_to(30 * S)
    assert blank_steps(rut, 25, 25.08) == [RutSignal.RUT]
    assert blank_steps(rut, 25.08, 27) == []
    assert blank_steps(rut, 27, 28.5) == [RutSignal.PERSISTENT]


@pytest.mark.parametrize("bad", [2.99, 0, -1, 600.5, float("nan"), float("inf"), "10", True])
def test_blank_rut_options_names_the_bad_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"blank_rut_s must be .* from 3 to 600") as info:
        blank_rut_options(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_blank_rut_options_none_disables() -> None:
    assert blank_rut_options(None) is None
    options = blank_rut_options(5)
    assert options is not None and options.threshold_s == 5.0
