"""A seeded sweep of the "every word exactly once at every limit" property (issue 11, items
2 and 5), for re-running by hand: dense scripts at the smallest accepted limits.

    .venv/bin/python -m tests.unit.limits_sweep              # 300 dense zh/ja scripts
    .venv/bin/python -m tests.unit.limits_sweep -n 600 --languages en,fr,de,es,zh,ja
    .venv/bin/python -m tests.unit.limits_sweep --seed 17 -v # one case, with its finals
    .venv/bin/python -m tests.unit.limits_sweep --seed 17 --trace  # ... with the core's log
    .venv/bin/python -m tests.unit.limits_sweep --delays 480 --stop-every 62,80  # vLLM stops
        # every generation after 62-80 steps (a max_model_len the client was not told)

Each case (seed ``i``) draws a delay, a max_model_len from the least ``STT`` accepts
(``connection.min_max_model_len``) up to ``--spread`` more, a language, a script of the
language's densest words (most tokens per step of sound) with pauses, and a vLLM version;
it drives ``StreamCore`` with the emulator's engine in real-token mode (the property test's
harness) and checks that ``end_input()`` ends the stream with exactly the spoken text. It
prints the failures (seed, limits, script, what came out) and the counts; the exit status is
1 if any case failed. Deterministic: the same seed is the same case on every machine.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from livekit_plugins_voxtral_vllm.connection import min_max_model_len
from livekit_plugins_voxtral_vllm.testing import RealtimeEngine, StepMath, lexicon, synthesize
from livekit_plugins_voxtral_vllm.testing.speech import SynthesizedSpeech, ToneDecoder
from livekit_plugins_voxtral_vllm.testing.tokens import expected_deltas

from .test_stream_core import Harness, harness

T = TypeVar("T")
SPACELESS = ("zh", "ja")


def dense_words(language: str, dense: bool = True) -> list[str]:
    """Script words of ``language``: the ones with the most tokens per step of sound if
    ``dense``, else all of them."""
    lex = lexicon(language)
    words = [w for w in lex.words if w not in lex.markers]
    if not dense:
        return words
    texts = dict(zip(lex.words, lex.texts, strict=True))
    return sorted(words, key=lambda w: -len(expected_deltas(texts[w])))[:8]


def script(
    language: str,
    pool: Sequence[str],
    count: int,
    pick: Callable[[Sequence[str]], str],
    pause: Callable[[], int],
) -> str:
    """``count`` words of ``pool`` with pauses, then the language's full stop. Speech denser
    than one token per 80 ms, sustained, outruns the model (which writes one token per step):
    what has not come out when a generation ends is never written, by vLLM either. Speakers
    breathe: a 400 ms pause at least every four words."""
    parts: list[str] = []
    run = 0
    for _ in range(count):
        parts.append(pick(pool))
        gap = pause()
        run = 0 if gap >= 400 else run + 1
        if run == 4:
            gap, run = 400, 0
        if gap:
            parts.append(f"<pause:{gap}>")
    if parts[-1].startswith("<pause"):
        parts.pop()  # the full stop right after the last word (the emulator's stop is a
        # 90 ms tone: alone after a pause, the endpointer rightly takes it for a click)
    return " ".join([*parts, lexicon(language).words[-3]])


PAUSES = [0, 0, 0, 150, 400, 900, 1500]


@dataclass(frozen=True)
class Case:
    delay_ms: int
    max_model_len: int
    language: str
    script: str
    version: str


def draw_case(
    seed: int,
    delays: Sequence[int] = (80, 160, 480),
    spread: int = 40,
    languages: Sequence[str] = SPACELESS,
    versions: Sequence[str] = ("0.31.0", "0.33.0"),
    dense: bool = True,
) -> Case:
    rng = random.Random(seed)

    def pick(seq: Sequence[T]) -> T:
        return seq[rng.randrange(len(seq))]

    delay = pick(delays)
    least = max(64, min_max_model_len(delay))
    max_model_len = rng.randint(least, least + spread)
    language = pick(languages)
    pool = dense_words(language, dense)
    text = script(language, pool, rng.randint(4, 24), pick, lambda: pick(PAUSES))
    return Case(delay, max_model_len, language, text, pick(versions))


def run_case(
    case: Case, trace: bool = False, stops: tuple[int, int, int] | None = None
) -> tuple[bool, str, str, str]:
    """(passed, what went wrong, expected text, the finals' text). ``trace``: print the
    core's log, the words' true times, each generation's deltas by step, and the finals.
    ``stops`` = (seed, lo, hi): vLLM stops every generation (unsolicited ``done``) after
    lo-hi steps, as at a max_model_len the client was not told."""
    on_engine: Callable[[RealtimeEngine, int], None] | None = None
    if stops is not None:
        rng = random.Random(stops[0])
        limits = [rng.randint(stops[1], stops[2]) for _ in range(1000)]
        prompt = StepMath(case.delay_ms).prompt_tokens

        def on_engine(engine: RealtimeEngine, index: int) -> None:
            engine.math = StepMath(case.delay_ms, prompt + limits[index % len(limits)])

    h = harness(
        on_engine=on_engine,
        transcription_delay_ms=case.delay_ms,
        max_model_len=case.max_model_len,
        engine_max_model_len=case.max_model_len,
        version=case.version,
        decoder_factory=lambda: ToneDecoder(16000, language=case.language),
    )
    speech = synthesize(case.script, language=case.language)
    h.push(speech.samples)
    h.end()  # no grace period: end_input() right after the last audio
    h.advance(5.0)
    if trace:
        _trace(h, speech)
    glue = "" if case.language in SPACELESS else " "
    got = glue.join(f.caption.text for f in h.finals())
    want = speech.text.strip()
    if not h.core.finished:
        return False, "end_input() did not end the stream", want, got
    if any(e.engine_fatal for e in h.all_engines):
        return False, "a generation overran the limit", want, got
    if got != want:
        return False, "text differs", want, got
    return True, "", want, got


def _trace(h: Harness, speech: SynthesizedSpeech) -> None:
    print("words (true times):")
    print("  " + "  ".join(f"{w.text}@{w.start_s:.2f}-{w.end_s:.2f}" for w in speech.words))
    for i, engine in enumerate(h.all_engines):
        for g in engine.generations:
            steps = " ".join(f"{k}:{d!r}" for k, d in enumerate(g.deltas) if d)
            print(f"engine {i} generation {g.index} ({g.steps} steps, {g.finished_reason}):")
            print(f"  {steps}")
    for f in h.finals():
        times = " ".join(f"{w.text}@{w.start_s:.2f}-{w.end_s:.2f}" for w in f.caption.words)
        print(f"final {f.segment}: {times}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="cases (seeds 0..n-1)")
    ap.add_argument("--first", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, help="run this one seed only")
    ap.add_argument("--delays", default="80,160,480")
    ap.add_argument("--spread", type=int, default=40, help="max_model_len up to least+SPREAD")
    ap.add_argument("--languages", default="zh,ja")
    ap.add_argument(
        "--versions",
        help="default 0.31.0,0.33.0; 0.33.0 with --stop-every (a stop at the limit "
        "is an unsolicited done only from 0.32; before, it kills the engine)",
    )
    ap.add_argument("--all-words", action="store_true", help="every word, not the densest")
    ap.add_argument(
        "--stop-every",
        metavar="LO,HI",
        help="vLLM stops every generation after LO-HI steps (max_model_len not told)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--trace", action="store_true", help="the core's log and the deltas")
    args = ap.parse_args(argv)
    delays = [int(d) for d in args.delays.split(",")]
    languages = args.languages.split(",")
    versions = (args.versions or ("0.33.0" if args.stop_every else "0.31.0,0.33.0")).split(",")
    if args.trace:
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        logging.getLogger("livekit.plugins.voxtral_vllm").setLevel(logging.DEBUG)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.n)
    failed = 0
    for seed in seeds:
        case = draw_case(seed, delays, args.spread, languages, versions, not args.all_words)
        stops = None
        if args.stop_every:
            lo, hi = (int(x) for x in args.stop_every.split(","))
            stops = (seed, lo, hi)
        ok, why, want, got = run_case(case, args.trace, stops)
        if not ok or args.verbose:
            failed += not ok
            print(
                f"seed {seed}: {'ok' if ok else 'FAIL ' + why} delay={case.delay_ms} "
                f"max_model_len={case.max_model_len} {case.language} {case.version}\n"
                f"  script: {case.script}\n  want:   {want}\n  got:    {got}",
                flush=True,
            )
    print(f"{failed} of {len(seeds)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
