"""The broker pattern across three processes: ``python examples/broker/app.py``.

Starts the broker daemon (``broker.py``), a provider (``provider.py``, process A) that
registers its anonymous listener's endpoint with the broker, and a consumer
(``consumer.py``, process B) that looks the endpoint up and then talks to A directly,
over several connections. Everything runs in a private runtime directory and is
stopped at the end. See examples/broker/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TIMEOUT = 30.0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nsxpc-broker-", dir="/tmp") as runtime:
        env = dict(os.environ, NSXPC_RUNTIME_DIR=runtime, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        procs: list[subprocess.Popen[str]] = []

        def start(script: str, *args: str) -> subprocess.Popen[str]:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / script), *args],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY"):
                raise SystemExit(f"{script} did not start: {line!r}")
            print(f"started {script} (pid {line.split()[1]})")
            return proc

        try:
            start("broker.py", "com.example.broker")
            start("provider.py", "com.example.broker", "greeter")
            result = subprocess.run(
                [sys.executable, str(HERE / "consumer.py"), "com.example.broker", "greeter", "3"],
                env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
            )  # fmt: skip
            print(result.stdout, end="")
            print(result.stderr, end="", file=sys.stderr)
            return result.returncode
        finally:
            for proc in reversed(procs):  # the provider first: the broker sees it go
                try:  # communicate() closes stdin: the daemons serve until it closes
                    out, _ = proc.communicate(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, _ = proc.communicate()
                print(out, end="")


if __name__ == "__main__":
    sys.exit(main())
