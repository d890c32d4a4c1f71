"""L5: ``NSXPCSandbox``: the launcher confines a service before its code runs.

Apple's XPC services run in an App Sandbox container declared by entitlements;
here a bundle declares ``XPCService/NSXPCSandbox`` in its Info.plist and the
launcher applies it in the forked child, between ``fork`` and ``exec``, so not
one instruction of the service's executable runs unconfined (this works for any
executable, not only Python ones). Keys (docs/SANDBOX.md):

- ``Network: False``: a private network namespace (``unshare(CLONE_NEWNET)``,
  inside a new user namespace when we lack CAP_SYS_ADMIN), which holds only a
  loopback interface that is down: no IP traffic of any kind, no abstract Unix
  sockets of the host. Landlock's TCP rules (ABI >= 4) are added on top.
- ``ReadOnlyPaths`` / ``ReadWritePaths``: Landlock. With ``ReadOnlyPaths`` the
  filesystem is confined: only the listed paths, the Python runtime, the nsxpc
  package, the bundle and the runtime folder are reachable. With only
  ``ReadWritePaths`` everything stays readable and only those are writable.
- ``MaxMemoryBytes``: RLIMIT_AS. ``MaxOpenFiles``: RLIMIT_NOFILE. Both soft and hard.
- Any profile at all: ``PR_SET_NO_NEW_PRIVS`` (no setuid gain, and what
  Landlock needs without CAP_SYS_ADMIN).

Split between the two processes, so that errors are reported well:
:func:`parse_profile` (at bundle load) checks keys and types; :func:`prepare`
(in the client, before the fork) checks that the kernel can do what is asked,
opens every path and builds the Landlock ruleset; :meth:`Prepared.apply` (in the
child, as the ``preexec_fn``) only makes the few system calls that must be made
by the confined process itself. A failure there is written to a pipe, which
:meth:`Prepared.child_failure` reads back for the launch error.

Invariants: a profile is either fully enforced or the launch is refused, never
half-applied; a key left out restricts nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import shutil
import signal
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["SANDBOX_KEYS", "Prepared", "SandboxError", "SandboxProfile", "parse_profile", "prepare"]

SANDBOX_KEYS = ("Network", "ReadOnlyPaths", "ReadWritePaths", "MaxMemoryBytes", "MaxOpenFiles")

# Landlock (include/uapi/linux/landlock.h). Syscalls added after the 5.1 table
# unification have one number on every architecture but alpha.
_LANDLOCK_ARCHES = ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x", "armv7l", "i686", "loongarch64")
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE = 1 << 4, 1 << 5
_FS_MAKE = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_WRITE = _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE | _FS_REFER | _FS_TRUNCATE | _FS_IOCTL_DEV
# Rights that mean something on a file that is not a directory (others make add_rule fail).
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE = 21, 24
_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
#: Seconds the child may spend applying the profile before SIGALRM kills it. The child
#: of a multi-threaded client runs Python between fork and exec: were it ever to block,
#: the launcher thread (which waits for its exec) would be stuck for good.
APPLY_TIMEOUT = 10


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is __attribute__((packed))
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64))


class SandboxError(Exception):
    """The profile cannot be enforced (or is malformed): ``key`` and ``reason`` say why.

    Internal: the launcher turns it into a ``LaunchError`` (or the bundle loader
    into a ``BundleError``) naming the bundle.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"NSXPCSandbox/{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


@attrs.frozen
class SandboxProfile:
    """An ``NSXPCSandbox`` dictionary, checked. None means the key was left out (unrestricted).

    Attributes:
        network: False to cut the service off the network.
        read_only_paths: absolute paths (relative ones in the plist are resolved against the bundle).
        read_write_paths: the same, writable.
        max_memory_bytes: the RLIMIT_AS ceiling.
        max_open_files: the RLIMIT_NOFILE ceiling.
    """

    network: bool | None = None
    read_only_paths: tuple[str, ...] | None = None
    read_write_paths: tuple[str, ...] | None = None
    max_memory_bytes: int | None = None
    max_open_files: int | None = None

    @property
    def confines_filesystem(self) -> bool:
        return self.read_only_paths is not None or self.read_write_paths is not None


