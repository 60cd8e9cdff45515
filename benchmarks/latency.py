"""Caption latency per word, against the model's floor, with a breakdown of where it goes.

Voxtral emits a word in the engine step whose audio covers the word's end plus the
transcription delay D (480 ms). A generation's steps fall every 80 ms of its audio after the
first ``D + 80 ms + 2.5 ms``, so beyond D the unavoidable wait is where ``end + D`` falls in its
step (0-80 ms), plus the step's compute time. Everything above that is the client's, or the
host's.

For every word of N concurrent real-time streams (synthesized conversations, frames paced like
a live room, the emulator in its own process at ``--step-ms`` per engine step), this measures:

- ``t_end``: the push of the frame holding the word's last sample (the audio clock);
- ``t_ready``: the push of the frame holding the last sample the word's step needs (the
  generation's start + ``D + 80 ms + 2.5 ms`` + 80 ms per earlier step). ``t_ready - t_end - D
  + step`` is the **floor**: what ideal sending would give. "The word's step" is the one that
  delivered its last piece: with real tokens (``--output tokens``, the emulator's default: one
  Tekken token per step, as the model) a word of several tokens completes a step or more after
  the step covering its end + D, and that is the model's floor too;
- ``t_sent``: the append that completes that step's audio leaves the client (``send_str``
  returned), or the final commit when the step only runs on the right padding;
- ``t_step``: the emulator wrote the step's delta (its ``--send-log``; ``time.monotonic`` is
  system-wide);
- ``t_recv``: the client's socket read returned the delta;
- ``t_interim``: the application read the first INTERIM holding the word.

Stages: **hold** = ``t_sent - t_ready`` (the client: resampler, chunking, alignment, queues),
**server** = ``t_step - t_sent`` (loopback, the emulator's read, the step), **back** =
``t_recv - t_step`` (loopback and the client's event loop), **deliver** = ``t_interim -
t_recv`` (core, segmenter, LiveKit's event channel). **total** = ``t_interim - t_end - D``.
Under contention (100 streams, the emulator and other work sharing two cores) ``server`` and
``back`` grow with the load of the host, ``hold`` and ``deliver`` with this process's.

Also: sentence end (push of the frame holding a sentence's final mark) → its FINAL, and
``flush()`` → FINAL (extra streams that call ``flush()`` right after pushing each sentence's
final mark; they are not counted in the word figures).

``--trees new=PATH,old=PATH`` runs each configuration once per source tree, interleaved, in
fresh interpreters (the emulator is always this checkout's): a side-by-side comparison. The
word figures only need the package's public API, plus one private read (the start sample of
each generation, from the stream's core) to place the floor.

Run: ``.venv/bin/python benchmarks/latency.py [--quick] [--streams 1,10,100]
[--configs 48k10,roomio,roomio16]``. Prints a table and writes
``benchmarks/results/latency.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

STEP = 1280
SAMPLE_RATE = 16000
TICK_S = 0.010
SCRIPT_S = 75.0
SCRIPTS = 6

CONFIGS = {
    "48k10": (48000, 10, "48 kHz mono, 10 ms frames"),
    "roomio": (24000, 50, "RoomIO default: 24 kHz mono, 50 ms frames"),
    "roomio16": (16000, 50, "RoomIO at 16 kHz: 16 kHz mono, 50 ms frames"),
}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
    }


# -- the child: one configuration, one tree -------------------------------------------------------


@dataclass(eq=False)
class _Gen:
    """One generation as the client's socket saw it."""

    tag: str
    lane: int
    start_sample: int | None
    committed_at: float
    appends: list[tuple[float, int]] = field(default_factory=list)  # (t, cumulative samples)
    final_at: float | None = None
    deltas: list[tuple[int, float, str]] = field(default_factory=list)  # step, t_recv, text
    steps: int = 0


class _Recorder:
    """What every stream's sockets sent and received, with timestamps."""

    def __init__(self) -> None:
        self.gens: dict[str, list[_Gen]] = defaultdict(list)
        self.streams: dict[str, Any] = {}


