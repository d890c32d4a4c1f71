"""Shared by the three echo examples: run the service half in a child process.

Each example is one file with two halves: ``python X.py`` runs the client, which
starts ``python X.py serve`` as the service (in a private NSXPC_RUNTIME_DIR) and
stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable


def run(script: str, client: Callable[[], None]) -> None:
    runtime = tempfile.mkdtemp(prefix="nsxpc-echo-")
    os.environ["NSXPC_RUNTIME_DIR"] = runtime
    child = subprocess.Popen([sys.executable, script, "serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the service prints "ready" once it listens
        if line.strip() != "ready":
            raise SystemExit(f"the service did not start: {line!r}")
        client()
    finally:
        child.terminate()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)


def ready() -> None:
    print("ready", flush=True)
