"""Sandboxed services (issue 6 item 4, API.md section 9): ``NSXPCSandbox`` in Info.plist.

Real bundles built from ``tests/helpers/sandbox_service.py`` are launched on
demand; the probe service tries what the sandbox should forbid and reports what
happened over nsxpc (``tests/helpers/sandbox_probe.py``). Every test that checks
a restriction has an unsandboxed twin showing the same attempt succeeds, so a
restriction that stopped working (or a probe that always fails) is caught.
Refusals are checked both from ``launch_service`` and as a client connection
sees them. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import plistlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nsxpc
from nsxpc import _sandbox
from nsxpc._bundle import BundleError, load_bundle
from nsxpc._launcher import LaunchedService, LaunchError, launch_service
from tests.helpers.sandbox_probe import sandbox_probe_interface
from tests.integration.conftest import TIMEOUT, Connections, sync_proxy, unique_name

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "tests" / "helpers" / "sandbox_service.py").read_text()
GENEROUS = 10.0  # seconds: a cold start of a sandboxed interpreter on a loaded machine
MiB = 1 << 20

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandboxing")


# --------------------------------------------------------------------------- fixtures


class Sandboxes:
    """Builds sandbox probe bundles, launches them, and kills what is left at teardown."""

    def __init__(self, folder: str, connections: Connections) -> None:
        self.folder = folder
        self.connections = connections
        self.instances: list[LaunchedService] = []
        self.scratch = tempfile.mkdtemp(prefix="nxsb", dir="/tmp")
        # Three folders: one listed read-only, one read-write, one not listed at all.
        self.ro = os.path.join(self.scratch, "ro")
        self.rw = os.path.join(self.scratch, "rw")
        self.outside = os.path.join(self.scratch, "outside")
        for path in (self.ro, self.rw, self.outside):
            os.mkdir(path)
        for path, text in ((self.ro, "read-only text"), (self.rw, "read-write text"), (self.outside, "secret")):
            with open(os.path.join(path, "file.txt"), "w") as f:
                f.write(text)
        # A single file may be listed too (its siblings stay out).
        self.single = os.path.join(self.scratch, "single.txt")
        with open(self.single, "w") as f:
            f.write("single file")

    def make(
        self, sandbox: dict[str, Any] | None, *, name: str | None = None, service_type: str = "Application"
    ) -> str:
        name = name or unique_name("sbx")
        bundle = Path(self.folder) / f"{name}.xpc"
        macos = bundle / "Contents" / "MacOS"
        macos.mkdir(parents=True)
        service: dict[str, Any] = {
            "ServiceType": service_type,
            "EnvironmentVariables": {
                "PROBE_ROOT": str(ROOT),
                "PROBE_SECRET": os.path.join(self.outside, "file.txt"),
            }
        }
        if sandbox is not None:
            service["NSXPCSandbox"] = sandbox
        plist = {
            "CFBundleIdentifier": name,
            "CFBundlePackageType": "XPC!",
            "CFBundleExecutable": "probe",
            "XPCService": service,
        }
        with open(bundle / "Contents" / "Info.plist", "wb") as f:
            plistlib.dump(plist, f)
        exe = macos / "probe"
        exe.write_text(TEMPLATE.replace("#!PYTHON", f"#!{sys.executable}", 1))
        exe.chmod(0o755)
        return name

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.xpc")

    def confined(self, **extra: Any) -> dict[str, Any]:
        """A filesystem profile that lets the probe import its own module."""
        return {"ReadOnlyPaths": [self.ro, self.single, str(ROOT / "tests")], "ReadWritePaths": [self.rw], **extra}

    def probe(self, sandbox: dict[str, Any] | None, service_type: str = "Application") -> Any:
        """Launch a probe with ``sandbox`` and return a value-returning proxy to it."""
        name = self.make(sandbox, service_type=service_type)
        self.instances.append(launch_service(name))
        conn = self.connections.make(service_name=name)  # the instance just launched
        conn.remote_object_interface = sandbox_probe_interface()
        conn.resume()
        return sync_proxy(conn, GENEROUS)

    def close(self) -> None:
        for svc in self.instances:
            if svc.exit_reason is None and svc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(svc.pid, signal.SIGKILL)
                assert svc.wait_for_exit(TIMEOUT), f"{svc!r} did not die"
        shutil.rmtree(self.scratch, ignore_errors=True)


@pytest.fixture
def sandboxes(monkeypatch: pytest.MonkeyPatch, connections: Connections) -> Iterator[Sandboxes]:
    folder = tempfile.mkdtemp(prefix="nxsv", dir="/tmp")
    monkeypatch.setenv("NSXPC_SERVICES_PATH", folder)
    made = Sandboxes(folder, connections)
    try:
        yield made
    finally:
        connections.close()
        connections.made.clear()
        made.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["privileged", "user namespace"])
def netns_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways to a private network namespace: with CAP_SYS_ADMIN, and as an
    unprivileged user would (a new user namespace), forced when we are root."""
    if request.param == "user namespace":
        monkeypatch.setattr(_sandbox, "_force_user_namespace", True)
    elif not _sandbox._has_capability(_sandbox._CAP_SYS_ADMIN):
        pytest.skip("needs CAP_SYS_ADMIN")
    return str(request.param)


