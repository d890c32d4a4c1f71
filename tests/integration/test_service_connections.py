"""Services launched on demand, end to end through ``nsxpc.Connection(service_name=...)``,
with real processes (issue 3; API.md sections 4 and 7).

What the client sees: ``resume()`` launches nothing and the first message does;
unknown, malformed and unlaunchable services invalidate the connection with a
reason naming them; an ``Application`` service is shared by the connections of
one process and a ``User`` service by client processes; a kill, a crash or an
idle exit is an interruption and the next message relaunches; a transaction
holds the service; a crash loop is throttled without a busy loop and the
connection stays valid; a service dies with its client.

The bundles come from the ``bundles`` fixture of test_services.py (executable
``tests/helpers/probe_service.py``, or ``tests/helpers/flag_probe_service.py``
when a test needs to switch behaviour with flag files). Each test has its own
``NSXPC_RUNTIME_DIR`` (conftest) and ``NSXPC_SERVICES_PATH`` (``bundles``).
Every wait is bounded; what a test launches is killed and reaped at teardown.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nsxpc
import tests.integration.test_services as services_tests
from nsxpc import _launcher
from tests.helpers.probe import probe_interface
from tests.integration.conftest import TIMEOUT, Child, Connections, LogWatch, Recorder, sync_proxy, unique_name
from tests.integration.test_services import (
    MALFORMED,
    Bundles,
    Launched,
    StderrRecorder,
    parent_of,
    reaped,
    wait_exit,
    wait_readable,
)

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
FLAG_PROBE = (HELPERS / "flag_probe_service.py").read_text()

# The fixtures of test_services.py, shared rather than copied.
bundles = services_tests.bundles
launched = services_tests.launched


# --------------------------------------------------------------------------- fixtures


class Services:
    """Makes bundles and ``service_name`` connections; kills what they launched at teardown."""

    def __init__(self, bundles: Bundles, connections: Connections) -> None:
        self.bundles = bundles
        self.connections = connections
        self.names: list[str] = []

    def make(self, *, flags: bool = False, env: dict[str, str] | None = None, **options: Any) -> str:
        """A bundle that records every launch; ``flags=True``: the flag probe executable."""
        name = unique_name("sc")
        env = {"PROBE_RECORD": self.record_path(name), **(env or {})}
        if flags:
            os.mkdir(self.flags_path(name))
            env["PROBE_FLAGS"] = self.flags_path(name)
        self.bundles.make(name, env=env, **options)
        if flags:
            exe = Path(self.bundles.path(name)) / "Contents" / "MacOS" / "probe"
            exe.write_text(FLAG_PROBE.replace("#!PYTHON", f"#!{sys.executable}", 1))
        self.names.append(name)
        return name

    def record_path(self, name: str) -> str:
        return os.path.join(self.bundles.folder, f"{name}.launches")

    def flags_path(self, name: str) -> str:
        return os.path.join(self.bundles.folder, f"{name}.flags")

    def flag(self, name: str, flag: str, on: bool = True) -> None:
        path = os.path.join(self.flags_path(name), flag)
        if on:
            Path(path).touch()
        else:
            os.unlink(path)

    def launches(self, name: str) -> list[int]:
        """The pids of every instance of ``name`` started so far, in order."""
        try:
            with open(self.record_path(name)) as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def connect(self, name: str, *, resume: bool = True, **attributes: Any) -> nsxpc.Connection:
        conn = self.connections.make(service_name=name)
        conn.remote_object_interface = probe_interface()
        for key, value in attributes.items():
            setattr(conn, key, value)
        if resume:
            conn.resume()
        return conn

    def close(self) -> None:
        self.connections.close()  # first, so that no handler relaunches anything
        launcher = _launcher._launcher
        if launcher is None:
            return
        for name in self.names:
            inst = launcher.instances.get(name)
            if inst is not None and inst.pid is not None and inst.exit_reason is None:
                wait_exit(inst, kill=True)


@pytest.fixture
def services(bundles: Bundles, connections: Connections, launched: Launched) -> Iterator[Services]:
    made = Services(bundles, connections)
    try:
        yield made
    finally:
        made.close()


def async_proxy(conn: nsxpc.Connection, events: Recorder, tag: str) -> Any:
    return conn.remote_object_proxy_with_error_handler(events.error(tag))


def drain(conn: nsxpc.Connection) -> None:
    """Wait (bounded) until everything already posted to ``conn``'s queue has run."""
    done = threading.Event()
    conn.schedule_send_barrier(done.set)
    assert done.wait(TIMEOUT), "the connection's queue did not run a send barrier"


def count(events: Recorder, name: str) -> int:
    return sum(1 for item in events.snapshot() if item[0] == name)


