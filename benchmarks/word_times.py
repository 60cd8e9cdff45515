"""How close the captions' word times are to where the words were spoken (issue 11, item 4).

The STT runs through the emulator in its real-token mode (one Tekken token per 80 ms step,
queued from the step covering each word's end), in six languages, with the model releasing
text at once or holding it back (``hold_s``) and releasing it in a burst. Each spoken word's
caption time (first character's start, last character's end) is compared with the synthetic
speech's truth. Prints a table and writes ``results/word_times.json``.

``--random N`` adds N random scripts per language and hold (6-14 words of the emulator's
lexicon, commas, full stops and 0.7 s pauses, seeded 0..N-1), pooled per row.

    python benchmarks/word_times.py [--random 20]

The truth exists only for the emulator's tone speech, which has one onset per word and per
punctuation mark (each is a tone); real voices give the endpointer an onset per phrase at
best, and the emulator cannot transcribe them (empty deltas), so they have no figure here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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


def random_script(language: str, seed: int) -> str:
    from livekit_plugins_voxtral_vllm.testing.lexicon import lexicon

    rnd = random.Random(seed)
    lex = lexicon(language)
    stop, comma = lex.words[-3], lex.words[-2]  # the slots of "." and ","
    words = [w for w in lex.words if w not in lex.markers]
    parts = []
    for _ in range(rnd.randint(6, 14)):
        parts.append(rnd.choice(words))
        r = rnd.random()
        if r < 0.15:
            parts.append(rnd.choice([comma, stop]))
        elif r < 0.22:
            parts.append("<pause:700>")
    parts.append(stop)
    return " ".join(parts)


async def run_one(
    language: str, hold_s: float, script: str | None = None
) -> list[tuple[float, float]]:
    text = SCRIPTS[language] if script is None else script
    speech = synthesize(text, language=language, sample_rate=48000)
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


def row(
    language: str, hold: float, errs: list[tuple[float, float]], scripts: str
) -> dict[str, object]:
    flat = [abs(e) for pair in errs for e in pair]
    return {
        "scripts": scripts,
        "language": language,
        "hold_s": hold,
        "words": len(errs),
        "median_ms": round(1000 * statistics.median(flat)),
        "max_ms": round(1000 * max(flat)),
        "within_150ms": round(sum(e <= 0.15 for e in flat) / len(flat), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random", type=int, default=0, metavar="N")
    args = parser.parse_args()
    rows = []
    for hold in (0.0, 0.5, 1.0):
        for language in SCRIPTS:
            rows.append(row(language, hold, asyncio.run(run_one(language, hold)), "fixed"))
    if args.random:
        for hold in (0.0, 0.5, 1.0):
            for language in SCRIPTS:
                errs: list[tuple[float, float]] = []
                for seed in range(args.random):
                    script = random_script(language, seed)
                    errs += asyncio.run(run_one(language, hold, script))
                rows.append(row(language, hold, errs, f"random x{args.random}"))
    head = ("scripts", "lang", "hold", "words", "median", "max", "<=150ms")
    print("{:10} {:5} {:>5} {:>5} {:>7} {:>6} {:>8}".format(*head))
    for r in rows:
        print(
            f"{r['scripts']:10} {r['language']:5} {r['hold_s']:5.1f} {r['words']:5d} "
            f"{r['median_ms']:5d}ms {r['max_ms']:4d}ms {100 * r['within_150ms']:7.1f}%"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "word_times.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
