"""What the emulator's tone "words" mean, per language.

The tone speech of :mod:`.speech` has 63 *slots* (60 words and 3 punctuation marks), each a
pure tone. A slot carries no language: the emulator's ``language`` decides which text it
transcribes. Each language's :class:`Lexicon` gives every slot a script word (what a test writes
in ``synthesize("...", language=...)``) and the exact text the model emits for it:

- languages written with spaces (en, fr, de, es): ``" word"`` with a leading space, as Tekken
  tokens carry it; punctuation is bare (``"."``, ``","``), except French's ``" ?"``;
- Chinese and Japanese: no spaces at all (``"公园"``, ``"。"``); in scripts, spaces only
  separate the words.

The lexicons are chosen to exercise what real Voxtral output contains: words of one and of
several Tekken tokens, numbers (``" 2026"`` is five tokens), apostrophes (``" don't"``,
``" aujourd'hui"``), accents and umlauts (``" Zoë"``, ``" pingüino"``), emoji (four byte-level
tokens), and CJK characters whose UTF-8 bytes are split across tokens (``"公园"``).
English keeps the 60-word vocabulary of earlier versions, except three slots that read
``2026``, ``don't`` and ``😀`` instead of ``today``, ``question`` and ``tomorrow``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["LANGUAGES", "SLOT_NAMES", "Lexicon", "lexicon"]

SLOT_NAMES: tuple[str, ...] = tuple(
    "the a and to of is it we you hello world quick brown fox jumps over lazy dog meeting "
    "starts now today tomorrow please thank yes no okay can hear me good morning everyone let "
    "us begin next slide question answer time team project update done ready stop wait one two "
    "three this that what how are all here welcome . , ?".split()
)
"""The 63 slots, named by the English words of earlier versions (the tone layout is theirs)."""

_MARKER_SLOTS = (".", ",", "?")

_WORDS: dict[str, str] = {
    "en": (
        "the a and to of is it we you hello world quick brown fox jumps over lazy dog meeting "
        "starts now 2026 😀 please thank yes no okay can hear me good morning everyone let "
        "us begin next slide don't answer time team project update done ready stop wait one two "
        "three this that what how are all here welcome"
    ),
    "fr": (
        "le une et à de est il nous vous bonjour monde rapide la renard saute sur paresseux "
        "chien réunion commence maintenant aujourd'hui demain s'il merci oui non d'accord peut "
        "entendre c'est bonne matinée Zoë allons-y ensemble commençons prochaine "
        "diapositive question réponse temps équipe projet 2026 terminé prêt arrête attendez "
        "😀 deux trois ceci cela quoi comment êtes tous ici bienvenue"
    ),
    "de": (
        "der ein und zu von ist es wir ihr hallo Welt schnelle die Fuchs springt über faule "
        "Hund Besprechung beginnt jetzt heute morgen bitte danke ja nein okay kann hören mich "
        "guten Vormittag alle geht's los anfangen nächste Folie Frage Antwort Zeit Straße "
        "Größe Aktualisierung fertig bereit 2026 warten eins zwei drei dies das 🎉 wie seid "
        "Zoë hier willkommen"
    ),
    "es": (
        "el una y a de es lo nosotros usted hola mundo rápido la zorro salta sobre "
        "perezoso perro reunión empieza ahora hoy mañana por gracias sí no vale puede oír me "
        "buenos días todos vamos nos comenzar siguiente diapositiva ¿qué respuesta tiempo "
        "equipo proyecto 2026 hecho listo pingüino espera uno dos tres esto eso año cómo "
        "están niño aquí 😀"
    ),
    "zh": (
        "我 你 他 她 在 是 的 了 和 不 你好 世界 公园 散步 会议 开始 现在 今天 明天 请 "
        "谢谢 是的 没有 好的 可以 听到 早上 大家 我们 下 一张 幻灯片 问题 回答 时间 团队 "
        "项目 更新 完成 准备 停止 等待 一 二 三 这个 那个 什么 怎么 都 这里 欢迎 吧 2026 "
        "年 😀 北京 上海 电脑 手机"
    ),
    "ja": (
        "私 あなた 彼 彼女 で は の が を に こんにちは 世界 会議 始まります 今 今日 明日 "
        "お願いします ありがとう はい いいえ 大丈夫 聞こえます おはよう ございます 皆さん "
        "次 スライド 質問 答え 時間 チーム プロジェクト 更新 完了 準備 止まって 待って 一 二 "
        "三 これ それ 何 どう 全部 ここ ようこそ 2026 年 😀 東京 です ます 公園 散歩 "
        "電話 コーヒー 新幹線 ラーメン"
    ),
}
"""Script words per language, in slot order (60 each)."""

_PUNCTUATION: dict[str, tuple[tuple[str, str], ...]] = {
    # (script word, transcript text) for the slots ".", ",", "?"
    "en": ((".", "."), (",", ","), ("?", "?")),
    "fr": ((".", "."), (",", ","), ("?", " ?")),
    "de": ((".", "."), (",", ","), ("?", "?")),
    "es": ((".", "."), (",", ","), ("?", "?")),
    "zh": (("。", "。"), ("，", "，"), ("？", "？")),
    "ja": (("。", "。"), ("、", "、"), ("？", "？")),
}

_NO_SPACES = frozenset({"zh", "ja"})

LANGUAGES: tuple[str, ...] = tuple(_WORDS)
"""The languages the emulator can speak: en, fr, de, es, zh, ja."""


@dataclass(frozen=True, eq=False)
class Lexicon:
    """One language's script words and transcript texts for the 63 tone slots."""

    language: str
    words: tuple[str, ...]
    """Script word of each slot (index = slot), punctuation last."""
    texts: tuple[str, ...]
    """Exact transcript text of each slot (``" word"``, ``"公园"``, ``"."``)."""
    markers: frozenset[str]
    """The script words that are punctuation (single characters)."""
    _slots: Mapping[str, int] = field(repr=False)

    def slot(self, word: str) -> int:
        """The slot of a script word; ``ValueError`` naming close matches if unknown."""
        slot = self._slots.get(word)
        if slot is not None:
            return slot
        hint = ""
        if self.language in _NO_SPACES and len(word) > 1:
            hint = f" (separate {self.language} script words with spaces)"
        elif close := difflib.get_close_matches(word, list(self._slots), n=3):
            hint = f" (did you mean {', '.join(map(repr, close))}?)"
        raise ValueError(
            f"unknown {self.language} word {word!r}{hint}: only the words of "
            f"livekit_plugins_voxtral_vllm.testing.lexicon({self.language!r}).words "
            "can be synthesized"
        )

    def text(self, word: str) -> str:
        """The transcript text of a script word."""
        return self.texts[self.slot(word)]


