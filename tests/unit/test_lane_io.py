"""The lane's socket writer (lane_io.LaneIO): frames are written in the caller when nothing is
queued (issue 13: no task switch between a step's audio and the socket), and in order by the
writer task when the transport pushes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from livekit_plugins_voxtral_vllm.lane_io import LaneIO


class FakeWS:
    """Records frames as the transport would get them; ``paused`` makes a send wait for
    ``drain`` after writing its frame, as aiohttp's flow control does."""

    def __init__(self) -> None:
        self.wire: list[str] = []
        self.paused = False
        self.drain: asyncio.Future[None] | None = None
        self.closed = False
        self.fail: Exception | None = None

    async def send_str(self, data: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.wire.append(data)
        if self.paused:
            self.drain = asyncio.get_running_loop().create_future()
            await self.drain

    async def close(self) -> None:
        self.closed = True


def lane_with(ws: FakeWS) -> tuple[LaneIO, list[str]]:
    lost: list[str] = []
    lane = LaneIO(1, lambda _lane, reason: lost.append(reason))
    lane.ws = ws  # type: ignore[assignment]
    return lane, lost


async def test_frames_are_written_at_once_in_the_caller() -> None:
    ws = FakeWS()
    lane, _ = lane_with(ws)
    lane.send(["a", "b"])
    assert ws.wire == ["a", "b"]  # no task ran in between


async def test_a_paused_transport_hands_the_rest_to_the_writer_in_order() -> None:
    ws = FakeWS()
    lane, _ = lane_with(ws)
    lane.task = asyncio.create_task(lane.write_loop())
    ws.paused = True
    lane.send(["a", "b"])  # "a" is written, then its send waits for the drain
    assert ws.wire == ["a"]
    lane.send(["c"])  # queued behind "b": never jumps ahead
    ws.paused = False
    await asyncio.sleep(0)
    assert ws.wire == ["a"]
    assert ws.drain is not None
    ws.drain.set_result(None)
    for _ in range(5):
        await asyncio.sleep(0)
    assert ws.wire == ["a", "b", "c"]
    lane.send(["d"])  # drained and idle again: at once
    assert ws.wire == ["a", "b", "c", "d"]
    lane.close()
    await asyncio.wait_for(lane.task, 1)
    assert ws.closed


async def test_cancelling_the_writer_reaches_a_paused_send() -> None:
    ws = FakeWS()
    lane, _ = lane_with(ws)
    lane.task = asyncio.create_task(lane.write_loop())
    ws.paused = True
    lane.send(["a"])
    await asyncio.sleep(0)
    await lane.aclose()
    assert lane.task.cancelled()
    assert ws.drain is not None and ws.drain.cancelled()


async def test_an_error_in_a_direct_write_is_left_to_the_writer() -> None:
    ws = FakeWS()
    lane, _ = lane_with(ws)
    ws.fail = ConnectionResetError("gone")
    lane.send(["a"])  # does not raise in the caller
    assert ws.wire == []
    lane.task = asyncio.create_task(lane.write_loop())
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(lane.task, 1)


async def test_before_the_socket_is_up_frames_wait_for_the_writer() -> None:
    lane, _ = lane_with(FakeWS())
    ws: Any = lane.ws
    lane.ws = None
    lane.send(["a"])
    assert ws.wire == []
    lane.ws = ws
    lane.task = asyncio.create_task(lane.write_loop())
    for _ in range(3):
        await asyncio.sleep(0)
    assert ws.wire == ["a"]
    lane.close()
    await asyncio.wait_for(lane.task, 1)