@pytest.fixture
def outside_listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP listener and a UDP socket on 127.0.0.1 in our own network namespace."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        tcp.setblocking(False)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        yield tcp, udp
    finally:
        tcp.close()
        udp.close()


def needs_landlock() -> None:
    if _sandbox.landlock_abi() < 1:
        pytest.skip("Landlock is not available on this kernel")


def our_netns() -> str:
    return os.readlink("/proc/self/ns/net")


# --------------------------------------------------------------------------- network


def test_network_off_blocks_tcp_and_udp(
    sandboxes: Sandboxes, netns_mode: str, outside_listeners: tuple[socket.socket, socket.socket]
) -> None:
    tcp, udp = outside_listeners
    probe = sandboxes.probe({"Network": False})
    assert probe.tcp_connect(tcp.getsockname()[1]) != "ok"
    assert probe.udp_send(udp.getsockname()[1]) != "ok"
    assert probe.tcp_listen() != "ok"
    # The replies came back, so the attempts are over: nothing reached our sockets.
    with pytest.raises(BlockingIOError):
        tcp.accept()
    with pytest.raises(BlockingIOError):
        udp.recv(16)
    status = probe.status()
    assert status["netns"] != our_netns()
    assert status["NoNewPrivs"] == "1"
    # In a user namespace the service keeps its ids (the maps name them), as peers see them.
    assert status["uid"] == str(os.getuid())
    # The service's own channel still works: this call went over it, and it can listen back.
    assert probe.anonymous_listener() == "ok"


def test_without_a_sandbox_the_network_is_reachable(
    sandboxes: Sandboxes, outside_listeners: tuple[socket.socket, socket.socket]
) -> None:
    tcp, udp = outside_listeners
    probe = sandboxes.probe(None)
    assert probe.tcp_connect(tcp.getsockname()[1]) == "ok"
    assert probe.udp_send(udp.getsockname()[1]) == "ok"
    assert probe.tcp_listen() == "ok"
    ready, _, _ = select.select([udp], [], [], TIMEOUT)
    assert ready and udp.recv(16) == b"probe"
    conn, _ = tcp.accept()
    conn.close()
    status = probe.status()
    assert status["netns"] == our_netns()
    assert status["NoNewPrivs"] == "0"
    assert status["RLIMIT_AS"] == repr((-1, -1))


def test_network_left_out_stays_reachable_with_a_filesystem_profile(
    sandboxes: Sandboxes, outside_listeners: tuple[socket.socket, socket.socket]
) -> None:
    needs_landlock()
    tcp, _ = outside_listeners
    probe = sandboxes.probe(sandboxes.confined())
    assert probe.tcp_connect(tcp.getsockname()[1]) == "ok"
    conn, _ = tcp.accept()
    conn.close()


# --------------------------------------------------------------------------- filesystem


