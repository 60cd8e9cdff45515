"""Where what goes wrong with a vLLM server becomes one of LiveKit's API errors.

LiveKit's ``RecognizeStream`` retries ``_run`` on a retryable :class:`APIError` and gives up on
any other, so the choice made here is the whole difference between "try again" and "tell the
user what to fix":

- a connect that fails or times out is ``APIConnectionError`` / ``APITimeoutError`` (retried);
- a refused WebSocket upgrade is ``APIStatusError`` with the HTTP status (401/403/404 are
  not retried; :func:`handshake_error` says what each means for vLLM), and so is a TLS
  certificate that cannot be verified (it fails the same way every time);
- a session the server refuses (``model_not_found`` and the other configuration codes) is a
  non-retryable ``APIStatusError``; for an unknown model it lists the models the server does
  serve (:func:`refusal_error`);
- a version of vLLM this configuration cannot use is refused before any socket
  (:func:`refuse_broken`), and so is an endpoint list none of which can serve the stream
  (:func:`no_usable_endpoint`).

Every message names the server and says what to change. None contains the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterator, Mapping

import aiohttp
from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError

from .discovery import ServerInfo, discover
from .log import logger
from .protocol import ErrorCode
from .stream_core import StreamFailed
from .stt_options import ENV_KEY

__all__ = [
    "ConfigurationFailure",
    "EveryEndpointRefused",
    "connect_errors",
    "handshake_error",
    "no_usable_endpoint",
    "refusal_error",
    "refuse_broken",
    "stream_failure",
]


class ConfigurationFailure(Exception):
    """Marker: the server refused the session; ``_run`` turns it into APIStatusError."""

    def __init__(self, message: str, code: ErrorCode | None) -> None:
        super().__init__(message)
        self.code = code


class EveryEndpointRefused(Exception):
    """Marker: no endpoint is left that serves the model; _run turns it into APIStatusError."""


def stream_failure(failed: StreamFailed) -> Exception:
    """What the stream ends with when its core fails: a refusal to report (not retried), or a
    connection error LiveKit retries."""
    if failed.configuration:
        return ConfigurationFailure(failed.message, failed.code)
    return APIConnectionError(failed.message)


@contextlib.contextmanager
def connect_errors(url: str, timeout: float, *, api_key: str | None) -> Iterator[None]:
    """Around a WebSocket connect to ``url``: raise what failed as a LiveKit API error."""
    try:
        yield
    except aiohttp.WSServerHandshakeError as e:
        raise handshake_error(e.status, url, api_key=api_key) from None
    except aiohttp.ClientConnectorCertificateError as e:
        # fails the same way on every attempt: a configuration error, not an outage
        raise APIStatusError(
            f"the TLS certificate of {url} could not be verified "
            f"({e.certificate_error}): pass ssl_context= with the CA that signed it",
            status_code=-1,
            retryable=False,
        ) from None
    except asyncio.TimeoutError as e:
        raise APITimeoutError(f"timed out connecting to vLLM at {url} after {timeout:.1f}s") from e
    except (aiohttp.ClientError, OSError) as e:
        raise APIConnectionError(f"could not connect to vLLM at {url}") from e


def handshake_error(status: int, url: str, *, api_key: str | None) -> APIStatusError:
    """The error for a WebSocket upgrade ``url`` answered with HTTP ``status``."""
    if status == 401:
        msg = (
            f"vLLM at {url} rejected the API key (HTTP 401): set api_key= or "
            f"{ENV_KEY} to the server's --api-key"
            if api_key
            else f"vLLM at {url} requires an API key (HTTP 401): set api_key= or {ENV_KEY}"
        )
    elif status == 403:
        msg = (
            f"HTTP 403 on the WebSocket upgrade to {url}: vLLM answers 403 for a "
            "path it does not serve (a wrong base_url path or proxy prefix) and 401 for a bad "
            "key; check the URL, then any proxy's rules"
        )
    elif status == 404:
        msg = (
            f"no realtime endpoint at {url} (HTTP 404): check base_url; the server must "
            "be vLLM >= 0.16 serving a realtime model (e.g. Voxtral-Mini-4B-Realtime-2602)"
        )
    else:
        msg = f"vLLM at {url} refused the WebSocket upgrade (HTTP {status})"
    return APIStatusError(msg, status_code=status, retryable=status >= 500 or status in (408, 429))


async def refusal_error(
    message: str,
    code: ErrorCode | None,
    *,
    http_session: Callable[[], aiohttp.ClientSession],
    url: str,
    api_key: str | None,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
) -> APIStatusError:
    """The non-retryable error for a session ``url`` refused; for a model the server does not
    serve, it lists the models it does serve."""
    if code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.MODEL_NOT_VALIDATED):
        try:
            info = await discover(
                http_session(),
                url,
                api_key=api_key,
                timeout=min(5.0, timeout),
                ssl_context=ssl_context,
            )
        except Exception as e:  # the message is still useful without the list
            logger.debug("could not list the served models: %s", e)
        else:
            if info.models:
                message += ". The server serves: " + ", ".join(m.id for m in info.models)
        return APIStatusError(message, status_code=404, retryable=False)
    return APIStatusError(message, status_code=400, retryable=False)


def refuse_broken(info: ServerInfo, *, api_key: str | None) -> None:
    """Raise if the server's version cannot serve this configuration at all."""
    if api_key and info.quirks.api_key_breaks_websocket:
        raise APIStatusError(
            f"vLLM {info.version} cannot serve /v1/realtime with --api-key (every WebSocket fails, "
            "fixed in vLLM 0.20): upgrade vLLM, or run it without --api-key behind a proxy",
            status_code=400,
            retryable=False,
        )


def no_usable_endpoint(excluded: Mapping[str, str]) -> APIStatusError:
    """The error when every endpoint was excluded (``url -> why``)."""
    return APIStatusError(
        "no vLLM endpoint can serve this stream: "
        + "; ".join(f"{u}: {why}" for u, why in excluded.items()),
        status_code=400,
        retryable=False,
    )
