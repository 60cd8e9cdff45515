"""Unit tests of ``discovery.py``: base-URL normalisation, REST base, version parsing, quirks,
and :func:`discover` against the emulator (and against nothing) on 127.0.0.1."""

from __future__ import annotations

import aiohttp
import pytest

from livekit_plugins_voxtral_vllm.discovery import (
    ModelInfo,
    ServerInfo,
    VersionQuirks,
    discover,
    http_base,
    normalize_realtime_url,
    parse_version,
    quirks_for,
)
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://gpu:8000/v1/realtime", "ws://gpu:8000/v1/realtime"),
        ("ws://gpu:8000", "ws://gpu:8000/v1/realtime"),
        ("ws://gpu:8000/", "ws://gpu:8000/v1/realtime"),
        ("ws://gpu:8000/v1", "ws://gpu:8000/v1/realtime"),
        ("ws://gpu:8000/v1/", "ws://gpu:8000/v1/realtime"),
        ("ws://gpu:8000/v1/realtime/", "ws://gpu:8000/v1/realtime"),
        ("wss://gpu.example.com/v1/realtime", "wss://gpu.example.com/v1/realtime"),
        ("http://gpu:8000", "ws://gpu:8000/v1/realtime"),
        ("http://gpu:8000/v1", "ws://gpu:8000/v1/realtime"),
        ("https://gpu.example.com", "wss://gpu.example.com/v1/realtime"),
        ("HTTPS://gpu.example.com:443/", "wss://gpu.example.com:443/v1/realtime"),
        ("gpu:8000", "ws://gpu:8000/v1/realtime"),
        ("127.0.0.1:8000/v1", "ws://127.0.0.1:8000/v1/realtime"),
        ("[::1]:8000", "ws://[::1]:8000/v1/realtime"),
        ("  ws://gpu:8000  ", "ws://gpu:8000/v1/realtime"),
        # reverse-proxy prefixes are kept and completed
        ("https://proxy.example.com/voxtral", "wss://proxy.example.com/voxtral/v1/realtime"),
        ("https://proxy.example.com/voxtral/", "wss://proxy.example.com/voxtral/v1/realtime"),
        ("wss://proxy.example.com/a/b/v1", "wss://proxy.example.com/a/b/v1/realtime"),
        (
            "wss://proxy.example.com/a/b/v1/realtime",
            "wss://proxy.example.com/a/b/v1/realtime",
        ),
    ],
)
def test_normalize_realtime_url(given: str, expected: str) -> None:
    assert normalize_realtime_url(given) == expected
    # idempotent: a normalised URL is its own normal form
    assert normalize_realtime_url(expected) == expected


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://gpu:8000", "'ftp'"),
        ("file:///tmp/socket", "'file'"),
        ("ws://user:hunter2@gpu:8000", "credentials"),
        ("ws://hunter2@gpu:8000", "credentials"),
        ("https://:hunter2@gpu", "credentials"),
        ("ws://gpu:8000/v1/realtime?api_key=hunter2", "query"),
        ("ws://gpu:8000/v1/realtime#hunter2", "fragment"),
        ("ws://:8000/v1/realtime", "no host"),
        ("ws://:8000/v1/realtime?api_key=hunter2", "query"),
        ("ws:///v1/realtime", "no host"),
        ("http://", "no host"),
    ],
)
def test_normalize_rejects_with_a_message_naming_the_problem(given: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_realtime_url(given)
    message = str(info.value)
    assert needle in message
    assert "hunter2" not in message, "a secret in the URL must not be echoed back"


@pytest.mark.parametrize("given", ["ws://gpu:http/v1", "ws://gpu:99999", "gpu:-1", "ws://@gpu"])
def test_normalize_rejects_a_bad_port_or_an_empty_userinfo(given: str) -> None:
    """A port that is not a number in 0-65535 (or a stray ``@``) is a typo: refuse it at
    construction rather than fail later in the socket layer with an obscure error."""
    with pytest.raises(ValueError) as info:
        normalize_realtime_url(given)
    assert "port" in str(info.value) or "credentials" in str(info.value)


@pytest.mark.parametrize(
    ("realtime", "expected"),
    [
        ("ws://gpu:8000/v1/realtime", "http://gpu:8000"),
        ("wss://gpu.example.com/v1/realtime", "https://gpu.example.com"),
        ("wss://proxy.example.com/voxtral/v1/realtime", "https://proxy.example.com/voxtral"),
        ("ws://[::1]:8000/v1/realtime", "http://[::1]:8000"),
    ],
)
def test_http_base(realtime: str, expected: str) -> None:
    assert http_base(realtime) == expected
    assert http_base(normalize_realtime_url(expected)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.33.0", (0, 33, 0)),
        ("v0.24.1", (0, 24, 1)),
        ("0.31", (0, 31, 0)),
        ("0.20.0rc1", (0, 20, 0)),
        ("0.34.0.dev12+g1234abc", (0, 34, 0)),
        ("1", (1, 0, 0)),
        ("", None),
        (None, None),
        ("dev", None),
    ],
)
def test_parse_version(text: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize(
    ("version", "api_key", "dies", "hangs", "unchecked", "no_pad"),
    [
        ((0, 16, 0), True, True, False, True, True),
        ((0, 17, 1), True, True, True, True, False),
        ((0, 18, 0), True, True, True, True, False),
        ((0, 19, 0), True, True, True, False, False),
        ((0, 20, 0), False, True, True, False, False),
        ((0, 24, 9), False, True, True, False, False),
        ((0, 25, 0), False, True, False, False, False),
        ((0, 31, 2), False, True, False, False, False),
        ((0, 32, 0), False, False, False, False, False),
        ((0, 33, 0), False, False, False, False, False),
        ((1, 0, 0), False, False, False, False, False),
    ],
)
def test_quirks_for_each_version(
    version: tuple[int, int, int],
    api_key: bool,
    dies: bool,
    hangs: bool,
    unchecked: bool,
    no_pad: bool,
) -> None:
    q = quirks_for(version)
    assert q.api_key_breaks_websocket is api_key
    assert q.engine_dies_at_max_model_len is dies
    assert q.silent_hang_after_idle is hangs
    assert q.model_name_not_checked is unchecked
    assert q.no_right_padding is no_pad
    # every quirk is described, in words a user can act on
    notes = q.describe()
    assert len(notes) == sum((api_key, dies, hangs, unchecked, no_pad))
    if api_key:
        assert any("--api-key" in n and "0.20" in n for n in notes)
    if dies:
        assert any("max_model_len" in n for n in notes)
    if hangs:
        assert any("hang" in n for n in notes)


def test_unknown_version_has_no_quirks() -> None:
    assert quirks_for(None) == VersionQuirks()
    assert VersionQuirks().describe() == []
    assert ServerInfo().quirks == VersionQuirks()


def test_server_info_lookups() -> None:
    info = ServerInfo(
        healthy=True,
        version="0.31.0",
        models=(ModelInfo("a", 4096), ModelInfo("b", None)),
    )
    assert info.version_tuple == (0, 31, 0)
    assert info.quirks.engine_dies_at_max_model_len
    assert info.model("a") == ModelInfo("a", 4096)
    assert info.model("b") is not None and info.model("b") == ModelInfo("b", None)
    assert info.model("c") is None


async def test_discover_reads_the_emulator() -> None:
    async with VLLMRealtimeEmulator(
        fast=True, vllm_version="0.31.0", max_model_len=2048, served_model_name=["a", "b"]
    ) as emu:
        async with aiohttp.ClientSession() as session:
            info = await discover(session, emu.url)
        requests = emu.stats().http_requests
    assert info.healthy is True
    assert info.version == "0.31.0"
    assert info.models == (ModelInfo("a", 2048), ModelInfo("b", 2048))
    assert info.errors == ()
    assert requests == {"/health": 1, "/version": 1, "/v1/models": 1}


async def test_discover_sends_the_key_as_a_bearer_header_only() -> None:
    key = "sk-discovery-7f3a9c"
    async with VLLMRealtimeEmulator(fast=True, api_key=key) as emu:
        async with aiohttp.ClientSession() as session:
            with_key = await discover(session, emu.url, api_key=key)
            without = await discover(session, emu.url)
        unauthorized = emu.stats().unauthorized
    assert with_key.models and with_key.errors == ()
    # /version and /health are not guarded; /v1/models is, so without a key it is an error
    assert without.version == "0.33.0" and without.models == ()
    assert without.errors == ("/v1/models: HTTP 401",)
    assert unauthorized == 1
    assert all(key not in e for e in with_key.errors + without.errors)


async def test_discover_never_raises_for_a_dead_server() -> None:
    async with VLLMRealtimeEmulator(fast=True) as emu:
        url = emu.url
    async with aiohttp.ClientSession() as session:
        info = await discover(session, url, timeout=2.0)
    assert info.healthy is None and info.version is None and info.models == ()
    assert len(info.errors) == 3
    assert {e.split(":")[0] for e in info.errors} == {"/health", "/version", "/v1/models"}