def parse_profile(value: object, bundle_path: str) -> SandboxProfile:
    """Check an ``NSXPCSandbox`` value from Info.plist.

    Raises:
        SandboxError: an unknown key or a value of the wrong type (the key is named).
    """
    if not isinstance(value, dict):
        raise SandboxError("", "NSXPCSandbox must be a dictionary")
    for key in value:
        if key not in SANDBOX_KEYS:
            raise SandboxError(str(key), f"unknown key (known keys: {', '.join(SANDBOX_KEYS)})")
    network = value.get("Network")
    if network is not None and not isinstance(network, bool):
        raise SandboxError("Network", f"must be a boolean, not {type(network).__name__}")

    def paths(key: str) -> tuple[str, ...] | None:
        items = value.get(key)
        if items is None:
            return None
        if not isinstance(items, list) or not all(isinstance(p, str) and p for p in items):
            raise SandboxError(key, "must be an array of non-empty path strings")
        return tuple(os.path.normpath(os.path.join(bundle_path, p)) for p in items)

    def limit(key: str) -> int | None:
        n = value.get(key)
        if n is None:
            return None
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise SandboxError(key, f"must be a positive integer, not {n!r}")
        return n

    return SandboxProfile(
        network=network,
        read_only_paths=paths("ReadOnlyPaths"),
        read_write_paths=paths("ReadWritePaths"),
        max_memory_bytes=limit("MaxMemoryBytes"),
        max_open_files=limit("MaxOpenFiles"),
    )


# --------------------------------------------------------------------------- system calls

_libc: Any = None


def _lib() -> Any:
    """libc's ``syscall``, ``prctl`` and ``unshare``, bound once, before any fork (the child only calls)."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
        libc.unshare.argtypes = [ctypes.c_int]
        libc.unshare.restype = ctypes.c_int
        _libc = libc
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")
    return result


def landlock_abi() -> int:
    """Landlock's ABI version on this kernel, 0 when it is absent or disabled."""
    if platform.machine() not in _LANDLOCK_ARCHES:
        return 0
    abi = _lib().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


def _has_capability(cap: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError):
        pass
    return False


