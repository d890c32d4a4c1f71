"""XPCSession and XPCListener across real processes (issue 7; API.md section 11).

A child (tests/helpers/session_server.py) serves sessions at a mach service name
or an anonymous endpoint; some tests serve in-process to reach the server side.
Every wait is bounded; sessions and listeners are cancelled at teardown.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import nsxpc
from nsxpc import xpc
from tests.integration.conftest import TIMEOUT, Child, RawClient, Recorder, unique_name

ROOT = Path(__file__).resolve().parents[2]


@nsxpc.secure_coding
@attrs.frozen
class AddResult:
    sum: int


@nsxpc.secure_coding
@attrs.frozen
class Point:
    x: int
    y: int


class Made:
    """Sessions, listeners and connections made by a test, cancelled at teardown."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def close(self) -> None:
        for item in reversed(self.items):
            if isinstance(item, nsxpc.XPCSession | nsxpc.XPCListener):
                item.cancel()
            elif isinstance(item, nsxpc.Connection | nsxpc.Listener):
                item.invalidate()
            elif isinstance(item, xpc.Connection):
                xpc.connection_cancel(item)


@pytest.fixture
def made() -> Iterator[Made]:
    m = Made()
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def server(spawn: Callable[..., Child], service_name: str) -> Child:
    child = spawn("session_server.py", "session", service_name)
    child.name = service_name  # type: ignore[attr-defined]
    return child


def session_to(made: Made, name: str, **kwargs: Any) -> nsxpc.XPCSession:
    return made(nsxpc.XPCSession(mach_service=name, **kwargs))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- messages and replies


def test_ping_reply_handler_and_sync_send(server: Child, made: Made) -> None:
    got = Recorder()
    session = session_to(made, server.name)  # type: ignore[attr-defined]
    session.send({"op": "ping"})  # one-way: no reply expected
    session.send({"op": "add", "a": 1, "b": 2}, reply_handler=got.add)
    [reply] = got.wait_len(1)
    assert isinstance(reply, nsxpc.XPCReceivedMessage)
    assert reply.decode() == {"sum": 3}
    assert reply.decode(as_=AddResult) == AddResult(3)
    assert not reply.expects_reply
    sync = session.send_sync({"op": "echo", "n": [1, 2.5, "x", b"y", None, (1, 2)]})
    assert sync.decode() == {"op": "echo", "n": [1, 2.5, "x", b"y", None, (1, 2)], "pid": server.pid, "sync": True}
    assert session.peer_credentials.pid == server.pid


def test_messages_are_fifo(server: Child, made: Made) -> None:
    got = Recorder()
    session = session_to(made, server.name)  # type: ignore[attr-defined]
    for i in range(50):
        session.send({"op": "echo", "i": i}, reply_handler=lambda r: got.add(r.decode()["i"]))
    assert got.wait_len(50) == list(range(50))


def test_decode_as_checks_the_annotations(server: Child, made: Made) -> None:
    session = session_to(made, server.name)  # type: ignore[attr-defined]
    reply = session.send_sync({"op": "echo", "x": 1, "y": "two"})
    with pytest.raises(nsxpc.DecodingError):
        reply.decode(as_=Point)  # y is a str
    reply = session.send_sync({"op": "echo", "x": 1, "y": 2})
    assert reply.decode(as_=Point) == Point(1, 2)  # extra keys are ignored, as for coded objects
    with pytest.raises(TypeError):
        reply.decode(as_=dict)


def test_a_secure_coded_object_is_a_message(made: Made) -> None:
    got = Recorder()

    def on_message(m: nsxpc.XPCReceivedMessage) -> object:
        with pytest.raises(nsxpc.DecodingError, match="decode it with as_"):
            m.decode()
        with pytest.raises(nsxpc.DecodingError):
            m.decode(as_=AddResult)  # another class: nothing is built
        p = m.decode(as_=Point)
        got.add(p)
        return AddResult(p.x + p.y)

    listener = made(nsxpc.XPCListener(incoming_session_handler=lambda r: r.accept(on_message)))
    session = made(nsxpc.XPCSession(endpoint=listener.endpoint))
    reply = session.send_sync(Point(2, 5))
    assert got.wait_len(1) == [Point(2, 5)]
    assert reply.decode(as_=AddResult) == AddResult(7)


