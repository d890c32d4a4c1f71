"""Serve the Lab test protocol as a mach service: ``lab_server.py NAME``.

Prints ``READY <pid>`` once the listener is resumed; exits when stdin closes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from protocols.kitchen import Rind, Watermelon, kitchen_interface
from tests.helpers._child import ready, serve_until_parent_goes
from tests.helpers.lab import LabClient, lab_interface

_lock = threading.Lock()
_records: list[int] = []
_held: dict[int, Any] = {}
_busy = {"now": 0, "max": 0}
_keep: list[object] = []  # listeners made on request stay alive
_calls = [0]


class KitchenImpl:
    def feed_me_a_cookie(self, cookie: Any) -> None:
        pass

    def feed_me_a_watermelon(self, watermelon: Watermelon, reply: Any) -> None:
        reply(Rind(thickness=watermelon.weight / 10, seeds=[1, 2]))

    def feed_me_fries(self, fries: list, reply: Any) -> None:  # type: ignore[type-arg]
        reply(len(fries), "yum")

    def add(self, a: int, b: int, reply: Any) -> None:
        reply(a + b)

    def cookies_eaten(self, reply: Any) -> None:
        reply([])


class KitchenDelegate:
    def should_accept_new_connection(self, listener: Any, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = kitchen_interface()
        conn.exported_object = KitchenImpl()
        conn.resume()
        return True


class LabImpl:
    def __getattribute__(self, name: str) -> Any:
        # Count every delivered call, so a test can tell that nothing arrived.
        if not name.startswith("_") and name != "calls_received":
            with _lock:
                _calls[0] += 1
        return object.__getattribute__(self, name)

    def calls_received(self, reply: Any) -> None:
        reply(_calls[0])

    def echo(self, value: Any, reply: Any) -> None:
        reply(value)

    echo_list = echo_fries = echo_jar = echo_maybe = echo_cookie = echo

    def melon(self, watermelon: Watermelon, reply: Any) -> None:
        reply(Rind(thickness=watermelon.weight / 10, seeds=[3, 1, 4]))

    def add(self, a: int, b: int, reply: Any) -> None:
        reply(a + b)

    def pair(self, a: int, b: str, reply: Any) -> None:
        reply(a * 2, b * 2)

    def nothing(self, reply: Any) -> None:
        reply()

    def record(self, value: int) -> None:
        with _lock:
            _records.append(value)

    def recorded(self, reply: Any) -> None:
        with _lock:
            values = list(_records)
        reply(values)

    def busy(self, index: int, reply: Any) -> None:
        with _lock:
            _busy["now"] += 1
            _busy["max"] = max(_busy["max"], _busy["now"])
        time.sleep(0.005)  # work that would overlap if deliveries ran concurrently
        with _lock:
            _busy["now"] -= 1
        reply(index)

    def max_busy(self, reply: Any) -> None:
        reply(_busy["max"])

    def hold(self, tag: int, reply: Any) -> None:
        with _lock:
            _held[tag] = reply

    def held_count(self, reply: Any) -> None:
        with _lock:
            n = len(_held)
        reply(n)

    def release_held(self, reply: Any) -> None:
        with _lock:
            held = sorted(_held.items())
            _held.clear()
        for tag, block in held:
            block(tag)
        reply(len(held))

    def fail(self, message: str, reply: Any) -> None:
        raise ValueError(message)

    def drop(self, reply: Any) -> None:
        del reply  # released uncalled: the caller must get ReplyInvalid

    def crash(self, reply: Any) -> None:
        os._exit(3)

    def whoami(self, reply: Any) -> None:
        cur = nsxpc.Connection.current()
        assert cur is not None
        reply(
            os.getpid(),
            cur.process_identifier,
            cur.effective_user_identifier,
            cur.effective_group_identifier,
            nsxpc.Connection.current() is cur,
        )

    def ping_client(self, steps: int, reply: Any) -> None:
        conn = nsxpc.Connection.current()
        assert conn is not None
        client = conn.remote_object_proxy_with_error_handler(lambda err: reply(f"error: {err}"))
        for i in range(steps):
            client.progress(i)
        client.question(f"after {steps} steps?", lambda answer: reply(f"client said {answer}"))

    def make_listener(self, reply: Any) -> None:
        listener = nsxpc.Listener.anonymous()
        listener.delegate = KitchenDelegate()
        listener.resume()
        _keep.append(listener)
        reply(listener.endpoint)

    def call_endpoint(self, endpoint: nsxpc.ListenerEndpoint, a: int, b: int, reply: Any) -> None:
        from protocols.kitchen import Kitchen

        conn = nsxpc.Connection(listener_endpoint=endpoint)
        conn.remote_object_interface = nsxpc.Interface(Kitchen)
        conn.resume()
        try:
            errors: list[BaseException] = []
            sync = conn.synchronous_remote_object_proxy_with_error_handler(errors.append, timeout=10)
            reply(sync.add(a, b))
        finally:
            conn.invalidate()


class LabDelegate:
    def should_accept_new_connection(self, listener: Any, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = lab_interface()
        conn.exported_object = LabImpl()
        conn.remote_object_interface = nsxpc.Interface(LabClient)
        conn.resume()
        return True


def main() -> None:
    name = sys.argv[1]
    listener = nsxpc.Listener(mach_service_name=name)
    listener.delegate = LabDelegate()
    listener.resume()
    ready()
    serve_until_parent_goes()


if __name__ == "__main__":
    main()
