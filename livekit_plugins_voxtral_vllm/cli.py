"""The ``voxtral-vllm`` command line (also ``python -m livekit_plugins_voxtral_vllm``).

``transcribe FILE`` decodes any audio or video file with PyAV and streams it through the
plugin's real streaming path (``STT.stream()``, 20 ms frames, then ``end_input()``): live
captions in the terminal, optional SRT, WebVTT or JSON output. ``check`` reports what a vLLM
server says about itself and opens one realtime session with the configured model. With
``--emulator`` both run against the package's in-process emulator instead of a real server.

Everything here is glue: decoding, pacing and printing. The protocol, timing and error texts
belong to :class:`~.stt.STT` and :func:`~.discovery.discover`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import (
    APIConnectOptions,
    APIError,
    APIStatusError,
    stt,
)
from livekit.agents.utils import is_given

from . import discovery
from .discovery import ServerInfo, http_base, normalize_realtime_url
from .stt import STT
from .stt_options import DEFAULT_BASE_URL, DEFAULT_MODEL, ENV_KEY, ENV_MODEL, ENV_URL
from .version import __version__

__all__ = [
    "main",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_FILE",
    "EXIT_SERVER",
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_FAILURE = 1
"""An unexpected internal error (a bug: reported with a traceback)."""
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_SERVER = 4
EXIT_CONFIG = 5
EXIT_INTERRUPTED = 130

PROG = "voxtral-vllm"

EMULATOR_NOTE = (
    "using the built-in vLLM EMULATOR (not a real model): it only transcribes the package's "
    "synthetic tone vocabulary"
)
DEMO_SCRIPT = (
    "hello everyone. welcome to the meeting. <pause:700> the quick brown fox jumps over the "
    "lazy dog. <pause:700> can you hear me? yes. <pause:700> okay, let us begin."
)

_RATE = 48000
"""Decoded audio is s16 mono at this rate, the rate of a LiveKit room."""
_FRAME_MS = 20
_FORMATS = {".srt": "srt", ".vtt": "vtt", ".json": "json"}
_MAX_LEAD_S = 12.0
"""Fast mode: audio pushed ahead of the last caption boundary (the stream keeps 20 s)."""
_STALL_S = 1.0
"""Fast mode: with no stream event for this long, push more audio anyway."""

Int16Array = npt.NDArray[np.int16]


class CLIError(Exception):
    """An expected failure: one line on stderr, no traceback, exit ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- arguments -------------------------------------------------------------------------------------

