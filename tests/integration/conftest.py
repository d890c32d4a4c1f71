"""Fixtures for the integration tests: real Unix sockets, real child processes.

Every test gets its own short runtime directory (``NSXPC_RUNTIME_DIR``, inherited
by the children it starts) and unique service names. Every wait is bounded.
Children are killed and reaped, connections and listeners invalidated, sockets
and files closed, at teardown.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import nsxpc
from protocols.kitchen import Kitchen, Rind, kitchen_interface
from tests.helpers.lab import Lab, LabClient, lab_interface

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"
#: The bound of every wait in these tests (generous: a loaded CI machine).
TIMEOUT = 5.0
HEADER = struct.Struct(">IHH")


# --------------------------------------------------------------------------- waiting


class Recorder:
    """A thread-safe list of what happened, with a bounded wait for a condition on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = TIMEOUT) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.items), timeout)
            snapshot = list(self.items)
        assert ok, f"timed out after {timeout}s; got {snapshot!r}"
        return snapshot

    def wait_len(self, n: int, timeout: float = TIMEOUT) -> list[Any]:
        return self.wait_for(lambda items: len(items) >= n, timeout)

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.items)

    # Callables for proxies: each records a tagged outcome.
    def reply(self, tag: Any = None) -> Callable[..., None]:
        def block(*values: Any) -> None:
            self.add(("reply", tag, values))

        return block

    def error(self, tag: Any = None) -> Callable[[Exception], None]:
        def handler(err: Exception) -> None:
            self.add(("error", tag, err))

        return handler

    def event(self, name: str) -> Callable[[], None]:
        def handler() -> None:
            self.add((name,))

        return handler


class LogWatch(logging.Handler):
    """Collects records of the ``nsxpc`` logger and waits (bounded) for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._cond = threading.Condition()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[logging.LogRecord], bool], timeout: float = TIMEOUT) -> logging.LogRecord:
        found: list[logging.LogRecord] = []

        def check() -> bool:
            found[:] = [r for r in self.records if predicate(r)]
            return bool(found)

        with self._cond:
            ok = self._cond.wait_for(check, timeout)
            lines = [f"{r.levelname} {r.getMessage()}" for r in self.records]
        assert ok, f"no matching log record on 'nsxpc' within {timeout}s; got {lines!r}"
        return found[0]


@pytest.fixture
def logwatch() -> Iterator[LogWatch]:
    logger = logging.getLogger("nsxpc")
    watch = LogWatch()
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(old)


# --------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short fresh runtime directory for this test (AF_UNIX paths are limited)."""
    path = tempfile.mkdtemp(prefix="nx", dir="/tmp")
    monkeypatch.setenv("NSXPC_RUNTIME_DIR", path)
    monkeypatch.delenv("NSXPC_SERVICES_PATH", raising=False)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_name() -> str:
    return unique_name()


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- child processes


