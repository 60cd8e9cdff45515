"""compose.yml, .env.example and examples/Dockerfile, checked structurally.

No Docker engine is needed (or available in CI): the file is parsed with PyYAML and
``${VAR:-default}`` references are resolved with their defaults, as ``docker compose config``
would with an empty environment.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from ..fake_livekit import REPO_ROOT, load_example

COMPOSE = REPO_ROOT / "compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "examples" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "examples" / "Dockerfile.dockerignore"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def resolve(value: Any, env: dict[str, str] | None = None) -> Any:
    """Interpolate like compose: ``${X}``, ``${X:-default}``, ``${X-default}``."""
    env = env or {}
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, op, default = m["name"], m["op"], m["default"] or ""
            if name in env and (env[name] != "" or op in (None, "-", "?")):
                return env[name]
            return default if op in (":-", "-") else ""

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    return value


def seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def flag(command: list[str], name: str) -> str:
    index = command.index(name)
    return command[index + 1]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    resolved = resolve(raw)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {"vllm", "lb", "livekit", "transcriber", "vllm-2", "vllm-3", "vllm-4"}
    # `docker compose up` (no profile): one vLLM, HAProxy, LiveKit and the transcriber; the
    # other replicas belong to the scale profiles (tests/examples/test_scale_profile.py)
    default = {name for name, svc in services.items() if not svc.get("profiles")}
    assert default == {"vllm", "lb", "livekit", "transcriber"}


class TestVLLM:
    def test_image_is_pinned_to_a_release_with_realtime_support(
        self, services: dict[str, Any]
    ) -> None:
        image = services["vllm"]["image"]
        repo, _, tag = image.partition(":")
        assert repo == "vllm/vllm-openai"
        match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
        assert match, f"pin a release tag, not {tag!r}"
        assert tuple(int(x) for x in match.groups()) >= (0, 33, 0)

    def test_serves_voxtral_realtime_with_mistral_formats(self, services: dict[str, Any]) -> None:
        command = services["vllm"]["command"]
        assert command[0] == "mistralai/Voxtral-Mini-4B-Realtime-2602"
        assert flag(command, "--tokenizer-mode") == "mistral"
        assert flag(command, "--config-format") == "mistral"
        assert flag(command, "--load-format") == "mistral"
        assert flag(command, "--host") == "0.0.0.0"

    def test_max_model_len_comes_from_a_variable(self, raw: dict[str, Any]) -> None:
        command = raw["services"]["vllm"]["command"]
        value = flag(command, "--max-model-len")
        assert value.startswith("${VLLM_MAX_MODEL_LEN:-")
        assert 1024 <= int(resolve(value)) <= 32768
        assert int(resolve(value, {"VLLM_MAX_MODEL_LEN": "2048"})) == 2048

    def test_piecewise_cuda_graphs_and_no_compile_cache(self, services: dict[str, Any]) -> None:
        vllm = services["vllm"]
        compilation = json.loads(flag(vllm["command"], "--compilation-config"))
        assert compilation == {"cudagraph_mode": "PIECEWISE"}
        assert vllm["environment"]["VLLM_DISABLE_COMPILE_CACHE"] == "1"
        assert "--kv-cache-dtype" not in vllm["command"]  # fp8 KV needs flashinfer; no

    def test_hugging_face_token_and_cache(
        self, raw: dict[str, Any], compose: dict[str, Any]
    ) -> None:
        vllm = raw["services"]["vllm"]
        assert vllm["environment"]["HF_TOKEN"].startswith("${HF_TOKEN")
        [cache] = [v for v in compose["services"]["vllm"]["volumes"] if "huggingface" in v]
        source, target = cache.split(":")
        assert target == "/root/.cache/huggingface"
        assert source in compose["volumes"]  # a declared named volume by default

    def test_gpu_reservation(self, services: dict[str, Any]) -> None:
        [device] = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        assert device.get("device_ids") or device.get("count")

    def test_health_check_on_health_with_a_long_start_period(
        self, services: dict[str, Any]
    ) -> None:
        check = services["vllm"]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert "http://127.0.0.1:8000/health" in " ".join(check["test"])
        assert flag(services["vllm"]["command"], "--port") == "8000"
        assert seconds(check["start_period"]) >= 15 * 60
        assert seconds(check["interval"]) <= 60

    def test_published_on_loopback_only(self, services: dict[str, Any]) -> None:
        assert all(p.startswith("127.0.0.1:") for p in services["vllm"]["ports"])


class TestLiveKit:
    def test_dev_server_bound_to_all_interfaces(self, services: dict[str, Any]) -> None:
        livekit = services["livekit"]
        assert livekit["image"].startswith("livekit/livekit-server")
        command = livekit["command"]
        assert "--dev" in command
        assert flag(command, "--bind") == "0.0.0.0"

    def test_ports(self, services: dict[str, Any]) -> None:
        ports = services["livekit"]["ports"]
        assert "7880:7880" in ports and "7881:7881" in ports
        [udp] = [p for p in ports if p.endswith("/udp")]
        host, container = udp.removesuffix("/udp").split(":")
        assert host == container == services["livekit"]["environment"]["UDP_PORT"] == "7882"

    def test_udp_range_keeps_server_and_mapping_in_step(self, raw: dict[str, Any]) -> None:
        env = {"LIVEKIT_UDP_PORTS": "50000-50100"}
        livekit = resolve(raw["services"]["livekit"], env)
        assert "50000-50100:50000-50100/udp" in livekit["ports"]
        assert livekit["environment"]["UDP_PORT"] == "50000-50100"


class TestTranscriber:
    def test_built_from_the_example_dockerfile(self, services: dict[str, Any]) -> None:
        build = services["transcriber"]["build"]
        assert build["context"] == "."
        assert (REPO_ROOT / build["context"] / build["dockerfile"]) == DOCKERFILE
        assert DOCKERFILE.is_file()

    def test_waits_for_healthy_vllm_and_started_livekit(self, services: dict[str, Any]) -> None:
        depends = services["transcriber"]["depends_on"]
        assert depends["vllm"]["condition"] == "service_healthy"
        assert depends["lb"]["condition"] == "service_started"
        assert depends["livekit"]["condition"] == "service_started"

    def test_points_at_haproxy_and_the_livekit_service(self, services: dict[str, Any]) -> None:
        env = services["transcriber"]["environment"]
        # HAProxy's frontend (deploy/haproxy.cfg: bind :8000) in front of the vLLM replicas
        assert env["VOXTRAL_VLLM_BASE_URL"] == "ws://lb:8000/v1/realtime"
        assert env["LIVEKIT_URL"] == "ws://livekit:7880"
        assert env["VOXTRAL_VLLM_MODEL"] == services["vllm"]["command"][0]

    @pytest.mark.parametrize(
        "env", [{}, {"LIVEKIT_API_KEY": "prodkey", "LIVEKIT_API_SECRET": "a-long-secret"}]
    )
    def test_credentials_match_the_livekit_server(
        self, raw: dict[str, Any], env: dict[str, str]
    ) -> None:
        services = resolve(raw["services"], env)
        key, secret = services["livekit"]["environment"]["LIVEKIT_KEYS"].split(": ")
        transcriber = services["transcriber"]["environment"]
        assert (transcriber["LIVEKIT_API_KEY"], transcriber["LIVEKIT_API_SECRET"]) == (key, secret)
        if not env:
            assert (key, secret) == ("devkey", "secret")

    def test_api_key_shared_with_vllm(self, raw: dict[str, Any]) -> None:
        services = resolve(raw["services"], {"VOXTRAL_VLLM_API_KEY": "k-123"})
        assert services["vllm"]["environment"]["VLLM_API_KEY"] == "k-123"
        assert services["transcriber"]["environment"]["VOXTRAL_VLLM_API_KEY"] == "k-123"

    def test_environment_passes_the_examples_own_startup_check(
        self, services: dict[str, Any]
    ) -> None:
        example = load_example("multi_user_transcriber")
        env = services["transcriber"]["environment"]
        assert example.check_config(env) == []
        options = example.stt_options(env)
        assert options["base_url"] == "ws://lb:8000/v1/realtime"
        assert options["transcription_delay_ms"] == 480
        assert "language" not in options and "api_key" not in options

    def test_health_check_on_the_worker_port(self, services: dict[str, Any]) -> None:
        check = services["transcriber"]["healthcheck"]
        assert "http://127.0.0.1:8081/" in " ".join(check["test"])


class TestDocumentation:
    def _compose_variables(self) -> set[str]:
        return {m["name"] for m in _VAR.finditer(COMPOSE.read_text())}

    def _env_example(self) -> dict[str, str]:
        values = {}
        for line in ENV_EXAMPLE.read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                values[name] = value
        return values

    def test_every_variable_is_in_env_example_with_its_default(self, raw: dict[str, Any]) -> None:
        documented = self._env_example()
        assert self._compose_variables() == set(documented)
        text = COMPOSE.read_text()
        for m in _VAR.finditer(text):
            # .env.example shows the defaults, so copying it changes nothing
            assert (m["default"] or "") == documented[m["name"]], m["name"]

    def test_every_variable_is_commented_in_env_example(self) -> None:
        lines = ENV_EXAMPLE.read_text().splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith("#"):
                # the line above a setting is its comment (or another setting of a pair)
                above = lines[i - 1]
                assert above.startswith("#") or "=" in above, line

    def test_every_variable_is_listed_in_the_compose_header(self) -> None:
        header = "\n".join(
            line for line in COMPOSE.read_text().splitlines() if line.startswith("#")
        )
        for name in self._compose_variables():
            assert name in header, name


class TestDockerfile:
    def test_image_runs_the_transcriber_with_start(self) -> None:
        text = DOCKERFILE.read_text()
        assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
        [cmd] = re.findall(r"^CMD (.+)$", text, re.M)
        assert json.loads(cmd) == ["python", "multi_user_transcriber.py", "start"]
        assert "pip install ." in text

    def test_copied_sources_exist_and_survive_the_dockerignore(self) -> None:
        sources = []
        for line in DOCKERFILE.read_text().splitlines():
            if line.startswith("COPY "):
                sources += line.split()[1:-1]
        assert "examples/multi_user_transcriber.py" in sources
        kept = [
            line.removeprefix("!").rstrip("/")
            for line in DOCKERIGNORE.read_text().splitlines()
            if line.startswith("!")
        ]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source in kept, f"COPY {source}: excluded by {DOCKERIGNORE.name}"
