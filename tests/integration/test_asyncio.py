"""The asyncio API (API.md section 10, docs/ASYNCIO.md), with real sockets and processes.

- async proxies on threaded connections and on connections made with ``loop=``:
  values, errors, ``timeout=``, cancellation (the late reply discarded, the pending
  entry gone, the next call fine);
- ``Listener(loop=...)`` serving ``async def`` exported methods that return the
  reply's value; handlers and exported calls delivered on the loop's thread;
- the interruption handler of a ``loop=`` connection, on the loop;
- a service bundle with ``RunLoopType`` ``asyncio`` whose methods are ``async def``.

Every test runs its coroutine with ``asyncio.run`` under a bound, and invalidates
what it made (waiting, on the loop, for the invalidation handlers) before the loop
closes.
"""

from __future__ import annotations

import asyncio
import os
import plistlib
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import nsxpc
from protocols.kitchen import Cookie, FrenchFry, kitchen_interface
from tests.helpers.aio_lab import AsyncLab, AsyncLabImpl
from tests.helpers.lab import lab_interface
from tests.integration.conftest import TIMEOUT, Child, Connections, KitchenImpl, ServerSide, unique_name

ROOT = Path(__file__).resolve().parents[2]
#: Bound of a whole test's coroutine (generous: the machine is shared).
RUN_TIMEOUT = 60.0


