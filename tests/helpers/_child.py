"""Shared bits of the child-process helpers: the ready line and the parent watch."""

from __future__ import annotations

import os
import sys
import threading


def ready(extra: str = "") -> None:
    """Tell the parent we serve: ``READY <pid> [extra]`` on stdout."""
    sys.stdout.write(f"READY {os.getpid()} {extra}".rstrip() + "\n")
    sys.stdout.flush()


def serve_until_parent_goes() -> None:
    """Block until stdin closes (the test ended or the runner died), then exit at once."""
    threading.Thread(target=_watch_stdin, daemon=True).start()
    threading.Event().wait()


def _watch_stdin() -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)
