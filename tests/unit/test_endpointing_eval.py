"""The endpointing evaluation (``benchmarks/endpointing.py``) in its short mode: it runs, its
metrics mean what they say (the oracle is perfect by construction), and it tells the
endpointers apart (the energy one loses sentences in white noise at 5 dB; the default does
not, and opens nothing on typing alone)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _endpointing_audio as A  # noqa: E402
import endpointing  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (A.have_alsa_prompts() and A.have_espeak()) and not os.environ.get("CI"),
    reason="Debian's alsa-utils and espeak-ng are not installed (.ci/run installs them)",
)


def test_short_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "endpointing.json"
    report = endpointing.main(
        ["--short", "--systems", "oracle,energy,default,silero-lk", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["sources"] == ["alsa", "espeak"]
    res = report["results"]
    speech = [c for c in report["conditions"] if "alone" not in c]
    for cond in speech:
        oracle = res["oracle"][cond]
        assert oracle["sentences"] >= 10
        assert oracle["coverage"] == 1.0
        assert oracle["missed"] == oracle["clipped"] == oracle["split"] == 0
        assert oracle["end_latency_p50_s"] == pytest.approx(0.6, abs=0.01)
        default = res["default"][cond]
        assert default["missed"] == 0 and default["coverage"] >= 0.99, (cond, default)
    assert res["energy"]["white 5 dB"]["missed"] > 0
    assert res["default"]["keyboard alone"]["gen_s_per_min"] == 0.0
    assert res["oracle"]["keyboard alone"]["gen_s_per_min"] == 0.0
    for name in ("energy", "default", "silero-lk"):
        assert res[name]["_cpu_pct_core"] > 0


def test_unknown_system_is_named() -> None:
    with pytest.raises(SystemExit):
        endpointing.main(["--short", "--systems", "nope"])
