"""Launch costs: a cold start, a warm connect, and the import every launch pays.

In one run, with a service bundle built into a temporary folder (an ``Application``
service serving the kitchen protocol's ``add``, its executable a Python script
with this interpreter in its ``#!`` line):

- cold start: the service is not running; make a new
  ``Connection(service_name=...)``, resume it, and time until the reply of the
  first ``sync.add(1, 2)`` has arrived: the bundle lookup, the launch, the
  service's interpreter start-up and imports, the connection and the call.
  Against the floor ``python -c "import nsxpc"`` (interpreter start-up and the
  import, timed the same way from this process with ``subprocess.run``).
  Between samples the instance is stopped (SIGTERM) and reaped. Target: at most
  1.5x. The floor includes the interpreter's exit, which a cold start does not
  wait for, so the report also gives ``import nsxpc, os; os._exit(0)``.
- warm connect: the service is running; a new connection, resumed, until the
  reply of its first call; against a warm round trip on a connection already
  established (``sync.add``). Target: under 3x.
- import: ``python -c "import nsxpc"`` against ``python -c "import attrs, msgpack"``.
  Target: at most 1.3x.

Each pair is measured in alternating order (A then B, then B then A; the warm
figures in blocks) so that machine noise hits both; the report gives medians in milliseconds (microseconds for
the warm figures) and the ratios.

Until ``Connection(service_name=...)`` is wired to the launcher, the cold and
warm figures fall back to ``nsxpc._launcher.launch_service`` plus a connection to
the instance's socket, which is the same work (said in the output).

    python bench/launch.py [--samples 20] [--warm 2000] [--json]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import plistlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: nsxpc/, protocols/

import nsxpc
from nsxpc import _launcher
from protocols.kitchen import kitchen_interface

ROOT = Path(__file__).resolve().parents[1]
SERVICE_NAME = "bench.launch"
TARGET_COLD = 1.5
TARGET_WARM = 3.0
TARGET_IMPORT = 1.3
STRICT_FLOOR = "import nsxpc, os; os._exit(0)"  # the floor without the interpreter's exit
TIMEOUT = 30.0  # seconds: a bound on every wait, far above any figure here

SERVICE_SCRIPT = """#!{python}
import sys
sys.path.insert(0, {root!r})
import nsxpc
from protocols.kitchen import kitchen_interface


class Adder:
    def add(self, a, b, reply):
        reply(a + b)


class Delegate:
    def should_accept_new_connection(self, listener, connection):
        connection.exported_interface = kitchen_interface()
        connection.exported_object = Adder()
        connection.resume()
        return True


try:
    from nsxpc import main
except ImportError:  # until nsxpc/__init__.py exports it
    from nsxpc._service import main
