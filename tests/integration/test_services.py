"""Services launched on demand, with real processes: bundles, launch, sharing, crash
detection, throttling, idle exit, transactions, orphans, environment, output,
close-on-exec, and systemd socket activation (issue 3).

Each test gets its own runtime directory (conftest) and services folder
(``NSXPC_SERVICES_PATH``); bundles are built from ``tests/helpers/probe_service.py``
with this interpreter in the shebang. Every wait is bounded. Calls go through
``Connection(listener_endpoint=...)`` to ``LaunchedService.socket_path``.
"""

from __future__ import annotations

import gc
import os
import plistlib
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nsxpc
from nsxpc import _launcher
from nsxpc._bundle import BundleError, find_service
from nsxpc._launcher import LaunchedService, LaunchError, ServiceThrottled, launch_service
from tests.helpers.probe import probe_interface
from tests.integration.conftest import (
    TIMEOUT,
    Child,
    Connections,
    LogWatch,
    Recorder,
    settle,
    sync_proxy,
    unique_name,
)

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"
TEMPLATE = (HELPERS / "probe_service.py").read_text()
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or (
    "/usr/bin/systemd-socket-activate" if os.access("/usr/bin/systemd-socket-activate", os.X_OK) else None
)


# --------------------------------------------------------------------------- fixtures


