"""The prewarmed socket: one ``/v1/realtime`` socket an ``STT`` opens before its first stream.

With ``socket_mode="warm"``, ``STT.prewarm()`` (LiveKit calls it when the worker starts a
job) opens one socket ahead of the first stream, so the first utterance does not wait for a
connect. :class:`WarmSocket` owns that one socket:

- :meth:`WarmSocket.open` connects to a healthy endpoint (never one the pool wants probed
  first, nor one this STT cannot use); a failed connect is only logged, since the stream
  then connects, and reports, on its own;
- :meth:`WarmSocket.take` hands it to the first stream that asks, if it is still open and
  its endpoint still healthy (and, when the stream already has an endpoint, on that one);
- nobody reads the socket while it waits, so nobody answers the server's pings: it is closed
  after ``expire_s`` if no stream took it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

import aiohttp
from livekit.agents import utils

from .endpoints import EndpointPool, EndpointState
from .log import logger

__all__ = ["WARM_SOCKET_S", "WarmSocket"]

WARM_SOCKET_S = 15.0  # how long a prewarmed socket waits for its stream

_Warm = tuple[str, aiohttp.ClientWebSocketResponse]


class WarmSocket:
    """At most one prewarmed socket, ``(endpoint, socket)``, waiting for a stream."""

    def __init__(self, pool: EndpointPool, expire_s: float = WARM_SOCKET_S) -> None:
        self._pool = pool
        self._expire_s = expire_s
        self._task: asyncio.Task[_Warm | None] | None = None
        self._closing: asyncio.Future[bool] | None = None

    def open(
        self,
        connect: Callable[[str], Awaitable[aiohttp.ClientWebSocketResponse]],
        skip: Collection[str],
    ) -> None:
        """Start connecting (with ``connect(url)``) unless a socket is open or opening;
        endpoints in ``skip`` are not used. Needs a running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._open(connect, skip), name="voxtral_vllm.prewarm")

    def take(self, endpoint: str | None) -> _Warm | None:
        """The prewarmed socket, if one is open, unclaimed, and on ``endpoint`` (any healthy
        endpoint when None)."""
        warm = self._task
        if warm is None or not warm.done() or warm.cancelled() or warm.exception() is not None:
            self._task = None
            if warm is not None and not warm.done():
                warm.cancel()
            return None
        got = warm.result()
        if got is None or got[1].closed:
            self._task = None
            return None
        url = got[0]
        now = asyncio.get_running_loop().time()
        if (endpoint is not None and url != endpoint) or self._pool.state(
            url, now
        ) is not EndpointState.HEALTHY:
            return None  # not for this stream; it expires on its own
        self._task = None
        return got

    async def aclose(self) -> None:
        """Stop connecting, and close the socket if no stream took it."""
        warm, self._task = self._task, None
        if warm is not None:
            await utils.aio.cancel_and_wait(warm)
            if not warm.cancelled() and warm.exception() is None:
                got = warm.result()
                if got is not None:
                    await got[1].close()

    # Private methods

    async def _open(
        self,
        connect: Callable[[str], Awaitable[aiohttp.ClientWebSocketResponse]],
        skip: Collection[str],
    ) -> _Warm | None:
        choice = self._pool.choose(asyncio.get_running_loop().time(), skip=skip)
        if choice is None or choice.probe:
            return None
        try:
            ws = await connect(choice.url)
        except Exception as e:  # the stream will connect (and report) on its own
            logger.debug("prewarm: %s", e)
            return None
        # Nobody reads it, so nobody answers the server's pings: do not keep it long.
        asyncio.get_running_loop().call_later(self._expire_s, self._expire, ws)
        return choice.url, ws

    def _expire(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        warm = self._task
        if warm is not None and warm.done() and (warm.result() or ("", None))[1] is ws:
            self._task = None
        if not ws.closed:
            self._closing = asyncio.ensure_future(ws.close())
