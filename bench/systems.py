"""The systems ``bench/compare.py`` measures: one server and one client for each.

Every server runs in its own child process, started before any timing with

    python bench/systems.py serve KIND FOLDER

It binds a Unix socket under FOLDER, prints ``ready`` and serves until its
standard input closes. Each client below lives in the parent process and offers
the scenarios its system supports:

- ``call(i)``: a small call whose reply is ``i + 1`` (a round trip);
- ``oneway(n)``: ``n`` messages that want no reply, pipelined, then one round
  trip, whose reply proves every message before it was handled;
- ``echo(payload)``: the payload sent and returned;
- ``connect_first_call()``: a new connection and its first call, in
  nanoseconds; the connection is closed after the clock stops.

A client raises ``Unsupported`` for a scenario its system does not have, and
the table shows "n/a". The peers are imported only by their own client and
server, so a missing one (the ``bench`` extra not installed) costs only its row.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the repository root: nsxpc/

import attrs  # noqa: E402
import msgpack  # noqa: E402
from _common import time_ping_pong  # noqa: E402  (bench/, this script's folder)

import nsxpc  # noqa: E402

CALL_TIMEOUT = 60.0  # seconds: a bound on every nsxpc call, far above any figure here
BIG = 256 * 1024 * 1024  # frame and message caps raised on both sides for the 64 MiB echo
NSXPC_SERVICE = "bench.compare"
INLINE_SERVICE = "bench.compare.inline"
SESSION_SERVICE = "bench.compare.session"
HAS_SHARED_MEMORY = hasattr(nsxpc, "SharedMemory")
PING = b"pingpong"
PING_FRAME = struct.pack(">I", len(PING)) + PING
HEADER = struct.Struct(">I")


class Unsupported(Exception):
    """This system has no such scenario (shown as n/a)."""


def recv_exactly(sock: socket.socket, buf: bytearray | memoryview) -> None:
    view = memoryview(buf)
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("the peer closed the connection")
        view = view[n:]


# ---------------------------------------------------------------- nsxpc protocol


@nsxpc.protocol
class BenchService(Protocol):
    """What the nsxpc rows call: a small call, a message without reply, an echo."""

    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None: ...
    def note(self, i: int) -> None: ...
    def echo(self, data: bytes, reply: Callable[[bytes], None]) -> None: ...

    if HAS_SHARED_MEMORY:  # one protocol for every nsxpc row, whatever this checkout has

        def echo_region(self, region: nsxpc.SharedMemory, reply: Callable[[nsxpc.SharedMemory], None]) -> None: ...


class BenchObject:
    def __init__(self) -> None:
        self.notes = 0

    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None:
        reply(a + b)

    def note(self, i: int) -> None:
        self.notes += 1

    def echo(self, data: bytes, reply: Callable[[bytes], None]) -> None:
        reply(data)

    def echo_region(self, region: Any, reply: Callable[[Any], None]) -> None:
        with region:  # our fd closes once the reply has carried a duplicate back
            reply(region)


def nsxpc_limits(inline: bool = False) -> Any:
    """The default limits but a frame cap for the 64 MiB echo on both sides.

    Large ``bytes`` travel through shared memory by default (above
    ``shared_memory_threshold``); ``inline`` turns that off so that the payload
    goes through msgpack and the socket, which needs the larger frame cap.
    """
    if inline:
        return nsxpc.Limits(max_frame_size=BIG, shared_memory_threshold=None)
    return nsxpc.Limits(max_frame_size=BIG)


def has_shared_memory_promotion() -> bool:
    return any(field.name == "shared_memory_threshold" for field in attrs.fields(nsxpc.Limits))


# ---------------------------------------------------------------------- servers


def _accept_loop(server: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """A thread per connection, as a plain threaded server does."""
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _listen(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(128)
    return server


def serve_floor(folder: Path) -> None:
    """Raw frames echoed back (floor.sock), and a msgpack sink (msgpack.sock)."""

    def echo(conn: socket.socket) -> None:
        # A 4-byte big-endian length and the body, echoed whole; recv_into a
        # buffer kept from one message to the next, so that nothing is allocated
        # per echo and a 64 MiB body is copied in and out once: the least a copy
        # through the socket costs.
        header = bytearray(4)
        body = bytearray(0)
        with conn:
            try:
                while True:
                    recv_exactly(conn, header)
                    size = HEADER.unpack(header)[0]
                    if len(body) != size:
                        body = bytearray(size)
                    recv_exactly(conn, body)
                    conn.sendall(header)
                    conn.sendall(body)
            except ConnectionError:
                return

    def sink(conn: socket.socket) -> None:
        # msgpack stream of [kind, value]: kind 1 is a message that wants no
        # reply (counted), kind 0 wants its value + 1 back.
        unpacker = msgpack.Unpacker()
        count = 0
        with conn:
            while True:
                data = conn.recv(262144)
                if not data:
                    return
                unpacker.feed(data)
                for kind, value in unpacker:
                    if kind == 1:
                        count += 1
                    else:
                        conn.sendall(msgpack.packb(value + 1))

    for name, handle in (("floor.sock", echo), ("msgpack.sock", sink)):
        server = _listen(str(folder / name))
        threading.Thread(target=_accept_loop, args=(server, handle), daemon=True).start()


class _ListenerDelegate:
    def should_accept_new_connection(self, listener: nsxpc.Listener, connection: nsxpc.Connection) -> bool:
        connection.exported_interface = nsxpc.Interface(BenchService)
        connection.exported_object = BenchObject()
        connection.resume()
        return True


def serve_nsxpc(folder: Path) -> None:
    listener = nsxpc.Listener(mach_service_name=NSXPC_SERVICE, limits=nsxpc_limits())
    listener.delegate = _ListenerDelegate()
    listener.resume()
    _keep.append(listener)


def serve_nsxpc_inline(folder: Path) -> None:
    listener = nsxpc.Listener(mach_service_name=INLINE_SERVICE, limits=nsxpc_limits(inline=True))
    listener.delegate = _ListenerDelegate()
    listener.resume()
    _keep.append(listener)


def serve_session(folder: Path) -> None:
    def on_message(message: Any) -> Any:
        body = message.decode()
        if body["op"] == "add":
            return {"r": body["a"] + body["b"]}
        return None  # "note": no reply wanted

    listener = nsxpc.XPCListener(  # type: ignore[attr-defined]
        mach_service=SESSION_SERVICE, incoming_session_handler=lambda request: request.accept(on_message)
    )
    _keep.append(listener)


def serve_mp_connection(folder: Path) -> None:
    from multiprocessing.connection import Listener

    listener = Listener(str(folder / "mpconn.sock"), family="AF_UNIX")  # no authkey: no pickle from strangers here

    def handle(conn: Any) -> None:
        with conn:
            try:
                while True:
                    op, value = conn.recv()
                    if op == "add":
                        conn.send(value + 1)
                    elif op == "echo":
                        conn.send_bytes(value)
                    # "note": no reply
            except EOFError:
                return

    def accept() -> None:
        while True:
            threading.Thread(target=handle, args=(listener.accept(),), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


class MPAdder:
    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, data: bytes) -> bytes:
        return data


def serve_mp_managers(folder: Path) -> None:
    from multiprocessing.managers import BaseManager

    class Manager(BaseManager):
        pass

    Manager.register("Adder", MPAdder)
    manager = Manager(address=str(folder / "managers.sock"), authkey=b"bench")
    server = manager.get_server()
    threading.Thread(target=server.serve_forever, daemon=True).start()


def serve_pyro5(folder: Path) -> None:
    import Pyro5.api
    import serpent

    @Pyro5.api.expose
    class PyroAdder:
        def __init__(self) -> None:
            self.notes = 0

        def add(self, a: int, b: int) -> int:
            return a + b

        @Pyro5.api.oneway
        def note(self, i: int) -> None:
            self.notes += 1

        def echo(self, data: Any) -> bytes:
            return serpent.tobytes(data)  # serpent carries bytes as base64 in a dict

    daemon = Pyro5.api.Daemon(unixsocket=str(folder / "pyro5.sock"))
    daemon.register(PyroAdder(), "bench")  # one shared instance: note() counts
    threading.Thread(target=daemon.requestLoop, daemon=True).start()


def serve_rpyc(folder: Path) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class BenchRpyc(rpyc.Service):  # type: ignore[misc]
        notes = 0

        def exposed_add(self, a: int, b: int) -> int:
            return a + b

        def exposed_note(self, i: int) -> None:
            BenchRpyc.notes += 1

        def exposed_echo(self, data: bytes) -> bytes:
            return data

    server = ThreadedServer(BenchRpyc, socket_path=str(folder / "rpyc.sock"), logger=_quiet_logger())
    threading.Thread(target=server.start, daemon=True).start()


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("bench.rpyc")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def serve_grpc(folder: Path) -> None:
    import grpc

    def add(request: bytes, context: Any) -> bytes:
        return struct.pack(">q", struct.unpack(">q", request)[0] + 1)

    def echo(request: bytes, context: Any) -> bytes:
        return request

    def sink(requests: Any, context: Any) -> bytes:
        count = sum(1 for _ in requests)
        return struct.pack(">q", count)

    # No serializers: requests and responses are raw bytes, so no protoc step.
    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Add": grpc.unary_unary_rpc_method_handler(add),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Sink": grpc.stream_unary_rpc_method_handler(sink),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("unix:" + str(folder / "grpc.sock"))
    server.start()
    _keep.append(server)


def serve_zmq(folder: Path) -> None:
    import zmq

    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.bind("ipc://" + str(folder / "zmq.sock"))

    def loop() -> None:
        while True:
            op, value = msgpack.unpackb(rep.recv())
            rep.send(msgpack.packb(value + 1 if op == "add" else value))

    threading.Thread(target=loop, daemon=True).start()


_keep: list[Any] = []  # servers that must stay referenced

SERVERS: dict[str, Callable[[Path], None]] = {
    "floor": serve_floor,
    "nsxpc": serve_nsxpc,
    "nsxpc_inline": serve_nsxpc_inline,
    "session": serve_session,
    "mp_connection": serve_mp_connection,
    "mp_managers": serve_mp_managers,
    "pyro5": serve_pyro5,
    "rpyc": serve_rpyc,
    "grpc": serve_grpc,
    "zmq": serve_zmq,
}


def serve(kind: str, folder: Path) -> int:
    os.environ["NSXPC_RUNTIME_DIR"] = str(folder / "nsxpc")
    SERVERS[kind](folder)
    print("ready", flush=True)
    sys.stdin.read()  # returns when the parent closes the pipe (or dies)
    os._exit(0)  # daemon threads block in accept/recv: skip the interpreter's shutdown


# ---------------------------------------------------------------------- clients


class Client:
    """One system as the parent sees it. Subclasses override what they support."""

    #: the server kind this client talks to (a key of SERVERS)
    server = ""
    #: how it does the one-way scenario (shown in the table's notes)
    oneway_how = ""
    #: why a scenario is n/a (shown in the table's notes)
    why_not: dict[str, str] = {}

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self) -> None:
        """Connect once for the steady-state scenarios (round trip, one-way, echo)."""

    def close(self) -> None:
        """Close what open() made."""

    def call(self, i: int) -> int:
        raise Unsupported

    def time_calls(self, start: int, n: int) -> list[int]:
        """n round trips, each timed on its own in nanoseconds."""
        samples = [0] * n
        clock = time.perf_counter_ns
        call = self.call
        for k in range(n):
            t0 = clock()
            result = call(start + k)
            samples[k] = clock() - t0
            if result != start + k + 1:
                raise RuntimeError(f"call({start + k}) returned {result!r}")
        return samples

    def oneway(self, n: int) -> None:
        raise Unsupported

    def echo(self, payload: bytes) -> bytes | bytearray:
        raise Unsupported

    def connect_first_call(self) -> int:
        """Nanoseconds from a new connection to its first reply; the connection is closed
        after the clock stops, and the reply checked."""
        clock = time.perf_counter_ns
        t0 = clock()
        result, expected, close = self._first_call()
        elapsed = clock() - t0
        close()
        if result != expected:
            raise RuntimeError(f"the first call returned {result!r}, not {expected!r}")
        return elapsed

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        """Connect anew and make the first call: (its result, the result expected, what
        closes the connection)."""
        raise Unsupported

    def abort(self) -> None:
        """Break a call that has not returned in time (called from another thread)."""


class FloorClient(Client):
    """The raw Unix-socket floor: length-prefixed bytes, blocking sockets, nothing else."""

    server = "floor"

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.folder / "floor.sock"))
        return sock

    def open(self) -> None:
        self.sock = self._connect()
        self.back = bytearray(0)

    def close(self) -> None:
        self.sock.close()

    def time_calls(self, start: int, n: int) -> list[int]:
        return time_ping_pong(self.sock, PING_FRAME, n)

    def echo(self, payload: bytes) -> bytes | bytearray:
        self.sock.sendall(HEADER.pack(len(payload)))
        self.sock.sendall(payload)
        header = bytearray(4)
        recv_exactly(self.sock, header)
        size = HEADER.unpack(header)[0]
        if len(self.back) != size:  # kept between echoes, as the server's is
            self.back = bytearray(size)
        recv_exactly(self.sock, self.back)
        return self.back

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        sock = self._connect()
        sock.sendall(PING_FRAME)
        got = bytearray(len(PING_FRAME))
        recv_exactly(sock, got)
        return bytes(got), PING_FRAME, sock.close


class MsgpackFloorClient(Client):
    """The one-way floor: one ``msgpack.packb`` and one ``sendall`` per message."""

    server = "floor"
    oneway_how = "packb([1, i]) + sendall per message; server: Unpacker"

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.folder / "msgpack.sock"))

    def close(self) -> None:
        self.sock.close()

    def oneway(self, n: int) -> None:
        sock, packb = self.sock, msgpack.packb
        for i in range(n):
            sock.sendall(packb([1, i]))
        sock.sendall(packb([0, n]))
        unpacker = msgpack.Unpacker()
        while True:
            data = sock.recv(64)
            if not data:
                raise ConnectionError("the msgpack floor went away")
            unpacker.feed(data)
            for value in unpacker:
                if value != n + 1:
                    raise RuntimeError(f"the msgpack floor answered {value!r}")
                return


class NsxpcClient(Client):
    """nsxpc's synchronous proxy (value-returning form) over a named service."""

    server = "nsxpc"
    oneway_how = "plain proxy, method without reply"

    def _connect(self) -> tuple[nsxpc.Connection, Any]:
        conn = nsxpc.Connection(mach_service_name=NSXPC_SERVICE, limits=nsxpc_limits())
        conn.remote_object_interface = nsxpc.Interface(BenchService)
        conn.resume()
        sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda error: None, timeout=CALL_TIMEOUT)
        return conn, sync

    def open(self) -> None:
        self.conn, self.sync = self._connect()
        self.add = self.sync.add

    def close(self) -> None:
        self.conn.invalidate()

    def call(self, i: int) -> int:
        return self.add(i, 1)  # type: ignore[no-any-return]

    def oneway(self, n: int) -> None:
        note = self.conn.remote_object_proxy.note
        for i in range(n):
            note(i)
        if self.add(n, 1) != n + 1:
            raise RuntimeError("the round trip after the one-way messages failed")

    def echo(self, payload: bytes) -> bytes | bytearray:
        return self.sync.echo(payload)  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        conn, sync = self._connect()
        return sync.add(1, 2), 3, conn.invalidate