def _user_namespaces_allowed() -> str | None:
    """None if an unprivileged process may create a user namespace here, else why not."""
    for path, bad in (
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        try:
            with open(path) as f:
                if f.read().strip() == bad:
                    return f"unprivileged user namespaces are disabled ({path} is {bad})"
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------- the paths a service needs


def _shebang_programs(executable: str, env: Mapping[str, str]) -> list[str]:
    """The interpreter of a ``#!`` script, and what ``#!/usr/bin/env NAME`` finds on the service's PATH."""
    try:
        with open(executable, "rb") as f:
            line = f.readline(512)
    except OSError:
        return []
    if not line.startswith(b"#!"):
        return []
    words = line[2:].decode(errors="replace").split()
    if not words:
        return []
    found = [words[0]]
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-")]
        if names:
            where = shutil.which(names[0], path=env.get("PATH", os.defpath))
            if where:
                found.append(where)
    return found


def _runtime_paths(executable: str, env: Mapping[str, str]) -> list[str]:
    """What a Python service needs to start: interpreter, stdlib, site-packages, shared libraries."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, sys.executable]
    candidates += [p for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")]
    candidates += _shebang_programs(executable, env)
    candidates += ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache"]
    candidates += ["/dev/zero", "/dev/urandom", "/dev/random"]
    return candidates


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- prepare (client) and apply (child)


class Prepared:
    """A profile ready to apply in a forked child; :meth:`close` it after the spawn."""

    def __init__(self, profile: SandboxProfile, runtime_dir: str) -> None:
        self.profile = profile
        self._runtime_dir = runtime_dir
        self._ruleset = -1
        self._proc_rights = 0  # rights on the child's own /proc/<pid>, added in the child
        self._netns_flags = 0
        self._maps: tuple[str, str] | None = None  # uid_map, gid_map lines in a new user namespace
        self._caps_to_drop: list[int] = []
        self._limits: list[tuple[int, int]] = []
        self._err_r, self._err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lib = _lib()

    def close(self) -> None:
        for fd in (self._ruleset, self._err_r, self._err_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._ruleset = self._err_r = self._err_w = -1

    def child_failure(self) -> str | None:
        """In the client, after a failed spawn: what the child could not apply, if that was it."""
        try:
            text = os.read(self._err_r, 4096)
        except OSError:
            return None
        return text.decode(errors="replace") or None

    def apply(self) -> None:
        """In the child, after fork, before exec (the ``preexec_fn``). Order matters:
        namespaces first (writing the id maps needs /proc), Landlock next, then the
        capability bounding set, and the rlimits last (after RLIMIT_AS the forked
        copy of the client may not be able to allocate)."""
        step = "NoNewPrivs"
        try:
            previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(APPLY_TIMEOUT)
            lib = self._lib
            _check(lib.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
            if self._netns_flags:
                step = "Network"
                _check(lib.unshare(self._netns_flags), "unshare(CLONE_NEWNET)")
                if self._maps is not None:
                    # Keep our own ids inside the new user namespace, so that peers'
                    # SO_PEERCRED and file ownership read the same as outside.
                    for name, text in (("setgroups", "deny"), ("uid_map", self._maps[0]), ("gid_map", self._maps[1])):
                        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
                        try:
                            os.write(fd, text.encode())
                        finally:
                            os.close(fd)
            if self._ruleset >= 0:
                profile = self.profile
                step = "ReadOnlyPaths" if profile.read_only_paths is not None else "ReadWritePaths"
                step = step if profile.confines_filesystem else "Network"
                if self._proc_rights:
                    # Only now does /proc/self name the service rather than the client.
                    _add_path_rule(lib, self._ruleset, "/proc/self", self._proc_rights)
                _check(lib.syscall(_SYS_RESTRICT_SELF, self._ruleset, 0), "landlock_restrict_self")
            step = "capabilities"
            for cap in self._caps_to_drop:
                _check(lib.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
            signal.alarm(0)  # an alarm would survive the exec; setrlimit cannot block
            if previous is not None:
                signal.signal(signal.SIGALRM, previous)
            for which, n in self._limits:
                step = "MaxOpenFiles" if which == resource.RLIMIT_NOFILE else "MaxMemoryBytes"
                resource.setrlimit(which, (n, n))
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(self._err_w, f"NSXPCSandbox/{step}: {exc}".encode())
            raise


def _add_path_rule(lib: Any, ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            rights &= _FILE_RIGHTS
        attr = _PathBeneath(rights, fd)
        _check(lib.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(attr), 0), "landlock_add_rule")
    finally:
        os.close(fd)


def prepare(
    profile: SandboxProfile, bundle_path: str, executable: str, env: Mapping[str, str], runtime_dir: str
) -> Prepared:
    """In the client, before the fork: check the kernel can enforce ``profile`` and
    build everything the child will apply.

    Raises:
        SandboxError: naming the key and why it cannot be enforced here.
    """
    prepared = Prepared(profile, runtime_dir)
    try:
        _prepare(prepared, profile, bundle_path, executable, env, runtime_dir)
    except BaseException:
        prepared.close()
        raise
    return prepared


def _prepare(
    p: Prepared, profile: SandboxProfile, bundle_path: str, executable: str, env: Mapping[str, str], rt: str
) -> None:
    root_caps = _has_capability(_CAP_SYS_ADMIN)
    if profile.network is False:
        if _force_user_namespace or not root_caps:
            why = _user_namespaces_allowed()
            if why is not None:
                raise SandboxError("Network", f"cannot make a private network namespace: {why}")
            p._netns_flags = _CLONE_NEWNET | _CLONE_NEWUSER
            p._maps = (f"{os.geteuid()} {os.geteuid()} 1", f"{os.getegid()} {os.getegid()} 1")
        else:
            p._netns_flags = _CLONE_NEWNET
            p._caps_to_drop.append(_CAP_SYS_ADMIN)  # or setns() would lead straight back out
    abi = landlock_abi() if profile.confines_filesystem or profile.network is False else 0
    if profile.confines_filesystem and abi < 1:
        key = "ReadOnlyPaths" if profile.read_only_paths is not None else "ReadWritePaths"
        raise SandboxError(key, "Landlock is not available on this kernel (needs Linux >= 5.13 with landlock in lsm=)")
    for key, listed in (("ReadOnlyPaths", profile.read_only_paths), ("ReadWritePaths", profile.read_write_paths)):
        for path in listed or ():
            if not os.path.exists(path):
                raise SandboxError(key, f"{path} does not exist (Landlock can only allow existing paths)")
    if abi >= 1:
        _build_ruleset(p, profile, abi, bundle_path, executable, env, rt)
    limited = profile.max_open_files is not None or profile.max_memory_bytes is not None
    if limited and _has_capability(_CAP_SYS_RESOURCE):
        p._caps_to_drop.append(_CAP_SYS_RESOURCE)  # or the service could raise its own hard limits
    for which, n in ((resource.RLIMIT_AS, profile.max_memory_bytes), (resource.RLIMIT_NOFILE, profile.max_open_files)):
        if n is not None:
            hard = resource.getrlimit(which)[1]
            # A ceiling already lower than the profile's is kept: it is stricter still.
            p._limits.append((which, n if hard == resource.RLIM_INFINITY else min(n, hard)))


def _build_ruleset(
    p: Prepared, profile: SandboxProfile, abi: int, bundle_path: str, executable: str, env: Mapping[str, str], rt: str
) -> None:
    lib = _lib()
    known = _READ | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE
    known |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    handled_fs = 0
    if profile.read_only_paths is not None:
        handled_fs = known  # the whole filesystem is confined
    elif profile.read_write_paths is not None:
        handled_fs = known & _WRITE  # reading stays free; writing is confined
    handled_net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if profile.network is False and abi >= 4 else 0
    if not handled_fs and not handled_net:
        return
    attr = _RulesetAttr(handled_fs, handled_net)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 4 else 8  # ABI 1-3 know only the fs field
    p._ruleset = _check(
        lib.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0), "landlock_create_ruleset"
    )
    if not handled_fs:
        return

    rules: list[tuple[str, int]] = []
    read, write = handled_fs & _READ, handled_fs & (_WRITE | _READ)

    def add(paths: Iterable[str], rights: int) -> None:
        for path in paths:
            # A symlink's target is what the kernel checks.
            rules.extend((one, rights) for one in {path, os.path.realpath(path)} if os.path.exists(one))

    add(profile.read_only_paths or (), read)
    add(profile.read_write_paths or (), write)
    add(_runtime_paths(executable, env), read)
    pkg = _package_dir()
    add([pkg, bundle_path], read)
    # Import finds nsxpc by listing its parent folder: names only, no file in it is readable.
    add([os.path.dirname(pkg)], handled_fs & _FS_READ_DIR)
    add([rt], write)  # the runtime folder: anonymous listeners and sockets of other services
    add(["/dev/null"], write)
    for path, rights in rules:
        if rights:
            try:
                _add_path_rule(lib, p._ruleset, path, rights)
            except OSError as exc:
                raise SandboxError("ReadOnlyPaths", f"cannot allow {path}: {exc.strerror or exc}") from None
    p._proc_rights = read


#: Tests set it to exercise the user-namespace path while running as root.
_force_user_namespace = False