def wait_count(events: Recorder, name: str, n: int) -> list[Any]:
    return events.wait_for(lambda items: sum(1 for item in items if item[0] == name) >= n)


def no_more(events: Recorder, n: int, within: float = 0.2) -> None:
    """Nothing beyond the first ``n`` events arrives within ``within`` seconds (a bounded check)."""
    with events._cond:
        grew = events._cond.wait_for(lambda: len(events.items) > n, within)
        items = list(events.items)
    assert not grew, f"unexpected events: {items[n:]!r}"


def start_client(spawn: Callable[..., Child], name: str) -> Child:
    return spawn("service_name_client.py", name)


def call_from(client: Child) -> tuple[int, int, int]:
    """Have a client process call the service; (service pid, its process_identifier, connections accepted)."""
    assert client.proc.stdin is not None
    client.proc.stdin.write(b"call\n")
    client.proc.stdin.flush()
    line = client.read_line(timeout=3 * TIMEOUT)
    assert line.startswith("PID "), f"{line!r}; stderr:\n{client.stderr_text()}"
    pid, identifier, accepted = (int(field) for field in line.split()[1:])
    return pid, identifier, accepted


# --------------------------------------------------------------------------- launch on the first message


def test_resume_launches_nothing_and_the_first_message_launches(services: Services) -> None:
    name = services.make()
    events = Recorder()
    conn = services.connect(name, resume=False, invalidation_handler=events.event("invalidated"))
    conn.resume()
    drain(conn)  # the queue runs...
    assert not threading.Event().wait(0.3)  # ...and a bounded while later, still nothing was launched
    assert services.launches(name) == []
    assert conn.process_identifier == 0 and conn.peer_credentials is None
    pid = sync_proxy(conn).pid()  # the first message launches and gets its reply
    assert services.launches(name) == [pid]
    assert events.snapshot() == []


def test_process_identifier_is_the_real_pid_of_the_service(services: Services, bundles: Bundles) -> None:
    name = services.make()
    conn = services.connect(name)
    pid = sync_proxy(conn).pid()
    assert conn.process_identifier == pid == services.launches(name)[0]
    assert conn.effective_user_identifier == os.getuid()
    assert parent_of(pid) == os.getpid()  # an Application service is our child
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    exe = os.path.join(bundles.path(name), "Contents", "MacOS", "probe")
    assert os.fsencode(exe) in argv, argv  # the bundle's executable, through its #! line


# --------------------------------------------------------------------------- services that cannot be had


def assert_invalidated_naming(conn: nsxpc.Connection, events: Recorder, *needles: str) -> str:
    """The first message fails with ConnectionInvalid naming ``needles``; the invalidation
    handler runs exactly once; later messages fail the same way."""
    sync = sync_proxy(conn)
    with pytest.raises(nsxpc.ConnectionInvalid) as info:
        sync.pid()
    err = info.value
    assert err.code == nsxpc.ErrorCode.CONNECTION_INVALID and not err.can_retry
    for needle in needles:
        assert needle in str(err), str(err)
    wait_count(events, "invalidated", 1)
    assert conn.state == nsxpc.ConnectionState.INVALID
    async_proxy(conn, events, "later").pid(events.reply("later"))
    items = events.wait_for(lambda items: any(item[0] == "error" for item in items))
    later = next(item[2] for item in items if item[0] == "error")
    assert type(later) is nsxpc.ConnectionInvalid and all(needle in str(later) for needle in needles), later
    with pytest.raises(nsxpc.ConnectionInvalid) as again:
        sync.pid()
    assert all(needle in str(again.value) for needle in needles), again.value
    no_more(events, 2)
    assert count(events, "invalidated") == 1
    return str(err)


def test_an_unknown_service_invalidates_the_connection_naming_it(services: Services) -> None:
    events = Recorder()
    conn = services.connect("com.example.nowhere", invalidation_handler=events.event("invalidated"))
    no_more(events, 0, within=0.1)  # resume() looked nothing up
    message = assert_invalidated_naming(conn, events, "com.example.nowhere")
    assert "no service bundle named com.example.nowhere was found" in message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_bundle_invalidates_the_connection_naming_its_path_and_the_reason(
    services: Services, bundles: Bundles, case: str
) -> None:
    options, reason = MALFORMED[case]
    options = dict(options)
    no_plist = options.pop("_no_plist", False)
    name = services.make(**options)
    if no_plist:
        os.unlink(os.path.join(bundles.path(name), "Contents", "Info.plist"))
    events = Recorder()
    conn = services.connect(name, invalidation_handler=events.event("invalidated"))
    assert_invalidated_naming(conn, events, bundles.path(name), reason)
    assert services.launches(name) == []