class NsxpcInlineClient(NsxpcClient):
    """The sync proxy's echo with shared-memory promotion off on both sides."""

    server = "nsxpc_inline"
    why_not = {
        "round trip": "the same as the sync proxy's",
        "one-way": "the same as the sync proxy's",
        "connect": "the same as the sync proxy's",
    }

    @staticmethod
    def missing() -> str | None:
        if not has_shared_memory_promotion():
            return "nsxpc.Limits has no shared_memory_threshold yet: every echo is inline"
        return None

    def _connect(self) -> tuple[nsxpc.Connection, Any]:
        conn = nsxpc.Connection(mach_service_name=INLINE_SERVICE, limits=nsxpc_limits(inline=True))
        conn.remote_object_interface = nsxpc.Interface(BenchService)
        conn.resume()
        sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda error: None, timeout=CALL_TIMEOUT)
        return conn, sync

    def call(self, i: int) -> int:
        raise Unsupported

    def oneway(self, n: int) -> None:
        raise Unsupported

    def connect_first_call(self) -> int:
        raise Unsupported


class NsxpcRegionClient(NsxpcClient):
    """The echo through an ``nsxpc.SharedMemory`` region kept between calls.

    As bench/bulk.py's "region" kind: the parent copies the payload into the
    region, calls ``echo_region(region)``, the service replies with the region
    it received, and the parent copies the payload out of the returned mapping
    into a buffer it keeps. No ``bytes`` object is made per echo.
    """

    why_not = {
        "round trip": "the same as the sync proxy's",
        "one-way": "the same as the sync proxy's",
        "connect": "the same as the sync proxy's",
    }

    @staticmethod
    def missing() -> str | None:
        return None if HAS_SHARED_MEMORY else "nsxpc.SharedMemory does not exist yet"

    def open(self) -> None:
        super().open()
        self.region: Any = None
        self.back = bytearray(0)

    def close(self) -> None:
        if self.region is not None:
            self.region.close()
        super().close()

    def call(self, i: int) -> int:
        raise Unsupported

    def oneway(self, n: int) -> None:
        raise Unsupported

    def echo(self, payload: bytes) -> bytes | bytearray:
        size = len(payload)
        if self.region is None or len(self.back) != size:
            if self.region is not None:
                self.region.close()
            self.region = nsxpc.SharedMemory(size)  # type: ignore[attr-defined]
            self.back = bytearray(size)
        self.region.buffer[:] = payload
        returned = self.sync.echo_region(self.region)
        memoryview(self.back)[:] = returned.buffer
        returned.close()
        return self.back

    def connect_first_call(self) -> int:
        raise Unsupported


