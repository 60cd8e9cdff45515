"""What a vLLM server says about itself: ``/health``, ``/v1/models``, ``/version``.

Used to learn ``max_model_len`` (for rollover), the vLLM version (for its known quirks) and the
served model names (to say which exist when ``model_not_found`` comes back).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .log import logger

__all__ = [
    "ModelInfo",
    "ServerInfo",
    "VersionQuirks",
    "discover",
    "http_base",
    "normalize_realtime_url",
    "quirks_for",
    "parse_version",
]

REALTIME_PATH = "/v1/realtime"


def normalize_realtime_url(url: str) -> str:
    """Normalise a user's base URL to ``ws(s)://host[:port][/prefix]/v1/realtime``.

    Accepts ``ws://``, ``wss://``, ``http://``, ``https://`` and a bare ``host:port``; a path
    (a reverse-proxy prefix, ``/v1`` or the full ``/v1/realtime``) is kept and completed.

    Raises:
        ValueError: an unexpected scheme, credentials, a query or fragment, no host or a bad
            port.
    """
    raw = url.strip()
    if not raw:
        raise ValueError("base_url is empty; expected e.g. ws://gpu-host:8000/v1/realtime")
    if "://" not in raw:
        raw = "ws://" + raw
    parts = urlsplit(raw)
    scheme = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(
            f"base_url has an unexpected scheme {parts.scheme!r}; use ws://, wss://, http:// "
            "or https:// (e.g. ws://gpu-host:8000/v1/realtime)"
        )
    if "@" in parts.netloc:
        raise ValueError(
            "base_url must not contain credentials (user:password@); pass the vLLM API key "
            "as api_key= or VOXTRAL_VLLM_API_KEY, it is sent as an Authorization header"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            "base_url must not carry a query or fragment; vLLM takes no query parameters "
            "(the API key goes in api_key=)"
        )
    if not parts.hostname:
        raise ValueError(f"base_url has no host: {url.strip()!r}")
    try:
        _ = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError:
        raise ValueError(
            f"base_url has an invalid port in {parts.netloc!r}; expected a number in 0-65535"
        ) from None
    path = parts.path.rstrip("/")
    if path.endswith(REALTIME_PATH):
        pass
    elif path.endswith("/v1"):
        path += "/realtime"
    else:
        path += REALTIME_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def http_base(realtime_url: str) -> str:
    """``http(s)://host[:port][/prefix]`` of a normalised realtime URL (for REST endpoints)."""
    parts = urlsplit(realtime_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    prefix = parts.path[: -len(REALTIME_PATH)]
    return urlunsplit((scheme, parts.netloc, prefix, "", ""))


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"0.33.0"`` → ``(0, 33, 0)``; dev/rc suffixes are ignored; None if unreadable."""
    if not text:
        return None
    nums: list[int] = []
    for piece in text.lstrip("v").split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        nums.append(int(digits))
    if not nums:
        return None
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


@dataclass(frozen=True)
class VersionQuirks:
    """Known problems of a vLLM version with the realtime endpoint (vllm-realtime.md §2, §7)."""

    api_key_breaks_websocket: bool = False
    """< 0.20: ``--api-key`` makes every WebSocket fail (vllm#36934)."""
    engine_dies_at_max_model_len: bool = False
    """< 0.32: reaching max_model_len kills the engine for every user (vllm#39996)."""
    silent_hang_after_idle: bool = False
    """0.17-0.24: a generation with no audio for 60 s hangs forever (vllm#44461)."""
    model_name_not_checked: bool = False
    """<= 0.18: session.update accepts any model name (vllm#36399)."""
    no_right_padding: bool = False
    """0.16: no right padding at final; the last words can be lost."""

    def describe(self) -> list[str]:
        notes = []
        if self.api_key_breaks_websocket:
            notes.append("--api-key breaks every /v1/realtime WebSocket (fixed in 0.20)")
        if self.engine_dies_at_max_model_len:
            notes.append(
                "reaching max_model_len kills the engine for every session (fixed in 0.32); "
                "the plugin rolls generations over well before it"
            )
        if self.silent_hang_after_idle:
            notes.append(
                "a generation left 60 s without audio hangs silently (fixed in 0.25); "
                "the plugin never leaves one open without audio"
            )
        if self.model_name_not_checked:
            notes.append("session.update accepts any model name (checked from 0.19)")
        if self.no_right_padding:
            notes.append("no right padding at final: the last ~0.5 s of speech can be lost")
        return notes


def quirks_for(version: tuple[int, int, int] | None) -> VersionQuirks:
    if version is None:
        return VersionQuirks()
    minor = version[:2]
    return VersionQuirks(
        api_key_breaks_websocket=minor < (0, 20),
        engine_dies_at_max_model_len=minor < (0, 32),
        silent_hang_after_idle=(0, 17) <= minor < (0, 25),
        model_name_not_checked=minor <= (0, 18),
        no_right_padding=minor < (0, 17),
    )


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_model_len: int | None


@dataclass(frozen=True)
class ServerInfo:
    """What :func:`discover` learned; fields are None when an endpoint did not answer."""

    healthy: bool | None = None
    version: str | None = None
    models: tuple[ModelInfo, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def version_tuple(self) -> tuple[int, int, int] | None:
        return parse_version(self.version)

    @property
    def quirks(self) -> VersionQuirks:
        return quirks_for(self.version_tuple)

    def model(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.id == name), None)


async def discover(
    session: aiohttp.ClientSession,
    realtime_url: str,
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> ServerInfo:
    """Query ``/health``, ``/version`` and ``/v1/models`` concurrently. Never raises for a
    server that is down or answers oddly: what failed is listed in ``errors``."""
    base = http_base(realtime_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    ssl_arg: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def get(path: str) -> tuple[int, Any]:
        async with session.get(
            base + path, headers=headers, timeout=client_timeout, ssl=ssl_arg
        ) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    results = await asyncio.gather(
        get("/health"), get("/version"), get("/v1/models"), return_exceptions=True
    )
    errors: list[str] = []
    healthy: bool | None = None
    version: str | None = None
    models: list[ModelInfo] = []
    health, ver, mods = results
    if isinstance(health, BaseException):
        errors.append(f"/health: {_describe(health)}")
    else:
        healthy = health[0] == 200
    if isinstance(ver, BaseException):
        errors.append(f"/version: {_describe(ver)}")
    elif ver[0] == 200 and isinstance(ver[1], dict) and isinstance(ver[1].get("version"), str):
        version = ver[1]["version"]
    else:
        errors.append(f"/version: HTTP {ver[0]}")
    if isinstance(mods, BaseException):
        errors.append(f"/v1/models: {_describe(mods)}")
    elif mods[0] == 200 and isinstance(mods[1], dict) and isinstance(mods[1].get("data"), list):
        for item in mods[1]["data"]:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                mml = item.get("max_model_len")
                models.append(ModelInfo(item["id"], mml if isinstance(mml, int) else None))
    else:
        errors.append(f"/v1/models: HTTP {mods[0]}")
    for err in errors:
        logger.debug("vLLM discovery: %s", err)
    return ServerInfo(healthy=healthy, version=version, models=tuple(models), errors=tuple(errors))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
