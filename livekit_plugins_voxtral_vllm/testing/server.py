"""An in-process emulator of vLLM's ``/v1/realtime`` server for Voxtral Realtime.

:class:`VLLMRealtimeEmulator` serves, on one aiohttp port, ``ws://HOST:PORT/v1/realtime``
(driven by :class:`~.engine.RealtimeEngine`, one per connection), ``GET /health``,
``GET /v1/models`` and ``GET /version``, with vLLM's bearer-token middleware when an API key
is set. Engine steps are run by a single driver task on a virtual engine clock: as in vLLM,
each generation's steps are strictly sequential and one step takes ``step_time_s`` (one engine
iteration), so step *j* ends at ``max(arrival of its audio, end of step j-1) + step_time_s``
whatever the event loop's own lag. With ``step_time_s == 0`` (``fast=True``) steps run inline
the moment their audio arrives.

It is a test double that must never be friendlier than the real server: it never closes a
socket on its own, answers errors exactly as vLLM words them, and drops the TCP connection
without a close frame where vLLM's handler dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import json
import logging
import os
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

import numpy as np
from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from ..protocol import SAMPLE_RATE
from .engine import (
    Generation,
    OutputMode,
    RealtimeEngine,
    ReceivedMessage,
    StepMath,
    StreamingDecoder,
    VersionProfile,
    check_output_mode,
)
from .lexicon import lexicon
from .speech import ToneDecoder
from .tokens import preload

__all__ = [
    "DEFAULT_MODEL",
    "GenerationLimits",
    "EmulatedConnection",
    "EmulatorStats",
    "SendLog",
    "VLLMRealtimeEmulator",
]

logger = logging.getLogger("livekit.plugins.voxtral_vllm.testing")

DEFAULT_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"

_GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
"""vLLM's ``AuthenticationMiddleware`` guards exactly these path prefixes."""
_WS_MAX_MESSAGE = 16 * 1024 * 1024
"""uvicorn's default ``ws_max_size`` (vLLM does not override it): bigger frames close 1009."""
_WS_PING_INTERVAL_S = 20.0
"""uvicorn's default ``ws_ping_interval`` (vLLM does not override it)."""
_SHUTDOWN_CLOSE_CODE = 1012
"""uvicorn closes open WebSockets with 1012 (service restart) on shutdown."""

GenerationLimits = Mapping[int, int] | Callable[[int], "int | None"]
"""Per-generation max_model_len faults: emulator-wide generation index (0 = the first
generation any connection started) -> steps before its unsolicited ``done``."""


def _json_response(payload: Any, status: int = 200) -> web.Response:
    # Starlette's JSONResponse renders compact JSON without ASCII escaping.
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return web.Response(text=body, status=status, content_type="application/json")


def _random_hex16() -> str:
    return f"{secrets.randbits(64):016x}"


_EMPTY_DELTA = '{"type":"transcription.delta","delta":""}'
_DELTA_PREFIX = '{"type":"transcription.delta"'
_DONE_PREFIX = '{"type":"transcription.done"'
_ERROR_PREFIX = '{"type":"error"'


