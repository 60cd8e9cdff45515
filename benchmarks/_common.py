"""Shared by the benchmarks: the emulator as a separate process, speech scripts, statistics."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]

from livekit_plugins_voxtral_vllm.testing import VOCABULARY, SynthesizedSpeech, synthesize
from livekit_plugins_voxtral_vllm.testing.speech import MARKERS, burst_ms

# The emulator's tone "speech" is not speech to Silero's model (the default endpointer): the
# benchmarks that drive the STT with it endpoint by energy. (An environment variable, so that
# older source trees compared side by side, which lack the option, are unaffected.)
os.environ.setdefault("VOXTRAL_VLLM_ENDPOINTER", "energy")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WORDS = [w for w in VOCABULARY if w not in MARKERS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmulatorProcess:
    """``python -m livekit_plugins_voxtral_vllm.testing serve`` in its own process, so that its
    CPU is not the plugin's. ``send_log`` records when each text delta left it."""

    def __init__(
        self,
        *,
        fast: bool = False,
        step_time_s: float | None = None,
        max_model_len: int | None = None,
        send_log: Path | None = None,
        output: str | None = None,
    ) -> None:
        self.port = free_port()
        self.send_log = send_log
        args = [
            sys.executable,
            "-m",
            "livekit_plugins_voxtral_vllm.testing",
            "serve",
            "--port",
            str(self.port),
        ]
        if fast:
            args.append("--fast")
        elif step_time_s is not None:
            args += ["--step-time-s", str(step_time_s)]
        if max_model_len is not None:
            args += ["--max-model-len", str(max_model_len)]
        if send_log is not None:
            args += ["--send-log", str(send_log)]
        if output is not None:
            args += ["--output", output]
        fd, name = tempfile.mkstemp(prefix="voxtral-emulator-", suffix=".log")
        os.close(fd)
        self.output = Path(name)
        with self.output.open("wb") as out:
            self._proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.process = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + 30
        while "listening on" not in self.output.read_text(errors="replace"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start:\n{self.output.read_text()}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def cpu_s(self) -> float:
        t = self.process.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        """SIGTERM (graceful: the send log is flushed and closed), then wait."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.output.unlink(missing_ok=True)


# -- speech ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """Synthesized speech with its token timeline (samples at ``speech.sample_rate``)."""

    speech: SynthesizedSpeech
    token_text: tuple[str, ...]
    """Each token as the emulator transcribes it: ``" word"`` or ``"."``."""
    token_end: np.ndarray
    """Sample index just after each token's burst."""
    pause_before: np.ndarray
    """Silence (seconds) between the previous token and this one."""
    quiet_starts: tuple[int, ...]
    """Sample positions in the middle of long silences: where a stream may start."""


def conversation_tokens(seed: int, seconds: float) -> list[str]:
    """Sentences of 3-10 words with realistic pauses: a breath inside a turn (200-400 ms, the
    utterance goes on), a quick next turn (650-950 ms: the endpointer has just ended the
    previous utterance, which is still finishing at the server) or silence (1.5-4 s)."""
    rng = random.Random(seed)
    tokens: list[str] = []
    total = 0.3
    while total < seconds:
        n = rng.randint(3, 10)
        sentence = [rng.choice(WORDS) for _ in range(n)]
        if n >= 6 and rng.random() < 0.4:
            sentence.insert(rng.randint(2, n - 2), ",")
        sentence.append(rng.choice(".......?"))
        tokens += sentence
        total += sum(burst_ms(t) + 60 for t in sentence) / 1000
        r = rng.random()
        if r < 0.25:
            pause = rng.randint(200, 400)
        elif r < 0.55:
            pause = rng.randint(650, 950)
        else:
            pause = rng.randint(1500, 4000)
        tokens.append(f"<pause:{pause}>")
        total += pause / 1000
    return tokens


def make_script(seed: int, seconds: float, sample_rate: int, frame_samples: int) -> Script:
    """A conversation about ``seconds`` long, padded with silence to whole frames."""
    speech = synthesize(conversation_tokens(seed, seconds), sample_rate, seed=seed)
    samples = speech.samples
    pad = -len(samples) % frame_samples
    if pad:
        samples = np.concatenate((samples, np.zeros(pad, np.int16)))
        samples.flags.writeable = False
        speech = SynthesizedSpeech(samples, sample_rate, speech.words)
    words = speech.words
    ends = np.array([round(w.end_s * sample_rate) for w in words], dtype=np.int64)
    starts = np.array([round(w.start_s * sample_rate) for w in words], dtype=np.int64)
    prev_end = np.concatenate(([0], ends[:-1]))
    pause = (starts - prev_end) / sample_rate
    quiet: list[int] = []
    for i in range(1, len(words)):
        if pause[i] >= 1.5:
            mid = (prev_end[i] + starts[i]) // 2
            quiet.append(int(mid // frame_samples * frame_samples))
    return Script(speech, tuple(w.text for w in words), ends, pause, tuple(quiet))


# -- statistics --------------------------------------------------------------------------------


def summary_ms(values_s: Sequence[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / max in milliseconds, and the count."""
    if not values_s:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(a, [50, 90, 99]).tolist()
    return {
        "n": int(a.size),
        "p50": round(p50, 2),
        "p90": round(p90, 2),
        "p99": round(p99, 2),
        "max": round(float(a.max()), 2),
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def cpu_s() -> float:
    """CPU time of this process (every thread), s."""
    t = os.times()
    return t.user + t.system


def host_busy_s() -> float:
    """CPU time of the whole host (all cores, every process), s."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))