def test_the_server_session_can_send_to_the_client(server: Child, made: Made) -> None:
    got = Recorder()
    session = session_to(made, server.name, incoming_message_handler=lambda m: got.add(m.decode()))  # type: ignore[attr-defined]
    assert session.send_sync({"op": "call_back"}).decode() == {"ok": True}
    assert got.wait_len(1) == [{"from": "server"}]


def test_reply_rules_on_the_receiving_side(made: Made) -> None:
    got = Recorder()

    def on_message(m: nsxpc.XPCReceivedMessage) -> object:
        d = m.decode()
        try:
            if d["op"] == "oneway":
                with pytest.raises(RuntimeError, match="expects no reply"):
                    m.reply({"x": 1})
                got.add(("oneway", m.expects_reply, m.is_sync))
                return None
            if d["op"] == "twice":
                m.reply({"first": True})
                with pytest.raises(RuntimeError, match="already"):
                    m.reply({"second": True})
                got.add(("twice", m.expects_reply, m.is_sync))
                return None
            if d["op"] == "badreply":
                with pytest.raises(TypeError):
                    m.reply(42)
                with pytest.raises(nsxpc.EncodingError):
                    m.reply({"x": object()})
                return {"fine": True}
            if d["op"] == "raise":
                raise ValueError("no such thing")
        except Exception as exc:  # pragma: no cover - reported below
            got.add(("failed", exc))
            raise
        return None

    listener = made(nsxpc.XPCListener(incoming_session_handler=lambda r: r.accept(on_message)))
    session = made(nsxpc.XPCSession(endpoint=listener.endpoint))
    session.send({"op": "oneway"})
    assert session.send_sync({"op": "twice"}).decode() == {"first": True}
    assert got.wait_len(2) == [("oneway", False, False), ("twice", True, True)]
    assert session.send_sync({"op": "badreply"}).decode() == {"fine": True}
    with pytest.raises(nsxpc.XPCRichError) as info:
        session.send_sync({"op": "raise"})
    assert info.value.code == nsxpc.ErrorCode.REMOTE_ERROR and "ValueError: no such thing" in str(info.value)
    assert not info.value.can_retry
    # A message the handler neither answers nor keeps: the sender learns the reply was dropped.
    late = Recorder()
    session.send({"op": "nothing"}, reply_handler=late.add)
    [err] = late.wait_len(1)
    assert isinstance(err, nsxpc.XPCRichError) and err.code == nsxpc.ErrorCode.REPLY_INVALID
    assert session.send_sync({"op": "badreply"}).decode() == {"fine": True}  # still up


# --------------------------------------------------------------------------- bad input


def test_bad_messages_are_refused_locally_and_nothing_is_sent(server: Child, made: Made) -> None:
    session = session_to(made, server.name)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="dict of plain values"):
        session.send(5)
    with pytest.raises(TypeError):
        session.send([1, 2])
    with pytest.raises(nsxpc.EncodingError, match="not allowed"):
        session.send({"p": Point(1, 2)})  # a coded object inside a dict is not a plain value
    with pytest.raises(nsxpc.EncodingError):
        session.send_sync({"big": 2**70})
    assert session.send_sync({"op": "add", "a": 2, "b": 2}).decode() == {"sum": 4}


def test_a_malformed_message_cancels_that_session_only(made: Made, logwatch: Any) -> None:
    cancelled = Recorder()

    def on_request(request: Any) -> Any:
        return request.accept(lambda m: {"ok": True}, cancellation_handler=cancelled.add)

    listener = made(nsxpc.XPCListener(incoming_session_handler=on_request))
    other = made(nsxpc.XPCSession(endpoint=listener.endpoint))
    raw = RawClient(listener.endpoint.path)
    try:
        raw.send_msg([0, "nsxpc", 1, "xpc", listener.endpoint.token, {}])
        assert raw.recv_msg()[0] == 1  # WELCOME
        raw.invoke(1, "message_with_reply", [[1, 2, 3]])  # a list, not a dict or an object
        answer = raw.recv_msg()
        assert answer is not None and answer[0] == 5 and answer[2] == 4864, answer
        raw.expect_closed()  # the session was cancelled
    finally:
        raw.close()
    [err] = cancelled.wait_len(1)
    assert isinstance(err, nsxpc.XPCRichError) and "malformed message" in str(err)
    assert other.send_sync({"x": 1}).decode() == {"ok": True}


# --------------------------------------------------------------------------- life cycle


