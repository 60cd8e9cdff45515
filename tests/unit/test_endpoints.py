"""``endpoints.py``: parsing an endpoint list, and the pool's choice, cooldown and probe rules."""

from __future__ import annotations

import random

import pytest

from livekit_plugins_voxtral_vllm.endpoints import (
    Choice,
    EndpointPool,
    EndpointState,
    ModelRefusals,
    parse_endpoints,
)

A = "ws://gpu-1:8000/v1/realtime"
B = "ws://gpu-2:8000/v1/realtime"
C = "ws://gpu-3:8000/v1/realtime"


class TestParse:
    def test_one_url_is_normalised(self) -> None:
        assert parse_endpoints("gpu-1:8000") == (A,)

    def test_a_list_keeps_its_order(self) -> None:
        assert parse_endpoints(["http://gpu-2:8000", "gpu-1:8000/v1"]) == (B, A)

    def test_a_comma_separated_string_as_in_the_env_var(self) -> None:
        assert parse_endpoints(" ws://gpu-1:8000 , ws://gpu-2:8000/v1/realtime ") == (A, B)

    def test_empty_list(self) -> None:
        with pytest.raises(ValueError, match="empty list"):
            parse_endpoints([])

    @pytest.mark.parametrize("value", ["ws://gpu-1:8000,", "ws://gpu-1:8000,,ws://gpu-2:8000"])
    def test_empty_entry_is_named(self, value: str) -> None:
        with pytest.raises(ValueError, match=r"base_url entry \d \(''\) is empty"):
            parse_endpoints(value)

    def test_duplicate_after_normalisation_names_both(self) -> None:
        with pytest.raises(ValueError, match=r"entry 2 \('http://gpu-1:8000'\).*entry 1"):
            parse_endpoints(["gpu-1:8000", "http://gpu-1:8000"])

    def test_malformed_entry_is_named(self) -> None:
        with pytest.raises(ValueError, match=r"entry 2 \('ftp://gpu-2'\).*unexpected scheme"):
            parse_endpoints([A, "ftp://gpu-2"])

    def test_bad_port_is_named(self) -> None:
        with pytest.raises(ValueError, match=r"entry 1 \('gpu-1:99999'\).*invalid port"):
            parse_endpoints(["gpu-1:99999", B])

    def test_mixed_schemes(self) -> None:
        with pytest.raises(ValueError, match=r"entry 2 \('https://gpu-2'\) uses wss://.*ws://"):
            parse_endpoints([A, "https://gpu-2"])

    def test_single_bad_url_keeps_the_plain_message(self) -> None:
        with pytest.raises(ValueError, match="^base_url has an unexpected scheme"):
            parse_endpoints("ftp://gpu-1")

    def test_not_a_string(self) -> None:
        with pytest.raises(ValueError, match=r"entry 2 \(8000\) is not a string"):
            parse_endpoints([A, 8000])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="got int"):
            parse_endpoints(8000)  # type: ignore[arg-type]


def pool(*urls: str, seed: int = 1) -> EndpointPool:
    return EndpointPool(
        urls or (A, B, C), cooldown_s=5.0, max_cooldown_s=60.0, rng=random.Random(seed)
    )


class TestChoose:
    def test_random_among_healthy(self) -> None:
        seen = {pool(seed=s).choose(0.0) for s in range(30)}
        assert seen == {Choice(A), Choice(B), Choice(C)}

    def test_prefer_keeps_a_stream_on_its_endpoint(self) -> None:
        p = pool()
        assert all(p.choose(float(t), prefer=B) == Choice(B) for t in range(10))

    def test_a_failed_endpoint_is_skipped_during_its_cooldown(self) -> None:
        p = pool()
        p.failed(B, 0.0, "refused")
        assert p.state(B, 1.0) is EndpointState.COOLING
        assert {p.choose(1.0, prefer=B).url for _ in range(20)} <= {A, C}  # type: ignore[union-attr]

    def test_skip(self) -> None:
        p = pool()
        assert p.choose(0.0, skip={A, C}) == Choice(B)
        assert p.choose(0.0, skip={A, B, C}) is None

    def test_after_its_cooldown_it_is_probed_before_reuse(self) -> None:
        p = pool(A, B)
        p.failed(A, 0.0, "drop")
        p.failed(B, 1.0, "drop")
        # both cooling: the connect itself probes the one whose cooldown ends first
        assert p.choose(2.0) == Choice(A, probe=False)
        # A's cooldown is over: it must answer /health first
        assert p.state(A, 5.0) is EndpointState.SUSPECT
        assert p.choose(5.0) == Choice(A, probe=True)
        p.succeeded(A, 5.1)
        assert p.state(A, 5.1) is EndpointState.HEALTHY
        assert p.choose(5.2, prefer=B) == Choice(A)

    def test_the_suspect_that_failed_longest_ago_first(self) -> None:
        p = pool()
        p.failed(C, 0.0, "x")
        p.failed(A, 1.0, "x")
        p.failed(B, 2.0, "x")
        assert p.choose(10.0) == Choice(C, probe=True)

    def test_cooldown_doubles_with_failures_in_a_row_up_to_the_cap(self) -> None:
        p = pool(A, B)
        p.failed(A, 0.0, "x")
        assert p.state(A, 4.9) is EndpointState.COOLING
        assert p.state(A, 5.0) is EndpointState.SUSPECT
        p.failed(A, 5.0, "probe failed")
        assert p.state(A, 14.9) is EndpointState.COOLING
        assert p.state(A, 15.0) is EndpointState.SUSPECT
        for _ in range(10):
            p.failed(A, 100.0, "x")
        assert p.state(A, 159.9) is EndpointState.COOLING
        assert p.state(A, 160.0) is EndpointState.SUSPECT
        p.succeeded(A, 160.0)
        p.failed(A, 200.0, "x")
        assert p.state(A, 205.0) is EndpointState.SUSPECT  # the count started over

    def test_unknown_urls_are_ignored(self) -> None:
        p = pool()
        p.failed("ws://elsewhere/v1/realtime", 0.0, "x")
        p.succeeded("ws://elsewhere/v1/realtime", 0.0)
        assert all(p.state(u, 0.0) is EndpointState.HEALTHY for u in (A, B, C))

    def test_bad_construction(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            EndpointPool([])
        with pytest.raises(ValueError, match="duplicate"):
            EndpointPool([A, A])
        with pytest.raises(ValueError, match="cooldown_s"):
            EndpointPool([A], cooldown_s=0)


# -- ModelRefusals: replicas that do not serve the model -----------------------------------------


def test_a_refusal_keeps_the_endpoint_out_for_a_doubling_cooldown() -> None:

    r = ModelRefusals(cooldown_s=5.0, max_cooldown_s=12.0)
    assert r.refused("a", 0.0) == 5.0 and r.strikes("a") == 1
    assert r.expired(4.9) == []
    assert r.expired(5.0) == ["a"] and r.expired(6.0) == []  # once
    assert r.refused("a", 6.0) == 10.0 and r.refused("a", 20.0) == 12.0  # capped
    assert r.expired(31.9) == [] and r.expired(32.0) == ["a"]
    r.served("a")
    assert r.strikes("a") == 0 and r.refused("a", 40.0) == 5.0
