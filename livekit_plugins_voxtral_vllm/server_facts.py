"""What the vLLM servers say about themselves, and what an ``STT`` concludes from it.

Before its first socket, and again whenever a replica comes back, an ``STT`` asks each
endpoint's ``/health``, ``/version`` and ``/v1/models`` (:func:`~.discovery.discover`).
:class:`ServerFacts` keeps those answers for every stream of the ``STT`` and draws three
conclusions from them:

- which endpoints this ``STT`` cannot use at all (its model is not served there, or the
  version cannot serve ``/v1/realtime`` with an API key): with several endpoints they are
  skipped (:attr:`ServerFacts.excluded`), with one the stream reports the problem itself;
- the limits a stream's core needs (:meth:`ServerFacts.limits`): the ``max_model_len`` to roll
  over before (the smallest of the usable endpoints, since a generation may continue on any
  of them) and whether closing a socket aborts its request (vLLM >= 0.32 on every one);
- whether a suspect endpoint answers again (:meth:`ServerFacts.probe`).

An endpoint that discovery let through can still refuse the session for the model
(``model_not_found``: after a bad deploy it serves another model). With several endpoints it
is then skipped for a cooldown (:meth:`ServerFacts.model_refused`, doubling with each refusal
in a row, up to 60 s), after which it is tried again (:meth:`ServerFacts.skipped`).

Discovery never breaks transcription: a server that does not answer in time is simply not
known yet, and what it says later is applied then (``on_changed``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping

import aiohttp
from livekit.agents import APIStatusError, utils

from .api_errors import no_usable_endpoint, refuse_broken
from .discovery import ServerInfo, discover
from .endpoints import ModelRefusals
from .log import logger
from .stt_options import ENV_MODEL, STTOptions

__all__ = ["ServerFacts"]

_PROBE_TIMEOUT_S = 2.0  # a suspect endpoint's /health (and /version, /v1/models) probe


class ServerFacts:
    """What each endpoint of one ``STT`` said about itself, and the endpoints it cannot use.

    Args:
        opts: the ``STT``'s options (endpoints, model, API key, ``max_model_len``,
            ``discover_server``).
        http_session: returns the aiohttp session to ask with.
        ssl_context: for ``https://`` with a private CA.
        on_changed: called when an endpoint that had answered before answers differently
            (a replica came back upgraded, or serving other models).
    """

    def __init__(
        self,
        opts: STTOptions,
        *,
        http_session: Callable[[], aiohttp.ClientSession],
        ssl_context: ssl.SSLContext | None,
        on_changed: Callable[[], None],
    ) -> None:
        self._opts = opts
        self._http_session = http_session
        self._ssl = ssl_context
        self._on_changed = on_changed
        self.infos: dict[str, ServerInfo] = {}
        """The latest answer of each endpoint that answered."""
        self.excluded: dict[str, str] = {}
        """Endpoints this STT cannot use (its model not served, a broken version): url -> why."""
        self._discoveries: dict[str, asyncio.Task[ServerInfo]] = {}
        # of the excluded, those that refused the session for the model: url -> why
        self._refused: dict[str, str] = {}
        self._refusals = ModelRefusals(opts.endpoint_cooldown_s)

    def skipped(self, now: float) -> dict[str, str]:
        """The endpoints not to use now (:attr:`excluded`), after letting back in those whose
        model refusal has cooled down."""
        for url in self._refusals.expired(now):
            why = self._refused.pop(url, None)
            if why is not None and self.excluded.get(url) == why:
                del self.excluded[url]
                logger.info("trying vLLM endpoint %s again for %r", url, self._opts.model)
        return self.excluded

    def model_refused(self, url: str, now: float) -> bool:
        """With several endpoints, ``url`` refused the session because it does not serve the
        model (``model_not_found``): skip it for a cooldown (one warning, naming what it
        serves when discovery knows). False when no endpoint is left."""
        if url not in self._refused:  # (not another socket's refusal, already counted)
            wait = self._refusals.refused(url, now)
            info = self.infos.get(url)
            serves = ""  # (what discovery said, unless it still listed the model: it changed)
            if info is not None and info.models and info.model(self._opts.model) is None:
                serves = ", ".join(m.id for m in info.models)
            why = f"it does not serve {self._opts.model!r} (model_not_found" + (
                f"; it serves: {serves})" if serves else ")"
            )
            self.excluded[url] = self._refused[url] = why
            logger.log(
                logging.WARNING if self._refusals.strikes(url) == 1 else logging.INFO,
                "skipping vLLM endpoint %s for %.0fs: %s",
                url,
                wait,
                why,
            )
        return any(u not in self.excluded for u in self._opts.endpoints)

    async def every_endpoint_refused(self, timeout: float) -> APIStatusError:
        """The configuration error when no endpoint is left for the model: what each one
        serves, asked now (what it said before may be what changed)."""

        async def serves(url: str) -> str:
            try:
                info = await discover(
                    self._http_session(),
                    url,
                    api_key=self._opts.api_key,
                    timeout=min(5.0, timeout),
                    ssl_context=self._ssl,
                )
            except Exception as e:  # the message is still useful without the list
                logger.debug("could not list the models served at %s: %s", url, e)
                return f"{url}: {self.excluded.get(url, 'refused')}"
            return f"{url} serves {', '.join(m.id for m in info.models) or 'no model listed'}"

        where = await asyncio.gather(*(serves(u) for u in self._opts.endpoints))
        return APIStatusError(
            f"no vLLM endpoint serves model {self._opts.model!r} (the last one left refused "
            f"the session with model_not_found): {'; '.join(where)}. Set model= (or "
            f"{ENV_MODEL}) to a served name, or serve that model on the replicas",
            status_code=404,
            retryable=False,
        )

    def start(self, url: str) -> asyncio.Task[ServerInfo]:
        """Ask ``url`` about itself, unless a question is under way or was answered."""
        task = self._discoveries.get(url)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self.discover(url), name="voxtral_vllm.discover")
            self._discoveries[url] = task
        return task

    async def discover(self, url: str, timeout: float = 5.0) -> ServerInfo:
        """Ask ``url`` now and record its answer (raises what :func:`discover` raises)."""
        info = await discover(
            self._http_session(),
            url,
            api_key=self._opts.api_key,
            timeout=timeout,
            ssl_context=self._ssl,
        )
        before = self.infos.get(url)
        self.infos[url] = info
        if before is None or (before.version, before.models) != (info.version, info.models):
            where = f" at {url}" if len(self._opts.endpoints) > 1 else ""
            for note in info.quirks.describe():
                logger.warning("vLLM %s%s: %s", info.version, where, note)
            self._review(url, info)
            if before is not None:  # a replica came back different (e.g. upgraded)
                self._on_changed()
        return info

    async def gather(self, timeout: float) -> dict[str, ServerInfo] | None:
        """What the endpoints said about themselves, waiting at most ``timeout`` for them
        (None when discovery is off or nothing answered in time)."""
        if not self._opts.discover_server:
            return None
        tasks = [self.start(url) for url in self._opts.endpoints]
        if not all(url in self.infos for url in self._opts.endpoints):
            await asyncio.wait(tasks, timeout=timeout)  # (leaves the tasks running)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                # discovery must never break transcription
                logger.debug("vLLM discovery failed: %s", task.exception())
        return dict(self.infos) or None

    async def probe(self, url: str) -> bool:
        """Ask a suspect endpoint's ``/health`` (and refresh what it says about itself)."""
        try:
            info = await self.discover(url, timeout=_PROBE_TIMEOUT_S)
        except Exception as e:  # an unreachable server is what a probe is for
            logger.debug("probe of %s: %s", url, e)
            return False
        return bool(info.healthy) and url not in self.excluded

    def limits(self, infos: Mapping[str, ServerInfo] | None) -> tuple[int | None, bool]:
        """max_model_len for rollover, and whether closing a socket aborts its request.

        With several endpoints a generation may continue on any of them, so the smallest
        max_model_len applies, and closing aborts only if it does on every one (>= 0.32).
        Raises APIStatusError when no endpoint is usable."""
        max_model_len = self._opts.max_model_len
        if not infos:
            return max_model_len, True
        excluded = self.excluded
        usable = {u: i for u, i in infos.items() if u not in excluded}
        if not usable and infos.keys() >= set(self._opts.endpoints):
            raise no_usable_endpoint(excluded)
        lens: list[int] = []
        old_any = False
        for info in usable.values():
            if len(self._opts.endpoints) == 1:
                refuse_broken(info, api_key=self._opts.api_key)
            served = info.model(self._opts.model)
            mml = served.max_model_len if served is not None else None
            old = info.quirks.engine_dies_at_max_model_len  # < 0.32 (also: no abort on close)
            old_any = old_any or old
            if mml is None and old and max_model_len is None:
                logger.warning(
                    "vLLM %s dies at max_model_len and did not report it; assuming 4096",
                    info.version,
                )
                mml = 4096
            if mml is not None:
                lens.append(mml)
        if max_model_len is None and lens:
            max_model_len = min(lens)
            if len(set(lens)) > 1:
                logger.info(
                    "the vLLM endpoints differ in max_model_len (%s): rolling over before the "
                    "smallest, since a generation may continue on any of them",
                    sorted(set(lens)),
                )
        return max_model_len, not old_any

    async def aclose(self) -> None:
        """Stop asking."""
        tasks, self._discoveries = list(self._discoveries.values()), {}
        for task in tasks:
            if not task.done():
                await utils.aio.cancel_and_wait(task)

    # Private methods

    def _review(self, url: str, info: ServerInfo) -> None:
        """With several endpoints, one whose discovery shows this STT cannot use it (its model
        is not served there, or its version breaks the API key) is skipped, not fatal."""
        if len(self._opts.endpoints) == 1:
            return  # the stream reports the problem itself, with the server's own words
        problem = None
        if self._opts.api_key and info.quirks.api_key_breaks_websocket:
            problem = f"vLLM {info.version} cannot serve /v1/realtime with --api-key"
        elif info.models and info.model(self._opts.model) is None:
            problem = f"it does not serve {self._opts.model!r} (it serves: " + (
                ", ".join(m.id for m in info.models) + ")"
            )
        if problem is None:
            self._refusals.served(url)
            self._refused.pop(url, None)
            if self.excluded.pop(url, None) is not None:
                logger.info("vLLM endpoint %s is usable again", url)
        elif self.excluded.get(url) != problem:
            self.excluded[url] = problem
            logger.warning("skipping vLLM endpoint %s: %s", url, problem)
