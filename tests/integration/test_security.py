"""The API key's only way out is the ``Authorization: Bearer`` header (never a URL, a log line,
an exception or a repr), and ``wss://`` with a user-supplied ``ssl.SSLContext``."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError, stt

from livekit_plugins_voxtral_vllm import STT, SpeechStream
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .helpers import Run, collect, frames_of, normalize, transcribe

KEY = "sk-vllm-4c1f0e9b7a2d"
WRONG_KEY = "sk-wrong-90d7e3aa51"
SECRETS = (KEY, WRONG_KEY)
CONN = APIConnectOptions(max_retry=1, retry_interval=0.05, timeout=3.0)
SCRIPT = "hello world. the meeting starts now. <pause:900> thank you everyone."


# -- fixtures and helpers -------------------------------------------------------------------------


@dataclass
class SentRequest:
    method: str
    url: str
    headers: dict[str, str]


@dataclass
class Traced:
    """An aiohttp session that records every request the plugin makes (client side)."""

    session: aiohttp.ClientSession
    requests: list[SentRequest] = field(default_factory=list)


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    trace = aiohttp.TraceConfig()
    out: list[SentRequest] = []

    async def on_start(
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        out.append(SentRequest(params.method, str(params.url), dict(params.headers)))

    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield Traced(session, out)


@pytest.fixture
def capture_all(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG for every logger, including those that do not propagate."""
    caplog.set_level(logging.DEBUG)
    extra: list[logging.Logger] = []
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if isinstance(obj, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            if not obj.propagate:
                obj.addHandler(caplog.handler)
                extra.append(obj)
    yield caplog
    for lg in extra:
        lg.removeHandler(caplog.handler)


def assert_no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the capture is not working"
    for record in caplog.records:
        rendered = caplog.handler.format(record) + repr(record.__dict__)
        for secret in SECRETS:
            assert secret not in rendered, f"API key in a log record: {rendered[:300]}"


def exception_texts(exc: BaseException) -> list[str]:
    """str and repr of ``exc`` and of every exception chained to it, and the traceback."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), repr(vars(e)) if hasattr(e, "__dict__") else ""]
        if isinstance(e, APIStatusError):
            texts.append(repr(e.body))
        todo += [e.__cause__, e.__context__]
    return texts


def assert_no_secret_in(*errors: BaseException | stt.STTError) -> None:
    for err in errors:
        exc = err.error if isinstance(err, stt.STTError) else err
        texts = exception_texts(exc)
        if isinstance(err, stt.STTError):
            texts.append(repr(err))
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, f"API key in an exception: {text[:300]}"


def assert_no_secret_in_reprs(engine: STT, stream: SpeechStream) -> None:
    for text in (repr(engine), str(engine), repr(engine._opts), repr(stream), str(stream)):
        for secret in SECRETS:
            assert secret not in text


async def stream_with_reconnect(engine: STT, emu: VLLMRealtimeEmulator) -> tuple[Run, STT]:
    """Stream SCRIPT; drop every socket once the first interim is out; check the text."""
    speech = synthesize(SCRIPT, sample_rate=48000)
    frames = frames_of(speech, 10)
    stream = engine.stream(conn_options=CONN)
    run = Run()
    reader = asyncio.create_task(collect(stream, run))
    try:
        for f in frames[:150]:
            stream.push_frame(f)
        await _until(lambda: bool(run.interims), 10)
        emu.drop_all()
        for f in frames[150:]:
            stream.push_frame(f)
            await asyncio.sleep(0)
        stream.end_input()
        await asyncio.wait_for(reader, 20)
    finally:
        reader.cancel()
        assert_no_secret_in_reprs(engine, stream)
        await stream.aclose()
    assert stream.stats.reconnects >= 1
    assert normalize(run.text) == normalize(speech.text)
    return run, engine


async def _until(cond: object, timeout: float) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def first_error(
    engine: STT, conn: APIConnectOptions = CONN, timeout: float = 10.0
) -> BaseException:
    stream = engine.stream(conn_options=conn)
    for f in frames_of(synthesize("hello world.", sample_rate=48000), 10):
        stream.push_frame(f)
    stream.end_input()

    async def drain() -> None:
        async for _ in stream:
            pass

    try:
        with pytest.raises(APIError) as info:
            try:
                await asyncio.wait_for(drain(), timeout)
            except asyncio.TimeoutError:
                pytest.fail(f"the stream raised no error within {timeout:.1f}s")
    finally:
        assert_no_secret_in_reprs(engine, stream)
        await stream.aclose()
    return info.value


# -- the key travels only in the Authorization header ---------------------------------------------


async def test_key_only_in_the_bearer_header(traced: Traced) -> None:
    async with VLLMRealtimeEmulator(fast=True, api_key=KEY) as emu:
        engine = STT(base_url=emu.url, api_key=KEY, http_session=traced.session)
        await stream_with_reconnect(engine, emu)
        await engine.aclose()
        conns = list(emu.connections)
        stats = emu.stats()
    assert len(conns) >= 2, "the reconnect opened a second socket"
    assert stats.unauthorized == 0, "discovery and every upgrade carried the key"
    # server side: the upgrade requests
    for conn in conns:
        assert conn.request_headers.get("Authorization") == f"Bearer {KEY}"
        assert conn.request_path == "/v1/realtime"
        others = {k: v for k, v in conn.request_headers.items() if k != "Authorization"}
        assert KEY not in repr(others)
    # client side: every request the plugin made (discovery GETs and WebSocket upgrades)
    kinds = {(r.method, r.url.rsplit("/", 1)[-1]) for r in traced.requests}
    assert ("GET", "realtime") in kinds and ("GET", "models") in kinds
    for req in traced.requests:
        assert KEY not in req.url
        assert "?" not in req.url
        assert req.headers.get("Authorization") == f"Bearer {KEY}"
        assert KEY not in repr({k: v for k, v in req.headers.items() if k != "Authorization"})


async def test_no_key_means_no_authorization_header(traced: Traced) -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        engine = STT(base_url=emu.url, http_session=traced.session)
        speech = synthesize("hello world.", sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 10), timeout=10)
        await engine.aclose()
        conns = list(emu.connections)
    assert normalize(run.text) == normalize(speech.text)
    assert traced.requests and conns
    assert all("Authorization" not in r.headers for r in traced.requests)
    assert all("Authorization" not in c.request_headers for c in conns)


async def test_key_never_in_logs_errors_or_reprs(capture_all: pytest.LogCaptureFixture) -> None:
    """One session of everything that logs: a stream with a reconnect, a wrong key (401) and a
    wrong model, all at DEBUG for every logger."""
    errors: list[stt.STTError] = []
    raised: list[BaseException] = []
    async with VLLMRealtimeEmulator(fast=True, api_key=KEY) as emu:
        engine = STT(base_url=emu.url, api_key=KEY)
        engine.on("error", errors.append)
        await stream_with_reconnect(engine, emu)
        await engine.aclose()

        wrong_key = STT(base_url=emu.url, api_key=WRONG_KEY)
        wrong_key.on("error", errors.append)
        err = await first_error(wrong_key)
        await wrong_key.aclose()
        assert isinstance(err, APIStatusError) and err.status_code == 401
        assert not err.retryable and "API key" in str(err)
        raised.append(err)

        wrong_model = STT(base_url=emu.url, api_key=KEY, model="mistralai/not-served")
        wrong_model.on("error", errors.append)
        err = await first_error(wrong_model)
        await wrong_model.aclose()
        assert isinstance(err, APIStatusError) and err.status_code == 404
        assert "not-served" in str(err)
        raised.append(err)
    assert len(errors) >= 2
    assert_no_secret_in(*raised, *errors)
    assert_no_secret_in_logs(capture_all)
    # the capture really covered the plugin, the reconnect and the failures
    messages = " ".join(r.getMessage() for r in capture_all.records)
    assert any(r.name.startswith("livekit.plugins.voxtral_vllm") for r in capture_all.records)
    assert any(r.levelno == logging.DEBUG for r in capture_all.records)
    assert "401" in messages or "API key" in messages


# -- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command-line tool is not installed: cannot make a test cert")
    d = tmp_path_factory.mktemp("tls")
    out = Cert(d / "cert.pem", d / "key.pem")
    # fmt: off
    cmd = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(out.key), "-out", str(out.cert), "-days", "2",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    ]
    # fmt: on
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a self-signed cert: {proc.stderr.strip()[:200]}")
    return out


async def test_wss_with_a_user_ssl_context(cert: Cert) -> None:
    async with VLLMRealtimeEmulator(
        fast=True, api_key=KEY, ssl_context=cert.server_context()
    ) as emu:
        assert emu.url.startswith("wss://127.0.0.1:") and emu.http_url.startswith("https://")
        engine = STT(base_url=emu.url, api_key=KEY, ssl_context=cert.client_context())
        await stream_with_reconnect(engine, emu)
        info = engine.server_info
        await engine.aclose()
        stats = emu.stats()
        conns = list(emu.connections)
    # discovery went over https with the same context
    assert info is not None and info.version == "0.33.0" and info.errors == ()
    assert stats.http_requests.get("/version") == 1
    assert stats.unauthorized == 0
    assert all(c.request_headers.get("Authorization") == f"Bearer {KEY}" for c in conns)


async def test_wss_emulator_accepts_a_plain_https_base_url(cert: Cert) -> None:
    """``https://host:port`` is normalised to ``wss://host:port/v1/realtime``."""
    async with VLLMRealtimeEmulator(fast=True, ssl_context=cert.server_context()) as emu:
        engine = STT(base_url=emu.http_url, ssl_context=cert.client_context())
        assert engine.base_url == emu.url
        speech = synthesize("good morning everyone.", sample_rate=48000)
        run = await transcribe(engine, frames_of(speech, 10), timeout=10)
        await engine.aclose()
    assert normalize(run.text) == normalize(speech.text)


async def _default_certs_failure(
    cert: Cert, capture_all: pytest.LogCaptureFixture, limit: float, **options: float
) -> tuple[BaseException, list[stt.STTError], float]:
    errors: list[stt.STTError] = []
    async with VLLMRealtimeEmulator(
        fast=True, api_key=KEY, ssl_context=cert.server_context()
    ) as emu:
        # no ssl_context: the system CAs do not know this certificate
        engine = STT(base_url=emu.url, api_key=KEY, **options)  # type: ignore[arg-type]
        engine.on("error", errors.append)
        started = time.monotonic()
        err = await first_error(
            engine, APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=2.0), limit
        )
        elapsed = time.monotonic() - started
        await engine.aclose()
        accepted = len(emu.connections)
    assert accepted == 0
    assert_no_secret_in(err, *errors)
    assert_no_secret_in_logs(capture_all)
    return err, errors, elapsed