class NsxpcAsyncClient(Client):
    """nsxpc's asyncio proxy: ``await aproxy.add(i, 1)`` on a loop in its own thread."""

    server = "nsxpc"
    why_not = {
        "one-way": "measured on the sync row",
        "echo": "measured on the sync row",
        "connect": "measured on the sync row",
    }

    @staticmethod
    def missing() -> str | None:
        if not hasattr(nsxpc.Connection, "async_remote_object_proxy"):
            return "Connection.async_remote_object_proxy does not exist yet"
        return None

    def open(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-asyncio", daemon=True)
        self.thread.start()
        self.conn = self._run(self._connect())

    async def _connect(self) -> nsxpc.Connection:
        try:
            conn = nsxpc.Connection(
                mach_service_name=NSXPC_SERVICE, limits=nsxpc_limits(), loop=asyncio.get_running_loop()
            )
        except NotImplementedError:  # loop= not wired yet: the proxy may still work without it
            conn = nsxpc.Connection(mach_service_name=NSXPC_SERVICE, limits=nsxpc_limits())
        conn.remote_object_interface = nsxpc.Interface(BenchService)
        conn.resume()
        self.aproxy = conn.async_remote_object_proxy(timeout=CALL_TIMEOUT)  # type: ignore[attr-defined]
        return conn

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=600)

    def close(self) -> None:
        self.conn.invalidate()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    def time_calls(self, start: int, n: int) -> list[int]:
        async def batch() -> list[int]:
            samples = [0] * n
            clock = time.perf_counter_ns
            add = self.aproxy.add
            for k in range(n):
                t0 = clock()
                result = await add(start + k, 1)
                samples[k] = clock() - t0
                if result != start + k + 1:
                    raise RuntimeError(f"add({start + k}, 1) returned {result!r}")
            return samples

        return self._run(batch())  # type: ignore[no-any-return]


