"""Socket-mode benchmark: what one socket per utterance costs in latency, next to a warm socket.

``socket_mode="per_utterance"`` opens the socket when speech starts instead of keeping one open
between utterances. The connect overlaps the audio: the endpointer decides "speech" about
``min_speech_ms`` after the onset, the generation starts with ``preroll_ms`` of audio, and vLLM
needs ``transcription_delay_ms + 82.5 ms`` of audio before its first step anyway. So a connect
shorter than that slack should add nothing; a longer one adds what exceeds it.

Both modes run side by side in one process, against one emulator process (real-time engine
clock), with the same utterances, for each simulated connect cost: ``--connect-ms`` adds that
much before every WebSocket connect (the TCP + upgrade round trips of a far server, or TLS),
in both modes (the warm mode pays it only when it (re)opens a socket, off the critical path).

Per utterance: *first text*, from the push of the frame holding the end of the utterance's
first word to the first interim with text; *final*, from the push of the end of its last word
to its last final. Plus the measured connect time itself (loopback + the simulated cost).

Run: ``.venv/bin/python benchmarks/socket_mode.py [--quick] [--connect-ms 0,50,150,300]``.
``--step-ms`` sets the emulated engine's time per step (10 ms; a loaded GPU takes longer, which
makes a replayed backlog slower to catch up). Prints a table and writes
``benchmarks/results/socket_mode_step<N>ms.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, WORDS, EmulatorProcess, summary_ms
from livekit import rtc
from livekit.agents import APIConnectOptions, stt

from livekit_plugins_voxtral_vllm import STT
from livekit_plugins_voxtral_vllm.testing import SynthesizedSpeech, synthesize

FRAME_MS = 20
RATE = 48000


def utterance_script(seed: int, count: int) -> SynthesizedSpeech:
    rng = random.Random(seed)
    tokens: list[str] = [f"<pause:{rng.randint(300, 900)}>"]
    for _ in range(count):
        tokens += [rng.choice(WORDS) for _ in range(rng.randint(3, 7))] + ["."]
        tokens.append(f"<pause:{rng.randint(1500, 2500)}>")
    return synthesize(tokens, sample_rate=RATE, seed=seed)


@dataclass
class Result:
    first_text: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    exact: int = 0
    streams: int = 0


def make_stt(mode: str, connect_s: float, result: Result) -> STT:
    engine = STT(base_url=URL, socket_mode=mode)  # type: ignore[arg-type]
    original = engine._connect_ws

    async def connect(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        await asyncio.sleep(connect_s)  # the simulated round trips of a far server
        ws = await original(*args, **kwargs)
        result.connects.append(time.monotonic() - t0)
        return ws

    engine._connect_ws = connect  # type: ignore[method-assign]
    return engine


async def one_stream(engine: STT, speech: SynthesizedSpeech, result: Result) -> None:
    stream = engine.stream(conn_options=APIConnectOptions(max_retry=3, timeout=10.0))
    events: list[tuple[float, stt.SpeechEvent]] = []

    async def read() -> None:
        async for ev in stream:
            events.append((time.monotonic(), ev))

    reader = asyncio.create_task(read())
    n = RATE * FRAME_MS // 1000
    samples = speech.samples
    pushed_at: list[float] = []  # time each frame was pushed
    start = time.monotonic()
    for i in range(0, len(samples) - n + 1, n):
        # paced like a room: frame i is due at start + i/RATE
        delay = start + i / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        stream.push_frame(rtc.AudioFrame(samples[i : i + n].tobytes(), RATE, 1, n))
        pushed_at.append(time.monotonic())
    stream.end_input()
    await asyncio.wait_for(reader, 30)
    await stream.aclose()

    def push_time(t_s: float) -> float:
        return pushed_at[min(len(pushed_at) - 1, int(t_s * 1000) // FRAME_MS)]

    # utterances: runs of words between "." markers
    words = speech.words
    utts: list[tuple[float, float]] = []  # (end of first word, end of last word), audio s
    first: float | None = None
    for w in words:
        if first is None:
            first = w.end_s
        if w.text == ".":
            utts.append((first, w.end_s))
            first = None
    for k, (first_end, last_end) in enumerate(utts):
        t_first, t_last = push_time(first_end), push_time(last_end)
        nxt = push_time(utts[k + 1][0]) if k + 1 < len(utts) else float("inf")
        interims = [
            at
            for at, e in events
            if t_first <= at < nxt
            and e.type == stt.SpeechEventType.INTERIM_TRANSCRIPT
            and e.alternatives[0].text.strip()
        ]
        finals = [
            at
            for at, e in events
            if t_first <= at < nxt and e.type == stt.SpeechEventType.FINAL_TRANSCRIPT
        ]
        if interims:
            result.first_text.append(interims[0] - t_first)
        if finals:
            result.final.append(finals[-1] - t_last)
    text = " ".join(
        e.alternatives[0].text for _, e in events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    )
    result.streams += 1
    result.exact += " ".join(text.split()) == " ".join(speech.text.split())


URL = ""


async def run(connect_ms: list[int], streams: int, utterances: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for ms in connect_ms:
        results = {mode: Result() for mode in ("warm", "per_utterance")}
        engines = {mode: make_stt(mode, ms / 1000, results[mode]) for mode in results}
        jobs = []
        for s in range(streams):
            speech = utterance_script(1000 * ms + s, utterances)
            for mode, engine in engines.items():  # the same speech in both modes, side by side
                jobs.append(one_stream(engine, speech, results[mode]))
        await asyncio.gather(*jobs)
        for engine in engines.values():
            await engine.aclose()
        for mode, r in results.items():
            rows[f"{mode}@{ms}"] = {
                "mode": mode,
                "connect_ms_added": ms,
                "connect": summary_ms(r.connects),
                "first_text": summary_ms(r.first_text),
                "final": summary_ms(r.final),
                "exact_streams": f"{r.exact}/{r.streams}",
            }
    return rows


def main() -> None:
    global URL
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect-ms", default="0,50,150,300")
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--utterances", type=int, default=6)
    parser.add_argument(
        "--step-ms", type=float, default=10.0, help="the emulated engine's time per step"
    )
    parser.add_argument("--quick", action="store_true", help="2 streams x 3 utterances")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.utterances = 2, 3
    connect_ms = [int(x) for x in args.connect_ms.split(",")]
    emu = EmulatorProcess(step_time_s=args.step_ms / 1000)
    URL = emu.url
    try:
        rows = asyncio.run(run(connect_ms, args.streams, args.utterances))
    finally:
        emu.stop()
    print(
        f"{args.streams} streams x {args.utterances} utterances per mode, both modes at once, "
        f"engine step {args.step_ms:g} ms; "
        f"{platform.node()} ({platform.machine()}), shared host"
    )
    print(
        f"{'mode':<14}{'+connect':>9}{'connect p50':>13}{'first text p50/p90':>21}"
        f"{'final p50/p90':>17}{'exact':>8}"
    )
    for row in rows.values():
        c, f, fi = row["connect"], row["first_text"], row["final"]
        print(
            f"{row['mode']:<14}{row['connect_ms_added']:>7}ms{c['p50'] or 0:>11.0f}ms"
            f"{f['p50'] or 0:>12.0f}/{f['p90'] or 0:<6.0f}ms"
            f"{fi['p50'] or 0:>9.0f}/{fi['p90'] or 0:<5.0f}ms{row['exact_streams']:>8}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"socket_mode_step{args.step_ms:g}ms.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
