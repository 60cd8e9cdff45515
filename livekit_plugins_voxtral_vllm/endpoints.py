"""Several vLLM servers behind one ``STT``: which one a socket connects to next.

``base_url`` may name several vLLM replicas (a list, or a comma-separated string in
``VOXTRAL_VLLM_BASE_URL``). :func:`parse_endpoints` validates and normalises that list;
:class:`EndpointPool` keeps what is known about each replica's health and answers one
question for the glue: *where do I connect next?* (:meth:`EndpointPool.choose`).

The rules, all in this module:

- Every endpoint starts HEALTHY. A stream starts on a random healthy one and stays on it
  (``prefer``) while it stays healthy, so a stream's sockets do not hop between servers.
- An endpoint that refused a connect, dropped a socket, lost a generation
  (``processing_error``, an engine death) or stopped answering is COOLING for a cooldown
  (doubling with each failure in a row, up to ``max_cooldown_s``): nothing chooses it while
  another endpoint is usable.
- Once its cooldown is over it is SUSPECT: it is chosen only together with ``probe=True``,
  and the glue asks its ``/health`` before connecting (:meth:`EndpointPool.succeeded` or
  :meth:`EndpointPool.failed` then records the answer).
- When every endpoint is cooling, the one whose cooldown ends first is chosen with no probe:
  the connect attempt is the probe, and the stream's own reconnect backoff and
  ``max_outage_s`` pace the attempts (an outage is "every endpoint down").

The pool is sans-I/O: time arrives as ``now``, and it never touches a socket. One pool is
shared by every stream of a process that names the same endpoints (see ``STT``), so what one
stream learns about a dead replica spares the others the same failed connect.

A replica that is up but refuses the session for the model (``model_not_found``: after a bad
deploy it serves another model) is not unhealthy for everyone, only for the ``STT`` that asks
for that model: :class:`ModelRefusals` keeps such endpoints out, per ``STT``, for a cooldown
that doubles with each refusal in a row.
"""

from __future__ import annotations

import enum
import random
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .discovery import normalize_realtime_url
from .log import logger

__all__ = [
    "Choice",
    "EndpointPool",
    "EndpointState",
    "ModelRefusals",
    "parse_endpoints",
    "shared_pool",
]


def parse_endpoints(value: str | Sequence[str]) -> tuple[str, ...]:
    """Validate and normalise one endpoint or several.

    Args:
        value: a URL (see :func:`~.discovery.normalize_realtime_url`), a comma-separated
            string of URLs (as ``VOXTRAL_VLLM_BASE_URL`` holds them), or a list of URLs.

    Returns:
        The normalised ``ws(s)://host[:port][/prefix]/v1/realtime`` URLs, in the given order.

    Raises:
        ValueError: an empty list or entry, a malformed URL, the same server twice (after
            normalisation), or ``ws://`` mixed with ``wss://``; the message names the entry.
    """
    if isinstance(value, str):
        entries = value.split(",") if "," in value else [value]
    elif isinstance(value, Sequence):
        entries = list(value)
    else:
        raise ValueError(
            f"base_url must be a URL, a comma-separated string of URLs or a list of URLs, "
            f"got {type(value).__name__}"
        )
    if not entries:
        raise ValueError(
            "base_url is an empty list; name at least one vLLM server, e.g. "
            "['ws://gpu-1:8000/v1/realtime', 'ws://gpu-2:8000/v1/realtime']"
        )
    many = len(entries) > 1
    urls: list[str] = []
    for i, raw in enumerate(entries):
        where = f"base_url entry {i + 1} ({raw!r})" if many else f"base_url {raw!r}"
        if not isinstance(raw, str):
            raise ValueError(f"{where} is not a string")
        if not raw.strip():
            raise ValueError(
                f"{where} is empty; separate the servers with single commas, e.g. "
                "ws://gpu-1:8000,ws://gpu-2:8000"
            )
        try:
            url = normalize_realtime_url(raw)
        except ValueError as e:
            if not many:
                raise
            raise ValueError(f"{where}: {e}") from None
        if url in urls:
            first = urls.index(url) + 1
            raise ValueError(
                f"{where} names the same server as entry {first} ({url}); list each "
                "vLLM replica once"
            )
        if urls and urlsplit(url).scheme != urlsplit(urls[0]).scheme:
            raise ValueError(
                f"{where} uses {urlsplit(url).scheme}:// but entry 1 uses "
                f"{urlsplit(urls[0]).scheme}://; put every replica behind the same scheme "
                "(all TLS or none)"
            )
        urls.append(url)
    return tuple(urls)


class EndpointState(str, enum.Enum):
    HEALTHY = "healthy"
    """Chosen freely."""
    COOLING = "cooling"
    """Failed recently: chosen only when every endpoint is cooling."""
    SUSPECT = "suspect"
    """Its cooldown is over: ask its ``/health`` before connecting."""


@dataclass(frozen=True, slots=True)
class Choice:
    """Where to connect: ``url``, after a ``/health`` probe if ``probe``."""

    url: str
    probe: bool = False


@dataclass(eq=False)
class _Health:
    failures: int = 0  # in a row
    cooling_until: float = 0.0
    failed_at: float = 0.0


