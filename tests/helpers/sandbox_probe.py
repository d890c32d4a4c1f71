"""The protocol of the sandbox probe service (tests/integration/test_sandbox.py).

Each method tries one thing the sandbox may forbid and replies with what
happened: ``"ok"`` (or a value), or the name of the exception and its errno
(``"OSError:ENETUNREACH"``), never raising, so that a test can tell "blocked"
from "broken".
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Callable
from typing import Any, Protocol

import nsxpc


@nsxpc.protocol
class SandboxProbe(Protocol):
    def tcp_connect(self, port: int, reply: Callable[[str], None]) -> None: ...
    def udp_send(self, port: int, reply: Callable[[str], None]) -> None: ...
    def tcp_listen(self, reply: Callable[[str], None]) -> None: ...
    def read_file(self, path: str, reply: Callable[[str], None]) -> None: ...
    def write_file(self, path: str, text: str, reply: Callable[[str], None]) -> None: ...
    def allocate(self, nbytes: int, reply: Callable[[str], None]) -> None: ...
    def open_files(self, n: int, reply: Callable[[int, str], None]) -> None: ...
    def status(self, reply: Callable[[dict[str, str]], None]) -> None: ...
    def raise_limits(self, reply: Callable[[str], None]) -> None: ...
    def anonymous_listener(self, reply: Callable[[str], None]) -> None: ...


def sandbox_probe_interface() -> nsxpc.Interface:
    return nsxpc.Interface(SandboxProbe)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}:{errno.errorcode.get(exc.errno, str(exc.errno))}"
    return type(exc).__name__


class SandboxProbeImpl:
    def tcp_connect(self, port: int, reply: Any) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5.0):
                reply("ok")
        except Exception as exc:
            reply(_describe(exc))

    def udp_send(self, port: int, reply: Any) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"probe", ("127.0.0.1", port))
            reply("ok")
        except Exception as exc:
            reply(_describe(exc))

    def tcp_listen(self, reply: Any) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                s.listen()
            reply("ok")
        except Exception as exc:
            reply(_describe(exc))

    def read_file(self, path: str, reply: Any) -> None:
        try:
            with open(path) as f:
                reply(f.read())
        except Exception as exc:
            reply(_describe(exc))

    def write_file(self, path: str, text: str, reply: Any) -> None:
        try:
            with open(path, "w") as f:
                f.write(text)
            reply("ok")
        except Exception as exc:
            reply(_describe(exc))

    def allocate(self, nbytes: int, reply: Any) -> None:
        try:
            block = bytearray(nbytes)  # zero-filled: the pages are really asked for
            block[-1] = 1
            del block
            reply("ok")
        except Exception as exc:
            reply(_describe(exc))

    def open_files(self, n: int, reply: Any) -> None:
        opened: list[int] = []
        outcome = "ok"
        try:
            for _ in range(n):
                # One at a time, so that those opened before EMFILE are counted (and closed).
                opened.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))  # noqa: PERF401
        except Exception as exc:
            outcome = _describe(exc)
        finally:
            for fd in opened:
                os.close(fd)
        reply(len(opened), outcome)

    def status(self, reply: Any) -> None:
        info: dict[str, str] = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("NoNewPrivs", "Uid", "Gid", "CapBnd", "CapEff", "VmSize", "Seccomp"):
                        info[key] = value.strip()
        except Exception as exc:
            info["error"] = _describe(exc)
        info["uid"] = str(os.getuid())
        info["early"] = os.environ.get("PROBE_EARLY", "")
        info["RLIMIT_NOFILE"] = repr(resource.getrlimit(resource.RLIMIT_NOFILE))
        info["RLIMIT_AS"] = repr(resource.getrlimit(resource.RLIMIT_AS))
        try:
            info["netns"] = os.readlink("/proc/self/ns/net")
        except Exception as exc:
            info["netns"] = _describe(exc)
        reply(info)

    def raise_limits(self, reply: Any) -> None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
            reply("ok")
        except Exception as exc:
            reply(_describe(exc))

    def anonymous_listener(self, reply: Any) -> None:
        # What a service needs to talk back: an anonymous listener binds in the runtime folder.
        try:
            listener = nsxpc.Listener.anonymous()
            listener.resume()
            listener.invalidate()
            reply("ok")
        except Exception as exc:
            reply(_describe(exc) + f" {exc}")


class SandboxProbeDelegate:
    def should_accept_new_connection(self, listener: Any, connection: Any) -> bool:
        connection.exported_interface = sandbox_probe_interface()
        connection.exported_object = SandboxProbeImpl()
        connection.resume()
        return True
