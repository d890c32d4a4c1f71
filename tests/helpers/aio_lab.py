"""A protocol whose implementation is all ``async def``: served in-process by
tests/integration/test_asyncio.py (``Listener(loop=...)``) and, in a service bundle
with ``RunLoopType`` ``asyncio``, by tests/helpers/aio_service.py."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

import nsxpc


@nsxpc.protocol
class AsyncLab(Protocol):
    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None: ...
    def divmod(self, a: int, b: int, reply: Callable[[int, int], None]) -> None: ...
    def nothing(self, reply: Callable[[], None]) -> None: ...
    def explicit(self, value: int, reply: Callable[[int], None]) -> None: ...
    def sleep_then(self, seconds: float, value: int, reply: Callable[[int], None]) -> None: ...
    def fail(self, message: str, reply: Callable[[int], None]) -> None: ...
    def bad_return(self, reply: Callable[[int, str], None]) -> None: ...
    def where(self, reply: Callable[[bool, bool, int], None]) -> None: ...
    def record(self, value: int) -> None: ...
    def recorded(self, reply: Callable[[list[int]], None]) -> None: ...
    def hold(self, tag: int, reply: Callable[[int], None]) -> None: ...
    def release_held(self, reply: Callable[[int], None]) -> None: ...
    def crash(self) -> None: ...


class AsyncLabImpl:
    """Every method is ``async def``; most return the reply's value instead of calling ``reply``."""

    def __init__(self) -> None:
        self.values: list[int] = []
        self.held: dict[int, asyncio.Future[None]] = {}

    async def add(self, a: int, b: int, reply: Any) -> int:
        await asyncio.sleep(0)
        return a + b

    async def divmod(self, a: int, b: int, reply: Any) -> tuple[int, int]:
        return divmod(a, b)  # ZeroDivisionError -> RemoteError for the caller

    async def nothing(self, reply: Any) -> None:
        await asyncio.sleep(0)

    async def explicit(self, value: int, reply: Any) -> None:
        reply(value * 2)  # calling the reply block still works

    async def sleep_then(self, seconds: float, value: int, reply: Any) -> int:
        await asyncio.sleep(seconds)
        return value

    async def fail(self, message: str, reply: Any) -> int:
        await asyncio.sleep(0)
        raise ValueError(message)

    async def bad_return(self, reply: Any) -> Any:
        return 42  # the reply takes (int, str): the caller gets ReplyInvalid

    async def where(self, reply: Any) -> tuple[bool, bool, int]:
        """(on the main thread, Connection.current() is set, this process's pid)."""
        await asyncio.sleep(0)
        current = nsxpc.Connection.current()
        return threading.current_thread() is threading.main_thread(), current is not None, os.getpid()

    async def record(self, value: int) -> None:
        self.values.append(value)  # before the first await: shows the order coroutines start in
        await asyncio.sleep(0)

    async def recorded(self, reply: Any) -> list[int]:
        return list(self.values)

    async def hold(self, tag: int, reply: Any) -> int:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held[tag] = fut
        await fut
        return tag

    async def release_held(self, reply: Any) -> int:
        held, self.held = self.held, {}
        for fut in held.values():
            fut.set_result(None)
        return len(held)

    async def crash(self) -> None:
        os._exit(3)
