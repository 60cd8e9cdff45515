"""The public surface: what users import, and how LiveKit finds the plugin."""

from __future__ import annotations

import importlib
import pkgutil

from livekit.agents import Plugin

import livekit_plugins_voxtral_vllm


def test_all_is_pinned() -> None:
    assert sorted(livekit_plugins_voxtral_vllm.__all__) == [
        "RoomCaptioner",
        "STT",
        "SpeechStream",
        "__version__",
    ]


def test_livekit_plugins_alias_is_the_same_package() -> None:
    from livekit.plugins import voxtral_vllm

    assert voxtral_vllm.STT is livekit_plugins_voxtral_vllm.STT
    assert voxtral_vllm.SpeechStream is livekit_plugins_voxtral_vllm.SpeechStream
    assert voxtral_vllm.RoomCaptioner is livekit_plugins_voxtral_vllm.RoomCaptioner
    assert voxtral_vllm.__version__ == livekit_plugins_voxtral_vllm.__version__


def test_discoverable_under_the_livekit_plugins_namespace() -> None:
    """`python -m livekit.agents download-files` imports every livekit.plugins package."""
    plugins = importlib.import_module("livekit.plugins")
    assert "voxtral_vllm" in {m.name for m in pkgutil.iter_modules(plugins.__path__)}


def test_registered_once_with_livekit() -> None:
    mine = [p for p in Plugin.registered_plugins if p.package == "livekit_plugins_voxtral_vllm"]
    assert len(mine) == 1
    assert mine[0].version == livekit_plugins_voxtral_vllm.__version__