def run(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(make(), RUN_TIMEOUT)

    return asyncio.run(bounded())


async def settle(conn: nsxpc.Connection) -> None:
    """Invalidate ``conn`` and, for a loop connection, wait (bounded) for its invalidation
    handler, so that its teardown runs before the loop closes."""
    loop = asyncio.get_running_loop()
    if getattr(conn, "_loop", None) is not loop or conn._finished:
        conn.invalidate()
        return
    done = asyncio.Event()
    previous = conn.invalidation_handler

    def invalidated() -> None:
        if previous is not None:
            previous()
        done.set()

    conn.invalidation_handler = invalidated
    conn.invalidate()
    await asyncio.wait_for(done.wait(), TIMEOUT)


class LoopServer:
    """An anonymous ``Listener(loop=...)`` exporting ``exported`` with ``iface``; records
    on which thread its delegate ran and the connections it accepted."""

    def __init__(self, exported: object, iface: nsxpc.Interface) -> None:
        self.loop = asyncio.get_running_loop()
        self.exported = exported
        self.iface = iface
        self.accepted: list[nsxpc.Connection] = []
        self.delegate_threads: list[int] = []
        self.clients: list[nsxpc.Connection] = []
        self.listener = nsxpc.Listener.anonymous(loop=self.loop)
        self.listener.delegate = self
        self.listener.resume()

    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        self.delegate_threads.append(threading.get_ident())
        conn.exported_interface = self.iface
        conn.exported_object = self.exported
        self.accepted.append(conn)
        conn.resume()
        return True

    def client(self, iface: nsxpc.Interface, *, loop: bool = True) -> nsxpc.Connection:
        conn = nsxpc.Connection(listener_endpoint=self.listener.endpoint, loop=self.loop if loop else None)
        conn.remote_object_interface = iface
        conn.resume()
        self.clients.append(conn)
        return conn

    async def close(self) -> None:
        self.listener.invalidate()
        for conn in [*self.clients, *self.accepted]:
            await settle(conn)


async def loop_server(exported: object, iface: nsxpc.Interface) -> LoopServer:
    """Made inside the running loop (its listener uses that loop)."""
    return LoopServer(exported, iface)


def lab_client(name: str, loop: asyncio.AbstractEventLoop | None) -> nsxpc.Connection:
    conn = nsxpc.Connection(mach_service_name=name, loop=loop)
    conn.remote_object_interface = lab_interface()
    conn.resume()
    return conn


def pending(conn: nsxpc.Connection) -> int:
    link = conn._link
    return 0 if link is None else len(link.core.pending)


# --------------------------------------------------------------------------- async proxies


@pytest.mark.parametrize("use_loop", [False, True], ids=["threaded", "loop"])
def test_async_proxy_returns_the_replys_value(serve: Callable[..., ServerSide], use_loop: bool) -> None:
    side = serve()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = nsxpc.Connection(listener_endpoint=side.listener.endpoint, loop=loop if use_loop else None)
        conn.remote_object_interface = kitchen_interface()
        conn.resume()
        try:
            aproxy = conn.async_remote_object_proxy(timeout=TIMEOUT)
            assert await aproxy.add(2, 3) == 5  # one reply argument: the value
            assert await aproxy.feed_me_fries([FrenchFry(1.0)] * 3) == (3, "yum")  # several: a tuple
            assert await aproxy.add(a=1, b=2) == 3  # keywords bind as on any proxy
            results = await asyncio.gather(*(aproxy.add(i, i) for i in range(20)))
            assert results == [2 * i for i in range(20)]
            assert await aproxy.feed_me_a_cookie(Cookie("choc", 3)) is None  # one-way: once written
            assert await aproxy.cookies_eaten() == [Cookie("choc", 3)]
        finally:
            await settle(conn)

    run(main)


@pytest.mark.parametrize("use_loop", [False, True], ids=["threaded", "loop"])
def test_async_proxy_raises_xpc_errors(lab_server: Child, use_loop: bool) -> None:
    async def main() -> None:
        conn = lab_client(lab_server.name, asyncio.get_running_loop() if use_loop else None)  # type: ignore[attr-defined]
        try:
            aproxy = conn.async_remote_object_proxy(timeout=TIMEOUT)
            with pytest.raises(nsxpc.RemoteError, match="ValueError: boom"):
                await aproxy.fail("boom")
            with pytest.raises(nsxpc.ReplyInvalid):
                await aproxy.drop()  # the service released the reply block uncalled
            # Checked before anything is sent: raised by the call itself.
            with pytest.raises(nsxpc.EncodingError, match="add argument 1"):
                await aproxy.add(1, "2")
            with pytest.raises(TypeError, match="pass no reply block"):
                await aproxy.add(1, 2, lambda total: None)
            assert await aproxy.nothing() is None  # a reply with no arguments
            assert await aproxy.add(20, 22) == 42  # the connection is fine
            assert pending(conn) == 0
        finally:
            await settle(conn)

    run(main)


@pytest.mark.parametrize("use_loop", [False, True], ids=["threaded", "loop"])
def test_timeout_ends_the_call_only(lab_server: Child, use_loop: bool) -> None:
    async def main() -> None:
        conn = lab_client(lab_server.name, asyncio.get_running_loop() if use_loop else None)  # type: ignore[attr-defined]
        try:
            quick = conn.async_remote_object_proxy(timeout=0.3)
            with pytest.raises(nsxpc.TimedOut, match="hold") as info:
                await quick.hold(7)
            assert info.value.can_retry and info.value.code == nsxpc.ErrorCode.TIMED_OUT
            assert pending(conn) == 0
            aproxy = quick.async_remote_object_proxy(timeout=TIMEOUT)
            assert await aproxy.release_held() == 1  # the late reply to hold(7) is discarded
            assert await aproxy.add(1, 1) == 2
        finally:
            await settle(conn)

    run(main)


@pytest.mark.parametrize("use_loop", [False, True], ids=["threaded", "loop"])
def test_cancelling_an_awaiting_call(lab_server: Child, use_loop: bool) -> None:
    async def main() -> None:
        conn = lab_client(lab_server.name, asyncio.get_running_loop() if use_loop else None)  # type: ignore[attr-defined]
        try:
            aproxy = conn.async_remote_object_proxy(timeout=TIMEOUT)
            assert await aproxy.add(1, 2) == 3  # connected
            task = asyncio.create_task(aproxy.hold(5))
            while await aproxy.held_count() < 1:  # the service holds the reply block
                pass
            assert pending(conn) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pending(conn) == 0  # removed exactly once, locally
            # The service now answers hold(5): the late reply is discarded, nothing breaks.
            assert await aproxy.release_held() == 1
            assert await aproxy.add(2, 2) == 4
            # wait_for cancels too: the same path.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(aproxy.hold(6), 0.2)
            assert pending(conn) == 0
            assert await aproxy.release_held() == 1
            assert await aproxy.add(3, 3) == 6
            assert conn.state is nsxpc.ConnectionState.ACTIVE
        finally:
            await settle(conn)

    run(main)


def test_cancelling_a_call_queued_before_resume(serve: Callable[..., ServerSide]) -> None:
    side = serve()

    async def main() -> None:
        conn = nsxpc.Connection(listener_endpoint=side.listener.endpoint, loop=asyncio.get_running_loop())
        conn.remote_object_interface = kitchen_interface()
        try:
            aproxy = conn.async_remote_object_proxy()
            task = asyncio.create_task(aproxy.add(1, 2))
            await asyncio.sleep(0)  # the call is in the outbox: the connection is suspended
            assert len(conn._outbox) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len(conn._outbox) == 0  # never sent
            conn.resume()
            assert await aproxy.add(2, 2) == 4
        finally:
            await settle(conn)

    run(main)


# --------------------------------------------------------------------------- loop connections


def test_interruption_is_delivered_on_the_loop(spawn: Callable[..., Child]) -> None:
    name = unique_name()
    server = spawn("lab_server.py", name)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        seen: list[tuple[str, int]] = []
        interrupted = asyncio.Event()
        conn = lab_client(name, loop)

        def on_interruption() -> None:
            seen.append(("interrupted", threading.get_ident()))
            interrupted.set()  # not thread-safe: it works only because this runs on the loop

        conn.interruption_handler = on_interruption
        try:
            aproxy = conn.async_remote_object_proxy(timeout=TIMEOUT)
            assert await aproxy.add(1, 1) == 2
            held = asyncio.create_task(aproxy.hold(1))
            while await aproxy.held_count() < 1:
                pass
            server.kill9()
            with pytest.raises(nsxpc.ConnectionInterrupted):
                await held
            await asyncio.wait_for(interrupted.wait(), TIMEOUT)
            assert seen == [("interrupted", loop_thread)]
            assert conn.state is nsxpc.ConnectionState.ACTIVE  # interrupted, not invalid
        finally:
            await settle(conn)

    run(main)


def test_callback_proxies_and_handlers_run_on_the_loop(serve: Callable[..., ServerSide]) -> None:
    side = serve()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = nsxpc.Connection(listener_endpoint=side.listener.endpoint, loop=loop)
        conn.remote_object_interface = kitchen_interface()
        threads: list[tuple[str, int, bool]] = []
        done = asyncio.Event()
        invalidated = asyncio.Event()

        def reply(total: int) -> None:
            threads.append(("reply", threading.get_ident(), nsxpc.Connection.current() is conn))
            done.set()

        def barrier() -> None:
            threads.append(("barrier", threading.get_ident(), True))

        def on_invalid() -> None:
            threads.append(("invalidated", threading.get_ident(), True))
            invalidated.set()

        conn.invalidation_handler = on_invalid
        conn.resume()
        proxy = conn.remote_object_proxy_with_error_handler(lambda err: None)
        proxy.add(1, 2, reply)
        conn.schedule_send_barrier(barrier)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        conn.invalidate()
        await asyncio.wait_for(invalidated.wait(), TIMEOUT)
        me = threading.get_ident()
        assert sorted(threads) == sorted([("reply", me, True), ("barrier", me, True), ("invalidated", me, True)])
        assert threads[-1][0] == "invalidated"

    run(main)


def test_synchronous_proxy_on_a_loop_connection(serve: Callable[..., ServerSide]) -> None:
    side = serve()

    async def main() -> None:
        conn = nsxpc.Connection(listener_endpoint=side.listener.endpoint, loop=asyncio.get_running_loop())
        conn.remote_object_interface = kitchen_interface()
        conn.resume()
        try:
            sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=TIMEOUT)
            with pytest.raises(RuntimeError, match="would deadlock"):
                sync.add(1, 2)  # on the loop's own thread: the loop could never deliver it
            # From another thread the loop delivers the reply to the waiting caller.
            assert await asyncio.to_thread(sync.add, 2, 3) == 5
            assert pending(conn) == 0
        finally:
            await settle(conn)

    run(main)


