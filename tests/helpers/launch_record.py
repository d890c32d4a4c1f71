"""Shared by the test bundle executables: record this launch before anything else runs."""

from __future__ import annotations

import os


def record_launch() -> None:
    """Append this process's pid to ``$PROBE_RECORD``, if set (one line per launch)."""
    record = os.environ.get("PROBE_RECORD")
    if record:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
