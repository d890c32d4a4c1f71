"""Objects by proxy (API.md section 8, issue 4 items 1, 2 and 5), across real processes.

The service is tests/helpers/proxy_server.py (protocol in tests/helpers/proxy_lab.py):
the test passes its own objects to it by proxy and gets the service's objects back by
proxy, in reply arguments and in calls. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nsxpc
from tests.helpers.proxy_lab import Counter, ProxyLab
from tests.helpers.proxy_server import ProxyLabImpl
from tests.integration.conftest import (
    TIMEOUT,
    Child,
    Connections,
    LogWatch,
    RawClient,
    Recorder,
    ServerSide,
)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


class SinkImpl:
    """The test's object, passed to the service by proxy."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder if recorder is not None else Recorder()
        self.counters: list[Any] = []
        self.keep_counters = False

    def progress(self, step: int) -> None:
        self.recorder.add(("progress", step))

    def ask(self, text: str, reply: Callable[[str], None]) -> None:
        reply(text.upper())

    def take_counter(self, counter: Any) -> None:
        if self.keep_counters:
            self.counters.append(counter)


@pytest.fixture
def proxy_server(spawn: Callable[..., Child], service_name: str) -> Child:
    child = spawn("proxy_server.py", service_name)
    child.name = service_name  # type: ignore[attr-defined]
    return child


def lab_connection(connections: Connections, name: str, **handlers: Any) -> nsxpc.Connection:
    conn = connections.make(mach_service_name=name)
    conn.remote_object_interface = nsxpc.Interface(ProxyLab)
    for key, value in handlers.items():
        setattr(conn, key, value)
    conn.resume()
    return conn


def sync_of(proxy_maker: Any, timeout: float = TIMEOUT) -> Any:
    def never(err: Exception) -> None:
        raise AssertionError(f"error handler called in the value-returning form: {err!r}")

    return proxy_maker.synchronous_remote_object_proxy_with_error_handler(never, timeout=timeout)


