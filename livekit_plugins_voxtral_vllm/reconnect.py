"""Reconnecting to a server that cannot be reached: when to try again, and when to give up.

A socket that could not be opened, or that closed before vLLM's ``session.created``, is a
connect failure; a ``session.created`` ends the run of failures. A vLLM restart loads weights
and compiles for minutes, so a stream keeps trying, less and less often
(:meth:`ReconnectBackoff.schedule_retry`: 0.1 s after the first failure, then
``interval_s`` doubling up to ``max(interval_s, 10 s)``), and gives up
(:meth:`ReconnectBackoff.exhausted`) only after more than ``max_attempts`` failures in a row
*and* ``max_outage_s`` since the first of them.

:class:`ReconnectBackoff` only counts and keeps the clock (``now`` comes from the core, which
asks it after each lane it drops); opening lanes and replaying audio stay in the core.
"""

from __future__ import annotations

__all__ = ["ReconnectBackoff"]


class ReconnectBackoff:
    """Connect failures in a row, the next retry, and the outage they make up."""

    __slots__ = ("failures", "retry_at", "_since", "_max_attempts", "_interval_s", "_max_outage_s")

    def __init__(self, *, max_attempts: int, interval_s: float, max_outage_s: float) -> None:
        self._max_attempts = max_attempts
        self._interval_s = interval_s
        self._max_outage_s = max_outage_s
        self.failures = 0
        """Connect failures in a row (0: the server answers)."""
        self.retry_at: float | None = None
        """When to open a lane again (None: not waiting)."""
        self._since = 0.0  # the first failure of the run

    def connect_failed(self) -> None:
        """A socket could not be opened, or closed before ``session.created``."""
        self.failures += 1

    def connected(self) -> None:
        """``session.created``: the server answers again."""
        self.failures = 0

    def reset(self) -> None:
        """Start over (the glue retries the whole stream): no failures, no retry pending."""
        self.failures = 0
        self.retry_at = None

    def lane_dropped(self, now: float) -> None:
        """A lane was dropped: the first failure of a run starts the outage clock."""
        if self.failures == 1:
            self._since = now

    def exhausted(self, now: float) -> bool:
        """Whether to give up: more than ``max_attempts`` failures, over ``max_outage_s``."""
        return self.failures > self._max_attempts and now - self._since >= self._max_outage_s

    def give_up_message(self, now: float, reason: str) -> str:
        return (
            f"could not reach the vLLM server for {now - self._since:.0f}s "
            f"({self.failures} attempts; last: {reason})"
        )

    def schedule_retry(self, now: float) -> bool:
        """After a failure, set :attr:`retry_at` unless one is pending; True when it did (the
        core then waits for it)."""
        if not self.failures or self.retry_at is not None:
            return False
        # A vLLM restart takes minutes (weights, compilation): keep trying, less often.
        n = self.failures
        interval = self._interval_s
        backoff = 0.1 if n == 1 else min(interval * 2 ** (n - 2), max(interval, 10.0))
        self.retry_at = now + backoff
        return True

    def retry_due(self, now: float) -> bool:
        """True (once) when the pending retry is due."""
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            return True
        return False
