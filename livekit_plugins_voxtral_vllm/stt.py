"""``STT`` and ``SpeechStream``: the LiveKit glue around :class:`~.stream_core.StreamCore`.

``push_frame`` resamples each frame at once, in the caller, and hands the audio on in one chunk
as soon as it completes the live generation's next step (``StreamCore.next_step_sample``; every
80 ms of the stream when no generation is live), so each step's audio leaves the moment it is
complete. While ``_run`` is taking input, a chunk goes straight on to the endpointer and the
core; otherwise it waits in LiveKit's input channel for the input task. (With a LiveKit VAD,
frames go through the channel whole, since the VAD reads them too.) ``_run`` owns that input
task, one task per vLLM socket ("lane": connect, then read, plus a writer for what cannot be
written at once), and one timer handle. Every input goes to the core, then
:meth:`SpeechStream._pump` carries out the core's actions: it is the only code that writes to a
socket or emits a SpeechEvent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import aiohttp
import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    stt,
    utils,
)
from livekit.agents import (
    vad as lk_vad,
)
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr, TimedString
from livekit.agents.utils import AudioBuffer, is_given

from .api_errors import (
    ConfigurationFailure,
    EveryEndpointRefused,
    connect_errors,
    no_usable_endpoint,
    refusal_error,
    stream_failure,
)
from .audio import AudioPipeline
from .connection import RealtimeConnection
from .discovery import ServerInfo
from .endpointer import Endpointer
from .endpointer import SpeechEnded as EpSpeechEnded
from .endpointer import SpeechResumed as EpSpeechResumed
from .endpointer import SpeechStarted as EpSpeechStarted
from .endpoints import shared_pool
from .generation_cap import DEFAULT_MAX_GENERATION_S
from .lane_io import LaneIO
from .log import logger
from .protocol import SAMPLE_RATE, ErrorCode
from .recognize import buffer_audio, final_transcript, transcribe
from .rut import DEFAULT_BLANK_RUT_S
from .segmenter import SegmenterOptions
from .server_facts import ServerFacts
from .stream_core import (
    BlankRut,
    CloseLane,
    CoreOptions,
    Final,
    Interim,
    LagPolicy,
    OpenLane,
    SendOnLane,
    SpeechEnded,
    SpeechStarted,
    StreamCore,
    StreamFailed,
    StreamStats,
    UsageReport,
)
from .stt_options import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    SocketMode,
    STTOptions,
    resolve_options,
)
from .vad_clock import VadClock
from .vad_endpointer import VadEndpointer, VadEndpointerOptions
from .vad_model import SileroBatch
from .warm_socket import WarmSocket

__all__ = ["STT", "SpeechStream", "DEFAULT_MODEL", "DEFAULT_BASE_URL"]

_VAD_DRAIN_S = 10.0  # how long end_input or flush waits for a LiveKit VAD to judge the audio
_VAD_POLL_S = 0.005  # how often a flush looks whether a LiveKit VAD has caught up


class STT(stt.STT[Literal["metrics_collected", "blank_rut"]]):
    """Live speech-to-text from Voxtral Realtime served by vLLM's ``/v1/realtime``.

    Events: ``"metrics_collected"`` (LiveKit's), and ``"blank_rut"`` with a
    :class:`~.stream_core.BlankRut` when a stream detects vLLM's blank-token rut
    (vllm-project/vllm#47614: the server answers every step with an empty delta over speech).
    Each stream's counters are in ``stream.stats``.

    Args:
        base_url: the server, as ``ws(s)://host:port[/v1/realtime]``, ``http(s)://...`` or a
            bare ``host:port``; or several vLLM replicas, as a list or a comma-separated
            string. Default ``$VOXTRAL_VLLM_BASE_URL`` (comma-separated for several), else
            ``ws://127.0.0.1:8000/v1/realtime``. With several, each stream starts on a random
            healthy one and moves to another when its server refuses, drops, loses a
            generation or stops answering, replaying from the last final (see
            :mod:`~.endpoints`). For many replicas, a load balancer in front of them
            (README, "Scaling out") is the other way.
        model: the served model name. Default ``$VOXTRAL_VLLM_MODEL``, else
            ``mistralai/Voxtral-Mini-4B-Realtime-2602``.
        api_key: vLLM's ``--api-key``, sent only as ``Authorization: Bearer``. Default
            ``$VOXTRAL_VLLM_API_KEY``.
        language: label for the transcripts (the model detects the language itself); also
            sent in ``session.update``, which vLLM 0.33 ignores.
        transcription_delay_ms: the server's delay (``tekken.json``; a multiple of 80 ms):
            vLLM cannot be told it, so tell the plugin, for timing and timestamps.
        vad: None for the built-in endpointer, or any LiveKit ``vad.VAD`` (e.g. Silero) to
            decide when utterances start and end.
        endpointer: the built-in endpointer (when ``vad`` is None): ``"silero"`` (Silero's
            model behind a cheap gate, batched across the process's streams; see
            ``vad_endpointer.py``) or ``"energy"`` (the previous energy-only one, no model).
            Default ``$VOXTRAL_VLLM_ENDPOINTER``, else ``"silero"``.
        min_speech_ms, min_silence_ms: built-in endpointer: speech must last this long to
            start an utterance, silence this long to end it. Default: the endpointer's own
            (64 / 416 for ``"silero"``, 120 / 600 for ``"energy"``).
        preroll_ms: audio sent before the detected speech start, so the first syllable is kept.
        sentence_pause_s, max_pause_s, max_segment_s: caption segmentation: a caption ends at
            sentence-final punctuation followed by this pause, at a pause this long, or at a word
            boundary once it is this long.
        max_model_len: the server's context; learned from ``/v1/models`` when None. Used to roll
            a long utterance over to a new generation before the limit.
        max_generation_s: roll a generation over (at the next caption pause) once it has
            taken this much audio, since vLLM's steps get slower as a generation grows
            (about 3 ms per minute of audio, vllm-project/vllm#58324). 5 s to 24 h; None for
            no cap. Default 60 s.
        max_lag_s, lag_policy: when vLLM falls this far behind the audio: ``"catch_up"`` (stay
            live; the backlog is dropped and counted) or ``"wait"``.
        input_stall_s: an utterance with no incoming audio for this long is ended.
        generation_timeout_s: a generation with no server output for this long is lost and
            replayed on a new connection.
        max_outage_s: how long a server that cannot be reached (a vLLM restart loads weights
            and compiles for minutes) is retried before the stream fails; the last 20 s of
            audio are replayed when it is back, older audio is dropped and counted. With
            several endpoints, the outage is every one of them being unreachable.
        socket_mode: ``"per_utterance"`` (default) opens a socket when speech starts and
            closes it after the utterance's ``done``, so a least-connections load balancer in
            front of several servers counts running generations, not idle streams. The
            connect overlaps the audio (the endpointer's decision time, the pre-roll, and the
            delay vLLM needs before its first step): benchmarks/socket_mode.py measured no
            added latency up to a 300 ms connect. ``"warm"`` keeps one idle socket per stream
            open for its next utterance (and ``prewarm`` opens one).
        endpoint_cooldown_s: with several endpoints, how long one that failed is skipped
            (doubling with each failure in a row, up to 60 s) before its ``/health`` is asked
            again.
        blank_rut_s: seconds of endpointed speech answered only with empty deltas (counted
            across generations, from 1 s into each utterance) after which the stream takes it
            for vLLM's blank-token rut (vllm-project/vllm#47614): one warning, a
            ``"blank_rut"`` event, ``stats.blank_ruts``, and the stream continues on a fresh
            socket, replaying from the last word (as far as the 20 s audio history holds);
            if the fresh socket ruts for as long again, it is reported once more
            (``persistent``). 3 to 600 s, or None to never watch for it. Default 10 s: most
            utterances are shorter, and the model writes a word within about a second of
            hearing it.
        http_session: an aiohttp session to use (default: the job's, or one owned here).
        ssl_context: for ``wss://`` with a private CA or client certificates.
        target_streaming_delay_ms: accepted for compatibility and ignored: the delay is a
            server setting (see ``transcription_delay_ms``).
    """

    def __init__(
        self,
        *,
        base_url: str | Sequence[str] | None = None,
        model: str | None = None,
        api_key: str | None = None,
        language: str | None = None,
        transcription_delay_ms: int = 480,
        vad: lk_vad.VAD | None = None,
        endpointer: str | None = None,
        min_speech_ms: int | None = None,
        min_silence_ms: int | None = None,
        preroll_ms: int = 300,
        sentence_pause_s: float = 0.4,
        max_pause_s: float = 1.2,
        max_segment_s: float = 12.0,
        max_model_len: int | None = None,
        max_generation_s: float | None = DEFAULT_MAX_GENERATION_S,
        max_lag_s: float = 5.0,
        lag_policy: LagPolicy | str = LagPolicy.CATCH_UP,
        input_stall_s: float = 2.0,
        generation_timeout_s: float = 10.0,
        max_outage_s: float = 180.0,
        discover_server: bool = True,
        socket_mode: SocketMode = "per_utterance",
        endpoint_cooldown_s: float = 5.0,
        blank_rut_s: float | None = DEFAULT_BLANK_RUT_S,
        http_session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        target_streaming_delay_ms: int | None = None,
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=True,
                aligned_transcript="word",
                offline_recognize=True,
                manual_flush=True,
            )
        )
        self._opts = resolve_options(
            base_url=base_url,
            model=model,
            api_key=api_key,
            language=language,
            transcription_delay_ms=transcription_delay_ms,
            vad=vad,
            endpointer=endpointer,
            min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms,
            preroll_ms=preroll_ms,
            sentence_pause_s=sentence_pause_s,
            max_pause_s=max_pause_s,
            max_segment_s=max_segment_s,
            max_model_len=max_model_len,
            max_generation_s=max_generation_s,
            max_lag_s=max_lag_s,
            lag_policy=lag_policy,
            input_stall_s=input_stall_s,
            generation_timeout_s=generation_timeout_s,
            max_outage_s=max_outage_s,
            discover_server=discover_server,
            socket_mode=socket_mode,
            endpoint_cooldown_s=endpoint_cooldown_s,
            blank_rut_s=blank_rut_s,
        )
        if isinstance(self._opts.endpointer, VadEndpointerOptions) and vad is None:
            SileroBatch.shared()  # load the weights now: a missing package fails here
        if target_streaming_delay_ms is not None:
            logger.info(
                "target_streaming_delay_ms=%s is ignored: vLLM's transcription delay is a "
                "server setting (tekken.json); set transcription_delay_ms to match it",
                target_streaming_delay_ms,
            )
        self._pool = shared_pool(self._opts.endpoints, self._opts.endpoint_cooldown_s)
        self._vad = vad
        self._ssl = ssl_context
        self._session = http_session
        self._own_session: aiohttp.ClientSession | None = None
        self._own_ws_session: aiohttp.ClientSession | None = None
        self._facts = ServerFacts(
            self._opts,
            http_session=self._http_session,
            ssl_context=ssl_context,
            on_changed=self._on_server_changed,
        )
        self._warm = WarmSocket(self._pool)
        self._streams: weakref.WeakSet[SpeechStream] = weakref.WeakSet()

    def __repr__(self) -> str:
        url: str | tuple[str, ...] = (
            self._opts.base_url if len(self._opts.endpoints) == 1 else self._opts.endpoints
        )
        return f"voxtral_vllm.STT(base_url={url!r}, model={self._opts.model!r})"

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return "vllm"

    @property
    def base_url(self) -> str:
        """The (first) endpoint, normalised."""
        return self._opts.base_url

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint, normalised, in the given order."""
        return self._opts.endpoints

    @property
    def server_info(self) -> ServerInfo | None:
        """What the (first) server said about itself, once discovery ran."""
        return self._facts.infos.get(self._opts.base_url)

    def endpoint_info(self, url: str) -> ServerInfo | None:
        """What the endpoint ``url`` (as in :attr:`endpoints`) said about itself, if it was
        asked yet."""
        return self._facts.infos.get(url)

    @property
    def streams(self) -> tuple[SpeechStream, ...]:
        """The streams this STT made that still exist (held weakly: a stream drops out once
        nothing else refers to it), e.g. to log their ``stats`` when a participant leaves."""
        return tuple(self._streams)

    # -- public API -----------------------------------------------------------------------------

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        opts = self._opts
        if is_given(language):
            opts = dataclasses.replace(opts, language=language)
        stream = SpeechStream(stt=self, opts=opts, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    def update_options(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        sentence_pause_s: NotGivenOr[float] = NOT_GIVEN,
        max_pause_s: NotGivenOr[float] = NOT_GIVEN,
        max_segment_s: NotGivenOr[float] = NOT_GIVEN,
    ) -> None:
        """Change the language label (from the next transcript on; sent in the
        ``session.update`` of new sockets) and caption segmentation (from the next delta on),
        for this STT and its live streams."""
        seg = self._opts.segmenter
        seg = SegmenterOptions(
            sentence_pause_s=sentence_pause_s
            if is_given(sentence_pause_s)
            else seg.sentence_pause_s,
            max_pause_s=max_pause_s if is_given(max_pause_s) else seg.max_pause_s,
            max_segment_s=max_segment_s if is_given(max_segment_s) else seg.max_segment_s,
        )
        lang = language if is_given(language) else self._opts.language
        self._opts = dataclasses.replace(self._opts, language=lang, segmenter=seg)
        for stream in self._streams:
            stream.update_options(language=language, segmenter=seg)

    def prewarm(self) -> None:
        """Ask the servers about themselves and (``socket_mode="warm"``) open a socket now,
        ahead of the first stream (which adopts the socket if it comes within
        ``warm_socket.WARM_SOCKET_S``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        for url in self._opts.endpoints:
            self._facts.start(url)
        if self._opts.socket_mode != "warm":
            return
        self._warm.open(
            lambda url: self._connect_ws(self._opts, DEFAULT_API_CONNECT_OPTIONS.timeout, url=url),
            skip=self._facts.skipped(asyncio.get_running_loop().time()),
        )

    async def aclose(self) -> None:
        await self._facts.aclose()
        await self._warm.aclose()
        for own in (self._own_session, self._own_ws_session):
            if own is not None:
                await own.close()
        self._own_session = self._own_ws_session = None

    # -- internals ------------------------------------------------------------------------------

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        try:
            return utils.http_context.http_session()
        except RuntimeError:
            pass
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    def _ws_session(self) -> aiohttp.ClientSession:
        """The session for realtime sockets. LiveKit's job session allows 50 connections per
        host and a WebSocket holds its connection for life, so a worker captioning more than
        50 speakers would stall: unless the user passed a session, sockets get one of their
        own with no connection limit."""
        if self._session is not None:
            return self._session
        if self._own_ws_session is None or self._own_ws_session.closed:
            self._own_ws_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0)
            )
        return self._own_ws_session

    def _on_server_changed(self) -> None:
        for stream in list(self._streams):
            stream._refresh_limits()

    async def _refusal_error(
        self, message: str, code: ErrorCode | None, timeout: float, url: str | None = None
    ) -> APIStatusError:
        """The non-retryable error for a refused session (see ``api_errors.refusal_error``)."""
        return await refusal_error(
            message,
            code,
            http_session=self._http_session,
            url=url or self._opts.base_url,
            api_key=self._opts.api_key,
            ssl_context=self._ssl,
            timeout=timeout,
        )

    async def _connect_ws(
        self, opts: STTOptions, timeout: float, url: str | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        """Open one ``/v1/realtime`` socket to ``url`` (default: the first endpoint); raises
        LiveKit API errors (overridable in tests)."""
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        session = self._ws_session()
        target = url or opts.base_url

        async def connect() -> Any:
            return await session.ws_connect(
                target,
                headers=headers,
                heartbeat=20.0,
                ssl=self._ssl if self._ssl is not None else True,
                max_msg_size=16 * 1024 * 1024,
            )

        with connect_errors(target, timeout, api_key=opts.api_key):
            ws: aiohttp.ClientWebSocketResponse = await asyncio.wait_for(connect(), timeout)
        return ws

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        """One generation over the realtime endpoint, audio sent as fast as the socket takes
        (``recognize.py``)."""
        opts = self._opts
        lang = language if is_given(language) else opts.language
        audio = buffer_audio(buffer)
        conn = RealtimeConnection(
            model=opts.model,
            language=lang or None,
            transcription_delay_ms=opts.transcription_delay_ms,
        )
        loop = asyncio.get_running_loop()
        choice = self._pool.choose(loop.time(), skip=self._facts.skipped(loop.time()))
        url = choice.url if choice is not None else opts.base_url
        try:
            ws = await self._connect_ws(opts, conn_options.timeout, url=url)
        except APIConnectionError as e:  # LiveKit retries; the next try picks another server
            self._pool.failed(url, loop.time(), str(e))
            raise

        async def refused(message: str, code: ErrorCode | None) -> Exception:
            if (
                len(opts.endpoints) > 1
                and code is ErrorCode.MODEL_NOT_FOUND
                and self._facts.model_refused(url, loop.time())
            ):  # LiveKit retries; the next try goes to another replica
                return APIConnectionError(f"{url} does not serve {opts.model!r}")
            return await self._refusal_error(message, code, conn_options.timeout)

        try:
            finals, usage = await transcribe(
                ws,
                conn,
                audio,
                timeout=conn_options.timeout,
                refusal=refused,
            )
        finally:
            await ws.close()
        logger.debug("recognize: %d samples, usage %s", audio.size, usage)
        return final_transcript(finals, language=lang, audio_samples=audio.size)


class SpeechStream(stt.RecognizeStream):
    """A live stream: push frames of any rate and channel count, read SpeechEvents."""

    def __init__(self, *, stt: STT, opts: STTOptions, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._stt_impl = stt
        self._opts = opts
        self._id = utils.shortuuid("vx_")
        self.stats = StreamStats()
        self._core: StreamCore | None = None
        self._endpoint: str | None = None  # the endpoint this stream's sockets go to
        self._last_refusal: APIStatusError | None = None
        self._lanes: dict[int, LaneIO] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] | None = None
        self._pipeline = AudioPipeline()
        self._endpointer: Endpointer | VadEndpointer | None = None
        if stt._vad is None:
            ep = opts.endpointer
            self._endpointer = (
                VadEndpointer(ep) if isinstance(ep, VadEndpointerOptions) else Endpointer(ep)
            )
        self._vad_input = stt._vad is not None  # frames reach the input task unprocessed
        self._vad_stream: lk_vad.VADStream | None = None
        self._vad_clock = VadClock()
        self._vad_waiting = False  # the input task holds its input back until the VAD catches up
        self._direct_input = False  # push_frame may hand chunks to the core itself
        self._user_offset = 0.0

    @property
    def endpoint(self) -> str | None:
        """The endpoint this stream's sockets connect to (None before the first connect)."""
        return self._endpoint

    @property
    def start_time_offset(self) -> float:
        """Seconds added to every timestamp (LiveKit sets it to where the stream starts in the
        session). Unlike other plugins' clocks, ours survives a retried ``_run``, so LiveKit's
        per-retry adjustment does not apply."""
        return self._user_offset

    @start_time_offset.setter
    def start_time_offset(self, value: float) -> None:
        if value < 0:
            raise ValueError("start_time_offset must be non-negative")
        self._user_offset = value

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        """Push audio of any rate and channel count; the rate must not change.

        Raises:
            ValueError: if the frame's rate differs from the first frame's, or its layout is
                inconsistent.
        """
        if self._vad_input:
            super().push_frame(frame)  # the VAD reads the frames themselves
            return
        self._check_input_not_ended()
        self._check_not_closed()
        # Resampled here, in the caller, and cut where the live generation's next step is
        # complete. While _run is taking input and nothing is queued, a chunk goes straight
        # to the core: no task switch per chunk.
        # Otherwise (before _run, between its retries) it waits in the channel, in order.
        chunks = self._pipeline.push_frame(frame)
        if not chunks:
            return
        core = self._core
        if self._direct_input and core is not None and self._input_ch.empty():
            try:
                for chunk in chunks:
                    self._consume(core, chunk)
            except Exception as e:  # as if the input task had failed: the stream ends with it
                self._finish(e)
            return
        for chunk in chunks:
            self._input_ch.send_nowait(chunk)  # type: ignore[arg-type]  # see _consume

    def flush(self) -> None:
        """End the current utterance now: what was pushed so far is finalised."""
        if self._vad_input:
            super().flush()
            return
        self._check_input_not_ended()
        self._check_not_closed()
        for chunk in self._pipeline.flush():
            self._input_ch.send_nowait(chunk)  # type: ignore[arg-type]
        self._input_ch.send_nowait(self._FlushSentinel())

    def update_options(
        self, *, language: NotGivenOr[str] = NOT_GIVEN, segmenter: SegmenterOptions | None = None
    ) -> None:
        """The language label applies from the next transcript, segmentation from the next
        delta."""
        if is_given(language):
            self._opts = dataclasses.replace(self._opts, language=language)
        if segmenter is not None:
            self._opts = dataclasses.replace(self._opts, segmenter=segmenter)
        if self._core is not None:
            self._core.update_options(
                language=self._opts.language or None, segmenter=self._opts.segmenter
            )

    # -- the run loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self._opts
        infos = await self._stt_impl._facts.gather(timeout=min(2.0, self._conn_options.timeout))
        max_model_len, abort_on_close = self._stt_impl._facts.limits(infos)
        core = self._core
        if core is None:
            core = StreamCore(
                CoreOptions(
                    model=opts.model,
                    language=opts.language or None,
                    transcription_delay_ms=opts.transcription_delay_ms,
                    preroll_ms=opts.preroll_ms,
                    max_model_len=max_model_len,
                    generation_cap=opts.generation_cap,
                    max_lag_s=opts.max_lag_s,
                    lag_policy=opts.lag_policy,
                    input_stall_s=opts.input_stall_s,
                    generation_timeout_s=opts.generation_timeout_s,
                    max_reconnects=self._conn_options.max_retry,
                    reconnect_interval_s=self._conn_options.retry_interval,
                    max_outage_s=opts.max_outage_s,
                    abort_on_close=abort_on_close,
                    warm_lanes=1 if opts.socket_mode == "warm" else 0,
                    refusal_failover=len(opts.endpoints) > 1,
                    segmenter=opts.segmenter,
                    rut=opts.rut,
                )
            )
            core.stats = self.stats
            self._core = core
            core.start(loop.time())
            pending = [u for u in opts.endpoints if infos is None or u not in infos]
            if pending and opts.discover_server:
                # discovery is slow or a server is down: apply what it learns later
                for url in pending:
                    task = self._stt_impl._facts.start(url)
                    task.add_done_callback(self._on_late_discovery)
            elif max_model_len is None:
                logger.info(
                    "max_model_len unknown (set max_model_len=): long utterances rely on vLLM "
                    ">= 0.32 stopping at the limit, which the stream then continues"
                )
        else:
            # LiveKit retries _run after our own reconnects ran out: keep the audio history,
            # the captions and the sample clock, and replay what was in flight.
            core.resume(loop.time())
        self._done = loop.create_future()
        input_task = asyncio.create_task(self._input_loop(core), name="voxtral_vllm.input")
        input_task.add_done_callback(self._on_input_done)
        try:
            self._pump()
            try:
                await self._done
            except ConfigurationFailure as e:
                raise await self._stt_impl._refusal_error(
                    str(e), e.code, self._conn_options.timeout, self._endpoint
                ) from None
            except EveryEndpointRefused:
                raise await self._stt_impl._facts.every_endpoint_refused(
                    self._conn_options.timeout
                ) from None
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await utils.aio.cancel_and_wait(input_task)
            lanes, self._lanes = list(self._lanes.values()), {}
            await asyncio.gather(*(lane.aclose() for lane in lanes), return_exceptions=True)

    def _on_late_discovery(self, task: asyncio.Task[ServerInfo]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self._refresh_limits()

    def _refresh_limits(self) -> None:
        """Apply what discovery learned since the stream started (or since a replica came
        back different)."""
        if self._core is None or not self._opts.discover_server:
            return
        try:
            facts = self._stt_impl._facts
            max_model_len, abort_on_close = facts.limits(facts.infos)
        except APIStatusError as e:
            self._finish(e)
            return
        self._core.set_server_facts(max_model_len=max_model_len, abort_on_close=abort_on_close)

    def _on_input_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._finish(exc)

    def _finish(self, exc: BaseException | None = None) -> None:
        if self._done is not None and not self._done.done():
            if exc is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(exc)

    async def _input_loop(self, core: StreamCore) -> None:
        loop = asyncio.get_running_loop()
        # the VAD stream is per _run; the pipeline and the endpointer keep their state across a
        # retried _run, like the core's sample clock
        vad_stream = self._stt_impl._vad.stream() if self._stt_impl._vad is not None else None
        self._vad_stream = vad_stream
        self._vad_clock = VadClock()
        vad_task = (
            asyncio.create_task(
                self._vad_loop(core, vad_stream, core.samples_received), name="voxtral_vllm.vad"
            )
            if vad_stream is not None
            else None
        )
        try:
            self._direct_input = not self._vad_input
            async for item in self._input_ch:
                last = self._input_ch.closed and self._input_ch.empty()  # end_input's flush
                if vad_task is not None and isinstance(item, self._FlushSentinel) and not last:
                    # the VAD may lag the audio: the utterance ends once it has judged the
                    # audio before the flush; later frames wait in the channel, in order
                    # (end_input's own flush: the drain below waits for the VAD instead)
                    self._consume(core, item, end_utterance=False)
                    if await self._await_vad(core, vad_task, flush=True):
                        self._vad_clock.flush_taken()  # (its next event is from after it)
                    core.flush(loop.time())
                    self._pump()
                    continue
                self._consume(core, item)
            now = loop.time()
            for chunk in self._pipeline.flush():
                core.push_audio(chunk, now)
            if vad_stream is not None and vad_task is not None:
                vad_stream.end_input()
                await self._await_vad(core, vad_task, flush=False)
                now = loop.time()
            core.end_input(now)
            self._pump()
        finally:
            self._direct_input = False
            self._vad_stream = None
            if vad_task is not None:
                await utils.aio.cancel_and_wait(vad_task)
            if vad_stream is not None:
                await vad_stream.aclose()

    async def _await_vad(
        self, core: StreamCore, vad_task: asyncio.Task[None], *, flush: bool
    ) -> bool:
        """Let the VAD judge the audio pushed to it before the stream acts on the end of that
        audio. It may lag the audio by seconds (a burst of frames, a busy executor): ending the
        core first would drop every utterance in that audio unseen (at the end of the input),
        or end the flushed utterance before it started and let it run into the next turn's
        audio (at a flush).

        At the end of the input, the VAD's task ends once it has judged everything. At a
        flush, the VAD has judged the audio before it once it has taken every item pushed to
        it (the flush last) and the stream has handled its events. Bounded by
        ``_VAD_DRAIN_S``; past that, a warning and the stream goes on without the verdict
        (False).
        The wait is not an input stall (which would end the utterance before the verdict and
        open another for the VAD's late start)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _VAD_DRAIN_S
        idle = 0  # polls in a row that found the VAD idle (its events may still be in flight)
        self._vad_waiting = True
        try:
            while not vad_task.done() and idle < 2 and loop.time() < deadline:
                core.input_held(loop.time())  # (a wait, not a stalled track)
                await asyncio.sleep(_VAD_POLL_S)
                if flush:
                    idle = idle + 1 if self._vad_idle() else 0
        finally:
            self._vad_waiting = False
        if vad_task.done() or idle >= 2:
            return True
        logger.warning(
            "the VAD had not judged all the audio %.1fs after %s: %s",
            _VAD_DRAIN_S,
            "a flush" if flush else "the input ended",
            "the utterance ends at the flush without its verdict (a turn it had not started "
            "yet begins later and may run into the next one)"
            if flush
            else "speech at the end of the stream may be left untranscribed",
        )
        return False

    def _vad_idle(self) -> bool:
        """The VAD has taken every item pushed to it and sent no event left unread."""
        vad_stream = self._vad_stream
        if vad_stream is None:
            return True
        # (the channels every LiveKit VADStream reads its input from and sends its events to)
        return vad_stream._input_ch.empty() and vad_stream._event_ch.empty()

    def _consume(self, core: StreamCore, item: object, *, end_utterance: bool = True) -> None:
        """One input item: a chunk from ``push_frame``, a raw frame (VAD input), or the
        flush sentinel (which ends the utterance unless ``end_utterance`` is False: the
        caller does once a lagging VAD has caught up)."""
        now = asyncio.get_running_loop().time()
        endpointer = self._endpointer
        chunks: list[np.ndarray]
        if isinstance(item, np.ndarray):
            chunks = [item]
        elif isinstance(item, rtc.AudioFrame):
            chunks = self._pipeline.push_frame(item)
            if self._vad_stream is not None:
                self._vad_stream.push_frame(item)
                self._vad_clock.pushed(item.samples_per_channel, item.sample_rate)
        elif self._vad_input:  # flush: end the utterance now
            chunks = self._pipeline.flush()
        else:  # flush: ``flush`` already drained the pipeline, which may hold later audio now
            chunks = []
        for chunk in chunks:
            if endpointer is None:
                core.push_audio(chunk, now)
            else:
                self._push_endpointed(core, endpointer, chunk, now)
        if isinstance(item, self._FlushSentinel):
            if endpointer is not None:
                endpointer.flush()
            if self._vad_stream is not None:
                self._vad_stream.flush()
                self._vad_clock.flushed()  # (Silero counts from 0 again after it)
            if end_utterance:
                core.flush(now)
        self._pump()

    @staticmethod
    def _push_endpointed(
        core: StreamCore, endpointer: Endpointer | VadEndpointer, chunk: np.ndarray, now: float
    ) -> None:
        """Push ``chunk`` to the core with the endpointer's decisions at their exact sample:
        an utterance that ends inside the chunk gets only the audio before the decision, so
        speech resuming right after it starts whole in the next generation."""
        base = endpointer.samples_seen
        events = endpointer.push(chunk)
        pos = 0
        for ev in events:
            if isinstance(ev, EpSpeechEnded):
                cut = min(max(ev.decided_sample - base, pos), chunk.size)
                core.push_audio(chunk[pos:cut], now)
                pos = cut
                core.speech_ended(ev.end_sample, now)
        core.push_audio(chunk[pos:], now)
        for ev in events:
            if isinstance(ev, EpSpeechStarted):
                core.speech_started(ev.start_sample, now)
            elif isinstance(ev, EpSpeechResumed):
                core.speech_resumed(ev.start_sample, now)

    async def _vad_loop(self, core: StreamCore, vad_stream: lk_vad.VADStream, base: int) -> None:
        # A VAD reports where speech starts and ends by sample index, relative to its own
        # input, and may lag the audio: place its events by that index, never by how much audio
        # the core holds when the event is handled. The index counts at the VAD's own rate
        # (16 kHz for Silero, the input's rate for some others): ``VadClock`` infers it.
        loop = asyncio.get_running_loop()
        # ``base``: where this VAD stream's input begins on the core's clock, taken when the
        # stream was created (this task may first run after a burst of frames was pushed)
        async for ev in vad_stream:
            now = loop.time()
            at = base + self._vad_clock.to_16k(ev.samples_index, ev.timestamp)
            core.speech_judged(at)  # (it may lag the audio the stream has sent by seconds)
            if ev.type == lk_vad.VADEventType.START_OF_SPEECH:
                core.speech_started(max(0, at - int(ev.speech_duration * SAMPLE_RATE)), now)
            elif ev.type == lk_vad.VADEventType.END_OF_SPEECH:
                # the utterance is the audio before ``at``, where the VAD decided; what was
                # pushed after it (a lagging VAD) is the next one's
                end = max(0, at - int(ev.silence_duration * SAMPLE_RATE))
                core.speech_ended(end, now, decided_sample=at)
            else:
                continue
            self._pump()

    # -- carrying out the core's actions --------------------------------------------------------

    def _pump(self) -> None:
        core = self._core
        if core is None:
            return
        for action in core.actions():
            if isinstance(action, SendOnLane):
                lane = self._lanes.get(action.lane)
                if lane is not None:
                    lane.send(action.frames)
            elif isinstance(action, Interim):
                self._emit_text(stt.SpeechEventType.INTERIM_TRANSCRIPT, action.segment, action.text)
            elif isinstance(action, Final):
                self._emit_final(action)
            elif isinstance(action, SpeechStarted):
                self._event_ch.send_nowait(
                    stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH)
                )
            elif isinstance(action, SpeechEnded):
                self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))
            elif isinstance(action, UsageReport):
                self._event_ch.send_nowait(
                    stt.SpeechEvent(
                        type=stt.SpeechEventType.RECOGNITION_USAGE,
                        request_id=f"{self._id}-g{action.generation}",
                        recognition_usage=stt.RecognitionUsage(
                            audio_duration=action.audio_s,
                            input_tokens=action.input_tokens,
                            output_tokens=action.output_tokens,
                        ),
                    )
                )
            elif isinstance(action, BlankRut):
                # (logged by the core; an app can count or alert on it: stt.on("blank_rut"))
                self._stt_impl.emit("blank_rut", action)
            elif isinstance(action, OpenLane):
                self._open_lane(action.lane)
            elif isinstance(action, CloseLane):
                lane = self._lanes.pop(action.lane, None)
                if lane is not None:
                    if action.refused is not None and lane.endpoint is not None:
                        self._refused_by(lane.endpoint)
                    elif action.fault is not None and lane.endpoint is not None:
                        # the server lost a generation or stopped answering on it
                        self._endpoint_failed(lane.endpoint, action.fault)
                    lane.close()
            elif isinstance(action, StreamFailed):
                self._finish(stream_failure(action))
        if core.finished:
            self._finish()
        self._arm_timer(core)
        # the next chunk goes to the core where the live generation's next step is complete
        self._pipeline.cut = core.next_step_sample

    def _arm_timer(self, core: StreamCore) -> None:
        # Deadlines mostly move later (every pushed frame moves the stall deadline): a timer
        # set earlier is kept, fires, finds nothing due and re-arms. One handle per deadline
        # instead of one per frame.
        deadline = core.get_timer()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        core = self._core
        if core is None:
            return
        # push_frame runs the pipeline ahead of the input task: what it queued comes first
        # (not while the input task holds it back at a flush, for a lagging VAD)
        while not self._vad_waiting and not self._input_ch.empty():
            self._consume(core, self._input_ch.recv_nowait())
        now = asyncio.get_running_loop().time()
        if core.stall_due(now):
            # The resampler and the pipeline still hold the last few tens of ms: the
            # utterance's final must not cut them off (they hold the end of its last word).
            for chunk in self._pipeline.flush():
                if self._endpointer is None:
                    core.push_audio(chunk, now)
                else:
                    self._push_endpointed(core, self._endpointer, chunk, now)
            core.input_stalled(now)
        core.handle_timer(now)
        self._pump()

    def _emit_text(self, kind: stt.SpeechEventType, segment: int, text: str) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=kind,
                request_id=f"{self._id}-{segment}",
                alternatives=[
                    stt.SpeechData(language=LanguageCode(self._opts.language), text=text)
                ],
            )
        )

    def _emit_final(self, action: Final) -> None:
        cap = action.caption
        off = self.start_time_offset
        words = [
            TimedString(
                w.text, start_time=w.start_s + off, end_time=w.end_s + off, start_time_offset=off
            )
            for w in cap.words
        ]
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                request_id=f"{self._id}-{action.segment}",
                alternatives=[
                    stt.SpeechData(
                        language=LanguageCode(self._opts.language),
                        text=cap.text,
                        start_time=cap.start_s + off,
                        end_time=cap.end_s + off,
                        words=words,
                    )
                ],
            )
        )

    # -- lanes -----------------------------------------------------------------------------------

    def _open_lane(self, lane_id: int) -> None:
        lane = LaneIO(lane_id, self._lane_lost)
        self._lanes[lane_id] = lane
        lane.task = asyncio.create_task(self._lane_loop(lane), name=f"voxtral_vllm.lane{lane_id}")

    async def _lane_loop(self, lane: LaneIO) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._conn_options.timeout
        started = loop.time()
        stt_impl = self._stt_impl
        try:
            warm = stt_impl._warm.take(self._endpoint)
            if warm is not None:
                url, ws = warm
            else:
                url = await self._choose_endpoint()
            lane.endpoint = self._endpoint = url
            if warm is None:
                ws = await stt_impl._connect_ws(self._opts, timeout, url=url)
        except APIStatusError as e:
            if not e.retryable:
                if lane.endpoint is not None and self._exclude(lane.endpoint, e):
                    self._lane_lost(lane, str(e))  # other endpoints remain: try one of them
                    return
                self._finish(e)
                return
            self._endpoint_failed(lane.endpoint, str(e))
            self._lane_lost(lane, str(e))
            return
        except APIConnectionError as e:
            logger.warning("lane %d: %s", lane.lane, e)
            self._endpoint_failed(lane.endpoint, str(e))
            self._lane_lost(lane, str(e))
            return
        lane.ws = ws
        self._report_connection_acquired(loop.time() - started, False)
        core = self._core
        if core is None or lane.closed:
            await ws.close()
            return
        core.lane_connected(lane.lane, loop.time())
        self._pump()
        writer = asyncio.create_task(lane.write_loop(), name=f"voxtral_vllm.lane{lane.lane}.write")
        reason = "connection closed by vLLM"
        try:
            first = True
            while True:
                msg = await ws.receive(timeout=timeout if first else None)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    if first:  # session.created: the server is up
                        first = False
                        stt_impl._pool.succeeded(url, loop.time())
                    if self._core is None:
                        return
                    self._core.lane_received(lane.lane, msg.data, loop.time())
                    self._pump()
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    reason = f"vLLM closed the connection (code {ws.close_code})"
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"connection error: {ws.exception()!r}"
                    break
                else:  # binary: vLLM never sends it
                    logger.warning("lane %d: ignoring a %s frame from vLLM", lane.lane, msg.type)
        except asyncio.TimeoutError:
            # vLLM sends session.created as soon as it accepts (and a restarting vLLM accepts
            # nothing): a socket that stays silent is not vLLM's realtime endpoint. Retrying
            # would only hide that.
            err = APIStatusError(
                f"no session.created within {timeout:.1f}s of connecting to "
                f"{url}: this is not vLLM's /v1/realtime endpoint (check "
                "base_url and any proxy in between)",
                status_code=-1,
                retryable=False,
            )
            if self._exclude(url, err):
                reason = str(err)
            else:
                lane.closed = True
                self._finish(err)
        finally:
            await utils.aio.cancel_and_wait(writer)
            if not ws.closed:
                await ws.close()
        if not lane.closed:
            # vLLM never closes a socket by itself: a drop, a crash, a shutdown or an engine
            # death (the API server exits). The core replays; the next socket goes elsewhere.
            self._endpoint_failed(url, reason)
            self._lane_lost(lane, reason)

    async def _choose_endpoint(self) -> str:
        """Where the next socket goes: this stream's endpoint while it is healthy, else another
        (a suspect one only after its ``/health`` answered)."""
        stt_impl = self._stt_impl
        pool = stt_impl._pool
        loop = asyncio.get_running_loop()
        url = self._endpoint
        for _ in range(len(pool.urls) + 1):
            now = loop.time()
            choice = pool.choose(now, prefer=self._endpoint, skip=stt_impl._facts.skipped(now))
            if choice is None:
                raise self._last_refusal or no_usable_endpoint(stt_impl._facts.excluded)
            url = choice.url
            if not choice.probe:
                break
            if await stt_impl._facts.probe(url):
                pool.succeeded(url, loop.time())
                break
            pool.failed(url, loop.time(), "/health did not answer 200")
        assert url is not None
        if url != self._endpoint and self._endpoint is not None:
            logger.info("stream %s: moving from %s to %s", self._id, self._endpoint, url)
        return url

    def _endpoint_failed(self, url: str | None, reason: str) -> None:
        if url is None:
            return
        self._stt_impl._pool.failed(url, asyncio.get_running_loop().time(), reason)
        if len(self._opts.endpoints) == 1:
            return
        # A socket of this stream still connecting to that server (a frozen one accepts TCP
        # and never answers the upgrade) would wait out its connect timeout: go elsewhere now.
        current = asyncio.current_task()
        for lane in list(self._lanes.values()):
            if lane.endpoint == url and lane.ws is None and not lane.closed:
                if lane.task is current:
                    continue  # the caller reports its own loss
                if lane.task is not None:
                    lane.task.cancel()
                self._lane_lost(lane, f"{url} failed ({reason})")

    def _refused_by(self, url: str) -> None:
        """``url`` refused the session for the model (several endpoints): the core already
        moves the generation to a new lane; the next socket goes elsewhere, or, when no
        endpoint serves the model, the stream fails."""
        if not self._stt_impl._facts.model_refused(url, asyncio.get_running_loop().time()):
            self._finish(EveryEndpointRefused())
            return
        for lane in list(self._lanes.values()):  # still connecting there: it would refuse too
            if lane.endpoint == url and lane.ws is None and not lane.closed:
                if lane.task is not None:
                    lane.task.cancel()
                self._lane_lost(lane, f"{url} does not serve the model")

    def _exclude(self, url: str, err: APIStatusError) -> bool:
        """With several endpoints, one that refuses this stream for good (HTTP 401/403/404,
        not vLLM) is skipped and the stream goes on elsewhere. False with one endpoint, or
        when it was the last usable one."""
        excluded = self._stt_impl._facts.excluded
        if len(self._opts.endpoints) == 1:
            return False
        excluded[url] = str(err)
        self._last_refusal = err
        logger.warning("skipping vLLM endpoint %s: %s", url, err)
        return any(u not in excluded for u in self._opts.endpoints)

    def _lane_lost(self, lane: LaneIO, reason: str) -> None:
        core = self._core
        self._lanes.pop(lane.lane, None)
        if core is not None and not lane.closed:
            lane.closed = True
            core.lane_lost(lane.lane, asyncio.get_running_loop().time(), reason)
            self._pump()
