"""The socket writer of one lane (one vLLM ``/v1/realtime`` socket of a stream).

:class:`LaneIO` holds a lane's socket and writes the text frames the core gives it, in order.
A frame is written at once, in the caller, when nothing is queued: a step's audio reaches the
transport with no task switch (issue 13). When the transport pushes back (aiohttp's flow
control) or frames are already waiting, its writer task (:meth:`LaneIO.write_loop`) sends
them. A server that stops reading altogether fills the queue: the lane reports itself lost
and the core replays what that socket was owed on another.

Connecting and reading stay in ``stt.py`` (``SpeechStream._lane_loop``): they decide which
server to use and feed the core, which this module knows nothing about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import aiohttp
from livekit.agents import utils

from .log import logger

__all__ = ["LaneIO"]

_MAX_OUTBOX = 400  # ~32 s of 80 ms appends waiting on one socket: the server stopped reading


class LaneIO:
    """The socket of one lane. Frames are written at once, in the caller, when nothing is
    queued: a step's audio reaches the socket with no task switch. When the transport pushes
    back (flow control) or frames are already waiting, the writer task sends them, in order.
    Closing lets the writer flush what is queued (e.g. a final commit) and then close."""

    def __init__(self, lane: int, on_lost: Callable[[LaneIO, str], None]) -> None:
        self.lane = lane
        self._on_lost = on_lost
        self.endpoint: str | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._outbox: list[str] = []
        self._wake = asyncio.Event()
        self._busy = False  # the writer task is sending
        self._resume: _Resumed | None = None  # a direct send the transport paused

    def send(self, frames: list[str]) -> None:
        if self.closed:
            return
        ws = self.ws
        if ws is not None and not self._busy and not self._outbox and self._resume is None:
            frames = self._write_now(ws, frames)
            if not frames and self._resume is None:
                return
        self._outbox.extend(frames)
        if len(self._outbox) > _MAX_OUTBOX:
            # vLLM stopped reading: drop the socket; the core replays what it is owed
            logger.warning("lane %d: vLLM is not reading; dropping the connection", self.lane)
            self._outbox.clear()
            self._on_lost(self, "vLLM stopped reading (send queue full)")
            if self.task is not None:
                self.task.cancel()
            return
        self._wake.set()

    def _write_now(self, ws: aiohttp.ClientWebSocketResponse, frames: list[str]) -> list[str]:
        """Write frames until one cannot complete at once; return those not started."""
        for i, frame in enumerate(frames):
            # An uncompressed aiohttp send writes to the transport synchronously and awaits
            # only when the transport is paused: run it until then.
            coro = ws.send_str(frame)
            try:
                yielded = coro.send(None)
            except StopIteration:
                continue
            except Exception:
                # the writer task meets the same error and the lane ends as before
                coro.close()
                return frames[i:]
            self._resume = _Resumed(coro, yielded)
            return frames[i + 1 :]
        return []

    async def write_loop(self) -> None:
        ws = self.ws
        assert ws is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            try:
                if self._resume is not None:
                    await self._resume
                    self._resume = None
                while self._outbox:
                    batch, self._outbox = self._outbox, []
                    for frame in batch:
                        await ws.send_str(frame)
            finally:
                self._busy = False
            if self.closed:
                await ws.close()
                return

    def close(self) -> None:
        """Close after the frames already queued. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.ws is None and self.task is not None:
            self.task.cancel()  # still connecting
        self._wake.set()

    async def aclose(self) -> None:
        """Close now (the stream is ending)."""
        self.closed = True
        if self.task is not None:
            await utils.aio.cancel_and_wait(self.task)
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()


class _Resumed:
    """The rest of a send coroutine that was started in the caller and paused (it is
    waiting for the transport to drain): awaiting this finishes it, like ``await coro``
    would have, ``yielded`` being what it paused on."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, None, None]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                yield value
            except BaseException as e:  # cancellation included: the send sees it
                try:
                    value = coro.throw(e)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(None)
                except StopIteration:
                    return
