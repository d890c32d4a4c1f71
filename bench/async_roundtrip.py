"""Async round trip against nsxpc's sync round trip (issue 5: async at most 1.3x sync).

In one run, between this process and one child process serving the kitchen's
``add`` with ``Listener(mach_service_name=...)`` (threads), the parent measures:

- sync: ``sync.add(i, 1)`` through ``synchronous_remote_object_proxy_with_error_handler``
  (the value-returning form) on a threaded connection;
- async (loop=): ``await aproxy.add(i, 1)`` through ``async_remote_object_proxy()`` on a
  connection made with ``loop=asyncio.get_running_loop()`` (the loop's reader
  delivers the reply);
- async (threads): the same coroutine on a threaded connection (the reply is decoded
  on the connection's queue thread and handed to the loop with call_soon_threadsafe).

Rounds alternate the three kinds so that machine noise hits all alike. Every call is
timed on its own; the report gives medians and p99s in microseconds and the ratios
async/sync.

    python bench/async_roundtrip.py [--iterations 5000] [--rounds 6] [--warmup 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: nsxpc/, protocols/
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/_common.py

from _common import percentile_us, serve_adder, time_adds, wait_ready

import nsxpc
from protocols.kitchen import kitchen_interface

TARGET = 1.3
CALL_TIMEOUT: float | None = float(os.environ.get("CALL_TIMEOUT", "30")) or None




def never(err: Exception) -> None:
    raise SystemExit(f"a call failed: {err!r}")


async def time_async(aproxy: Any, n: int) -> list[int]:
    samples = [0] * n
    clock = time.perf_counter_ns
    add = aproxy.add
    for i in range(n):
        t0 = clock()
        result = await add(i, 1)
        samples[i] = clock() - t0
        if result != i + 1:
            raise SystemExit(f"add({i}, 1) returned {result!r}")
    return samples


def summary(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median": statistics.median(ordered) / 1000, "p99": percentile_us(ordered, 99)}


async def measure(name: str, iterations: int, rounds: int, warmup: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    iface = kitchen_interface()
    threaded = nsxpc.Connection(mach_service_name=name)
    threaded.remote_object_interface = iface
    threaded.resume()
    looped = nsxpc.Connection(mach_service_name=name, loop=loop)
    looped.remote_object_interface = iface
    looped.resume()
    try:
        sync = threaded.synchronous_remote_object_proxy_with_error_handler(never, timeout=CALL_TIMEOUT)
        a_loop = looped.async_remote_object_proxy(timeout=CALL_TIMEOUT)
        a_thread = threaded.async_remote_object_proxy(timeout=CALL_TIMEOUT)
        time_adds(sync, warmup)
        await time_async(a_loop, warmup)
        await time_async(a_thread, warmup)
        per = max(1, iterations // rounds)
        got: dict[str, list[int]] = {"sync": [], "async_loop": [], "async_threads": []}
        for r in range(rounds):
            order = ["sync", "async_loop", "async_threads"]
            order = order[r % 3 :] + order[: r % 3]
            for kind in order:
                if kind == "sync":
                    got[kind] += time_adds(sync, per)
                elif kind == "async_loop":
                    got[kind] += await time_async(a_loop, per)
                else:
                    got[kind] += await time_async(a_thread, per)
    finally:
        looped.invalidate()
        threaded.invalidate()
    result: dict[str, Any] = {k: summary(v) for k, v in got.items()}
    base = result["sync"]["median"]
    result["ratio_loop"] = result["async_loop"]["median"] / base
    result["ratio_threads"] = result["async_threads"]["median"] / base
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_adder(args.serve)
    runtime = tempfile.mkdtemp(prefix="nxb")
    os.environ["NSXPC_RUNTIME_DIR"] = runtime
    name = f"bench.async.{os.getpid()}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        wait_ready(child)
        result = asyncio.run(measure(name, args.iterations, args.rounds, args.warmup))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"round trips: {args.iterations} of each kind in {args.rounds} alternating rounds")
    print(f"{'':36}{'median µs':>12}{'p99 µs':>12}")
    for kind, label in (
        ("sync", "sync proxy (threads)"),
        ("async_loop", "async proxy, Connection(loop=)"),
        ("async_threads", "async proxy, threaded Connection"),
    ):
        print(f"{label:36}{result[kind]['median']:12.1f}{result[kind]['p99']:12.1f}")
    verdict = "meets" if result["ratio_loop"] <= TARGET else "MISSES"
    print(f"async (loop=)/sync {result['ratio_loop']:.2f}x ({verdict} the target of {TARGET}x); "
          f"async (threads)/sync {result['ratio_threads']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