def test_loop_argument_is_checked() -> None:
    with pytest.raises(TypeError, match="asyncio event loop"):
        nsxpc.Connection(mach_service_name="x.y", loop=object())
    with pytest.raises(TypeError, match="asyncio event loop"):
        nsxpc.Listener.anonymous(loop="loop")
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(ValueError, match="closed"):
        nsxpc.Connection(mach_service_name="x.y", loop=loop)


# --------------------------------------------------------------------------- exported async def methods


@pytest.mark.parametrize("client_loop", [False, True], ids=["threaded-client", "loop-client"])
def test_listener_with_loop_serves_async_methods(client_loop: bool) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        impl = AsyncLabImpl()
        server = await loop_server(impl, nsxpc.Interface(AsyncLab))
        try:
            conn = server.client(nsxpc.Interface(AsyncLab), loop=client_loop)
            aproxy = conn.async_remote_object_proxy(timeout=TIMEOUT)
            assert await aproxy.add(2, 40) == 42  # returned, not passed to reply
            assert await aproxy.divmod(17, 5) == (3, 2)  # a tuple for several
            assert await aproxy.nothing() is None
            assert await aproxy.explicit(21) == 42  # calling reply still works
            with pytest.raises(nsxpc.RemoteError, match="ValueError: nope"):
                await aproxy.fail("nope")
            with pytest.raises(nsxpc.RemoteError, match="ZeroDivisionError"):
                await aproxy.divmod(1, 0)
            with pytest.raises(nsxpc.ReplyInvalid, match="returned int, but its reply takes a tuple of 2"):
                await aproxy.bad_return()
            _on_main, has_current, _pid = await aproxy.where()
            assert has_current  # Connection.current() inside the coroutine
            # One-way async methods, started in the order sent.
            for i in range(5):
                await aproxy.record(i)
            assert await aproxy.recorded() == [0, 1, 2, 3, 4]
            # Coroutines interleave at their awaits: a waiting one does not hold up the others.
            waiting = asyncio.create_task(aproxy.hold(1))
            assert await aproxy.sleep_then(0, 2) == 2
            assert not waiting.done()
            assert await aproxy.release_held() == 1
            assert await waiting == 1
            assert server.delegate_threads == [loop_thread]
        finally:
            await server.close()

    run(main)


