"""Dense Chinese and Japanese at the smallest limits STT accepts (issue 11, items 2 and 5):
every word and character exactly once across rollovers and allowance splits.

The cases are scripts the seeded sweep (``python -m tests.unit.limits_sweep``) found, each
for one cause:

- digits and emoji written with no space in a script without spaces ("😀2026 2026" comes
  out as "😀20262026"): one run of pieces that may be several spoken words, whose first token
  tells only where the first one ended; a rollover kept it, cut after its first word, and the
  next generation wrote the rest again;
- an emoji right before a CJK word took that word's onset (the output was backed up), so the
  word taken out at a rollover was placed after it and the cut fell inside it: lost;
- a generation reaching its allowance in the middle of a word: the word was split between
  two generations and neither heard it whole (the last stretch before the allowance is now
  held back until a quiet point in it can be chosen);
- the split-off-run rule applied only once when the run's head was split off in turn;
- the full stop right after an allowance split was dropped (the caption had been closed);
- a space written between a kept "😀" and the continuation's "2026";
- a one-token word ("あなた") whose end was placed 30 ms after its onset (an empty step
  before it taken for a held byte): the cut fell in the gap before it, and it came twice.
"""

from __future__ import annotations

import os

import pytest

from . import limits_sweep
from .limits_sweep import Case, run_case

pytest.importorskip("mistral_common", reason="the real-token mode needs the [emulator] extra")

CASES = {
    # (each failed before its fix; the comment says which)
    "glued digits and emoji kept at a rollover (ja)": Case(
        80,
        120,
        "ja",
        "ラーメン <pause:1500> 新幹線 始まります 始まります <pause:400> 始まります 😀 2026 2026 "
        "<pause:400> スライド スライド 始まります <pause:150> 新幹線 <pause:400> 聞こえます "
        "始まります 始まります 。",
        "0.33.0",
    ),  # "😀20262026 2026"
    "glued emoji and digits kept at a rollover (zh)": Case(
        480,
        131,
        "zh",
        "幻灯片 <pause:900> 电脑 😀 <pause:150> 会议 <pause:1500> 幻灯片 散步 <pause:1500> 公园 "
        "2026 会议 会议 <pause:400> 明天 <pause:400> 2026 <pause:150> 散步 😀 2026 <pause:400> "
        "电脑 <pause:400> 公园 电脑 公园 。",
        "0.31.0",
    ),  # "😀2026 2026"
    "a CJK word whose onset the emoji before it took": Case(
        80,
        118,
        "ja",
        "始まります <pause:150> 😀 <pause:150> ラーメン ラーメン <pause:400> 始まります "
        "<pause:400> 聞こえます コーヒー 😀 新幹線 <pause:400> 始まります <pause:900> 2026 "
        "ラーメン <pause:150> ラーメン <pause:400> 聞こえます 。",
        "0.31.0",
    ),  # 新幹線 lost
    "allowance reached inside a word (聞こえます)": Case(
        480,
        127,
        "ja",
        "スライド <pause:900> ラーメン <pause:900> 2026 聞こえます スライド <pause:1500> 😀 "
        "<pause:900> 聞こえます <pause:400> 新幹線 😀 ラーメン 始まります <pause:400> 聞こえます "
        "聞こえます <pause:400> 新幹線 ラーメン 始まります スライド <pause:400> 聞こえます "
        "<pause:900> スライド ラーメン <pause:150> コーヒー <pause:900> スライド <pause:1500> "
        "新幹線 始まります 。",
        "0.31.0",
    ),  # one 聞こえます lost
    "allowance reached inside a word (😀)": Case(
        480,
        148,
        "ja",
        "聞こえます 聞こえます コーヒー <pause:1500> コーヒー 聞こえます 新幹線 2026 <pause:400> "
        "スライド 2026 <pause:400> ラーメン 新幹線 コーヒー スライド <pause:400> 😀 2026 "
        "<pause:400> ラーメン <pause:150> スライド 新幹線 <pause:400> 2026 😀 <pause:900> 😀 "
        "<pause:150> コーヒー 。",
        "0.31.0",
    ),  # one 😀 lost
    "a split-off run whose head was split off too": Case(
        480,
        137,
        "ja",
        "聞こえます <pause:1500> スライド <pause:1500> コーヒー <pause:900> 聞こえます 2026 "
        "スライド <pause:1500> コーヒー <pause:150> 2026 <pause:400> コーヒー コーヒー <pause:150> "
        "新幹線 始まります <pause:400> 2026 スライド 😀 聞こえます <pause:400> コーヒー 😀 "
        "ラーメン コーヒー <pause:400> コーヒー <pause:150> 新幹線 ラーメン <pause:150> 😀 。",
        "0.33.0",
    ),  # 😀 lost (with the glued-run fix alone)
    "the full stop after an allowance split": Case(
        480,
        133,
        "ja",
        "聞こえます 新幹線 <pause:900> 新幹線 <pause:400> 新幹線 <pause:1500> コーヒー <pause:400> "
        "2026 <pause:150> ラーメン 聞こえます ラーメン <pause:400> スライド <pause:400> ラーメン "
        "<pause:150> コーヒー コーヒー 2026 <pause:400> コーヒー ラーメン 。",
        "0.31.0",
    ),  # "。" dropped (with the held-back allowance alone)
    "no space between a kept emoji and the continuation's digits": Case(
        80,
        117,
        "zh",
        "会议 公园 会议 <pause:150> 2026 <pause:400> 2026 <pause:900> 会议 散步 <pause:400> 😀 "
        "<pause:150> 明天 <pause:400> 电脑 <pause:400> 会议 <pause:400> 散步 公园 2026 "
        "<pause:400> 😀 <pause:400> 2026 <pause:900> 公园 😀 。",
        "0.31.0",
    ),  # "2026 😀2026"
    "a one-token word placed too early (あなた)": Case(
        80,
        112,
        "ja",
        "今日 を <pause:900> の <pause:900> ようこそ <pause:400> は <pause:400> スライド あなた "
        "始まります プロジェクト <pause:400> あなた <pause:400> 会議 <pause:900> これ 。",
        "0.33.0",
    ),  # "あなたあなた" (the placed end 30 ms after its onset: the cut fell before it)
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_script_every_character_once(name: str) -> None:
    case = CASES[name]
    ok, why, want, got = run_case(case)
    assert ok, f"{why}\n want {want}\n got  {got}"


SWEEP = int(os.environ.get("I11_SWEEP", "24"))


@pytest.mark.parametrize("first", range(0, SWEEP, 12))
def test_seeded_sweep_of_dense_scripts(first: int) -> None:
    """Seeds of ``limits_sweep`` (dense zh/ja, delay 80/160/480 ms, max_model_len from the
    least accepted to 40 more, vLLM 0.31/0.33). ``I11_SWEEP=5000`` runs more (0 of 5000
    failed when this was written; see the module for how to trace one)."""
    failed = []
    for seed in range(first, min(first + 12, SWEEP)):
        ok, why, want, got = run_case(limits_sweep.draw_case(seed))
        if not ok:
            failed.append(f"seed {seed}: {why}\n want {want}\n got  {got}")
    assert not failed, "\n".join(failed)
