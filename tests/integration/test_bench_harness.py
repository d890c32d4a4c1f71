"""Smoke test of `make bench`'s harness (bench/compare.py --quick) on the floors and nsxpc.

It needs no peer from the `bench` extra and no matplotlib (--no-chart): it checks
that the harness starts its servers, measures every scenario of the floors and the
nsxpc proxy row, and writes the table and the targets. A few seconds on a quiet
machine. The figures themselves are not judged here: benchmarks are not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_measures_floor_and_nsxpc(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compare.py"),
            "--quick",
            "--systems",
            "floor,msgpack-floor,nsxpc",
            "--no-chart",
            "--out",
            str(tmp_path),
            "--deadline",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = result["systems"]
    assert list(rows) == ["floor", "msgpack-floor", "nsxpc"]
    floor, mfloor, rpc = rows["floor"], rows["msgpack-floor"], rows["nsxpc"]
    for entry in (floor, rpc):
        assert entry["errors"] == [], entry["errors"]
        assert entry["rt_median_us"] > 0 and entry["rt_p99_us"] >= entry["rt_median_us"]
        assert entry["echo_1mib_mbs"] > 0 and entry["echo_16mib_mbs"] > 0  # --quick: 16 MiB, not 64
        assert entry["connect_us"] > 0
    assert mfloor["oneway_per_s"] > 0 and rpc["oneway_per_s"] > 0
    # Every ratio is to the floor of the same run.
    assert floor["rt_median_x"] == pytest.approx(1.0)
    assert rpc["rt_median_x"] == pytest.approx(rpc["rt_median_us"] / floor["rt_median_us"])
    assert rpc["oneway_x"] == pytest.approx(rpc["oneway_per_s"] / mfloor["oneway_per_s"])
    targets = {t["id"]: t for t in result["targets"]}
    for tid in ("rt", "p99", "oneway", "connect"):
        assert targets[tid]["met"] in (True, False), targets[tid]
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| nsxpc proxy (sync) |" in table and "## Targets" in table
    assert "| floor: msgpack stream | n/a | n/a | " in table and "(1.00x)" in table
    assert ("✅ pass" in table) or ("❌ miss" in table)
    assert not (tmp_path / "results.png").exists()