def test_sync_methods_run_on_the_listeners_loop() -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        ran_on: list[int] = []

        class Kitchen(KitchenImpl):
            def add(self, a: int, b: int, reply: Any) -> None:
                ran_on.append(threading.get_ident())
                reply(a + b)

        server = await loop_server(Kitchen(), kitchen_interface())
        try:
            conn = server.client(kitchen_interface(), loop=False)
            sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=TIMEOUT)
            assert await asyncio.to_thread(sync.add, 4, 5) == 9  # the server side needs the loop free
            assert ran_on == [loop_thread]
        finally:
            await server.close()

    run(main)


def test_async_methods_need_a_loop() -> None:
    conn = nsxpc.Connection(mach_service_name="x.y")
    conn.exported_interface = nsxpc.Interface(AsyncLab)
    with pytest.raises(TypeError, match=r"add, bad_return, crash, .* are async def: .*loop="):
        conn.exported_object = AsyncLabImpl()
    conn.invalidate()


# --------------------------------------------------------------------------- asyncio services


@pytest.fixture
def aio_bundle(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A service bundle whose executable serves AsyncLab with RunLoopType asyncio."""
    folder = tempfile.mkdtemp(prefix="nxa", dir="/tmp")
    monkeypatch.setenv("NSXPC_SERVICES_PATH", folder)
    name = unique_name("aio")
    macos = Path(folder) / f"{name}.xpc" / "Contents" / "MacOS"
    macos.mkdir(parents=True)
    plist = {
        "CFBundleIdentifier": name,
        "CFBundlePackageType": "XPC!",
        "CFBundleExecutable": "aio",
        "XPCService": {
            "ServiceType": "Application",
            "RunLoopType": "asyncio",
            "EnvironmentVariables": {"PROBE_ROOT": str(ROOT)},
        },
    }
    with open(macos.parent / "Info.plist", "wb") as f:
        plistlib.dump(plist, f)
    exe = macos / "aio"
    template = (ROOT / "tests" / "helpers" / "aio_service.py").read_text()
    exe.write_text(template.replace("#!PYTHON", f"#!{sys.executable}", 1))
    exe.chmod(0o755)
    try:
        yield name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("client_loop", [False, True], ids=["threaded-client", "loop-client"])
def test_asyncio_service_runs_async_methods_on_its_loop(aio_bundle: str, client_loop: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop() if client_loop else None
        running = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        conn = nsxpc.Connection(service_name=aio_bundle, loop=loop)
        conn.remote_object_interface = nsxpc.Interface(AsyncLab)
        conn.interruption_handler = lambda: running.call_soon_threadsafe(interrupted.set)
        conn.resume()
        try:
            aproxy = conn.async_remote_object_proxy(timeout=30.0)  # the first call launches it
            on_main, has_current, pid = await aproxy.where()
            assert on_main and has_current  # the service's loop runs on its main thread
            assert pid != os.getpid() and pid == conn.process_identifier
            assert await aproxy.add(1, 2) == 3
            assert await aproxy.divmod(7, 2) == (3, 1)
            with pytest.raises(nsxpc.RemoteError, match="ValueError: far away"):
                await aproxy.fail("far away")
            results = await asyncio.gather(*(aproxy.sleep_then(0.05, i) for i in range(10)))
            assert results == list(range(10))
            # The service dies: an interruption; the next call launches a new instance.
            await aproxy.crash()
            await asyncio.wait_for(interrupted.wait(), TIMEOUT)
            _, _, second = await aproxy.where()
            assert second != pid
        finally:
            await settle(conn)

    run(main)


def test_async_call_on_a_connection_that_cannot_connect(connections: Connections) -> None:
    async def main() -> None:
        conn = connections.make(mach_service_name=unique_name())
        conn.remote_object_interface = kitchen_interface()
        aproxy = conn.async_remote_object_proxy(timeout=TIMEOUT)
        conn.resume()  # nobody listens at that name: the connection is invalidated
        with pytest.raises(nsxpc.ConnectionInvalid, match="no listener"):
            await aproxy.add(1, 2)

    run(main)


def test_every_proxy_makes_async_proxies(serve: Callable[..., ServerSide]) -> None:
    side = serve()

    async def main() -> None:
        conn = nsxpc.Connection(listener_endpoint=side.listener.endpoint, loop=asyncio.get_running_loop())
        conn.remote_object_interface = kitchen_interface()
        conn.resume()
        try:
            aproxy = conn.remote_object_proxy.async_remote_object_proxy(timeout=TIMEOUT)  # NSXPCProxyCreating
            assert await aproxy.add(1, 2) == 3
            assert await aproxy.async_remote_object_proxy().add(2, 2) == 4
            got: list[int] = []
            done = asyncio.Event()
            callback = aproxy.remote_object_proxy_with_error_handler(lambda err: None)
            callback.add(3, 3, lambda total: (got.append(total), done.set()))
            await asyncio.wait_for(done.wait(), TIMEOUT)
            sync = aproxy.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=TIMEOUT)
            assert await asyncio.to_thread(sync.add, 4, 4) == 8
            assert got == [6]
            assert sorted(dir(aproxy)) == sorted(kitchen_interface().selectors)
            with pytest.raises(ValueError, match="timeout"):
                conn.async_remote_object_proxy(timeout=0)
        finally:
            await settle(conn)

    run(main)