class Bundles:
    """Builds service bundles from the probe template into a folder."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def make(
        self,
        name: str | None = None,
        *,
        folder: str | None = None,
        service_type: str = "Application",
        env: dict[str, str] | None = None,
        join: bool = False,
        idle: float | None = None,
        run_loop: str | None = None,
        info: dict[str, Any] | None = None,
        shebang: str | None = None,
        mode: int = 0o755,
    ) -> str:
        name = name or unique_name("svc")
        bundle = Path(folder or self.folder) / f"{name}.xpc"
        macos = bundle / "Contents" / "MacOS"
        macos.mkdir(parents=True)
        service: dict[str, Any] = {
            "ServiceType": service_type,
            "EnvironmentVariables": {"PROBE_ROOT": str(ROOT), **(env or {})},
        }
        if join:
            service["JoinExistingSession"] = True
        if idle is not None:
            service["NSXPCIdleExitSeconds"] = idle
        if run_loop is not None:
            service["RunLoopType"] = run_loop
        plist: dict[str, Any] = {
            "CFBundleIdentifier": name,
            "CFBundlePackageType": "XPC!",
            "CFBundleExecutable": "probe",
            "XPCService": service,
        }
        plist.update(info or {})
        plist = {k: v for k, v in plist.items() if v is not None}
        with open(bundle / "Contents" / "Info.plist", "wb") as f:
            plistlib.dump(plist, f)
        exe = macos / "probe"
        exe.write_text(TEMPLATE.replace("#!PYTHON", f"#!{shebang or sys.executable}", 1))
        exe.chmod(mode)
        return name

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.xpc")


@pytest.fixture
def bundles(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bundles]:
    folder = tempfile.mkdtemp(prefix="nxs", dir="/tmp")
    monkeypatch.setenv("NSXPC_SERVICES_PATH", folder)
    try:
        yield Bundles(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Launched:
    """Launches services in this process and kills what is left of them at teardown."""

    def __init__(self) -> None:
        self.instances: list[LaunchedService] = []
        self.pidfds: list[int] = []  # services of other processes (User), killed at teardown

    def __call__(self, name: str) -> LaunchedService:
        svc = launch_service(name)
        self.instances.append(svc)
        return svc

    def adopt_pid(self, pid: int) -> int:
        fd = os.pidfd_open(pid)
        self.pidfds.append(fd)
        return fd

    def close(self) -> None:
        for svc in self.instances:
            if svc.exit_reason is None and svc.pid is not None:
                wait_exit(svc, kill=True)
        for fd in self.pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_readable(fd)
            os.close(fd)


@pytest.fixture
def launched() -> Iterator[Launched]:
    made = Launched()
    try:
        yield made
    finally:
        made.close()


def wait_exit(svc: LaunchedService, *, kill: bool = False, timeout: float = TIMEOUT) -> str:
    """Wait (bounded) for ``svc``'s exit callback; SIGKILL it first if asked."""
    got: list[str] = []
    done = threading.Event()

    def on_exit(reason: str) -> None:
        got.append(reason)
        done.set()

    svc.add_exit_callback(on_exit)
    if kill and svc.pid is not None and svc.exit_reason is None:
        try:
            os.kill(svc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert done.wait(timeout), f"{svc!r} did not exit within {timeout}s"
    return got[0]


def wait_readable(fd: int, timeout: float = TIMEOUT) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


def connect(connections: Connections, svc: LaunchedService, **kwargs: Any) -> tuple[nsxpc.Connection, Any]:
    conn = connections.make(listener_endpoint=nsxpc.ListenerEndpoint(path=svc.socket_path))
    conn.remote_object_interface = probe_interface()
    for key, value in kwargs.items():
        setattr(conn, key, value)
    conn.resume()
    return conn, sync_proxy(conn)


def reaped(pid: int) -> bool:
    """True if ``pid`` is no child of ours left unreaped (no zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def join_output_threads(name: str) -> None:
    """Wait (bounded) until the threads relaying ``name``'s output have seen it end."""
    for thread in threading.enumerate():
        if thread.name == f"nsxpc output {name}":
            thread.join(TIMEOUT)
            assert not thread.is_alive(), f"{thread.name} did not end"


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


class StderrRecorder:
    """Stands in for sys.stderr: records what is written, with a bounded wait for a line."""

    def __init__(self) -> None:
        self.lines = Recorder()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.lines.add(line)
        return len(text)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------- bundles and discovery


def test_launches_a_bundle_found_in_nsxpc_services_path(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make()
    svc = launched(name)
    assert svc.name == name and svc.service_type == "Application"
    conn, proxy = connect(connections, svc)
    assert proxy.pid() == svc.pid
    # The launcher is our child's parent; peers see the service itself (it called listen() again).
    assert parent_of(svc.pid) == os.getpid()
    assert conn.process_identifier == svc.pid
    assert stat.S_IMODE(os.stat(svc.socket_path).st_mode) == 0o600


def test_finds_bundles_in_xpcservices_beside_the_main_script(
    monkeypatch: pytest.MonkeyPatch, bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    app = tempfile.mkdtemp(prefix="nxa", dir="/tmp")
    try:
        os.mkdir(os.path.join(app, "XPCServices"))
        name = bundles.make(folder=os.path.join(app, "XPCServices"))
        monkeypatch.delenv("NSXPC_SERVICES_PATH")
        monkeypatch.setattr(sys.modules["__main__"], "__file__", os.path.join(app, "app.py"), raising=False)
        assert find_service(name).path == os.path.join(app, "XPCServices", f"{name}.xpc")
        _, proxy = connect(connections, launched(name))
        assert proxy.pid() > 0
    finally:
        shutil.rmtree(app, ignore_errors=True)


def test_finds_bundles_through_the_nsxpc_services_entry_point_group(
    monkeypatch: pytest.MonkeyPatch, bundles: Bundles, tmp_path: Path
) -> None:
    folder = tmp_path / "plugin-bundles"
    folder.mkdir()
    name = bundles.make(folder=str(folder))
    site = tmp_path / "site"
    info = site / "nsxpc_fake_services-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nsxpc-fake-services\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nsxpc.services]\nfake = nsxpc_fake_services:bundles\n")
    (site / "nsxpc_fake_services.py").write_text(f"def bundles():\n    return {str(folder)!r}\n")
    monkeypatch.delenv("NSXPC_SERVICES_PATH")
    monkeypatch.syspath_prepend(str(site))
    try:
        assert find_service(name).path == str(folder / f"{name}.xpc")
    finally:
        sys.modules.pop("nsxpc_fake_services", None)


MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "no Info.plist": ({"_no_plist": True}, "Contents/Info.plist is missing"),
    "wrong package type": ({"info": {"CFBundlePackageType": "APPL"}}, "CFBundlePackageType is 'APPL', not 'XPC!'"),
    "no identifier": ({"info": {"CFBundleIdentifier": None}}, "no CFBundleIdentifier"),
    "executable missing": ({"info": {"CFBundleExecutable": "absent"}}, "Contents/MacOS/absent is missing"),
    "not executable": ({"mode": 0o644}, "Contents/MacOS/probe is not executable"),
    "bad service type": ({"service_type": "System"}, "ServiceType is 'System'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_bundle_is_reported_with_its_path_and_the_reason(bundles: Bundles, case: str) -> None:
    options, reason = MALFORMED[case]
    options = dict(options)
    no_plist = options.pop("_no_plist", False)
    name = unique_name("bad")
    bundles.make(name, **options)
    if no_plist:
        os.unlink(os.path.join(bundles.path(name), "Contents", "Info.plist"))
    with pytest.raises(BundleError) as info:
        launch_service(name)
    message = str(info.value)
    assert bundles.path(name) in message and reason in message, message
    assert info.value.code == nsxpc.ErrorCode.CONNECTION_INVALID


def test_an_unknown_service_is_reported_by_name(bundles: Bundles) -> None:
    with pytest.raises(BundleError, match=r"no service bundle named com\.example\.nowhere was found"):
        launch_service("com.example.nowhere")


def test_exec_failure_names_the_service_and_why(bundles: Bundles) -> None:
    name = bundles.make(shebang="/nonexistent/python3")
    with pytest.raises(LaunchError) as info:
        launch_service(name)
    assert name in str(info.value) and "No such file or directory" in str(info.value)
    assert "#!" in str(info.value)


def test_a_service_that_exits_at_once_is_a_launch_error(monkeypatch: pytest.MonkeyPatch, bundles: Bundles) -> None:
    err = StderrRecorder()
    monkeypatch.setattr(sys, "stderr", err)
    name = bundles.make(env={"PROBE_START": "exit:3"})
    with pytest.raises(LaunchError) as info:
        launch_service(name)
    assert f"cannot launch the service {name}: it exited before it was ready" in str(info.value)
    assert "exited with status 3" in str(info.value)
    err.lines.wait_for(lambda lines: f"[{name}] probe exiting with status 3" in lines)


# --------------------------------------------------------------------------- instances


def test_one_application_instance_is_shared_by_a_process(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make()
    first = launched(name)
    second = launched(name)
    assert first is second
    _, proxy_a = connect(connections, first)
    _, proxy_b = connect(connections, second)
    assert proxy_a.pid() == proxy_b.pid() == first.pid
    assert proxy_a.connections() == 2  # each connection is its own peer at the service's listener


def test_a_user_service_is_launched_once_for_racing_client_processes(
    bundles: Bundles, spawn: Callable[..., Child], launched: Launched, runtime_dir: str
) -> None:
    record = os.path.join(runtime_dir, "launches")
    name = bundles.make(service_type="User", env={"PROBE_RECORD": record})
    clients = [spawn("service_client.py", name) for _ in range(4)]
    for client in clients:
        assert client.proc.stdin is not None
        client.proc.stdin.write(b"go\n")
    for client in clients:
        assert client.proc.stdin is not None
        client.proc.stdin.flush()
    lines = [client.read_line(timeout=3 * TIMEOUT) for client in clients]
    assert all(line.startswith("SERVICE ") for line in lines), lines
    pids = {int(line.split()[1]) for line in lines}
    assert len(pids) == 1, lines
    service_pid = pids.pop()
    launched.adopt_pid(service_pid)
    with open(record) as f:
        assert f.read().split() == [str(service_pid)]  # exactly one launch
    assert {line.split()[2] for line in lines} == {str(service_pid)}  # every client knows its pid
    assert os.path.exists(os.path.join(runtime_dir, f"{name}.sock"))


def test_a_user_service_outlives_its_launcher_and_logs_to_a_file(
    bundles: Bundles, spawn: Callable[..., Child], launched: Launched, connections: Connections, runtime_dir: str
) -> None:
    name = bundles.make(service_type="User")
    client = spawn("service_client.py", name)
    assert client.proc.stdin is not None
    client.proc.stdin.write(b"go\n")
    client.proc.stdin.flush()
    service_pid = int(client.read_line().split()[1])
    pidfd = launched.adopt_pid(service_pid)
    client.kill9()
    assert not wait_readable(pidfd, 0.3), "a User service must not die with the client that launched it"
    svc = launched(name)  # this process reaches the same instance
    assert svc.pid == service_pid and svc.socket_path == os.path.join(runtime_dir, f"{name}.sock")
    _, proxy = connect(connections, svc)
    proxy.say("user-out", "user-err")
    with open(os.path.join(runtime_dir, f"{name}.log")) as f:
        assert f.read().splitlines()[-2:] == ["user-out", "user-err"]
    assert wait_exit(svc, kill=True) == "the service exited"  # seen through the pidfd of a non-child


# --------------------------------------------------------------------------- death, relaunch, throttle


def test_kill9_runs_the_exit_callback_and_the_next_launch_is_a_fresh_instance(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make()
    svc = launched(name)
    _, proxy = connect(connections, svc)
    assert proxy.pid() == svc.pid
    started = time.monotonic()
    reason = wait_exit(svc, kill=True)
    assert time.monotonic() - started < 1.0
    assert reason == "the service was killed by signal 9 (SIGKILL)"
    assert reaped(svc.pid)
    assert not os.path.exists(svc.socket_path)
    fresh = launched(name)
    assert fresh is not svc and fresh.pid != svc.pid
    _, proxy = connect(connections, fresh)
    assert proxy.pid() == fresh.pid
    late = Recorder()
    svc.add_exit_callback(late.add)  # already dead: called soon
    assert late.wait_len(1) == ["the service was killed by signal 9 (SIGKILL)"]


def test_a_grandchild_holding_the_sockets_does_not_hide_the_death(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make()
    svc = launched(name)
    events = Recorder()
    _, proxy = connect(connections, svc, invalidation_handler=events.event("invalidated"))
    grandchild = proxy.grandchild()
    gfd = launched.adopt_pid(grandchild)
    started = time.monotonic()
    reason = wait_exit(svc, kill=True)
    assert time.monotonic() - started < 1.0
    assert "signal 9" in reason
    assert not wait_readable(gfd, 0), "the grandchild (holding the sockets) should still be alive"
    assert events.snapshot() == []  # no EOF: the grandchild holds our connection's other end


def test_a_crash_loop_is_throttled_with_a_growing_back_off(
    monkeypatch: pytest.MonkeyPatch, bundles: Bundles, logwatch: LogWatch, runtime_dir: str
) -> None:
    monkeypatch.setattr(_launcher, "BACKOFF_FIRST", 0.2)
    monkeypatch.setattr(sys, "stderr", StderrRecorder())
    record = os.path.join(runtime_dir, "launches")
    name = bundles.make(env={"PROBE_START": "exit:1", "PROBE_RECORD": record})
    for _ in range(_launcher.CRASH_BURST):
        with pytest.raises(LaunchError):
            launch_service(name)
    logwatch.wait_for(lambda r: r.levelname == "WARNING" and f"the service {name} exited 3 times" in r.getMessage())
    started = time.monotonic()
    with pytest.raises(ServiceThrottled) as info:
        launch_service(name)
    assert time.monotonic() - started < 0.1  # refused at once, nothing spawned
    err = info.value
    assert err.can_retry and err.code == nsxpc.ErrorCode.CONNECTION_INTERRUPTED
    assert isinstance(err, nsxpc.ConnectionInterrupted) and name in str(err)
    assert 0 < err.retry_after <= 0.2
    threading.Event().wait(err.retry_after + 0.05)  # let the documented back-off run out
    with pytest.raises(LaunchError):
        launch_service(name)  # allowed again: it crashes again...
    with pytest.raises(ServiceThrottled) as info:
        launch_service(name)
    assert 0.2 < info.value.retry_after <= 0.4  # ...and the back-off doubled
    with open(record) as f:
        pids = [int(p) for p in f.read().split()]
    assert len(pids) == _launcher.CRASH_BURST + 1
    assert all(reaped(pid) for pid in pids)


# --------------------------------------------------------------------------- idle exit and transactions


def test_an_idle_service_exits_and_is_launched_again(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make(idle=0.5)
    svc = launched(name)
    events = Recorder()
    _conn, proxy = connect(connections, svc, invalidation_handler=events.event("invalidated"))
    assert proxy.pid() == svc.pid
    replied = time.monotonic()
    assert wait_exit(svc) == "the service exited with status 0"
    assert time.monotonic() - replied >= 0.4
    events.wait_len(1)  # an endpoint connection is invalidated by its peer's exit
    fresh = launched(name)
    assert fresh.pid != svc.pid
    _, proxy = connect(connections, fresh)
    assert proxy.pid() == fresh.pid


def test_an_open_transaction_keeps_the_service_past_its_idle_time(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make(idle=0.3)
    svc = launched(name)
    _, proxy = connect(connections, svc)
    proxy.begin()
    gone = threading.Event()
    svc.add_exit_callback(lambda reason: gone.set())
    assert not gone.wait(1.2), "the service exited while a transaction was open"
    proxy.end()
    assert gone.wait(TIMEOUT)
    assert svc.exit_reason == "the service exited with status 0"


# --------------------------------------------------------------------------- client death


def test_an_application_service_dies_with_its_client_even_after_kill9(
    bundles: Bundles, spawn: Callable[..., Child], launched: Launched
) -> None:
    name = bundles.make()
    client = spawn("service_client.py", name)
    assert client.proc.stdin is not None
    client.proc.stdin.write(b"go\n")
    client.proc.stdin.flush()
    line = client.read_line()
    assert line.startswith("SERVICE "), line
    service_pid = int(line.split()[1])
    pidfd = launched.adopt_pid(service_pid)
    client.kill9()
    assert wait_readable(pidfd), "the service outlived its client: an orphan"


# --------------------------------------------------------------------------- environment, output, fds


def test_the_environment_is_minimal_without_join_existing_session(
    monkeypatch: pytest.MonkeyPatch, bundles: Bundles, launched: Launched, connections: Connections, runtime_dir: str
) -> None:
    monkeypatch.setenv("PROBE_MARKER", "client-only")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    name = bundles.make(env={"BUNDLE_VAR": "from-plist"})
    _, proxy = connect(connections, launched(name))
    env = proxy.environment()
    # LC_CTYPE: Python's own locale coercion (PEP 538) may add it at start-up.
    allowed = {*_launcher.MINIMAL_ENVIRONMENT, "PROBE_ROOT", "BUNDLE_VAR", "LC_CTYPE"}
    assert {k for k in env if not k.startswith("NSXPC_")} <= allowed, sorted(env)
    assert env["BUNDLE_VAR"] == "from-plist"
    assert env["NSXPC_SERVICE_NAME"] == name and env["NSXPC_RUNTIME_DIR"] == runtime_dir
    assert env["NSXPC_SERVICES_PATH"] == bundles.folder
    assert "NSXPC_LISTEN_FD" not in env and "NSXPC_READY_FD" not in env  # consumed by Listener.service()


def test_join_existing_session_passes_the_whole_environment(
    monkeypatch: pytest.MonkeyPatch, bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    monkeypatch.setenv("PROBE_MARKER", "client-only")
    name = bundles.make(join=True, env={"BUNDLE_VAR": "from-plist"})
    _, proxy = connect(connections, launched(name))
    env = proxy.environment()
    assert env["PROBE_MARKER"] == "client-only" and env["BUNDLE_VAR"] == "from-plist"


def test_service_output_reaches_our_stderr_prefixed_with_its_name(
    monkeypatch: pytest.MonkeyPatch, bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    err = StderrRecorder()
    monkeypatch.setattr(sys, "stderr", err)
    name = bundles.make()
    _, proxy = connect(connections, launched(name))
    proxy.say("to stdout", "to stderr")
    err.lines.wait_for(lambda lines: {f"[{name}] to stdout", f"[{name}] to stderr"} <= set(lines))


def test_a_helper_the_service_spawns_inherits_no_nsxpc_fd(
    bundles: Bundles, launched: Launched, connections: Connections
) -> None:
    name = bundles.make()
    _, proxy = connect(connections, launched(name))
    for line in proxy.helper_fds():
        fd, _, target = line.split(" ", 8)[-1].partition(" -> ")
        # stdio, and the directory ls reads; no socket, pidfd, epoll, pipe or lock.
        assert int(fd) <= 2 or target.startswith("/proc/"), line


@pytest.mark.parametrize("run_loop", ["dispatch_main", "asyncio"])
def test_the_run_loop_type_decides_what_the_main_thread_runs(
    bundles: Bundles, launched: Launched, connections: Connections, run_loop: str
) -> None:
    name = bundles.make(run_loop=run_loop)
    _, proxy = connect(connections, launched(name))
    frames = proxy.main_thread()
    assert "main" in frames, frames
    if run_loop == "asyncio":
        assert "run_forever" in frames, frames  # the listener is resumed from inside the loop
    else:
        assert "run_forever" not in frames, frames


def test_listener_service_outside_a_launched_service_says_so() -> None:
    with pytest.raises(nsxpc.XPCError, match="NSXPC_LISTEN_FD is not set"):
        nsxpc.Listener.service()


# --------------------------------------------------------------------------- socket activation


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian package systemd)")
def test_socket_activation_starts_the_daemon_on_the_first_connection(
    runtime_dir: str, connections: Connections
) -> None:
    assert SOCKET_ACTIVATE is not None
    name = unique_name("act")
    path = os.path.join(runtime_dir, f"{name}.sock")
    marker = os.path.join(runtime_dir, "started")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [SOCKET_ACTIVATE, "-l", path, f"--fdname={name}", sys.executable, str(HELPERS / "activated_daemon.py")]
    proc = subprocess.Popen(
        [*argv, name, marker], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        seen = b""
        while b"Listening on" not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"systemd-socket-activate did not listen: {seen!r}"
            if wait_readable(proc.stderr.fileno(), left):
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, f"systemd-socket-activate exited: {seen!r}"
                seen += chunk
        assert not os.path.exists(marker), "the daemon started before anybody connected"
        assert stat.S_ISSOCK(os.stat(path).st_mode)

        conn = connections.make(mach_service_name=name)
        conn.remote_object_interface = probe_interface()
        conn.resume()
        daemon_pid = sync_proxy(conn).pid()
        with open(marker) as f:
            assert int(f.read()) == daemon_pid == proc.pid  # it execs in place
        env_seen = sync_proxy(conn).environment()
        assert not {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(env_seen)  # unset once adopted

        second = connections.make(mach_service_name=name)
        second.remote_object_interface = probe_interface()
        second.resume()
        assert sync_proxy(second).connections() == 2
        assert second.process_identifier == daemon_pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        assert proc.stderr is not None
        proc.stderr.close()


def test_an_adopted_fd_that_is_not_a_listening_socket_is_refused(tmp_path: Path) -> None:
    code = (
        "import os, socket, nsxpc\n"
        "a, b = socket.socketpair()\n"
        "os.dup2(a.fileno(), 3)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES='x.y')\n"
        "try:\n"
        "    nsxpc.Listener(mach_service_name='x.y')\n"
        "except nsxpc.XPCError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), NSXPC_RUNTIME_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "fd 3 is not a listening Unix stream socket" in out.stdout, out


def test_socket_files_are_not_left_behind(bundles: Bundles, runtime_dir: str) -> None:
    name = bundles.make()
    svc = launch_service(name)
    wait_exit(svc, kill=True)
    assert not [f for f in os.listdir(runtime_dir) if f.endswith(".sock")]
    # A socket left by a client process that died with -9 is swept at the next launch.
    stale = os.path.join(runtime_dir, f"app.{2**22 + 1}.1.{name}.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)
    _launcher._swept.discard(runtime_dir)
    svc = launch_service(name)
    assert not os.path.exists(stale)
    wait_exit(svc, kill=True)


def launch_exit_cycles(bundles: Bundles, connections: Connections, n: int) -> dict[str, Any]:
    """n launch, call, orderly exit cycles of one service (test plan D2): every pid
    is reaped, every thread the cycles started ends, and no fd or socket file is
    left. Returns the figures."""
    name = bundles.make()
    # The launcher's own threads and fds, and the process's connection watcher, exist from here on.
    svc = launch_service(name)
    conn, proxy = connect(connections, svc)
    assert proxy.pid() == svc.pid
    conn.invalidate()
    wait_exit(svc, kill=True)
    connections.close()
    connections.made.clear()
    join_output_threads(name)
    fds, before = len(os.listdir("/proc/self/fd")), set(threading.enumerate())
    folder = os.environ["NSXPC_RUNTIME_DIR"]  # the runtime_dir fixture (autouse) made it
    sockets_before = set(os.listdir(folder))
    pids = []
    start = time.monotonic()
    for _ in range(n):
        svc = launch_service(name)
        conn, proxy = connect(connections, svc)
        assert proxy.pid() == svc.pid
        os.kill(svc.pid, signal.SIGTERM)  # an orderly exit: the crash-loop throttle does not count it
        assert wait_exit(svc) == "the service exited with status 0"
        conn.invalidate()
        pids.append(svc.pid)
        connections.close()
        connections.made.clear()
    elapsed = time.monotonic() - start
    for thread in set(threading.enumerate()) - before:  # connection queues, output relays: all end
        thread.join(TIMEOUT)
        assert not thread.is_alive(), f"{thread.name} did not end"
    assert all(reaped(pid) for pid in pids)
    # Other tests' connections may still be closing on their own threads: wait (bounded)
    # for the count to come back, so that only what these cycles leaked remains.
    settle(lambda: gc.collect() >= 0 and len(os.listdir("/proc/self/fd")) <= fds)
    return {
        "cycles": n,
        "seconds": round(elapsed, 1),
        "fd_delta": max(0, len(os.listdir("/proc/self/fd")) - fds),
        "new_files_in_runtime_dir": sorted(set(os.listdir(folder)) - sockets_before),
        "sockets_left": sorted(f for f in os.listdir(folder) if f.endswith(".sock")),
    }


def test_launch_and_exit_cycles_leak_no_fd_thread_or_zombie(bundles: Bundles, connections: Connections) -> None:
    figures = launch_exit_cycles(bundles, connections, 10)
    assert figures["fd_delta"] == 0, figures
    assert figures["new_files_in_runtime_dir"] == [], figures
    assert figures["sockets_left"] == [], figures  # each instance removes its socket as it exits
