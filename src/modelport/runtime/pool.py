"""Running user code off the event loop: the handler thread pool and iterators pinned to one thread.

User hooks are blocking Python; the event loop must stay free for `/health`, other requests and
the bytes of streams in flight. Two tools, both handing results back with one
`call_soon_threadsafe` per result:

* `HandlerPool` runs one call per job on a fixed set of threads (a prediction, a V2 infer);
* `ThreadedIterator` pins a blocking iterator (a streaming handler's generator, a sync WebSocket
  hook) to one thread and lets the loop pull it one item at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger("modelport.runtime")

HANDLER_THREAD_PREFIX = "modelport-handler"

Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[Any, Any], Any], Any, Any]


class HandlerPool:
    """A fixed set of daemon threads running `fn(a, b)` calls for the event loop.

    Leaner than `loop.run_in_executor` (one queue put and one loop callback per call, no
    concurrent.futures wrapping), which measurably raises throughput for small models. Daemon
    threads, so a handler still stuck after the grace period cannot keep the process alive.
    """

    def __init__(self, threads: int) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{HANDLER_THREAD_PREFIX}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[[Any, Any], Any], a: Any, b: Any) -> asyncio.Future[Any]:
        """`fn(a, b)` on a pool thread; the future ends with its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, future, fn, a, b))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        get = self._jobs.get
        while (job := get()) is not None:
            loop, future, fn, a, b = job
            try:
                outcome: Any = fn(a, b)
                settle = _resolve
            except BaseException as exc:  # the callables catch user errors; this is a runtime bug
                traceback.print_exc()
                outcome, settle = RuntimeError(f"{type(exc).__name__}: {exc}"), _fail
            try:
                loop.call_soon_threadsafe(settle, future, outcome)
            except RuntimeError:  # loop closed: the server is gone, nobody waits for this answer
                return


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the request may have been cancelled (client gone, grace period over)
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Failure:
    """What an item source hands back when the user's iterator raised (the exception as a value)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


END: Any = object()  # an item source is exhausted


class ThreadedIterator:
    """A blocking iterator driven by one thread and pulled from the event loop one item at a time.

    Invariants: only the thread running `drive` touches the iterator (`next` and `close` alike),
    so a generator never changes threads mid-way (thread-locals such as `torch.no_grad` hold);
    and it never runs ahead of the loop: the next item is computed only once `ask` was called.
    `transform` runs on that thread too, so encoding an item costs the loop nothing.
    """

    def __init__(self, make: Callable[[], Iterable[Any]], transform: Callable[[Any], Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._make = make
        self._transform = transform
        self._asks: queue.SimpleQueue[asyncio.Future[Any] | None] = queue.SimpleQueue()

    def ask(self) -> asyncio.Future[Any]:
        """A future of the next item (transformed), `END`, or a `Failure`."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._asks.put(future)
        return future

    async def close(self) -> None:
        """Stop pulling: the thread closes the iterator (GeneratorExit at its `yield`) once its step ends."""
        self._asks.put(None)

    def drive(self, _a: Any = None, _b: Any = None) -> None:
        """The thread's side; returns when the iterator is exhausted, failed or closed."""
        iterator: Iterator[Any] | None = None
        try:
            while (future := self._asks.get()) is not None:
                try:
                    if iterator is None:
                        iterator = iter(self._make())
                    outcome = self._transform(next(iterator))
                except StopIteration:
                    outcome = END
                except BaseException as exc:  # the user's error, reported by whoever asked
                    outcome = Failure(exc)
                try:
                    self._loop.call_soon_threadsafe(_resolve, future, outcome)
                except RuntimeError:  # loop closed
                    return
                if outcome is END or outcome.__class__ is Failure:
                    return
        finally:
            _close_quietly(iterator)


class AsyncItems:
    """An async iterator pulled one item at a time on the loop; the interface of `ThreadedIterator`."""

    def __init__(self, iterator: Any, transform: Callable[[Any], Any]) -> None:
        self._iterator = iterator
        self._transform = transform
        self._step: asyncio.Task[Any] | None = None

    def ask(self) -> asyncio.Future[Any]:
        self._step = asyncio.ensure_future(self._next())
        return self._step

    async def _next(self) -> Any:
        try:
            return self._transform(await self._iterator.__anext__())
        except StopAsyncIteration:
            return END
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return Failure(exc)

    async def close(self) -> None:
        """Cancel a step in flight (CancelledError at the iterator's `await`), then `aclose()` it."""
        step = self._step
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(BaseException):  # the cancellation, or what the user raised on it
                await step
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("closing the handler's async iterator failed")


def _close_quietly(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        log.exception("closing the handler's iterator failed")