class EndpointPool:
    """Health bookkeeping of a fixed list of endpoints. See the module docstring.

    Args:
        urls: the endpoints (normalised, distinct; see :func:`parse_endpoints`).
        cooldown_s: how long an endpoint is skipped after its first failure in a row; each
            further failure doubles it, up to ``max_cooldown_s``.
        rng: the random source for the first choice (seed it in tests).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if not urls:
            raise ValueError("an EndpointPool needs at least one endpoint")
        if len(set(urls)) != len(urls):
            raise ValueError(f"duplicate endpoints in {list(urls)!r}")
        if not cooldown_s > 0 or not max_cooldown_s >= cooldown_s:
            raise ValueError(
                f"need 0 < cooldown_s <= max_cooldown_s, got {cooldown_s!r}, {max_cooldown_s!r}"
            )
        self.urls: tuple[str, ...] = tuple(urls)
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._rng = rng or random.Random()
        self._health = {url: _Health() for url in self.urls}

    def state(self, url: str, now: float) -> EndpointState:
        h = self._health[url]
        if h.failures == 0:
            return EndpointState.HEALTHY
        if now < h.cooling_until:
            return EndpointState.COOLING
        return EndpointState.SUSPECT

    def choose(
        self, now: float, *, prefer: str | None = None, skip: Collection[str] = ()
    ) -> Choice | None:
        """Where the next socket should connect.

        Args:
            now: monotonic seconds.
            prefer: the endpoint the stream is on; kept while it is healthy.
            skip: endpoints this caller must not use at all (e.g. discovery found they do not
                serve its model).

        Returns:
            A healthy endpoint (``prefer`` if it is one, else one at random); else the suspect
            that failed longest ago, to be probed; else, every endpoint cooling, the one whose
            cooldown ends first. None only when ``skip`` covers every endpoint.
        """
        usable = [u for u in self.urls if u not in skip]
        if not usable:
            return None
        healthy = [u for u in usable if self._health[u].failures == 0]
        if prefer in healthy:
            return Choice(prefer)
        if healthy:
            return Choice(self._rng.choice(healthy))
        suspects = [u for u in usable if now >= self._health[u].cooling_until]
        if suspects:
            return Choice(min(suspects, key=lambda u: self._health[u].failed_at), probe=True)
        return Choice(min(usable, key=lambda u: self._health[u].cooling_until))

    def failed(self, url: str, now: float, reason: str) -> None:
        """``url`` refused a connect, dropped a socket, lost a generation or failed a probe."""
        h = self._health.get(url)
        if h is None:
            return
        h.failures += 1
        h.failed_at = now
        cooldown = min(self.cooldown_s * 2 ** (h.failures - 1), self.max_cooldown_s)
        h.cooling_until = now + cooldown
        if len(self.urls) > 1:
            logger.warning(
                "vLLM endpoint %s failed (%s); skipping it for %.0fs", url, reason, cooldown
            )

    def succeeded(self, url: str, now: float) -> None:
        """``url`` answered (a session was created, or ``/health`` said 200): healthy again."""
        h = self._health.get(url)
        if h is None or h.failures == 0:
            return
        if len(self.urls) > 1:
            logger.info("vLLM endpoint %s is back", url)
        h.failures = 0
        h.cooling_until = 0.0


_POOLS: weakref.WeakValueDictionary[tuple[tuple[str, ...], float], EndpointPool] = (
    weakref.WeakValueDictionary()
)


def shared_pool(urls: tuple[str, ...], cooldown_s: float) -> EndpointPool:
    """One pool per endpoint list in a process: a replica one stream found dead is skipped
    by the others too."""
    key = (urls, cooldown_s)
    pool = _POOLS.get(key)
    if pool is None:
        pool = EndpointPool(urls, cooldown_s=cooldown_s, max_cooldown_s=max(60.0, cooldown_s))
        _POOLS[key] = pool
    return pool


class ModelRefusals:
    """Endpoints that refused the session because they do not serve the model, each kept out
    for ``cooldown_s``, doubling with each refusal in a row up to ``max_cooldown_s`` (then it
    is tried again: a fixed deploy is picked up without a restart). Sans-I/O."""

    def __init__(self, cooldown_s: float, max_cooldown_s: float = 60.0) -> None:
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max(max_cooldown_s, cooldown_s)
        self._until: dict[str, float] = {}
        self._strikes: dict[str, int] = {}

    def refused(self, url: str, now: float) -> float:
        """``url`` refused the model: returns how long it is kept out."""
        strikes = self._strikes[url] = self._strikes.get(url, 0) + 1
        wait = min(self.cooldown_s * 2.0 ** (strikes - 1), self.max_cooldown_s)
        self._until[url] = now + wait
        return wait

    def strikes(self, url: str) -> int:
        """Refusals in a row from ``url``."""
        return self._strikes.get(url, 0)

    def served(self, url: str) -> None:
        """``url`` serves the model (again): forget its refusals."""
        self._until.pop(url, None)
        self._strikes.pop(url, None)

    def expired(self, now: float) -> list[str]:
        """The endpoints whose cooldown is over (each returned once; their strikes are kept
        until :meth:`served`)."""
        done = [url for url, until in self._until.items() if until <= now]
        for url in done:
            del self._until[url]
        return done