def test_an_unknown_service_raises(made: Made) -> None:
    with pytest.raises(nsxpc.XPCRichError) as info:
        nsxpc.XPCSession(mach_service=unique_name("nobody"))
    assert info.value.code == nsxpc.ErrorCode.CONNECTION_INVALID and "nobody" in str(info.value)
    with pytest.raises(nsxpc.XPCRichError):
        nsxpc.XPCSession(mach_service=unique_name("nobody"), inactive=True)
    with pytest.raises(nsxpc.XPCRichError, match=r"com\.example\.nowhere"):
        nsxpc.XPCSession(xpc_service="com.example.nowhere")
    with pytest.raises(TypeError):
        nsxpc.XPCSession()


def test_inactive_session_must_be_activated(server: Child, made: Made) -> None:
    session = session_to(made, server.name, inactive=True)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="activate"):
        session.send({"op": "ping"})
    with pytest.raises(RuntimeError, match="activate"):
        session.send_sync({"op": "ping"})
    session.activate()
    session.activate()  # does nothing
    assert session.send_sync({"op": "add", "a": 1, "b": 1}).decode() == {"sum": 2}
    with pytest.raises(RuntimeError):
        session.set_peer_requirement(object())  # after activation


def test_peer_death_cancels_the_session_and_it_never_reconnects(
    spawn: Callable[..., Child], service_name: str, made: Made
) -> None:
    child = spawn("session_server.py", "session", service_name)
    cancelled = Recorder()
    session = session_to(made, service_name, cancellation_handler=cancelled.add)
    pending = Recorder()
    session.send({"op": "die"}, reply_handler=pending.add)
    [err] = pending.wait_len(1)
    assert isinstance(err, nsxpc.XPCRichError) and err.code == nsxpc.ErrorCode.CONNECTION_INVALID
    assert not err.can_retry
    [cerr] = cancelled.wait_len(1)
    assert isinstance(cerr, nsxpc.XPCRichError)
    assert child.wait() == 3
    # A new server at the same name: the cancelled session stays cancelled.
    spawn("session_server.py", "session", service_name)
    with pytest.raises(nsxpc.XPCRichError):
        session.send_sync({"op": "ping"})
    with pytest.raises(nsxpc.XPCRichError):
        session.send({"op": "ping"})
    assert len(cancelled.snapshot()) == 1
    fresh = session_to(made, service_name)
    assert fresh.send_sync({"op": "add", "a": 1, "b": 2}).decode() == {"sum": 3}


class SlowListener:
    """An XPCListener whose handler holds each message until ``hold`` is set, so that
    its reply is still pending; ``entered`` is set when a message arrived."""

    def __init__(self, made: Made) -> None:
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.listener = made(nsxpc.XPCListener(incoming_session_handler=lambda r: r.accept(self._on_message)))

    def _on_message(self, message: nsxpc.XPCReceivedMessage) -> object:
        self.entered.set()
        self.hold.wait(TIMEOUT)
        return {"late": True}


def test_cancel_ends_pending_replies_and_runs_the_handler_once(made: Made) -> None:
    slow = SlowListener(made)
    listener, hold, entered = slow.listener, slow.hold, slow.entered
    events = Recorder()
    session = made(nsxpc.XPCSession(endpoint=listener.endpoint, cancellation_handler=lambda e: events.add(("c", e))))
    session.send({"op": "slow"}, reply_handler=lambda r: events.add(("r", r)))
    assert entered.wait(TIMEOUT)
    session.cancel(reason="done here")
    session.cancel(reason="again")
    got = events.wait_len(2)
    hold.set()
    assert [tag for tag, _ in got] == ["r", "c"]  # the pending reply first, the handler last
    assert isinstance(got[0][1], nsxpc.XPCRichError) and "done here" in str(got[1][1])
    with pytest.raises(nsxpc.XPCRichError):
        session.send({"x": 1})
    assert len(events.snapshot()) == 2


