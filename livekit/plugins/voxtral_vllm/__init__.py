"""`from livekit.plugins import voxtral_vllm`: the same package as livekit_plugins_voxtral_vllm."""

from livekit_plugins_voxtral_vllm import STT, RoomCaptioner, SpeechStream, __version__

__all__ = ["STT", "RoomCaptioner", "SpeechStream", "__version__"]
