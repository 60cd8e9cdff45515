"""The options of :class:`~.stt.STT`: defaults from the environment, validation, and the record.

:func:`resolve_options` takes ``STT``'s constructor arguments, fills what was not given from
the environment (``VOXTRAL_VLLM_BASE_URL``, ``VOXTRAL_VLLM_MODEL``, ``VOXTRAL_VLLM_API_KEY``,
``VOXTRAL_VLLM_ENDPOINTER``) or the defaults, and refuses a bad value with a message that
names it and says what to do. What it returns, :class:`STTOptions`, is frozen: every stream
copies it (with its own language) and ``update_options`` replaces it whole. Its ``repr``
never shows the API key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from livekit.agents import vad as lk_vad

from .connection import min_max_model_len, prompt_tokens
from .endpointer import EndpointerOptions
from .endpoints import parse_endpoints
from .generation_cap import GenerationCap
from .rut import RutOptions, blank_rut_options
from .segmenter import SegmenterOptions
from .stream_core import LagPolicy
from .vad_endpointer import VadEndpointerOptions

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "ENV_KEY",
    "ENV_MODEL",
    "ENV_URL",
    "STTOptions",
    "SocketMode",
    "resolve_options",
]

DEFAULT_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_BASE_URL = "ws://127.0.0.1:8000/v1/realtime"
ENV_URL = "VOXTRAL_VLLM_BASE_URL"
ENV_MODEL = "VOXTRAL_VLLM_MODEL"
ENV_KEY = "VOXTRAL_VLLM_API_KEY"
ENV_ENDPOINTER = "VOXTRAL_VLLM_ENDPOINTER"
_ENDPOINTERS = ("silero", "energy")
SocketMode = Literal["warm", "per_utterance"]


@dataclass(frozen=True)
class STTOptions:
    """What an ``STT`` and its streams were configured with, validated."""

    base_url: str
    endpoints: tuple[str, ...]
    model: str
    api_key: str | None
    language: str
    transcription_delay_ms: int
    max_model_len: int | None
    generation_cap: GenerationCap | None
    endpointer: EndpointerOptions | VadEndpointerOptions
    segmenter: SegmenterOptions
    preroll_ms: int
    max_lag_s: float
    lag_policy: LagPolicy
    input_stall_s: float
    generation_timeout_s: float
    max_outage_s: float
    discover_server: bool
    socket_mode: SocketMode
    endpoint_cooldown_s: float
    rut: RutOptions | None

    def __repr__(self) -> str:  # never show the API key
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["api_key"] = "***" if self.api_key else None
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def resolve_options(
    *,
    base_url: str | Sequence[str] | None,
    model: str | None,
    api_key: str | None,
    language: str | None,
    transcription_delay_ms: int,
    vad: lk_vad.VAD | None,
    endpointer: str | None,
    min_speech_ms: int | None,
    min_silence_ms: int | None,
    preroll_ms: int,
    sentence_pause_s: float,
    max_pause_s: float,
    max_segment_s: float,
    max_model_len: int | None,
    max_generation_s: float | None,
    max_lag_s: float,
    lag_policy: LagPolicy | str,
    input_stall_s: float,
    generation_timeout_s: float,
    max_outage_s: float,
    discover_server: bool,
    socket_mode: SocketMode,
    endpoint_cooldown_s: float,
    blank_rut_s: float | None,
) -> STTOptions:
    """``STT``'s arguments (see its docstring), completed from the environment and validated.

    Raises:
        ValueError: a bad value, named in the message with what to use instead.
        TypeError: ``vad`` is not a LiveKit VAD.
    """
    url: str | Sequence[str] = (
        base_url if base_url is not None else os.environ.get(ENV_URL) or DEFAULT_BASE_URL
    )
    endpoints = parse_endpoints(url)
    model_name = model if model is not None else os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    key = api_key if api_key is not None else os.environ.get(ENV_KEY) or None
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model must be a non-empty string, got {model_name!r}")
    _check_int("transcription_delay_ms", transcription_delay_ms, 80, 2400)
    if transcription_delay_ms % 80 or 1200 < transcription_delay_ms < 2400:
        raise ValueError(
            "transcription_delay_ms must be what the server's tekken.json says: a multiple "
            f"of 80 in 80..1200, or 2400; got {transcription_delay_ms}"
        )
    _check_int("preroll_ms", preroll_ms, 0, 2000)
    if max_model_len is not None:
        _check_int("max_model_len", max_model_len, 64, 10_000_000)
        least = min_max_model_len(transcription_delay_ms)
        if max_model_len < least:
            raise ValueError(
                f"max_model_len={max_model_len} is too small for "
                f"transcription_delay_ms={transcription_delay_ms}: each generation needs "
                f"{prompt_tokens(transcription_delay_ms)} prompt tokens and "
                f"{transcription_delay_ms // 80 + 11} steps of right padding; "
                f"use at least {least} (and start vLLM with that --max-model-len)"
            )
    generation_cap = GenerationCap(max_generation_s) if max_generation_s is not None else None
    rut = blank_rut_options(blank_rut_s)
    for name, value, lo in (
        ("max_lag_s", max_lag_s, 0.5),
        ("input_stall_s", input_stall_s, 0.1),
        ("generation_timeout_s", generation_timeout_s, 1.0),
        ("max_outage_s", max_outage_s, 0.0),
        ("endpoint_cooldown_s", endpoint_cooldown_s, 0.1),
    ):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
            raise ValueError(f"{name} must be a number >= {lo}, got {value!r}")
    try:
        policy = LagPolicy(lag_policy)
    except ValueError:
        raise ValueError(f"lag_policy must be 'catch_up' or 'wait', got {lag_policy!r}") from None
    if socket_mode not in ("warm", "per_utterance"):
        raise ValueError(f"socket_mode must be 'warm' or 'per_utterance', got {socket_mode!r}")
    if vad is not None and not isinstance(vad, lk_vad.VAD):
        raise TypeError(f"vad must be a livekit.agents.vad.VAD or None, got {type(vad)!r}")
    kind = endpointer if endpointer is not None else os.environ.get(ENV_ENDPOINTER) or "silero"
    if kind not in _ENDPOINTERS:
        source = "endpointer" if endpointer is not None else f"${ENV_ENDPOINTER}"
        raise ValueError(f"{source} must be 'silero' or 'energy', got {kind!r}")
    timing = {
        k: v
        for k, v in (("min_speech_ms", min_speech_ms), ("min_silence_ms", min_silence_ms))
        if v is not None
    }
    ep_opts: EndpointerOptions | VadEndpointerOptions = (
        VadEndpointerOptions(**timing) if kind == "silero" else EndpointerOptions(**timing)
    )
    return STTOptions(
        base_url=endpoints[0],
        endpoints=endpoints,
        model=model_name,
        api_key=key,
        language=language or "",
        transcription_delay_ms=transcription_delay_ms,
        max_model_len=max_model_len,
        generation_cap=generation_cap,
        endpointer=ep_opts,
        segmenter=SegmenterOptions(
            sentence_pause_s=sentence_pause_s,
            max_pause_s=max_pause_s,
            max_segment_s=max_segment_s,
        ),
        preroll_ms=preroll_ms,
        max_lag_s=float(max_lag_s),
        lag_policy=policy,
        input_stall_s=float(input_stall_s),
        generation_timeout_s=float(generation_timeout_s),
        max_outage_s=float(max_outage_s),
        discover_server=discover_server,
        socket_mode=socket_mode,
        endpoint_cooldown_s=float(endpoint_cooldown_s),
        rut=rut,
    )


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
