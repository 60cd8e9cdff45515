"""Scale benchmark: CPU, memory and latency of N concurrent real-time streams in one process.

The vLLM emulator runs in its own process (real-time engine clock, so its CPU is not counted);
this process runs one ``STT`` and N ``SpeechStream``s fed through the public API with
``rtc.AudioFrame``s paced like a live room: synthesized conversations (sentences, breaths,
quick turns, silences), every stream starting at a different point. One ticker task pushes the
frames of every stream (frames are built before the run; streams are spread over the frame's
10 ms phases, as independent tracks are). Two frame configurations:

- ``roomio``: what LiveKit's RoomIO hands an STT by default, 24 kHz mono in 50 ms frames
  (``AudioInputOptions`` in livekit/agents/voice/room_io/types.py);
- ``48k10``: 48 kHz mono in 10 ms frames (a raw ``rtc.AudioStream`` of a WebRTC track);
- ``roomio16`` (on request): RoomIO set to deliver 16 kHz, so nothing is resampled here.

Measured over a steady-state window, per N:

- CPU of this process (user + system, all threads) in % of one core, total and per stream;
- RSS per stream (RSS with N streams running minus RSS before them, / N) and its growth;
- added latency: from a ``transcription.delta`` leaving the emulator (its ``--send-log``,
  ``time.monotonic()``, system-wide on Linux) to the matching INTERIM event read by the
  application. Interims are matched to deltas by order per stream (each socket is tagged with
  the stream's ``language``, which vLLM ignores), and checked by text;
- final latency: from the push of the frame holding the last sample of a sentence to its FINAL;
- first-word latency of each utterance (push of the end of its first word to its first
  interim), split by the silence before it: after a quick turn the previous utterance is still
  finishing at the server, after a long silence it is not; and how many deltas were held back
  behind an unfinished previous generation;
- ticker lateness (event-loop health) and whether every stream's transcript is exact.

Each configuration runs in a fresh interpreter, after waiting for the rest of the host to be
quiet (the benchmark shares the machine's cores with the emulator and whatever else runs; the
table shows both). ``--profile PATH_TO_PY_SPY`` samples the window with py-spy (``cprofile``
also works, with more overhead) and writes the top functions and a breakdown by module to
``benchmarks/results/scale_profile_<config>_<N>.txt``.

Run: ``.venv/bin/python benchmarks/scale.py [--quick] [--streams 1,10,50,100,200]
[--configs roomio,48k10]``. Prints a table and writes ``benchmarks/results/scale.json``.
Loopback only.

``--endpointers [N]`` (default 200) measures only the endpointers, side by side in one run,
on a realistic meeting mix (``endpointer_mix``): N participants in rooms of 8, real voices
(alsa-utils prompts, espeak-ng) taking turns, so each talks about an eighth of the time and
is silent otherwise, with its own microphone noise (white or pink, -65 to -50 dBFS; one in 8
near an air conditioner, one in 8 typing now and then). Every stream's 80 ms chunks are pushed
in turn, round after round, as a worker's streams are; CPU of this process per second of
audio per stream, for the previous energy endpointer and the default (Silero behind the gate,
one batched ONNX call per step for all streams), plus the model's duty (share of windows it
scored) and the mean batch. Writes ``benchmarks/results/scale_endpointers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
# ``--trees`` runs a child on another source tree (side-by-side comparisons): it comes first.
sys.path.insert(0, os.environ.get("VOXTRAL_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import numpy as np
from _common import (
    RESULTS,
    EmulatorProcess,
    Script,
    cpu_s,
    fmt,
    host_busy_s,
    make_script,
    rss_bytes,
    summary_ms,
)
from livekit import rtc
from livekit.agents import stt

from livekit_plugins_voxtral_vllm import STT, SpeechStream

TICK_S = 0.010
SCRIPTS = 6
SCRIPT_S = 75.0


@dataclass(frozen=True)
class FrameConfig:
    name: str
    sample_rate: int
    frame_ms: int
    what: str

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000


CONFIGS = {
    "roomio": FrameConfig("roomio", 24000, 50, "RoomIO default: 24 kHz mono, 50 ms frames"),
    "48k10": FrameConfig("48k10", 48000, 10, "48 kHz mono, 10 ms frames"),
    # not in the default run: RoomIO told to deliver 16 kHz (AudioInputOptions(sample_rate=
    # 16000)); WebRTC's resampler then runs in LiveKit's native threads, not in this loop
    "roomio16": FrameConfig("roomio16", 16000, 50, "RoomIO at 16 kHz: 16 kHz mono, 50 ms"),
}


class WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(record.getMessage()[:200])


@dataclass(eq=False)
class StreamRun:
    """One stream: its frames, where it started, and what the application received."""

    index: int
    tag: str
    script: Script
    frames: list[rtc.AudioFrame]
    start_frame: int
    start_tick: int
    slot: int
    stream: SpeechStream | None = None
    cursor: int = 0
    pushed: int = 0
    interim_t: array[float] = field(default_factory=lambda: array("d"))
    interim_tail: list[str] = field(default_factory=list)
    finals: list[tuple[float, str]] = field(default_factory=list)
    consumer: asyncio.Task[None] | None = None


def build_frames(script: Script, cfg: FrameConfig) -> list[rtc.AudioFrame]:
    n = cfg.frame_samples
    data = script.speech.samples
    return [
        rtc.AudioFrame(data[i : i + n].tobytes(), cfg.sample_rate, 1, n)
        for i in range(0, len(data), n)
    ]


async def consume(run: StreamRun) -> None:
    assert run.stream is not None
    interim = stt.SpeechEventType.INTERIM_TRANSCRIPT
    final = stt.SpeechEventType.FINAL_TRANSCRIPT
    async for ev in run.stream:
        t = time.monotonic()
        if ev.type == interim:
            run.interim_t.append(t)
            run.interim_tail.append(ev.alternatives[0].text[-12:])
        elif ev.type == final:
            run.finals.append((t, ev.alternatives[0].text))


class Ticker:
    """Pushes every stream's next frame on its 10 ms phase; records when each tick ran."""

    def __init__(self, runs: list[StreamRun], slots: int) -> None:
        self.groups: list[list[StreamRun]] = [[] for _ in range(slots)]
        for run in runs:
            self.groups[run.slot].append(run)
        self.tick_times = array("d")
        self.lateness = array("d")
        self.stopped = False
        self.t0 = 0.0

    async def run(self) -> None:
        self.t0 = time.monotonic() + 0.05
        slots = len(self.groups)
        k = 0
        while not self.stopped:
            due = self.t0 + k * TICK_S
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            self.tick_times.append(now)
            self.lateness.append(now - due)
            for run in self.groups[k % slots]:
                if k >= run.start_tick:
                    stream = run.stream
                    assert stream is not None
                    stream.push_frame(run.frames[run.cursor])
                    run.cursor += 1
                    if run.cursor == len(run.frames):
                        run.cursor = 0
                    run.pushed += 1
            k += 1


