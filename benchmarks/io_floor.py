"""The I/O floor: what N WebSockets cost in asyncio with no plugin at all.

Each socket does what a stream's socket does in ``scale.py``: an 80 ms append (3.5 kB of JSON)
goes out every 80 ms, through a writer task as in the plugin, and the server answers each with
an empty ``transcription.delta``, read by a reader task. Sends are spread over the 10 ms ticks as
independent tracks are. The server (a minimal aiohttp WebSocket endpoint, not the emulator) runs
in its own process; only this process's CPU is measured. Whatever the plugin adds on top of this
is its own cost.

Run: ``.venv/bin/python benchmarks/io_floor.py [--streams 100,200] [--measure 20]``. Prints a
table and writes ``benchmarks/results/io_floor.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import RESULTS, free_port

APPEND = '{"type":"input_audio_buffer.append","audio":"' + "A" * 3416 + '"}'
DELTA = '{"type":"transcription.delta","delta":""}'
TICK_S = 0.010
PHASES = 8  # 80 ms / 10 ms

SERVER = """
import sys
from aiohttp import web

async def realtime(request):
    ws = web.WebSocketResponse(max_msg_size=1 << 24)
    await ws.prepare(request)
    async for _ in ws:
        await ws.send_str(sys.argv[2])
    return ws

app = web.Application()
app.router.add_get("/v1/realtime", realtime)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


class Socket:
    """One client socket with the plugin's shape: a writer task woken per message, a reader."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.outbox: list[str] = []
        self.wake = asyncio.Event()
        self.received = 0

    def send(self, text: str) -> None:
        self.outbox.append(text)
        self.wake.set()

    async def write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox:
                batch, self.outbox = self.outbox, []
                for text in batch:
                    await self.ws.send_str(text)

    async def read_loop(self) -> None:
        async for _ in self.ws:
            self.received += 1


async def measure(url: str, n: int, warmup_s: float, measure_s: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = [Socket(await session.ws_connect(url, heartbeat=20.0)) for _ in range(n)]
        tasks = [asyncio.create_task(s.write_loop()) for s in sockets]
        tasks += [asyncio.create_task(s.read_loop()) for s in sockets]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        window: dict[str, float] = {}
        warm_ticks = round(warmup_s / TICK_S)
        end_ticks = warm_ticks + round(measure_s / TICK_S)
        while k < end_ticks:
            delay = t0 + k * TICK_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for s in sockets[k % PHASES :: PHASES]:
                s.send(APPEND)
            k += 1
            if k == warm_ticks:
                c = os.times()
                window = {
                    "t": time.monotonic(),
                    "cpu": c.user + c.system,
                    "sys": c.system,
                    "rx": sum(s.received for s in sockets),
                }
        c = os.times()
        elapsed = time.monotonic() - window["t"]
        received = sum(s.received for s in sockets) - window["rx"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in sockets:
            await s.ws.close()
    return {
        "streams": n,
        "window_s": round(elapsed, 2),
        "cpu_pct_of_one_core": round(100 * (c.user + c.system - window["cpu"]) / elapsed, 1),
        "cpu_system_pct_of_one_core": round(100 * (c.system - window["sys"]) / elapsed, 1),
        "replies_per_s": round(received / elapsed),
        "expected_replies_per_s": round(n / (TICK_S * PHASES)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,200", help="comma-separated N (100,200)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--measure", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "io_floor.json")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), DELTA])
    results = []
    try:
        url = f"http://127.0.0.1:{port}/v1/realtime"
        for _ in range(100):  # wait for the server to listen
            try:
                asyncio.run(_probe(url))
                break
            except OSError:
                time.sleep(0.1)
        print(f"{'N':>5} {'CPU%':>6} {'sys%':>6} {'replies/s':>10}")
        for n in (int(x) for x in args.streams.split(",")):
            r = asyncio.run(measure(url, n, args.warmup, args.measure))
            results.append(r)
            print(
                f"{n:>5} {r['cpu_pct_of_one_core']:6.1f} {r['cpu_system_pct_of_one_core']:6.1f} "
                f"{r['replies_per_s']:>10}"
            )
    finally:
        server.terminate()
        server.wait(10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "io_floor",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
                "python": sys.version.split()[0],
                "aiohttp": aiohttp.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


async def _probe(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.close()


if __name__ == "__main__":
    main()
