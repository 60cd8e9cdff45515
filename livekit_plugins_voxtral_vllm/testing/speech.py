"""A deterministic fake "speech" format and its streaming recogniser, for the emulator.

Nobody can run Voxtral without a GPU, so the emulator transcribes synthetic audio instead:

- **Slots.** 63 pure-tone frequencies on an 88 Hz grid in 400-5944 Hz, below soxr's passband
  edge at 16 kHz (the 4008 Hz slot is left out: 24 -> 16 kHz linear interpolation mirrors *f*
  to 8000 - *f*). A slot has no language: ``lexicon(language)`` names its script word and its
  transcript text (60 words and 3 punctuation marks per language, see :mod:`.lexicon`).
  ``VOCABULARY`` is the English one (script word -> Hz); ``vocabulary(language)`` any other.
- **Bursts.** A word is one tone burst at -12 dBFS peak with 5 ms raised-cosine ramps. Its
  canonical length (``burst_ms``) is the slot's: 120 ms + 30 ms per letter of its English name,
  capped at 360 ms; punctuation is 90 ms.
- **Layout.** ``lead_ms`` of silence, then the bursts separated by ``gap_ms`` (default 60 ms,
  markers too), then ``tail_ms``. ``<pause:N>`` adds N ms of silence on top of the gap. Optional
  white noise (``noise_dbfs``, RMS) is seeded. All defaults are whole 10 ms hops, so at 16 kHz
  every burst ends exactly on a decoder hop boundary.
- **Transcript.** In English, words become ``" word"`` (leading space), markers stay bare:
  ``"hello world."`` is transcribed ``" hello world."``; ``"他 在 公园 。"`` in Chinese is
  ``"他在公园。"`` (``SynthesizedSpeech.text``, ``expected_text``).
- **Decoding.** ``ToneDecoder`` cuts 16 kHz audio into 10 ms hops. A run of hops above -30 dBFS
  RMS is one burst; it is a word only if it is a pure tone at a slot's frequency and of the
  slot's length (within 25 ms). Real speech, noise and damaged bursts decode to nothing.

The format survives ``livekit.rtc.AudioResampler`` (soxr) and linear interpolation from 24 or
48 kHz to 16 kHz, and -50 dBFS noise; the tests in ``tests/emulator/test_speech.py`` pin this.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from .lexicon import SLOT_NAMES, Lexicon, lexicon

__all__ = [
    "VOCABULARY",
    "MARKERS",
    "WordTiming",
    "SynthesizedSpeech",
    "synthesize",
    "expected_text",
    "concat",
    "burst_ms",
    "ToneDecoder",
]

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

MARKERS: frozenset[str] = frozenset({".", ",", "?"})
"""English punctuation tokens: transcribed without a leading space."""


def _build_slot_hz() -> tuple[float, ...]:
    slots = [400.0 + 88.0 * k for k in range(64)]
    slots = [f for f in slots if abs(2.0 * f - 8000.0) >= 100.0]
    assert len(slots) == len(SLOT_NAMES) == len(set(SLOT_NAMES)) == 63
    # Stride 25 (coprime to 63) puts words that follow each other in the list >= 1 kHz apart,
    # so scripts written from the list split cleanly even when a lost gap glues two bursts.
    return tuple(slots[25 * k % 63] for k in range(len(SLOT_NAMES)))


_SLOT_HZ = _build_slot_hz()
_SLOT_BURST_MS = tuple(
    90 if name in MARKERS else min(120 + 30 * len(name), 360) for name in SLOT_NAMES
)


def vocabulary(language: str = "en") -> Mapping[str, float]:
    """Script word -> tone frequency in Hz, for one language (see :mod:`.lexicon`)."""
    return _vocabulary(language)


@cache
def _vocabulary(language: str) -> Mapping[str, float]:
    lex = lexicon(language)
    return MappingProxyType({w: _SLOT_HZ[k] for k, w in enumerate(lex.words)})


VOCABULARY: Mapping[str, float] = vocabulary("en")
"""English script word -> tone frequency in Hz (``vocabulary("en")``). Words are lowercase;
markers are ``.``, ``,`` and ``?``."""

_RAMP_MS = 5.0
_MIN_GAP_MS = 20.0
_PAUSE_RE = re.compile(r"<pause:(\d+(?:\.\d+)?)>")


@cache
def _token_re(language: str) -> re.Pattern[str]:
    marks = re.escape("".join(sorted(lexicon(language).markers)))
    return re.compile(rf"\s*(?:(<pause:[^>]*>)|([{marks}])|([^\s{marks}<>]+))")


def burst_ms(token: str, language: str = "en") -> int:
    """Canonical burst length in ms of a script word (ramps included).

    The length belongs to the tone slot, so a slot lasts as long in every language."""
    return _SLOT_BURST_MS[lexicon(language).slot(token)]


def _check_token(token: str, language: str) -> None:
    lex = lexicon(language)
    if token in lex.words:
        return
    if language == "en" and token.lower() in lex.words:
        raise ValueError(
            f"unknown word {token!r} (the vocabulary is lowercase: use {token.lower()!r}): only "
            "tokens of livekit_plugins_voxtral_vllm.testing.speech.VOCABULARY can be synthesized"
        )
    lex.slot(token)  # raises with a hint


def _tokenize(text_or_words: str | Sequence[str], language: str) -> list[str]:
    """Split a script into script words and ``<pause:N>`` tokens, validating each."""
    if isinstance(text_or_words, str):
        tokens: list[str] = []
        pos = 0
        text = text_or_words.rstrip()
        token_re = _token_re(language)
        while pos < len(text):
            m = token_re.match(text, pos)
            if m is None:
                raise ValueError(f"cannot parse {text[pos:]!r} in script {text!r}")
            tokens.append(m.group(m.lastindex or 0))
            pos = m.end()
    else:
        tokens = list(text_or_words)
    for token in tokens:
        if token.startswith("<"):
            if _PAUSE_RE.fullmatch(token) is None:
                raise ValueError(f"bad pause token {token!r}: expected '<pause:MS>'")
        else:
            _check_token(token, language)
    return tokens


@dataclass(frozen=True, slots=True)
class WordTiming:
    """One synthesized token: its transcript text and burst position in seconds."""

    text: str
    """The exact transcript text: ``" word"`` for words, ``"."`` / ``","`` / ``"?"`` for
    markers (in zh/ja no space: ``"公园"``, ``"。"``)."""
    start_s: float
    end_s: float
    """Exclusive: the time of the first sample after the burst."""
    word: str = ""
    """The script word (``"公园"``, ``"2026"``)."""


@dataclass(frozen=True, eq=False, slots=True)
class SynthesizedSpeech:
    """Synthesized mono PCM16 audio and the timing of every token in it.

    ``samples`` is read-only; copy it to simulate damage.
    """

    samples: Int16Array
    sample_rate: int
    words: tuple[WordTiming, ...] = field(default=())
    language: str = "en"
    """The language the script was written in: the emulator must speak it too."""

    @property
    def text(self) -> str:
        """The exact transcript the emulator (set to :attr:`language`) produces, in either
        output mode: the words' texts concatenated."""
        return "".join(w.text for w in self.words)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def frames(self, frame_ms: int, *, pad: bool = True) -> list[Int16Array]:
        """Split into consecutive chunks of ``frame_ms``.

        The last chunk is zero-padded to full size (like a real-time capture) unless ``pad`` is
        false, in which case it is shorter. Raises ``ValueError`` if ``frame_ms`` is not a whole
        number of samples.
        """
        size, rem = divmod(self.sample_rate * frame_ms, 1000)
        if size <= 0 or rem:
            raise ValueError(
                f"{frame_ms} ms is not a whole number of samples at {self.sample_rate}"
            )
        out = [self.samples[i : i + size] for i in range(0, len(self.samples), size)]
        if pad and out and len(out[-1]) < size:
            out[-1] = np.concatenate((out[-1], np.zeros(size - len(out[-1]), np.int16)))
        return out


