"""nsxpc against its peers and the floors, every system in one run on one machine.

Each system's server runs in its own child process (``bench/systems.py serve``),
all started before any timing; the clients live in this process. Scenarios:

- round trip: a small call whose reply is ``i + 1``; every call timed on its
  own; median and p99 (nearest rank); measured in alternating rounds (the
  order of the systems rotates each round) so that machine noise hits all;
- one-way: N messages that want no reply, pipelined, then one round trip whose
  reply proves all were handled; messages per second, best of the repeats;
- payload echo: 1 MiB and 64 MiB of ``bytes`` sent and returned; MB/s (10^6
  bytes of payload per second of echo), the median of the repeats;
- connect plus first call: a new connection to the running server and its
  first reply; median.

Ratios are to the floors of the same run: the raw Unix-socket ping-pong (round
trip, echo, connect) and the msgpack stream (one-way). Writes
``docs/benchmarks/results.md`` (the table and the targets of issues 4, 5 and 7
with a pass/miss mark), ``results.json`` and ``results.png`` (a grouped bar
chart of the ratios; needs matplotlib, from the ``bench`` extra).

    python bench/compare.py [--quick] [--systems floor,nsxpc,...] [--out DIR] [--no-chart]
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import gc
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/systems.py
sys.path.insert(1, str(HERE.parent))  # the repository root: nsxpc/

import systems  # noqa: E402
from _common import percentile_us  # noqa: E402

READY_TIMEOUT = 30.0  # seconds for a server child to start
MiB = 1024 * 1024
FLOOR, MSGPACK_FLOOR = "floor", "msgpack-floor"
NSXPC_KEYS = ("nsxpc", "nsxpc-inline", "nsxpc-region", "nsxpc-async", "session")


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.iterations = 1000 if quick else 20000
        self.rounds = 4 if quick else 10
        self.warmup = 100 if quick else 2000
        self.oneway = 2000 if quick else 100000
        self.oneway_repeats = 1 if quick else 2
        # --quick echoes 16 MiB rather than 64 MiB to stay a few seconds: the 64 MiB
        # column and its target are then n/a.
        self.payloads = [(1 * MiB, 2 if quick else 20), (16 * MiB if quick else 64 * MiB, 1 if quick else 3)]
        self.connects = 3 if quick else 30
        self.echo_bound = 30.0 if quick else 120.0  # seconds one echo may take before it is aborted
        self.echo_budget = 5.0 if quick else 30.0  # seconds of echoes of one size per system, then no more repeats
        self.oneway_budget = 2.0 if quick else 15.0  # seconds a one-way run should take at most


# ------------------------------------------------------------------ statistics


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ------------------------------------------------------------------ children


def start_servers(kinds: list[str], folder: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Start every server at once, then wait for each to say ready."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    env = dict(os.environ, NSXPC_RUNTIME_DIR=str(folder / "nsxpc"))
    for kind in kinds:
        children[kind] = subprocess.Popen(
            [sys.executable, str(HERE / "systems.py"), "serve", kind, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
    for kind, proc in children.items():
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            stop_servers(children)
            raise SystemExit(f"the {kind} server did not start within {READY_TIMEOUT:g} s (said {line!r})")
    return children


def stop_servers(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in children.values():
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in children.values():
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# ------------------------------------------------------------------ scenarios


class Row:
    """What one system measured; None where it did not run, with the reason in notes."""

    def __init__(self, key: str, label: str) -> None:
        self.key, self.label = key, label
        self.rt: list[int] = []
        self.rt_median_us: float | None = None
        self.rt_p99_us: float | None = None
        self.oneway_rate: float | None = None
        self.oneway_count = 0
        self.echo_mbs: dict[int, float | None] = {}
        self.echo_repeats: dict[str, int] = {}
        self.connect_us: float | None = None
        self.notes: list[str] = []
        self.unsupported: set[str] = set()

    def dead(self, scenario: str) -> bool:
        """Whether the scenario is unsupported or already failed for this system."""
        return scenario in self.unsupported or any(n.startswith(scenario + ":") for n in self.notes)

    def fail(self, scenario: str, exc: BaseException) -> None:
        if isinstance(exc, systems.Unsupported):
            self.unsupported.add(scenario)
        else:
            self.notes.append(f"{scenario}: {type(exc).__name__}: {exc}")
            traceback.print_exception(exc, file=sys.stderr)


def round_trips(clients: dict[str, systems.Client], rows: dict[str, Row], s: Settings) -> None:
    live = {}
    for key, client in clients.items():
        try:
            client.time_calls(0, s.warmup)
            live[key] = client
        except Exception as exc:
            rows[key].fail("round trip", exc)
    batch = max(1, s.iterations // s.rounds)
    order = list(live)
    for r in range(s.rounds):
        gc.collect()
        shift = r % len(order) if order else 0
        for key in order[shift:] + order[:shift]:
            if key not in live:
                continue
            try:
                rows[key].rt += live[key].time_calls(s.warmup + r * batch, batch)
            except Exception as exc:
                rows[key].fail("round trip", exc)
                del live[key]
    for key in live:
        ordered = sorted(rows[key].rt)
        rows[key].rt_median_us = statistics.median(ordered) / 1000
        rows[key].rt_p99_us = percentile_us(ordered, 99)


def oneways(clients: dict[str, systems.Client], rows: dict[str, Row], s: Settings) -> None:
    best: dict[str, float] = {}
    for _ in range(s.oneway_repeats):
        for key, client in clients.items():
            if rows[key].dead("one-way"):
                continue
            try:
                warmup = max(1, s.oneway // 20)
                t0 = time.perf_counter()
                client.oneway(warmup)
                # A system slower than oneway/budget messages per second (Pyro5 runs a
                # thread per one-way call) sends fewer: its rate is what the table needs,
                # and the run stays within minutes. The count it sent is in the notes.
                n = min(s.oneway, max(warmup, int(warmup / (time.perf_counter() - t0) * s.oneway_budget)))
                gc.collect()
                t0 = time.perf_counter()
                client.oneway(n)
                rate = n / (time.perf_counter() - t0)
                if rate > best.get(key, 0.0):
                    best[key] = rate
                    rows[key].oneway_count = n
            except Exception as exc:
                rows[key].fail("one-way", exc)
    for key, rate in best.items():
        rows[key].oneway_rate = rate


def echoes(clients: dict[str, systems.Client], rows: dict[str, Row], s: Settings) -> None:
    for size, repeats in s.payloads:
        payload = os.urandom(size)
        times: dict[str, list[float]] = {key: [] for key in clients}
        for _ in range(repeats):
            for key, client in clients.items():
                if rows[key].dead(f"echo {size}") or sum(times[key]) > s.echo_budget:
                    continue  # a slow system (RPyC, Pyro5 at 64 MiB) gets fewer repeats
                aborted = threading.Event()
                watchdog = threading.Timer(s.echo_bound, lambda c=client, e=aborted: (e.set(), c.abort()))
                try:
                    gc.collect()
                    watchdog.start()
                    t0 = time.perf_counter()
                    back = client.echo(payload)
                    elapsed = time.perf_counter() - t0
                    watchdog.cancel()
                    if len(back) != size or back[:64] != payload[:64] or back[-64:] != payload[-64:]:
                        raise RuntimeError(f"the echo of {size} bytes came back wrong ({len(back)} bytes)")
                    times[key].append(elapsed)
                    del back
                except Exception as exc:
                    watchdog.cancel()
                    if aborted.is_set():
                        exc = TimeoutError(f"no reply within {s.echo_bound:g} s, call aborted ({type(exc).__name__})")
                    rows[key].fail(f"echo {size}", exc)
        for key, samples in times.items():
            rows[key].echo_mbs[size] = size / statistics.median(samples) / 1e6 if samples else None
            rows[key].echo_repeats[f"{size // MiB} MiB"] = len(samples)


def connects(clients: dict[str, systems.Client], rows: dict[str, Row], s: Settings) -> None:
    samples: dict[str, list[int]] = {key: [] for key in clients}
    for i in range(s.connects + 1):
        for key, client in clients.items():
            if rows[key].dead("connect"):
                continue
            try:
                elapsed = client.connect_first_call()
                if i > 0:  # the first one of each warms the imports and caches
                    samples[key].append(elapsed)
            except Exception as exc:
                rows[key].fail("connect", exc)
    for key, values in samples.items():
        if values:
            rows[key].connect_us = statistics.median(values) / 1000


def run(selected: list[str], s: Settings) -> tuple[dict[str, Row], dict[str, str]]:
    catalogue = {key: (label, cls, missing) for key, label, cls, missing in systems.catalogue()}
    rows: dict[str, Row] = {}
    skipped: dict[str, str] = {}
    for key in selected:
        label, _, missing = catalogue[key]
        rows[key] = Row(key, label)
        why = missing()
        if why:
            skipped[key] = why
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="nsxpc-compare-"))
    os.environ["NSXPC_RUNTIME_DIR"] = str(folder / "nsxpc")  # read when a connection is made
    kinds = sorted({catalogue[key][1].server for key in selected if key not in skipped})
    children = start_servers(kinds, folder)
    clients: dict[str, systems.Client] = {}
    try:
        for key in selected:
            if key in skipped:
                continue
            client = catalogue[key][1](folder)
            try:
                client.open()
                clients[key] = client
            except Exception as exc:
                rows[key].fail("open", exc)
        for name, scenario in (("round trip", round_trips), ("one-way", oneways), ("echo", echoes)):
            print(f"... {name} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
            scenario(clients, rows, s)
        for key, client in clients.items():
            try:
                client.close()
            except Exception as exc:
                rows[key].fail("close", exc)
        clients.clear()
        print(f"... connect + first call ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
        connects({key: catalogue[key][1](folder) for key in selected if key not in skipped}, rows, s)
    finally:
        for client in clients.values():
            try:
                client.close()
            except Exception:
                pass
        stop_servers(children)
        shutil.rmtree(folder, ignore_errors=True)
    return rows, skipped


# ------------------------------------------------------------------ report

#: (id, text, kind, target): a "max" target is met at or below, a "min" one at or above.
TARGETS = [
    ("rt", "nsxpc sync round trip, median, x raw-socket floor (issue 5)", "max", 1.8),
    ("p99", "nsxpc sync round trip, p99, x raw-socket floor (issue 5)", "max", 2.5),
    ("async", "nsxpc async round trip, x nsxpc sync round trip (issue 5)", "max", 1.3),
    ("oneway", "nsxpc one-way rate, x msgpack floor (issue 5)", "min", 0.5),
    ("connect", "nsxpc connect + first call, x floor's connect + first ping (issue 5)", "max", 2.0),
    (
        "echo64",
        "nsxpc 64 MiB echo of bytes (shared memory above 1 MiB), x raw-socket copy (issues 4 and 5)",
        "min",
        2.0,
    ),
    ("region64", "nsxpc 64 MiB echo through a SharedMemory region, x raw-socket copy (issue 5)", "min", 2.0),
    ("session", "XPCSession round trip, x nsxpc proxy round trip (issue 7)", "max", 1.1),
    ("lead-rt", "nsxpc sync round trip below every peer's (issue 5)", "lead", None),
    ("lead-oneway", "nsxpc one-way rate above every peer's (issue 5)", "lead", None),
]

#: Figures the issue quotes for the peers, measured the same way elsewhere: shown beside this run's.
QUOTED = {
    "mp-managers": "1.9x",
    "mp-connection": "2.0x; one-way 0.29x",
    "zmq": "2.4x",
    "pyro5": "4x to 7x; one-way 0.02x",
    "rpyc": "6x",
    "grpc": "18x",
}


def summarise(rows: dict[str, Row], skipped: dict[str, str], s: Settings) -> dict[str, Any]:
    floor, mfloor = rows.get(FLOOR), rows.get(MSGPACK_FLOOR)
    systems_out: dict[str, Any] = {}
    for key, row in rows.items():
        entry: dict[str, Any] = {"label": row.label}
        if key in skipped:
            entry["skipped"] = skipped[key]
        entry["rt_median_us"] = row.rt_median_us
        entry["rt_p99_us"] = row.rt_p99_us
        entry["rt_median_x"] = ratio(row.rt_median_us, floor.rt_median_us if floor else None)
        entry["rt_p99_x"] = ratio(row.rt_p99_us, floor.rt_p99_us if floor else None)
        entry["oneway_per_s"] = row.oneway_rate
        entry["oneway_x"] = ratio(row.oneway_rate, mfloor.oneway_rate if mfloor else None)
        entry["oneway_messages"] = row.oneway_count or None
        entry["echo_repeats"] = dict(row.echo_repeats)
        for size, _ in s.payloads:
            mb = row.echo_mbs.get(size)
            entry[f"echo_{size // MiB}mib_mbs"] = mb
            entry[f"echo_{size // MiB}mib_x"] = ratio(mb, floor.echo_mbs.get(size) if floor else None)
        entry["connect_us"] = row.connect_us
        entry["connect_x"] = ratio(row.connect_us, floor.connect_us if floor else None)
        entry["unsupported"] = sorted(row.unsupported)
        entry["errors"] = row.notes
        cls = dict_clients()[key]
        entry["oneway_how"] = cls.oneway_how
        entry["why_not"] = {
            scenario: reason
            for scenario, reason in cls.why_not.items()
            if any(u.split(" ")[0] == scenario.split(" ")[0] for u in row.unsupported)
        }
        systems_out[key] = entry
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "quick": s.quick,
            "round_trips": s.iterations,
            "rounds": s.rounds,
            "warmup": s.warmup,
            "oneway_messages": s.oneway,
            "oneway_repeats": s.oneway_repeats,
            "payloads": [[size, repeats] for size, repeats in s.payloads],
            "connects": s.connects,
            "oneway_budget_s": s.oneway_budget,
            "echo_budget_s": s.echo_budget,
            "echo_bound_s": s.echo_bound,
        },
        "systems": systems_out,
        "targets": judge(systems_out),
    }


def dict_clients() -> dict[str, type[systems.Client]]:
    return {key: cls for key, _, cls, _ in systems.catalogue()}


def judge(out: dict[str, Any]) -> list[dict[str, Any]]:
    def get(key: str, field: str) -> float | None:
        entry = out.get(key)
        return entry.get(field) if entry else None

    peers = [k for k in out if k not in (FLOOR, MSGPACK_FLOOR, *NSXPC_KEYS)]
    measured: dict[str, tuple[float | None, str]] = {
        "rt": (get("nsxpc", "rt_median_x"), "x"),
        "p99": (get("nsxpc", "rt_p99_x"), "x"),
        "async": (ratio(get("nsxpc-async", "rt_median_us"), get("nsxpc", "rt_median_us")), "x"),
        "oneway": (get("nsxpc", "oneway_x"), "x"),
        "connect": (get("nsxpc", "connect_x"), "x"),
        "echo64": (get("nsxpc", "echo_64mib_x"), "x"),
        "region64": (get("nsxpc-region", "echo_64mib_x"), "x"),
        "session": (ratio(get("session", "rt_median_us"), get("nsxpc", "rt_median_us")), "x"),
    }
    results = []
    for tid, text, kind, target in TARGETS:
        value: float | None
        detail = ""
        if kind == "lead":
            field, better = ("rt_median_us", min) if tid == "lead-rt" else ("oneway_per_s", max)
            mine = get("nsxpc", field)
            theirs = {k: get(k, field) for k in peers if get(k, field) is not None}
            if mine is None or not theirs:
                value, ok = None, None
            else:
                best_key = better(theirs, key=lambda k: theirs[k])  # type: ignore[arg-type]
                best = theirs[best_key]
                assert best is not None
                ok = mine < best if tid == "lead-rt" else mine > best
                value = mine / best
                detail = f"{value:.2f}x the best peer ({out[best_key]['label']})"
        else:
            value = measured[tid][0]
            ok = None if value is None else (value <= target if kind == "max" else value >= target)  # type: ignore[operator]
            detail = "" if value is None else f"{value:.2f}x"
        results.append(
            {"id": tid, "target": text, "kind": kind, "goal": target, "measured": value, "detail": detail, "met": ok}
        )
    return results


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


class Column:
    """One scenario's column: where its value and ratio are, and how to show them."""

    def __init__(self, header: str, short: str, field: str, spec: str, scenario: str, rate: bool) -> None:
        self.header, self.short, self.spec, self.scenario = header, short, spec, scenario
        # "rt_median_us" -> "rt_median_x", "oneway_per_s" -> "oneway_x", "echo_1mib_mbs" -> "echo_1mib_x"
        self.value_field = field
        self.ratio_field = field.removesuffix("_per_s").removesuffix("_us").removesuffix("_mbs") + "_x"
        self.rate = rate  # higher is better: the chart shows its inverse, a time