class SendLog:
    """Timestamps of what the emulator read and wrote, as JSON lines, for latency benchmarks.

    ``t`` is ``time.monotonic()`` (CLOCK_MONOTONIC, system-wide on Linux), taken when a frame
    was read (``session``, ``start``) or right after it was written to the socket (``delta``,
    ``done``, ``error``), so another process on the same host can compare its own
    ``time.monotonic()`` with it. One record per line, ``conn`` being the connection id:

    - ``{"ev": "session", "update": {...}}``: the ``session.update`` that validated the session
      (its short scalar fields, e.g. ``language``: a client can tag its sockets with them);
    - ``{"ev": "start", "gen": i}``: a commit started generation ``i`` (0-based) of the socket;
    - ``{"ev": "delta", "text": "..."}``: a ``transcription.delta`` with text (the many empty
      ones are not logged);
    - ``{"ev": "done"}``, ``{"ev": "error", "code": ...}``;
    - ``{"ev": "close", "reason": ...}``.

    Args:
        target: a path (opened for appending on first use, closed by :meth:`close`) or an
            open text stream (left open).
    """

    def __init__(self, target: str | os.PathLike[str] | TextIO) -> None:
        self._path: str | os.PathLike[str] | None
        self._file: TextIO | None
        if isinstance(target, (str, os.PathLike)):
            self._path, self._file = target, None
        else:
            self._path, self._file = None, target

    def write(self, conn: str, ev: str, **fields: Any) -> None:
        t = time.monotonic()
        if self._file is None:
            assert self._path is not None
            self._file = open(self._path, "a", encoding="utf-8")
        record = {"t": t, "conn": conn, "ev": ev, **fields}
        self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def sent(self, conn: str, frame: str) -> None:
        """Log ``frame``, just written on ``conn``, if it is a text delta, done or error."""
        if frame.startswith(_DELTA_PREFIX):
            if frame != _EMPTY_DELTA:
                self.write(conn, "delta", text=json.loads(frame).get("delta"))
        elif frame.startswith(_DONE_PREFIX):
            self.write(conn, "done")
        elif frame.startswith(_ERROR_PREFIX):
            try:
                code = json.loads(frame).get("code")
            except ValueError:
                code = None
            self.write(conn, "error", code=code)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush, and close the file if this log opened it (a later write reopens it)."""
        if self._file is None:
            return
        if self._path is None:
            self._file.flush()
        else:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class EmulatorStats:
    """A snapshot of the emulator's counters (see :meth:`VLLMRealtimeEmulator.stats`)."""

    connections_total: int
    connections_active: int
    generations: int
    steps: int
    dones: int
    errors: dict[str, int]
    unauthorized: int
    dropped: int
    engine_deaths: int
    restarts: int
    http_requests: dict[str, int]