class Child:
    """A helper script run with this interpreter, the project root on PYTHONPATH."""

    def __init__(self, script: str, args: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.pop("PYTEST_CURRENT_TEST", None)
        if env:
            child_env.update(env)
        self.script = script
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPERS / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env,
            cwd=str(ROOT),
        )
        self._buf = b""
        self.pid = self.proc.pid

    def read_line(self, timeout: float = TIMEOUT) -> str:
        """The next line the child prints (bounded wait); '' if it exited first."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.script} printed no line within {timeout}s; stderr:\n{self.stderr_text()}"
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                rest, self._buf = self._buf, b""
                return rest.decode()
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def wait_ready(self) -> Child:
        line = self.read_line()
        assert line.startswith("READY "), f"{self.script} did not get ready: {line!r}; stderr:\n{self.stderr_text()}"
        assert int(line.split()[1]) == self.pid
        return self

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill9(self) -> int:
        """SIGKILL the child and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=TIMEOUT)

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
            self._stderr.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """``spawn(script, *args, env=None, ready=True)``: start a helper; killed and reaped at teardown."""
    children: list[Child] = []

    def start(script: str, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> Child:
        child = Child(script, args, env)
        children.append(child)
        if ready:
            child.wait_ready()
        return child

    try:
        yield start
    finally:
        for child in children:
            child.close()


@pytest.fixture
def lab_server(spawn: Callable[..., Child], service_name: str) -> Child:
    """A child process serving the Lab protocol at ``service_name``."""
    child = spawn("lab_server.py", service_name)
    child.name = service_name  # type: ignore[attr-defined]
    return child


# --------------------------------------------------------------------------- connections


class Connections:
    """Makes client connections and invalidates every one at teardown."""

    def __init__(self) -> None:
        self.made: list[nsxpc.Connection] = []

    def make(self, **kwargs: Any) -> nsxpc.Connection:
        conn = nsxpc.Connection(**kwargs)
        self.made.append(conn)
        return conn

    def lab(
        self,
        name: str,
        *,
        resume: bool = True,
        interface: nsxpc.Interface | None = None,
        exported: object = None,
    ) -> nsxpc.Connection:
        conn = self.make(mach_service_name=name)
        conn.remote_object_interface = interface if interface is not None else lab_interface()
        if exported is not None:
            conn.exported_interface = nsxpc.Interface(LabClient)
            conn.exported_object = exported
        if resume:
            conn.resume()
        return conn

    def close(self) -> None:
        for conn in self.made:
            conn.invalidate()


@pytest.fixture
def connections() -> Iterator[Connections]:
    made = Connections()
    try:
        yield made
    finally:
        made.close()


def sync_proxy(conn: nsxpc.Connection, timeout: float = TIMEOUT) -> Any:
    """A value-returning synchronous proxy whose error handler must never run."""

    def never(err: Exception) -> None:  # the value-returning form raises instead
        raise AssertionError(f"error handler called in the value-returning form: {err!r}")

    return conn.synchronous_remote_object_proxy_with_error_handler(never, timeout=timeout)


# --------------------------------------------------------------------------- in-process listeners


class KitchenImpl:
    """The kitchen, served in this process."""

    def __init__(self) -> None:
        self.cookies: list[Any] = []

    def feed_me_a_cookie(self, cookie: Any) -> None:
        self.cookies.append(cookie)

    def feed_me_a_watermelon(self, watermelon: Any, reply: Any) -> None:
        reply(Rind(thickness=watermelon.weight / 10, seeds=[1]))

    def feed_me_fries(self, fries: list, reply: Any) -> None:  # type: ignore[type-arg]
        reply(len(fries), "yum")

    def add(self, a: int, b: int, reply: Any) -> None:
        reply(a + b)

    def cookies_eaten(self, reply: Any) -> None:
        reply(list(self.cookies))


class ServerSide:
    """An in-process listener and what happened to the connections it accepted."""

    def __init__(
        self,
        listener: nsxpc.Listener,
        accept: bool = True,
        exported: object = None,
        interface: nsxpc.Interface | None = None,
    ) -> None:
        self.listener = listener
        self.accept = accept
        self.kitchen = KitchenImpl()
        self.exported = exported if exported is not None else self.kitchen
        self.interface = interface
        self.accepted: list[nsxpc.Connection] = []
        self.events = Recorder()  # ("accepted", conn) / ("invalidated", conn) / ("offered", conn)

    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        self.events.add(("offered", conn))
        if not self.accept:
            return False
        conn.exported_interface = self.interface if self.interface is not None else kitchen_interface()
        conn.exported_object = self.exported
        conn.invalidation_handler = lambda: self.events.add(("invalidated", conn))
        self.accepted.append(conn)
        conn.resume()
        self.events.add(("accepted", conn))
        return True

    def wait_invalidated(self, n: int = 1) -> list[nsxpc.Connection]:
        items = self.events.wait_for(lambda items: sum(1 for i in items if i[0] == "invalidated") >= n)
        return [i[1] for i in items if i[0] == "invalidated"]

    def close(self) -> None:
        self.listener.invalidate()
        for conn in self.accepted:
            conn.invalidate()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerSide]]:
    """``serve(mach_service_name=None, accept=True, delegate=True, exported=None, interface=None,
    limits=None)``: an in-process listener exporting the kitchen (or ``exported``)."""
    made: list[ServerSide] = []

    def start(
        mach_service_name: str | None = None,
        accept: bool = True,
        delegate: bool = True,
        exported: object = None,
        interface: nsxpc.Interface | None = None,
        limits: nsxpc.Limits | None = None,
    ) -> ServerSide:
        extra: dict[str, Any] = {} if limits is None else {"limits": limits}
        if mach_service_name is None:
            listener = nsxpc.Listener.anonymous(**extra)
        else:
            listener = nsxpc.Listener(mach_service_name=mach_service_name, **extra)
        side = ServerSide(listener, accept, exported, interface)
        made.append(side)
        if delegate:
            listener.delegate = side
        listener.resume()
        return side

    try:
        yield start
    finally:
        for side in made:
            side.close()


