"""``make demo``: the kitchen service and a client, in two processes, narrated.

It starts ``service.py`` as a child process in a fresh runtime directory, then shows:

1. calls across the process boundary: a one-way message, replies carrying a
   SecureCoding object and several values, a synchronous and an asynchronous proxy;
2. a refused class: secure coding checks every argument against its slot's allowlist,
   on the way out (``EncodingError``, nothing sent) and again on the way in (the
   service drops the message, the caller gets ``DecodingError``);
3. the service killed (SIGKILL) while a call is outstanding: the call's error handler
   gets ``ConnectionInterrupted``, then the interruption handler runs; the service is
   restarted and the next call on the same connection reconnects and works.

Every wait is bounded; the demo exits 0 when everything went as described, and
always stops its child process and removes its temporary directory.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/
sys.path.insert(1, str(Path(__file__).resolve().parent))  # client.py beside this file

from client import connect

import nsxpc
from protocols.kitchen import Cookie, FrenchFry, Potato, Watermelon, kitchen_interface

NAME = "com.example.kitchen"
SERVICE = Path(__file__).resolve().parent / "service.py"
TIMEOUT = 5.0  # seconds: the bound on every wait


class DemoFailed(Exception):
    """Something did not happen as the narration says it should."""


def step(text: str) -> None:
    print(f"\n== {text}")


def note(text: str) -> None:
    print(f"   {text}")


class Service:
    """The kitchen service as a child process, its output relayed line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(SERVICE), NAME],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, text: str) -> None:
        """Relay the service's output up to and including the first line containing ``text``."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise DemoFailed(f"the service did not say {text!r} within {TIMEOUT:g} s") from None
            if line is None:
                raise DemoFailed(f"the service exited (status {self.proc.wait()}) before saying {text!r}")
            print(f"       | {line}")
            if text in line:
                return

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        return self.proc.returncode


def wait_for(event: threading.Event, what: str) -> None:
    if not event.wait(TIMEOUT):
        raise DemoFailed(f"{what} did not happen within {TIMEOUT:g} s")


def demo(env: dict[str, str], services: list[Service]) -> None:
    step(f"Starting the kitchen service: Listener(mach_service_name={NAME!r}) in a child process")
    service = Service(env)
    services.append(service)

    events: list[str] = []
    interrupted = threading.Event()
    invalidated = threading.Event()

    def on_interrupted() -> None:
        events.append("interruption handler")
        interrupted.set()

    def on_invalidated() -> None:
        events.append("invalidation handler")
        invalidated.set()

    connection = connect(NAME, on_interrupted=on_interrupted, on_invalidated=on_invalidated)
    note(f"client: Connection(mach_service_name={NAME!r}) with interruption and invalidation handlers, resumed")
    sync = connection.synchronous_remote_object_proxy_with_error_handler(
        lambda error: events.append(f"sync error handler: {error}"), timeout=TIMEOUT
    )

    # -------------------------------------------------------------- 1. calls
    step("1. Calls through a synchronous proxy (reply omitted: the call returns the reply's value)")
    note("sync.add(2, 3)")
    total = sync.add(2, 3)
    service.expect("add(2, 3)")
    note(f"-> {total!r}")
    first_pid = connection.process_identifier
    note(f"connected; the service's pid, from SO_PEERCRED: {first_pid}")

    cookie = Cookie("chocolate chip", 12)
    note(f"sync.feed_me_a_cookie({cookie!r})   (one-way: no reply block, nothing to wait for)")
    sync.feed_me_a_cookie(cookie)
    service.expect("feed_me_a_cookie")

    melon = Watermelon(weight=4.2)
    note(f"sync.feed_me_a_watermelon({melon!r})")
    rind = sync.feed_me_a_watermelon(melon)
    service.expect("feed_me_a_watermelon")
    note(f"-> {rind!r}   (an @nsxpc.secure_coding attrs class, decoded against the reply's allowlist)")

    fries = [FrenchFry(length=7.5), FrenchFry(length=6.0, salted=False), FrenchFry(length=5.0)]
    note(f"sync.feed_me_fries([{len(fries)} FrenchFry])   (the slot allows {{FrenchFry, list}} via set_classes)")
    count = sync.feed_me_fries(fries)
    service.expect("feed_me_fries")
    note(f"-> {count!r}   (a reply block with two arguments returns a tuple)")

    note("sync.cookies_eaten()")
    eaten = sync.cookies_eaten()
    service.expect("cookies_eaten")
    note(f"-> {eaten!r}")

    done = threading.Event()
    outcome: list[object] = []

    def remember(value: object) -> None:
        outcome.append(value)
        done.set()

    proxy = connection.remote_object_proxy_with_error_handler(remember)
    note("proxy = remote_object_proxy_with_error_handler(...); proxy.add(40, 2, reply=...)   (asynchronous)")
    proxy.add(40, 2, reply=remember)
    wait_for(done, "the reply to add(40, 2)")
    service.expect("add(40, 2)")
    note(f"-> the reply block ran on the connection's queue with {outcome[0]!r}")
    if (total, count, outcome[0]) != (5, (3, "more ketchup"), 42) or eaten != [cookie]:
        raise DemoFailed("a call returned something unexpected")

    # -------------------------------------------------------------- 2. refused class
    step("2. A refused class: a Potato among the fries")
    spud = [FrenchFry(length=7.5), Potato("russet")]
    note("sync.feed_me_fries([FrenchFry(...), Potato('russet')])")
    try:
        sync.feed_me_fries(spud)
    except nsxpc.EncodingError as exc:
        note(f"-> raised EncodingError (code {int(exc.code)}) in the client: {exc}")
    else:
        raise DemoFailed("the Potato was not refused")
    note("The proxy checks every argument against the slot's allowlist before encoding:")
    note("nothing was sent, and no handler ran. The service's next line is the next call:")
    sync.add(1, 1)
    service.expect("add(1, 1)")

    if events:
        raise DemoFailed(f"a handler ran for a call that was never sent: {events}")

    print()
    note("The service checks again on its side (fail closed): a careless client whose own")
    note("interface allows Potato does send it, and the service drops the message unread.")
    careless_interface = kitchen_interface()
    careless_interface.set_classes({FrenchFry, Potato, list}, "feed_me_fries", argument_index=0, of_reply=False)
    careless = nsxpc.Connection(mach_service_name=NAME)
    careless.remote_object_interface = careless_interface
    careless.resume()
    careless_sync = careless.synchronous_remote_object_proxy_with_error_handler(lambda error: None, timeout=TIMEOUT)
    try:
        careless_sync.feed_me_fries(spud)
    except nsxpc.DecodingError as exc:
        service.expect("dropped a message")
        note(f"-> the careless client got DecodingError (code {int(exc.code)}): {exc}")
    else:
        raise DemoFailed("the service accepted a Potato")
    note(f"   and its connection stays up: careless add(2, 2) -> {careless_sync.add(2, 2)!r}")
    service.expect("add(2, 2)")
    careless_gone = threading.Event()
    careless.invalidation_handler = careless_gone.set
    careless.invalidate()
    wait_for(careless_gone, "the careless connection's invalidation")

    # -------------------------------------------------------------- 3. kill and restart
    step("3. The service killed (SIGKILL) while a call is outstanding")
    failed = threading.Event()
    errors: list[Exception] = []

    def on_error(error: Exception) -> None:
        errors.append(error)
        events.append(f"error handler: {type(error).__name__}: {error}")
        failed.set()

    def on_rind(rind: object) -> None:
        events.append(f"reply block: {rind!r}")
        failed.set()

    slow = connection.remote_object_proxy_with_error_handler(on_error)
    big = Watermelon(weight=500.0)
    note(f"proxy.feed_me_a_watermelon({big!r}, reply=...)   (the service replies only after 30 s)")
    slow.feed_me_a_watermelon(big, reply=on_rind)
    service.expect("a big one")
    note("SIGKILL the service while it is still eating")
    service.kill()
    wait_for(failed, "the outstanding call's end")
    wait_for(interrupted, "the interruption handler")
    for i, event in enumerate(events, 1):
        note(f"{i}. {event}")
    if not (events[0].startswith("error handler: ConnectionInterrupted") and events[1] == "interruption handler"):
        raise DemoFailed(f"expected the error handler, then the interruption handler, got {events}")
    can_retry = getattr(errors[0], "can_retry", None)
    note(f"the connection stays valid (state {connection.state.name}); the error's can_retry is {can_retry}")

    step("Restarting the service; the next call on the same connection reconnects")
    service = Service(env)
    services.append(service)
    note("sync.add(20, 22)")
    total = sync.add(20, 22)
    service.expect("add(20, 22)")
    note(f"-> {total!r}, from a new process (pid {connection.process_identifier}, was {first_pid})")
    if total != 42 or connection.process_identifier == first_pid:
        raise DemoFailed("the call after the restart did not reach the new service")

    step("Invalidating the connection")
    events.clear()
    connection.invalidate()
    wait_for(invalidated, "the invalidation handler")
    note(f"the invalidation handler ran (once, last): {events}")
    status = service.stop()
    service.expect("stopped")
    note(f"the service stopped on SIGTERM with status {status}")
    if status != 0:
        raise DemoFailed(f"the service exited with status {status}")


def main() -> int:
    runtime = tempfile.mkdtemp(prefix="nsxpc-demo-")  # short: socket paths are limited to 107 bytes
    env = dict(os.environ, NSXPC_RUNTIME_DIR=runtime, PYTHONUNBUFFERED="1")
    os.environ["NSXPC_RUNTIME_DIR"] = runtime  # read when the client's connections are made
    services: list[Service] = []
    try:
        demo(env, services)
    except (DemoFailed, nsxpc.XPCError) as exc:
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(runtime, ignore_errors=True)
    print("\nDemo complete.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
