"""Serve the ProxyLab protocol (tests/helpers/proxy_lab.py): ``proxy_server.py NAME``.

Prints ``READY <pid>`` once the listener is resumed; exits when stdin closes.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from tests.helpers._child import ready, serve_until_parent_goes
from tests.helpers.proxy_lab import ProxyLab

# Every proxy this process received, weakly: how many are alive.
_received: weakref.WeakSet[Any] = weakref.WeakSet()
_held: list[Any] = []  # reply blocks kept unanswered


def _note(proxy: Any) -> Any:
    _received.add(proxy)
    return proxy


class CounterImpl:
    def __init__(self, start: int) -> None:
        self.count = start

    def increment(self, by: int, reply: Any) -> None:
        self.count += by
        reply(self.count)

    def value(self, reply: Any) -> None:
        reply(self.count)

    def hold(self, reply: Any) -> None:
        _held.append(reply)


class ProxyLabImpl:
    def __init__(self) -> None:
        self.kept: list[Any] = []

    def run(self, sink: Any, steps: int, reply: Any) -> None:
        _note(sink)
        for step in range(steps):
            sink.progress(step)
        reply(steps)

    def ask_back(self, sink: Any, text: str, reply: Any) -> None:
        _note(sink)
        # Asked from the connection's queue: an error-handler proxy, never a sync one.
        asking = sink.remote_object_proxy_with_error_handler(lambda err: reply(f"error: {err}"))
        asking.ask(text, lambda answer: reply(f"sink said {answer}"))

    def make_counter(self, start: int, reply: Any) -> None:
        reply(CounterImpl(start))

    def keep(self, sink: Any, reply: Any) -> None:
        self.kept.append(_note(sink))
        reply(len(self.kept))

    def poke_kept(self, step: int, reply: Any) -> None:
        for sink in self.kept:
            sink.progress(step)
        reply(len(self.kept))

    def drop_kept(self, reply: Any) -> None:
        n = len(self.kept)
        self.kept.clear()
        gc.collect()
        reply(n)

    def take(self, sink: Any) -> None:
        _note(sink)

    def give(self, sink: Any, n: int, reply: Any) -> None:
        _note(sink)
        for i in range(n):
            sink.take_counter(CounterImpl(i))
        reply(n)

    def stats(self, reply: Any) -> None:
        gc.collect()
        conn = nsxpc.Connection.current()
        assert conn is not None
        reply(conn._exported_object_count, len(_received))

    def echo_sink(self, sink: Any, reply: Any) -> None:
        reply(sink)

    def hold(self, reply: Any) -> None:
        _held.append(reply)

    def crash(self) -> None:
        os._exit(3)


class Delegate:
    def should_accept_new_connection(self, listener: nsxpc.Listener, conn: nsxpc.Connection) -> bool:
        conn.exported_interface = nsxpc.Interface(ProxyLab)
        conn.exported_object = ProxyLabImpl()
        conn.resume()
        return True


def main() -> None:
    listener = nsxpc.Listener(mach_service_name=sys.argv[1])
    listener.delegate = Delegate()
    listener.resume()
    ready()
    serve_until_parent_goes()


if __name__ == "__main__":
    main()