def test_read_only_and_read_write_paths(sandboxes: Sandboxes) -> None:
    needs_landlock()
    probe = sandboxes.probe(sandboxes.confined())
    ro_file, rw_file = os.path.join(sandboxes.ro, "file.txt"), os.path.join(sandboxes.rw, "file.txt")
    assert probe.read_file(ro_file) == "read-only text"
    assert probe.read_file(sandboxes.single) == "single file"
    assert probe.write_file(sandboxes.single, "x") == "PermissionError:EACCES"
    assert probe.read_file(os.path.join(sandboxes.outside, "file.txt")) == "PermissionError:EACCES"
    assert probe.read_file("/etc/passwd") == "PermissionError:EACCES"
    assert probe.write_file(ro_file, "overwritten") == "PermissionError:EACCES"
    assert probe.write_file(os.path.join(sandboxes.ro, "new.txt"), "x") == "PermissionError:EACCES"
    assert probe.write_file(os.path.join(sandboxes.outside, "new.txt"), "x") == "PermissionError:EACCES"
    assert probe.read_file(rw_file) == "read-write text"
    assert probe.write_file(rw_file, "written by the service") == "ok"
    assert Path(rw_file).read_text() == "written by the service"
    assert probe.write_file(os.path.join(sandboxes.rw, "new.txt"), "made") == "ok"
    assert Path(ro_file).read_text() == "read-only text"
    assert not os.path.exists(os.path.join(sandboxes.outside, "new.txt"))
    # Its own /proc/self and the runtime folder (to listen back) stay usable unlisted.
    assert probe.status()["NoNewPrivs"] == "1"
    assert probe.anonymous_listener() == "ok"


def test_a_user_service_is_sandboxed_too(
    sandboxes: Sandboxes, outside_listeners: tuple[socket.socket, socket.socket]
) -> None:
    # A User instance outlives its launcher, logs to the runtime folder and holds its name lock.
    needs_landlock()
    tcp, _ = outside_listeners
    probe = sandboxes.probe(sandboxes.confined(Network=False, MaxOpenFiles=128), service_type="User")
    assert probe.tcp_connect(tcp.getsockname()[1]) != "ok"
    assert probe.read_file(os.path.join(sandboxes.outside, "file.txt")) == "PermissionError:EACCES"
    status = probe.status()
    assert status["NoNewPrivs"] == "1" and status["RLIMIT_NOFILE"] == repr((128, 128))


def test_read_write_paths_alone_confine_writing_only(sandboxes: Sandboxes) -> None:
    needs_landlock()
    probe = sandboxes.probe({"ReadWritePaths": [sandboxes.rw]})
    assert probe.read_file(os.path.join(sandboxes.outside, "file.txt")) == "secret"
    assert probe.write_file(os.path.join(sandboxes.outside, "file.txt"), "x") == "PermissionError:EACCES"
    assert probe.write_file(os.path.join(sandboxes.rw, "file.txt"), "ok") == "ok"
    assert Path(sandboxes.outside, "file.txt").read_text() == "secret"


def test_without_a_sandbox_the_filesystem_is_open(sandboxes: Sandboxes) -> None:
    probe = sandboxes.probe(None)
    assert probe.read_file(os.path.join(sandboxes.outside, "file.txt")) == "secret"
    assert probe.write_file(os.path.join(sandboxes.ro, "file.txt"), "changed") == "ok"
    assert Path(sandboxes.ro, "file.txt").read_text() == "changed"


def test_the_sandbox_is_in_force_before_the_services_first_line(sandboxes: Sandboxes) -> None:
    needs_landlock()
    early = sandboxes.probe(sandboxes.confined(Network=False)).status()["early"].split()
    assert early[0] == "1"  # NoNewPrivs
    assert early[1] != our_netns()
    assert early[2:] == ["secret", "PermissionError"]
    unconfined = sandboxes.probe(None).status()["early"].split()
    assert unconfined == ["0", our_netns(), "secret", "readable"]


# --------------------------------------------------------------------------- limits and no_new_privs