def _build(language: str) -> Lexicon:
    words = _WORDS[language].split()
    punctuation = _PUNCTUATION[language]
    spaced = language not in _NO_SPACES
    texts = [(" " + w) if spaced else w for w in words]
    words += [script for script, _ in punctuation]
    texts += [text for _, text in punctuation]
    assert len(words) == len(SLOT_NAMES) == 63, (language, len(words))
    assert len(set(words)) == len(words), language
    for w in words:
        assert not any(c.isspace() or c in "<>" for c in w), w
    markers = frozenset(script for script, _ in punctuation)
    assert all(len(m) == 1 for m in markers)
    for w in words[:60]:
        assert not any(m in w for m in markers), (language, w)
    slots = MappingProxyType({w: i for i, w in enumerate(words)})
    return Lexicon(language, tuple(words), tuple(texts), markers, slots)


_LEXICONS: Mapping[str, Lexicon] = MappingProxyType({lang: _build(lang) for lang in LANGUAGES})


def lexicon(language: str) -> Lexicon:
    """The :class:`Lexicon` of ``language`` (one of :data:`LANGUAGES`)."""
    lex = _LEXICONS.get(language)
    if lex is None:
        raise ValueError(
            f"unsupported emulator language {language!r}: use one of {', '.join(LANGUAGES)}"
        )
    return lex
