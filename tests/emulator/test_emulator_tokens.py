"""Real-token mode: Tekken tokens one per step, vLLM's incremental deltas, languages, timing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_plugins_voxtral_vllm.protocol import COMMIT, COMMIT_FINAL, encode_append_pcm
from livekit_plugins_voxtral_vllm.testing import (
    LANGUAGES,
    RealtimeEngine,
    StepMath,
    SynthesizedSpeech,
    VersionProfile,
    expected_text,
    lexicon,
    synthesize,
)
from livekit_plugins_voxtral_vllm.testing.engine import Generation
from livekit_plugins_voxtral_vllm.testing.speech import ToneDecoder
from livekit_plugins_voxtral_vllm.testing.tokens import (
    PAD_ID,
    IncrementalDetokenizer,
    encode,
    expected_deltas,
    load_tokenizer,
)

_ALL_TEXTS = [t for lang in LANGUAGES for t in lexicon(lang).texts]

UPDATE = '{"type":"session.update","model":"m"}'
STEP = 1280
DELAY = 480

SCRIPTS = {
    "en": "hello everyone, the meeting starts now. <pause:400> it is 2026 😀 don't wait?",
    "fr": "bonjour Zoë, la réunion commence maintenant . aujourd'hui c'est 2026 😀 ?",
    "de": "hallo Zoë, die Besprechung beginnt jetzt . Straße Größe geht's 2026 🎉 ?",
    "es": "hola niño, la reunión empieza ahora . ¿qué año 2026 pingüino 😀 ?",
    "zh": "你好 大家 ， 会议 现在 开始 。 我们 在 公园 散步 吧 2026 年 😀 ？",
    "ja": "こんにちは 皆さん 、 会議 が 始まります 。 東京 の 公園 で 散歩 2026 年 😀 ？",
}


def make(language: str = "en", output: str = "tokens", delay: int = DELAY) -> RealtimeEngine:
    engine = RealtimeEngine(
        served_model_names=["m"],
        profile=VersionProfile.for_version("0.33.0"),
        math=StepMath(delay),
        decoder_factory=lambda: ToneDecoder(language=language),
        output="tokens" if output == "tokens" else "words",
    )
    engine.receive_text(UPDATE)
    engine.data_to_send()
    return engine


def transcribe(engine: RealtimeEngine, samples: np.ndarray, chunk: int = 1600) -> Generation:
    engine.receive_text(COMMIT)
    for i in range(0, len(samples), chunk):
        engine.receive_text(encode_append_pcm(samples[i : i + chunk]))
        engine.run_steps(10**9, 0.0)
    engine.receive_text(COMMIT_FINAL)
    engine.run_steps(10**9, 0.0)
    gen = engine.generations[-1]
    assert gen.finished_reason == "done"
    return gen


def deltas_on_wire(frames: list[str]) -> list[str]:
    events = [json.loads(f) for f in frames]
    return [e["delta"] for e in events if e["type"] == "transcription.delta"]


# -- the detokenizer ---------------------------------------------------------------------------


class TestDetokenizer:
    @pytest.mark.parametrize(
        ("text", "deltas"),
        [
            (" 2026", [" ", "2", "0", "2", "6"]),
            ("公园", ["公", "", "园"]),
            (" 😀", ["", "", " 😀"]),
            ("😀", ["", "", "", "😀"]),
            (" Zoë", [" Zo", "ë"]),
            (" pingüino", [" ping", "ü", "ino"]),
            (" aujourd'hui", [" aujourd", "'hui"]),
            (" hello world.", [" hello", " world", "."]),
        ],
    )
    def test_deltas_as_vllm_sends_them(self, text: str, deltas: list[str]) -> None:
        assert expected_deltas(text) == deltas

    def test_pads_give_nothing_even_inside_a_character(self) -> None:
        detok = IncrementalDetokenizer()
        ids = encode("公园")
        assert [detok.step(i) for i in (PAD_ID, ids[0], ids[1], PAD_ID, PAD_ID, ids[2])] == [
            "",
            "公",
            "",
            "",
            "",
            "园",
        ]
        assert detok.text == "公园"

    def test_special_tokens_and_out_of_range_ids_give_nothing(self) -> None:
        detok = IncrementalDetokenizer()
        assert [detok.step(i) for i in (0, 1, 2, 11, 32, 999, -1, 10**7)] == [""] * 8

    @pytest.mark.parametrize("language", LANGUAGES)
    def test_every_word_reassembles_without_broken_characters(self, language: str) -> None:
        lex = lexicon(language)
        detok = IncrementalDetokenizer()
        for text in lex.texts:
            deltas = [detok.step(i) for i in encode(text)]
            assert "".join(deltas) == text
            assert all("\ufffd" not in d for d in deltas)
        assert detok.text == "".join(lex.texts)

    @settings(max_examples=80, deadline=None)
    @given(
        st.lists(st.tuples(st.sampled_from(_ALL_TEXTS), st.integers(0, 3)), min_size=1, max_size=12)
    )
    def test_any_stream_of_words_and_pads_reassembles(self, items: list[tuple[str, int]]) -> None:
        detok = IncrementalDetokenizer()
        deltas: list[str] = []
        for text, pads in items:
            deltas += [detok.step(i) for i in encode(text)]
            deltas += [detok.step(PAD_ID) for _ in range(pads)]
        assert "".join(deltas) == "".join(text for text, _ in items)
        assert all("\ufffd" not in d for d in deltas)

    def test_bundled_tokenizer(self) -> None:
        tok = load_tokenizer()
        assert tok.n_words == 131072
        assert tok.is_special(PAD_ID)


# -- the lexicons --------------------------------------------------------------------------


class TestLexicons:
    def test_languages(self) -> None:
        assert {"en", "fr", "de", "es", "zh", "ja"} <= set(LANGUAGES)

    @pytest.mark.parametrize("language", LANGUAGES)
    def test_shape(self, language: str) -> None:
        lex = lexicon(language)
        assert len(lex.words) == len(lex.texts) == 63
        words = lex.texts[:60]
        if language in ("zh", "ja"):
            assert not any(" " in t for t in lex.texts)  # no spaces at all
        else:
            assert all(t.startswith(" ") and not t[1:].isspace() for t in words)
        # numbers, emoji, a word of several tokens, a character split over tokens
        assert any(any(c.isdigit() for c in t) for t in words)
        assert any(ord(c) > 0x1F000 for t in words for c in t)
        assert any(len(encode(t)) >= 3 for t in words)
        assert any("" in expected_deltas(t) for t in words)

    def test_apostrophes_and_accents(self) -> None:
        texts = [t for lang in ("en", "fr", "de", "es") for t in lexicon(lang).texts]
        assert any("'" in t for t in texts)
        assert {c for t in texts for c in t} >= set("éëüßñ¿")

    @pytest.mark.parametrize("language", LANGUAGES)
    def test_scripts_are_valid(self, language: str) -> None:
        assert expected_text(SCRIPTS[language], language=language)

    def test_unknown_language_and_word(self) -> None:
        with pytest.raises(ValueError, match=r"unsupported emulator language 'xx'.*en, fr"):
            lexicon("xx")
        with pytest.raises(ValueError, match=r"separate zh script words with spaces"):
            synthesize("他在公园", language="zh")

    def test_cjk_text_has_no_spaces(self) -> None:
        assert expected_text("我们 在 公园 散步 。", language="zh") == "我们在公园散步。"
        assert expected_text("bonjour Zoë ?", language="fr") == " bonjour Zoë ?"


# -- the engine in real-token mode -----------------------------------------------------------


def _spoken(language: str) -> SynthesizedSpeech:
    return synthesize(SCRIPTS[language], language=language, noise_dbfs=-50)


@pytest.mark.parametrize("language", LANGUAGES)
def test_real_tokens_one_per_step(language: str) -> None:
    speech = _spoken(language)
    engine = make(language)
    gen = transcribe(engine, speech.samples)
    assert gen.done_text == speech.text
    assert "".join(deltas_on_wire(engine.data_to_send())) == speech.text
    # exactly one token per step, every delta what vLLM's detokenizer makes of it
    assert len(gen.tokens) == gen.steps == len(gen.deltas)
    detok = IncrementalDetokenizer()
    assert [detok.step(t) for t in gen.tokens] == gen.deltas
    text_tokens = [t for t in gen.tokens if t != PAD_ID]
    assert text_tokens == [i for w in speech.words for i in encode(w.text)]
    assert all("\ufffd" not in d for d in gen.deltas)


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_token_before_word_end_plus_delay_was_sent(language: str) -> None:
    """Feed audio 10 ms at a time; a word's first token never appears before the client has
    sent the word's end + the transcription delay + the 2.5 ms (40-sample) look-ahead."""
    speech = _spoken(language)
    engine = make(language)
    engine.receive_text(COMMIT)
    sent = 0
    first_token_at: list[int] = []  # samples sent when each text token appeared
    gen = engine.generations[-1]
    for i in range(0, len(speech.samples), 160):
        chunk = speech.samples[i : i + 160]
        engine.receive_text(encode_append_pcm(chunk))
        sent += len(chunk)
        before = gen.steps
        engine.run_steps(10**9, 0.0)
        for tok in gen.tokens[before:]:
            if tok != PAD_ID:
                first_token_at.append(sent)
    engine.receive_text(COMMIT_FINAL)
    engine.run_steps(10**9, 0.0)
    assert gen.done_text == speech.text
    per_word = [len(encode(w.text)) for w in speech.words]
    starts = np.cumsum([0, *per_word[:-1]])
    delay = DELAY * 16
    checked = 0
    for word, start in zip(speech.words, starts, strict=True):
        if start >= len(first_token_at):
            continue  # emitted in the right-pad flush after the final
        assert first_token_at[start] >= round(word.end_s * 16000) + delay + 40, word
        checked += 1
    assert checked >= len(speech.words) - 3