class SessionClient(Client):
    """XPCSession: ``send_sync`` for the round trip, ``send`` for one-way messages."""

    server = "session"
    oneway_how = "send() without reply handler"
    why_not = {"echo": "not measured for sessions"}

    @staticmethod
    def missing() -> str | None:
        if not hasattr(nsxpc, "XPCSession"):
            return "nsxpc.XPCSession does not exist yet"
        return None

    def _connect(self) -> Any:
        # No incoming message handler, as the proxy client exports no object: either makes
        # the connection's queue read everything, and a synchronous caller then steps around
        # it (two epoll_ctl per call). Like for like; bench/README.md gives both figures.
        return nsxpc.XPCSession(mach_service=SESSION_SERVICE)  # type: ignore[attr-defined]

    def open(self) -> None:
        self.session = self._connect()

    def close(self) -> None:
        self.session.cancel(reason="bench done")

    def call(self, i: int) -> int:
        return self.session.send_sync({"op": "add", "a": i, "b": 1}).decode()["r"]  # type: ignore[no-any-return]

    def oneway(self, n: int) -> None:
        send = self.session.send
        for i in range(n):
            send({"op": "note", "i": i})
        if self.call(n) != n + 1:
            raise RuntimeError("the round trip after the one-way messages failed")

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        session = self._connect()
        result = session.send_sync({"op": "add", "a": 1, "b": 2}).decode()["r"]
        return result, 3, lambda: session.cancel(reason="bench done")


