"""What one AgentSession per participant costs, against the lightest path with the same output.

Side by side in one process and one run, for N participants:

- ``session``: ``RoomCaptioner`` as shipped: one ``AgentSession`` + RoomIO per participant.
- ``direct``: the lightest path that keeps the caption contract: the STT's stream fed directly
  and its transcripts published by LiveKit's own ``_ParticipantStreamTranscriptionOutput``
  (the class RoomIO uses), with no session.

Both get the same audio (16 kHz mono 50 ms frames, real time, as RoomIO delivers them) from the
same feeder, bypassing WebRTC (a real worker's ``rtc.AudioStream`` costs the same in both), and
the same STT: a no-op model that emits an interim per second of audio and a final every four,
so the measured difference is the session machinery. Captions go to the fake room of the tests.
Prints a table and writes ``benchmarks/results/captioner_overhead.json``.

    .venv/bin/python benchmarks/captioner_overhead.py --participants 10,50,100,200 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]
from livekit import rtc
from livekit.agents import stt
from livekit.agents.voice.io import AudioInput
from livekit.agents.voice.room_io import _ParticipantStreamTranscriptionOutput

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from livekit_plugins_voxtral_vllm import RoomCaptioner  # noqa: E402
from tests.fake_livekit import FakeRoom, ScriptedStream, ScriptedSTT, speech  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RATE, FRAME_MS = 16000, 50
SAMPLES = RATE * FRAME_MS // 1000
FRAME = rtc.AudioFrame(np.zeros(SAMPLES, dtype=np.int16).tobytes(), RATE, 1, SAMPLES)
Ev = stt.SpeechEventType


class ChattyStream(ScriptedStream):
    """Consumes audio; an interim per second of it, a final (and end of speech) every four."""

    async def _run(self) -> None:
        frames = 0
        async for item in self._input_ch:
            if not isinstance(item, rtc.AudioFrame):
                continue
            frames += 1
            if frames % 80 == 1:
                self.say(speech(Ev.START_OF_SPEECH))
            if frames % 20 == 0:
                words = " ".join(["word"] * ((frames % 80) // 20 or 4))
                final = frames % 80 == 0
                self.say(speech(Ev.FINAL_TRANSCRIPT if final else Ev.INTERIM_TRANSCRIPT, words))
                if final:
                    self.say(speech(Ev.END_OF_SPEECH))


class ChattySTT(ScriptedSTT):
    def stream(self, **_: Any) -> ChattyStream:  # type: ignore[override]
        stream = ChattyStream(stt=self, conn_options=stt.stt.DEFAULT_API_CONNECT_OPTIONS)
        self.streams.append(stream)
        return stream


class Microphone(AudioInput):
    def __init__(self) -> None:
        super().__init__(label="bench-microphone")
        self.frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue(maxsize=100)

    def push(self, frame: rtc.AudioFrame) -> None:
        """As WebRTC would: a frame the session does not take in time is dropped."""
        if self.frames.full():
            DROPPED[0] += 1
        else:
            self.frames.put_nowait(frame)

    async def __anext__(self) -> rtc.AudioFrame:
        return await self.frames.get()


DROPPED = [0]


async def feed(push: Any, stop: asyncio.Event) -> None:
    """One 50 ms frame per 50 ms, without drift."""
    loop = asyncio.get_running_loop()
    start, n = loop.time(), 0
    while not stop.is_set():
        n += 1
        push(FRAME)
        await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - loop.time()))


async def run_session(room: FakeRoom, n: int, stop: asyncio.Event) -> tuple[Any, list[Any]]:
    captioner = RoomCaptioner(room, ChattySTT, max_participants=n, close_transcript_timeout=0.1)
    captioner.start()
    for i in range(n):
        room.join(f"user{i:03d}")
    deadline = time.monotonic() + 60
    while sum(captioner.session(f"user{i:03d}") is not None for i in range(n)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("sessions did not start")
        await asyncio.sleep(0.01)
    feeders = []
    for i in range(n):
        session = captioner.session(f"user{i:03d}")
        assert session is not None
        mic = Microphone()
        session.input.audio = mic
        feeders.append(asyncio.create_task(feed(mic.push, stop)))
    return captioner.aclose, feeders


async def run_direct(room: FakeRoom, n: int, stop: asyncio.Event) -> tuple[Any, list[Any]]:
    tasks, closers = [], []
    for i in range(n):
        identity = f"user{i:03d}"
        room.join(identity)
        model = ChattySTT()
        stream = model.stream()
        output = _ParticipantStreamTranscriptionOutput(
            room,  # type: ignore[arg-type]
            is_delta_stream=False,
            participant=identity,
        )

        async def publish(stream: ChattyStream = stream, output: Any = output) -> None:
            async for ev in stream:
                if ev.type in (Ev.INTERIM_TRANSCRIPT, Ev.FINAL_TRANSCRIPT):
                    await output.capture_text(ev.alternatives[0].text)
                    if ev.type == Ev.FINAL_TRANSCRIPT:
                        output.flush()

        publisher = asyncio.create_task(publish())
        tasks.append(asyncio.create_task(feed(stream.push_frame, stop)))
        closers.append((stream, publisher, output, model))

    async def close() -> None:
        for stream, publisher, output, model in closers:
            await stream.aclose()  # ends the publisher's iteration
            await publisher
            await output.aclose()
            await model.aclose()

    return close, tasks


async def measure(path: str, n: int, seconds: float) -> dict[str, Any]:
    gc.collect()
    proc = psutil.Process()
    room = FakeRoom()
    stop = asyncio.Event()
    tasks_before = len(asyncio.all_tasks())
    rss_before = proc.memory_info().rss
    t0 = time.perf_counter()
    runner = run_session if path == "session" else run_direct
    close, feeders = await runner(room, n, stop)
    start_s = time.perf_counter() - t0
    await asyncio.sleep(2.0)  # warm up
    tasks = len(asyncio.all_tasks()) - tasks_before
    published = len(room.local_participant.published)
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, wall1 = proc.cpu_times(), time.perf_counter()
    published = len(room.local_participant.published) - published
    rss = proc.memory_info().rss - rss_before
    stop.set()
    await asyncio.gather(*feeders, return_exceptions=True)
    await close()
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0)
    return {
        "path": path,
        "participants": n,
        "cpu_pct_of_one_core": round(100 * cpu, 1),
        "cpu_pct_per_participant": round(100 * cpu / n, 3),
        "tasks_per_participant": round(tasks / n, 1),
        "rss_mb_per_participant": round(rss / n / 2**20, 3),
        "start_s": round(start_s, 3),
        "captions_per_s": round(published / seconds, 1),
        "dropped_frames": DROPPED[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", default="10,50,100,200")
    parser.add_argument("--seconds", type=float, default=12.0)  # 3 caption cycles
    parser.add_argument("--one", help=argparse.SUPPRESS)  # PATH:N, in this process
    args = parser.parse_args()
    if args.one:
        path, n = args.one.split(":")
        print(json.dumps(asyncio.run(measure(path, int(n), args.seconds))))
        return
    rows = []
    for n in (int(x) for x in args.participants.split(",")):
        for path in ("direct", "session"):
            # a fresh process each, so that memory freed by the previous run does not hide
            # what this one allocates
            one = [sys.executable, __file__, "--one", f"{path}:{n}", "--seconds", str(args.seconds)]
            done = subprocess.run(one, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    head = f"{'path':8} {'N':>4} {'CPU %':>7} {'CPU %/p':>8} {'tasks/p':>8} {'MB/p':>7}"
    print(f"\n{head} {'start s':>8} {'captions/s':>10} {'dropped':>8}")
    for r in rows:
        print(
            f"{r['path']:8} {r['participants']:>4} {r['cpu_pct_of_one_core']:>7} "
            f"{r['cpu_pct_per_participant']:>8} {r['tasks_per_participant']:>8} "
            f"{r['rss_mb_per_participant']:>7} {r['start_s']:>8} {r['captions_per_s']:>10} "
            f"{r['dropped_frames']:>8}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "captioner_overhead.json"
    out.write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