@dataclass
class Window:
    start: float = 0.0
    end: float = 0.0
    cpu: float = 0.0
    emu_cpu: float = 0.0
    sys_cpu: float = 0.0
    host_busy: float = 0.0
    rss_start: int = 0
    rss_end: int = 0


async def run_config(
    cfg: FrameConfig,
    n: int,
    scripts: list[Script],
    frames: list[list[rtc.AudioFrame]],
    *,
    warmup_s: float,
    measure_s: float,
    emulator_step_s: float | None,
    profile: str | None,
    profile_out: Path | None,
) -> dict[str, Any]:
    log_path = Path(tempfile.mkstemp(prefix="voxtral-sends-", suffix=".jsonl")[1])
    # Whole-word deltas: the "added" latency and the exact-transcript check below match each
    # INTERIM to one text delta, which sub-word tokens break (a word's pieces and a split
    # character's empty step give fewer INTERIMs than deltas). Real-token timing is measured
    # word by word in latency.py; the plugin's CPU per step is the same in both modes.
    emu = EmulatorProcess(
        fast=emulator_step_s == 0,
        step_time_s=emulator_step_s or None,
        send_log=log_path,
        output="words",
    )
    warnings = WarningCounter()
    logging.getLogger("livekit.plugins.voxtral_vllm").addHandler(warnings)
    # LiveKit's job session caps connections per host at 50 (utils/http_context.py), and every
    # stream holds at least one WebSocket: give the benchmark an unlimited connector.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    engine = STT(base_url=emu.url, http_session=session)
    rng = random.Random(n)
    slots = max(1, round(cfg.frame_ms / 1000 / TICK_S))
    ramp_ticks = int(min(2.0, warmup_s / 2) / TICK_S)
    runs: list[StreamRun] = []
    try:
        await prime(engine, frames[0])
        gc.collect()
        rss_base = rss_bytes()
        for i in range(n):
            script_i = i % len(scripts)
            script = scripts[script_i]
            start_sample = rng.choice(script.quiet_starts)
            slot = i % slots
            start_tick = rng.randrange(0, ramp_ticks + 1) if n > 1 else 0
            start_tick += (slot - start_tick) % slots
            run = StreamRun(
                index=i,
                tag=f"s{i}",
                script=script,
                frames=frames[script_i],
                start_frame=start_sample // cfg.frame_samples,
                start_tick=start_tick,
                slot=slot,
            )
            run.cursor = run.start_frame
            run.stream = engine.stream(language=run.tag)
            run.consumer = asyncio.create_task(consume(run))
            runs.append(run)
        ticker = Ticker(runs, slots)
        ticker_task = asyncio.create_task(ticker.run())
        await asyncio.sleep(warmup_s)
        gc.collect()
        win = Window(
            start=time.monotonic(), cpu=cpu_s(), emu_cpu=emu.cpu_s(), host_busy=host_busy_s()
        )
        win.sys_cpu = os.times().system
        win.rss_start = rss_bytes()
        profiler = start_profiler(profile, measure_s)
        await asyncio.sleep(measure_s)
        profile_text = stop_profiler(profiler, profile)
        win.end = time.monotonic()
        win.cpu = cpu_s() - win.cpu
        win.sys_cpu = os.times().system - win.sys_cpu
        win.emu_cpu = emu.cpu_s() - win.emu_cpu
        win.host_busy = host_busy_s() - win.host_busy
        win.rss_end = rss_bytes()
        ticker.stopped = True
        await ticker_task
        stop_at = time.monotonic()
        for run in runs:
            assert run.stream is not None
            run.stream.end_input()
        await asyncio.wait_for(
            asyncio.gather(*(r.consumer for r in runs if r.consumer is not None)), 30
        )
        stats = aggregate_stats(runs)
    finally:
        for run in runs:
            if run.consumer is not None:
                run.consumer.cancel()
            if run.stream is not None:
                await run.stream.aclose()
        await engine.aclose()
        await session.close()
        logging.getLogger("livekit.plugins.voxtral_vllm").removeHandler(warnings)
        emu.stop()
    sends = load_sends(log_path)
    log_path.unlink(missing_ok=True)
    if profile_text and profile_out is not None:
        profile_out.write_text(profile_text)
    return analyse(cfg, n, runs, ticker, win, rss_base, stop_at, sends, stats, warnings)


