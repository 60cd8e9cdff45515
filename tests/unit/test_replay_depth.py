"""replay_depth: how much of a stopped generation's incomplete last word is replayed."""

from __future__ import annotations

from livekit_plugins_voxtral_vllm.replay_depth import replay_depth
from livekit_plugins_voxtral_vllm.segmenter import ResumePoint


def _points(units: int) -> dict[int | None, ResumePoint]:
    """Taking out ``n`` units resumes at ``10 - n`` s; all of them (None) at 10 - units."""
    out: dict[int | None, ResumePoint] = {
        n: ResumePoint(10.0 - n, 1, before_s=11.0 - n, units=n) for n in range(1, units + 1)
    }
    out[None] = out[units]
    return out


def test_nothing_to_take_out_replays_nothing() -> None:
    asked: list[ResumePoint] = []
    point = ResumePoint(4.0, 1)

    def moves_on(p: ResumePoint) -> bool:
        asked.append(p)
        return False

    assert replay_depth(lambda n: point, moves_on, 1) == (False, None)
    assert asked == []


def test_all_the_runs_when_that_moves_on() -> None:
    points = _points(5)
    assert replay_depth(points.__getitem__, lambda p: p.resume_s > 4.0, 1) == (False, None)


def test_the_most_runs_that_move_on_nearest_the_word_first() -> None:
    points = _points(5)
    tried: list[int] = []

    def moves_on(p: ResumePoint) -> bool:
        tried.append(p.units)
        return p.resume_s > 6.5  # from 3 units out: 10 - 3 = 7 s

    assert replay_depth(points.__getitem__, moves_on, 1) == (False, 3)
    assert tried == [5, 4, 3]


def test_the_word_is_kept_when_not_even_it_alone_moves_on() -> None:
    points = _points(3)
    assert replay_depth(points.__getitem__, lambda p: False, 1) == (True, None)
