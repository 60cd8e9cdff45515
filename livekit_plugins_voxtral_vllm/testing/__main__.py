"""``python -m livekit_plugins_voxtral_vllm.testing serve``: run the vLLM realtime emulator.

It serves until Ctrl-C (or SIGTERM). It is NOT a speech recogniser: it transcribes only the
synthetic tone speech of ``testing.speech``; anything else comes out as empty deltas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from .lexicon import LANGUAGES
from .server import DEFAULT_MODEL, VLLMRealtimeEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m livekit_plugins_voxtral_vllm.testing",
        description="Emulator of vLLM's /v1/realtime serving Voxtral Realtime (no GPU needed).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the emulator until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--delay-ms", type=int, default=480, help="transcription_delay_ms")
    serve.add_argument("--max-model-len", type=int, default=131072)
    serve.add_argument(
        "--model", action="append", help=f"served model name (repeatable; {DEFAULT_MODEL})"
    )
    serve.add_argument("--api-key", action="append", help="require this bearer token")
    serve.add_argument("--fast", action="store_true", help="no compute time per step")
    serve.add_argument("--step-time-s", type=float, default=None, help="per-step compute time")
    serve.add_argument("--vllm-version", default="0.33.0", help="behaviour profile")
    serve.add_argument(
        "--output",
        choices=["tokens", "words"],
        default="tokens",
        help="tokens: one real Tekken token per step, like the model (needs the [emulator] "
        "extra); words: a whole word per delta",
    )
    serve.add_argument(
        "--language",
        choices=list(LANGUAGES),
        default="en",
        help="what the tone words stand for (synthesize(..., language=...))",
    )
    serve.add_argument(
        "--send-log",
        metavar="FILE",
        help="append send timestamps (JSON lines, time.monotonic()) for latency benchmarks",
    )
    serve.add_argument("--verbose", "-v", action="store_true")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    emulator = VLLMRealtimeEmulator(
        host=args.host,
        port=args.port,
        served_model_name=args.model or DEFAULT_MODEL,
        max_model_len=args.max_model_len,
        transcription_delay_ms=args.delay_ms,
        api_key=args.api_key,
        fast=args.fast,
        step_time_s=args.step_time_s,
        vllm_version=args.vllm_version,
        output=args.output,
        language=args.language,
        record_audio=False,
        record_messages=False,
        send_log=args.send_log,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with emulator:
        print(
            f"EMULATOR of vLLM {emulator.profile.version} /v1/realtime (not a real model; "
            "it transcribes only testing.speech tone audio)",
            flush=True,
        )
        print(f"listening on {emulator.url}  (HTTP: {emulator.http_url})", flush=True)
        await stop.wait()
        print("shutting down", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