main(Delegate())
"""


def build_bundle(folder: str) -> None:
    contents = Path(folder) / f"{SERVICE_NAME}.xpc" / "Contents"
    (contents / "MacOS").mkdir(parents=True)
    with open(contents / "Info.plist", "wb") as f:
        plistlib.dump(
            {
                "CFBundleIdentifier": SERVICE_NAME,
                "CFBundlePackageType": "XPC!",
                "CFBundleExecutable": "adder",
                "XPCService": {"ServiceType": "Application", "NSXPCIdleExitSeconds": 600},
            },
            f,
        )
    exe = contents / "MacOS" / "adder"
    exe.write_text(SERVICE_SCRIPT.format(python=sys.executable, root=str(ROOT)))
    exe.chmod(0o755)


def service_name_wired() -> bool:
    try:
        nsxpc.Connection(service_name=SERVICE_NAME).invalidate()
    except NotImplementedError:
        return False
    return True


def connect(wired: bool) -> tuple[nsxpc.Connection, Any]:
    """A new resumed connection to the service and its value-returning sync proxy."""
    if wired:
        conn = nsxpc.Connection(service_name=SERVICE_NAME)
    else:
        svc = _launcher.launch_service(SERVICE_NAME)
        conn = nsxpc.Connection(listener_endpoint=nsxpc.ListenerEndpoint(path=svc.socket_path))
    conn.remote_object_interface = kitchen_interface()
    conn.resume()
    return conn, conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=TIMEOUT)


def stop_service() -> None:
    """Stop the running instance, if any (SIGTERM: an orderly exit, which the crash-loop
    throttle does not count), and wait until it is reaped."""
    inst = _launcher._the_launcher().instances.get(SERVICE_NAME)
    if inst is None or inst.exit_reason is not None or inst.pid is None:
        return
    gone = threading.Event()
    inst.add_exit_callback(lambda reason: gone.set())
    os.kill(inst.pid, signal.SIGTERM)
    if not gone.wait(TIMEOUT):
        raise SystemExit("the service did not exit within the timeout")


def time_cold(wired: bool) -> float:
    stop_service()
    t0 = time.perf_counter()
    conn, sync = connect(wired)
    result = sync.add(1, 2)
    elapsed = time.perf_counter() - t0
    conn.invalidate()
    if result != 3:
        raise SystemExit(f"add(1, 2) returned {result!r}")
    return elapsed


def time_command(code: str) -> float:
    t0 = time.perf_counter()
    # No timeout=: Popen.wait(timeout) polls with sleeps of up to 50 ms, which would be the measurement.
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def time_warm_connect(wired: bool) -> float:
    t0 = time.perf_counter()
    conn, sync = connect(wired)
    sync.add(1, 2)
    elapsed = time.perf_counter() - t0
    conn.invalidate()
    return elapsed


def time_round_trip(sync: Any) -> float:
    t0 = time.perf_counter()
    sync.add(1, 2)
    return time.perf_counter() - t0


def alternate(
    a: Callable[[], float], b: Callable[[], float], n: int, block: int = 1
) -> tuple[list[float], list[float]]:
    """``n`` samples of each, in blocks of ``block``, A's block first in even rounds and B's in odd ones."""
    xs: list[float] = []
    ys: list[float] = []
    for r in range(max(1, n // block)):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        one = [first() for _ in range(block)]
        two = [second() for _ in range(block)]
        if r % 2 == 0:
            xs += one
            ys += two
        else:
            xs += two
            ys += one
    return xs, ys


def run(samples: int, warm: int) -> dict[str, Any]:
    runtime = tempfile.mkdtemp(prefix="nxb", dir="/tmp")
    services = tempfile.mkdtemp(prefix="nxbs", dir="/tmp")
    os.environ["NSXPC_RUNTIME_DIR"] = runtime  # read when a launch or connection is made
    os.environ["NSXPC_SERVICES_PATH"] = services
    build_bundle(services)
    wired = service_name_wired()
    # Bytecode as an install leaves it (attrs and msgpack have theirs from pip): with
    # PYTHONDONTWRITEBYTECODE set, or after an edit, every run would compile nsxpc anew.
    compileall.compile_dir(str(ROOT / "nsxpc"), quiet=1)
    compileall.compile_dir(str(ROOT / "protocols"), quiet=1)
    try:
        imports_nsxpc, imports_deps = alternate(
            lambda: time_command("import nsxpc"), lambda: time_command("import attrs, msgpack"), samples
        )
        time_cold(wired)  # warm the page cache and this process's launcher thread
        cold, floor = alternate(lambda: time_cold(wired), lambda: time_command("import nsxpc"), samples)
        _, strict_floor = alternate(lambda: 0.0, lambda: time_command(STRICT_FLOOR), samples)

        keeper, sync = connect(wired)  # the service stays up; a warm round trip's connection
        for _ in range(200):
            sync.add(1, 2)
            time_warm_connect(wired)
        # In blocks: a round trip right after a connect would share the CPUs with the
        # service tearing the previous connection down.
        connects, trips = alternate(
            lambda: time_warm_connect(wired), lambda: time_round_trip(sync), warm, block=max(1, warm // 20)
        )
        keeper.invalidate()
        stop_service()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(services, ignore_errors=True)

    def ms(xs: list[float]) -> float:
        return round(statistics.median(xs) * 1000, 2)

    def us(xs: list[float]) -> float:
        return round(statistics.median(xs) * 1e6, 1)

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "connection": "Connection(service_name=...)" if wired else "launch_service + Connection(listener_endpoint=...)",
        "samples": samples,
        "warm_samples": warm,
        "cold_start_ms": ms(cold),
        "import_nsxpc_floor_ms": ms(floor),
        "ratio_cold": round(statistics.median(cold) / statistics.median(floor), 2),
        "import_nsxpc_no_exit_ms": ms(strict_floor),
        "ratio_cold_no_exit": round(statistics.median(cold) / statistics.median(strict_floor), 2),
        "target_cold": TARGET_COLD,
        "warm_connect_first_call_us": us(connects),
        "warm_round_trip_us": us(trips),
        "ratio_warm": round(statistics.median(connects) / statistics.median(trips), 2),
        "target_warm": TARGET_WARM,
        "import_nsxpc_ms": ms(imports_nsxpc),
        "import_attrs_msgpack_ms": ms(imports_deps),
        "ratio_import": round(statistics.median(imports_nsxpc) / statistics.median(imports_deps), 2),
        "target_import": TARGET_IMPORT,
    }


def report(r: dict[str, Any]) -> None:
    def verdict(ratio: float, target: float, strict: bool = False) -> str:
        ok = ratio < target if strict else ratio <= target
        return "meets" if ok else "ABOVE"

    print(f"Python {r['python']}, {r['cpus']} CPUs, {r['platform']}; calls through {r['connection']}")
    print(f"medians of {r['samples']} cold samples and {r['warm_samples']} warm ones")
    print(
        f"cold start (new connection, service not running, until the first reply) {r['cold_start_ms']:8.2f} ms"
        f"   floor python -c 'import nsxpc' {r['import_nsxpc_floor_ms']:8.2f} ms"
        f"   ratio {r['ratio_cold']:.2f}x ({verdict(r['ratio_cold'], TARGET_COLD)} the target of {TARGET_COLD}x)"
    )
    print(
        f"   (the floor includes the interpreter's exit; without it, python -c '{STRICT_FLOOR}' "
        f"{r['import_nsxpc_no_exit_ms']:.2f} ms, ratio {r['ratio_cold_no_exit']:.2f}x)"
    )
    print(
        f"warm connect + first call {r['warm_connect_first_call_us']:10.1f} µs"
        f"   warm round trip {r['warm_round_trip_us']:8.1f} µs"
        f"   ratio {r['ratio_warm']:.2f}x ({verdict(r['ratio_warm'], TARGET_WARM, True)} the target of < {TARGET_WARM}x)"
    )
    print(
        f"python -c 'import nsxpc' {r['import_nsxpc_ms']:8.2f} ms"
        f"   python -c 'import attrs, msgpack' {r['import_attrs_msgpack_ms']:8.2f} ms"
        f"   ratio {r['ratio_import']:.2f}x ({verdict(r['ratio_import'], TARGET_IMPORT)} the target of {TARGET_IMPORT}x)"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="cold starts and import timings of each kind")
    parser.add_argument("--warm", type=int, default=2000, help="warm connects and warm round trips of each kind")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.warm < 1:
        parser.error("--samples and --warm must be positive")
    result = run(args.samples, args.warm)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