def kitchen_client(connections: Connections, **kwargs: Any) -> nsxpc.Connection:
    conn = connections.make(**kwargs)
    conn.remote_object_interface = kitchen_interface()
    conn.resume()
    return conn


# --------------------------------------------------------------------------- raw wire


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def frame(body: bytes, nfds: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(len(body), nfds, flags) + body


def nested_lists(depth: int) -> list[Any]:
    """An empty list nested ``depth`` levels deep."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def ext_object(name: str, fields: dict[str, Any]) -> msgpack.ExtType:
    """A coded object as the wire carries it: Ext 7 of ``[wire name, {key: value}]``."""
    return msgpack.ExtType(7, pack([name, fields]))


class RawClient:
    """A hand-driven peer speaking the wire format over a real Unix socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self._buf = b""

    @classmethod
    def to_endpoint(cls, endpoint: nsxpc.ListenerEndpoint, *, handshake: bool = True) -> RawClient:
        raw = cls(endpoint.path)
        if handshake:
            raw.handshake(endpoint.token)
        return raw

    def handshake(self, token: bytes, version: int = 1) -> list[Any]:
        self.send_msg([0, "nsxpc", version, "nsxpc", token, {}])
        msg = self.recv_msg()
        assert msg is not None and msg[0] == 1, f"expected WELCOME, got {msg!r}"
        return msg

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_msg(self, obj: Any) -> None:
        self.send(frame(pack(obj)))

    def invoke(self, seq: int, selector: str, args: list[Any], target: int = 1) -> None:
        self.send_msg([3, seq, target, selector, args])

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self._buf += chunk
        return True

    def recv_msg(self) -> Any:
        """The next message, or None at end of stream (bounded by the socket timeout)."""
        if not self._fill(HEADER.size):
            assert not self._buf, f"stream ended inside a frame header: {self._buf!r}"
            return None
        length, _nfds, _flags = HEADER.unpack_from(self._buf)
        if not self._fill(HEADER.size + length):
            raise AssertionError("stream ended inside a frame")
        body = self._buf[HEADER.size : HEADER.size + length]
        self._buf = self._buf[HEADER.size + length :]
        return msgpack.unpackb(body, raw=False, strict_map_key=False)

    def expect_closed(self) -> None:
        """The peer closes the stream (bounded wait); any frame before that is ignored."""
        while True:
            msg = self.recv_msg()
            if msg is None:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_clients() -> Iterator[Callable[..., RawClient]]:
    made: list[RawClient] = []

    def make(endpoint: nsxpc.ListenerEndpoint, *, handshake: bool = True) -> RawClient:
        raw = RawClient(endpoint.path)
        made.append(raw)
        if handshake:
            raw.handshake(endpoint.token)
        return raw

    try:
        yield make
    finally:
        for raw in made:
            raw.close()


__all__ = [
    "HEADER",
    "TIMEOUT",
    "Child",
    "Connections",
    "Kitchen",
    "Lab",
    "LabClient",
    "LogWatch",
    "RawClient",
    "Recorder",
    "ServerSide",
    "ext_object",
    "frame",
    "kitchen_client",
    "nested_lists",
    "pack",
    "sync_proxy",
    "unique_name",
]


def settle(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll a condition that has no notification (fd and thread counts), bounded."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.01)
    return True