def columns(result: dict[str, Any]) -> list[Column]:
    cols = [
        Column("round trip median µs", "round trip median", "rt_median_us", ".1f", "round trip", False),
        Column("p99 µs", "round trip p99", "rt_p99_us", ".1f", "round trip", False),
        Column("one-way msg/s", "one-way", "oneway_per_s", ",.0f", "one-way", True),
    ]
    for size, _ in result["settings"]["payloads"]:
        mib = size // MiB
        cols.append(
            Column(f"{mib} MiB echo MB/s", f"{mib} MiB echo", f"echo_{mib}mib_mbs", ",.0f", f"echo {size}", True)
        )
    cols.append(Column("connect + first call µs", "connect + first call", "connect_us", ",.0f", "connect", False))
    return cols


def cell(entry: dict[str, Any], col: Column) -> str:
    value = entry.get(col.value_field)
    if value is None:
        if any(e.startswith(col.scenario + ":") for e in entry.get("errors", [])):
            return "error"
        return "n/a"
    r = entry.get(col.ratio_field)
    return f"{value:{col.spec}} ({r:.2f}x)" if r is not None else f"{value:{col.spec}}"


def markdown(result: dict[str, Any], chart: bool) -> str:
    st = result["settings"]
    cols = columns(result)
    repeats = {f"{size // MiB} MiB": n for size, n in st["payloads"]}
    lines = [
        "# nsxpc against its peers",
        "",
        f"Written by `{'bench/compare.py --quick' if st['quick'] else 'make bench'}` (`bench/compare.py`) on "
        f"{result['date']}: Python {result['python']}, "
        f"{result['cpus']} CPUs, {result['platform']}, load average {result['load_average']} at the end. "
        "Every figure below comes from this one run; each system's server ran in its own process.",
        "",
        f"Round trips: {st['round_trips']} per system in {st['rounds']} alternating rounds after {st['warmup']} "
        f"warm-up calls. One-way: {st['oneway_messages']} messages then one round trip, best of "
        f"{st['oneway_repeats']}. Echo: median of {', '.join(f'{r} x {n // MiB} MiB' for n, r in st['payloads'])}. "
        f"Connect: median of {st['connects']}. Ratios (in brackets) are to the raw Unix-socket floor, "
        "and for one-way messages to the msgpack floor: lower is better for times, higher for rates.",
        "",
        "| system | " + " | ".join(c.header for c in cols) + " |",
        "| --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    lines.extend(
        "| " + " | ".join([entry["label"], *(cell(entry, c) for c in cols)]) + " |"
        for entry in result["systems"].values()
    )
    lines += ["", "## Targets", "", "| target | goal | measured | |", "| --- | --- | --- | --- |"]
    for t in result["targets"]:
        goal = {"max": f"≤ {t['goal']}x", "min": f"≥ {t['goal']}x", "lead": "lead"}[t["kind"]]
        mark = {True: "✅ pass", False: "❌ miss", None: "n/a (not measured)"}[t["met"]]
        lines.append(f"| {t['target']} | {goal} | {t['detail'] or 'n/a'} | {mark} |")
    lines += ["", "## Notes", ""]
    for entry in result["systems"].values():
        how = entry.get("oneway_how")
        key_notes = []
        if entry.get("skipped"):
            key_notes.append(f"not run: {entry['skipped']}")
        if how and entry.get("oneway_per_s") is not None:
            count = entry.get("oneway_messages")
            if count and count < st["oneway_messages"]:
                how += f"; {count:,} messages (it would take more than {st['oneway_budget_s']:g} s to send all)"
            key_notes.append(f"one-way: {how}")
        fewer = [f"{n} x {size}" for size, n in entry.get("echo_repeats", {}).items() if 0 < n < repeats[size]]
        if fewer:
            key_notes.append(f"echo: only {', '.join(fewer)} (over {st['echo_budget_s']:g} s of echoes)")
        key_notes += [f"{scenario} n/a: {reason}" for scenario, reason in entry.get("why_not", {}).items()]
        key_notes += [f"error in {e}" for e in entry.get("errors", [])]
        if key_notes:
            lines.append(f"- {entry['label']}: " + "; ".join(key_notes))
    quoted = [f"{result['systems'][k]['label']} {v}" for k, v in QUOTED.items() if k in result["systems"]]
    if quoted:
        lines.append(
            "- The round-trip ratios issue 5 quotes for the peers, measured the same way elsewhere: "
            + ", ".join(quoted)
            + "."
        )
    lines.append(
        "- The floor's connect includes the server starting a thread for the connection, as every threaded "
        "server here does; the floors' servers are plain blocking Python loops (see bench/README.md)."
    )
    if chart:
        lines += ["", "![time relative to the floor, per scenario and system](results.png)"]
    return "\n".join(lines) + "\n"


