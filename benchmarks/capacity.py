"""Capacity of one vLLM replica: how many people can speak at once before it falls behind.

Every running generation needs an engine step per 80 ms of audio. This drives N real-time
streams through the plugin against one server (``--url``: a real vLLM replica on a GPU; by
default an emulator process) and, per N, samples how far the server is behind the audio
(``stream.stats.lag_s``) every 100 ms, with how many generations were running (people
speaking, with ``socket_mode="per_utterance"``: open sockets). The speech is the emulator's
synthetic tones: a real vLLM transcribes them as noise, but a step costs the same whatever the
audio says, so the load is real.

A replica keeps up at N when the lag stays within a few steps; the largest such N of running
generations is the replica's HAProxy ``maxconn`` (README, "Scaling out"). The emulator steps
every generation in one shared iteration of ``--step-ms``, so it never saturates: on it this
only checks the tool.

Run: ``.venv/bin/python benchmarks/capacity.py --url ws://gpu-1:8000 --streams 8,16,32,64``
(``--seconds`` per N, 30). Prints a table and writes ``benchmarks/results/capacity.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import RESULTS, EmulatorProcess, conversation_tokens, summary_ms
from livekit import rtc
from livekit.agents import APIConnectOptions

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.testing import synthesize

RATE = 48000
FRAME_MS = 20


async def drive(stream: SpeechStream, samples: np.ndarray, offset: int, until: float) -> None:
    """Push ``samples`` (from ``offset``, looping) in real time until ``until``."""
    n = RATE * FRAME_MS // 1000
    i = offset - offset % n
    start = time.monotonic()
    k = 0
    while time.monotonic() < until:
        delay = start + k * FRAME_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if i + n > len(samples):
            i = 0
        stream.push_frame(rtc.AudioFrame(samples[i : i + n].tobytes(), RATE, 1, n))
        i += n
        k += 1
    stream.end_input()


async def one_level(url: str, n: int, seconds: float) -> dict[str, Any]:
    engine = STT(base_url=url, socket_mode="per_utterance")
    speech = synthesize(conversation_tokens(7, 60), sample_rate=RATE, seed=7)
    samples = speech.samples
    streams = [
        engine.stream(conn_options=APIConnectOptions(max_retry=3, timeout=10.0)) for _ in range(n)
    ]
    assert all(isinstance(s, SpeechStream) for s in streams)
    until = time.monotonic() + seconds
    readers = [asyncio.create_task(_drain(s)) for s in streams]
    pushers = [
        asyncio.create_task(drive(s, samples, (j * 7919 * RATE // 1000) % len(samples), until))  # type: ignore[arg-type]
        for j, s in enumerate(streams)
    ]
    lags: list[float] = []
    running: list[int] = []
    warmup = time.monotonic() + min(5.0, seconds / 3)
    while time.monotonic() < until:
        await asyncio.sleep(0.1)
        if time.monotonic() < warmup:
            continue
        lags += [s.stats.lag_s for s in streams]  # type: ignore[attr-defined]
        running.append(sum(1 for s in streams if s._lanes))  # type: ignore[attr-defined]
    await asyncio.gather(*pushers)
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    for s in streams:
        await s.aclose()
    await engine.aclose()
    return {
        "streams": n,
        "running_generations_mean": round(float(np.mean(running)), 1) if running else None,
        "running_generations_max": max(running) if running else None,
        "lag": summary_ms(lags),
        "peak_lag_s": max(s.stats.peak_lag_s for s in streams),  # type: ignore[attr-defined]
        "lost_generations": sum(s.stats.lost_generations for s in streams),  # type: ignore[attr-defined]
    }


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="one vLLM replica (default: an emulator process)")
    parser.add_argument("--streams", default="4,16,64")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--step-ms", type=float, default=10.0, help="the emulator's step time")
    args = parser.parse_args()
    emu = None if args.url else EmulatorProcess(step_time_s=args.step_ms / 1000)
    url = args.url or emu.url  # type: ignore[union-attr]
    rows = []
    try:
        for n in (int(x) for x in args.streams.split(",")):
            rows.append(asyncio.run(one_level(url, n, args.seconds)))
    finally:
        if emu is not None:
            emu.stop()
    target = args.url or f"emulator process, {args.step_ms:g} ms steps"
    print(f"capacity of {target}; {args.seconds:g} s per level")
    print(f"{'streams':>8}{'running mean/max':>18}{'lag p50/p99/max':>22}{'lost':>6}")
    for r in rows:
        lag = r["lag"]
        print(
            f"{r['streams']:>8}{r['running_generations_mean']:>11}/{r['running_generations_max']:<6}"
            f"{lag['p50']:>9.0f}/{lag['p99']:.0f}/{lag['max']:.0f} ms{r['lost_generations']:>6}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "capacity.json"
    out.write_text(json.dumps({"target": target, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