async def test_default_certificates_fail_without_leaking_the_key(
    cert: Cert, capture_all: pytest.LogCaptureFixture
) -> None:
    # max_outage_s=0: whether it is retried or not, the error must come and say what failed
    err, errors, _ = await _default_certs_failure(cert, capture_all, 10.0, max_outage_s=0.0)
    assert isinstance(err, APIError)
    assert "certificate verify failed" in str(err)
    assert errors and not errors[-1].recoverable


async def test_default_certificates_fail_fast_with_a_clear_non_retryable_error(
    cert: Cert, capture_all: pytest.LogCaptureFixture
) -> None:
    """A certificate that does not verify will not verify on the next attempt either: this is a
    configuration error, like a wrong API key. The user expects one non-retryable error that
    says so and names the fix (``ssl_context=``), not minutes of retries."""
    err, errors, elapsed = await _default_certs_failure(cert, capture_all, 3.0)
    message = str(err)
    assert "certificate" in message.lower()
    assert "ssl_context" in message
    assert isinstance(err, APIError) and not err.retryable
    assert len(errors) == 1 and not errors[0].recoverable
    assert elapsed < 1.0


async def test_connection_refused_error_does_not_leak_the_key(
    capture_all: pytest.LogCaptureFixture,
) -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        url = emu.url
    engine = STT(base_url=url, api_key=KEY, max_outage_s=0.0)
    errors: list[stt.STTError] = []
    engine.on("error", errors.append)
    err = await first_error(engine, APIConnectOptions(max_retry=1, retry_interval=0.05))
    await engine.aclose()
    assert isinstance(err, APIConnectionError)
    assert_no_secret_in(err, *errors)
    assert_no_secret_in_logs(capture_all)