@pytest.mark.parametrize("how", ["exec fails", "exits at once"])
def test_a_service_that_cannot_start_invalidates_the_connection_naming_it(
    monkeypatch: pytest.MonkeyPatch, services: Services, how: str
) -> None:
    monkeypatch.setattr(sys, "stderr", StderrRecorder())
    if how == "exec fails":
        name = services.make(shebang="/nonexistent/python3")
        why = "No such file or directory"
    else:
        name = services.make(env={"PROBE_START": "exit:3"})
        why = "exited with status 3"
    events = Recorder()
    conn = services.connect(name, invalidation_handler=events.event("invalidated"))
    message = assert_invalidated_naming(conn, events, f"cannot launch the service {name}", why)
    assert ("exec of" in message) == (how == "exec fails"), message


# --------------------------------------------------------------------------- sharing


def test_connections_of_one_process_share_an_application_instance_as_separate_peers(services: Services) -> None:
    name = services.make()
    events = Recorder()
    a = services.connect(name, interruption_handler=events.event("a interrupted"))
    b = services.connect(name, interruption_handler=events.event("b interrupted"))
    first = sync_proxy(a).pid()
    assert sync_proxy(b).pid() == first == a.process_identifier == b.process_identifier
    assert sync_proxy(b).connections() == 2  # each connection is its own peer at the service's listener
    assert services.launches(name) == [first]

    # A kill interrupts every connection to the instance; both reach the one relaunched instance.
    os.kill(first, signal.SIGKILL)
    events.wait_for(lambda items: {("a interrupted",), ("b interrupted",)} <= set(items))
    second = sync_proxy(b).pid()
    assert second != first and sync_proxy(a).pid() == second
    assert services.launches(name) == [first, second]

    a.invalidate()  # one connection's end leaves the other (and the instance) alone
    assert sync_proxy(b).pid() == second
    assert b.state == nsxpc.ConnectionState.ACTIVE


def test_a_user_service_is_shared_by_client_processes(
    services: Services, spawn: Callable[..., Child], launched: Launched, runtime_dir: str
) -> None:
    name = services.make(service_type="User")
    one, two = start_client(spawn, name), start_client(spawn, name)
    pid, identifier, accepted = call_from(one)  # the first client launches it
    launched.adopt_pid(pid)  # a User service outlives its clients: killed at teardown
    assert identifier == pid and accepted == 1
    assert call_from(two) == (pid, pid, 2)  # the second reaches the same instance, as a new peer
    assert os.getsid(pid) == pid != os.getsid(one.pid)  # it leads a session of its own: it outlives its launcher
    conn = services.connect(name)  # and so does this process
    assert sync_proxy(conn).pid() == pid == conn.process_identifier
    assert services.launches(name) == [pid]
    assert os.path.exists(os.path.join(runtime_dir, f"{name}.sock"))


# --------------------------------------------------------------------------- death and relaunch


def test_kill9_interrupts_outstanding_calls_once_and_the_next_message_relaunches(services: Services) -> None:
    name = services.make(flags=True)
    events = Recorder()
    conn = services.connect(
        name,
        interruption_handler=events.event("interrupted"),
        invalidation_handler=events.event("invalidated"),
    )
    sync = sync_proxy(conn)
    first = sync.pid()

    # Two calls outstanding for certain: written (the barrier ran), and the service keeps
    # their reply blocks uncalled.
    services.flag(name, "hold-replies")
    async_proxy(conn, events, "one").environment(events.reply("one"))
    async_proxy(conn, events, "two").environment(events.reply("two"))
    drain(conn)
    os.kill(first, signal.SIGKILL)
    items = events.wait_for(lambda items: ("interrupted",) in items)
    assert [item[0] for item in items] == ["error", "error", "interrupted"], items  # errors, then the handler
    assert sorted(item[1] for item in items[:2]) == ["one", "two"]
    for _, _, err in items[:2]:
        assert type(err) is nsxpc.ConnectionInterrupted and err.can_retry, err
        assert err.code == nsxpc.ErrorCode.CONNECTION_INTERRUPTED
        assert f"the service named {name}" in str(err), err
    assert conn.state == nsxpc.ConnectionState.ACTIVE

    second = sync.pid()  # the next message launches a new instance
    assert second != first and conn.process_identifier == second
    assert reaped(first)
    services.flag(name, "hold-replies", on=False)

    # A synchronous caller whose service is killed under it gets the interruption raised.
    services.flag(name, "die-in-pid")
    with pytest.raises(nsxpc.ConnectionInterrupted) as info:
        sync.pid()
    assert info.value.can_retry and name in str(info.value)
    wait_count(events, "interrupted", 2)
    services.flag(name, "die-in-pid", on=False)
    third = sync.pid()
    assert third not in (first, second) and conn.process_identifier == third
    assert services.launches(name) == [first, second, third]

    drain(conn)  # exactly once: nothing more for the two calls, no invalidation
    assert [item[0] for item in events.snapshot()] == ["error", "error", "interrupted", "interrupted"]