_EPILOG = f"""\
server options default to ${ENV_URL}, ${ENV_MODEL} and ${ENV_KEY}
(prefer the variable for the API key: a command line is visible to other users).

exit codes:
  {EXIT_OK}  success
  {EXIT_FAILURE}  unexpected internal error
  {EXIT_USAGE}  usage error (bad option or value)
  {EXIT_FILE}  input or output file problem (missing, unreadable, not decodable)
  {EXIT_SERVER}  server problem (unreachable, unhealthy, connection lost, refused)
  {EXIT_CONFIG}  configuration problem (model not served, API key missing or wrong, session
     refused)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


def _delay_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 80 <= value <= 2400 or value % 80:
        raise argparse.ArgumentTypeError(f"must be a multiple of 80 in 80..2400, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    where = server.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        help=f"vLLM server: ws(s)://host:port[/v1/realtime], http(s)://... or host:port "
        f"(default ${ENV_URL}, else {DEFAULT_BASE_URL})",
    )
    where.add_argument(
        "--emulator",
        action="store_true",
        help="run the package's built-in vLLM emulator in-process and use it (no GPU; it only "
        "transcribes the synthetic tone vocabulary of livekit_plugins_voxtral_vllm.testing)",
    )
    server.add_argument(
        "--model",
        metavar="NAME",
        help=f"served model name (default ${ENV_MODEL}, else {DEFAULT_MODEL})",
    )
    server.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"vLLM --api-key, sent as a bearer token (default ${ENV_KEY})",
    )
    server.add_argument(
        "--delay-ms",
        type=_delay_ms,
        default=480,
        metavar="MS",
        help="the server's transcription delay (tekken.json; multiple of 80, default 480)",
    )
    server.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds to wait when connecting and for the server's answers (default 10)",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Live captions from Voxtral Realtime served by vLLM (/v1/realtime).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tr = sub.add_parser(
        "transcribe",
        parents=[common],
        help="caption an audio or video file through the streaming path",
        description="Decode FILE (any audio or video FFmpeg reads) and stream it through the\n"
        "plugin's STT.stream(): live captions on the terminal (finals as\n"
        "'[mm:ss.s → mm:ss.s] text'), optional SRT, WebVTT or JSON output. The audio is fed\n"
        "as fast as the server keeps up (progress on stderr) unless --realtime.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("file", metavar="FILE", nargs="?", help="audio or video file")
    tr.add_argument(
        "--demo",
        action="store_true",
        help="with --emulator and no FILE: transcribe a short synthesized script",
    )
    tr.add_argument(
        "--realtime", action="store_true", help="pace the audio like a live participant"
    )
    tr.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write captions to PATH (.srt, .vtt or .json; '-' for stdout with --format)",
    )
    tr.add_argument("-f", "--format", choices=sorted(set(_FORMATS.values())), help="output format")
    tr.add_argument("--language", metavar="CODE", help="language label for the captions, e.g. en")

    sub.add_parser(
        "check",
        parents=[common],
        help="check a server: health, version, models, a realtime session",
        description="Report whether the server is reachable and healthy, its vLLM version and\n"
        "known quirks, the models it serves with their max_model_len, and whether the\n"
        "configured model opens a realtime session (a short test tone, final, done).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


# -- audio sources ---------------------------------------------------------------------------------


@dataclass
class _Audio:
    """Mono s16 audio at ``_RATE`` in chunks of any size."""

    label: str
    description: str
    duration_s: float | None
    chunks: Iterator[Int16Array]
    close: Callable[[], None] = lambda: None


def _ffmpeg_reason(e: BaseException) -> str:
    reason = getattr(e, "strerror", None)
    return reason if isinstance(reason, str) and reason else str(e)


def _open_file(path: str) -> _Audio:
    """Open ``path`` with PyAV and decode its first audio, so a bad file fails before any
    connection is made."""
    if not os.path.exists(path):
        raise CLIError(EXIT_FILE, f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(EXIT_FILE, f"{path} is a directory, not an audio or video file")
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError) as e:
        raise CLIError(
            EXIT_FILE,
            f"cannot decode {path}: not a media file FFmpeg can read ({_ffmpeg_reason(e)})",
        ) from None
    if not container.streams.audio:
        container.close()
        raise CLIError(EXIT_FILE, f"{path} has no audio stream")
    stream = container.streams.audio[0]
    duration: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    codec = stream.codec_context
    layout = {1: "mono", 2: "stereo"}.get(codec.channels, f"{codec.channels} channels")
    description = f"{container.format.name}/{codec.name}, {codec.sample_rate} Hz {layout}"

    def decode() -> Generator[Int16Array, None, None]:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=_RATE)
        decoded = bad = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    bad += 1  # a damaged packet: FFmpeg's own tools skip it too
                    if bad >= 100 and not decoded:
                        raise
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        decoded += out.samples
                        yield _samples(out)
            for out in resampler.resample(None):
                decoded += out.samples
                yield _samples(out)
        except av.FFmpegError as e:
            raise CLIError(EXIT_FILE, f"cannot decode {path}: {_ffmpeg_reason(e)}") from None
        finally:
            container.close()
        if bad:
            logging.getLogger(__name__).warning("%s: skipped %d undecodable packets", path, bad)

    chunks = decode()
    first = next((c for c in chunks if c.size), None)
    if first is None:
        raise CLIError(EXIT_FILE, f"cannot decode {path}: it holds no decodable audio")

    def all_chunks() -> Iterator[Int16Array]:
        yield first
        yield from chunks

    return _Audio(path, description, duration, all_chunks(), chunks.close)


def _samples(frame: av.AudioFrame) -> Int16Array:
    return np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)


def _demo_audio() -> _Audio:
    from .testing import synthesize

    speech = synthesize(DEMO_SCRIPT, _RATE)
    return _Audio(
        "demo script",
        f"{len(speech.words)} synthesized tone words, {_RATE} Hz mono",
        speech.duration_s,
        iter([np.asarray(speech.samples)]),
    )


def _frames(chunks: Iterator[Int16Array]) -> Iterator[rtc.AudioFrame]:
    """Re-cut chunks into ``_FRAME_MS`` frames (the last one may be shorter)."""
    size = _RATE * _FRAME_MS // 1000
    pending: Int16Array = np.zeros(0, np.int16)
    for chunk in chunks:
        pending = np.concatenate((pending, chunk)) if pending.size else chunk
        whole = pending.size // size * size
        for i in range(0, whole, size):
            yield _frame(pending[i : i + size])
        pending = pending[whole:]
    if pending.size:
        yield _frame(pending)


def _frame(samples: Int16Array) -> rtc.AudioFrame:
    data = np.ascontiguousarray(samples, dtype=np.int16).tobytes()
    return rtc.AudioFrame(data, _RATE, 1, samples.size)


# -- captions and their file formats ---------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Caption:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


def _caption(ev: stt.SpeechEvent) -> Caption | None:
    if not ev.alternatives or not ev.alternatives[0].text.strip():
        return None
    alt = ev.alternatives[0]
    words = tuple(
        Word(str(w), float(w.start_time), float(w.end_time))
        for w in alt.words or ()
        if is_given(w.start_time) and is_given(w.end_time)
    )
    start, end = float(alt.start_time), float(alt.end_time)
    return Caption(start, max(start, end), " ".join(alt.text.split()), words)


def clock(seconds: float) -> str:
    """``mm:ss.s`` (minutes keep counting past 59)."""
    tenths = max(0, round(seconds * 10))
    minutes, tenths = divmod(tenths, 600)
    return f"{minutes:02d}:{tenths // 10:02d}.{tenths % 10}"


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def render_srt(captions: Sequence[Caption]) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(captions, 1)
    ]
    return "\n".join(blocks)


def render_vtt(captions: Sequence[Caption]) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n"
        for i, c in enumerate(captions, 1)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def render_json(captions: Sequence[Caption], meta: dict[str, Any]) -> str:
    doc = {
        **meta,
        "text": " ".join(c.text for c in captions),
        "segments": [
            {
                "id": i,
                "start": round(c.start, 3),
                "end": round(c.end, 3),
                "text": c.text,
                "words": [
                    {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
                    for w in c.words
                ],
            }
            for i, c in enumerate(captions, 1)
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


# -- terminal --------------------------------------------------------------------------------------


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _arrow(stream: TextIO) -> str:
    try:
        "→".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "->"
    return "→"


class _Console:
    """Finals on stdout; one transient status line (interim text and/or progress bar) on the
    terminal, redrawn in place with ``\\r``. Without a terminal: finals as plain lines, progress
    as occasional lines on stderr."""

    def __init__(self, *, captions: bool, progress: bool) -> None:
        self._out, self._err = sys.stdout, sys.stderr
        out_tty, err_tty = _isatty(self._out), _isatty(self._err)
        self._arrow = _arrow(self._out)
        self._captions = captions
        self._line: TextIO | None = self._err if err_tty else self._out if out_tty else None
        self._show_interim = captions and out_tty
        self._show_bar = progress and err_tty
        self._progress_lines = progress and not err_tty
        self._interim = ""
        self._bar = ""
        self._drawn = 0
        self._next_pct = 10
        self._last_bar = time.monotonic()

    def interim(self, text: str) -> None:
        if self._show_interim:
            self._interim = text
            self._draw()

    def final(self, cap: Caption) -> None:
        self._interim = ""
        if self._captions:
            self._clear()
            line = f"[{clock(cap.start)} {self._arrow} {clock(cap.end)}] {cap.text}"
            print(line, file=self._out, flush=True)
        self._draw()

    def progress(self, done_s: float, total_s: float | None, *, force: bool = False) -> None:
        pct = min(100, math.floor(100 * done_s / total_s)) if total_s else None
        if self._show_bar:
            now = time.monotonic()
            if not force and now - self._last_bar < 0.1:
                return
            self._last_bar = now
            if pct is None:
                self._bar = f"{clock(done_s)} sent"
            else:
                filled = pct // 5
                self._bar = f"{pct:3d}% [{'#' * filled}{'.' * (20 - filled)}] {clock(done_s)}"
                self._bar += f"/{clock(total_s or 0.0)}"
            self._draw()
        elif self._progress_lines and pct is not None and pct >= self._next_pct:
            now = time.monotonic()
            if force or now - self._last_bar >= 5.0:  # a log, not an animation
                self._last_bar = now
                self.message(f"progress: {pct}% ({clock(done_s)} of {clock(total_s or 0.0)})")
                self._next_pct = pct // 10 * 10 + 10

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self._err, flush=True)
        self._draw()

    def close(self) -> None:
        self._bar = self._interim = ""
        self._clear()

    def _draw(self) -> None:
        if self._line is None:
            return
        parts = [p for p in (self._bar, self._interim if self._show_interim else "") if p]
        text = " ".join(parts)
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        if len(text) > width:
            text = "…" + text[len(text) - width + 1 :]
        if not text and not self._drawn:
            return
        self._line.write("\r" + text.ljust(self._drawn))
        self._line.flush()
        self._drawn = len(text)

    def _clear(self) -> None:
        if self._line is not None and self._drawn:
            self._line.write("\r" + " " * self._drawn + "\r")
            self._line.flush()
            self._drawn = 0


# -- pacing ----------------------------------------------------------------------------------------


class _Pacer:
    """When to push the next frame.

    ``realtime``: at the frame's own time, like a live participant. Otherwise as fast as the
    server keeps up: while an utterance runs, at most ``_MAX_LEAD_S`` ahead of the last
    caption boundary (its final's end, or where the utterance started), because the stream
    keeps only 20 s of audio for generations still waiting for a connection.
    """

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.pushed_s = 0.0
        self._anchor_s = 0.0
        self._speaking = False
        self._wake = asyncio.Event()
        self._t0: float | None = None

    def on_event(self, ev: stt.SpeechEvent) -> None:
        if ev.type == stt.SpeechEventType.START_OF_SPEECH:
            self._speaking = True
            self._anchor_s = max(self._anchor_s, self.pushed_s - 1.0)
        elif ev.type == stt.SpeechEventType.END_OF_SPEECH:
            self._speaking = False
        elif ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives:
            self._anchor_s = max(self._anchor_s, ev.alternatives[0].end_time)
        self._wake.set()

    def pushed(self, frame: rtc.AudioFrame) -> None:
        self.pushed_s += frame.samples_per_channel / frame.sample_rate

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if self.realtime:
            if self._t0 is None:
                self._t0 = loop.time()
            await asyncio.sleep(max(0.0, self._t0 + self.pushed_s - loop.time()))
            return
        await asyncio.sleep(0)  # let the stream take the previous frame
        while self._speaking and self.pushed_s - self._anchor_s > _MAX_LEAD_S:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), _STALL_S)
            except asyncio.TimeoutError:
                # nothing came back (speech-like noise without words?): let a second through
                self._anchor_s = max(self._anchor_s, self.pushed_s - _MAX_LEAD_S + 1.0)


# -- server ----------------------------------------------------------------------------------------


@dataclass
class _Target:
    url: str
    model: str
    api_key: str | None
    emulator: bool


async def _open_target(
    args: argparse.Namespace,
    stack: contextlib.AsyncExitStack,
    *,
    fast: bool,
    say: Callable[[str], None],
) -> _Target:
    model = args.model if args.model is not None else os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    key = args.api_key if args.api_key is not None else os.environ.get(ENV_KEY) or None
    if not model.strip():
        raise CLIError(EXIT_USAGE, "the model name is empty")
    if args.emulator:
        from .testing import VLLMRealtimeEmulator

        try:
            emu = VLLMRealtimeEmulator(
                fast=fast,
                served_model_name=model,
                transcription_delay_ms=args.delay_ms,
                record_audio=False,
            )
        except ImportError as e:  # real-token mode without the [emulator] extra
            raise CLIError(EXIT_USAGE, str(e)) from None
        await stack.enter_async_context(emu)
        say(EMULATOR_NOTE)
        return _Target(emu.url, model, key, emulator=True)
    raw = args.url if args.url is not None else os.environ.get(ENV_URL) or DEFAULT_BASE_URL
    try:
        url = normalize_realtime_url(raw)
    except ValueError as e:
        raise CLIError(EXIT_USAGE, f"bad server URL: {e}") from None
    return _Target(url, model, key, emulator=False)


def _unreachable(info: ServerInfo) -> bool:
    return info.healthy is None and info.version is None and not info.models and bool(info.errors)


def _auth_status(info: ServerInfo) -> int | None:
    """401 or 403 when ``/v1/models`` refused the credentials."""
    for status in (401, 403):
        if f"/v1/models: HTTP {status}" in info.errors:
            return status
    return None


def _auth_message(target: _Target, status: int) -> str:
    base = http_base(target.url)
    if status == 403:
        return f"vLLM at {base} refused access (HTTP 403): check the API key and proxy rules"
    if target.api_key:
        return (
            f"vLLM at {base} rejected the API key (HTTP 401): set --api-key or ${ENV_KEY} to "
            "the server's --api-key"
        )
    return f"vLLM at {base} requires an API key (HTTP 401): set --api-key or ${ENV_KEY}"


async def _discover(session: aiohttp.ClientSession, target: _Target, timeout: float) -> ServerInfo:
    info = await discovery.discover(session, target.url, api_key=target.api_key, timeout=timeout)
    if _unreachable(info):
        reason = info.errors[0].split(": ", 1)[-1]
        raise CLIError(
            EXIT_SERVER,
            f"cannot reach vLLM at {http_base(target.url)} ({reason}): is the server running "
            "and the URL right?",
        )
    return info


def _not_served(info: ServerInfo, target: _Target) -> CLIError | None:
    if not info.models or info.model(target.model) is not None:
        return None
    served = ", ".join(m.id for m in info.models)
    return CLIError(
        EXIT_CONFIG,
        f"model {target.model!r} is not served by {http_base(target.url)}; it serves: {served} "
        f"(use --model or ${ENV_MODEL})",
    )


def _make_stt(
    target: _Target, session: aiohttp.ClientSession, args: argparse.Namespace, **options: Any
) -> STT:
    if target.emulator:
        # the emulator only understands its tone "speech", which is not speech to Silero's
        # model: endpoint it by energy
        options.setdefault("endpointer", "energy")
    try:
        return STT(
            base_url=target.url,
            model=target.model,
            api_key=target.api_key or "",  # resolved already: "" keeps $VOXTRAL_VLLM_API_KEY out
            transcription_delay_ms=args.delay_ms,
            http_session=session,
            **options,
        )
    except ValueError as e:
        raise CLIError(EXIT_USAGE, str(e)) from None


def _api_failure(e: APIError, target: _Target) -> CLIError:
    """One line for an error of the STT; configuration problems get their own exit code."""
    inner = e.__cause__ if isinstance(e.__cause__, APIError) else e
    if isinstance(inner, APIStatusError) and inner.status_code in (401, 403):
        return CLIError(EXIT_CONFIG, _auth_message(target, inner.status_code))
    if isinstance(inner, APIStatusError) and 400 <= inner.status_code < 500:
        return CLIError(EXIT_CONFIG, inner.message)
    return CLIError(EXIT_SERVER, inner.message)


# -- transcribe ------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    captions: list[Caption] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    dropped_audio_s: float = 0.0
    reconnects: int = 0


def _output_plan(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(path or '-' or None, format); checked before any work is done."""
    path: str | None = args.output
    fmt: str | None = args.format
    if path is None:
        if fmt is not None:
            raise CLIError(EXIT_USAGE, "--format needs --output (use '-o -' for stdout)")
        return None, None
    if path == "-":
        if fmt is None:
            raise CLIError(EXIT_USAGE, "'-o -' needs --format")
        return path, fmt
    if fmt is None:
        fmt = _FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt is None:
            raise CLIError(
                EXIT_USAGE, f"cannot tell the format of {path!r}: use .srt, .vtt, .json or --format"
            )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(EXIT_FILE, f"cannot write {path}: no such directory {parent}")
    if os.path.isdir(path):
        raise CLIError(EXIT_FILE, f"cannot write {path}: it is a directory")
    return path, fmt


async def _stream_audio(
    engine: STT,
    audio: _Audio,
    console: _Console,
    *,
    realtime: bool,
    conn_options: APIConnectOptions,
) -> _Outcome:
    outcome = _Outcome()
    pacer = _Pacer(realtime)
    stream = engine.stream(conn_options=conn_options)
    started = time.monotonic()

    async def read() -> None:
        async for ev in stream:
            pacer.on_event(ev)
            if ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT and ev.alternatives:
                console.interim(ev.alternatives[0].text)
            elif ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                cap = _caption(ev)
                if cap is not None:
                    outcome.captions.append(cap)
                    console.final(cap)
            elif ev.type == stt.SpeechEventType.RECOGNITION_USAGE and ev.recognition_usage:
                outcome.input_tokens += ev.recognition_usage.input_tokens
                outcome.output_tokens += ev.recognition_usage.output_tokens

    async def feed() -> None:
        for frame in _frames(audio.chunks):
            await pacer.wait()
            if reader.done():
                return  # the stream ended early (an error): the reader reports it
            try:
                stream.push_frame(frame)
            except RuntimeError:  # the stream closed under us: the reader says why
                await asyncio.wait({reader}, timeout=5.0)
                if reader.done():
                    return
                raise
            pacer.pushed(frame)
            if not realtime:
                console.progress(pacer.pushed_s, audio.duration_s)
        if not realtime:
            console.progress(pacer.pushed_s, pacer.pushed_s, force=True)
        stream.end_input()

    reader = asyncio.create_task(read(), name="voxtral-vllm.read")
    feeder = asyncio.create_task(feed(), name="voxtral-vllm.feed")
    try:
        await asyncio.wait({reader, feeder}, return_when=asyncio.FIRST_EXCEPTION)
        if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
            await feeder  # a decoding error
        await reader
        await feeder
    finally:
        for task in (reader, feeder):
            task.cancel()
        await asyncio.gather(reader, feeder, return_exceptions=True)
        await stream.aclose()
        console.close()
    outcome.audio_s = pacer.pushed_s
    outcome.wall_s = time.monotonic() - started
    outcome.dropped_audio_s = stream.stats.dropped_audio_s
    outcome.reconnects = stream.stats.reconnects
    return outcome


def _write_output(path: str, fmt: str, captions: Sequence[Caption], meta: dict[str, Any]) -> None:
    if fmt == "srt":
        text = render_srt(captions)
    elif fmt == "vtt":
        text = render_vtt(captions)
    else:
        text = render_json(captions, meta)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as e:
        raise CLIError(EXIT_FILE, f"cannot write {path}: {e.strerror or e}") from None


async def _transcribe(args: argparse.Namespace) -> int:
    out_path, fmt = _output_plan(args)
    if args.demo:
        if args.file is not None:
            raise CLIError(EXIT_USAGE, "give either FILE or --demo, not both")
        if not args.emulator:
            raise CLIError(
                EXIT_USAGE, "--demo needs --emulator (a real model cannot transcribe the tones)"
            )
        audio = _demo_audio()
    elif args.file is None:
        raise CLIError(EXIT_USAGE, "transcribe needs a FILE (or --emulator --demo)")
    else:
        audio = _open_file(args.file)

    console = _Console(captions=out_path != "-", progress=not args.realtime)
    try:
        async with contextlib.AsyncExitStack() as stack:
            target = await _open_target(
                args, stack, fast=not args.realtime, say=lambda s: console.message(f"{PROG}: {s}")
            )
            session = await stack.enter_async_context(aiohttp.ClientSession())
            info = await _discover(session, target, args.timeout)
            not_served = _not_served(info, target)
            if not_served is not None:
                raise not_served
            status = _auth_status(info)
            if status is not None:
                raise CLIError(EXIT_CONFIG, _auth_message(target, status))
            engine = _make_stt(
                target,
                session,
                args,
                language=args.language,
                # a file fed faster than real time: keep every word, however far vLLM lags
                lag_policy="catch_up" if args.realtime else "wait",
                max_lag_s=5.0 if args.realtime else 60.0,
                input_stall_s=2.0 if args.realtime else 5.0,
            )
            stack.push_async_callback(engine.aclose)
            served = info.model(target.model)
            console.message(
                f"{PROG}: transcribing {audio.label} ({audio.description}"
                + (f", {clock(audio.duration_s)}" if audio.duration_s else "")
                + f") with {target.model} at {target.url}"
                + (f" (vLLM {info.version})" if info.version else "")
            )
            try:
                outcome = await _stream_audio(
                    engine,
                    audio,
                    console,
                    realtime=args.realtime,
                    conn_options=APIConnectOptions(timeout=args.timeout),
                )
            except APIError as e:
                raise _api_failure(e, target) from None
    finally:
        audio.close()

    if outcome.dropped_audio_s > 0:
        console.message(
            f"{PROG}: warning: {outcome.dropped_audio_s:.1f} s of audio were not transcribed "
            "(the server fell behind or the connection was lost)"
        )
    if out_path is not None and fmt is not None:
        server: dict[str, Any] = {
            "url": target.url,
            "vllm_version": info.version,
            "max_model_len": served.max_model_len if served else None,
            "emulator": target.emulator,
        }
        if target.emulator:
            server["note"] = EMULATOR_NOTE
        meta: dict[str, Any] = {
            "generator": f"{PROG} {__version__}",
            "source": {
                "path": audio.label,
                "format": audio.description,
                "duration": audio.duration_s,
            },
            "model": target.model,
            "server": server,
            "language": args.language,
            "transcription_delay_ms": args.delay_ms,
            "usage": {
                "audio_duration": round(outcome.audio_s, 3),
                "input_tokens": outcome.input_tokens,
                "output_tokens": outcome.output_tokens,
            },
            "stream": {
                "reconnects": outcome.reconnects,
                "dropped_audio_s": round(outcome.dropped_audio_s, 3),
            },
        }
        _write_output(out_path, fmt, outcome.captions, meta)
    speed = outcome.audio_s / outcome.wall_s if outcome.wall_s > 0 else 0.0
    written = f"; wrote {out_path}" if out_path not in (None, "-") else ""
    console.message(
        f"{PROG}: done: {len(outcome.captions)} captions from {outcome.audio_s:.1f} s of audio "
        f"in {outcome.wall_s:.1f} s ({speed:.1f}x real time){written}"
    )
    return EXIT_OK


# -- check -----------------------------------------------------------------------------------------


async def _check(args: argparse.Namespace) -> int:
    out = sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async with contextlib.AsyncExitStack() as stack:
        target = await _open_target(args, stack, fast=True, say=say)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        base = http_base(target.url)
        say(f"server:        {base}  (realtime endpoint {target.url})")
        say(f"model:         {target.model}")
        say(f"API key:       {'set (not shown)' if target.api_key else 'none'}")
        info = await _discover(session, target, args.timeout)
        if info.healthy:
            say("health:        OK (/health answered 200)")
        elif info.healthy is False:
            say("health:        NOT HEALTHY (/health did not answer 200)")
        else:
            say("health:        unknown (/health did not answer)")
        say(f"vLLM version:  {info.version or 'unknown (/version did not answer)'}")
        quirks = info.quirks.describe()
        for note in quirks:
            say(f"  known quirk: {note}")
        if info.models:
            say("models served:")
            for m in info.models:
                mark = "  <- configured" if m.id == target.model else ""
                mml = m.max_model_len if m.max_model_len is not None else "unknown"
                say(f"  - {m.id}  max_model_len={mml}{mark}")
        else:
            why = next((e for e in info.errors if e.startswith("/v1/models")), "/v1/models: empty")
            say(f"models served: could not list them ({why})")
        for err in info.errors:
            logging.getLogger(__name__).info("discovery: %s", err)

        status = _auth_status(info)
        if status is not None:
            raise CLIError(EXIT_CONFIG, _auth_message(target, status))
        not_served = _not_served(info, target)
        if not_served is not None:
            raise not_served
        if info.healthy is False:
            raise CLIError(
                EXIT_SERVER, f"vLLM at {base} is not healthy (/health did not answer 200)"
            )
        if target.api_key and info.quirks.api_key_breaks_websocket:
            raise CLIError(
                EXIT_CONFIG,
                f"vLLM {info.version} cannot serve /v1/realtime with --api-key (fixed in 0.20): "
                "upgrade vLLM, or run it without --api-key behind a proxy",
            )

        from .testing.speech import synthesize

        tone = synthesize("hello", 16000)
        frame = rtc.AudioFrame(tone.samples.tobytes(), 16000, 1, tone.samples.size)
        engine = _make_stt(target, session, args, discover_server=False)
        stack.push_async_callback(engine.aclose)
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                engine.recognize(
                    frame, conn_options=APIConnectOptions(max_retry=0, timeout=args.timeout)
                ),
                args.timeout + tone.duration_s + 5.0,
            )
        except APIError as e:
            say("realtime:      FAILED")
            raise _api_failure(e, target) from None
        except asyncio.TimeoutError:
            say("realtime:      FAILED")
            raise CLIError(
                EXIT_SERVER, f"the realtime session at {target.url} did not finish in time"
            ) from None
        elapsed = time.monotonic() - started
        text = result.alternatives[0].text if result.alternatives else ""
        say(
            f"realtime:      OK (session opened with {target.model}; {tone.duration_s:.1f} s test "
            f"tone transcribed in {elapsed:.2f} s as {text!r})"
        )
    return EXIT_OK


# -- entry point -----------------------------------------------------------------------------------


def _setup_logging(verbose: int) -> None:
    plugin_logger = logging.getLogger("livekit.plugins.voxtral_vllm")
    if verbose:
        plugin_logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``--help``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version or a usage error (argparse printed it)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    _setup_logging(args.verbose)
    command = _transcribe if args.command == "transcribe" else _check
    try:
        return asyncio.run(command(args))
    except CLIError as e:
        print(f"{PROG}: error: {e.message}", file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