def _ms_to_samples(ms: float, sample_rate: int) -> int:
    return round(ms * sample_rate / 1000)


@lru_cache(maxsize=16)
def _ramp(n: int) -> npt.NDArray[np.float64]:
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _burst(freq: float, n: int, sample_rate: int, amplitude: float) -> npt.NDArray[np.float64]:
    x = amplitude * np.sin(2.0 * np.pi * freq * np.arange(n) / sample_rate)
    r = min(_ms_to_samples(_RAMP_MS, sample_rate), n // 2)
    if r:
        ramp = _ramp(r)
        x[:r] *= ramp
        x[n - r :] *= ramp[::-1]
    return x


def synthesize(
    text_or_words: str | Sequence[str],
    sample_rate: int = 16000,
    *,
    gap_ms: float = 60,
    lead_ms: float = 300,
    tail_ms: float = 300,
    noise_dbfs: float | None = None,
    seed: int = 0,
    amplitude_dbfs: float = -12.0,
    language: str = "en",
) -> SynthesizedSpeech:
    """Render a script as tone bursts.

    Args:
        text_or_words: ``"hello world. <pause:800> the meeting starts now"`` or the same as a
            sequence of tokens (``["hello", "world", ".", "<pause:800>", ...]``). Words are
            those of ``lexicon(language).words``, separated by spaces in every language
            (``"他 在 公园 散步 。"``); punctuation may touch the word before it.
        sample_rate: output rate in Hz.
        gap_ms: silence between consecutive bursts, at least 20 ms so that the decoder sees a
            silent 10 ms hop between them.
        lead_ms: silence before the first burst.
        tail_ms: silence after the last burst; the decoder needs 20 ms to confirm it.
        noise_dbfs: RMS level of white noise over the whole signal, or ``None`` for none.
            The decoder tolerates up to about -40 dBFS.
        seed: noise seed.
        amplitude_dbfs: peak level of the bursts; the decoder needs at least about -24 dBFS.
        language: the script's language (one of ``lexicon.LANGUAGES``); the emulator must be
            set to it to transcribe :attr:`SynthesizedSpeech.text`.

    Raises:
        ValueError: an unknown word (see ``lexicon(language).words``), an unknown language, a
            bad ``<pause:MS>`` token or bad timing parameters.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if gap_ms < _MIN_GAP_MS:
        raise ValueError(f"gap_ms must be >= {_MIN_GAP_MS:g} for the decoder, got {gap_ms}")
    if lead_ms < 0 or tail_ms < 0:
        raise ValueError("lead_ms and tail_ms must be >= 0")
    lex = lexicon(language)
    tokens = _tokenize(text_or_words, language)
    amplitude = 10.0 ** (amplitude_dbfs / 20.0)

    parts: list[npt.NDArray[np.float64]] = []
    words: list[WordTiming] = []
    pos = 0

    def silence(ms: float) -> None:
        nonlocal pos
        n = _ms_to_samples(ms, sample_rate)
        parts.append(np.zeros(n))
        pos += n

    silence(lead_ms)
    for token in tokens:
        pause = _PAUSE_RE.fullmatch(token)
        if pause is not None:
            silence(float(pause.group(1)))
            continue
        if words:
            silence(gap_ms)
        slot = lex.slot(token)
        n = _ms_to_samples(_SLOT_BURST_MS[slot], sample_rate)
        parts.append(_burst(_SLOT_HZ[slot], n, sample_rate, amplitude))
        words.append(WordTiming(lex.texts[slot], pos / sample_rate, (pos + n) / sample_rate, token))
        pos += n
    silence(tail_ms)

    signal = np.concatenate(parts)
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        signal += rng.normal(0.0, 10.0 ** (noise_dbfs / 20.0), signal.size)
    samples = np.clip(np.round(signal * 32768.0), -32768, 32767).astype(np.int16)
    samples.flags.writeable = False
    return SynthesizedSpeech(samples, sample_rate, tuple(words), language)


def expected_text(text_or_words: str | Sequence[str], language: str = "en") -> str:
    """The transcript of ``synthesize(text_or_words, language=language)``, without rendering
    any audio."""
    lex = lexicon(language)
    tokens = _tokenize(text_or_words, language)
    return "".join(lex.text(t) for t in tokens if not t.startswith("<"))


def concat(*speeches: SynthesizedSpeech) -> SynthesizedSpeech:
    """Join scripts end to end (same sample rate); word timings are shifted accordingly."""
    if not speeches:
        raise ValueError("concat() needs at least one SynthesizedSpeech")
    rate = speeches[0].sample_rate
    if any(s.sample_rate != rate for s in speeches):
        raise ValueError("concat() needs speeches of one sample rate")
    language = speeches[0].language
    if any(s.language != language for s in speeches):
        raise ValueError("concat() needs speeches of one language (the emulator speaks one)")
    words: list[WordTiming] = []
    offset = 0
    for s in speeches:
        shift = offset / rate
        words.extend(
            WordTiming(w.text, w.start_s + shift, w.end_s + shift, w.word) for w in s.words
        )
        offset += len(s.samples)
    samples = np.concatenate([s.samples for s in speeches])
    samples.flags.writeable = False
    return SynthesizedSpeech(samples, rate, tuple(words), language)


# -- decoder -------------------------------------------------------------------------------------

_TONE_POWER = 10.0 ** (-30.0 / 10.0)
"""Mean square above which a hop is tone: 15 dB under a -12 dBFS tone, 20 dB over -50 dBFS noise."""
_LOUD_POWER = 10.0 ** (-21.0 / 10.0)
"""Hops this loud are trusted for the per-hop frequency estimate (ramp hops are not)."""
_CHANGE_HZ = 150.0
_FREQ_TOL_HZ = 35.0
_DURATION_TOL_MS = 25.0
_MIN_RUN_MS = 30.0
_MAX_STORED_MS = 500
_RAMP_LOSS_MS = 2.0 * (5.0 / 8.0) * _RAMP_MS
"""A raised-cosine ramp of length R carries the energy of 3/8 R of full-level tone."""

_MIN_PURITY = 0.9
"""Share of a run's energy within its spectral peak's main lobe: a pure tone (even through a
resampler, with -40 dBFS noise, or cut short) keeps over 0.99; espeak-ng speech, with its
harmonics and moving pitch, stayed under 0.81 (a high-pitched voice), broadband noise far under."""

_SLOT_HZ_ARRAY = np.array(_SLOT_HZ)
_SLOT_EFFECTIVE_MS = tuple(ms - _RAMP_LOSS_MS for ms in _SLOT_BURST_MS)


@lru_cache(maxsize=128)
def _hann(n: int) -> Float32Array:
    return np.hanning(n).astype(np.float32)


class _Run:
    """Statistics of the burst being decoded; its first hops live in the decoder's buffer."""

    __slots__ = ("powers", "energy", "ref_hz", "candidate")

    def __init__(self) -> None:
        self.powers: list[float] = []  # mean square of each stored hop
        self.energy = 0.0  # sum of squares over all hops, stored or not
        self.ref_hz: float | None = None
        # Power of a loud hop whose frequency departs from ref_hz, held back (in the decoder's
        # candidate buffer) until the next hop tells whether a new burst started there.
        self.candidate: float | None = None


class ToneDecoder:
    """Streaming decoder for one generation's audio at 16 kHz.

    ``feed`` audio in any chunk sizes; ``pop_tokens`` returns the tokens whose burst has ended.
    A burst is confirmed at most 20 ms of audio after its end, so every token ending 20 ms
    before ``samples_fed`` is available. Feed silence to flush a burst at the end of the audio.
    Memory is bounded: a partial hop and the first 500 ms of the current burst.

    Decoding is per 10 ms hop. A hop above -30 dBFS RMS is tone; a run of tone hops ends at the
    first silent hop, or where two loud hops in a row move more than 150 Hz away from the run's
    frequency (bursts glued together by lost gaps). A run is a word only if it is a pure tone
    (over 90 % of its energy in one spectral peak) within 35 Hz of a slot's tone, and its
    energy-equivalent length is within 25 ms of the slot's. Anything else (real speech, noise, a
    door slam, a beep, a word whose audio was cut or duplicated on the way in) decodes to
    nothing, as the real model emits only blanks for what it does not understand. With
    ``mark_damage=True`` (for debugging), slot tones of the wrong length decode as
    ``" <partial:WORD>"`` (shorter: audio lost) or ``" <long:WORD>"`` (longer: duplicated).
    Runs under 30 ms are dropped as clicks.

    Texts are those of ``lexicon(language)``: the tones carry the slot, the language its text.
    """

    def __init__(
        self, sample_rate: int = 16000, *, language: str = "en", mark_damage: bool = False
    ) -> None:
        if sample_rate <= 0 or sample_rate % 100:
            raise ValueError(f"sample_rate must be a positive multiple of 100, got {sample_rate}")
        self._lexicon = lexicon(language)
        self._mark_damage = mark_damage
        self._rate = sample_rate
        self._hop = sample_rate // 100
        self._fed = 0
        self._hops_done = 0
        self._partial: Float32Array = np.zeros(0, np.float32)
        self._rows: Float32Array = np.zeros((_MAX_STORED_MS // 10, self._hop), np.float32)
        self._candidate_row: Float32Array = np.zeros(self._hop, np.float32)
        self._run: _Run | None = None
        self._tokens: deque[tuple[int, str]] = deque()

    @property
    def samples_fed(self) -> int:
        """Total number of samples passed to ``feed``."""
        return self._fed

    def feed(self, samples: npt.ArrayLike) -> None:
        """Append audio (float32 in [-1, 1] or int16). Processes whatever complete analysis hops
        are available."""
        x = _as_float32(samples)
        if x.size == 0:
            return
        self._fed += x.size
        if self._partial.size:
            x = np.concatenate((self._partial, x))
        n = x.size // self._hop
        self._partial = x[n * self._hop :].copy()
        if n == 0:
            return
        first = self._hops_done
        self._hops_done += n
        hops = x[: n * self._hop].reshape(n, self._hop)
        power = np.einsum("ij,ij->i", hops, hops) / self._hop
        tone = power > _TONE_POWER
        if self._run is None and not tone.any():
            return
        # Per-hop frequency from x[t-1] + x[t+1] = 2 cos(w) x[t], exact for a pure tone at any
        # phase; least squares over the hop, so low noise barely moves it.
        mid = hops[:, 1:-1]
        num = np.einsum("ij,ij->i", mid, hops[:, 2:] + hops[:, :-2])
        den = 2.0 * np.einsum("ij,ij->i", mid, mid) + 1e-12
        hz = np.arccos(np.clip(num / den, -1.0, 1.0)) * (self._rate / (2.0 * np.pi))
        for i, (p, f, t) in enumerate(zip(power.tolist(), hz.tolist(), tone.tolist(), strict=True)):
            self._step(first + i, hops[i], p, f, t)

    def pop_tokens(self, before_sample: int) -> list[str]:
        """Remove and return, in order, the decoded tokens whose burst END lies before
        `before_sample` (sample index counted from the first sample ever fed). Token texts:
        the language's word texts (``" word"``, ``"."``, ``"公园"``).

        A burst's end is exclusive (the first sample after it), so a token is returned when
        ``end <= before_sample``. What is not a slot's tone of the slot's length gives nothing
        (with ``mark_damage``, wrong lengths give ``" <partial:WORD>"`` / ``" <long:WORD>"``).
        """
        out: list[str] = []
        while self._tokens and self._tokens[0][0] <= before_sample:
            out.append(self._tokens.popleft()[1])
        return out

    # Private methods

    def _step(self, index: int, row: Float32Array, power: float, hz: float, tone: bool) -> None:
        """Advance the run state machine by one hop (``index`` counts hops from the start)."""
        run = self._run
        if not tone:
            if run is not None:
                if run.candidate is not None:
                    self._add(run, self._candidate_row, run.candidate)
                self._close(index)
            return
        if run is None:
            run = self._run = _Run()
        loud = power >= _LOUD_POWER
        departs = loud and run.ref_hz is not None and abs(hz - run.ref_hz) > _CHANGE_HZ
        if run.candidate is not None:
            candidate, run.candidate = run.candidate, None
            if departs:
                self._close(index - 1)
                run = self._run = _Run()
                run.ref_hz = hz
            self._add(run, self._candidate_row, candidate)
            self._add(run, row, power)
        elif departs:
            self._candidate_row[:] = row
            run.candidate = power
        else:
            if loud and run.ref_hz is None:
                run.ref_hz = hz
            self._add(run, row, power)

    def _add(self, run: _Run, row: Float32Array, power: float) -> None:
        """Append a hop to the run, storing its samples while the buffer has room."""
        run.energy += power * self._hop
        if len(run.powers) < len(self._rows):
            self._rows[len(run.powers)] = row
            run.powers.append(power)

    def _close(self, end_hop: int) -> None:
        """Decode the current run, which ended where hop ``end_hop`` starts."""
        run = self._run
        assert run is not None
        self._run = None
        powers = run.powers
        interior = sorted(powers[1:-1]) if len(powers) >= 3 else [max(powers)]
        duration_ms = run.energy / interior[len(interior) // 2] / self._rate * 1000.0
        if duration_ms < _MIN_RUN_MS:
            return
        hz, purity = _peak_hz(self._rows[: len(powers)].reshape(-1), self._rate)
        text = _classify(hz, purity, duration_ms, self._lexicon, self._mark_damage)
        if text is not None:
            self._tokens.append((end_hop * self._hop, text))


def _classify(
    hz: float, purity: float, duration_ms: float, lex: Lexicon, mark_damage: bool
) -> str | None:
    """Text for a run of peak frequency ``hz`` whose peak holds ``purity`` of its energy and
    of energy-equivalent length ``duration_ms``; None when it is not a slot's tone."""
    if purity < _MIN_PURITY:
        return None
    k = int(np.argmin(np.abs(_SLOT_HZ_ARRAY - hz)))
    if abs(_SLOT_HZ[k] - hz) > _FREQ_TOL_HZ:
        return None
    canonical = _SLOT_EFFECTIVE_MS[k]
    if duration_ms < canonical - _DURATION_TOL_MS:
        return f" <partial:{lex.words[k]}>" if mark_damage else None
    if duration_ms > canonical + _DURATION_TOL_MS:
        return f" <long:{lex.words[k]}>" if mark_damage else None
    return lex.texts[k]


def _as_float32(samples: npt.ArrayLike) -> Float32Array:
    a = np.asarray(samples).reshape(-1)
    if a.dtype == np.int16:
        out: Float32Array = a.astype(np.float32)
        out *= np.float32(1.0 / 32768.0)
        return out
    if np.issubdtype(a.dtype, np.floating):
        out = a.astype(np.float32, copy=False)
        return out
    raise TypeError(f"expected int16 or float samples, got {a.dtype}")


def _peak_hz(x: Float32Array, sample_rate: int) -> tuple[float, float]:
    """Frequency of the strongest spectral peak, interpolated between FFT bins, and the share
    of the energy within that peak's main lobe (1.0 for a pure tone)."""
    n = x.size
    nfft = max(2048, 1 << (n - 1).bit_length())
    spectrum = np.abs(np.fft.rfft(x * _hann(n), nfft))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12).tolist()
    denom = a - 2.0 * b + c
    delta = 0.5 * (a - c) / denom if denom < 0 else 0.0
    # A Hann window's main lobe spans +-2 bins of the unpadded length; take a little more,
    # and at least +-25 Hz so that a phase jump (a cut inside a burst) stays inside it.
    half = max(3, round(2.5 * nfft / n), round(25 * nfft / sample_rate))
    power = spectrum * spectrum
    total = float(power.sum()) + 1e-30
    purity = float(power[max(0, k - half) : k + half + 1].sum()) / total
    return (k + delta) * sample_rate / nfft, purity
