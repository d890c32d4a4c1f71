"""A client process that reaches a service through ``Connection(service_name=NAME)``:
``service_name_client.py NAME``.

Prints ``READY <pid>``, then for each line ``call`` on stdin calls ``pid()`` and
``connections()`` on the service and prints
``PID <pid the service reports> <conn.process_identifier> <connections the service accepted>``
(or ``ERROR <class> <message>``). Exits at once when stdin closes. Every call is
bounded by its ``timeout=``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from tests.helpers._child import ready
from tests.helpers.probe import probe_interface


def main() -> None:
    conn = nsxpc.Connection(service_name=sys.argv[1])
    conn.remote_object_interface = probe_interface()
    conn.resume()
    proxy = conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=10)
    ready()
    for line in sys.stdin:
        if line.strip() != "call":
            continue
        try:
            pid = proxy.pid()
            accepted = proxy.connections()
        except nsxpc.XPCError as exc:
            print(f"ERROR {type(exc).__name__} {exc}", flush=True)
            continue
        print(f"PID {pid} {conn.process_identifier} {accepted}", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
