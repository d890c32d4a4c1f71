"""L5: launching services on demand: launchd's part of XPC, for one client process.

:func:`launch_service` finds a service bundle (``_bundle``), makes sure an
instance is running, and returns a :class:`LaunchedService` whose
``socket_path`` accepts ``connect()``. The launcher binds and listens on the
service's socket itself and hands it to the child (``NSXPC_LISTEN_FD``), so a
client may connect at once; ``Listener.service()`` adopts it in the child.

Instancing (``XPCService/ServiceType``, xpcservice.plist(5)):

- ``Application``: one instance per client process, shared by all its
  connections to that name. Socket ``<runtime dir>/app.<client pid>.<n>.<name>.sock``
  (a fresh path per instance, removed when the instance is reaped). The child
  gets ``PR_SET_PDEATHSIG=SIGKILL``, so it dies with the client however the
  client dies (kill -9 included).
- ``User``: one instance per user, shared by every client process. Socket
  ``<runtime dir>/<name>.sock``, the path a ``Listener(mach_service_name=name)``
  would use. Whichever client comes first launches it while holding an
  exclusive ``flock`` on ``<name>.launch``, so there is never a double launch;
  the instance holds ``<name>.lock`` (the named listener's lock) for its whole
  life, which is how the next client knows it is alive. It runs in a new session
  and outlives the client that launched it.

Protocol with the child (all ``NSXPC_*`` variables; any executable may follow it):

- ``NSXPC_LISTEN_FD``: the listening socket. ``NSXPC_LOCK_FD`` (User): the
  name lock, to keep open for life. Both must be made close-on-exec.
- ``NSXPC_READY_FD``: a pipe; the service calls ``listen()`` again on the
  socket (so peers' ``SO_PEERCRED`` names the service, not the launcher), then
  writes one byte and closes it. ``launch_service`` waits for that byte, for the
  child's death (then it raises :class:`LaunchError`), or for
  :data:`READY_TIMEOUT` seconds (then it logs a warning and returns: connections
  queue in the backlog).
- ``NSXPC_SERVICE_NAME``, ``NSXPC_SERVICE_TYPE``, ``NSXPC_RUN_LOOP_TYPE``,
  ``NSXPC_IDLE_EXIT_SECONDS``, ``NSXPC_BUNDLE_PATH``, and ``NSXPC_RUNTIME_DIR``
  (the client's runtime directory, resolved) for ``nsxpc.main``.

Environment (API.md section 7): without ``JoinExistingSession`` only ``PATH``,
``HOME``, ``USER``, ``LANG``, ``TMPDIR``, the client's ``NSXPC_*`` variables
and the bundle's ``EnvironmentVariables``; with it, the client's whole
environment plus ``EnvironmentVariables``. ``PYTHONPATH`` is not passed in the
minimal environment: a Python service finds nsxpc through its interpreter.
When the client runs in a virtual environment whose ``bin`` folder is not on
``PATH``, that folder is put first on the service's ``PATH`` (as activating it
would), so a ``#!/usr/bin/env python3`` service runs with the client's packages.
The launcher's own ``NSXPC_*`` variables are set last: a bundle cannot override
them. The working directory is ``/``; stdin is ``/dev/null``.

Sandbox (``XPCService/NSXPCSandbox``, docs/SANDBOX.md): the profile is checked
and its Landlock ruleset built in the client just before the spawn
(``_sandbox.prepare``), and applied in the child by the ``preexec_fn``, before
``exec``: the service's executable never runs unconfined. A profile the kernel
cannot enforce refuses the launch with a :class:`LaunchError` naming the bundle,
the key and why; a failure in the child comes back through a pipe.

Output: an Application service's stdout and stderr go to the client's
``sys.stderr``, each line prefixed ``[<service name>] `` (one reader thread per
instance). A User service outlives its launcher, so its output is appended to
``<runtime dir>/<name>.log``.

Crash-loop throttle (systemd's StartLimitBurst, launchd's ThrottleInterval): an
exit counts as a crash unless the instance had reported ready and exited with
status 0 (idle exit). After :data:`CRASH_BURST` crashes within
:data:`CRASH_WINDOW` seconds, relaunching is refused for :data:`BACKOFF_FIRST`
seconds, doubling on each further crash up to :data:`BACKOFF_MAX`; a WARNING
line goes to the ``nsxpc`` logger, and launch attempts meanwhile raise
:class:`ServiceThrottled` at once. A clean exit, or a crash after a run of at
least ``CRASH_WINDOW`` seconds, resets the back-off. Nothing retries by itself:
a launch happens only when a client asks for one.

Invariants:

- Children are spawned only by the one long-lived ``nsxpc launcher`` thread:
  ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits.
- A death is seen through the child's pidfd, not through EOF, so a grandchild
  that inherited the socket cannot hide it. Every child is reaped exactly once
  (no zombies), by whichever of the launcher thread or the launching thread
  sees its pidfd readable first.
- Each exit callback runs exactly once, on the ``nsxpc launcher callbacks``
  thread, never under a launcher lock and never on the thread that spawns (so a
  callback may take locks a launching thread holds).
- The parent closes its copies of the listening socket, the name lock and the
  ready pipe right after the spawn: they live and die with the child. Every fd
  the launcher keeps is close-on-exec; children get only stdio and their own fds.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._bundle import BundleError, ServiceBundle, find_service
from ._errors import ConnectionInterrupted, ConnectionInvalid
from ._sandbox import Prepared, SandboxError, prepare
from ._transport import (
    PeerCredentials,
    check_service_name,
    check_socket_path,
    runtime_dir,
    spawned_credentials,
    try_flock,
)

if TYPE_CHECKING:
    import subprocess

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "CRASH_BURST",
    "CRASH_WINDOW",
    "READY_TIMEOUT",
    "LaunchError",
    "LaunchedService",
    "ServiceThrottled",
    "launch_service",
    "service_environment",
]

log = logging.getLogger("nsxpc")

#: Seconds ``launch_service`` waits for a new instance to report ready before returning anyway.
READY_TIMEOUT = 10.0
#: Crashes within this many seconds count towards the throttle.
CRASH_WINDOW = 10.0
#: This many crashes within ``CRASH_WINDOW`` start the back-off.
CRASH_BURST = 3
#: The first back-off, in seconds; it doubles on each further crash.
BACKOFF_FIRST = 1.0
#: The longest back-off, in seconds.
BACKOFF_MAX = 30.0
#: The variables a service gets from its client without ``JoinExistingSession``.
MINIMAL_ENVIRONMENT = ("PATH", "HOME", "USER", "LANG", "TMPDIR")
#: A listening socket's backlog (the listener's own value: 1,000 simultaneous connects succeed).
BACKLOG = 4096
_SPAWN_TIMEOUT = 60.0
_EXIT_GRACE = 1.0  # seconds between a dying child's closing its files and its pidfd turning readable
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9


class LaunchError(ConnectionInvalid):
    """A service could not be started: exec failed, or it exited before it was ready.

    The message names the service and why (Apple: the connection is invalidated
    with "Couldn't communicate with a helper application").

    Attributes:
        service_name: the service that failed to start.
    """

    def __init__(self, message: str = "", *, service_name: str = "") -> None:
        super().__init__(message)
        self.service_name = service_name


class ServiceThrottled(ConnectionInterrupted):
    """A service is crash-looping and its relaunch is held back (launchd's throttle).

    ``can_retry`` is True: a message sent after ``retry_after`` seconds launches it again.

    Attributes:
        service_name: the throttled service.
        retry_after: seconds until a launch is allowed again.
    """

    def __init__(self, message: str = "", *, service_name: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.service_name = service_name
        self.retry_after = retry_after


# --------------------------------------------------------------------------- instances


class LaunchedService:
    """One running instance of a service, as this client process sees it.

    Attributes:
        name: the service name (``CFBundleIdentifier``).
        socket_path: where to ``connect()``; it accepts connections already.
        pid: the instance's process id; None when it is not known (a User service
            launched by another process whose pid could not be verified).
        service_type: ``"Application"`` or ``"User"``.
    """

    def __init__(
        self,
        name: str,
        socket_path: str,
        pid: int | None,
        service_type: str,
        *,
        proc: subprocess.Popen[bytes] | None = None,
        pidfd: int = -1,
        owned_path: str | None = None,
        output: str = "",
    ) -> None:
        self.name = name
        self.socket_path = socket_path
        self.pid = pid
        self.service_type = service_type
        self._proc = proc
        self._pidfd = pidfd
        self._owned_path = owned_path  # removed once the instance is reaped (Application)
        self._output = output  # where its stdout and stderr go, for error messages
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[str], None]] = []
        self._exit_reason: str | None = None
        self._started = time.monotonic()
        self._ready = False
        self._credentials: PeerCredentials | None = None

    def __repr__(self) -> str:
        state = f"exited: {self._exit_reason}" if self._exit_reason is not None else "running"
        return f"<nsxpc LaunchedService {self.name} {self.service_type} pid={self.pid} {state}>"

    @property
    def exit_reason(self) -> str | None:
        """Why the instance ended (e.g. ``"the service exited with status 1"``), or None while it runs."""
        return self._exit_reason

    def add_exit_callback(self, cb: Callable[[str], None]) -> None:
        """Call ``cb(reason)`` once, on a launcher thread, when this process sees the instance die.

        If it has already died, ``cb`` is called soon. Without a pid (see :attr:`pid`)
        the death cannot be watched and ``cb`` is never called.
        """
        with self._lock:
            reason = self._exit_reason
            if reason is None:
                self._callbacks.append(cb)
                return
        _the_launcher().notify([cb], reason)

    def remove_exit_callback(self, cb: Callable[[str], None]) -> None:
        """Forget ``cb`` if it has not been called; does nothing otherwise."""
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(cb)

    def credentials(self) -> PeerCredentials:
        """Who the instance is (its pid from the spawn; euid, egid and executable read from
        ``/proc`` while its pidfd shows it alive): read once, at its first connection,
        and shared by the ones after it, which talk to the same process."""
        with self._lock:
            creds = self._credentials
        if creds is None:
            pidfd = self.dup_pidfd()
            try:
                creds = spawned_credentials(self.pid, pidfd)  # type: ignore[arg-type]
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
            with self._lock:
                self._credentials = creds
        return creds

    def dup_pidfd(self) -> int:
        """A copy (close-on-exec, the caller's to close) of the instance's pidfd, or -1 once
        it is gone: how a client knows the service it launched (H-req, nsxpc._transport)."""
        with self._lock:
            return os.dup(self._pidfd) if self._pidfd >= 0 else -1

    def wait_for_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for this instance to finish exiting; True if it did.

        A dying process closes its sockets before its pidfd reports the exit, so a
        client can see end-of-stream (and a refused connect) a moment before the
        launcher knows the instance is gone."""
        if self._pidfd >= 0 and self._exit_reason is None:
            _readable(self._pidfd, timeout)
        return not self._alive()

    def _alive(self) -> bool:
        """True while the instance runs; reaps it (and runs its callbacks) if it just died."""
        if self._exit_reason is not None:
            return False
        if self._pidfd >= 0:
            if not _readable(self._pidfd):
                return True
            _the_launcher().reap(self)
            return False
        # A User instance with no pidfd: alive while somebody holds its name lock.
        return _name_lock_held(_user_lock_path(os.path.dirname(self.socket_path), self.name))


class _Spawn:
    """A request to the launcher thread: exec ``argv`` and open its pidfd."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        pass_fds: tuple[int, ...],
        output: int | None,
        application: bool,
        sandbox: Prepared | None = None,
    ) -> None:
        self.argv = argv
        self.sandbox = sandbox  # applied in the child before exec (nsxpc._sandbox)
        self.env = env
        self.pass_fds = pass_fds
        self.output = output  # an fd to write stdout and stderr to, or None for a pipe
        self.application = application
        self.done = threading.Event()
        self.abandoned = False  # the caller stopped waiting: a late child is killed at once
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self.error: Exception | None = None


class _Throttle:
    """Crash accounting for one service name (see the module docstring)."""

    def __init__(self) -> None:
        self.crashes: collections.deque[float] = collections.deque()
        self.delay = 0.0
        self.until = 0.0

    def check(self, name: str) -> None:
        left = self.until - time.monotonic()
        if left > 0:
            raise ServiceThrottled(
                f"the service {name} is crash-looping ({len(self.crashes)} exits within {CRASH_WINDOW:g} s); "
                f"it will not be relaunched for another {left:.1f} s",
                service_name=name,
                retry_after=left,
            )

    def record(self, name: str, crashed: bool, lived: float, reason: str) -> None:
        now = time.monotonic()
        if not crashed:
            self.crashes.clear()
            self.delay = 0.0
            return
        if lived >= CRASH_WINDOW:
            self.delay = 0.0
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - CRASH_WINDOW:
            self.crashes.popleft()
        if len(self.crashes) >= CRASH_BURST:
            self.delay = BACKOFF_FIRST if self.delay == 0 else min(self.delay * 2, BACKOFF_MAX)
            self.until = now + self.delay
            log.warning(
                "nsxpc: the service %s exited %d times within %g s (last: %s); not relaunching it for %g s",
                name,
                len(self.crashes),
                CRASH_WINDOW,
                reason,
                self.delay,
            )


# --------------------------------------------------------------------------- the launcher thread


class _Launcher:
    """The process's launcher: one thread spawns children and watches their pidfds,
    another runs exit callbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.deque[_Spawn] = collections.deque()
        self._watched: dict[int, LaunchedService] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll = select.epoll()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._notices: queue.SimpleQueue[tuple[list[Callable[[str], None]], str]] = queue.SimpleQueue()
        self.throttles: dict[str, _Throttle] = collections.defaultdict(_Throttle)
        self.instances: dict[str, LaunchedService] = {}
        self._name_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._serial = 0
        self._thread = threading.Thread(target=self._run, name="nsxpc launcher", daemon=True)
        self._notifier = threading.Thread(target=self._notify_loop, name="nsxpc launcher callbacks", daemon=True)
        self._thread.start()
        self._notifier.start()

    # -- called from any thread

    def name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks[name]

    def next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def spawn(self, request: _Spawn) -> None:
        """Have the launcher thread start the child; fills ``request.proc`` and ``.pidfd``.

        Raises:
            OSError, subprocess.SubprocessError: the spawn failed.
        """
        with self._lock:
            self._requests.append(request)
        os.write(self._wake_w, b"s")
        if not request.done.wait(_SPAWN_TIMEOUT):
            with self._lock:
                request.abandoned = True
                answered = request.done.is_set()
            if not answered:
                raise OSError(errno.ETIMEDOUT, "the launcher thread did not answer")
        if request.error is not None:
            raise request.error

    def watch(self, inst: LaunchedService) -> None:
        """Watch ``inst``'s pidfd from now on (level-triggered: an exit already past is seen at once)."""
        with inst._lock:
            fd = inst._pidfd
            if fd < 0 or inst._exit_reason is not None:
                return
            with self._lock:
                self._watched[fd] = inst
                self._epoll.register(fd, select.EPOLLIN)

    def reap(self, inst: LaunchedService) -> None:
        """If ``inst`` has died: reap it, record the exit, clean up, and post its callbacks. Idempotent."""
        with inst._lock:
            fd = inst._pidfd
            if inst._exit_reason is not None or fd < 0 or not _readable(fd):
                return
            reason, crashed = _exit_status(inst)
            inst._exit_reason = reason
            callbacks, inst._callbacks = inst._callbacks, []
            inst._pidfd = -1
            with self._lock:
                if self._watched.pop(fd, None) is not None:
                    self._epoll.unregister(fd)
            os.close(fd)
        log.info("nsxpc: the service %s (pid %s) ended: %s", inst.name, inst.pid, reason)
        if inst._owned_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(inst._owned_path)
        elif inst._proc is not None and inst.service_type == "User":
            _remove_stale_user_files(os.path.dirname(inst.socket_path), inst.name)
        if inst._proc is not None:
            with self._lock:
                throttle = self.throttles[inst.name]
            throttle.record(inst.name, crashed, time.monotonic() - inst._started, reason)
        self.notify(callbacks, reason)

    def notify(self, callbacks: list[Callable[[str], None]], reason: str) -> None:
        if callbacks:
            self._notices.put((callbacks, reason))

    # -- the launcher thread

    def _run(self) -> None:
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._serve_requests()
                    continue
                with self._lock:
                    inst = self._watched.get(fd)
                if inst is not None:
                    try:
                        self.reap(inst)
                    except Exception:  # the watcher must outlive any one instance
                        log.exception("nsxpc: reaping the service %s failed", inst.name)

    def _serve_requests(self) -> None:
        while True:
            with self._lock:
                if not self._requests:
                    return
                request = self._requests.popleft()
            try:
                _spawn_now(request)
            except Exception as exc:
                request.error = exc
            with self._lock:
                abandoned = request.abandoned
                request.done.set()
            if abandoned and request.proc is not None:
                request.proc.kill()
                request.proc.wait()
                os.close(request.pidfd)

    def _notify_loop(self) -> None:
        while True:
            callbacks, reason = self._notices.get()
            for cb in callbacks:
                try:
                    cb(reason)
                except Exception:
                    log.exception("nsxpc: a service exit callback raised")


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def _the_launcher() -> _Launcher:
    global _launcher
    launcher = _launcher
    if launcher is None:
        with _launcher_lock:
            if _launcher is None:
                _launcher = _Launcher()
            launcher = _launcher
    return launcher


def _forget_after_fork() -> None:
    # A forked child is a new client process: it has no launcher thread and owns no instance.
    global _launcher, _launcher_lock
    _launcher = None
    _launcher_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _spawn_now(request: _Spawn) -> None:
    """On the launcher thread: fork and exec the child, open its pidfd."""
    import subprocess

    preexec: Callable[[], None] | None = None
    if request.application:
        preexec = _die_with_parent(os.getpid())
    if request.sandbox is not None:
        # The sandbox first: PDEATHSIG is set after the credential change a new user namespace makes.
        preexec = _chain(request.sandbox.apply, preexec)
    output: int = subprocess.PIPE if request.output is None else request.output
    proc = subprocess.Popen(
        request.argv,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=request.env,
        cwd="/",
        close_fds=True,
        pass_fds=request.pass_fds,
        start_new_session=not request.application,
        preexec_fn=preexec,
    )
    try:
        # Not reaped yet, so the pid cannot have been reused: the pidfd is this child's.
        request.pidfd = os.pidfd_open(proc.pid)
    except OSError:
        proc.kill()
        proc.wait()
        raise
    request.proc = proc


def _chain(first: Callable[[], None], then: Callable[[], None] | None) -> Callable[[], None]:
    def setup() -> None:
        first()
        if then is not None:
            then()

    return setup


_prctl: Any = None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec function: SIGKILL the child when the launcher thread (and so the client) dies."""
    import ctypes

    global _prctl
    if _prctl is None:  # looked up before the fork: the child only calls it
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
        _prctl = prctl
    prctl = _prctl

    def setup() -> None:
        if prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            os._exit(1)  # the client died between fork and prctl: do not outlive it

    return setup


# --------------------------------------------------------------------------- launching


def launch_service(name: str) -> LaunchedService:
    """Make sure an instance of the service ``name`` runs, and return it (launchd's
    launch-on-demand behind ``-[NSXPCConnection initWithServiceName:]``).

    Blocking. ``Application`` services: one instance per client process, shared by
    all its connections; ``User`` services: one instance per user, launched by
    whichever client comes first, under a lock. When this returns, the instance's
    socket accepts ``connect()``.

    Raises:
        BundleError: no bundle is named ``name``, or its bundle is malformed (the
            message names the bundle path and the reason).
        LaunchError: the service could not be started (exec failed, it exited at once...).
        ServiceThrottled: the service is crash-looping and its back-off is in force.
    """
    launcher = _the_launcher()
    with launcher.name_lock(name):
        inst = launcher.instances.get(name)
        if inst is not None:
            if inst._alive():
                return inst
            del launcher.instances[name]
        with launcher._lock:
            throttle = launcher.throttles[name]
        throttle.check(name)
        bundle = find_service(name)
        try:
            check_service_name(bundle.identifier)
        except ValueError as exc:
            raise BundleError(f"service bundle {bundle.path} is malformed: {exc}") from None
        if bundle.service_type == "User":
            inst = _launch_user(launcher, bundle, throttle)
        else:
            inst = _launch_application(launcher, bundle)
        launcher.instances[name] = inst
        return inst


def _launch_application(launcher: _Launcher, bundle: ServiceBundle) -> LaunchedService:
    name = bundle.identifier
    rt = runtime_dir()
    _sweep_application_sockets(rt)
    path = _application_socket_path(rt, name, launcher.next_serial())
    sock = _listen_at(name, path)
    try:
        return _start(launcher, bundle, sock, path, lock_fd=-1, output_fd=None, owned_path=path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _launch_user(launcher: _Launcher, bundle: ServiceBundle, throttle: _Throttle) -> LaunchedService:
    name = bundle.identifier
    rt = runtime_dir()
    path = os.path.join(rt, f"{name}.sock")
    try:
        check_socket_path(path)
    except ValueError as exc:
        raise LaunchError(f"cannot launch the service {name}: {exc}", service_name=name) from None
    with _flock(os.path.join(rt, f"{name}.launch")):
        lock_fd = try_flock(_user_lock_path(rt, name))
        if lock_fd < 0:
            # A live instance holds the name: reach it (launched by another process, or by us earlier).
            return _attach_user(rt, name, path)
        try:
            throttle.check(name)
            sock = _listen_at(name, path)
            log_path = os.path.join(rt, f"{name}.log")
            output_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                inst = _start(launcher, bundle, sock, path, lock_fd=lock_fd, output_fd=output_fd, owned_path=None)
            finally:
                os.close(output_fd)
        finally:
            os.close(lock_fd)  # the child holds the lock now (or nobody does, if it failed)
        _write_pid_file(rt, name, inst.pid)
        return inst


def _start(
    launcher: _Launcher,
    bundle: ServiceBundle,
    sock: socket.socket,
    path: str,
    *,
    lock_fd: int,
    output_fd: int | None,
    owned_path: str | None,
) -> LaunchedService:
    """Spawn the bundle's executable on ``sock``, wait until it is ready, watch it. Closes ``sock``."""
    name = bundle.identifier
    application = bundle.service_type != "User"
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    fds = [sock.fileno(), ready_w] + ([lock_fd] if lock_fd >= 0 else [])
    extra = {
        "NSXPC_SERVICE_NAME": name,
        "NSXPC_SERVICE_TYPE": bundle.service_type,
        "NSXPC_RUN_LOOP_TYPE": bundle.run_loop_type,
        "NSXPC_IDLE_EXIT_SECONDS": repr(bundle.idle_exit_seconds),
        "NSXPC_BUNDLE_PATH": bundle.path,
        "NSXPC_RUNTIME_DIR": os.path.dirname(path),
        "NSXPC_LISTEN_FD": str(sock.fileno()),
        "NSXPC_READY_FD": str(ready_w),
    }
    if lock_fd >= 0:
        extra["NSXPC_LOCK_FD"] = str(lock_fd)
    env = service_environment(bundle, extra)
    sandbox: Prepared | None = None
    try:
        if bundle.sandbox is not None:
            sandbox = prepare(bundle.sandbox, bundle.path, bundle.executable, env, os.path.dirname(path))
    except SandboxError as exc:
        sock.close()
        os.close(ready_w)
        os.close(ready_r)
        raise _sandbox_refused(bundle, str(exc)) from None
    request = _Spawn([bundle.executable], env, tuple(fds), output_fd, application, sandbox)
    try:
        launcher.spawn(request)
    except Exception as exc:
        os.close(ready_r)
        why = sandbox.child_failure() if sandbox is not None else None
        if why is not None:
            raise _sandbox_refused(bundle, why) from exc
        raise _exec_failed(bundle, exc) from exc
    finally:
        sock.close()
        os.close(ready_w)
        if sandbox is not None:
            sandbox.close()
    proc = request.proc
    assert proc is not None
    output = "this process's stderr" if application else f"{os.path.dirname(path)}/{name}.log"
    inst = LaunchedService(
        name,
        path,
        proc.pid,
        bundle.service_type,
        proc=proc,
        pidfd=request.pidfd,
        owned_path=owned_path,
        output=output,
    )
    if proc.stdout is not None:
        threading.Thread(
            target=_forward_output, args=(name, proc.stdout), name=f"nsxpc output {name}", daemon=True
        ).start()
    log.info("nsxpc: launched the service %s (pid %d)", name, proc.pid)
    _await_ready(launcher, inst, ready_r)
    launcher.watch(inst)
    return inst


def _await_ready(launcher: _Launcher, inst: LaunchedService, ready_r: int) -> None:
    """Wait for the child's ready byte, its death (LaunchError), or READY_TIMEOUT. Closes ``ready_r``."""
    deadline = time.monotonic() + READY_TIMEOUT
    poller = select.poll()
    poller.register(ready_r, select.POLLIN)
    poller.register(inst._pidfd, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "nsxpc: the service %s (pid %s) did not report ready within %g s; connecting anyway",
                    inst.name,
                    inst.pid,
                    READY_TIMEOUT,
                )
                return
            try:
                events = dict(poller.poll(left * 1000))
            except InterruptedError:
                continue
            if ready_r in events:
                if os.read(ready_r, 1):
                    inst._ready = True
                    return
                # EOF without a word. An exiting child closes its files a moment before its
                # pidfd turns readable, so give that moment; a live one is not nsxpc-aware
                # (it closed the pipe): connections will queue until it accepts.
                poller.unregister(ready_r)
                if not poller.poll(_EXIT_GRACE * 1000):
                    return
            if inst._pidfd in events or _readable(inst._pidfd):
                launcher.reap(inst)
                raise LaunchError(
                    f"cannot launch the service {inst.name}: it exited before it was ready "
                    f"({inst.exit_reason}); its output went to {inst._output}",
                    service_name=inst.name,
                )
    finally:
        os.close(ready_r)


def _sandbox_refused(bundle: ServiceBundle, why: str) -> LaunchError:
    return LaunchError(
        f"cannot launch the service {bundle.identifier}: the sandbox profile of {bundle.path} "
        f"cannot be enforced: {why}",
        service_name=bundle.identifier,
    )


def _exec_failed(bundle: ServiceBundle, exc: Exception) -> LaunchError:
    name = bundle.identifier
    if isinstance(exc, OSError):
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:
            why += " (is the interpreter named in its #! line installed?)"
        elif exc.errno == errno.ENOEXEC:
            why += " (a script needs a #! line)"
    else:
        why = str(exc)
    return LaunchError(
        f"cannot launch the service {name}: exec of {bundle.executable} failed: {why}", service_name=name
    )


def service_environment(bundle: ServiceBundle, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a service of ``bundle`` starts with (see the module docstring)."""
    source = os.environ
    if bundle.join_existing_session:
        env = dict(source)
    else:
        env = {key: source[key] for key in MINIMAL_ENVIRONMENT if key in source}
        env.update((key, value) for key, value in source.items() if key.startswith("NSXPC_"))
    if sys.prefix != sys.base_prefix:
        venv_bin = os.path.dirname(sys.executable)
        path = env.get("PATH", os.defpath)
        if venv_bin not in path.split(os.pathsep):
            env["PATH"] = venv_bin + os.pathsep + path
    env.update(bundle.environment)
    env.update(extra or {})
    return env


def _exit_status(inst: LaunchedService) -> tuple[str, bool]:
    """Reap ``inst`` (its pidfd is readable) and describe how it ended; (reason, crashed)."""
    proc = inst._proc
    if proc is None:
        return "the service exited", False  # not our child: no status to read
    code = proc.wait()
    if code < 0:
        import signal

        try:
            signame = f" ({signal.Signals(-code).name})"
        except ValueError:
            signame = ""
        return f"the service was killed by signal {-code}{signame}", True
    if code != 0:
        return f"the service exited with status {code}", True
    return "the service exited with status 0", not inst._ready


def _forward_output(name: str, pipe: Any) -> None:
    """Copy the service's output to our stderr, each line prefixed ``[name] ``."""
    prefix = f"[{name}] "
    fd = pipe.fileno()
    pending = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > 65536:  # a very long line without a newline: pass it on in pieces
                lines.append(pending)
                pending = b""
            if lines:
                _write_err("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines))
        if pending:
            _write_err(f"{prefix}{pending.decode(errors='replace')}\n")
    finally:
        pipe.close()


_output_lock = threading.Lock()


def _write_err(text: str) -> None:
    with _output_lock:
        stream = sys.stderr
        try:
            if stream is None:
                os.write(2, text.encode())
            else:
                stream.write(text)
                stream.flush()
        except (OSError, ValueError):
            pass  # our stderr is gone; the service keeps running


# --------------------------------------------------------------------------- files and sockets


def _listen_at(name: str, path: str) -> socket.socket:
    """Bind and listen at ``path``, replacing a stale file (the caller owns the path)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise LaunchError(
            f"cannot launch the service {name}: cannot listen at {path}: {exc.strerror}", service_name=name
        ) from exc
    return sock


def _application_socket_path(rt: str, name: str, serial: int) -> str:
    path = os.path.join(rt, f"app.{os.getpid()}.{serial}.{name}.sock")
    if len(os.fsencode(path)) > 107:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        path = os.path.join(rt, f"app.{os.getpid()}.{serial}.{digest}.sock")
    try:
        check_socket_path(path)
    except ValueError as exc:
        raise LaunchError(f"cannot launch the service {name}: {exc}", service_name=name) from None
    return path


_swept: set[str] = set()


def _sweep_application_sockets(rt: str) -> None:
    """Once per runtime folder: remove Application sockets left by client processes that died
    (a client killed with -9 cannot remove its own)."""
    if rt in _swept:
        return
    _swept.add(rt)
    try:
        names = os.listdir(rt)
    except OSError:
        return
    for entry in names:
        parts = entry.split(".", 2)
        if len(parts) < 3 or parts[0] != "app" or not entry.endswith(".sock") or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(rt, entry))
        except PermissionError:
            pass


def _user_lock_path(rt: str, name: str) -> str:
    return os.path.join(rt, f"{name}.lock")


@contextlib.contextmanager
def _flock(path: str) -> Iterator[int]:
    """Hold an exclusive flock on ``path`` (blocking: its holder is a launch, which is bounded)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                break
            except InterruptedError:
                continue
        yield fd
    finally:
        os.close(fd)


def _name_lock_held(path: str) -> bool:
    fd = try_flock(path)
    if fd < 0:
        return True
    os.close(fd)
    return False


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: with the pid, names one process for the life of the system."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(b")")[2].split()[19].decode()


def _write_pid_file(rt: str, name: str, pid: int | None) -> None:
    if pid is None:
        return
    start = _start_time(pid)
    if start is None:
        return
    path = os.path.join(rt, f"{name}.pid")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid} {start}\n")
    os.replace(tmp, path)


def _attach_user(rt: str, name: str, path: str) -> LaunchedService:
    """A User instance another process launched (we hold the launch lock, so it is the one
    the pid file names if the pid and its start time still match)."""
    pid: int | None = None
    pidfd = -1
    try:
        with open(os.path.join(rt, f"{name}.pid")) as f:
            fields = f.read().split()
        candidate, start = int(fields[0]), fields[1]
        pidfd = os.pidfd_open(candidate)
        if _start_time(candidate) == start:
            pid = candidate
        else:
            os.close(pidfd)
            pidfd = -1
    except (OSError, ValueError, IndexError):
        if pidfd >= 0:
            os.close(pidfd)
        pidfd = -1
    inst = LaunchedService(name, path, pid, "User", pidfd=pidfd, output=f"{rt}/{name}.log")
    inst._ready = True
    if pidfd >= 0:
        _the_launcher().watch(inst)
    return inst


def _remove_stale_user_files(rt: str, name: str) -> None:
    """After our User instance died: remove its socket and pid file if nobody has taken the name since."""
    launch_fd = try_flock(os.path.join(rt, f"{name}.launch"))
    if launch_fd < 0:
        return  # somebody is launching it right now
    try:
        lock_fd = try_flock(_user_lock_path(rt, name))
        if lock_fd < 0:
            return
        try:
            for suffix in (".sock", ".pid"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(rt, f"{name}{suffix}"))
        finally:
            os.close(lock_fd)
    finally:
        os.close(launch_fd)


def _readable(fd: int, timeout: float = 0.0) -> bool:
    """True if ``fd`` (a pidfd) reports its process has exited, waiting up to ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