class MPConnectionClient(Client):
    """multiprocessing.connection: pickled tuples, no RPC layer."""

    server = "mp_connection"
    oneway_how = "send() without recv()"

    def _connect(self) -> Any:
        from multiprocessing.connection import Client as MPClient

        return MPClient(str(self.folder / "mpconn.sock"), family="AF_UNIX")

    def open(self) -> None:
        self.conn = self._connect()

    def close(self) -> None:
        self.conn.close()

    def call(self, i: int) -> int:
        self.conn.send(("add", i))
        return self.conn.recv()  # type: ignore[no-any-return]

    def oneway(self, n: int) -> None:
        send = self.conn.send
        for i in range(n):
            send(("note", i))
        if self.call(n) != n + 1:
            raise RuntimeError("the round trip after the one-way messages failed")

    def echo(self, payload: bytes) -> bytes | bytearray:
        self.conn.send(("echo", payload))
        return self.conn.recv_bytes()  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        conn = self._connect()
        conn.send(("add", 1))
        return conn.recv(), 2, conn.close


class MPManagersClient(Client):
    """multiprocessing.managers: a registered class, called through its AutoProxy."""

    server = "mp_managers"
    why_not = {"one-way": "every proxy call waits for its reply"}

    def _connect(self) -> tuple[Any, Any]:
        from multiprocessing.managers import BaseManager

        class Manager(BaseManager):
            pass

        Manager.register("Adder")
        manager = Manager(address=str(self.folder / "managers.sock"), authkey=b"bench")
        manager.connect()
        return manager, manager.Adder()  # type: ignore[attr-defined]

    def open(self) -> None:
        self.manager, self.adder = self._connect()
        self.add = self.adder.add

    def close(self) -> None:
        del self.add, self.adder  # the proxy's decref goes out now, while the server is up

    def call(self, i: int) -> int:
        return self.add(i, 1)  # type: ignore[no-any-return]

    def echo(self, payload: bytes) -> bytes | bytearray:
        return self.adder.echo(payload)  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        manager, adder = self._connect()
        held = [manager, adder]  # dropped once the clock has stopped: the proxy and manager close then
        return adder.add(1, 2), 3, held.clear