def test_max_memory_bytes(sandboxes: Sandboxes) -> None:
    limit = 512 * MiB
    probe = sandboxes.probe({"MaxMemoryBytes": limit})
    assert probe.status()["RLIMIT_AS"] == repr((limit, limit))
    assert probe.allocate(16 * MiB) == "ok"
    assert probe.allocate(limit) == "MemoryError"
    assert probe.allocate(16 * MiB) == "ok"  # the service survives its MemoryError
    # The same allocation without the sandbox works (calloc'd pages: nothing is really touched).
    assert sandboxes.probe(None).allocate(limit) == "ok"


def test_max_open_files(sandboxes: Sandboxes) -> None:
    probe = sandboxes.probe({"MaxOpenFiles": 64})
    assert probe.status()["RLIMIT_NOFILE"] == repr((64, 64))
    opened, outcome = probe.open_files(1000)
    assert 0 < opened < 64 and outcome == "OSError:EMFILE"
    assert probe.raise_limits() != "ok"  # the hard limit holds too
    opened, outcome = sandboxes.probe(None).open_files(1000)
    assert (opened, outcome) == (1000, "ok")


def test_an_empty_profile_sets_no_new_privs_and_restricts_nothing_else(
    sandboxes: Sandboxes, outside_listeners: tuple[socket.socket, socket.socket]
) -> None:
    tcp, _ = outside_listeners
    probe = sandboxes.probe({})
    status = probe.status()
    assert status["NoNewPrivs"] == "1"
    assert status["netns"] == our_netns()
    assert status["RLIMIT_AS"] == repr((-1, -1))
    assert probe.read_file(os.path.join(sandboxes.outside, "file.txt")) == "secret"
    assert probe.tcp_connect(tcp.getsockname()[1]) == "ok"
    conn, _ = tcp.accept()
    conn.close()


# --------------------------------------------------------------------------- refusals


