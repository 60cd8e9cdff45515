"""An existing LiveKit voice agent, switched to Voxtral on a self-hosted vLLM.

Only the three lines marked ``# voxtral`` differ from a stock agent: import the plugin, build
the STT, hand it to the session. The rest (LLM, TTS, turn handling) is untouched; here the LLM
and TTS are LiveKit Inference models, which need LiveKit Cloud credentials - swap in any other
plugin.

    export LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export VOXTRAL_VLLM_BASE_URL=ws://gpu-host:8000/v1/realtime   # read by voxtral_vllm.STT()
    python examples/minimal_agent.py dev

``voxtral_vllm.STT()`` reads ``VOXTRAL_VLLM_BASE_URL``, ``VOXTRAL_VLLM_MODEL`` and
``VOXTRAL_VLLM_API_KEY``; pass ``base_url=...`` etc. to override them. For live captions of
every participant rather than a conversation with one, see ``multi_user_transcriber.py``.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli
from livekit.plugins import voxtral_vllm  # voxtral

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    stt = voxtral_vllm.STT()  # voxtral
    session: AgentSession[None] = AgentSession(
        stt=stt,  # voxtral
        llm="openai/gpt-4.1-mini",
        tts="cartesia/sonic-3",
    )
    await session.start(
        Agent(instructions="You are a concise, friendly voice assistant."),
        room=ctx.room,
    )


if __name__ == "__main__":
    cli.run_app(server)
