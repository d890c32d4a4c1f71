"""L4: the asyncio runtime: connections driven by an event loop, async proxies, and
exported ``async def`` methods.

One protocol implementation drives both runtimes (DESIGN.md "Runtime guidance"):
a connection made with ``loop=`` is a :class:`LoopConnection`, the threaded
``Connection`` with its three runtime primitives replaced, and nothing else:

- the serial queue is the loop: ``_post`` appends to the connection's own queue
  and schedules one drain of it on the loop (``call_soon``, or
  ``call_soon_threadsafe`` from another thread), so work posted from any thread
  runs on the loop, one item at a time, in the order posted;
- the socket is watched with ``loop.add_reader``: the reader feeds the same
  sans-I/O ``ConnectionCore`` and delivers its events (exported calls, replies,
  failures, interruption) on the loop, through the same code as the threads;
- a synchronous proxy call never reads its own reply here (the loop's reader
  owns the socket): it waits for the loop to deliver it, and is refused on the
  loop's own thread, where it could never be answered (Apple: a synchronous
  call from the connection's queue deadlocks).

Async proxies (:class:`AsyncRemoteProxy`) work on every connection. A call
registers an :class:`_AsyncCall` in the pending table exactly as a proxy call
with an error handler does; its reply block and error handler settle a future,
directly when the reply is decoded on the awaiting loop's thread, else through
``call_soon_threadsafe``. Cancellation and ``timeout=`` take the call out of the
outbox or the pending table through ``Connection._expire``, the one place a
call leaves early; a reply that arrives afterwards finds nothing and is
discarded by the core, so every call still ends exactly once.

Importing this module imports asyncio; ``import nsxpc`` does not import it.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import _transactions
from ._connection import Connection, _Call, _late_work, _timed_out
from ._errors import EncodingError, RemoteError, ReplyInvalid, XPCError
from ._interface import MethodSpec
from ._log import log
from ._proxy import HANDLER, SYNC, ProxyCreating, bind_arguments

if TYPE_CHECKING:
    from ._connection import _Link, _ReplyBlock

__all__ = [
    "AsyncRemoteProxy",
    "LoopConnection",
    "bind_accepted",
    "bind_loop",
    "check_loop",
    "current_connection",
    "start_exported",
]

_running_loop = asyncio._get_running_loop  # C accelerated; None off the loop's thread

#: The connection whose exported ``async def`` method is running, in its task's context.
_current: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("nsxpc_current", default=None)
#: Tasks of running exported coroutines: the loop holds tasks only weakly.
_tasks: set[asyncio.Task[None]] = set()


def current_connection() -> Connection | None:
    """``Connection.current()`` inside an exported ``async def`` method (its task's context)."""
    return _current.get()


def check_loop(loop: object) -> asyncio.AbstractEventLoop:
    """``loop`` if it is an open asyncio event loop.

    Raises:
        TypeError: ``loop`` is not an asyncio event loop.
        ValueError: ``loop`` is closed.
    """
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an asyncio event loop, not {type(loop).__name__}")
    if loop.is_closed():
        raise ValueError("loop= is a closed event loop")
    return loop


def bind_loop(conn: Connection, loop: object) -> None:
    """Make ``conn`` (just initialised, not yet started) run on ``loop``.

    Raises:
        TypeError: ``loop`` is not an asyncio event loop.
        ValueError: ``loop`` is closed.
    """
    conn._loop = check_loop(loop)
    # Same layout, the runtime's primitives replaced: the protocol code is shared, not copied.
    cls = type(conn)
    flavour = _loop_classes.get(cls)
    if flavour is None:
        # A subclass (the message connections of nsxpc._session) keeps its own methods.
        flavour = _loop_classes[cls] = type(f"Loop{cls.__name__}", (LoopConnection, cls), {})
    conn.__class__ = flavour


def bind_accepted(conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
    """Make a connection a ``Listener(loop=...)`` accepted run on its loop.

    Raises:
        OSError: the loop was closed while the listener still accepts (the listener
            drops the new connection and logs why).
    """
    if loop.is_closed():
        raise OSError(errno.ESHUTDOWN, "the listener's event loop is closed")
    bind_loop(conn, loop)


class LoopConnection(Connection):
    """A ``Connection`` whose serial queue is an asyncio event loop (``loop=``)."""

    _loop: asyncio.AbstractEventLoop
    _drain_scheduled = False

    def _start_queue(self) -> None:
        with self._send_lock:
            if self._thread:
                return
            self._thread = True  # "started": the loop is the queue
            link = self._link
        if link is not None:
            self._watch(link, True)
        if self._handshake_deadline is not None:
            self._post(self._arm_handshake_timer)

    def _arm_handshake_timer(self) -> None:
        deadline = self._handshake_deadline
        if deadline is not None:
            self._loop.call_later(max(0.0, deadline - time.monotonic()), self._handshake_expired)

    def _post(self, fn: Callable[[], object]) -> None:
        with self._queue_lock:
            self._queue.append(fn)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        loop = self._loop
        try:
            if _running_loop() is loop:
                loop.call_soon(self._drain)
            else:
                loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            # The loop is closed: what is left still runs, in order, on the shared late queue.
            with self._queue_lock:
                leftovers = list(self._queue)
                self._queue.clear()
            for item in leftovers:
                _late_work(item)

    def _drain(self) -> None:
        with self._queue_lock:
            self._drain_scheduled = False
        queue = self._queue
        while queue:
            self._run_item(queue.popleft())

    def _watch(self, link: _Link, on: bool) -> None:
        loop = self._loop
        if _running_loop() is not loop:
            # add_reader/remove_reader belong to the loop's thread; posted in order, so a
            # suspend() then resume() from another thread end watched.
            try:
                loop.call_soon_threadsafe(self._watch, link, on)
            except RuntimeError:
                pass  # the loop is closed: nothing watches anything any more
            return
        if link.watched == on or (on and link.dead):
            return
        if on:
            loop.add_reader(link.fd, self._on_readable)
        else:
            loop.remove_reader(link.fd)
        link.watched = on

    def _call(
        self,
        target: int,
        method: MethodSpec,
        values: list[Any],
        reply: Callable[..., object] | None,
        mode: str,
        handler: Any,
        timeout: float | None,
        *rest: Any,
        **more: Any,
    ) -> Any:
        if mode != SYNC or not method.wants_reply:
            return super()._call(target, method, values, reply, mode, handler, timeout, *rest, **more)
        if _running_loop() is self._loop:
            raise RuntimeError(
                "a synchronous call on the event loop of a connection made with loop= would deadlock: "
                "await a call of async_remote_object_proxy() there"
            )
        # The loop's reader owns the socket: wait for it to deliver the reply.
        call = _Call(method, target, reply, handler, mode)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._send_call(target, method, values, call, *rest, **more)
        return self._wait(call, timeout, deadline, reply is None)


_loop_classes: dict[type, type[LoopConnection]] = {Connection: LoopConnection}

# --------------------------------------------------------------------------- async proxies


class _Settler:
    """Settles an asyncio future with a call's outcome, from any thread. Kept apart
    from the call so that the call and its callbacks form no reference cycle."""

    __slots__ = ("direct", "fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], direct: bool) -> None:
        self.loop = loop
        self.fut = fut
        # True when the connection delivers on the awaiting loop's own thread.
        self.direct = direct

    def reply(self, *values: Any) -> None:
        value = None if not values else values[0] if len(values) == 1 else tuple(values)
        if self.direct:
            _settle(self.fut, value, None)
        else:
            _settle_threadsafe(self.loop, self.fut, value, None)

    def error(self, error: Exception) -> None:
        if self.direct:
            _settle(self.fut, None, error)
        else:
            _settle_threadsafe(self.loop, self.fut, None, error)


class _AsyncCall(_Call):
    """A pending call whose ending settles an asyncio future (through a ``_Settler``)."""

    __slots__ = ("fut",)

    def __init__(self, method: MethodSpec, target: int, settler: _Settler) -> None:
        super().__init__(method, target, settler.reply, settler.error, HANDLER)
        self.fut = settler.fut


def _settle(fut: asyncio.Future[Any], value: object, error: BaseException | None) -> None:
    if fut.done():
        return  # the awaiting task was cancelled: a late reply is discarded
    if error is None:
        fut.set_result(value)
    else:
        fut.set_exception(error)


def _settle_threadsafe(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: object, error: BaseException | None
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, fut, value, error)
    except RuntimeError:
        pass  # the awaiting loop is closed: nobody is left to tell


class AsyncRemoteProxy(ProxyCreating):
    """A proxy whose methods are coroutines returning the reply's value
    (nsxpc's asyncio form of ``remoteObjectProxyWithErrorHandler:``).

    ``await proxy.method(args)`` sends the call and returns the reply's value:
    None for a reply with no arguments, the value for one, a tuple for several.
    It raises the ``XPCError`` instead of calling an error handler
    (``TimedOut`` after ``timeout`` seconds, ``ConnectionInterrupted``,
    ``RemoteError``...). A method without a reply block returns once the
    message is written (or queued). Cancelling the awaiting task ends the call
    locally with ``asyncio.CancelledError``; a late reply is discarded.

    Raises:
        ValueError: ``timeout`` is not a positive number.
    """

    # No __slots__: resolved methods are cached as instance attributes (as RemoteProxy does).

    def __init__(self, conn: Connection, target: int, timeout: float | None = None, ref: Any = None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._conn = conn
        self._target = target
        self._timeout = timeout
        self._ref = ref

    def __repr__(self) -> str:
        return f"<nsxpc async remote proxy object {self._target} on {self._conn!r}>"

    def _method(self, name: str) -> MethodSpec:
        ref = self._ref
        if ref is None:
            return self._conn._method_for(self._target, name)
        found: MethodSpec | None = ref.interface.method(name)
        if found is None:
            raise AttributeError(f"{ref.interface.protocol.__qualname__} has no method {name!r}")
        return found

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        conn, target, timeout, ref = self._conn, self._target, self._timeout, self._ref
        method = self._method(name)
        iface = conn._remote_interface
        rest = () if ref is None else (ref,)

        async def call(*args: Any, **kwargs: Any) -> Any:
            spec = method if ref is not None or conn._remote_interface is iface else self._method(name)
            values, reply = bind_arguments(spec, args, kwargs)
            if reply is not None:
                raise TypeError(f"{name}(): an async proxy returns the reply's value; pass no reply block")
            if not spec.wants_reply:
                conn._send_call(target, spec, values, None, *rest)
                return None
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            pending = _AsyncCall(spec, target, _Settler(loop, fut, conn._loop is loop))
            conn._want_input()  # a threaded connection's queue thread must read the reply
            conn._send_call(target, spec, values, pending, *rest)
            timer = None if timeout is None else loop.call_later(timeout, _expire, conn, pending, timeout)
            try:
                return await fut
            except asyncio.CancelledError:
                _abandon(conn, pending)
                raise
            finally:
                if timer is not None:
                    timer.cancel()

        call.__name__ = call.__qualname__ = name
        self.__dict__[name] = call
        return call


def _abandon(conn: Connection, call: _AsyncCall) -> None:
    """The awaiting task was cancelled: take the call out (exactly once) if it is still
    outstanding; if it is ending another way right now, its settling finds the future done."""
    if not call.done and conn._expire(call):
        call.done = True


def _expire(conn: Connection, call: _AsyncCall, timeout: float) -> None:
    if not call.done and conn._expire(call):
        call.done = True
        _settle(call.fut, None, _timed_out(call, timeout))


# --------------------------------------------------------------------------- exported coroutines


def start_exported(
    conn: Connection, coro: Coroutine[Any, Any, Any], reply: _ReplyBlock | None, method: MethodSpec
) -> None:
    """Run an exported ``async def`` method's coroutine as a task on the connection's loop.

    Called on that loop, from the connection's queue, right after the method was
    called: tasks start in the order the calls arrived.
    """
    loop: asyncio.AbstractEventLoop = conn._loop
    # A one-way message keeps a launched service busy until its coroutine ends (M3).
    transaction = reply is None and _transactions.begin_implicit()
    task = loop.create_task(_run_exported(conn, coro, reply, method, transaction))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _run_exported(
    conn: Connection, coro: Coroutine[Any, Any, Any], reply: _ReplyBlock | None, method: MethodSpec, transaction: bool
) -> None:
    _current.set(conn)
    try:
        value = await coro
    except Exception as exc:
        log.warning("nsxpc: exported method %r raised %s: %s", method.selector, type(exc).__name__, exc, exc_info=True)
        if reply is not None:
            reply._fail(RemoteError(f"{type(exc).__name__}: {exc}"))
        return
    except asyncio.CancelledError:
        if reply is not None:
            reply._fail(RemoteError(f"CancelledError: the exported method {method.selector!r} was cancelled"))
        raise
    finally:
        if transaction:
            _transactions.end_transaction()
    if reply is None or reply._used:
        if value is not None:
            log.warning(
                "nsxpc: exported method %r returned %r, which is ignored (%s)",
                method.selector,
                value,
                "it has no reply block" if reply is None else "it already called its reply block",
            )
        return
    _reply_with(reply, method, value)


def _reply_with(reply: _ReplyBlock, method: MethodSpec, value: object) -> None:
    """Answer with a coroutine's return value: ``reply()``, ``reply(value)`` or ``reply(*value)``."""
    count = len(method.reply or ())
    if count == 1:
        values: tuple[object, ...] = (value,)
    elif count == 0 and value is None:
        values = ()
    elif count > 1 and type(value) is tuple and len(value) == count:
        values = value
    else:
        want = "None" if count == 0 else f"a tuple of {count} values"
        error = ReplyInvalid(
            f"exported method {method.selector!r} returned {type(value).__name__}, but its reply takes {want}"
        )
        log.warning("nsxpc: %s", error.message)
        reply._fail(error)
        return
    try:
        reply(*values)
    except EncodingError as exc:
        # The caller was told (ReplyInvalid); this side learns why in the log.
        log.warning("nsxpc: the value returned by exported method %r could not be sent: %s", method.selector, exc)
    except XPCError as exc:
        log.warning("nsxpc: replying to %r failed: %s", method.selector, exc)