def collect_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """gc.collect() until ``predicate`` holds (bounded); the releases travel meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.02)  # a bounded poll of a GC outcome, not a synchronisation


# --------------------------------------------------------------------------- ordering


def test_callbacks_arrive_in_order_before_the_reply(proxy_server: Child, connections: Connections) -> None:
    rec = Recorder()
    sink = SinkImpl(rec)
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    proxy = conn.remote_object_proxy_with_error_handler(rec.error("run"), timeout=TIMEOUT)
    proxy.run(sink, 200, rec.reply("run"))
    items = rec.wait_for(lambda items: any(i[0] in ("reply", "error") for i in items))
    assert items[-1] == ("reply", "run", (200,))
    assert items[:-1] == [("progress", i) for i in range(200)]

    # The synchronous form too: every callback sent before the reply has run when the call returns.
    rec2 = Recorder()
    assert sync_of(conn).run(SinkImpl(rec2), 50) == 50
    assert rec2.snapshot() == [("progress", i) for i in range(50)]


# --------------------------------------------------------------------------- both directions


def test_proxy_both_directions(proxy_server: Child, connections: Connections) -> None:
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    sync = sync_of(conn)
    sink = SinkImpl()
    # client object -> service, which calls it back with a reply block
    assert sync.ask_back(sink, "hello") == "sink said HELLO"
    # service objects -> client, in calls on the client's object
    sink.keep_counters = True
    assert sync.give(sink, 3) == 3
    assert len(sink.counters) == 3
    assert sync_of(sink.counters[2]).increment(40) == 42
    # a proxy passed back where it came from still reaches the original object
    echoed = sync.echo_sink(sink)
    assert "Sink" in repr(echoed)
    echoed.progress(7)
    sink.recorder.wait_for(lambda items: ("progress", 7) in items)


def test_proxy_in_a_reply_argument(proxy_server: Child, connections: Connections) -> None:
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    counter = sync_of(conn).make_counter(10)
    assert sorted(dir(counter)) == ["hold", "increment", "value"]
    with pytest.raises(AttributeError):
        counter.run  # noqa: B018 (not in the Counter protocol)
    # NSXPCProxyCreating: the received proxy makes the other flavours of proxy.
    assert sync_of(counter).increment(5) == 15
    rec = Recorder()
    counter.remote_object_proxy_with_error_handler(rec.error()).increment(1, rec.reply())
    assert rec.wait_len(1) == [("reply", None, (16,))]
    with pytest.raises(nsxpc.EncodingError):
        sync_of(counter).increment("one")  # checked against the Counter interface before sending
    assert sync_of(counter).value() == 16


def test_a_received_proxy_makes_an_async_proxy(proxy_server: Child, connections: Connections) -> None:
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    counter = sync_of(conn).make_counter(3)

    async def bump() -> Any:
        return await counter.async_remote_object_proxy(timeout=TIMEOUT).increment(2)

    assert asyncio.run(bump()) == 5


# --------------------------------------------------------------------------- lifetime


def test_the_exporter_keeps_the_object_until_the_release(proxy_server: Child, connections: Connections) -> None:
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    sync = sync_of(conn)
    rec = Recorder()
    sink = SinkImpl(rec)
    alive = weakref.ref(sink)
    assert sync.keep(sink) == 1
    assert sync.keep(sink) == 2  # exported twice: one id, two references
    assert conn._exported_object_count == 1
    del sink
    gc.collect()
    assert alive() is not None, "the exporter let go of an object the peer still holds"
    assert sync.poke_kept(5) == 2
    rec.wait_for(lambda items: items.count(("progress", 5)) == 2)
    assert sync.drop_kept() == 2  # the service drops both proxies: two RELEASEs, sent before this reply
    assert conn._exported_object_count == 0
    assert collect_until(lambda: alive() is None)
    assert sync.stats() == (0, 0)


def test_release_after_garbage_collection_of_a_received_proxy(proxy_server: Child, connections: Connections) -> None:
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    sync = sync_of(conn)
    counter = sync.make_counter(1)
    derived = counter.remote_object_proxy_with_error_handler(lambda err: None)
    assert sync.stats()[0] == 1  # the service holds its counter for our proxy
    del counter
    gc.collect()
    assert sync.stats()[0] == 1  # a proxy made from it keeps the reference
    del derived
    gc.collect()
    assert sync.stats()[0] == 0  # the RELEASE went out before the next message


def test_invalidation_drops_exported_objects(proxy_server: Child, connections: Connections) -> None:
    rec = Recorder()
    conn = lab_connection(connections, proxy_server.name, invalidation_handler=rec.event("invalidated"))  # type: ignore[attr-defined]
    sink = SinkImpl()
    alive = weakref.ref(sink)
    assert sync_of(conn).keep(sink) == 1
    del sink
    gc.collect()
    assert alive() is not None
    conn.invalidate()
    rec.wait_len(1)
    assert conn._exported_object_count == 0
    assert collect_until(lambda: alive() is None)


# --------------------------------------------------------------------------- interruption


def test_stale_proxies_fail_after_interruption_while_the_root_proxy_works_again(
    spawn: Callable[..., Child], service_name: str, connections: Connections
) -> None:
    first = spawn("proxy_server.py", service_name)
    events = Recorder()
    conn = lab_connection(connections, service_name, interruption_handler=events.event("interrupted"))
    sync = sync_of(conn)
    counter = sync.make_counter(1)
    sink = SinkImpl()
    assert sync.keep(sink) == 1
    assert conn._exported_object_count == 1
    calls = Recorder()
    counter.remote_object_proxy_with_error_handler(calls.error("held on proxy")).hold(calls.reply("held on proxy"))
    conn.remote_object_proxy_with_error_handler(calls.error("held on root")).hold(calls.reply("held on root"))
    assert sync.stats()[0] == 1  # both holds are in the service before it dies
    conn.remote_object_proxy.crash()
    events.wait_len(1)
    assert first.wait() == 3
    outcomes = {tag: (kind, type(err)) for kind, tag, err in calls.wait_len(2)}
    assert outcomes == {
        "held on proxy": ("error", nsxpc.ConnectionInvalid),  # Apple: 4099 on an additional proxy
        "held on root": ("error", nsxpc.ConnectionInterrupted),
    }
    # The service that held proxies of our objects is gone: so are our references.
    assert conn._exported_object_count == 0

    # A proxy from before the interruption fails, exactly once, whichever form is used.
    stale = Recorder()
    counter.remote_object_proxy_with_error_handler(stale.error()).increment(1, stale.reply())
    (kind, _, err), = stale.wait_len(1)
    assert kind == "error" and isinstance(err, nsxpc.ConnectionInvalid)
    assert "additional proxy" in str(err)
    with pytest.raises(nsxpc.ConnectionInvalid):
        sync_of(counter).value()
    counter.increment(1, lambda value: stale.add(("late reply", value)))  # plain proxy: logged only

    # The root proxy reconnects to the new instance.
    spawn("proxy_server.py", service_name)
    assert sync.stats() == (0, 0)
    assert sync_of(sync.make_counter(5)).value() == 5
    assert len(stale.snapshot()) == 1


# --------------------------------------------------------------------------- hostile or confused peers


def proxy_lab_side(serve: Callable[..., ServerSide]) -> ServerSide:
    return serve(exported=ProxyLabImpl(), interface=nsxpc.Interface(ProxyLab))


def test_a_message_to_an_unknown_object_id_is_refused(
    serve: Callable[..., ServerSide], raw_clients: Callable[..., RawClient], logwatch: LogWatch
) -> None:
    side = proxy_lab_side(serve)
    raw = raw_clients(side.listener.endpoint)
    raw.invoke(1, "increment", [1], target=99)
    msg = raw.recv_msg()
    assert msg[:3] == [5, 1, int(nsxpc.ErrorCode.PROTOCOL_ERROR)]
    assert "id 99" in msg[3]
    logwatch.wait_for(lambda r: "id 99" in r.getMessage())
    # A RELEASE of an id never exported is logged and ignored.
    raw.send_msg([6, 12345])
    logwatch.wait_for(lambda r: "12345" in r.getMessage())
    # The connection stays up.
    raw.invoke(2, "stats", [])
    assert raw.recv_msg() == [4, 2, [0, 0]]


def test_a_released_object_id_is_refused(serve: Callable[..., ServerSide], connections: Connections) -> None:
    """The service's counter is released by the client; a (confused) later call naming its
    id gets the error, through the raw wire, and the connection stays up."""
    side = proxy_lab_side(serve)
    conn = connections.make(listener_endpoint=side.listener.endpoint)
    conn.remote_object_interface = nsxpc.Interface(ProxyLab)
    conn.resume()
    sync = sync_of(conn)
    counter = sync.make_counter(1)
    ident = counter._target
    assert sync.stats()[0] == 1
    del counter
    gc.collect()
    assert sync.stats()[0] == 0
    # Forge a call to the released id over the same connection's wire.
    method = nsxpc.Interface(Counter).method("value")
    assert method is not None
    rec = Recorder()
    conn._call(ident, method, [], rec.reply(), "handler", rec.error(), TIMEOUT)
    ((kind, _, err),) = rec.wait_len(1)
    assert kind == "error" and isinstance(err, nsxpc.ProtocolError)
    assert f"id {ident}" in str(err) and "released" in str(err)
    assert sync.stats() == (0, 0)


def test_a_by_proxy_slot_refuses_a_value_sent_by_copy(
    serve: Callable[..., ServerSide], raw_clients: Callable[..., RawClient]
) -> None:
    side = proxy_lab_side(serve)
    raw = raw_clients(side.listener.endpoint)
    raw.invoke(1, "run", ["not a proxy", 3])
    msg = raw.recv_msg()
    assert msg[:3] == [5, 1, int(nsxpc.ErrorCode.DECODING_ERROR)]
    assert "by proxy" in msg[3]


# --------------------------------------------------------------------------- no leak


def test_ten_thousand_proxies_leave_no_entries(proxy_server: Child, connections: Connections) -> None:
    conn = lab_connection(connections, proxy_server.name)  # type: ignore[attr-defined]
    sync = sync_of(conn, timeout=60)
    plain = conn.remote_object_proxy
    n = 10_000
    started = time.monotonic()
    # client -> service: 10,000 distinct objects, each dropped by the service at once
    for _ in range(n):
        plain.take(SinkImpl())
    assert sync.stats() == (0, 0)  # a barrier round trip: every RELEASE came before its reply
    assert conn._exported_object_count == 0
    # service -> client: 10,000 counters passed to our sink, each dropped here at once
    sink = SinkImpl()
    assert sync.give(sink, n) == n
    gc.collect()
    assert sync.stats() == (0, 0)
    assert conn._exported_object_count == 0
    elapsed = time.monotonic() - started
    print(f"\n2 x {n} proxies passed and released in {elapsed:.2f} s")


# --------------------------------------------------------------------------- examples


def run_example(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("NSXPC_RUNTIME_DIR", None)  # the examples make their own
    return subprocess.run(
        [PYTHON, *args], cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_progress_example_runs() -> None:
    result = run_example("examples/progress/app.py")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "progress 1/" in out
    assert "cancelling" in out
    assert "job ended: cancelled" in out
    assert out.index("progress 1/") < out.index("cancelling") < out.index("job ended: cancelled")


def test_broker_across_three_processes(runtime_dir: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", NSXPC_RUNTIME_DIR=runtime_dir)
    broker_name = "com.example.test-broker"
    procs: list[subprocess.Popen[str]] = []

    def start(script: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [PYTHON, f"examples/broker/{script}", *args],
            cwd=str(ROOT), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    def ready_line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the scripts print their READY line at once or exit
        assert line.startswith("READY"), line + (proc.stderr.read() if proc.stderr else "")
        return line

    try:
        broker = start("broker.py", broker_name)
        ready_line(broker)
        provider = start("provider.py", broker_name, "greeter")
        provider_pid = int(ready_line(provider).split()[1])
        consumer = start("consumer.py", broker_name, "greeter", "3")
        out, err = consumer.communicate(timeout=30)
        assert consumer.returncode == 0, out + err
        lines = out.splitlines()
        talks = [line for line in lines if line.startswith("connection")]
        assert len(talks) == 3
        for line in talks:
            assert f"pid {provider_pid}" in line  # it talked to A directly, not through the broker
            assert f"pid {broker.pid}" not in line
        assert "unknown: no provider named 'nobody'" in out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=TIMEOUT)