def test_rejection_by_the_listener(server: Child, made: Made) -> None:
    first = session_to(made, server.name)  # type: ignore[attr-defined]
    first.send_sync({"op": "reject_next", "reason": "no room at the inn"})
    cancelled = Recorder()
    session = session_to(made, server.name, cancellation_handler=cancelled.add)  # type: ignore[attr-defined]
    # (An asynchronous send: see the report on synchronous sends racing a refusal.)
    pending = Recorder()
    session.send({"op": "ping"}, reply_handler=pending.add)
    [error] = pending.wait_len(1)
    assert isinstance(error, nsxpc.XPCRichError) and "no room at the inn" in str(error)
    assert error.code == nsxpc.ErrorCode.CONNECTION_INVALID
    [err] = cancelled.wait_len(1)
    assert "no room at the inn" in str(err)
    with pytest.raises(nsxpc.XPCRichError):
        session.send_sync({"op": "ping"})
    assert first.send_sync({"op": "add", "a": 5, "b": 5}).decode() == {"sum": 10}


def test_a_handler_that_answers_nothing_rejects(made: Made) -> None:
    listener = made(nsxpc.XPCListener(incoming_session_handler=lambda request: None))
    session = made(nsxpc.XPCSession(endpoint=listener.endpoint))
    pending = Recorder()
    session.send({"x": 1}, reply_handler=pending.add)
    [error] = pending.wait_len(1)
    assert "neither accepted nor rejected" in str(error)


def test_kind_mismatch_is_refused_both_ways(made: Made) -> None:
    xl = made(nsxpc.XPCListener(incoming_session_handler=lambda r: r.accept(lambda m: {"ok": 1})))
    conn = made(nsxpc.Connection(listener_endpoint=xl.endpoint))
    invalid = threading.Event()
    conn.invalidation_handler = invalid.set
    conn.resume()
    assert invalid.wait(TIMEOUT)
    reason = conn._invalid_reason
    assert "NSXPC proxies" in reason and "XPC messages" in reason, reason

    class Delegate:
        def should_accept_new_connection(self, listener: Any, connection: Any) -> bool:
            raise AssertionError("an XPC session must never reach an NSXPC delegate")

    nl = made(nsxpc.Listener.anonymous())
    nl.delegate = Delegate()
    nl.resume()
    cancelled = Recorder()
    session = made(nsxpc.XPCSession(endpoint=nl.endpoint, cancellation_handler=cancelled.add))
    pending = Recorder()
    session.send({"x": 1}, reply_handler=pending.add)
    [error] = pending.wait_len(1)
    assert "XPC messages" in str(error) and "NSXPC proxies" in str(error)
    assert "kind mismatch" in str(cancelled.wait_len(1)[0])


def test_set_peer_requirement_before_activation(server: Child, made: Made) -> None:
    if not hasattr(nsxpc, "PeerRequirement"):
        pytest.skip("nsxpc.PeerRequirement is not in this build yet")
    req_cls: Any = nsxpc.PeerRequirement  # type: ignore[attr-defined]
    cancelled = Recorder()
    session = session_to(made, server.name, inactive=True, cancellation_handler=cancelled.add)  # type: ignore[attr-defined]
    session.set_peer_requirement(req_cls(uid=os.getuid() + 12345))
    session.activate()
    with pytest.raises(nsxpc.XPCRichError) as info:
        session.send_sync({"op": "ping"})
    assert info.value.code == nsxpc.ErrorCode.PEER_REQUIREMENT_FAILURE
    [err] = cancelled.wait_len(1)
    assert err.code == nsxpc.ErrorCode.PEER_REQUIREMENT_FAILURE
    ok = session_to(made, server.name, inactive=True)  # type: ignore[attr-defined]
    ok.set_peer_requirement(req_cls(uid=os.getuid()))
    ok.activate()
    assert ok.send_sync({"op": "add", "a": 1, "b": 1}).decode() == {"sum": 2}


# --------------------------------------------------------------------------- services launched on demand

SESSION_SERVICE = """#!{python}
import os, sys
sys.path.insert(0, {root!r})
import nsxpc

def on_message(m):
    d = m.decode()
    if d.get("op") == "die":
        os._exit(5)
    return {{"pid": os.getpid(), "echo": d, "sync": m.is_sync}}

nsxpc.main(incoming_session_handler=lambda request: request.accept(on_message))
"""


CSTYLE_SERVICE = """#!{python}
import os, sys
sys.path.insert(0, {root!r})
from nsxpc import xpc

def on_peer(peer):
    if not isinstance(peer, xpc.Connection):
        return

    def on_event(event):
        if isinstance(event, dict):
            if event.get("op") == "die":
                os._exit(5)
            reply = xpc.dictionary_create_reply(event)
            if reply is not None:
                reply.update({{"pid": os.getpid(), "echo": dict(event), "sync": None}})
                xpc.connection_send_message(peer, reply)

    xpc.connection_set_event_handler(peer, on_event)
    xpc.connection_resume(peer)

xpc.main(on_peer)
"""


