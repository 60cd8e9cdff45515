"""The emulator served from a daemon thread, for a synchronous program (a worker's ``main``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .server import VLLMRealtimeEmulator


class BackgroundEmulator:
    """A :class:`VLLMRealtimeEmulator` running on its own event loop in a daemon thread.

    ``start()`` returns its ``ws://127.0.0.1:PORT/v1/realtime`` URL once it listens; other
    processes (a LiveKit worker's job processes) reach it through that URL. Keyword arguments
    go to the emulator; audio and messages are not recorded by default, for long runs.
    """

    def __init__(self, **emulator_options: Any) -> None:
        self.url = ""
        self._options = {"record_audio": False, "record_messages": False, **emulator_options}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="vllm-emulator", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; raises RuntimeError if it is not listening within ``timeout``."""
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the vLLM emulator did not start: {self._error!r}")
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread; idempotent, and safe after a failed start."""
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # its loop has already closed
                pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with VLLMRealtimeEmulator(**self._options) as emulator:
            self.url = emulator.url
            self._ready.set()
            await self._stop.wait()
