"""How close the captions' word times are to where the words were spoken (issue 11, item 4).

The STT runs through the emulator in its real-token mode (one Tekken token per 80 ms step,
queued from the step covering each word's end), in six languages, with the model releasing
text at once or holding it back (``hold_s``) and releasing it in a burst. Each spoken word's
caption time (first character's start, last character's end) is compared with the synthetic
speech's truth. Prints a table and writes ``results/word_times.json``.

    python benchmarks/word_times.py
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from pathlib import Path

from livekit import rtc

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import SynthesizedSpeech, VLLMRealtimeEmulator, synthesize

os.environ.setdefault("VOXTRAL_VLLM_ENDPOINTER", "energy")

RESULTS = Path(__file__).parent / "results"
SCRIPTS = {
    "en": "hello world , 2026 😀 don't stop the meeting now . <pause:900> "
    "we can hear the quick brown fox . thank you everyone .",
    "fr": "bonjour Zoë , aujourd'hui c'est prêt ? <pause:900> "
    "merci 2026 équipe 😀 bienvenue tous .",
    "de": "hallo Welt , Straße Größe 2026 🎉 geht's los . <pause:900> danke Zoë schnelle Fuchs .",
    "es": "hola mundo , ¿qué año 2026 pingüino niño ? <pause:900> gracias todos 😀 buenos días .",
    "zh": "你好 大家 ， 今天 在 公园 散步 。 <pause:900> 2026 年 北京 会议 开始 😀 吧 。",
    "ja": "こんにちは 皆さん 、 今日 は 公園 を 散歩 です 。 <pause:900> 2026 年 東京 会議 です 。",
}
MARKS = {".", ",", "?", "。", "，", "、", "？"}


async def run_one(language: str, hold_s: float) -> list[tuple[float, float]]:
    speech = synthesize(SCRIPTS[language], language=language, sample_rate=48000)
    async with VLLMRealtimeEmulator(fast=True, language=language) as emu:
        emu.hold_s = hold_s
        engine = STT(base_url=emu.url, language=language)
        stream = engine.stream()
        finals: list[list[tuple[str, float, float]]] = []

        async def read() -> None:
            async for ev in stream:
                if ev.alternatives and ev.type.value == "final_transcript":
                    words = ev.alternatives[0].words or []
                    finals.append([(str(w), w.start_time, w.end_time) for w in words])

        reader = asyncio.create_task(read())
        n = speech.sample_rate // 50
        for chunk in speech.frames(20):
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), speech.sample_rate, 1, n))
        stream.end_input()
        await asyncio.wait_for(reader, 60)
        await stream.aclose()
        await engine.aclose()
    return errors(finals, speech)


def errors(
    finals: list[list[tuple[str, float, float]]], speech: SynthesizedSpeech
) -> list[tuple[float, float]]:
    chars = [(s, e) for words in finals for t, s, e in words for _ in t.replace(" ", "")]
    out, pos = [], 0
    for w in speech.words:
        n = len(w.text.replace(" ", ""))
        span = chars[pos : pos + n]
        pos += n
        if w.text.strip() not in MARKS and span:
            out.append((span[0][0] - w.start_s, span[-1][1] - w.end_s))
    return out


def main() -> None:
    rows = []
    for hold in (0.0, 0.5, 1.0):
        for language in SCRIPTS:
            errs = asyncio.run(run_one(language, hold))
            flat = [abs(e) for pair in errs for e in pair]
            rows.append(
                {
                    "language": language,
                    "hold_s": hold,
                    "words": len(errs),
                    "median_ms": round(1000 * statistics.median(flat)),
                    "max_ms": round(1000 * max(flat)),
                    "within_150ms": round(sum(e <= 0.15 for e in flat) / len(flat), 3),
                }
            )
    print(f"{'lang':5} {'hold':>5} {'words':>5} {'median':>7} {'max':>6} {'<=150ms':>8}")
    for r in rows:
        print(
            f"{r['language']:5} {r['hold_s']:5.1f} {r['words']:5d} {r['median_ms']:5d}ms "
            f"{r['max_ms']:4d}ms {100 * r['within_150ms']:7.1f}%"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "word_times.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