def make_session_bundle(folder: str, name: str, template: str = SESSION_SERVICE) -> None:
    bundle = Path(folder) / f"{name}.xpc"
    (bundle / "Contents" / "MacOS").mkdir(parents=True)
    plist = {
        "CFBundleIdentifier": name,
        "CFBundlePackageType": "XPC!",
        "CFBundleExecutable": "svc",
        "XPCService": {"ServiceType": "Application"},
    }
    with open(bundle / "Contents" / "Info.plist", "wb") as f:
        plistlib.dump(plist, f)
    exe = bundle / "Contents" / "MacOS" / "svc"
    exe.write_text(template.format(python=sys.executable, root=str(ROOT)))
    exe.chmod(0o755)


@pytest.fixture(params=["sessions", "xpc_main"])
def session_service(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bundle launched on demand that serves messages: through
    ``nsxpc.main(incoming_session_handler=...)`` or through ``nsxpc.xpc.main``."""
    name = unique_name("svc")
    make_session_bundle(str(tmp_path), name, SESSION_SERVICE if request.param == "sessions" else CSTYLE_SERVICE)
    monkeypatch.setenv("NSXPC_SERVICES_PATH", str(tmp_path))
    yield name
    from nsxpc import _launcher

    inst = _launcher._the_launcher().instances.get(name)
    if inst is not None and inst.pid is not None:
        try:
            os.kill(inst.pid, 9)
        except ProcessLookupError:
            pass
        inst.wait_for_exit(TIMEOUT)


def test_xpc_service_session_launched_on_demand_and_not_relaunched(session_service: str, made: Made) -> None:
    cancelled = Recorder()
    session = made(nsxpc.XPCSession(xpc_service=session_service, cancellation_handler=cancelled.add))
    reply = session.send_sync({"op": "hi"}).decode()
    assert reply["echo"] == {"op": "hi"} and reply["sync"] in (True, None)  # None: a C-style service
    pending = Recorder()
    session.send({"op": "die"}, reply_handler=pending.add)
    [err] = pending.wait_len(1)
    assert isinstance(err, nsxpc.XPCRichError)
    cancelled.wait_len(1)
    with pytest.raises(nsxpc.XPCRichError):
        session.send_sync({"op": "hi"})  # never relaunched by this session
    again = made(nsxpc.XPCSession(xpc_service=session_service))
    assert again.send_sync({"op": "hi"}).decode()["pid"] != reply["pid"]


def test_listener_peer_requirement_refuses_a_client(made: Made) -> None:
    if not hasattr(nsxpc, "PeerRequirement"):
        pytest.skip("nsxpc.PeerRequirement is not in this build yet")
    req_cls: Any = nsxpc.PeerRequirement  # type: ignore[attr-defined]
    listener = made(nsxpc.XPCListener(incoming_session_handler=lambda r: r.accept(lambda m: {"ok": 1}), inactive=True))
    listener.set_peer_requirement(req_cls(uid=os.getuid() + 12345))
    listener.activate()
    cancelled = Recorder()
    session = made(nsxpc.XPCSession(endpoint=listener.endpoint, cancellation_handler=cancelled.add))
    pending = Recorder()
    session.send({"x": 1}, reply_handler=pending.add)
    [error] = pending.wait_len(1)
    assert isinstance(error, nsxpc.XPCRichError) and not error.can_retry
    assert cancelled.wait_len(1)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("proxies", ["proxies: 'hello' from pid", "proxies: refused locally: echo argument 0"]),
        ("session", ["session: 'hello' from pid", "session: reply {'text': 'async'", "session: cancelled:"]),
        ("cstyle", ["cstyle: 'hello' from pid", "cstyle: reply {'text': 'async'", "ERROR_CONNECTION_INVALID"]),
    ],
)
def test_the_echo_service_written_three_ways_runs(script: str, expected: list[str], runtime_dir: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NSXPC_RUNTIME_DIR=runtime_dir)
    result = subprocess.run(
        [sys.executable, f"examples/echo/{script}.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    positions = [result.stdout.find(line) for line in expected]
    assert -1 not in positions and positions == sorted(positions), result.stdout
