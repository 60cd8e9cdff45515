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
import math
import os
import ssl
import time
import weakref
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    stt,
    utils,
)
from livekit.agents import (
    vad as lk_vad,
)
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr, TimedString
from livekit.agents.utils import AudioBuffer, is_given

from . import protocol
from .audio import AudioPipeline
from .connection import RealtimeConnection
from .discovery import ServerInfo, discover, normalize_realtime_url
from .endpointer import Endpointer, EndpointerOptions
from .endpointer import SpeechEnded as EpSpeechEnded
from .endpointer import SpeechResumed as EpSpeechResumed
from .endpointer import SpeechStarted as EpSpeechStarted
from .events import DeltaReceived, GenerationFailed, GenerationFinished, ServerErrorReceived
from .generation_cap import DEFAULT_MAX_GENERATION_S, GenerationCap
from .log import logger
from .protocol import SAMPLE_RATE, ErrorCode
from .segmenter import CaptionFinal, CaptionSegmenter, SegmenterOptions
from .stream_core import (
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
from .vad_clock import VadClock
from .vad_endpointer import VadEndpointer, VadEndpointerOptions
from .vad_model import SileroBatch

__all__ = ["STT", "SpeechStream", "DEFAULT_MODEL", "DEFAULT_BASE_URL"]

DEFAULT_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_BASE_URL = "ws://127.0.0.1:8000/v1/realtime"
_ENV_URL = "VOXTRAL_VLLM_BASE_URL"
_ENV_MODEL = "VOXTRAL_VLLM_MODEL"
_ENV_KEY = "VOXTRAL_VLLM_API_KEY"
_ENV_ENDPOINTER = "VOXTRAL_VLLM_ENDPOINTER"
_ENDPOINTERS = ("silero", "energy")
_WARM_SOCKET_S = 15.0  # how long a prewarmed socket waits for its stream
_MAX_OUTBOX = 400  # ~32 s of 80 ms appends waiting on one socket: the server stopped reading


@dataclass(frozen=True)
class _STTOptions:
    base_url: str
    model: str
    api_key: str | None
    language: str
    transcription_delay_ms: int
    max_model_len: int | None
    generation_cap: GenerationCap | None
    endpointer: EndpointerOptions | VadEndpointerOptions
    segmenter: SegmenterOptions
    preroll_ms: int
    max_lag_s: float
    lag_policy: LagPolicy
    input_stall_s: float
    generation_timeout_s: float
    max_outage_s: float
    discover_server: bool

    def __repr__(self) -> str:  # never show the API key
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["api_key"] = "***" if self.api_key else None
        return "_STTOptions(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


class STT(stt.STT[Literal["metrics_collected"]]):
    """Live speech-to-text from Voxtral Realtime served by vLLM's ``/v1/realtime``.

    Args:
        base_url: the server, as ``ws(s)://host:port[/v1/realtime]``, ``http(s)://...`` or a
            bare ``host:port``. Default ``$VOXTRAL_VLLM_BASE_URL``, else
            ``ws://127.0.0.1:8000/v1/realtime``.
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
            audio are replayed when it is back, older audio is dropped and counted.
        http_session: an aiohttp session to use (default: the job's, or one owned here).
        ssl_context: for ``wss://`` with a private CA or client certificates.
        target_streaming_delay_ms: accepted for compatibility and ignored: the delay is a
            server setting (see ``transcription_delay_ms``).
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
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
        url = base_url if base_url is not None else os.environ.get(_ENV_URL) or DEFAULT_BASE_URL
        model_name = model if model is not None else os.environ.get(_ENV_MODEL) or DEFAULT_MODEL
        key = api_key if api_key is not None else os.environ.get(_ENV_KEY) or None
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError(f"model must be a non-empty string, got {model_name!r}")
        _check_int("transcription_delay_ms", transcription_delay_ms, 80, 2400)
        if transcription_delay_ms % 80 or 1200 < transcription_delay_ms < 2400:
            raise ValueError(
                "transcription_delay_ms must be what the server's tekken.json says: a multiple "
                f"of 80 in 80..1200, or 2400; got {transcription_delay_ms}"
            )
        _check_int("preroll_ms", preroll_ms, 0, 2000)
        if max_model_len is not None:
            _check_int("max_model_len", max_model_len, 64, 10_000_000)
        generation_cap = GenerationCap(max_generation_s) if max_generation_s is not None else None
        for name, value, lo in (
            ("max_lag_s", max_lag_s, 0.5),
            ("input_stall_s", input_stall_s, 0.1),
            ("generation_timeout_s", generation_timeout_s, 1.0),
            ("max_outage_s", max_outage_s, 0.0),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
                raise ValueError(f"{name} must be a number >= {lo}, got {value!r}")
        try:
            policy = LagPolicy(lag_policy)
        except ValueError:
            raise ValueError(
                f"lag_policy must be 'catch_up' or 'wait', got {lag_policy!r}"
            ) from None
        if vad is not None and not isinstance(vad, lk_vad.VAD):
            raise TypeError(f"vad must be a livekit.agents.vad.VAD or None, got {type(vad)!r}")
        kind = endpointer if endpointer is not None else os.environ.get(_ENV_ENDPOINTER) or "silero"
        if kind not in _ENDPOINTERS:
            source = "endpointer" if endpointer is not None else f"${_ENV_ENDPOINTER}"
            raise ValueError(f"{source} must be 'silero' or 'energy', got {kind!r}")
        timing = {
            k: v
            for k, v in (("min_speech_ms", min_speech_ms), ("min_silence_ms", min_silence_ms))
            if v is not None
        }
        ep_opts: EndpointerOptions | VadEndpointerOptions = (
            VadEndpointerOptions(**timing) if kind == "silero" else EndpointerOptions(**timing)
        )
        if kind == "silero" and vad is None:
            SileroBatch.shared()  # load the weights now: a missing package fails here
        if target_streaming_delay_ms is not None:
            logger.info(
                "target_streaming_delay_ms=%s is ignored: vLLM's transcription delay is a "
                "server setting (tekken.json); set transcription_delay_ms to match it",
                target_streaming_delay_ms,
            )
        self._opts = _STTOptions(
            base_url=normalize_realtime_url(url),
            model=model_name,
            api_key=key,
            language=language or "",
            transcription_delay_ms=transcription_delay_ms,
            max_model_len=max_model_len,
            generation_cap=generation_cap,
            endpointer=ep_opts,
            segmenter=SegmenterOptions(
                sentence_pause_s=sentence_pause_s,
                max_pause_s=max_pause_s,
                max_segment_s=max_segment_s,
            ),
            preroll_ms=preroll_ms,
            max_lag_s=float(max_lag_s),
            lag_policy=policy,
            input_stall_s=float(input_stall_s),
            generation_timeout_s=float(generation_timeout_s),
            max_outage_s=float(max_outage_s),
            discover_server=discover_server,
        )
        self._vad = vad
        self._ssl = ssl_context
        self._session = http_session
        self._own_session: aiohttp.ClientSession | None = None
        self._own_ws_session: aiohttp.ClientSession | None = None
        self._server_info: ServerInfo | None = None
        self._discovery: asyncio.Task[ServerInfo] | None = None
        self._warm: asyncio.Task[aiohttp.ClientWebSocketResponse | None] | None = None
        self._warm_closing: asyncio.Future[bool] | None = None
        self._streams: weakref.WeakSet[SpeechStream] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"voxtral_vllm.STT(base_url={self._opts.base_url!r}, model={self._opts.model!r})"

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return "vllm"

    @property
    def base_url(self) -> str:
        return self._opts.base_url

    @property
    def server_info(self) -> ServerInfo | None:
        """What the server said about itself, once discovery ran."""
        return self._server_info

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
        """Ask the server about itself and open a socket now, ahead of the first stream (which
        adopts the socket if it comes within ``_WARM_SOCKET_S``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start_discovery()
        if self._warm is None or self._warm.done():
            self._warm = asyncio.create_task(self._open_warm(), name="voxtral_vllm.prewarm")

    async def _open_warm(self) -> aiohttp.ClientWebSocketResponse | None:
        try:
            ws = await self._connect_ws(self._opts, DEFAULT_API_CONNECT_OPTIONS.timeout)
        except Exception as e:  # the stream will connect (and report) on its own
            logger.debug("prewarm: %s", e)
            return None
        # Nobody reads it, so nobody answers the server's pings: do not keep it long.
        asyncio.get_running_loop().call_later(_WARM_SOCKET_S, self._expire_warm, ws)
        return ws

    def _expire_warm(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._warm is not None and self._warm.done() and self._warm.result() is ws:
            self._warm = None
        if not ws.closed:
            self._warm_closing = asyncio.ensure_future(ws.close())

    def _take_warm_socket(self) -> aiohttp.ClientWebSocketResponse | None:
        """The prewarmed socket, if one is open and unclaimed."""
        warm, self._warm = self._warm, None
        if warm is None or not warm.done() or warm.cancelled() or warm.exception() is not None:
            if warm is not None and not warm.done():
                warm.cancel()
            return None
        ws = warm.result()
        return ws if ws is not None and not ws.closed else None

    async def aclose(self) -> None:
        if self._discovery is not None and not self._discovery.done():
            await utils.aio.cancel_and_wait(self._discovery)
        warm, self._warm = self._warm, None
        if warm is not None:
            await utils.aio.cancel_and_wait(warm)
            if not warm.cancelled() and warm.exception() is None:
                ws = warm.result()
                if ws is not None:
                    await ws.close()
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

    def _start_discovery(self) -> asyncio.Task[ServerInfo]:
        if self._discovery is None or (
            self._discovery.done()
            and (self._discovery.cancelled() or self._discovery.exception() is not None)
        ):
            self._discovery = asyncio.create_task(self._discover(), name="voxtral_vllm.discover")
        return self._discovery

    async def _discover(self) -> ServerInfo:
        info = await discover(
            self._http_session(),
            self._opts.base_url,
            api_key=self._opts.api_key,
            ssl_context=self._ssl,
        )
        self._server_info = info
        quirks = info.quirks
        for note in quirks.describe():
            logger.warning("vLLM %s: %s", info.version, note)
        return info

    async def _server_facts(self, timeout: float) -> ServerInfo | None:
        """Discovery result, waiting at most ``timeout`` for it (None when unavailable)."""
        if not self._opts.discover_server:
            return None
        if self._server_info is not None:
            return self._server_info
        task = self._start_discovery()
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            return None
        except Exception as e:  # discovery must never break transcription
            logger.debug("vLLM discovery failed: %s", e)
            return None

    async def _refusal_error(
        self, message: str, code: ErrorCode | None, timeout: float
    ) -> APIStatusError:
        """The non-retryable error for a refused session; for a model the server does not
        serve, it lists the models it does serve."""
        if code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.MODEL_NOT_VALIDATED):
            try:
                info = await discover(
                    self._http_session(),
                    self._opts.base_url,
                    api_key=self._opts.api_key,
                    timeout=min(5.0, timeout),
                    ssl_context=self._ssl,
                )
            except Exception as e:  # the message is still useful without the list
                logger.debug("could not list the served models: %s", e)
            else:
                if info.models:
                    message += ". The server serves: " + ", ".join(m.id for m in info.models)
            return APIStatusError(message, status_code=404, retryable=False)
        return APIStatusError(message, status_code=400, retryable=False)

    async def _connect_ws(
        self, opts: _STTOptions, timeout: float
    ) -> aiohttp.ClientWebSocketResponse:
        """Open one ``/v1/realtime`` socket; raises LiveKit API errors (overridable in tests)."""
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        session = self._ws_session()

        async def connect() -> Any:
            return await session.ws_connect(
                opts.base_url,
                headers=headers,
                heartbeat=20.0,
                ssl=self._ssl if self._ssl is not None else True,
                max_msg_size=16 * 1024 * 1024,
            )

        try:
            return await asyncio.wait_for(connect(), timeout)
        except aiohttp.WSServerHandshakeError as e:
            raise _handshake_error(e.status, opts) from None
        except aiohttp.ClientConnectorCertificateError as e:
            # fails the same way on every attempt: a configuration error, not an outage
            raise APIStatusError(
                f"the TLS certificate of {opts.base_url} could not be verified "
                f"({e.certificate_error}): pass ssl_context= with the CA that signed it",
                status_code=-1,
                retryable=False,
            ) from None
        except asyncio.TimeoutError as e:
            raise APITimeoutError(
                f"timed out connecting to vLLM at {opts.base_url} after {timeout:.1f}s"
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            raise APIConnectionError(f"could not connect to vLLM at {opts.base_url}") from e

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        """One generation over the realtime endpoint, audio sent as fast as the socket takes."""
        opts = self._opts
        lang = language if is_given(language) else opts.language
        frames = buffer if isinstance(buffer, list) else [buffer]
        pipeline = AudioPipeline()
        chunks: list[np.ndarray] = []
        for frame in frames:
            chunks.extend(pipeline.push_frame(frame))
        chunks.extend(pipeline.flush())
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        conn = RealtimeConnection(
            model=opts.model,
            language=lang or None,
            transcription_delay_ms=opts.transcription_delay_ms,
        )
        seg = CaptionSegmenter(SegmenterOptions(1e9, 1e9, 1e9))
        seg.start_generation(0.0)
        ws = await self._connect_ws(opts, conn_options.timeout)
        finals: list[CaptionFinal] = []
        usage: protocol.Usage | None = None
        try:
            conn.start_generation(time.monotonic())
            if audio.size:
                conn.send_audio(audio)
            conn.finish_generation(time.monotonic())
            for frame_text in conn.data_to_send():
                await ws.send_str(frame_text)
            deadline = time.monotonic() + max(conn_options.timeout, audio.size / SAMPLE_RATE)
            done = False
            while not done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise APITimeoutError("vLLM did not finish the transcription in time")
                msg = await ws.receive(timeout=remaining)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise APIConnectionError(f"vLLM closed the connection ({msg.type.name})")
                conn.receive_text(msg.data, time.monotonic())
                for ev in conn.events_received():
                    if isinstance(ev, DeltaReceived):
                        end_s = (ev.step + 1) * protocol.STEP_SECONDS
                        for cap in seg.receive_delta(ev.delta, end_s):
                            if isinstance(cap, CaptionFinal):
                                finals.append(cap)
                    elif isinstance(ev, GenerationFinished):
                        end_s = ev.steps * protocol.STEP_SECONDS
                        finals.extend(
                            c
                            for c in seg.finish_generation(ev.text, end_s)
                            if isinstance(c, CaptionFinal)
                        )
                        usage = ev.usage
                        done = True
                    elif isinstance(ev, GenerationFailed):
                        raise APIConnectionError(f"vLLM lost the generation: {ev.reason}")
                    elif isinstance(ev, ServerErrorReceived) and conn.failure is not None:
                        raise await self._refusal_error(
                            protocol.describe_refusal(ev.code, ev.message),
                            ev.code,
                            conn_options.timeout,
                        )
        except asyncio.TimeoutError as e:
            raise APITimeoutError("vLLM did not finish the transcription in time") from e
        finally:
            await ws.close()
        words = [w for f in finals for w in f.words]
        text = " ".join(f.text for f in finals)
        data = stt.SpeechData(
            language=LanguageCode(lang),
            text=text,
            start_time=finals[0].start_s if finals else 0.0,
            end_time=finals[-1].end_s if finals else audio.size / SAMPLE_RATE,
            words=[TimedString(w.text, start_time=w.start_s, end_time=w.end_s) for w in words],
        )
        logger.debug("recognize: %d samples, usage %s", audio.size, usage)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid("vxr_"),
            alternatives=[data],
        )


class SpeechStream(stt.RecognizeStream):
    """A live stream: push frames of any rate and channel count, read SpeechEvents."""

    def __init__(self, *, stt: STT, opts: _STTOptions, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._stt_impl = stt
        self._opts = opts
        self._id = utils.shortuuid("vx_")
        self.stats = StreamStats()
        self._core: StreamCore | None = None
        self._lanes: dict[int, _LaneIO] = {}
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
        self._direct_input = False  # push_frame may hand chunks to the core itself
        self._user_offset = 0.0

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
        info = await self._stt_impl._server_facts(timeout=min(2.0, self._conn_options.timeout))
        max_model_len, abort_on_close = self._server_limits(info)
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
                    segmenter=opts.segmenter,
                )
            )
            core.stats = self.stats
            self._core = core
            core.start(loop.time())
            if info is None and opts.discover_server:
                # discovery is slow or the server is down: apply what it learns later
                self._stt_impl._start_discovery().add_done_callback(self._on_late_discovery)
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
            except _ConfigurationFailure as e:
                raise await self._stt_impl._refusal_error(
                    str(e), e.code, self._conn_options.timeout
                ) from None
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await utils.aio.cancel_and_wait(input_task)
            lanes, self._lanes = list(self._lanes.values()), {}
            await asyncio.gather(*(lane.aclose() for lane in lanes), return_exceptions=True)

    def _server_limits(self, info: ServerInfo | None) -> tuple[int | None, bool]:
        """max_model_len for rollover, and whether closing a socket aborts its request."""
        max_model_len = self._opts.max_model_len
        if info is None:
            return max_model_len, True
        _refuse_broken(info, self._opts)
        served = info.model(self._opts.model)
        if max_model_len is None and served is not None:
            max_model_len = served.max_model_len
        old = info.quirks.engine_dies_at_max_model_len  # < 0.32 (also: no abort on close)
        if max_model_len is None and old:
            logger.warning(
                "vLLM %s dies at max_model_len and did not report it; assuming 4096",
                info.version,
            )
            max_model_len = 4096
        return max_model_len, not old

    def _on_late_discovery(self, task: asyncio.Task[ServerInfo]) -> None:
        if task.cancelled() or task.exception() is not None or self._core is None:
            return
        try:
            max_model_len, abort_on_close = self._server_limits(task.result())
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
                self._consume(core, item)
            now = loop.time()
            for chunk in self._pipeline.flush():
                core.push_audio(chunk, now)
            core.end_input(now)
            self._pump()
        finally:
            self._direct_input = False
            self._vad_stream = None
            if vad_task is not None:
                await utils.aio.cancel_and_wait(vad_task)
            if vad_stream is not None:
                await vad_stream.aclose()

    def _consume(self, core: StreamCore, item: object) -> None:
        """One input item: a chunk from ``push_frame``, a raw frame (VAD input), or the
        flush sentinel."""
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
            if ev.type == lk_vad.VADEventType.START_OF_SPEECH:
                core.speech_started(max(0, at - int(ev.speech_duration * SAMPLE_RATE)), now)
            elif ev.type == lk_vad.VADEventType.END_OF_SPEECH:
                core.speech_ended(max(0, at - int(ev.silence_duration * SAMPLE_RATE)), now)
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
            elif isinstance(action, OpenLane):
                self._open_lane(action.lane)
            elif isinstance(action, CloseLane):
                lane = self._lanes.pop(action.lane, None)
                if lane is not None:
                    lane.close()
            elif isinstance(action, StreamFailed):
                self._fail(action)
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
        while not self._input_ch.empty():
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

    def _fail(self, failed: StreamFailed) -> None:
        if failed.configuration:
            self._finish(_ConfigurationFailure(failed.message, failed.code))
        else:
            self._finish(APIConnectionError(failed.message))

    # -- lanes -----------------------------------------------------------------------------------

    def _open_lane(self, lane_id: int) -> None:
        lane = _LaneIO(lane_id, self._lane_lost)
        self._lanes[lane_id] = lane
        lane.task = asyncio.create_task(self._lane_loop(lane), name=f"voxtral_vllm.lane{lane_id}")

    async def _lane_loop(self, lane: _LaneIO) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._conn_options.timeout
        started = loop.time()
        try:
            ws = self._stt_impl._take_warm_socket() or await self._stt_impl._connect_ws(
                self._opts, timeout
            )
        except APIStatusError as e:
            if not e.retryable:
                self._finish(e)
                return
            self._lane_lost(lane, str(e))
            return
        except APIConnectionError as e:
            logger.warning("lane %d: %s", lane.lane, e)
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
                    first = False
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
            lane.closed = True
            self._finish(
                APIStatusError(
                    f"no session.created within {timeout:.1f}s of connecting to "
                    f"{self._opts.base_url}: this is not vLLM's /v1/realtime endpoint (check "
                    "base_url and any proxy in between)",
                    status_code=-1,
                    retryable=False,
                )
            )
        finally:
            await utils.aio.cancel_and_wait(writer)
            if not ws.closed:
                await ws.close()
        if not lane.closed:
            self._lane_lost(lane, reason)

    def _lane_lost(self, lane: _LaneIO, reason: str) -> None:
        core = self._core
        self._lanes.pop(lane.lane, None)
        if core is not None and not lane.closed:
            lane.closed = True
            core.lane_lost(lane.lane, asyncio.get_running_loop().time(), reason)
            self._pump()


class _LaneIO:
    """The socket of one lane. Frames are written at once, in the caller, when nothing is
    queued: a step's audio reaches the socket with no task switch. When the transport pushes
    back (flow control) or frames are already waiting, the writer task sends them, in order.
    Closing lets the writer flush what is queued (e.g. a final commit) and then close."""

    def __init__(self, lane: int, on_lost: Callable[[_LaneIO, str], None]) -> None:
        self.lane = lane
        self._on_lost = on_lost
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._outbox: list[str] = []
        self._wake = asyncio.Event()
        self._busy = False  # the writer task is sending
        self._resume: _Resumed | None = None  # a direct send the transport paused

    def send(self, frames: list[str]) -> None:
        if self.closed:
            return
        ws = self.ws
        if ws is not None and not self._busy and not self._outbox and self._resume is None:
            frames = self._write_now(ws, frames)
            if not frames and self._resume is None:
                return
        self._outbox.extend(frames)
        if len(self._outbox) > _MAX_OUTBOX:
            # vLLM stopped reading: drop the socket; the core replays what it is owed
            logger.warning("lane %d: vLLM is not reading; dropping the connection", self.lane)
            self._outbox.clear()
            self._on_lost(self, "vLLM stopped reading (send queue full)")
            if self.task is not None:
                self.task.cancel()
            return
        self._wake.set()

    def _write_now(self, ws: aiohttp.ClientWebSocketResponse, frames: list[str]) -> list[str]:
        """Write frames until one cannot complete at once; return those not started."""
        for i, frame in enumerate(frames):
            # An uncompressed aiohttp send writes to the transport synchronously and awaits
            # only when the transport is paused: run it until then.
            coro = ws.send_str(frame)
            try:
                yielded = coro.send(None)
            except StopIteration:
                continue
            except Exception:
                # the writer task meets the same error and the lane ends as before
                coro.close()
                return frames[i:]
            self._resume = _Resumed(coro, yielded)
            return frames[i + 1 :]
        return []

    async def write_loop(self) -> None:
        ws = self.ws
        assert ws is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            try:
                if self._resume is not None:
                    await self._resume
                    self._resume = None
                while self._outbox:
                    batch, self._outbox = self._outbox, []
                    for frame in batch:
                        await ws.send_str(frame)
            finally:
                self._busy = False
            if self.closed:
                await ws.close()
                return

    def close(self) -> None:
        """Close after the frames already queued. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.ws is None and self.task is not None:
            self.task.cancel()  # still connecting
        self._wake.set()

    async def aclose(self) -> None:
        """Close now (the stream is ending)."""
        self.closed = True
        if self.task is not None:
            await utils.aio.cancel_and_wait(self.task)
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()


class _Resumed:
    """The rest of a send coroutine that was started in the caller and paused (it is
    waiting for the transport to drain): awaiting this finishes it, like ``await coro``
    would have, ``yielded`` being what it paused on."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, None, None]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                yield value
            except BaseException as e:  # cancellation included: the send sees it
                try:
                    value = coro.throw(e)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(None)
                except StopIteration:
                    return


class _ConfigurationFailure(Exception):
    """Marker: the server refused the session; _run turns it into APIStatusError."""

    def __init__(self, message: str, code: ErrorCode | None) -> None:
        super().__init__(message)
        self.code = code


def _handshake_error(status: int, opts: _STTOptions) -> APIStatusError:
    if status == 401:
        msg = (
            f"vLLM at {opts.base_url} rejected the API key (HTTP 401): set api_key= or "
            f"{_ENV_KEY} to the server's --api-key"
            if opts.api_key
            else f"vLLM at {opts.base_url} requires an API key (HTTP 401): "
            f"set api_key= or {_ENV_KEY}"
        )
    elif status == 403:
        msg = (
            f"HTTP 403 on the WebSocket upgrade to {opts.base_url}: vLLM answers 403 for a "
            "path it does not serve (a wrong base_url path or proxy prefix) and 401 for a bad "
            "key; check the URL, then any proxy's rules"
        )
    elif status == 404:
        msg = (
            f"no realtime endpoint at {opts.base_url} (HTTP 404): check base_url; the server must "
            "be vLLM >= 0.16 serving a realtime model (e.g. Voxtral-Mini-4B-Realtime-2602)"
        )
    else:
        msg = f"vLLM at {opts.base_url} refused the WebSocket upgrade (HTTP {status})"
    return APIStatusError(msg, status_code=status, retryable=status >= 500 or status in (408, 429))


def _refuse_broken(info: ServerInfo, opts: _STTOptions) -> None:
    if opts.api_key and info.quirks.api_key_breaks_websocket:
        raise APIStatusError(
            f"vLLM {info.version} cannot serve /v1/realtime with --api-key (every WebSocket fails, "
            "fixed in vLLM 0.20): upgrade vLLM, or run it without --api-key behind a proxy",
            status_code=400,
            retryable=False,
        )


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
