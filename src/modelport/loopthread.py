"""A part that runs on its own thread and event loop, ticking until asked to stop.

The orchestrator and the batch runner both work this way so that their store I/O never stalls
the gateway's loop. Subclasses give `tick` and the tick interval; `setup` runs before the first
tick (`ready` is set after it), `wind_down` after the last one on a clean stop, and `cleanup`
always, last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

log = logging.getLogger("modelport")


class LoopThread:
    thread_name = "modelport-loop"
    use_uvloop = False

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self.ready = threading.Event()

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name=self.thread_name, daemon=True)
        self._thread.start()
        self.ready.wait(30)

    def _stop_and_join(self, timeout: float) -> None:
        self._stop_requested = True
        self.wake()
        if self._thread:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Tick now instead of at the next interval (after an API change)."""
        if self._loop and self._wake and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                self._loop.call_soon_threadsafe(self._wake.set)

    def _thread_main(self) -> None:
        if self.use_uvloop:
            try:
                import uvloop

                uvloop.run(self._run())
                return
            except ImportError:
                pass
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            await self.setup()
            self.ready.set()
            while not self._stop_requested:
                try:
                    await self.tick()
                except Exception:
                    log.exception("%s tick failed; retrying", self.thread_name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval())
                self._wake.clear()
            await self.wind_down()
        finally:
            self.ready.set()
            await self.cleanup()

    def interval(self) -> float:
        raise NotImplementedError

    async def tick(self) -> None:
        raise NotImplementedError

    async def setup(self) -> None:
        """Before the first tick."""

    async def wind_down(self) -> None:
        """After the last tick of a clean stop."""

    async def cleanup(self) -> None:
        """Always, last (also after a failed setup)."""