class Pyro5Client(Client):
    """Pyro5 (default serializer: serpent) over its Unix-socket transport."""

    server = "pyro5"
    oneway_how = "@oneway method (the server runs each in a new thread)"

    def _connect(self) -> Any:
        import Pyro5.api

        return Pyro5.api.Proxy(f"PYRO:bench@./u:{self.folder / 'pyro5.sock'}")

    def open(self) -> None:
        self.proxy = self._connect()
        self.add = self.proxy.add

    def close(self) -> None:
        self.proxy._pyroRelease()

    def call(self, i: int) -> int:
        return self.add(i, 1)  # type: ignore[no-any-return]

    def oneway(self, n: int) -> None:
        note = self.proxy.note
        for i in range(n):
            note(i)
        if self.add(n, 1) != n + 1:
            raise RuntimeError("the round trip after the one-way messages failed")

    def echo(self, payload: bytes) -> bytes | bytearray:
        import serpent

        return serpent.tobytes(self.proxy.echo(payload))  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        proxy = self._connect()  # Pyro5 connects on the first call
        return proxy.add(1, 2), 3, proxy._pyroRelease


class RpycClient(Client):
    """RPyC's classic service model: ``conn.root.add`` bound once."""

    server = "rpyc"
    why_not = {
        "one-way": "no one-way calls: async_ requests get replies, and thousands of them "
        "pipelined without a serving thread fill both socket buffers (EOFError: timed out)"
    }

    def _connect(self) -> Any:
        from rpyc.utils.factory import unix_connect

        return unix_connect(str(self.folder / "rpyc.sock"))

    def open(self) -> None:
        self.conn = self._connect()
        self.add = self.conn.root.add

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        # The 64 MiB echo of random bytes has been seen never to return: shutting
        # the socket down ends the call's read with EOFError.
        self.conn._channel.stream.sock.shutdown(socket.SHUT_RDWR)

    def call(self, i: int) -> int:
        return self.add(i, 1)  # type: ignore[no-any-return]

    def echo(self, payload: bytes) -> bytes | bytearray:
        return self.conn.root.echo(payload)  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        conn = self._connect()
        return conn.root.add(1, 2), 3, conn.close