def test_tokens_queue_one_per_step_and_come_late() -> None:
    # " 2026" (5 tokens), "." 110 ms later, then " 😀" (3 tokens): one token per step
    speech = synthesize("2026 . 😀", gap_ms=20, tail_ms=2000)
    engine = make("en")
    gen = transcribe(engine, speech.samples)
    ids = encode(" 2026") + encode(".") + encode(" 😀")
    first = gen.tokens.index(ids[0])
    # the first token comes at the step covering the word's end, not before
    end_steps = [-(-round(w.end_s * 16000) // STEP) - 1 for w in speech.words]
    assert first == end_steps[0]
    # "." ended one or two steps later, but waits behind 2026's tokens: held, then released
    assert end_steps[1] < first + 5
    assert gen.tokens[first : first + 6] == ids[:6]
    assert gen.deltas[first : first + 6] == [" ", "2", "0", "2", "6", "."]
    # the emoji's burst ended later still: its tokens follow from the step covering its end
    emoji = gen.tokens.index(ids[6])
    assert emoji == max(end_steps[2], first + 6)
    assert gen.deltas[emoji : emoji + 3] == ["", "", " 😀"]
    assert gen.done_text == " 2026. 😀"


def test_words_mode_still_sends_whole_words() -> None:
    speech = synthesize("it is 2026 😀", language="en")
    engine = make("en", output="words")
    gen = transcribe(engine, speech.samples)
    assert [d for d in gen.deltas if d] == [" it", " is", " 2026", " 😀"]
    assert gen.tokens == []


def test_language_changes_only_the_text() -> None:
    script_fr = "bonjour Zoë ?"
    speech = synthesize(script_fr, language="fr")
    slots = [lexicon("fr").slot(w) for w in ("bonjour", "Zoë", "?")]
    en = "".join(lexicon("en").texts[k] for k in slots)
    assert transcribe(make("en"), speech.samples).done_text == en
    assert transcribe(make("fr"), speech.samples).done_text == " bonjour Zoë ?"


# -- what is not tone speech ------------------------------------------------------------------


def _door_slams() -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(12000) / 16000
    x = np.zeros(16000 * 4)
    for k in range(5):
        hit = rng.normal(0, 0.5, t.size) * np.exp(-t * 30)
        hit += 0.8 * np.sin(2 * np.pi * (60 + 40 * k) * t) * np.exp(-t * 8)
        x[k * 10000 : k * 10000 + t.size] += hit
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def _harmonic_voice() -> np.ndarray:
    """A crude vowel: a gliding 120-220 Hz fundamental with many harmonics, 2 s."""
    t = np.arange(32000) / 16000
    f0 = 120 + 100 * t / 2
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    x = x / np.max(np.abs(x)) * 0.5
    return np.round(np.asarray(x) * 32767).astype(np.int16)


@pytest.mark.parametrize("output", ["tokens", "words"])
@pytest.mark.parametrize("sound", ["door_slams", "harmonic_voice", "beep"])
def test_sounds_that_are_not_tone_words_give_empty_deltas(output: str, sound: str) -> None:
    if sound == "door_slams":
        x = _door_slams()
    elif sound == "harmonic_voice":
        x = _harmonic_voice()
    else:  # a 1 kHz notification beep of 500 ms, near a slot but far too long
        t = np.arange(8000) / 16000
        x = np.round(8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    x = np.concatenate((np.zeros(8000, np.int16), x, np.zeros(8000, np.int16)))
    gen = transcribe(make("en", output=output), x)
    assert gen.steps > 10
    assert set(gen.deltas) == {""}
    assert gen.words_heard == []


# -- faults at the engine ----------------------------------------------------------------------


def test_rut_sends_only_pads_over_speech() -> None:
    speech = synthesize("hello everyone, the meeting starts now.")
    engine = make("en")
    engine.rut = True
    gen = transcribe(engine, speech.samples)
    assert set(gen.deltas) == {""} and gen.done_text == ""
    assert gen.rut_steps == gen.steps
    assert "".join(gen.words_heard) == speech.text  # it heard them, it never said them
    assert set(gen.tokens) == {PAD_ID}


def test_rut_ends_mid_generation() -> None:
    speech = synthesize("hello everyone <pause:1500> the meeting starts now")
    engine = make("en")
    engine.rut = True
    engine.receive_text(COMMIT)
    samples = speech.samples
    split = round((speech.words[1].end_s + 1.0) * 16000)
    engine.receive_text(encode_append_pcm(samples[:split]))
    engine.run_steps(10**9, 0.0)
    engine.rut = False
    engine.receive_text(encode_append_pcm(samples[split:]))
    engine.receive_text(COMMIT_FINAL)
    engine.run_steps(10**9, 0.0)
    gen = engine.generations[-1]
    assert gen.done_text == " the meeting starts now"  # the words heard in the rut are lost


def test_limit_generation_stops_inside_a_word() -> None:
    speech = synthesize("it is 2026", tail_ms=1500)
    engine = make("en")
    whole = transcribe(make("en"), speech.samples)
    two = whole.tokens.index(encode(" 2026")[0])
    engine.limit_generation(two + 3)  # " ", "2", "0" of " 2026" sent, then done
    engine.receive_text(COMMIT)
    engine.receive_text(encode_append_pcm(speech.samples))
    engine.run_steps(10**9, 0.0)
    gen = engine.generations[-1]
    assert gen.finished_reason == "max_model_len"
    assert gen.steps == two + 3 and gen.done_text == " it is 20"
    frames = engine.data_to_send()
    done = json.loads(frames[-1])
    assert done["type"] == "transcription.done" and done["text"] == " it is 20"
    assert done["usage"]["completion_tokens"] == two + 3
    # the next generation has no limit
    engine.receive_text(COMMIT)
    engine.receive_text(encode_append_pcm(speech.samples))
    engine.receive_text(COMMIT_FINAL)
    engine.run_steps(10**9, 0.0)
    assert engine.generations[-1].finished_reason == "done"
    assert engine.generations[-1].max_steps is None


def test_limit_generation_on_a_running_generation_past_it() -> None:
    engine = make("en")
    engine.receive_text(COMMIT)
    engine.receive_text(encode_append_pcm(np.zeros(16000, np.int16)))
    engine.run_steps(10**9, 0.0)
    gen = engine.generations[-1]
    assert gen.steps == 6 and gen.running
    engine.limit_generation(3)
    assert gen.finished_reason == "max_model_len" and gen.steps == 6
    with pytest.raises(ValueError, match="steps must be >= 1"):
        engine.limit_generation(0)


def test_missing_mistral_common_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mistral_common" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"\[emulator\]"):
        VLLMRealtimeEmulator()
    with pytest.raises(ImportError, match=r"\[emulator\]"):
        make("en")
    VLLMRealtimeEmulator(output="words")  # the whole-word mode needs nothing
    with pytest.raises(ValueError, match=r"output must be 'tokens' or 'words', got 'bytes'"):
        VLLMRealtimeEmulator(output="bytes")  # type: ignore[arg-type]


_VOICES = {
    "en": "Good morning everyone, the meeting starts now. Can you hear me? Twenty twenty six.",
    "fr": "Bonjour à tous, la réunion commence maintenant. Vous m'entendez ?",
    "de": "Guten Morgen, die Besprechung beginnt jetzt. Hört ihr mich?",
    "cmn": "大家好，会议现在开始。我们在公园散步吧。",
    "ja": "こんにちは、会議が始まります。",
}


def _espeak(voice: str, text: str) -> np.ndarray:
    """Real synthetic speech from espeak-ng, at 16 kHz."""
    import io
    import shutil
    import subprocess
    import wave

    import soxr

    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing in CI (.ci/run installs it)")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    out = soxr.resample(pcm.astype(np.float32) / 32768, rate, 16000)
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("voice", list(_VOICES))
def test_real_voice_gives_empty_deltas(voice: str) -> None:
    speech = _espeak(voice, _VOICES[voice])
    for gain in (1.0, 3.0):  # as recorded, and loud (clipping)
        x = np.clip(speech.astype(np.float64) * gain, -32768, 32767).astype(np.int16)
        for output in ("tokens", "words"):
            gen = transcribe(make("en", output=output), x)
            assert gen.steps > 20
            assert set(gen.deltas) == {""}, (voice, gain, output)


def test_hold_releases_words_in_a_burst() -> None:
    speech = synthesize("the meeting starts now . <pause:2000> okay", tail_ms=1500, language="en")
    engine = make("en")
    engine.hold_steps = 25  # 2 s
    gen = transcribe(engine, speech.samples)
    assert gen.done_text == speech.text
    text_steps = [k for k, t in enumerate(gen.tokens) if t != PAD_ID]
    end_steps = [-(-round(w.end_s * 16000) // STEP) - 1 for w in speech.words]
    # the first four words and "." come out together, 2 s after the first was heard
    assert text_steps[:5] == list(range(end_steps[0] + 25, end_steps[0] + 30))
    assert text_steps[4] > end_steps[4] + 10
    # "okay", heard after the burst, opens a new hold
    assert text_steps[5] == end_steps[5] + 25


async def test_hold_over_the_wire() -> None:
    from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator

    from .support import open_client

    speech = synthesize("hello everyone, the meeting starts now.", tail_ms=3000)
    async with VLLMRealtimeEmulator(fast=True) as emu:
        emu.hold_s = 2.4  # the sentence lasts 2.3 s
        assert emu.hold_s == pytest.approx(2.4)
        client = await open_client(emu)
        deltas, done = await client.transcribe(speech.samples)
        assert done["text"] == speech.text
        first = next(k for k, d in enumerate(deltas) if d)
        assert all(deltas[first : first + len(speech.words)])  # one burst, no pad inside
        with pytest.raises(ValueError, match="hold_s must be >= 0"):
            emu.hold_s = -1


def test_nothing_kept_per_step_when_not_recording() -> None:
    engine = RealtimeEngine(
        served_model_names=["m"],
        profile=VersionProfile.for_version("0.33.0"),
        math=StepMath(),
        record_messages=False,
    )
    engine.receive_text(UPDATE)
    gen = transcribe(engine, synthesize("it is 2026").samples)
    assert gen.done_text == " it is 2026"
    assert gen.tokens == [] and gen.words_heard == []


def test_rut_starting_inside_a_word_finishes_that_word_only() -> None:
    speech = synthesize("okay 😀 <pause:200> hello world", tail_ms=1500)
    engine = make("en")
    engine.receive_text(COMMIT)
    gen = engine.generations[-1]
    emoji = encode(" 😀")
    for i in range(0, len(speech.samples), 160):
        engine.receive_text(encode_append_pcm(speech.samples[i : i + 160]))
        engine.run_steps(10**9, 0.0)
        if gen.tokens and gen.tokens[-1] == emoji[0] and not engine.rut:
            engine.rut = True  # the emoji's first byte-level piece just went out
    engine.receive_text(COMMIT_FINAL)
    engine.run_steps(10**9, 0.0)
    assert engine.rut and gen.finished_reason == "done"
    assert gen.done_text == " okay 😀"  # no half character, and nothing after it
    assert all("\ufffd" not in d for d in gen.deltas)
    assert "".join(gen.words_heard) == speech.text
