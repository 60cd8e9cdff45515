"""``send_log``: timestamps of what the emulator read and wrote, for latency benchmarks."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize

from .support import MODEL, open_client


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_send_log_records_sessions_generations_and_text_deltas() -> None:
    buf = io.StringIO()
    speech = synthesize("hello world.")
    before = time.monotonic()
    async with VLLMRealtimeEmulator(fast=True, send_log=buf) as emu:
        client = await open_client(emu, update=False)
        await client.send({"type": "session.update", "model": MODEL, "language": "tag-7"})
        deltas, _ = await client.transcribe(speech.samples)
        await client.ws.close()
        conn = emu.connections[0]
        await conn.wait_closed(5)
    after = time.monotonic()
    records = _records(buf.getvalue())
    assert {r["conn"] for r in records} == {conn.id}
    assert all(before <= r["t"] <= after for r in records)
    assert [r["t"] for r in records] == sorted(r["t"] for r in records)
    kinds = [r["ev"] for r in records]
    assert kinds[:2] == ["session", "start"]
    assert records[0]["update"] == {"model": MODEL, "language": "tag-7"}
    assert records[1]["gen"] == 0
    texts = [r["text"] for r in records if r["ev"] == "delta"]
    assert texts == [d for d in deltas if d]  # only the deltas with text
    assert "".join(texts) == speech.text
    assert kinds[-2:] == ["done", "close"]
    assert records[-1]["reason"] == "client_closed"


async def test_send_log_to_a_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sends.jsonl"
    async with VLLMRealtimeEmulator(fast=True, send_log=path) as emu:
        client = await open_client(emu)
        await client.ws.close()
        await emu.connections[0].wait_closed(5)
        await emu.restart()
        client = await open_client(emu)
        await client.send("not json")
        await client.recv()
        await client.ws.close()
        await emu.connections[1].wait_closed(5)
    records = _records(path.read_text())
    assert [r["ev"] for r in records if r["conn"] == emu.connections[0].id] == [
        "session",
        "close",
    ]
    second = [r for r in records if r["conn"] == emu.connections[1].id]
    assert [r["ev"] for r in second] == ["session", "error", "close"]
    assert second[1]["code"] == "invalid_json"
