"""Live captions for every participant of a LiveKit room, transcribed by Voxtral on vLLM.

A worker around ``voxtral_vllm.RoomCaptioner``, which runs one STT-only ``AgentSession`` per
participant publishing a microphone; captions go out as ``lk.transcription`` text streams that
LiveKit's frontend components (``useTranscriptions``) render, updated in place.

    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    export VOXTRAL_VLLM_BASE_URL=ws://127.0.0.1:8000/v1/realtime
    python examples/multi_user_transcriber.py start    # or dev; add --emulator for no GPU

``--emulator`` serves the package's vLLM emulator from the worker itself, to check the wiring
without a GPU: it transcribes only synthetic test speech, so people talking get no captions.

Environment (checked at start; a bad value is named and the worker exits with status 2):
``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET`` (required; ``--url`` etc. also
work), ``LIVEKIT_AGENT_NAME`` (explicit dispatch), ``VOXTRAL_VLLM_BASE_URL``,
``VOXTRAL_VLLM_MODEL``, ``VOXTRAL_VLLM_API_KEY``, ``VOXTRAL_LANGUAGE``,
``VOXTRAL_TRANSCRIPTION_DELAY_MS`` (480), ``VOXTRAL_VAD`` (``none`` or ``silero``) and
``MAX_PARTICIPANTS`` (50 captioned at once per room; later arrivals wait). The README's
"The transcriber example" section describes each.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobProcess, cli
from livekit.plugins import silero, voxtral_vllm  # a dependency of the plugin (its endpointer)

logger = logging.getLogger("voxtral-transcriber")

STT_ENV = {  # environment variable -> voxtral_vllm.STT argument
    "VOXTRAL_VLLM_BASE_URL": "base_url",
    "VOXTRAL_VLLM_MODEL": "model",
    "VOXTRAL_VLLM_API_KEY": "api_key",
    "VOXTRAL_LANGUAGE": "language",
    "VOXTRAL_TRANSCRIPTION_DELAY_MS": "transcription_delay_ms",
}
LIVEKIT_ENV = {  # and the flag of LiveKit's CLI that stands in for it
    "LIVEKIT_URL": "--url",
    "LIVEKIT_API_KEY": "--api-key",
    "LIVEKIT_API_SECRET": "--api-secret",
}


def setting(environ: Mapping[str, str], name: str, default: str = "") -> str:
    return environ.get(name, "").strip() or default


def stt_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """``voxtral_vllm.STT`` arguments from the ``VOXTRAL_*`` variables that are set."""
    options: dict[str, Any] = {arg: setting(environ, n) for n, arg in STT_ENV.items()}
    delay = options["transcription_delay_ms"]
    options["transcription_delay_ms"] = int(delay) if delay.isdigit() else delay or 480
    return {arg: value for arg, value in options.items() if value != ""}


def check_config(environ: Mapping[str, str], argv: Sequence[str] = ()) -> list[str]:
    """Every problem with the configuration, each naming its variable; [] when it is valid."""
    flags = {a.split("=")[0] for a in argv}
    problems = [
        f"{name} is not set"
        for name, flag in LIVEKIT_ENV.items()
        if not setting(environ, name) and flag not in flags
    ]
    url = urlsplit(setting(environ, "LIVEKIT_URL", "ws://-"))
    if url.scheme not in ("ws", "wss", "http", "https") or not url.hostname:
        problems.append(f"LIVEKIT_URL={url.geturl()!r} is not a URL such as ws://127.0.0.1:7880")
    neutral = {"base_url": "ws://127.0.0.1", "model": "m", "api_key": ""}
    for name in STT_ENV:  # the STT checks each value; one at a time, to name each variable
        if raw := setting(environ, name):
            try:
                voxtral_vllm.STT(**{**neutral, **stt_options({name: raw})})
            except ValueError as e:
                problems.append(f"{name}={raw!r}: {e}")
    vad = setting(environ, "VOXTRAL_VAD", "none").lower()
    if vad not in ("none", "silero"):
        problems.append(f"VOXTRAL_VAD={vad!r}: 'none' or 'silero'")
    cap = setting(environ, "MAX_PARTICIPANTS", "50")
    if not cap.isdigit() or int(cap) < 1:
        problems.append(f"MAX_PARTICIPANTS={cap!r} must be a whole number, at least 1")
    return problems


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process: loads the VAD that every participant's STT shares."""
    use_silero = setting(os.environ, "VOXTRAL_VAD").lower() == "silero"
    proc.userdata["vad"] = silero.VAD.load() if use_silero else None


server = AgentServer(setup_fnc=prewarm)


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    options = {**stt_options(os.environ), "vad": ctx.proc.userdata.get("vad")}
    captioner = voxtral_vllm.RoomCaptioner(
        ctx.room,
        stt_factory=lambda: voxtral_vllm.STT(**options),  # one STT per participant
        max_participants=int(setting(os.environ, "MAX_PARTICIPANTS", "50")),
    )
    ctx.add_shutdown_callback(captioner.aclose)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    captioner.start()
    logger.info("captioning room %r, up to %d at once", ctx.room.name, captioner.max_participants)


def main(argv: Sequence[str] | None = None) -> None:
    """Check the configuration, then hand over to LiveKit's CLI (``start``, ``dev``, ...)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--emulator" in args:
        from livekit_plugins_voxtral_vllm.testing import BackgroundEmulator

        args.remove("--emulator")
        sys.argv = [sys.argv[0], *args]  # LiveKit's CLI parses sys.argv and knows no such flag
        # job processes inherit the environment: the emulator's URL, and the energy endpointer
        # (the emulator's tone speech is not speech to the default Silero endpointer)
        os.environ["VOXTRAL_VLLM_BASE_URL"] = BackgroundEmulator().start()
        os.environ.setdefault("VOXTRAL_VLLM_ENDPOINTER", "energy")
        logger.warning("using the vLLM emulator: it transcribes only synthetic test speech")
    command = next((a for a in args if not a.startswith("-")), None)
    if command in ("start", "dev", "connect") and not {"-h", "--help"} & set(args):
        if problems := check_config(os.environ, args):
            message = "\n  - ".join(["invalid configuration:", *problems])
            print(f"multi_user_transcriber: {message}", file=sys.stderr)
            raise SystemExit(2)
    cli.run_app(server)


if __name__ == "__main__":
    main()