def test_idle_exit_is_an_interruption_and_the_next_message_relaunches(services: Services) -> None:
    name = services.make(idle=0.5)
    events = Recorder()
    conn = services.connect(
        name,
        interruption_handler=events.event("interrupted"),
        invalidation_handler=events.event("invalidated"),
    )
    sync = sync_proxy(conn)
    first = sync.pid()
    replied = time.monotonic()
    wait_count(events, "interrupted", 1)  # nobody killed it: it exited when idle
    assert time.monotonic() - replied >= 0.4
    second = sync.pid()
    assert second != first and conn.process_identifier == second
    assert reaped(first)
    assert services.launches(name) == [first, second]
    assert events.snapshot() == [("interrupted",)]


def test_a_transaction_keeps_the_service_past_its_idle_time(services: Services) -> None:
    name = services.make(flags=True, idle=0.3)
    events = Recorder()
    conn = services.connect(name, interruption_handler=events.event("interrupted"))
    sync = sync_proxy(conn)
    first = sync.pid()
    sync.begin()  # the service enters nsxpc.transaction() on a thread and stays in it
    no_more(events, 0, within=1.2)  # four idle periods: no exit, no interruption
    assert sync.pid() == first
    sync.end()  # the transaction ends: idle exit follows
    wait_count(events, "interrupted", 1)
    assert services.launches(name) == [first]


def test_a_crash_loop_is_throttled_without_a_busy_loop_and_the_connection_stays_valid(
    monkeypatch: pytest.MonkeyPatch, services: Services, logwatch: LogWatch
) -> None:
    err_lines = StderrRecorder()
    monkeypatch.setattr(sys, "stderr", err_lines)
    name = services.make(flags=True)
    events = Recorder()
    conn = services.connect(
        name,
        interruption_handler=events.event("interrupted"),
        invalidation_handler=events.event("invalidated"),
    )
    sync = sync_proxy(conn)
    first = sync.pid()

    # From now on every instance exits at once: crash 1 (the running one), 2 and 3 (relaunches).
    services.flag(name, "crash-at-start")
    conn.remote_object_proxy.crash(1)
    wait_count(events, "interrupted", 1)
    for _ in range(_launcher.CRASH_BURST - 1):
        with pytest.raises(nsxpc.ConnectionInterrupted) as info:
            sync.pid()
        assert info.value.can_retry and f"cannot launch the service {name}" in str(info.value), info.value
    logwatch.wait_for(
        lambda r: (
            r.levelname == "WARNING"
            and f"the service {name} exited {_launcher.CRASH_BURST} times" in r.getMessage()
            and f"not relaunching it for {_launcher.BACKOFF_FIRST:g} s" in r.getMessage()
        )
    )
    err_lines.lines.wait_for(lambda lines: f"[{name}] crash-at-start: exiting with status 1" in lines)
    launches = services.launches(name)
    assert len(launches) == _launcher.CRASH_BURST and launches[0] == first

    # During the back-off: calls end at once with ConnectionInterrupted; nothing is launched,
    # nothing spins.
    cpu, wall = time.process_time(), time.monotonic()
    for _ in range(20):
        started = time.monotonic()
        with pytest.raises(nsxpc.ConnectionInterrupted) as info:
            sync.pid()
        assert time.monotonic() - started < 0.1
        assert info.value.can_retry and "crash-looping" in str(info.value) and name in str(info.value)
    threading.Event().wait(_launcher.BACKOFF_FIRST)  # let the documented back-off run out
    used, elapsed = time.process_time() - cpu, time.monotonic() - wall
    assert used < 0.25 * elapsed, f"{used:.3f} s of CPU in {elapsed:.3f} s: a busy loop"
    assert services.launches(name) == launches  # no launch happened by itself
    assert conn.state == nsxpc.ConnectionState.ACTIVE and count(events, "invalidated") == 0

    # Once the back-off is over and the service is fixed, the same connection works again.
    services.flag(name, "crash-at-start", on=False)
    fresh = sync.pid()
    assert fresh not in launches and conn.process_identifier == fresh
    assert count(events, "invalidated") == 0


# --------------------------------------------------------------------------- no orphans


def test_an_application_service_dies_with_its_client_process(
    services: Services, spawn: Callable[..., Child], launched: Launched
) -> None:
    name = services.make()
    client = start_client(spawn, name)
    pid, identifier, _ = call_from(client)
    assert identifier == pid and parent_of(pid) == client.pid
    pidfd = launched.adopt_pid(pid)
    assert not wait_readable(pidfd, 0)
    client.kill9()
    assert wait_readable(pidfd), "the service outlived its client: an orphan"
