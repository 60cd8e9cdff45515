"""espeak-ng speech with the time of every word, from the synthesizer itself.

espeak-ng reports, as it synthesizes, an event at the start of each word and of each phoneme
(pauses included) with its sample position. This module calls ``libespeak-ng.so.1`` (Debian's
``espeak-ng`` installs it) through ctypes, and returns 16 kHz audio with each word's start
(its first phoneme) and end (the next pause phoneme or the next word's first phoneme), for
measuring word times against real, coarticulated speech.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import soxr
from _endpointing_audio import RATE, to_pcm

_WORD, _END, _PHONEME = 1, 5, 7
_SYNCHRONOUS = 2
_PHONEME_EVENTS, _DONT_EXIT = 0x0001, 0x8000
_RATE_PARAM = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class SpokenWord:
    text: str
    """The script's text from this word to the next one (punctuation after it included)."""
    start_s: float
    end_s: float
    exact: bool = True
    """False where one word event of espeak-ng's covered several words ("on the"): their
    times are the event's span shared by length, not espeak-ng's."""


@dataclass(frozen=True)
class Spoken:
    samples: npt.NDArray[np.int16]
    """16 kHz mono."""
    words: tuple[SpokenWord, ...]


@lru_cache(maxsize=1)
def _lib() -> tuple[ctypes.CDLL, int]:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    lib = ctypes.CDLL(name)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_Callback]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    rate = int(lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS | _DONT_EXIT))
    if rate <= 0:
        raise RuntimeError("espeak_Initialize failed")
    return lib, rate


def available() -> bool:
    try:
        _lib()
    except OSError:
        return False
    return True


def speak(voice: str, wpm: int, text: str) -> Spoken:
    """Synthesize ``text``; words as espeak-ng's word events divide it."""
    lib, rate = _lib()
    chunks: list[npt.NDArray[np.int16]] = []
    events: list[tuple[int, int, int, bytes]] = []  # (type, text position, sample, name)

    def on_audio(wav: ctypes._Pointer[ctypes.c_short], n: int, ev: ctypes._Pointer[_Event]) -> int:
        if wav and n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.int16))
        i = 0
        while ev[i].type != 0:
            e = ev[i]
            name = bytes(e.id).split(b"\0")[0]
            events.append((e.type, e.text_position, e.sample, name))
            i += 1
        return 0

    callback = _Callback(on_audio)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(_RATE_PARAM, wpm, 0)
    data = text.encode()
    lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    # word i: its text position (1-based characters), its first phoneme, its end
    starts: list[tuple[int, int]] = []  # (text position, first phoneme's sample)
    ends: list[int] = []
    open_word = False
    for kind, pos, sample, name in events:
        if kind == _WORD and starts and pos <= starts[-1][0]:
            continue  # (espeak-ng sometimes repeats a word event with position 0)
        if kind == _WORD:
            if open_word:
                ends.append(sample)
            starts.append((pos, -1))
            open_word = True
        elif kind == _PHONEME and open_word:
            pause = name.startswith(b"_")
            if starts[-1][1] < 0 and not pause:
                starts[-1] = (starts[-1][0], sample)
            elif pause and starts[-1][1] >= 0:
                ends.append(sample)
                open_word = False
        elif kind == _END and open_word:
            ends.append(sample)
            open_word = False
    if open_word:
        ends.append(audio.size)
    words = []
    for i, (pos, first) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else len(text) + 1
        piece = text[pos - 1 : nxt - 1].strip()
        if first < 0 or not piece:
            continue
        end = _last_sound(audio, rate, first, ends[i])
        parts = piece.split()
        t, step = first / rate, (end - first) / rate / len(piece.replace(" ", ""))
        for part in parts:
            words.append(SpokenWord(part, t, t + step * len(part), exact=len(parts) == 1))
            t += step * len(part)
    return Spoken(_to_16k(audio, rate), tuple(words))


def _last_sound(audio: npt.NDArray[np.int16], rate: int, start: int, end: int) -> int:
    """The end of the last 10 ms above -40 dBFS in ``[start, end)`` (a sentence's last word
    ends at the sentence's end event, after its trailing silence)."""
    hop = rate // 100
    x = audio[start:end].astype(np.float64) / 32768.0
    for k in range(x.size // hop, 0, -1):
        frame = x[(k - 1) * hop : k * hop]
        if frame.size and np.sqrt(np.mean(frame**2)) > 0.01:
            return start + k * hop
    return end


def _to_16k(audio: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.int16]:
    return to_pcm(soxr.resample(audio.astype(np.float64) / 32768.0, rate, RATE))