class EmulatedConnection:
    """One WebSocket client of the emulator, live or closed: inspection and fault injection.

    ``received`` and ``generations`` are the engine's records; ``sent`` lists every text frame
    actually written to the socket, in order.
    """

    def __init__(
        self,
        emulator: VLLMRealtimeEmulator,
        engine: RealtimeEngine,
        ws: web.WebSocketResponse,
        request: web.Request,
        now: float,
    ) -> None:
        self.engine = engine
        self.request_headers: dict[str, str] = dict(request.headers)
        self.request_path: str = request.path_qs
        """The upgrade request's path and query string, as the client sent it."""
        self.sent: list[str] = []
        self.opened_at = now
        self.closed_at: float | None = None
        self.close_reason: str | None = None
        """``client_closed``, ``binary_frame``, ``dropped``, ``server_stopped``,
        ``server_shutdown`` (1012) or ``protocol_error``."""
        self._emulator = emulator
        self._ws = ws
        self._transport = request.transport
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._sending = False
        self._scheduled = False
        self._last_step_end = 0.0
        self._closed = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._session_logged = False

    # -- inspection ------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """vLLM's ``connection_id`` (``ws-<uuid4>``)."""
        return self.engine.connection_id

    @property
    def session_id(self) -> str:
        """The ``id`` sent in ``session.created``."""
        return self.engine.session_id

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def received(self) -> list[ReceivedMessage]:
        """Every text frame read, parsed (append payloads replaced by their length)."""
        return self.engine.received

    @property
    def generations(self) -> list[Generation]:
        """All generations of this connection, oldest first (the last may be running)."""
        return self.engine.generations

    @property
    def generation(self) -> Generation | None:
        """The running generation, if any."""
        return self.engine.generation

    @property
    def audio(self) -> np.ndarray:
        """All valid audio appended on this connection, int16."""
        return self.engine.audio

    @property
    def audio_samples(self) -> int:
        return self.engine.audio_samples

    @property
    def model_validated(self) -> bool:
        return self.engine.model_validated

    @property
    def sent_events(self) -> list[dict[str, Any]]:
        """``sent`` parsed as JSON (frames injected with :meth:`send_text` that are not JSON
        objects are skipped)."""
        events: list[dict[str, Any]] = []
        for frame in self.sent:
            try:
                event = json.loads(frame)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    # -- faults ----------------------------------------------------------------------------

    def drop(self, after_steps: int | None = None) -> None:
        """Abort the TCP connection without a close frame, now or after ``after_steps`` more
        engine steps of this connection (the frames of those steps are written first)."""
        if not self.is_open:
            return
        if after_steps is None:
            self._abort("dropped")
            return
        self.engine.schedule_drop(after_steps)
        self._wake_writer()

    def inject_processing_error(
        self, message: str = "Emulated engine failure", after_steps: int = 0
    ) -> None:
        """Make the running (or next) generation fail after ``after_steps`` more steps:
        ``processing_error``, no ``done``, queue kept, as an engine exception does in vLLM."""
        self.engine.inject_processing_error(message, after_steps, self._emulator._now())
        self._emulator._after_engine_change(self)

    @property
    def rut(self) -> bool:
        """The blank-token rut (vllm#47614) on this connection only: while true, every step
        of its generations sends ``""`` (the pad) whatever it hears, and the words it hears
        are lost; the socket stays open and healthy. Takes effect at the next step."""
        return self.engine.rut

    @rut.setter
    def rut(self, value: bool) -> None:
        self.engine.rut = bool(value)

    def rut_after(self, steps: int) -> None:
        """This connection falls into the rut once ``steps`` more engine steps have run on it
        (its earlier words are transcribed; from then on only pads)."""
        self.engine.schedule_rut(steps)

    def limit_generation(self, steps: int) -> None:
        """Per-generation max_model_len fault: the running generation of this connection (or
        its next one) gets vLLM >= 0.32's unsolicited ``done`` once it has run ``steps``
        steps (sent ``steps`` deltas)."""
        self._emulator._check_limits_supported()
        self.engine.limit_generation(steps, self._emulator._now())
        self._emulator._after_engine_change(self)

    def send_text(self, text: str) -> None:
        """Write an arbitrary text frame, in order with the emulator's own frames."""
        self.engine.send_text(text)
        self._wake_writer()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the socket is gone (any reason)."""
        await asyncio.wait_for(self._closed.wait(), timeout)

    # -- plumbing --------------------------------------------------------------------------

    def _wake_writer(self) -> None:
        if self.engine.has_data_to_send or self.engine.drop_requested:
            self._flushed.clear()
        self._wake.set()

    def _backpressured(self) -> bool:
        # The writer is parked in a send (the client stopped reading). vLLM feeds a step's
        # token back before awaiting the send of its delta, so such a client stalls its own
        # generation about one step later.
        return self._sending

    def _log_received(self, log: SendLog, generations_before: int) -> None:
        engine = self.engine
        if not self._session_logged and engine.session_update is not None:
            self._session_logged = True
            log.write(self.id, "session", update=_scalar_fields(engine.session_update))
        for index in range(generations_before, len(engine.generations)):
            log.write(self.id, "start", gen=index)

    async def _write_loop(self) -> None:
        record = self._emulator.record_messages
        log = self._emulator.send_log
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.engine.has_data_to_send:
                    for frame in self.engine.data_to_send():
                        self._sending = True
                        await self._ws.send_str(frame)
                        self._sending = False
                        if record:
                            self.sent.append(frame)
                        if log is not None:
                            log.sent(self.id, frame)
                    self._emulator._notify()
                self._flushed.set()
                if self.engine.drop_requested:
                    self._abort("dropped")
                    return
                self._emulator._mark_ready(self)
        except (ConnectionError, RuntimeError) as e:
            logger.debug("connection %s: write failed: %s", self.id, e)
            self._abort(self.close_reason or "dropped")
        except Exception:
            logger.exception("connection %s: emulator writer failed", self.id)
            self._abort(self.close_reason or "dropped")
        finally:
            self._sending = False
            self._flushed.set()

    def _abort(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self._transport is not None:
            self._transport.abort()

    async def _close_gracefully(self, code: int, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        try:
            await asyncio.wait_for(self._ws.close(code=code), 1.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        self._abort(reason)

    def _mark_closed(self, now: float) -> None:
        if self.closed_at is None:
            self.closed_at = now
            if self.close_reason is None:
                self.close_reason = "client_closed"
            self.engine.disconnect(now)
            self._closed.set()
            log = self._emulator.send_log
            if log is not None:
                log.write(self.id, "close", reason=self.close_reason)


def _scalar_fields(update: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in update.items() if k != "type" and isinstance(v, (str, int, float, bool))
    }


class VLLMRealtimeEmulator:
    """A protocol-faithful stand-in for ``vllm serve mistralai/Voxtral-Mini-4B-Realtime-2602``.

    Usage::

        async with VLLMRealtimeEmulator(fast=True) as emu:
            async with websockets.connect(emu.url) as ws: ...
            assert emu.connections[0].generations[0].done_text == " hello world."

    Args:
        host: interface to bind (default ``127.0.0.1``).
        port: TCP port; 0 picks a free one (kept across :meth:`restart`).
        served_model_name: ``--served-model-name`` (one or several); ``session.update`` must
            name one of them (or ``""``).
        max_model_len: ``--max-model-len``; a generation may run ``max_model_len - 39`` steps
            (480 ms delay) before the unsolicited ``done`` (>= 0.32) or engine death (< 0.32).
        transcription_delay_ms: the model's ``transcription_delay_ms`` (multiple of 80).
        api_key: ``--api-key`` (one or several): guards ``/v1/*`` including the WS upgrade.
        fast: steps run as soon as audio allows, with no compute time (tests' default).
        step_time_s: compute time of one engine step when not ``fast`` (default 0.01 s): audio
            is processed in real time and the right-pad flush after a final takes 17 x this.
            Changeable at runtime (:attr:`step_time_s`); above 0.08 s the server falls
            behind real time and the unbounded queue grows, as an overloaded GPU does.
        vllm_version: behaviour profile (0.17.0 to 0.33.x), see :class:`~.engine.VersionProfile`.
        output: ``"tokens"`` (default): like the real model, one real Tekken token per step,
            each delta as vLLM 0.33's incremental detokenizer makes it (needs the
            ``[emulator]`` extra: mistral_common). ``"words"``: a whole word per delta.
        language: what the speaker speaks (:data:`~.lexicon.LANGUAGES`): the text the tone
            words of ``synthesize(..., language=...)`` stand for. Changeable at runtime
            (:attr:`language`, for generations that start afterwards). ``session.update``'s
            ``language`` plays no part, as in vLLM.
        generation_max_steps: per-generation max_model_len faults, see :attr:`generation_max_steps`.
        decoder_factory: makes one recogniser per generation (default: a ``speech.ToneDecoder``
            for :attr:`language`).
        record_audio: keep received audio for inspection (turn off for long soak runs).
        record_messages: keep every received/sent frame per connection (``received``,
            ``sent``); turn off for long soak runs.
        skip_model_name_validation: ``VLLM_SKIP_MODEL_NAME_VALIDATION=1``.
        engine_iteration_timeout_s: override the 0.17-0.24 token-feedback timeout (60 s there,
            none elsewhere) so tests can reach the silent hang quickly.
        engine_death_exit_delay_s: after an engine death, how long the API server lingers
            (``/health`` 503) before its watchdog shuts it down (closing sockets 1012).
        model_root: ``root`` in ``/v1/models`` (the model path; default: the first name).
        send_log: a path or text stream to record send timestamps to (:class:`SendLog`, for
            latency benchmarks); None for none.
        ssl_context: serve over TLS (``wss://`` and ``https://``) with this server context.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        served_model_name: str | Sequence[str] = DEFAULT_MODEL,
        max_model_len: int = 131072,
        transcription_delay_ms: int = 480,
        api_key: str | Sequence[str] | None = None,
        fast: bool = False,
        step_time_s: float | None = None,
        vllm_version: str = "0.33.0",
        output: OutputMode = "tokens",
        language: str = "en",
        generation_max_steps: GenerationLimits | None = None,
        decoder_factory: Callable[[], StreamingDecoder] | None = None,
        record_audio: bool = True,
        record_messages: bool = True,
        skip_model_name_validation: bool = False,
        engine_iteration_timeout_s: float | None = None,
        engine_death_exit_delay_s: float = 5.0,
        model_root: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        send_log: str | os.PathLike[str] | TextIO | None = None,
    ) -> None:
        if fast and step_time_s:
            raise ValueError("fast=True means step_time_s=0")
        if step_time_s is not None and step_time_s < 0:
            raise ValueError("step_time_s must be >= 0")
        names = [served_model_name] if isinstance(served_model_name, str) else served_model_name
        if not names:
            raise ValueError("served_model_name must name at least one model")
        self.host = host
        self._port = port
        self.served_model_names: tuple[str, ...] = tuple(names)
        self.model_root = model_root or self.served_model_names[0]
        self.math = StepMath(transcription_delay_ms, max_model_len)
        self.profile = VersionProfile.for_version(vllm_version)
        keys = [api_key] if isinstance(api_key, str) else list(api_key or [])
        self._api_key_hashes = [hashlib.sha256(k.encode()).digest() for k in keys]
        self._step_time_s = 0.0 if fast else (0.01 if step_time_s is None else step_time_s)
        self.output: OutputMode = check_output_mode(output)
        lexicon(language)  # validates it
        self._language = language
        self._decoder_factory = decoder_factory or self._tone_decoder
        self._rut = False
        self._hold_steps = 0
        self._rut_next = 0
        self._rut_next_after = 0
        self._generations_started = 0
        self._generation_max_steps: GenerationLimits | None = None
        if generation_max_steps is not None:
            self.generation_max_steps = generation_max_steps
        self.record_audio = record_audio
        self.record_messages = record_messages
        self.skip_model_name_validation = skip_model_name_validation
        if engine_iteration_timeout_s is None:
            engine_iteration_timeout_s = self.profile.engine_iteration_timeout_s
        elif self.profile.engine_iteration_timeout_s is None:
            raise ValueError(
                f"vLLM {vllm_version} has no token-feedback timeout (only 0.17 to 0.24)"
            )
        self.engine_iteration_timeout_s = engine_iteration_timeout_s
        self.engine_death_exit_delay_s = engine_death_exit_delay_s
        self.ssl_context = ssl_context
        self.send_log = SendLog(send_log) if send_log is not None else None

        self.connections: list[EmulatedConnection] = []
        """Every connection ever accepted, oldest first (closed ones included)."""
        self._active: set[EmulatedConnection] = set()
        self._heap: list[tuple[float, int, EmulatedConnection]] = []
        self._seq = 0
        self._work = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._driver: asyncio.Task[None] | None = None
        self._death_task: asyncio.Task[None] | None = None
        self._death_exiting = False
        self._engine_dead = False
        self._counters: Counter[str] = Counter()
        self._http_requests: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> VLLMRealtimeEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start listening (on the same port as before after a :meth:`stop`)."""
        if self._runner is not None:
            return
        if self.output == "tokens":
            # about 1 s once per process: not inside the first generation's step
            await asyncio.to_thread(preload)

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._middleware(request, handler)

        app = web.Application(middlewares=[middleware])
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/realtime", self._realtime)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self.host, self._port, reuse_address=True, ssl_context=self.ssl_context
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1])
        self._engine_dead = False
        self._driver = asyncio.create_task(self._drive(), name="vllm-emulator-driver")
        logger.info("vLLM realtime emulator (vLLM %s) on %s", self.profile.version, self.url)

    async def stop(self, graceful: bool = False) -> None:
        """Stop serving: the port stops accepting and every socket goes away.

        ``graceful=False`` is a crash (``kill -9``): TCP torn down, no close frame.
        ``graceful=True`` is uvicorn's shutdown: each socket gets a 1012 close frame.
        """
        death = self._death_task
        if death is not None and death is not asyncio.current_task():
            self._death_task = None
            if not self._death_exiting:
                death.cancel()
            # Either cancelled while waiting, or finishing this very shutdown itself.
            await asyncio.gather(death, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is None:
            return
        active = list(self._active)
        if graceful:
            await asyncio.gather(
                *(c._close_gracefully(_SHUTDOWN_CLOSE_CODE, "server_shutdown") for c in active)
            )
        else:
            for conn in active:
                conn._abort("server_stopped")
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        self._heap.clear()
        await runner.cleanup()
        now = self._now()
        for conn in active:
            conn._mark_closed(now)
        self._active.clear()
        self._notify()
        if self.send_log is not None:
            self.send_log.flush()
        logger.info("vLLM realtime emulator stopped (%s)", "graceful" if graceful else "crash")

    async def restart(self) -> None:
        """Crash (if running) and come back on the same port with a fresh engine."""
        await self.stop()
        await self.start()
        self._counters["restarts"] += 1

    async def close(self) -> None:
        """Shut down like uvicorn (1012 to open sockets) and release every task and socket."""
        await self.stop(graceful=True)
        if self.send_log is not None:
            self.send_log.close()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/realtime`` (``wss://`` when serving TLS)."""
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://{self.host}:{self._port}/v1/realtime"

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` (``https://`` when serving TLS; append ``/health``,
        ``/v1/models``, ``/version``)."""
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def is_serving(self) -> bool:
        return self._runner is not None

    # -- inspection ------------------------------------------------------------------------

    @property
    def active_connections(self) -> list[EmulatedConnection]:
        return [c for c in self.connections if c.is_open]

    @property
    def engine_dead(self) -> bool:
        """True between an engine death (< 0.32 max_model_len overrun) and the next start."""
        return self._engine_dead

    def stats(self) -> EmulatorStats:
        """Counters over every connection since construction."""
        errors: Counter[str] = Counter()
        generations = steps = dones = 0
        for conn in self.connections:
            generations += len(conn.generations)
            steps += conn.engine.steps_total
            dones += sum(1 for g in conn.generations if g.done_text is not None)
            errors.update(conn.engine.errors_sent)
        return EmulatorStats(
            connections_total=len(self.connections),
            connections_active=len(self._active),
            generations=generations,
            steps=steps,
            dones=dones,
            errors=dict(errors),
            unauthorized=self._counters["unauthorized"],
            dropped=sum(1 for c in self.connections if c.close_reason == "dropped"),
            engine_deaths=self._counters["engine_deaths"],
            restarts=self._counters["restarts"],
            http_requests=dict(self._http_requests),
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (re-checked on every emulator state change)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError("emulator condition not reached")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))
            except asyncio.TimeoutError:
                pass

    async def wait_for_connection(self, index: int = 0, timeout: float = 5.0) -> EmulatedConnection:
        """The ``index``-th connection ever accepted, once it exists."""
        await self.wait_until(lambda: len(self.connections) > index, timeout)
        return self.connections[index]

    # -- runtime knobs and faults ------------------------------------------------------------

    @property
    def step_time_s(self) -> float:
        """Compute time of one engine iteration; raise it to make the server fall behind."""
        return self._step_time_s

    @step_time_s.setter
    def step_time_s(self, value: float) -> None:
        if value < 0:
            raise ValueError("step_time_s must be >= 0")
        self._step_time_s = value
        # a step already scheduled by the old time is due again by the new one (else lowering
        # it after raising it to hours would leave that step an hour away)
        for _, _, conn in self._heap:
            conn._scheduled = False
        self._heap.clear()
        self._work.set()
        for conn in self._active:
            self._after_engine_change(conn)

    @property
    def language(self) -> str:
        """What the speaker speaks: the text the tone words stand for (one of
        :data:`~.lexicon.LANGUAGES`). A change applies to generations that start afterwards."""
        return self._language

    @language.setter
    def language(self, value: str) -> None:
        lexicon(value)
        self._language = value

    def _tone_decoder(self) -> StreamingDecoder:
        return ToneDecoder(SAMPLE_RATE, language=self._language)

    @property
    def rut(self) -> bool:
        """The blank-token rut (vllm#47614) on every connection, current and future: while
        true, every step sends ``""`` whatever it hears (the words are lost), and sockets stay
        open. For one socket only, see :attr:`EmulatedConnection.rut` and
        :meth:`rut_next_connections`."""
        return self._rut

    @rut.setter
    def rut(self, value: bool) -> None:
        self._rut = bool(value)
        for conn in self.connections:
            conn.engine.rut_all = self._rut

    @property
    def hold_s(self) -> float:
        """``output="tokens"``: how long the model holds the text it hears before releasing
        it in a burst, one token per step (0: it releases each word from the step that covers
        its end, the default). The real model holds text under load and after pauses; a burst
        makes word times hard to tell. Rounded down to whole 80 ms steps; applies to every
        connection from its next step."""
        return self._hold_steps * 0.08

    @hold_s.setter
    def hold_s(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"hold_s must be >= 0, got {value}")
        self._hold_steps = int(value / 0.08 + 1e-9)
        for conn in self.connections:
            conn.engine.hold_steps = self._hold_steps

    def rut_next_connections(self, count: int = 1, *, after_steps: int = 0) -> None:
        """The next ``count`` connections accepted fall into the rut after their first
        ``after_steps`` steps (0: from their first step), for clients that open their sockets
        themselves; later connections are healthy."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if after_steps < 0:
            raise ValueError(f"after_steps must be >= 0, got {after_steps}")
        self._rut_next = count
        self._rut_next_after = after_steps

    @property
    def generation_max_steps(self) -> GenerationLimits | None:
        """Per-generation max_model_len faults (vLLM >= 0.32 profiles): a mapping from the
        emulator-wide generation index (0 = the first generation any connection started, in
        the order commits started them) to a step count, or a callable taking that index and
        returning a step count or None. Generation *i* sends that many deltas, then an
        unsolicited ``done`` (finish reason ``max_model_len``), as if the server's
        max_model_len were ``prompt_tokens + steps`` for it. Read when a generation starts."""
        return self._generation_max_steps

    @generation_max_steps.setter
    def generation_max_steps(self, value: GenerationLimits | None) -> None:
        if value is not None:
            self._check_limits_supported()
            if not callable(value):
                bad = {i: n for i, n in value.items() if not (isinstance(n, int) and n >= 1)}
                if bad:
                    raise ValueError(f"generation_max_steps needs step counts >= 1, got {bad}")
        self._generation_max_steps = value

    @property
    def generations_started(self) -> int:
        """Generations started on all connections so far (the next one's index)."""
        return self._generations_started

    def _check_limits_supported(self) -> None:
        if not self.profile.stops_at_max_model_len:
            raise ValueError(
                f"per-generation max_model_len faults model vLLM >= 0.32's unsolicited done; "
                f"vLLM {self.profile.version} dies at max_model_len instead (use max_model_len=)"
            )

    def _next_generation_limit(self) -> int | None:
        index = self._generations_started
        self._generations_started += 1
        limits = self._generation_max_steps
        if limits is None:
            return None
        if callable(limits):
            steps = limits(index)
            if steps is not None and steps < 1:
                raise ValueError(f"generation_max_steps({index}) gave {steps}: must be >= 1")
            return steps
        return limits.get(index)

    def drop_all(self, after_steps: int | None = None) -> None:
        """:meth:`EmulatedConnection.drop` on every open connection."""
        for conn in list(self._active):
            conn.drop(after_steps)

    # -- HTTP --------------------------------------------------------------------------------

    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._http_requests[request.path] += 1
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if self._api_key_hashes and request.method != "OPTIONS":
            if is_ws and self.profile.api_key_breaks_websocket:
                # < 0.20: scope["method"] raises KeyError for WebSocket scopes -> HTTP 500.
                return web.Response(status=500, text="Internal Server Error")
            if request.path.startswith(_GUARDED_PREFIXES) and not self._authorized(request):
                self._counters["unauthorized"] += 1
                return _json_response({"error": "Unauthorized"}, status=401)
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            if is_ws:
                # Starlette closes an unrouted WebSocket before accept -> uvicorn answers 403.
                return web.Response(status=403, text="")
            return _json_response({"detail": "Not Found"}, status=404)
        except web.HTTPMethodNotAllowed:
            return _json_response({"detail": "Method Not Allowed"}, status=405)
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for expected in self._api_key_hashes:
            ok |= hmac.compare_digest(digest, expected)
        return ok

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self._engine_dead else 200)

    async def _version(self, request: web.Request) -> web.Response:
        return _json_response({"version": self.profile.version})

    async def _models(self, request: web.Request) -> web.Response:
        # vLLM builds the cards per request: `created` is now, the permission id is fresh.
        created = int(time.time())
        permission = {
            "id": f"modelperm-{_random_hex16()}",
            "object": "model_permission",
            "created": created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        cards = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.model_root,
                "parent": None,
                "max_model_len": self.math.max_model_len,
                "permission": [permission],
            }
            for name in self.served_model_names
        ]
        return _json_response({"object": "list", "data": cards})

    # -- WebSocket ---------------------------------------------------------------------------

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=_WS_MAX_MESSAGE, heartbeat=_WS_PING_INTERVAL_S, autoping=True
        )
        if not ws.can_prepare(request):
            # FastAPI has no HTTP route at /v1/realtime.
            return _json_response({"detail": "Not Found"}, status=404)
        await ws.prepare(request)
        now = self._now()
        engine = RealtimeEngine(
            served_model_names=self.served_model_names,
            profile=self.profile,
            math=self.math,
            decoder_factory=self._decoder_factory,
            output=self.output,
            generation_limit=self._next_generation_limit,
            session_id=f"sess-{_random_hex16()}",
            created=int(time.time()),
            now=now,
            record_audio=self.record_audio,
            record_messages=self.record_messages,
            skip_model_name_validation=self.skip_model_name_validation,
            engine_iteration_timeout_s=self.engine_iteration_timeout_s,
        )
        engine.rut_all = self._rut
        engine.hold_steps = self._hold_steps
        if self._rut_next > 0:
            self._rut_next -= 1
            engine.schedule_rut(self._rut_next_after)
        if self._engine_dead:
            engine.kill_engine(now)
        conn = EmulatedConnection(self, engine, ws, request, now)
        self.connections.append(conn)
        self._active.add(conn)
        conn._writer_task = asyncio.create_task(conn._write_loop(), name=f"writer-{conn.id}")
        conn._wake_writer()
        self._notify()
        logger.debug("connection %s opened", conn.id)
        try:
            log = self.send_log
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    generations = len(engine.generations)
                    engine.receive_text(msg.data, self._now())
                    if log is not None:
                        conn._log_received(log, generations)
                    self._after_engine_change(conn)
                    if engine.has_data_to_send:
                        # vLLM's receive loop awaits its own replies before reading on.
                        await conn._flushed.wait()
                elif msg.type is WSMsgType.BINARY:
                    # vLLM: receive_text() raises KeyError('text'); the handler returns and
                    # the transport goes away without a close frame.
                    logger.debug("connection %s: binary frame, dropping", conn.id)
                    await conn._flushed.wait()
                    conn._abort("binary_frame")
                    break
                else:
                    if msg.type is WSMsgType.ERROR and conn.close_reason is None:
                        conn.close_reason = "protocol_error"
                    break
        finally:
            writer = conn._writer_task
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            conn._mark_closed(self._now())
            self._active.discard(conn)
            self._notify()
            logger.debug("connection %s closed (%s)", conn.id, conn.close_reason)
        return ws

    # -- engine driving ----------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _mark_ready(self, conn: EmulatedConnection) -> None:
        if not conn.is_open or conn.engine.runnable_steps() == 0:
            return
        if self._step_time_s == 0:
            self._run_inline(conn)
        elif not conn._scheduled:
            self._schedule(conn, self._due(conn))

    def _due(self, conn: EmulatedConnection) -> float:
        ready_at = conn.engine.input_ready_at()
        assert ready_at is not None
        return max(ready_at, conn._last_step_end) + self._step_time_s

    def _schedule(self, conn: EmulatedConnection, due: float) -> None:
        conn._scheduled = True
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, conn))
        self._work.set()

    def _after_engine_change(self, conn: EmulatedConnection) -> None:
        self._mark_ready(conn)
        conn._wake_writer()
        self._notify()

    def _run_inline(self, conn: EmulatedConnection) -> None:
        if conn._backpressured():
            return
        conn.engine.run_steps(conn.engine.runnable_steps(), self._now())
        self._check_fatal(conn)
        conn._wake_writer()

    def _check_fatal(self, conn: EmulatedConnection) -> None:
        if conn.engine.engine_fatal and not self._engine_dead:
            self._engine_death()

    def _engine_death(self) -> None:
        # < 0.32: the engine core asserts; every request gets EngineDeadError, /health turns
        # 503, and the API server's watchdog shuts uvicorn down shortly after.
        logger.warning("emulated engine death: every session fails, then the server exits")
        self._engine_dead = True
        self._counters["engine_deaths"] += 1
        now = self._now()
        for conn in self._active:
            conn.engine.kill_engine(now)
            conn._wake_writer()
        self._heap.clear()
        for conn in self._active:
            conn._scheduled = False
        self._notify()
        self._death_task = asyncio.create_task(self._exit_after_death(), name="vllm-death")

    async def _exit_after_death(self) -> None:
        await asyncio.sleep(self.engine_death_exit_delay_s)
        self._death_exiting = True
        try:
            await self.stop(graceful=True)
        finally:
            self._death_exiting = False
            if self._death_task is asyncio.current_task():
                self._death_task = None

    async def _drive(self) -> None:
        # Each running generation is a sequential pipeline, as in vLLM: step j ends at
        # max(its audio's arrival, step j-1's end) + step_time_s. Steps are due by that
        # virtual clock, so event-loop lag never slows the modelled engine down, and a step
        # never runs before its audio arrived.
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                _, _, conn = heapq.heappop(self._heap)
                conn._scheduled = False
                self._advance(conn, now)
            self._work.clear()
            timeout = self._heap[0][0] - loop.time() if self._heap else None
            if timeout is None or timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout)
            else:
                await asyncio.sleep(0)

    def _advance(self, conn: EmulatedConnection, now: float) -> None:
        engine = conn.engine
        if not conn.is_open or self._engine_dead:
            return
        if self._step_time_s == 0:
            self._run_inline(conn)
            return
        if conn._backpressured():
            return  # its writer re-marks it once drained
        ran = False
        while engine.runnable_steps() > 0:
            due = self._due(conn)
            if due > now:
                self._schedule(conn, due)
                break
            engine.run_steps(1, due)
            conn._last_step_end = due
            ran = True
            self._check_fatal(conn)
            if self._engine_dead:
                break
        if ran:
            conn._wake_writer()
            self._notify()
