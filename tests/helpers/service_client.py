"""A client process for the launch tests: ``service_client.py NAME``.

Prints ``READY <pid>``, waits for a line on stdin, launches NAME with
``launch_service``, calls ``pid()`` on it through a connection, and prints
``SERVICE <pid the service reports> <LaunchedService.pid>``; then serves until
stdin closes. Every wait is bounded by the test that drives it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from nsxpc._launcher import launch_service
from tests.helpers._child import ready, serve_until_parent_goes
from tests.helpers.probe import probe_interface


def main() -> None:
    name = sys.argv[1]
    ready()
    sys.stdin.readline()
    try:
        svc = launch_service(name)
    except nsxpc.XPCError as exc:
        print(f"ERROR {type(exc).__name__} {exc}", flush=True)
        serve_until_parent_goes()
        return
    conn = nsxpc.Connection(listener_endpoint=nsxpc.ListenerEndpoint(path=svc.socket_path))
    conn.remote_object_interface = probe_interface()
    conn.resume()
    proxy = conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=10)
    print(f"SERVICE {proxy.pid()} {svc.pid}", flush=True)
    serve_until_parent_goes()


if __name__ == "__main__":
    main()