class GrpcClient(Client):
    """grpcio over a Unix socket; generic handlers on raw bytes (no protoc step)."""

    server = "grpc"
    oneway_how = "one client-streaming call of n messages"

    def _connect(self) -> tuple[Any, Any]:
        import grpc

        channel = grpc.insecure_channel("unix:" + str(self.folder / "grpc.sock"), options=GRPC_OPTIONS)
        return channel, channel.unary_unary("/bench.Bench/Add")

    def open(self) -> None:
        self.channel, self.add = self._connect()
        self.echo_call = self.channel.unary_unary("/bench.Bench/Echo")
        self.sink = self.channel.stream_unary("/bench.Bench/Sink")

    def close(self) -> None:
        self.channel.close()

    def call(self, i: int) -> int:
        return struct.unpack(">q", self.add(struct.pack(">q", i)))[0]  # type: ignore[no-any-return]

    def oneway(self, n: int) -> None:
        counted = struct.unpack(">q", self.sink(struct.pack(">q", i) for i in range(n)))[0]
        if counted != n:
            raise RuntimeError(f"the stream delivered {counted} of {n} messages")

    def echo(self, payload: bytes) -> bytes | bytearray:
        return self.echo_call(payload)  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        channel, add = self._connect()
        return struct.unpack(">q", add(struct.pack(">q", 1)))[0], 2, channel.close


class ZmqClient(Client):
    """pyzmq REQ/REP carrying msgpack; REQ/REP cannot pipeline, so no one-way."""

    server = "zmq"
    why_not = {"one-way": "REQ/REP allows one request in flight"}

    def _connect(self) -> Any:
        import zmq

        if not hasattr(self, "context"):
            self.context = zmq.Context()
        req = self.context.socket(zmq.REQ)
        req.connect("ipc://" + str(self.folder / "zmq.sock"))
        return req

    def open(self) -> None:
        self.req = self._connect()

    def close(self) -> None:
        self.req.close(linger=0)
        self.context.term()

    def call(self, i: int) -> int:
        self.req.send(msgpack.packb(["add", i]))
        return msgpack.unpackb(self.req.recv())  # type: ignore[no-any-return]

    def echo(self, payload: bytes) -> bytes | bytearray:
        self.req.send(msgpack.packb(["echo", payload]))
        return msgpack.unpackb(self.req.recv())  # type: ignore[no-any-return]

    def _first_call(self) -> tuple[object, object, Callable[[], object]]:
        req = self._connect()
        req.send(msgpack.packb(["add", 1]))
        return msgpack.unpackb(req.recv()), 2, lambda: req.close(linger=0)


def _importable(module: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


#: (key, row label, client class, why it cannot run or None), in table order.
def catalogue() -> list[tuple[str, str, type[Client], Callable[[], str | None]]]:
    return [
        ("floor", "floor: raw Unix socket", FloorClient, lambda: None),
        ("msgpack-floor", "floor: msgpack stream", MsgpackFloorClient, lambda: None),
        ("nsxpc", "nsxpc proxy (sync)", NsxpcClient, lambda: None),
        ("nsxpc-inline", "nsxpc sync proxy, no shared memory", NsxpcInlineClient, NsxpcInlineClient.missing),
        ("nsxpc-region", "nsxpc SharedMemory region", NsxpcRegionClient, NsxpcRegionClient.missing),
        ("nsxpc-async", "nsxpc async proxy", NsxpcAsyncClient, NsxpcAsyncClient.missing),
        ("session", "nsxpc XPCSession", SessionClient, SessionClient.missing),
        ("mp-connection", "multiprocessing.connection", MPConnectionClient, lambda: None),
        ("mp-managers", "multiprocessing.managers", MPManagersClient, lambda: None),
        ("pyro5", "Pyro5", Pyro5Client, lambda: _importable("Pyro5")),
        ("rpyc", "RPyC", RpycClient, lambda: _importable("rpyc")),
        ("grpc", "grpcio", GrpcClient, lambda: _importable("grpc")),
        ("zmq", "pyzmq REQ/REP + msgpack", ZmqClient, lambda: _importable("zmq")),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve" or sys.argv[2] not in SERVERS:
        sys.exit(f"usage: {sys.argv[0]} serve {{{','.join(SERVERS)}}} FOLDER")
    sys.exit(serve(sys.argv[2], Path(sys.argv[3])))
