import logging

logger = logging.getLogger("livekit.plugins.voxtral_vllm")
