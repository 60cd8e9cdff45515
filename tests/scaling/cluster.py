"""A real HAProxy in front of real emulator processes, all on 127.0.0.1.

``Replica`` is one ``python -m livekit_plugins_voxtral_vllm.testing serve --fast`` process (so
``kill -9`` and ``SIGSTOP`` are real), logging the generations it starts (``--send-log``).
``HAProxy`` runs the repository's ``deploy/haproxy.cfg`` with only the bind address, the
runtime API port and the server lines replaced (see the comment at the top of that file).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO_ROOT / "deploy" / "haproxy.cfg"


def need_haproxy() -> str:
    """The haproxy binary; skips when it is absent outside CI (in CI it must be there)."""
    path = shutil.which("haproxy")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed (.ci/run installs it with apt-get)")
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI runs these tests")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def thaw(self) -> None:
        if self.stopped:
            self.proc.send_signal(signal.SIGCONT)
            self.stopped = False

    def terminate(self) -> None:
        """Graceful stop: the send log is flushed."""
        if self.proc.poll() is None:
            self.thaw()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def starts(self) -> list[float]:
        """``time.monotonic()`` of every generation this replica started (after terminate)."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec["ev"] == "start":
                out.append(float(rec["t"]))
        return out


async def start_replicas(n: int, tmp: Path) -> list[Replica]:
    """``n`` emulator processes on 127.0.0.1, ready to serve."""
    procs = []
    for i in range(n):
        log = tmp / f"replica{i + 1}.jsonl"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "livekit_plugins_voxtral_vllm.testing",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--fast",
                "--send-log",
                str(log),
            ],
            stdout=subprocess.PIPE,
            stderr=(tmp / f"replica{i + 1}.err").open("w"),
            text=True,
        )
        procs.append((f"r{i + 1}", proc, log))
    replicas = []
    for name, proc, log in procs:
        port = await asyncio.to_thread(_read_port, proc, log.with_suffix(".err"))
        replicas.append(Replica(name, proc, port, log))
    return replicas


def _read_port(proc: subprocess.Popen[str], err: Path) -> int:
    assert proc.stdout is not None
    # loading the real tokenizer takes a few seconds, many more on a loaded machine
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
        if m:
            return int(m.group(1))
    proc.kill()
    raise RuntimeError(f"the emulator process did not start:\n{err.read_text()[-2000:]}")


def haproxy_config(replicas: list[Replica], port: int, api_port: int) -> str:
    """``deploy/haproxy.cfg`` for these replicas: everything but the addresses is kept."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"\n    bind :8000\n", f"\n    bind 127.0.0.1:{port}\n", text)
    text = text.replace("ipv4@127.0.0.1:9999", f"ipv4@127.0.0.1:{api_port}")
    text = re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", text)
    lines = re.findall(r"^    server .*\n", text, re.M)
    assert len(lines) >= 2, "deploy/haproxy.cfg lost its server lines"
    servers = "".join(f"    server {r.name} 127.0.0.1:{r.port}\n" for r in replicas)
    text = text.replace(lines[0], servers)
    for line in lines[1:]:
        text = text.replace(line, "")
    return text


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    port: int
    api_port: int
    backend: str = "vllm"
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def command(self, cmd: str) -> str:
        """One runtime API command (the 'stats socket')."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.api_port)
        try:
            writer.write(cmd.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()
            await writer.wait_closed()

    async def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend's servers, by server name."""
        text = await self.command("show stat")
        lines = text.strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == self.backend and row.get("svname") not in (
                "BACKEND",
                "FRONTEND",
            ):
                rows[row["svname"]] = row
        return rows

    async def wait_status(self, name: str, status: str, timeout: float = 10.0) -> float:
        """Wait until server ``name`` has ``status`` (UP, DOWN, DRAIN...); the time it took."""
        start = time.monotonic()
        while True:
            rows = await self.stats()
            if rows.get(name, {}).get("status", "").startswith(status):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{name} is {rows.get(name, {}).get('status')}, not {status}")
            await asyncio.sleep(0.05)

    async def current(self) -> dict[str, int]:
        """Open sessions per server."""
        return {name: int(row["scur"] or 0) for name, row in (await self.stats()).items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def start_haproxy(replicas: list[Replica], tmp: Path) -> HAProxy:
    binary = need_haproxy()
    port, api_port = free_port(), free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_config(replicas, port, api_port))
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lb = HAProxy(proc, port, api_port)
    deadline = time.monotonic() + 10
    while True:
        try:
            for r in replicas:
                await lb.wait_status(r.name, "UP", timeout=10)
            return lb
        except (OSError, AssertionError):
            if time.monotonic() > deadline or proc.poll() is not None:
                lb.stop()
                raise
            await asyncio.sleep(0.1)
