"""Backpressure: when a generation's output falls behind its audio, and when to act on it.

vLLM runs one step per 80 ms of audio. A server that cannot keep up (too many sessions on one
GPU, a long generation, a stall) falls behind, and captions arrive later and later. The lag
is what the connection counts: steps owed for the audio sent, less the steps the server has
answered (``RealtimeConnection.lag_steps``).

A lag over ``max_lag_s`` is not yet a problem: a replay after a reconnect sends seconds of
audio at once, which vLLM then works through faster than real time. Only a lag that stays
over ``max_lag_s`` without shrinking for ``grace_s`` is a server that cannot keep up. Then
:class:`LagWatch` says so once per episode (a warning), and with ``LagPolicy.CATCH_UP`` tells
the core to catch up: the core abandons the lagging generation and continues from the live
edge, dropping (and counting) the backlog. With ``LagPolicy.WAIT`` nothing is dropped.

Each generation has its own :class:`LagWatch`; the core feeds it the lag after each step
(:meth:`LagWatch.stepped`) and after each audio it sends (:meth:`LagWatch.catch_up_due`).
"""

from __future__ import annotations

from .core_types import LagPolicy
from .log import logger

__all__ = ["LagWatch"]


class LagWatch:
    """The lag of one generation against ``max_lag_s``, ``grace_s`` and the policy."""

    __slots__ = ("_max_lag_s", "_grace_s", "_policy", "_warned", "_since", "_at_start")

    def __init__(self, max_lag_s: float, grace_s: float, policy: LagPolicy) -> None:
        self._max_lag_s = max_lag_s
        self._grace_s = grace_s
        self._policy = policy
        self._warned = False  # said so in this episode
        self._since: float | None = None  # over the limit since (restarted while shrinking)
        self._at_start = 0.0  # the lag then

    def stepped(self, lag_s: float) -> None:
        """The server answered a step; ``lag_s`` behind now. Well under the limit again, a
        new episode may be warned about."""
        if self._warned and lag_s < self._max_lag_s / 2:
            self._warned = False

    def catch_up_due(self, lag_s: float, now: float) -> bool:
        """Audio was sent with the server ``lag_s`` behind: True when the lag has stayed over
        ``max_lag_s`` without shrinking for ``grace_s`` and the policy is to catch up."""
        if lag_s <= self._max_lag_s:
            self._since = None
            return False
        if self._since is None:
            self._since, self._at_start = now, lag_s
            if not self._warned:
                self._warned = True
                logger.warning(
                    "vLLM is %.1fs behind the audio (limit %.1fs); policy %s",
                    lag_s,
                    self._max_lag_s,
                    self._policy.value,
                )
            return False
        if now - self._since < self._grace_s:
            return False
        if lag_s < self._at_start:  # catching up: give it another grace period
            self._since, self._at_start = now, lag_s
            return False
        return self._policy is LagPolicy.CATCH_UP