MALFORMED = {
    "unknown key": ({"Netwrok": False}, "NSXPCSandbox/Netwrok: unknown key"),
    "network not a bool": ({"Network": "no"}, "NSXPCSandbox/Network: must be a boolean"),
    "paths not a list": ({"ReadOnlyPaths": "/tmp"}, "NSXPCSandbox/ReadOnlyPaths: must be an array"),
    "negative limit": ({"MaxOpenFiles": -1}, "NSXPCSandbox/MaxOpenFiles: must be a positive integer"),
    "bool limit": ({"MaxMemoryBytes": True}, "NSXPCSandbox/MaxMemoryBytes: must be a positive integer"),
    "not a dict": ([], "NSXPCSandbox must be a dictionary"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_profile_is_refused_naming_the_bundle_and_key(sandboxes: Sandboxes, case: str) -> None:
    profile, reason = MALFORMED[case]
    name = sandboxes.make(profile)
    with pytest.raises(BundleError) as info:
        launch_service(name)
    assert sandboxes.path(name) in str(info.value) and reason in str(info.value), str(info.value)


def refused_call(sandboxes: Sandboxes, name: str) -> nsxpc.XPCError:
    """Call the service ``name`` through a connection; the launch must fail and invalidate it."""
    conn = sandboxes.connections.make(service_name=name)
    conn.remote_object_interface = sandbox_probe_interface()
    invalidated = threading.Event()
    conn.invalidation_handler = invalidated.set
    conn.resume()
    with pytest.raises(nsxpc.XPCError) as info:
        sync_proxy(conn, GENEROUS).status()
    assert invalidated.wait(TIMEOUT), "the connection was not invalidated"
    assert info.value.code == nsxpc.ErrorCode.CONNECTION_INVALID
    return info.value


def test_a_path_that_does_not_exist_refuses_the_launch(sandboxes: Sandboxes) -> None:
    needs_landlock()
    missing = os.path.join(sandboxes.scratch, "absent")
    name = sandboxes.make({"ReadOnlyPaths": [missing]})
    with pytest.raises(LaunchError) as info:
        launch_service(name)
    text = str(info.value)
    assert f"cannot launch the service {name}" in text and sandboxes.path(name) in text, text
    assert f"NSXPCSandbox/ReadOnlyPaths: {missing} does not exist" in text, text
    err = refused_call(sandboxes, name)
    assert "NSXPCSandbox/ReadOnlyPaths" in str(err) and "does not exist" in str(err), str(err)


def test_a_relative_path_is_resolved_against_the_bundle(sandboxes: Sandboxes) -> None:
    needs_landlock()
    name = sandboxes.make({"ReadOnlyPaths": ["Contents", str(ROOT / "tests")]})
    bundle = load_bundle(sandboxes.path(name))
    assert bundle.sandbox is not None
    assert bundle.sandbox.read_only_paths == (os.path.join(sandboxes.path(name), "Contents"), str(ROOT / "tests"))


def test_no_landlock_refuses_a_filesystem_profile(sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sandbox, "landlock_abi", lambda: 0)
    name = sandboxes.make({"ReadOnlyPaths": []})
    with pytest.raises(LaunchError, match="NSXPCSandbox/ReadOnlyPaths: Landlock is not available"):
        launch_service(name)
    err = refused_call(sandboxes, name)
    assert "Landlock is not available" in str(err) and sandboxes.path(name) in str(err), str(err)


def test_no_user_namespaces_refuses_network_off(sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sandbox, "_force_user_namespace", True)
    monkeypatch.setattr(_sandbox, "_user_namespaces_allowed", lambda: "unprivileged user namespaces are disabled")
    name = sandboxes.make({"Network": False})
    with pytest.raises(LaunchError, match="NSXPCSandbox/Network: cannot make a private network namespace"):
        launch_service(name)


class _FailingUnshare:
    """libc, except that unshare() fails with EPERM: what a kernel that refuses it does."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @staticmethod
    def unshare(flags: int) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1


def test_a_failure_in_the_child_refuses_the_launch_with_its_reason(
    sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sandbox, "_libc", _FailingUnshare(_sandbox._lib()))
    name = sandboxes.make({"Network": False})
    with pytest.raises(LaunchError) as info:
        launch_service(name)
    text = str(info.value)
    assert sandboxes.path(name) in text and "cannot be enforced" in text, text
    assert "NSXPCSandbox/Network: [Errno 1] unshare(CLONE_NEWNET) failed: Operation not permitted" in text, text
    err = refused_call(sandboxes, name)
    assert "unshare(CLONE_NEWNET) failed" in str(err), str(err)


class _HangingUnshare(_FailingUnshare):
    """libc, except that unshare() never returns (a wait the kernel never ends)."""

    @staticmethod
    def unshare(flags: int) -> int:
        select.select([], [], [], 3600)  # not synchronisation: the hang under test; SIGALRM ends it
        return -1


def test_a_child_stuck_applying_its_profile_is_killed_and_the_launcher_carries_on(
    sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _sandbox._lib()
    monkeypatch.setattr(_sandbox, "APPLY_TIMEOUT", 1)
    monkeypatch.setattr(_sandbox, "_libc", _HangingUnshare(real))
    name = sandboxes.make({"Network": False})
    with pytest.raises(LaunchError, match=r"exited before it was ready \(the service was killed by signal 14"):
        launch_service(name)
    monkeypatch.setattr(_sandbox, "_libc", real)
    # The launcher thread was not left waiting for that child's exec: the next launch works.
    assert sandboxes.probe({}).status()["NoNewPrivs"] == "1"


# --------------------------------------------------------------------------- the parser example


def test_the_parser_example_runs_sandboxed(tmp_path: Path) -> None:
    parser = ROOT / "examples" / "parser"
    bundle = load_bundle(str(parser / "XPCServices" / "Parser.xpc"))
    assert bundle.sandbox is not None and bundle.sandbox.network is False
    assert bundle.sandbox.read_only_paths is not None and bundle.sandbox.read_write_paths == ()
    env = {k: v for k, v in os.environ.items() if k != "NSXPC_SERVICES_PATH"}
    proc = subprocess.run(
        [sys.executable, str(parser / "app.py")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "everything went as described" in proc.stdout
