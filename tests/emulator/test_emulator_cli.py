"""``python -m livekit_plugins_voxtral_vllm.testing serve`` runs standalone until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from websockets.asyncio.client import connect

from livekit_plugins_voxtral_vllm.protocol import COMMIT, COMMIT_FINAL, encode_append_pcm
from livekit_plugins_voxtral_vllm.testing import synthesize
from livekit_plugins_voxtral_vllm.testing.server import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_until_ctrl_c() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livekit_plugins_voxtral_vllm.testing",
        "serve",
        "--port",
        str(port),
        "--fast",
        "--api-key",
        "k",
        "--max-model-len",
        "2048",
        "--vllm-version",
        "0.30.1",
        "--language",
        "fr",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "EMULATOR" in banner and "0.30.1" in banner
        url_line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
        assert f"ws://127.0.0.1:{port}/v1/realtime" in url_line
        headers = {"Authorization": "Bearer k"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/v1/models", headers=headers) as resp:
                assert (await resp.json())["data"][0]["max_model_len"] == 2048
        async with connect(f"ws://127.0.0.1:{port}/v1/realtime", additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            # --language fr, real tokens by default
            speech = synthesize("bonjour Zoë ?", language="fr")
            await ws.send(json.dumps({"type": "session.update", "model": DEFAULT_MODEL}))
            await ws.send(COMMIT)
            await ws.send(encode_append_pcm(speech.samples))
            await ws.send(COMMIT_FINAL)
            deltas: list[str] = []
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != (
                "transcription.done"
            ):
                deltas.append(event["delta"])
            assert event["text"] == " bonjour Zoë ?"
            assert [d for d in deltas if d] == [" bon", "jour", " Zo", "ë", " ?"]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