async def prime(engine: STT, frames: list[rtc.AudioFrame]) -> None:
    """One short stream first, so lazy one-time costs are not counted per stream."""
    stream = engine.stream(language="prime")
    try:
        for frame in frames[:100]:
            stream.push_frame(frame)
        stream.end_input()
        async for _ in stream:
            pass
    finally:
        await stream.aclose()


class _Profiler:
    def __init__(self, kind: str, handle: Any) -> None:
        self.kind = kind
        self.handle = handle


def start_profiler(kind: str | None, seconds: float) -> _Profiler | None:
    if kind is None:
        return None
    if kind == "cprofile":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        return _Profiler(kind, prof)
    # py-spy: a sampling profiler in its own process (attached to this one), nearly free
    out = Path(tempfile.mkstemp(prefix="voxtral-pyspy-", suffix=".txt")[1])
    proc = subprocess.Popen(
        [
            kind,
            "record",
            "--pid",
            str(os.getpid()),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return _Profiler(kind, (proc, out))


def stop_profiler(prof: _Profiler | None, kind: str | None) -> str:
    if prof is None:
        return ""
    if prof.kind == "cprofile":
        import io
        import pstats

        prof.handle.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof.handle, stream=buf)
        st.sort_stats("tottime").print_stats(45)
        st.sort_stats("cumulative").print_stats(60)
        return buf.getvalue()
    proc, out = prof.handle
    proc.wait(30)
    text = summarize_raw_stacks(Path(out).read_text())
    Path(out).unlink(missing_ok=True)
    return text


# Where a sample's time goes: the frame nearest the leaf that matches one of these.
CATEGORIES = (
    ("soxr resampling", ("soxr/", "rtc/audio_resampler.py", "rtc/_ffi_client.py", "ctypes/")),
    ("audio.py (downmix, gathering, chunks)", ("voxtral_vllm/audio.py",)),
    ("endpointer.py", ("voxtral_vllm/endpointer.py",)),
    ("protocol.py + connection.py", ("voxtral_vllm/protocol.py", "voxtral_vllm/connection.py")),
    ("segmenter.py", ("voxtral_vllm/segmenter.py",)),
    ("history.py", ("voxtral_vllm/history.py",)),
    ("stream_core.py", ("voxtral_vllm/stream_core.py",)),
    ("stt.py glue", ("voxtral_vllm/stt.py",)),
    ("aiohttp (WebSocket I/O)", ("aiohttp/",)),
    ("livekit-agents (RecognizeStream, channels)", ("agents/",)),
    ("benchmark driver", ("scale.py",)),
    ("asyncio event loop + sockets", ("asyncio/", "selectors.py")),
)


def categorize(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarize_raw_stacks(raw: str) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_count: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    cats: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        self_count[frames[-1]] += count
        cats[categorize(frames)] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"{total} samples (busy; idle samples are not recorded)", "", "category % of busy"]
    for name, c in sorted(cats.items(), key=lambda x: -x[1]):
        lines.append(f"{100 * c / total:6.2f}  {name}")
    lines += ["", "self %   function"]
    for f, c in sorted(self_count.items(), key=lambda x: -x[1])[:40]:
        lines.append(f"{100 * c / total:6.2f}  {f}")
    lines += ["", "incl %   function"]
    for f, c in sorted(incl.items(), key=lambda x: -x[1])[:70]:
        lines.append(f"{100 * c / total:6.2f}  {f}")
    return "\n".join(lines) + "\n"


def aggregate_stats(runs: list[StreamRun]) -> dict[str, Any]:
    out: dict[str, Any] = defaultdict(float)
    peak = 0.0
    for run in runs:
        assert run.stream is not None
        s = run.stream.stats
        for name in (
            "generations",
            "reconnects",
            "rollovers",
            "unsolicited_done",
            "lost_generations",
            "malformed_messages",
            "server_errors",
        ):
            out[name] += getattr(s, name)
        out["dropped_audio_s"] += s.dropped_audio_s
        peak = max(peak, s.peak_lag_s)
    result = {k: (int(v) if k != "dropped_audio_s" else round(v, 3)) for k, v in out.items()}
    result["max_peak_lag_s"] = round(peak, 3)
    return result


# -- analysis ------------------------------------------------------------------------------------


@dataclass
class _Gen:
    conn: str
    index: int
    start: float = float("inf")
    done: float | None = None
    deltas: list[tuple[float, str]] = field(default_factory=list)


def load_sends(path: Path) -> dict[str, list[_Gen]]:
    """The emulator's send log as generations per stream tag, in caption order."""
    tags: dict[str, str] = {}
    gens: dict[tuple[str, int], _Gen] = {}
    current: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        conn, ev = rec["conn"], rec["ev"]
        if ev == "session":
            tags[conn] = str(rec["update"].get("language", ""))
            continue
        if ev == "start":
            key = (conn, rec["gen"])
            gens.setdefault(key, _Gen(conn, rec["gen"])).start = rec["t"]
            continue
        idx = current[conn]
        key = (conn, idx)
        gen = gens.setdefault(key, _Gen(conn, idx))
        if ev == "delta":
            gen.deltas.append((rec["t"], rec["text"]))
        elif ev == "done" or (ev == "error" and rec.get("code") == "processing_error"):
            gen.done = rec["t"]
            current[conn] += 1
    by_tag: dict[str, list[_Gen]] = defaultdict(list)
    for (conn, _), gen in gens.items():
        by_tag[tags.get(conn, "")].append(gen)
    for lst in by_tag.values():
        lst.sort(key=lambda g: g.start)
    return by_tag


def analyse(
    cfg: FrameConfig,
    n: int,
    runs: list[StreamRun],
    ticker: Ticker,
    win: Window,
    rss_base: int,
    stop_at: float,
    sends: dict[str, list[_Gen]],
    stats: dict[str, Any],
    warnings: WarningCounter,
) -> dict[str, Any]:
    added: list[float] = []
    added_unheld: list[float] = []
    held_wait: list[float] = []
    token_lat: list[float] = []
    first_short: list[float] = []
    first_long: list[float] = []
    final_lat: list[float] = []
    exact_streams = 0
    mismatched_streams = 0
    tokens_expected = tokens_received = 0
    tick_times = np.frombuffer(ticker.tick_times, dtype=np.float64)
    slots = len(ticker.groups)
    fs = cfg.frame_samples

    def in_window(t: float) -> bool:
        return win.start <= t <= win.end

    for run in runs:
        script = run.script
        total_samples = len(script.speech.samples)
        start_sample = run.start_frame * fs
        pushed_samples = run.pushed * fs

        def push_time(stream_sample: int, run: StreamRun = run) -> float | None:
            frame = stream_sample // fs
            tick = run.start_tick + frame * slots
            return float(tick_times[tick]) if 0 <= tick < len(tick_times) else None

        # expected tokens: the script from the stream's start, wrapping around
        expected: list[tuple[str, int, float]] = []  # text, stream sample of end, pause before
        order = np.argsort((script.token_end - start_sample) % total_samples)
        base = 0
        while base < pushed_samples:
            for j in order:
                rel = (int(script.token_end[j]) - start_sample) % total_samples + base
                if rel > pushed_samples:
                    break
                expected.append((script.token_text[j], rel, float(script.pause_before[j])))
            base += total_samples
        expected.sort(key=lambda e: e[1])
        # tokens whose end was pushed well before the input ended must all be there
        settled = sum(1 for e in expected if push_time(e[1]) is not None)
        # deltas in caption order, each with its generation's predecessor's done time
        deltas: list[tuple[float, str, bool, float | None]] = []
        prev_done: float | None = None
        for gen in sends.get(run.tag, []):
            for k, (t, text) in enumerate(gen.deltas):
                deltas.append((t, text, k == 0, prev_done))
            prev_done = gen.done
        ok = True
        matched = 0
        for j, (t_recv, tail) in enumerate(zip(run.interim_t, run.interim_tail, strict=False)):
            if j >= len(deltas):
                ok = False
                break
            t_sent, text, first, before_done = deltas[j]
            token = text.strip()
            if not tail.endswith(token[-12:]):
                ok = False
                break
            matched += 1
            if in_window(t_sent):
                lat = t_recv - t_sent
                added.append(lat)
                held = before_done is not None and before_done > t_sent
                if held:
                    assert before_done is not None
                    held_wait.append(before_done - t_sent)
                else:
                    added_unheld.append(lat)
            if j < len(expected) and expected[j][0].strip() == token:
                pushed_at = push_time(expected[j][1] - 1)
                if pushed_at is not None and in_window(pushed_at):
                    lat = t_recv - pushed_at
                    token_lat.append(lat)
                    if first:
                        (first_short if expected[j][2] < 1.2 else first_long).append(lat)
            elif j < len(expected):
                ok = False
                break
        tokens_expected += settled
        tokens_received += min(matched, settled)
        if ok and matched >= settled and len(run.interim_t) == len(deltas):
            exact_streams += 1
        elif not ok:
            mismatched_streams += 1
        # finals that end a sentence: count the tokens each final covers
        covered = 0
        for t_final, text in run.finals:
            covered += len(text.split()) + sum(text.count(m) for m in ".,?")
            j = covered - 1
            if j < len(expected) and expected[j][0] in (".", "?"):
                pushed_at = push_time(expected[j][1] - 1)
                if pushed_at is not None and in_window(pushed_at):
                    final_lat.append(t_final - pushed_at)

    window_s = win.end - win.start
    lateness = np.frombuffer(ticker.lateness, dtype=np.float64)
    t_ticks = tick_times[: len(lateness)]
    lateness = lateness[(t_ticks >= win.start) & (t_ticks <= win.end)]
    cpu_pct = 100.0 * win.cpu / window_s
    return {
        "config": cfg.name,
        "input": cfg.what,
        "streams": n,
        "window_s": round(window_s, 2),
        "cpu_pct_of_one_core": round(cpu_pct, 2),
        "cpu_pct_per_stream": round(cpu_pct / n, 4),
        # the kernel's share: mostly loopback TCP, whose receive path runs in the sender
        "cpu_system_pct_of_one_core": round(100.0 * win.sys_cpu / window_s, 1),
        "emulator_cpu_pct_of_one_core": round(100.0 * win.emu_cpu / window_s, 1),
        "other_host_cpu_pct_of_one_core": round(
            100.0 * (win.host_busy - win.cpu - win.emu_cpu) / window_s, 1
        ),
        "rss_base_mb": round(rss_base / 2**20, 1),
        "rss_per_stream_kb": round((win.rss_start - rss_base) / n / 1024, 1),
        "rss_growth_kb_per_stream_per_min": round(
            (win.rss_end - win.rss_start) / n / 1024 / (window_s / 60), 2
        ),
        "ticker_lateness_ms": summary_ms(lateness.tolist()),
        "added_latency_ms": summary_ms(added),
        "added_latency_not_held_ms": summary_ms(added_unheld),
        "held_deltas": {"n": len(held_wait), "wait_ms": summary_ms(held_wait)},
        "token_latency_ms": summary_ms(token_lat),
        "first_word_latency_ms": {
            "after_quick_turn": summary_ms(first_short),
            "after_silence": summary_ms(first_long),
        },
        "final_latency_ms": summary_ms(final_lat),
        "transcripts": {
            "exact_streams": exact_streams,
            "mismatched_streams": mismatched_streams,
            "tokens_expected": tokens_expected,
            "tokens_received": tokens_received,
        },
        "stream_stats": stats,
        "drain_s": round(time.monotonic() - stop_at, 2),
        "plugin_warnings": warnings.count,
        "first_warnings": warnings.first,
    }


# -- endpointers alone, on a meeting mix --------------------------------------------------------


def endpointer_mix(n: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """``n`` participants of meetings of 8: int16 16 kHz, ``seconds`` long each."""
    import _endpointing_audio as A  # the evaluation's voices and noises

    rng = np.random.default_rng(seed)
    rate = A.RATE
    length = int(seconds * rate)
    streams: list[np.ndarray] = []
    for room in range(-(-n // 8)):
        script = A.make_script(500 + room, seconds)
        speech = script.speech[:length] * 10 ** (A.SPEECH_DBFS / 20)
        size = min(8, n - 8 * room)
        owner = []  # turns of 1-3 sentences, round-robin
        who, left = 0, int(rng.integers(1, 4))
        for _ in script.sentences:
            owner.append(who)
            left -= 1
            if left == 0:
                who, left = (who + 1) % size, int(rng.integers(1, 4))
        for p in range(size):
            mine = np.zeros(length)
            for s, o in zip(script.sentences, owner, strict=True):
                if o == p and s.end <= length:
                    lo, hi = max(0, s.onset - 800), min(length, s.end + 800)
                    mine[lo:hi] = speech[lo:hi]
            kind = "hvac" if p == 1 else ("white" if p % 2 else "pink")
            level = -50.0 if p == 1 else float(rng.uniform(-65, -50))
            x = mine + A.NOISES[kind](length, rng) * 10 ** (level / 20)
            if p == 2:  # typing in about half of the meeting
                keys = A.keyboard(length, rng) * 10 ** (-30 / 20)
                keys[length // 2 :] = 0
                x = x + keys
            streams.append(A.to_pcm(x))
    return streams[:n]


def measure_endpointers(n: int, seconds: float, rounds: int) -> dict[str, Any]:
    from livekit_plugins_voxtral_vllm.endpointer import Endpointer
    from livekit_plugins_voxtral_vllm.vad_endpointer import VadEndpointer
    from livekit_plugins_voxtral_vllm.vad_model import SileroBatch

    streams = endpointer_mix(n, seconds)
    chunk = 1280
    length = min(len(x) for x in streams)
    batches: dict[str, SileroBatch] = {}
    unbatched: list[SileroBatch] = []

    def make(kind: str) -> list[Any]:
        if kind == "energy":
            return [Endpointer() for _ in streams]
        unbatched.clear()
        batch = SileroBatch()  # a fresh batch (shared weights) so its counters are this run's
        batches[kind] = batch
        if kind == "silero":
            return [VadEndpointer(batch=batch) for _ in streams]
        own = [SileroBatch() for _ in streams]  # one call per stream and step
        unbatched.extend(own)
        return [VadEndpointer(batch=b) for b in own]

    kinds = ["energy", "silero", "silero-unbatched"]
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    opened: dict[str, int] = {}
    for _ in range(rounds):  # alternate, so drift on the shared host hits every kind alike
        for kind in kinds:
            eps = make(kind)
            gc.collect()
            t0 = time.process_time()
            starts = 0
            for pos in range(0, length, chunk):
                for ep, x in zip(eps, streams, strict=True):
                    for ev in ep.push(x[pos : pos + chunk]):
                        starts += type(ev).__name__ == "SpeechStarted"
            cpu[kind].append(time.process_time() - t0)
            opened[kind] = starts
    stream_s = n * length / 16000
    out: dict[str, Any] = {"streams": n, "audio_s_per_stream": round(length / 16000, 1)}
    for kind in kinds:
        best = min(cpu[kind])
        row: dict[str, Any] = {
            "cpu_pct_of_one_core_per_stream": round(100 * best / stream_s, 4),
            "cpu_pct_of_one_core_total": round(100 * best / (length / 16000), 2),
            "cpu_s_runs": [round(c, 2) for c in cpu[kind]],
            "utterances_started": opened[kind],
        }
        windows_total = n * (length // 512)
        if kind == "silero-unbatched":
            row["model_duty"] = round(sum(b.windows for b in unbatched) / windows_total, 4)
        elif kind in batches:
            b = batches[kind]
            row["model_duty"] = round(b.windows / windows_total, 4)
            if kind == "silero":
                row["onnx_calls_per_s"] = round(b.calls / (length / 16000), 1)
                row["mean_batch"] = round(b.windows / max(1, b.calls), 1)
        out[kind] = row
    return out


def print_endpointers(r: dict[str, Any]) -> None:
    print(
        f"endpointers on a meeting mix: {r['streams']} streams x {r['audio_s_per_stream']} s, "
        "side by side in one run (best of the alternated runs; shared 2-core host)"
    )
    print(f"{'endpointer':<18} {'%core/stream':>12} {'%core total':>11} {'duty':>6} {'batch':>6}")
    for kind in ("energy", "silero", "silero-unbatched"):
        row = r[kind]
        duty = row.get("model_duty")
        batch = row.get("mean_batch")
        print(
            f"{kind:<18} {row['cpu_pct_of_one_core_per_stream']:12.4f} "
            f"{row['cpu_pct_of_one_core_total']:11.2f} {fmt(duty, '6.3f')} {fmt(batch, '6.1f')}"
        )


# -- main ----------------------------------------------------------------------------------------


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'config':<7} {'N':>4} {'CPU%':>6} {'sys%':>5} {'%/str':>6} {'emu%':>5} {'oth%':>5} "
        f"{'RSS/str':>8} "
        f"{'growth':>7} {'added p50':>9} {'p99':>6} {'max':>6} {'final p50':>9} {'p99':>6} "
        f"{'1st quick':>9} {'1st sil':>8} {'held':>5} {'tick p99':>8} {'exact':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        a, f = r["added_latency_ms"], r["final_latency_ms"]
        fw = r["first_word_latency_ms"]
        tr = r["transcripts"]
        label = f"{r['tree']}:{r['config']}" if "tree" in r else r["config"]
        print(
            f"{label:<7} {r['streams']:>4} {r['cpu_pct_of_one_core']:6.1f} "
            f"{r.get('cpu_system_pct_of_one_core', float('nan')):5.1f} "
            f"{r['cpu_pct_per_stream']:6.3f} {r['emulator_cpu_pct_of_one_core']:5.0f} "
            f"{r['other_host_cpu_pct_of_one_core']:5.0f} "
            f"{r['rss_per_stream_kb']:7.0f}K {r['rss_growth_kb_per_stream_per_min']:7.1f} "
            f"{fmt(a['p50'], '9.2f')} {fmt(a['p99'], '6.2f')} {fmt(a['max'], '6.1f')} "
            f"{fmt(f['p50'], '9.0f')} {fmt(f['p99'], '6.0f')} "
            f"{fmt(fw['after_quick_turn']['p50'], '9.0f')} "
            f"{fmt(fw['after_silence']['p50'], '8.0f')} {r['held_deltas']['n']:>5} "
            f"{fmt(r['ticker_lateness_ms']['p99'], '8.2f')} "
            f"{tr['exact_streams']:>3}/{r['streams']:<3}"
        )
    print(
        "\nCPU% = this process, % of one core (sys% = its kernel part, mostly loopback TCP;"
        "\nemu% = the emulator, oth% = the rest of the host);"
        "\nRSS/str in KiB; growth in KiB per stream per "
        "minute;\nlatencies in ms: added = delta sent by the emulator -> INTERIM read by the "
        "app;\nfinal = last sample of a sentence pushed -> its FINAL; 1st = first word of an "
        "utterance\n(after a quick turn / after silence); held = deltas held behind an "
        "unfinished generation."
    )


async def child_main(args: argparse.Namespace) -> dict[str, Any]:
    cfg = CONFIGS[args.child_config]
    scripts = [
        make_script(100 + k, SCRIPT_S, cfg.sample_rate, cfg.frame_samples) for k in range(SCRIPTS)
    ]
    frames = [build_frames(s, cfg) for s in scripts]
    profile_out = None
    if args.profile:
        profile_out = RESULTS / f"scale_profile_{cfg.name}_{args.child_n}.txt"
    return await run_config(
        cfg,
        args.child_n,
        scripts,
        frames,
        warmup_s=args.warmup,
        measure_s=args.measure,
        emulator_step_s=args.emulator_step_time,
        profile=args.profile,
        profile_out=profile_out,
    )


def wait_quiet(max_wait_s: float, limit_pct: float = 30.0) -> float:
    """Wait until the rest of the host uses less than ``limit_pct`` of a core (the benchmark
    has 2 cores to share with whatever else runs); returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = host_busy_s()
        time.sleep(1.0)
        other = 100.0 * (host_busy_s() - before)
        if other < limit_pct or time.monotonic() > deadline:
            return other
        print(f"  host busy ({other:.0f} % of a core elsewhere), waiting ...", flush=True)


def run_child(
    args: argparse.Namespace, config: str, n: int, tree: tuple[str, str] | None = None
) -> dict[str, Any]:
    """One configuration in a fresh interpreter: clean memory baselines, no cross-talk."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-config",
        config,
        "--child-n",
        str(n),
        "--warmup",
        str(args.warmup),
        "--measure",
        str(args.measure),
        "--emulator-step-time",
        str(args.emulator_step_time),
    ]
    if args.profile:
        cmd += ["--profile", args.profile]
    env = dict(os.environ)
    if tree is not None:
        env["VOXTRAL_BENCH_TREE"] = str(Path(tree[1]).resolve())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} x {n} failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if tree is not None:
        result["tree"] = tree[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in 1,10,100; short windows")
    parser.add_argument("--streams", help="comma-separated N (default 1,10,50,100,200)")
    parser.add_argument(
        "--configs", default="roomio,48k10", help="roomio, 48k10 and/or roomio16 (roomio,48k10)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before the window (default 22: the 20 s audio history of every stream "
        "is full, so RSS is at its steady state)",
    )
    parser.add_argument("--measure", type=float, help="steady-state window, s (default 25)")
    parser.add_argument(
        "--emulator-step-time",
        type=float,
        default=0.01,
        help="emulated engine step time, s (0 = --fast); default 0.01",
    )
    parser.add_argument(
        "--profile",
        help="profile the window: 'cprofile', or the path of a py-spy binary "
        "(writes results/scale_profile_<config>_<N>.txt)",
    )
    parser.add_argument(
        "--max-wait-quiet",
        type=float,
        default=120.0,
        help="before each configuration, wait up to this long for the host to be quiet",
    )
    parser.add_argument(
        "--trees",
        help="name=path,... run every configuration once per source tree, interleaved "
        "(a side-by-side comparison; the emulator is always this checkout's)",
    )
    parser.add_argument(
        "--endpointers",
        type=int,
        nargs="?",
        const=200,
        help="measure only the endpointers on a meeting mix of this many streams (200)",
    )
    parser.add_argument("--endpointer-seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = 4.0 if args.quick else 22.0
    if args.measure is None:
        args.measure = 10.0 if args.quick else 25.0
    logging.basicConfig(level=logging.ERROR)
    if args.endpointers:
        r = measure_endpointers(args.endpointers, args.endpointer_seconds, rounds=2)
        print_endpointers(r)
        out = RESULTS / "scale_endpointers.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        r["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"wrote {out}")
        return
    if args.child_config:
        print(json.dumps(asyncio.run(child_main(args))))
        return
    default_streams = "1,10,100" if args.quick else "1,10,50,100,200"
    args.streams = [int(x) for x in (args.streams or default_streams).split(",")]
    args.configs = [c.strip() for c in args.configs.split(",")]
    for c in args.configs:
        if c not in CONFIGS:
            parser.error(f"unknown config {c!r} (choose from {', '.join(CONFIGS)})")
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    trees: list[tuple[str, str] | None] = [None]
    if args.trees:
        trees = [(t.split("=", 1)[0], t.split("=", 1)[1]) for t in args.trees.split(",")]
    for config in args.configs:
        for n in args.streams:
            for tree in trees:
                wait_quiet(args.max_wait_quiet)
                name = f"{tree[0]} " if tree else ""
                print(f"[{name}{config} x {n}] running ...", flush=True)
                r = run_child(args, config, n, tree)
                results.append(r)
                print_table([r])
                print(flush=True)
    print("\n== summary ==")
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "scale",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "livekit_rtc": rtc.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "warmup_s": args.warmup,
                "measure_s": args.measure,
                "emulator_step_time_s": args.emulator_step_time,
                "profiled": bool(args.profile),
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