def _b64_samples(frame: str) -> int:
    i = frame.index('"audio":"') + 9
    j = frame.index('"', i)
    n = j - i
    pad = (frame[j - 1] == "=") + (frame[j - 2] == "=")
    return (n * 3 // 4 - pad) // 2


class _TracedWS:
    """Wraps the client's aiohttp WebSocket: times every append, commit and delta."""

    def __init__(self, ws: Any, rec: _Recorder, tag: str, lane: int) -> None:
        self._ws = ws
        self._rec = rec
        self._tag = tag
        self._lane = lane
        self._gen: _Gen | None = None  # sending side
        self._reading: list[_Gen] = []  # generations whose output is still to come

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def send_str(self, data: str, *args: Any, **kwargs: Any) -> None:
        await self._ws.send_str(data, *args, **kwargs)
        t = time.monotonic()
        if data.startswith('{"type":"input_audio_buffer.append"'):
            gen = self._gen
            if gen is not None:
                prev = gen.appends[-1][1] if gen.appends else 0
                gen.appends.append((t, prev + _b64_samples(data)))
        elif data.startswith('{"type":"input_audio_buffer.commit"'):
            if '"final":true' in data.replace(" ", ""):
                if self._gen is not None:
                    self._gen.final_at = t
                    self._gen = None
            else:
                start = None
                stream = self._rec.streams.get(self._tag)
                core = getattr(stream, "_core", None)
                lane = core._lanes.get(self._lane) if core is not None else None
                if lane is not None and lane.gen is not None:
                    start = int(lane.gen.start)
                gen = _Gen(self._tag, self._lane, start, t)
                self._gen = gen
                self._reading.append(gen)
                self._rec.gens[self._tag].append(gen)

    async def receive(self, *args: Any, **kwargs: Any) -> Any:
        msg = await self._ws.receive(*args, **kwargs)
        data = msg.data
        if isinstance(data, str) and self._reading:
            gen = self._reading[0]
            if data.startswith('{"type":"transcription.delta"'):
                if not data.endswith('"delta":""}'):
                    gen.deltas.append((gen.steps, time.monotonic(), json.loads(data)["delta"]))
                gen.steps += 1
            elif data.startswith('{"type":"transcription.done"') or '"code":"processing' in data:
                self._reading.pop(0)
        return msg


async def child(args: argparse.Namespace) -> dict[str, Any]:
    # The speech is this checkout's (the emulator, also this checkout's, must understand it);
    # the plugin under test is the tree's: synthesize first, then swap the package.
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(ROOT))
    from _common import EmulatorProcess, make_script

    rate, frame_ms, what = CONFIGS[args.child_config]
    fs = rate * frame_ms // 1000
    scripts = [make_script(200 + k, SCRIPT_S, rate, fs) for k in range(SCRIPTS)]
    for name in [m for m in sys.modules if m.startswith("livekit_plugins_voxtral_vllm")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import aiohttp
    import numpy as np
    from livekit import rtc
    from livekit.agents import stt

    import livekit_plugins_voxtral_vllm as pkg
    from livekit_plugins_voxtral_vllm import STT

    frames = [
        [
            rtc.AudioFrame(s.speech.samples[i : i + fs].tobytes(), rate, 1, fs)
            for i in range(0, len(s.speech.samples), fs)
        ]
        for s in scripts
    ]
    rec = _Recorder()

    class TracedSTT(STT):
        async def _connect_ws(self, opts: Any, timeout: float, **kwargs: Any) -> Any:
            ws = await super()._connect_ws(opts, timeout, **kwargs)
            task = asyncio.current_task()
            m = re.search(r"lane(\d+)", task.get_name() if task else "")
            return _TracedWS(ws, rec, opts.language, int(m.group(1)) if m else -1)

    log_path = Path(tempfile.mkstemp(prefix="voxtral-lat-", suffix=".jsonl")[1])
    emu = EmulatorProcess(step_time_s=args.step_ms / 1000, send_log=log_path, output=args.output)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        # tone speech is not speech to a voice model: the energy endpointer (the default before
        # the Silero one; trees that predate the option have only it)
        engine = TracedSTT(base_url=emu.url, http_session=session, endpointer="energy")
    except TypeError:
        engine = TracedSTT(base_url=emu.url, http_session=session)
    n = args.child_n
    n_flush = max(1, n // 10)
    slots = max(1, frame_ms // 10)
    rng = random.Random(n * 7 + slots)

    @dataclass(eq=False)
    class Run:
        tag: str
        script: Any
        frames: list[Any]
        start_frame: int
        start_tick: int
        slot: int
        flusher: bool
        stream: Any = None
        cursor: int = 0
        pushed: int = 0
        interims: list[tuple[float, str]] = field(default_factory=list)
        finals: list[tuple[float, str]] = field(default_factory=list)
        flushes: list[tuple[float, int]] = field(default_factory=list)  # t, stream sample
        flush_frames: set[int] = field(default_factory=set)
        task: Any = None

    async def consume(run: Run) -> None:
        async for ev in run.stream:
            t = time.monotonic()
            if ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT:
                run.interims.append((t, ev.alternatives[0].text))
            elif ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                run.finals.append((t, ev.alternatives[0].text))

    runs: list[Run] = []
    tick_times = array("d")
    lateness = array("d")
    cpu_win = [0.0, 0.0]
    try:
        # one short stream first: lazy one-time costs are not anybody's latency
        prime = engine.stream(language="prime")
        for f in frames[0][: 1000 // frame_ms]:
            prime.push_frame(f)
        prime.end_input()
        async for _ in prime:
            pass
        await prime.aclose()
        ramp = int(2.0 / TICK_S)
        for i in range(n + n_flush):
            k = i % SCRIPTS
            script = scripts[k]
            start = rng.choice(script.quiet_starts) // fs
            slot = i % slots
            st = rng.randrange(0, ramp) if n > 1 else 0
            st += (slot - st) % slots
            run = Run(f"s{i}", script, frames[k], start, st, slot, flusher=i >= n)
            run.cursor = start
            if run.flusher:
                total = len(script.speech.samples)
                for text, end in zip(script.token_text, script.token_end, strict=True):
                    if text in (".", "?"):
                        rel = (int(end) - 1 - start * fs) % total
                        run.flush_frames.add(rel // fs)
            run.stream = engine.stream(language=run.tag)
            rec.streams[run.tag] = run.stream
            run.task = asyncio.create_task(consume(run))
            runs.append(run)
        t0 = time.monotonic() + 0.05
        k = 0
        end_at = t0 + args.warmup + args.measure
        win = (t0 + args.warmup, end_at)
        total_frames = {id(r): len(r.frames) for r in runs}
        while True:
            due = t0 + k * TICK_S
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            if now > end_at:
                break
            if not cpu_win[0] and now >= win[0]:
                t = os.times()
                cpu_win[0] = t.user + t.system
            tick_times.append(now)
            lateness.append(now - due)
            for run in runs:
                if k >= run.start_tick and (k - run.slot) % slots == 0:
                    run.stream.push_frame(run.frames[run.cursor])
                    frame_index = run.pushed
                    run.cursor = (run.cursor + 1) % total_frames[id(run)]
                    run.pushed += 1
                    if (
                        run.flusher
                        and frame_index % (len(run.script.speech.samples) // fs) in run.flush_frames
                    ):
                        run.stream.flush()
                        run.flushes.append((time.monotonic(), frame_index))
            k += 1
        t = os.times()
        cpu_win[1] = t.user + t.system
        for run in runs:
            run.stream.end_input()
        await asyncio.wait_for(asyncio.gather(*(r.task for r in runs)), 60)
    finally:
        for run in runs:
            if run.task is not None:
                run.task.cancel()
            if run.stream is not None:
                await run.stream.aclose()
        await engine.aclose()
        await session.close()
        emu.stop()
    server = _load_server_log(log_path)
    log_path.unlink(missing_ok=True)
    ticks = np.frombuffer(tick_times, dtype=np.float64)
    out = _analyse(args, rate, fs, slots, runs, rec, server, ticks, win, what, pkg.__file__)
    late = np.frombuffer(lateness, dtype=np.float64)[(ticks >= win[0]) & (ticks <= win[1])]
    out["ticker_lateness_ms"] = summary(late.tolist())
    out["client_cpu_pct_of_one_core"] = round(100 * (cpu_win[1] - cpu_win[0]) / args.measure, 1)
    return out


def _load_server_log(path: Path) -> dict[str, list[list[tuple[float, str]]]]:
    """Per stream tag: each generation's text deltas (t written, text), in start order."""
    tags: dict[str, str] = {}
    gens: dict[str, list[tuple[float, list[tuple[float, str]]]]] = defaultdict(list)
    current: dict[str, tuple[float, list[tuple[float, str]]] | None] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        conn, ev = r["conn"], r["ev"]
        if ev == "session":
            tags[conn] = str(r["update"].get("language", ""))
        elif ev == "start":
            g: tuple[float, list[tuple[float, str]]] = (r["t"], [])
            current[conn] = g
            gens[conn].append(g)
        elif ev == "delta" and current.get(conn) is not None:
            cur = current[conn]
            assert cur is not None
            cur[1].append((r["t"], r["text"]))
        elif ev in ("done", "error", "close"):
            current[conn] = None
    by_tag: dict[str, list[tuple[float, list[tuple[float, str]]]]] = defaultdict(list)
    for conn, lst in gens.items():
        by_tag[tags.get(conn, "")].extend(lst)
    return {tag: [d for _, d in sorted(lst, key=lambda g: g[0])] for tag, lst in by_tag.items()}


def _analyse(
    args: argparse.Namespace,
    rate: int,
    fs: int,
    slots: int,
    runs: list[Any],
    rec: _Recorder,
    server: dict[str, list[list[tuple[float, str]]]],
    ticks: Any,
    win: tuple[float, float],
    what: str,
    pkg_file: str,
) -> dict[str, Any]:
    delay_s = 0.48
    step_s = args.step_ms / 1000
    first = (480 // 80 + 1) * STEP + 40
    stages: dict[str, list[float]] = defaultdict(list)
    sentence: list[float] = []
    flush: list[float] = []
    unmatched = matched_words = 0

    def in_win(t: float) -> bool:
        return win[0] <= t <= win[1]

    for run in runs:
        total = len(run.script.speech.samples)
        start = run.start_frame * fs

        def push_time(sample: int, run: Any = run) -> float | None:
            """Tick at which the frame holding stream sample ``sample`` (input rate) went."""
            tick = run.start_tick + (sample // fs) * slots
            return float(ticks[tick]) if 0 <= tick < len(ticks) else None

        # expected tokens in stream order: (text, stream sample just after it)
        order = sorted(
            range(len(run.script.token_text)),
            key=lambda j: (int(run.script.token_end[j]) - start) % total,
        )
        expected: list[tuple[str, int]] = []
        base = 0
        pushed = run.pushed * fs
        while base < pushed:
            for j in order:
                rel = (int(run.script.token_end[j]) - start) % total + base
                if rel > pushed:
                    break
                expected.append((run.script.token_text[j], rel))
            base += total
        # received text in caption order, from the client's sockets: each character knows
        # the delta that brought it (with real tokens a word may take several deltas)
        cgens = sorted(rec.gens.get(run.tag, []), key=lambda g: g.committed_at)
        sgens = server.get(run.tag, [])
        deltas: list[tuple[_Gen, int, float, float | None]] = []
        owner: list[int] = []
        for gi, gen in enumerate(cgens):
            sdeltas = sgens[gi] if gi < len(sgens) else []
            for di, (step, t_recv, text) in enumerate(gen.deltas):
                t_step = sdeltas[di][0] if di < len(sdeltas) and sdeltas[di][1] == text else None
                owner.extend([len(deltas)] * len(text))
                deltas.append((gen, step, t_recv, t_step))
        received = "".join(text for gen in cgens for _, _, text in gen.deltas)
        offset = 0
        interim_i = 0
        for text, end in expected:
            if not text:
                continue
            stop = offset + len(text)
            if stop > len(received):
                break
            if received[offset:stop] != text:
                unmatched += 1
                break
            gen, step, t_recv, t_step = deltas[owner[stop - 1]]
            offset = stop
            if run.flusher:
                continue
            while interim_i < len(run.interims) and run.interims[interim_i][0] < t_recv:
                interim_i += 1
            if interim_i >= len(run.interims):
                break
            t_interim = run.interims[interim_i][0]
            t_end = push_time(end - 1)
            if t_end is None or not in_win(t_end) or gen.start_sample is None:
                continue
            # the step that delivered the word's last token needs this much audio
            need = gen.start_sample + first + STEP * step  # 16 kHz stream samples
            t_ready = push_time(-(-need * rate // SAMPLE_RATE) - 1)
            if t_ready is None:
                continue
            t_sent = next((t for t, cum in gen.appends if cum >= first + STEP * step), None)
            if t_sent is None:
                t_sent = gen.final_at
            matched_words += 1
            stages["total"].append(t_interim - t_end - delay_s)
            stages["floor"].append(t_ready - t_end - delay_s + step_s)
            # what the path adds to the floor, per word (floors are lumpy: where words end
            # against the step grid repeats, so p50(total) - p50(floor) can mislead)
            stages["above_floor"].append(t_interim - t_ready - step_s)
            if t_sent is not None:
                stages["hold"].append(t_sent - t_ready)
                if t_step is not None:
                    stages["server"].append(t_step - t_sent)
            if t_step is not None:
                stages["back"].append(t_recv - t_step)
            stages["deliver"].append(t_interim - t_recv)
        # sentence end -> FINAL; flush() -> FINAL
        # a FINAL covers the expected words whose texts add up to its own (spaces aside)
        j = -1
        for t_final, text in run.finals:
            want = len(text.replace(" ", ""))
            got = 0
            while got < want and j + 1 < len(expected):
                j += 1
                got += len(expected[j][0].replace(" ", ""))
            if 0 <= j < len(expected) and expected[j][0].strip() in (".", "?", "。", "？"):
                t_end = push_time(expected[j][1] - 1)
                if t_end is not None and in_win(t_end):
                    if run.flusher:
                        t_f = next(
                            (
                                t
                                for t, f in run.flushes
                                if f * fs <= expected[j][1] - 1 < (f + 1) * fs
                            ),
                            None,
                        )
                        if t_f is not None:
                            flush.append(t_final - t_f)
                    else:
                        sentence.append(t_final - t_end)
    out = {
        "config": args.child_config,
        "input": what,
        "tree": args.tree_name,
        "emulator_output": args.output,
        "package": pkg_file,
        "streams": args.child_n,
        "words": matched_words,
        "unmatched_streams": unmatched,
        "beyond_delay_ms": {k: summary(v) for k, v in stages.items()},
        "sentence_end_to_final_ms": summary(sentence),
        "flush_to_final_ms": summary(flush),
    }
    return out


# -- the parent ----------------------------------------------------------------------------------


def run_child(
    args: argparse.Namespace, tree_name: str, tree: str, config: str, n: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-config", config,
        "--child-n", str(n),
        "--tree", tree,
        "--tree-name", tree_name,
        "--warmup", str(args.warmup),
        "--measure", str(args.measure),
        "--step-ms", str(args.step_ms),
        "--output", args.output,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree_name} {config} x {n} failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'tree':<5} {'config':<8} {'N':>4} {'words':>6}  {'total p50/p95':>13} "
        f"{'floor p50/p95':>13} {'above':>9}  {'hold':>9} {'server':>9} {'back':>9} "
        f"{'deliver':>9}  "
        f"{'sent->FINAL':>11} {'flush->FINAL':>12} {'tick p95':>8} {'CPU%':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        b = r["beyond_delay_ms"]

        def pair(k: str, b: dict[str, Any] = b) -> str:
            s = b.get(k, {})
            return f"{_f(s.get('p50'))}/{_f(s.get('p95'))}"

        se, fl = r["sentence_end_to_final_ms"], r["flush_to_final_ms"]
        print(
            f"{r['tree']:<5} {r['config']:<8} {r['streams']:>4} {r['words']:>6}  "
            f"{pair('total'):>13} {pair('floor'):>13} {pair('above_floor'):>9}  "
            f"{pair('hold'):>9} {pair('server'):>9} "
            f"{pair('back'):>9} {pair('deliver'):>9}  "
            f"{_f(se['p50']) + '/' + _f(se['p95']):>11} {_f(fl['p50']) + '/' + _f(fl['p95']):>12} "
            f"{_f(r.get('ticker_lateness_ms', {}).get('p95')):>8} "
            f"{r.get('client_cpu_pct_of_one_core', float('nan')):5.0f}"
        )
    print(
        "\nms, p50/p95. total = word end pushed -> first INTERIM holding it, minus D (480 ms);"
        "\nfloor = the same with ideal sending (the step's last sample pushed -> + step time);"
        "\nabove = total - floor, per word;"
        "\nhold = that sample pushed -> the append completing the step left the client;"
        "\nserver = append sent -> delta written by the emulator; back = -> delta read by the"
        "\nclient; deliver = -> INTERIM read by the app. sent->FINAL = sentence end pushed ->"
        "\nits FINAL; flush->FINAL = flush() -> FINAL. tick p95 = how late the frame ticker ran"
        "\n(a starved event loop); CPU% = the client process, % of one core."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows")
    parser.add_argument("--streams", default="1,10,100")
    parser.add_argument("--configs", default="48k10,roomio,roomio16")
    parser.add_argument(
        "--trees",
        default=f"new={ROOT}",
        help="name=path,... source trees to compare side by side (default: this checkout)",
    )
    parser.add_argument("--warmup", type=float, help="s before the window (default 6)")
    parser.add_argument("--measure", type=float, help="window, s (default 30)")
    parser.add_argument("--step-ms", type=float, default=1.0, help="emulated step time, ms")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each tree this many times, interleaved"
    )
    parser.add_argument(
        "--output",
        choices=["tokens", "words"],
        default="tokens",
        help="emulator output: real Tekken tokens, one per step (as the model), or whole words",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latency.json")
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--tree-name", default="new", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = 4.0 if args.quick else 6.0
    if args.measure is None:
        args.measure = 12.0 if args.quick else 30.0
    logging.basicConfig(level=logging.ERROR)
    if args.child_config:
        print(json.dumps(asyncio.run(child(args))))
        return
    trees = [tuple(t.split("=", 1)) for t in args.trees.split(",")]
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    for config in args.configs.split(","):
        if config not in CONFIGS:
            parser.error(f"unknown config {config!r} (choose from {', '.join(CONFIGS)})")
        for n in (int(x) for x in args.streams.split(",")):
            for name, path in trees * args.repeat:
                print(f"[{name} {config} x {n}] running ...", flush=True)
                r = run_child(args, name, path, config, n)
                results.append(r)
                print_table([r])
                print(flush=True)
    print("\n== summary ==")
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "latency",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "step_ms": args.step_ms,
                "emulator_output": args.output,
                "warmup_s": args.warmup,
                "measure_s": args.measure,
                "total_s": round(time.monotonic() - started, 1),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
