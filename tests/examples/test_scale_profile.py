"""The scaled deployment: compose.yml's vLLM replicas (profiles ``scale`` and ``scale4``) behind
the ``lb`` service (HAProxy with ``deploy/haproxy.cfg``), checked structurally.

``docker compose config`` cannot run here: the Docker CLI on this machine and in CI has no
Compose v2 plugin, and Debian's docker-compose 1.29 rejects the top-level ``name:`` of Compose
v2 files. The file is parsed with PyYAML instead (see ``test_compose.py``), and the HAProxy
config is checked by ``haproxy -c`` and run for real in ``tests/scaling/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..fake_livekit import REPO_ROOT, load_example
from .test_compose import COMPOSE, flag, resolve

HAPROXY_CFG = REPO_ROOT / "deploy" / "haproxy.cfg"
API_SCRIPT = REPO_ROOT / "deploy" / "haproxy-api.sh"
REPLICAS = ["vllm", "vllm-2", "vllm-3", "vllm-4"]


def active(services: dict[str, Any], *profiles: str) -> set[str]:
    """The services ``docker compose --profile ... up`` starts."""
    return {
        name
        for name, svc in services.items()
        if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
    }


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, Any]:
    resolved = resolve(raw)
    assert isinstance(resolved, dict)
    return resolved["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cfg() -> str:
    return HAPROXY_CFG.read_text()


def directives(cfg: str, section: str) -> list[str]:
    """The lines of one section (``backend vllm``), comments dropped."""
    out: list[str] = []
    inside = False
    for line in cfg.splitlines():
        if line and not line.startswith((" ", "#")):
            inside = line.strip() == section
            continue
        stripped = line.split("#", 1)[0].strip()
        if inside and stripped:
            out.append(stripped)
    return out


class TestProfiles:
    def test_scale_runs_two_replicas_scale4_four(self, services: dict[str, Any]) -> None:
        replicas = set(REPLICAS)
        assert active(services) & replicas == {"vllm"}
        assert active(services, "scale") & replicas == {"vllm", "vllm-2"}
        assert active(services, "scale4") & replicas == replicas
        for profiles in ((), ("scale",), ("scale4",)):
            assert {"lb", "livekit", "transcriber"} <= active(services, *profiles)

    def test_replicas_are_the_same_server(self, services: dict[str, Any]) -> None:
        first = services["vllm"]
        for name in REPLICAS[1:]:
            replica = services[name]
            for key in ("image", "command", "environment", "volumes", "healthcheck", "ipc"):
                assert replica[key] == first[key], (name, key)

    def test_one_distinct_gpu_each(self, services: dict[str, Any], raw: dict[str, Any]) -> None:
        gpus = []
        for name in REPLICAS:
            [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
            assert "count" not in device  # a count means GPUs 0..n-1 for every replica
            [gpu] = device["device_ids"]
            gpus.append(gpu)
        assert gpus == ["0", "1", "2", "3"]
        # each from its own variable
        env = {"VLLM_GPU_DEVICE": "4", "VLLM_GPU_DEVICE_2": "5"}
        moved = resolve(raw["services"], env)
        assert moved["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [
            "4"
        ]
        assert moved["vllm-2"]["deploy"]["resources"]["reservations"]["devices"][0][
            "device_ids"
        ] == ["5"]

    def test_only_the_first_replica_is_published(self, services: dict[str, Any]) -> None:
        assert services["vllm"]["ports"]
        assert all("ports" not in services[name] for name in REPLICAS[1:])
        assert "ports" not in services["lb"]  # the transcriber reaches it on the network


class TestLoadBalancer:
    def test_runs_the_repository_config_and_api_script(self, services: dict[str, Any]) -> None:
        lb = services["lb"]
        assert lb["image"].startswith("haproxy:2.")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in lb["volumes"]}
        assert (REPO_ROOT / mounts["/usr/local/etc/haproxy/haproxy.cfg"]) == HAPROXY_CFG
        assert (REPO_ROOT / mounts["/usr/local/bin/haproxy-api"]) == API_SCRIPT
        assert os.access(API_SCRIPT, os.X_OK)

    def test_a_server_line_per_replica_service(self, cfg: str, services: dict[str, Any]) -> None:
        servers = [d for d in directives(cfg, "backend vllm") if d.startswith("server ")]
        hosts = [s.split()[2] for s in servers]
        assert hosts == [f"{name}:{flag(services[name]['command'], '--port')}" for name in REPLICAS]
        for line in servers:
            # a replica that is not running must not stop HAProxy from starting
            assert "resolvers docker" in line and "init-addr last,libc,none" in line

    def test_transcriber_goes_through_the_frontend(
        self, cfg: str, services: dict[str, Any]
    ) -> None:
        [bind] = [d for d in directives(cfg, "frontend realtime") if d.startswith("bind ")]
        port = bind.split(":")[-1]
        url = services["transcriber"]["environment"]["VOXTRAL_VLLM_BASE_URL"]
        assert url == f"ws://lb:{port}/v1/realtime"

    def test_backend_settings(self, cfg: str) -> None:
        backend = directives(cfg, "backend vllm")
        assert "balance leastconn" in backend
        assert "option httpchk GET /health" in backend
        assert "http-check expect status 200" in backend
        [default] = [d for d in backend if d.startswith("default-server ")]
        words = default.split()
        assert "check" in words
        assert words[words.index("on-marked-down") + 1] == "shutdown-sessions"
        assert int(words[words.index("maxconn") + 1]) > 0
        assert int(words[words.index("fall") + 1]) * _seconds(words[words.index("inter") + 1]) <= 3

    def test_timeouts(self, cfg: str) -> None:
        defaults = dict(
            d.split(None, 2)[1:] for d in directives(cfg, "defaults") if d.startswith("timeout ")
        )
        # a WebSocket is a tunnel after the upgrade: both ends ping every 20 s
        assert 20 < _seconds(defaults["tunnel"]) <= 3600
        assert _seconds(defaults["connect"]) <= 5
        assert _seconds(defaults["check"]) <= 2
        assert "option redispatch 1" in directives(cfg, "defaults")

    def test_runtime_api_is_admin_on_loopback_only(self, cfg: str) -> None:
        [sock] = [d for d in directives(cfg, "global") if d.startswith("stats socket")]
        assert "ipv4@127.0.0.1:" in sock and "level admin" in sock

    def test_haproxy_accepts_the_config(self, cfg: str, tmp_path: Path) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("haproxy is not installed (.ci/run installs it)")
            pytest.skip("haproxy is not installed (apt-get install haproxy)")
        # (-c binds nothing; outside Docker the service names do not resolve, which
        # init-addr none turns into disabled servers, not errors)
        path = tmp_path / "haproxy.cfg"
        path.write_text(cfg)
        check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value)
    assert m, value
    return float(m[1]) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1e-3}[m[2]]


class TestExampleTakesSeveralReplicas:
    LIVEKIT = {"LIVEKIT_URL": "ws://lk:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}

    def test_comma_separated_replicas(self) -> None:
        example = load_example("multi_user_transcriber")
        env = {**self.LIVEKIT, "VOXTRAL_VLLM_BASE_URL": "ws://gpu-1:8000,ws://gpu-2:8000"}
        assert example.check_config(env) == []
        engine = example.voxtral_vllm.STT(**example.stt_options(env))
        assert engine.endpoints == ("ws://gpu-1:8000/v1/realtime", "ws://gpu-2:8000/v1/realtime")

    def test_a_bad_entry_is_named(self) -> None:
        example = load_example("multi_user_transcriber")
        env = {**self.LIVEKIT, "VOXTRAL_VLLM_BASE_URL": "ws://gpu-1:8000,ftp://gpu-2"}
        [problem] = example.check_config(env)
        assert problem.startswith("VOXTRAL_VLLM_BASE_URL=") and "entry 2 ('ftp://gpu-2')" in problem
