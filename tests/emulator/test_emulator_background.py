"""BackgroundEmulator: the emulator served from a thread, for synchronous programs."""

from __future__ import annotations

import urllib.request

import pytest

from livekit_plugins_voxtral_vllm.testing import BackgroundEmulator


def test_serves_from_a_thread_and_stops() -> None:
    emulator = BackgroundEmulator()
    url = emulator.start()
    try:
        assert emulator.running
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
        health = url.replace("ws://", "http://").replace("/v1/realtime", "/health")
        with urllib.request.urlopen(health, timeout=5) as response:
            assert response.status == 200
    finally:
        emulator.stop()
    assert not emulator.running


def test_a_bad_option_is_reported_by_start() -> None:
    emulator = BackgroundEmulator(step_time_s=-1)
    with pytest.raises(RuntimeError, match="did not start: ValueError"):
        emulator.start()
    emulator.stop()