def draw(result: dict[str, Any], path: Path) -> str | None:
    """A grouped bar chart: per scenario, each system's time per operation relative to its floor."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    entries = [e for k, e in result["systems"].items() if k not in (FLOOR, MSGPACK_FLOOR)]
    cols = columns(result)
    fig, ax = plt.subplots(figsize=(13, 6))
    width = 0.8 / max(1, len(entries))
    for i, entry in enumerate(entries):
        xs, ys = [], []
        for j, col in enumerate(cols):
            value = entry.get(col.ratio_field)
            if value:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(1 / value if col.rate else value)  # rates as time per operation: lower is better everywhere
        # Bars grow from the floor's line at 1: up when slower than the floor, down when faster.
        heights = [y - 1 for y in ys]
        hatch = "//" if entry["label"].startswith("nsxpc") else None
        color = plt.get_cmap("tab20")(i % 20)  # more systems than the default cycle's 10 colours
        ax.bar(xs, heights, width, bottom=1.0, label=entry["label"], hatch=hatch, color=color)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cols)), [col.short for col in cols])
    ax.set_ylabel("time per operation / floor's (log; 1 = floor; lower is better)")
    ax.set_title(f"nsxpc and its peers against the floor, one run ({result['date']})")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def print_table(result: dict[str, Any]) -> None:
    """The same figures as results.md, as plain text on stdout."""
    cols = columns(result)
    print(f"{'':36}" + "".join(f"{col.header:>24}" for col in cols))
    for entry in result["systems"].values():
        print(f"{entry['label']:36}" + "".join(f"{cell(entry, col):>24}" for col in cols))
    for t in result["targets"]:
        mark = {True: "pass", False: "MISS", None: "n/a"}[t["met"]]
        print(f"[{mark:4}] {t['target']}: {t['detail'] or 'not measured'}")


def main(argv: list[str]) -> int:
    keys = [key for key, _, _, _ in systems.catalogue()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a run of seconds, for a smoke test")
    parser.add_argument("--systems", default=",".join(keys), help=f"comma-separated, from: {','.join(keys)}")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks"), help="folder for the results")
    parser.add_argument("--no-chart", action="store_true", help="do not draw results.png")
    parser.add_argument("--deadline", type=float, default=None, help="abort after this many seconds")
    args = parser.parse_args(argv)
    selected = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = [k for k in selected if k not in keys]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {keys}")
    selected = [k for k in keys if k in selected]  # table order
    # Every wait in the clients is bounded by this: a wedged peer cannot hang the run.
    faulthandler.dump_traceback_later(args.deadline or (240 if args.quick else 3600), exit=True)
    s = Settings(args.quick)
    rows, skipped = run(selected, s)
    result = summarise(rows, skipped, s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chart_problem = "--no-chart" if args.no_chart else draw(result, out / "results.png")
    if chart_problem and not args.no_chart:
        print(chart_problem, file=sys.stderr)
    (out / "results.md").write_text(markdown(result, chart=chart_problem is None), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    faulthandler.cancel_dump_traceback_later()
    print_table(result)
    print(f"wrote {out / 'results.md'}" + ("" if chart_problem else f" and {out / 'results.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
