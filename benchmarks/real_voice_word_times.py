"""Word times on real, coarticulated speech (issue 11, item 4): what ``word_times.py`` cannot
measure, since the emulator's tone speech gives the endpointer one onset per word.

Speech is espeak-ng's (en, fr, de, es, zh), two or three sentences a clip with pauses between,
under faint noise; the truth is espeak-ng's own word timing (``_espeak_words``). The emulator
cannot recognise voices, so each generation gets a scripted recogniser: it finds where the
generation's audio lies in the clip and hands the engine each word of the script once the
word's end has been heard, exactly where tone speech hands over a tone's word; from there on
the emulator is unchanged (real Tekken tokens, one per 80 ms step, held for ``hold_s`` when
asked). The STT and its endpointer (Silero, the default, or the energy one) see only the
audio. Each word's caption time (start, end) is compared with the truth. Prints a table and
writes ``results/real_voice_word_times.json``.

    python benchmarks/real_voice_word_times.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from _espeak_words import RATE, SpokenWord, available, speak
from livekit import rtc

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

RESULTS = Path(__file__).parent / "results"
# (language, espeak-ng voice, words per minute, sentences)
CLIPS: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("en", "en-us", 175, ("Can everyone see my screen, or should I share it again?",
                          "The quarterly numbers look better than we expected.")),
    ("en", "en", 200, ("Let's move the release to Thursday, after the security review.",
                       "Okay, so the next item on the agenda is hiring.",
                       "Does anyone have questions before we wrap up?")),
    ("en", "en-us", 140, ("Could you repeat the last part? You cut out for a second.",
                          "Sure, I'll send the document right after this call.")),
    ("en", "en", 165, ("I think the problem is in the network configuration.",
                       "The build failed again, but only on the arm runners.",
                       "Hmm, let me think about that for a moment.")),
    ("fr", "fr", 170, ("Je pense que nous pouvons terminer avant midi.",
                       "Bonjour à tous, la réunion commence maintenant.",
                       "Pouvez-vous partager votre écran, s'il vous plaît?",
                       "Merci beaucoup, nous reprendrons la semaine prochaine.")),
    ("de", "de", 160, ("Wir sollten das Angebot noch einmal genau prüfen.",
                       "Guten Morgen, können alle meinen Bildschirm sehen?",
                       "Die Zahlen sind besser als erwartet, aber nicht genug.",
                       "Lass uns das nächste Woche besprechen.")),
    ("es", "es", 180, ("La reunión de mañana empieza a las diez en punto.",
                       "Gracias a todos, nos vemos la próxima semana.",
                       "¿Puedes compartir tu pantalla otra vez, por favor?",
                       "Creo que el problema está en la configuración de la red.")),
    ("zh", "cmn", 170, ("我们今天在公园散步，天气很好。", "会议现在开始，请大家准备。",
                        "你能再说一遍吗？刚才听不清楚。", "明天上午十点我们再讨论这个问题。")),
)  # fmt: skip
PAUSE_S = 0.9
NOISE_DBFS = -60.0


@dataclass
class Clip:
    language: str
    samples: npt.NDArray[np.int16]
    words: list[SpokenWord]


def make_clip(
    language: str,
    voice: str,
    wpm: int,
    sentences: tuple[str, ...],
    noise_dbfs: float = NOISE_DBFS,
) -> Clip:
    parts: list[npt.NDArray[np.int16]] = [np.zeros(int(0.5 * RATE), np.int16)]
    words: list[SpokenWord] = []
    pos = parts[0].size
    for text in sentences:
        spoken = speak(voice, wpm, text)
        shift = pos / RATE
        words += [
            SpokenWord(w.text, w.start_s + shift, w.end_s + shift, w.exact) for w in spoken.words
        ]
        parts += [spoken.samples, np.zeros(int(PAUSE_S * RATE), np.int16)]
        pos += spoken.samples.size + int(PAUSE_S * RATE)
    signal = np.concatenate(parts).astype(np.float64)
    rng = np.random.default_rng(0)  # (also makes every stretch of the clip unique)
    signal += rng.normal(0.0, 32768.0 * 10 ** (noise_dbfs / 20), signal.size)
    samples = np.clip(np.round(signal), -32768, 32767).astype(np.int16)
    return Clip(language, samples, words)


def said(word: SpokenWord, language: str, first: bool) -> str:
    """The word as the model writes it: a leading space between words of spaced scripts."""
    return word.text if language == "zh" else (" " + word.text)


@dataclass
class ScriptedDecoder:
    """The emulator's recogniser for one generation of a known clip: where the generation's
    audio begins in the clip is found by matching its first samples; a word is heard when the
    audio fed reaches its end (the right pad of silence is no audio of the clip). A word that
    began before the generation's audio is not heard (a continuation cut inside it would lose
    it: the benchmark then fails to match)."""

    clip: Clip
    fed: list[npt.NDArray[np.int16]] = field(default_factory=list)
    offset: int | None = None
    next_word: int = 0
    real: int = 0

    def feed(self, samples: npt.NDArray[np.generic]) -> None:
        if not np.any(samples):
            return  # the right pad (the clip's audio is never all zeros: it has noise)
        self.real += len(samples)
        if self.offset is None:
            self.fed.append(np.asarray(samples, np.int16))
            head = np.concatenate(self.fed)
            if head.size >= 64:
                self.offset = self._locate(head[:64])
                self.fed.clear()

    def _locate(self, head: npt.NDArray[np.int16]) -> int:
        hay = self.clip.samples
        windows = np.lib.stride_tricks.sliding_window_view(hay, head.size)
        hits = np.flatnonzero((windows == head).all(axis=1))
        if hits.size != 1:
            raise RuntimeError(f"generation audio found {hits.size} times in the clip")
        start = int(hits[0])
        words = self.clip.words
        self.next_word = next(
            (i for i, w in enumerate(words) if w.start_s * RATE >= start - 0.03 * RATE),
            len(words),
        )
        return start

    def pop_tokens(self, before_sample: int) -> list[str]:
        if self.offset is None:
            return []
        out: list[str] = []
        words = self.clip.words
        while self.next_word < len(words):
            w = words[self.next_word]
            if w.end_s * RATE > self.offset + min(before_sample, self.real):
                break
            out.append(said(w, self.clip.language, self.next_word == 0))
            self.next_word += 1
        return out


async def run_one(
    clip: Clip, hold_s: float, endpointer: str
) -> tuple[list[tuple[float, float]], str]:
    async with VLLMRealtimeEmulator(
        fast=True, decoder_factory=lambda: ScriptedDecoder(clip)
    ) as emu:
        emu.hold_s = hold_s
        engine = STT(base_url=emu.url, language=clip.language, endpointer=endpointer)
        stream = engine.stream()
        finals: list[tuple[str, float, float]] = []
        texts: list[str] = []

        async def read() -> None:
            async for ev in stream:
                if ev.alternatives and ev.type.value == "final_transcript":
                    texts.append(ev.alternatives[0].text)
                    for w in ev.alternatives[0].words or []:
                        finals.append((str(w), w.start_time, w.end_time))

        reader = asyncio.create_task(read())
        n = RATE // 50
        for i in range(0, clip.samples.size - n + 1, n):
            chunk = clip.samples[i : i + n]
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, n))
            if i % (10 * n) == 0:
                await asyncio.sleep(0.01)  # about 20x real time: vLLM keeps up
        stream.end_input()
        await asyncio.wait_for(reader, 120)
        await stream.aclose()
        await engine.aclose()
    got = "".join(t for t, _, _ in finals) if clip.language == "zh" else " ".join(texts)
    want = (
        "".join(w.text for w in clip.words)
        if clip.language == "zh"
        else " ".join(w.text for w in clip.words)
    )
    if " ".join(got.split()) != " ".join(want.split()) or len(finals) != len(clip.words):
        return [], f"transcript differs: {got!r}"
    return [
        (s - w.start_s, e - w.end_s)
        for (_, s, e), w in zip(finals, clip.words, strict=True)
        if w.exact
    ], ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpointers", default="silero,energy")
    parser.add_argument(
        "--noise-dbfs", type=float, default=NOISE_DBFS, help="white noise, RMS (-60)"
    )
    args = parser.parse_args()
    if not available():
        raise SystemExit("needs Debian's espeak-ng (libespeak-ng.so.1) and sox")
    os.environ.pop("VOXTRAL_VLLM_ENDPOINTER", None)
    clips = [make_clip(*c, noise_dbfs=args.noise_dbfs) for c in CLIPS]
    rows = []
    for endpointer in args.endpointers.split(","):
        for hold in (0.0, 0.5, 1.0):
            for language in dict.fromkeys(c.language for c in clips):
                errs: list[tuple[float, float]] = []
                failed: list[str] = []
                for clip in (c for c in clips if c.language == language):
                    e, why = asyncio.run(run_one(clip, hold, endpointer))
                    errs += e
                    if why:
                        failed.append(why)
                flat = [abs(x) for pair in errs for x in pair]
                starts = [abs(s) for s, _ in errs]
                rows.append(
                    {
                        "endpointer": endpointer,
                        "language": language,
                        "hold_s": hold,
                        "words": len(errs),
                        "clips_failed": failed,
                        "within_150ms": round(
                            sum(max(abs(s), abs(e)) <= 0.15 for s, e in errs) / len(errs), 3
                        )
                        if errs
                        else None,
                        "starts_within_150ms": round(
                            sum(s <= 0.15 for s in starts) / len(starts), 3
                        )
                        if starts
                        else None,
                        "median_ms": round(1000 * statistics.median(flat)) if flat else None,
                        "p90_ms": round(1000 * float(np.percentile(flat, 90))) if flat else None,
                        "max_ms": round(1000 * max(flat)) if flat else None,
                    }
                )
                r = rows[-1]
                print(
                    f"{endpointer:7} {language:3} hold {hold:.1f}  words {r['words']:3}  "
                    f"both<=150ms {100 * (r['within_150ms'] or 0):5.1f}%  "
                    f"start<=150ms {100 * (r['starts_within_150ms'] or 0):5.1f}%  "
                    f"median {r['median_ms']}ms  p90 {r['p90_ms']}ms  max {r['max_ms']}ms"
                    + (f"  FAILED {failed}" if failed else "")
                )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_voice_word_times.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
