"""LiveKit Agents STT for Mistral's Voxtral Realtime served by a self-hosted vLLM.

Speaks vLLM's ``/v1/realtime`` WebSocket protocol and turns it into LiveKit speech events:
cumulative interim transcripts and exactly one final per caption segment.

    from livekit.plugins import voxtral_vllm
    stt = voxtral_vllm.STT(base_url="ws://gpu-host:8000/v1/realtime")

Captions for everyone in a room, one caption session per participant::

    captioner = voxtral_vllm.RoomCaptioner(ctx.room, stt_factory=voxtral_vllm.STT)
"""

from __future__ import annotations

import threading

from livekit.agents import Plugin

from .log import logger
from .room_captioner import RoomCaptioner
from .stt import STT, SpeechStream
from .version import __version__

__all__ = ["STT", "RoomCaptioner", "SpeechStream", "__version__"]


class VoxtralVLLMPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__ or __name__, logger)


# LiveKit requires registration on the main thread; an import from a worker thread (rare,
# e.g. some test runners) must not fail the import.
if threading.current_thread() is threading.main_thread():
    Plugin.register_plugin(VoxtralVLLMPlugin())
