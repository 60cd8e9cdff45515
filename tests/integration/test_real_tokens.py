"""The real STT through the emulator speaking real Tekken tokens (issue 11), in six languages:
one token per 80 ms step, multi-token words, characters split over tokens, no spaces in
Chinese and Japanese, text held back and released in bursts, and the blank-token rut.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from livekit.agents import APIConnectOptions, stt

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.stream_core import BlankRut
from livekit_plugins_voxtral_vllm.testing import SynthesizedSpeech, VLLMRealtimeEmulator, synthesize

from .helpers import Run, frames_of, transcribe

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

SCRIPTS = {
    "en": "hello world , 2026 😀 don't stop the meeting now . <pause:900> "
    "we can hear the quick brown fox . thank you everyone .",
    "fr": "bonjour Zoë , aujourd'hui c'est prêt ? <pause:900> "
    "merci 2026 équipe 😀 bienvenue tous .",
    "de": "hallo Welt , Straße Größe 2026 🎉 geht's los . <pause:900> "
    "danke Zoë schnelle Fuchs springt .",
    "es": "hola mundo , ¿qué año 2026 pingüino niño ? <pause:900> gracias todos 😀 buenos días .",
    "zh": "你好 大家 ， 今天 在 公园 散步 。 <pause:900> 2026 年 北京 会议 开始 😀 吧 。",
    "ja": "こんにちは 皆さん 、 今日 は 公園 を 散歩 です 。 <pause:900> "
    "2026 年 東京 会議 始まります 😀 。",
}
NO_SPACES = {"zh", "ja"}
CONN = APIConnectOptions(max_retry=5, retry_interval=0.1, timeout=5.0)


@dataclass
class Timed:
    text: str
    start: float
    end: float
    est_start: float
    est_end: float


def transcript(run: Run, language: str) -> str:
    glue = "" if language in NO_SPACES else " "
    return glue.join(e.alternatives[0].text for e in run.finals)


def align(run: Run, speech: SynthesizedSpeech) -> tuple[list[Timed], list[int]]:
    """Each spoken word with the times the captions gave it (first to last character), and
    the character offsets (spaces aside) where one caption ends and the next begins."""
    chars: list[tuple[float, float]] = []  # per non-space character of the captions
    bounds: list[int] = []
    for ev in run.finals:
        for w in ev.alternatives[0].words or []:
            chars += [(w.start_time, w.end_time)] * len(str(w).replace(" ", ""))
        bounds.append(len(chars))
    out: list[Timed] = []
    pos = 0
    for w in speech.words:
        n = len(w.text.replace(" ", ""))
        span = chars[pos : pos + n]
        pos += n
        if w.text.strip() in {".", ",", "?", "。", "，", "、", "？", " ?"} or not span:
            continue
        out.append(Timed(w.text.strip(), w.start_s, w.end_s, span[0][0], span[-1][1]))
    assert pos == len(chars)
    return out, bounds[:-1]


def word_bounds(speech: SynthesizedSpeech) -> set[int]:
    pos, out = 0, {0}
    for w in speech.words:
        pos += len(w.text.replace(" ", ""))
        out.add(pos)
    return out


def check_run(run: Run, speech: SynthesizedSpeech, language: str, tolerance: float) -> float:
    text = transcript(run, language)
    assert "\ufffd" not in text
    assert " ".join(text.split()) == " ".join(speech.text.split()), "every word exactly once"
    timed, bounds = align(run, speech)
    assert set(bounds) <= word_bounds(speech), "a caption boundary inside a word"
    worst = 0.0
    prev = (0.0, 0.0)
    for t in timed:
        assert t.est_start <= t.est_end
        assert (t.est_start, t.est_end) >= prev or t.est_start >= prev[0], "times go back"
        prev = (t.est_start, t.est_end)
        worst = max(worst, abs(t.est_start - t.start), abs(t.est_end - t.end))
    assert worst <= tolerance, "; ".join(
        str(x)
        for x in [
            (t.text, round(t.est_start - t.start, 3), round(t.est_end - t.end, 3)) for t in timed
        ]
    )
    return worst


@pytest.mark.parametrize("language", sorted(SCRIPTS))
async def test_every_language_exact_with_honest_times(language: str) -> None:
    async with VLLMRealtimeEmulator(fast=True, language=language) as emu:
        engine = STT(base_url=emu.url, language=language)
        speech = synthesize(SCRIPTS[language], language=language, sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 20))
        await engine.aclose()
    check_run(run, speech, language, tolerance=TOLERANCE[language])


# The target, in every language, for text released as it is heard; held bursts below.
TOLERANCE = {"en": 0.15, "fr": 0.15, "de": 0.15, "es": 0.15, "zh": 0.15, "ja": 0.15}


# Measured with this emulator (README "Word times"): after a hold, words in scripts with
# spaces within 150 ms; Chinese characters released in one run are grouped by the onsets with
# less certainty (which character starts the next word is not in the output): the target is
# missed there, and this bound only keeps it from getting worse.
HELD_TOLERANCE = {"en": 0.15, "zh": 0.3}


@pytest.mark.parametrize("language", ["en", "zh"])
async def test_burst_after_held_text_keeps_honest_times(language: str) -> None:
    """The model holds text for a second and releases it one token per step: still every
    word once, times in order, never squeezed into one step, and shown where they were
    spoken (benchmarks/word_times.py: 60 ms in English; Chinese characters of a burst that
    came out as one run are grouped by the onsets with less certainty)."""
    async with VLLMRealtimeEmulator(fast=True, language=language) as emu:
        emu.hold_s = 1.0
        engine = STT(base_url=emu.url, language=language)
        speech = synthesize(SCRIPTS[language], language=language, sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 20))
        await engine.aclose()
    check_run(run, speech, language, tolerance=HELD_TOLERANCE[language])
    words = [w for ev in run.finals for w in ev.alternatives[0].words or []]
    assert all(w.end_time - w.start_time >= 0.02 for w in words)


@pytest.mark.parametrize("language", ["zh", "ja"])
async def test_cjk_captions_are_cut_by_max_segment(language: str) -> None:
    words = SCRIPTS[language].replace("<pause:900>", "").replace("。", "").split()
    script = " ".join(words * 3) + " 。"  # about 15 s without a pause
    async with VLLMRealtimeEmulator(fast=True, language=language) as emu:
        engine = STT(base_url=emu.url, language=language, max_segment_s=4.0)
        speech = synthesize(script, language=language, sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 20))
        await engine.aclose()
    check_run(run, speech, language, tolerance=0.45)
    assert len(run.finals) >= speech.duration_s // 4
    for ev in run.finals:
        data = ev.alternatives[0]
        assert data.end_time - data.start_time <= 4.0 + 0.6  # cut before the word past 4 s


RUT_SCRIPT = " <pause:300> ".join(
    ["hello world the meeting starts now .", "we can hear the quick brown fox .",
     "jumps over the lazy dog .", "good morning everyone let us begin .",
     "next slide please , thank you .", "hello world the meeting starts now ."]
)  # fmt: skip  # one utterance of about 14 s: replayed whole from the 20 s history


async def _rut_run(emu: VLLMRealtimeEmulator) -> tuple[Run, list[BlankRut], STT]:
    engine = STT(base_url=emu.url)
    seen: list[BlankRut] = []
    engine.on("blank_rut", seen.append)
    speech = synthesize(RUT_SCRIPT, sample_rate=48000)
    run = await transcribe(engine, frames_of(speech, 20), timeout=60.0)
    await engine.aclose()
    return run, seen, engine


async def test_rut_on_one_socket_recovers_on_a_fresh_one() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.rut_next_connections(1)
        run, seen, _ = await _rut_run(emu)
    speech = synthesize(RUT_SCRIPT)
    assert " ".join(run.text.split()) == " ".join(speech.text.split())
    assert [ev.persistent for ev in seen] == [False]
    stats = run.stream.stats  # type: ignore[union-attr]
    assert (stats.blank_ruts, stats.blank_ruts_persistent) == (1, 0)


async def test_rut_on_every_socket_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.rut = True
        with caplog.at_level("WARNING", logger="livekit.plugins.voxtral_vllm"):
            run, seen, _ = await _rut_run(emu)
    assert run.finals == []
    assert [ev.persistent for ev in seen] == [False, True]
    stats = run.stream.stats  # type: ignore[union-attr]
    assert (stats.blank_ruts, stats.blank_ruts_persistent) == (1, 1)
    assert sum("47614" in r.getMessage() for r in caplog.records) == 2
    assert stt.SpeechEventType.END_OF_SPEECH in run.kinds


async def test_stt_metrics_carry_vllm_usage() -> None:
    """Issue 11, item 8: LiveKit 1.8.9 builds STTMetrics from RECOGNITION_USAGE's audio
    duration, input and output tokens (RecognitionUsage has no other field); total_tokens
    then defaults to their sum, which is vLLM's usage.total_tokens (prompt + completion)."""
    metrics: list[object] = []
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url)
        engine.on("metrics_collected", metrics.append)
        speech = synthesize("hello world . <pause:900> thank you .", sample_rate=48000)
        await transcribe(engine, frames_of(speech, 20))
        await engine.aclose()
        usages = [g.usage for c in emu.connections for g in c.generations if g.usage]
    # (the others, with no request id, report connection times)
    metrics = [m for m in metrics if m.request_id]  # type: ignore[attr-defined]
    assert len(metrics) == len(usages) >= 2
    assert sum(m.total_tokens for m in metrics) == sum(u["total_tokens"] for u in usages)  # type: ignore[attr-defined]
    assert sum(m.input_tokens for m in metrics) == sum(u["prompt_tokens"] for u in usages)  # type: ignore[attr-defined]
    assert all(m.audio_duration > 0 for m in metrics)  # type: ignore[attr-defined]
