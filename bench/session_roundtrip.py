"""Round trip of an XPCSession message against an NSXPC proxy call (issue 7 item 5).

One child process serves both, in the same process and on the same kind of
socket: ``nsxpc.Listener`` exporting ``add(a, b, reply)`` and ``nsxpc.XPCListener``
answering ``{"a": a, "b": b}`` with ``{"sum": a + b}``. The parent times, in
alternating rounds, ``sync.add(i, 1)`` through a synchronous proxy (value-returning
form) and ``session.send_sync({"a": i, "b": 1}).decode()["sum"]``. It also times
one-way sends (``session.send`` and the proxy's one-way ``log``), closed by one
round trip so that every message was handled.

    .venv/bin/python bench/session_roundtrip.py [--iterations N] [--rounds R] [--json]

Prints the median and p99 of each in microseconds and the ratio session/proxy of
the medians (target: at most 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nsxpc  # noqa: E402


@nsxpc.protocol
class Adder(Protocol):
    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None: ...
    def log(self, line: str) -> None: ...


class AdderService:
    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None:
        reply(a + b)

    def log(self, line: str) -> None:
        pass


class Delegate:
    def should_accept_new_connection(self, listener: nsxpc.Listener, connection: nsxpc.Connection) -> bool:
        connection.exported_interface = nsxpc.Interface(Adder)
        connection.exported_object = AdderService()
        connection.resume()
        return True


def on_message(message: nsxpc.XPCReceivedMessage) -> object:
    d = message.decode()
    if message.expects_reply:
        return {"sum": d["a"] + d["b"]}
    return None


def serve(name: str) -> None:
    listener = nsxpc.Listener(mach_service_name=name + ".proxy")
    listener.delegate = Delegate()
    listener.resume()
    nsxpc.XPCListener(mach_service=name + ".session", incoming_session_handler=lambda r: r.accept(on_message))
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes stdin


def time_calls(fn: Callable[[int], Any], n: int) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def time_one_way(send: Callable[[int], Any], close: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter_ns()
    for i in range(n):
        send(i)
    close()
    return (time.perf_counter_ns() - t0) / n


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns)) - 1))] / 1000


def run(iterations: int, rounds: int, warmup: int) -> dict[str, Any]:
    runtime = tempfile.mkdtemp(prefix="nsxpc-bench-")
    os.environ["NSXPC_RUNTIME_DIR"] = runtime
    name = f"bench.session.{os.getpid()}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the service did not start")
        conn = nsxpc.Connection(mach_service_name=name + ".proxy")
        conn.remote_object_interface = nsxpc.Interface(Adder)
        conn.resume()
        sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda e: None, timeout=30)
        session = nsxpc.XPCSession(mach_service=name + ".session")

        def proxy_call(i: int) -> None:
            assert sync.add(i, 1) == i + 1

        def session_call(i: int) -> None:
            assert session.send_sync({"a": i, "b": 1}).decode()["sum"] == i + 1

        time_calls(proxy_call, warmup)
        time_calls(session_call, warmup)
        proxy: list[int] = []
        sess: list[int] = []
        ratios = []
        batch = max(1, iterations // rounds)
        for r in range(rounds):
            order = [(proxy_call, proxy), (session_call, sess)]
            if r % 2:
                order.reverse()
            got: dict[int, list[int]] = {}
            for fn, sink in order:
                samples = time_calls(fn, batch)
                sink.extend(samples)
                got[id(sink)] = samples
            ratios.append(statistics.median(got[id(sess)]) / statistics.median(got[id(proxy)]))
        proxy.sort()
        sess.sort()
        plog = conn.remote_object_proxy
        one_way_proxy = time_one_way(lambda i: plog.log("x"), lambda: sync.add(0, 0), iterations)
        one_way_session = time_one_way(
            lambda i: session.send({"line": "x"}), lambda: session.send_sync({"a": 0, "b": 0}), iterations
        )
        session.cancel()
        conn.invalidate()
        return {
            "iterations": len(proxy),
            "proxy_us": {"median": pct(proxy, 0.5), "p99": pct(proxy, 0.99)},
            "session_us": {"median": pct(sess, 0.5), "p99": pct(sess, 0.99)},
            "ratio_median": pct(sess, 0.5) / pct(proxy, 0.5),
            "ratio_p99": pct(sess, 0.99) / pct(proxy, 0.99),
            "ratio_per_round_median": statistics.median(ratios),
            "one_way_us": {"proxy": one_way_proxy / 1000, "session": one_way_session / 1000},
            "one_way_per_s": {"proxy": 1e9 / one_way_proxy, "session": 1e9 / one_way_session},
        }
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    result = run(args.iterations, args.rounds, args.warmup)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    p, s = result["proxy_us"], result["session_us"]
    print(f"proxy   sync.add(i, 1):                    median {p['median']:7.1f} us  p99 {p['p99']:7.1f} us")
    print(f"session send_sync({{'a': i, 'b': 1}}):      median {s['median']:7.1f} us  p99 {s['p99']:7.1f} us")
    print(
        f"ratio session/proxy: medians {result['ratio_median']:.3f}, p99 {result['ratio_p99']:.3f}, "
        f"median of per-round ratios {result['ratio_per_round_median']:.3f} (target <= 1.1)"
    )
    ow = result["one_way_per_s"]
    print(f"one-way: proxy {ow['proxy']:,.0f} msg/s, session {ow['session']:,.0f} msg/s")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main(sys.argv[1:]))
