"""The README's "Captions for everyone in the room" snippet runs as written."""

from __future__ import annotations

import re
from typing import Any

import pytest

from livekit_plugins_voxtral_vllm import STT, RoomCaptioner
from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

from ..fake_livekit import REPO_ROOT, FakeJobContext, FakeRoom, wait_until


def readme_snippet() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Captions for everyone in the room", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_snippet_captions_a_room(monkeypatch: pytest.MonkeyPatch) -> None:
    async with VLLMRealtimeEmulator(fast=True) as emulator:
        monkeypatch.setenv("VOXTRAL_VLLM_BASE_URL", emulator.url)
        namespace: dict[str, Any] = {}
        exec(compile(readme_snippet(), "README.md", "exec"), namespace)
        room = FakeRoom()
        room.add_existing("alice")
        ctx = FakeJobContext(room, {})
        await namespace["entrypoint"](ctx)

        [shutdown] = ctx.shutdown_callbacks
        captioner = shutdown.__self__  # type: ignore[attr-defined]
        assert isinstance(captioner, RoomCaptioner)
        await wait_until(lambda: captioner.session("alice") is not None, timeout=10)
        session = captioner.session("alice")
        assert session is not None and isinstance(session.stt, STT)
        assert session.stt.base_url == emulator.url
        await shutdown()
        assert captioner.captioned == frozenset()
