"""Soak: hours of audio through ONE stream in accelerated time; memory must stay flat.

The vLLM emulator runs in its own process in fast mode (no compute time per step) with a small
``max_model_len``, so long monologues roll over to new generations again and again; the
stream gets ``--minutes`` of synthesized conversation (default 180: three hours) as
``rtc.AudioFrame``s at ``--speedup`` times real time. Every simulated 10 minutes this process
records its RSS, the memory tracemalloc sees allocated by Python and numpy (``--no-tracemalloc``
to skip it: it slows every allocation down), and the number of live objects, after a full
garbage collection. At the end: the growth per simulated hour (least-squares slope after the
first sample), the biggest growing allocation sites, the stream's counters, and whether every
word came out exactly once, in order.

Run: ``.venv/bin/python benchmarks/soak.py [--minutes 180] [--speedup 30]``. Prints a table
and writes ``benchmarks/results/soak.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import random
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import numpy as np
from _common import (
    RESULTS,
    WORDS,
    EmulatorProcess,
    conversation_tokens,
    cpu_s,
    rss_bytes,
)
from livekit import rtc
from livekit.agents import APIConnectOptions, stt

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import synthesize
from livekit_plugins_voxtral_vllm.testing.speech import burst_ms

SAMPLE_EVERY_S = 600.0
SCRIPT_S = 60.0


def monologue_tokens(seed: int, seconds: float) -> list[str]:
    """Sentence after sentence with only breaths between them (150-450 ms): the endpointer
    never ends the utterance, so the generation runs into max_model_len and rolls over."""
    rng = random.Random(seed)
    tokens: list[str] = []
    total = 0.3
    while total < seconds:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        sentence.append(rng.choice("....?,"))
        tokens += sentence
        total += sum(burst_ms(t) + 60 for t in sentence) / 1000
        pause = rng.randint(150, 450)
        tokens.append(f"<pause:{pause}>")
        total += pause / 1000
    tokens.append("<pause:1500>")
    return tokens


@dataclass
class Sample:
    audio_min: float
    wall_s: float
    rss_mb: float
    traced_mb: float | None
    objects: int
    emulator_rss_mb: float


class Checker:
    """Compares the finals' words with the script's as they arrive (nothing is kept but a
    few words after a mismatch). After a mismatch it resynchronises on the next three words
    received, up to 80 script words ahead: a word lost or repeated counts once, and audio
    dropped by a catch-up counts the words it held, not everything after it."""

    _AHEAD = 80
    _GRAM = 3

    def __init__(self, scripts_words: list[list[str]]) -> None:
        self._words = [w for words in scripts_words for w in words]
        self._pos = 0
        self._held: list[str] = []  # received after a mismatch, not placed yet
        self.matched = 0
        self.mismatched = 0
        self.first_mismatch: str | None = None

    def _want(self, k: int) -> str:
        return self._words[k % len(self._words)]

    def check(self, text: str) -> None:
        for word in text.split():
            if not self._held and word == self._want(self._pos):
                self.matched += 1
                self._pos += 1
                continue
            if not self._held and self.first_mismatch is None:
                self.first_mismatch = (
                    f"got {word!r}, want {self._want(self._pos)!r} at word {self._pos}"
                )
            self._held.append(word)
            self._resync()

    def _resync(self) -> None:
        while len(self._held) >= self._GRAM:
            gram = self._held[: self._GRAM]
            skip = next(
                (
                    k
                    for k in range(self._AHEAD)
                    if all(self._want(self._pos + k + i) == w for i, w in enumerate(gram))
                ),
                None,
            )
            if skip is None:  # the first held word is not in the script here: extra
                self.mismatched += 1
                self._held.pop(0)
                continue
            self.mismatched += skip  # script words that never came
            self._pos += skip
            held, self._held = self._held, []
            for word in held:
                if not self._held and word == self._want(self._pos):
                    self.matched += 1
                    self._pos += 1
                else:
                    self._held.append(word)
            return

    def finish(self) -> None:
        """Words still held at the end count as wrong."""
        self.mismatched += len(self._held)
        self._held = []

    @property
    def expected_so_far(self) -> int:
        return self._pos


def slope_per_hour(samples: list[Sample], attr: str) -> float | None:
    """Least-squares growth in MB per simulated hour, after the first (warm-up) sample."""
    pts = [(s.audio_min, getattr(s, attr)) for s in samples[1:] if getattr(s, attr) is not None]
    if len(pts) < 3:
        return None
    x = np.array([p[0] for p in pts]) / 60.0
    y = np.array([p[1] for p in pts], dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0])


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rate, frame_ms = (24000, 50) if args.frames == "roomio" else (48000, 10)
    n = rate * frame_ms // 1000
    scripts = []
    for k in range(8):
        tokens = (monologue_tokens if k % 2 else conversation_tokens)(200 + k, SCRIPT_S)
        speech = synthesize(tokens, rate, seed=k)
        pcm = speech.samples
        pad = -len(pcm) % n
        if pad:
            pcm = np.concatenate((pcm, np.zeros(pad, np.int16)))
        scripts.append((speech, pcm))
    frames = [
        [rtc.AudioFrame(s[i : i + n].tobytes(), rate, 1, n) for i in range(0, len(s), n)]
        for _, s in scripts
    ]
    checker = Checker([sp.text.split() for sp, _ in scripts])
    emu = EmulatorProcess(fast=True, max_model_len=args.max_model_len)
    session = aiohttp.ClientSession()
    engine = STT(base_url=emu.url, http_session=session)
    conn = APIConnectOptions(max_retry=5, retry_interval=0.5, timeout=10.0)
    counts = {"interims": 0, "finals": 0}
    samples: list[Sample] = []
    types: list[Counter[str]] = []  # at the first sample and the latest
    started = time.monotonic()
    cpu0 = cpu_s()

    def sample(audio_s: float) -> None:
        gc.collect()
        objects = gc.get_objects()
        counts = Counter(type(o).__qualname__ for o in objects)
        if len(types) == 2:
            types[1] = counts
        else:
            types.append(counts)
        traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.tracemalloc else None
        s = Sample(
            audio_min=round(audio_s / 60, 2),
            wall_s=round(time.monotonic() - started, 1),
            rss_mb=round(rss_bytes() / 2**20, 2),
            traced_mb=round(traced, 3) if traced is not None else None,
            objects=len(objects),
            emulator_rss_mb=round(emu.process.memory_info().rss / 2**20, 1),
        )
        samples.append(s)
        print(
            f"  {s.audio_min:7.1f} min audio  {s.wall_s:6.1f} s wall  RSS {s.rss_mb:7.2f} MB  "
            f"traced {s.traced_mb if s.traced_mb is not None else '-':>8} MB  "
            f"objects {s.objects}",
            flush=True,
        )

    async def consume(stream: stt.RecognizeStream) -> None:
        async for ev in stream:
            if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                counts["finals"] += 1
                checker.check(ev.alternatives[0].text)
            elif ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT:
                counts["interims"] += 1

    snapshot_first: tracemalloc.Snapshot | None = None
    if args.tracemalloc:
        tracemalloc.start(args.trace_frames)
    stream = engine.stream(conn_options=conn)
    reader = asyncio.create_task(consume(stream))
    frame_s = frame_ms / 1000
    batch = max(1, round(0.5 / frame_s))  # push half a second of audio at a time
    total_frames = int(args.minutes * 60 / frame_s)
    next_sample = SAMPLE_EVERY_S
    t0 = time.monotonic()
    pushed = 0
    failure: str | None = None
    try:
        script_i = 0
        cursor = 0
        while pushed < total_frames:
            if reader.done():  # the stream ended by itself: it failed
                exc = reader.exception() if not reader.cancelled() else None
                failure = f"stream failed at {pushed * frame_s / 60:.1f} min of audio: {exc!r}"
                print(failure, flush=True)
                break
            try:
                for _ in range(min(batch, total_frames - pushed)):
                    stream.push_frame(frames[script_i][cursor])
                    cursor += 1
                    if cursor == len(frames[script_i]):
                        script_i = (script_i + 1) % len(frames)
                        cursor = 0
                    pushed += 1
            except RuntimeError:  # closed: the reader's outcome says why
                await asyncio.wait([reader], timeout=5)
                continue
            audio_s = pushed * frame_s
            delay = t0 + audio_s / args.speedup - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            if delay < -batch * frame_s / args.speedup:
                # behind (this machine is slower than --speedup, or a sample stalled the
                # loop): carry on from here rather than catch up with a burst of audio
                t0 -= delay
            if audio_s >= next_sample:
                sample(audio_s)
                if snapshot_first is None and args.tracemalloc:
                    snapshot_first = tracemalloc.take_snapshot()
                next_sample += SAMPLE_EVERY_S
        if failure is None:
            stream.end_input()
            try:
                await asyncio.wait_for(reader, 120)
            except Exception as e:  # reported, like a failure while pushing
                failure = f"stream failed while finishing: {e!r}"
        checker.finish()
        sample(pushed * frame_s)
        growth: list[str] = []
        if args.tracemalloc and snapshot_first is not None:
            last = tracemalloc.take_snapshot()
            for stat in last.compare_to(snapshot_first, "lineno")[:8]:
                growth.append(str(stat))
        stats = asdict(stream.stats)
        type_growth = (types[1] - types[0]).most_common(10) if len(types) == 2 else []
    finally:
        reader.cancel()
        await stream.aclose()
        await engine.aclose()
        await session.close()
        emu.stop()
        if args.tracemalloc:
            tracemalloc.stop()
    wall = time.monotonic() - started
    return {
        "frames": f"{rate // 1000} kHz mono, {frame_ms} ms",
        "audio_minutes": round(pushed * frame_s / 60, 2),
        "wall_s": round(wall, 1),
        "failure": failure,
        "achieved_speedup": round(pushed * frame_s / wall, 1),
        "cpu_s": round(cpu_s() - cpu0, 1),
        "max_model_len": args.max_model_len,
        "tracemalloc": args.tracemalloc,
        "samples": [asdict(s) for s in samples],
        "rss_growth_mb_per_hour": _round(slope_per_hour(samples, "rss_mb")),
        "traced_growth_mb_per_hour": _round(slope_per_hour(samples, "traced_mb")),
        "objects_growth_per_hour": _round(slope_per_hour(samples, "objects")),
        "top_traced_growth": growth,
        "top_object_type_growth": type_growth,
        "events": counts,
        "words": {
            "matched": checker.matched,
            "mismatched": checker.mismatched,
            "first_mismatch": checker.first_mismatch,
        },
        "stream_stats": stats,
    }


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=180.0, help="audio to push (180)")
    parser.add_argument("--speedup", type=float, default=30.0, help="times real time (30)")
    parser.add_argument("--max-model-len", type=int, default=256, help="the emulator's (256)")
    parser.add_argument("--frames", choices=["roomio", "48k10"], default="roomio")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--trace-frames", type=int, default=1, help="tracemalloc frames (1)")
    parser.add_argument("--log-level", default="WARNING", help="the plugin's (WARNING)")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"soak: {args.minutes:g} min of audio at {args.speedup:g}x, max_model_len "
        f"{args.max_model_len}, tracemalloc {'on' if args.tracemalloc else 'off'}",
        flush=True,
    )
    result = asyncio.run(soak(args))
    print(
        f"\n{result['audio_minutes']} min of audio in {result['wall_s']} s "
        f"({result['achieved_speedup']}x), CPU {result['cpu_s']} s"
    )
    print(
        f"growth per simulated hour: RSS {result['rss_growth_mb_per_hour']} MB, traced "
        f"{result['traced_growth_mb_per_hour']} MB, objects {result['objects_growth_per_hour']}"
    )
    w = result["words"]
    print(f"words: {w['matched']} exact, {w['mismatched']} wrong ({w['first_mismatch']})")
    print(f"events: {result['events']}")
    if result["failure"]:
        print("FAILED:", result["failure"])
    print("stream.stats:", json.dumps(result["stream_stats"]))
    for line in result["top_traced_growth"][:5]:
        print("  ", line)
    print("object types that grew (first sample to last):", result["top_object_type_growth"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "soak",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                **result,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
