"""Connect to the listener endpoint in ``$NSXPC_TEST_ENDPOINT`` (``str(endpoint)``),
call ``add(A, B)`` through a synchronous proxy, print ``RESULT <pid> <sum>``.

``endpoint_client.py A B [hold]``: with ``hold``, stay connected after printing
until stdin closes (so the parent can kill it while connected).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from protocols.kitchen import Kitchen
from tests.helpers._child import serve_until_parent_goes


def main() -> None:
    a, b = int(sys.argv[1]), int(sys.argv[2])
    endpoint = nsxpc.ListenerEndpoint.from_string(os.environ["NSXPC_TEST_ENDPOINT"])
    conn = nsxpc.Connection(listener_endpoint=endpoint)
    conn.remote_object_interface = nsxpc.Interface(Kitchen)
    conn.resume()
    errors: list[BaseException] = []
    sync = conn.synchronous_remote_object_proxy_with_error_handler(errors.append, timeout=10)
    try:
        total = sync.add(a, b)
    except nsxpc.XPCError as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print(f"RESULT {os.getpid()} {total}", flush=True)
    if len(sys.argv) > 3 and sys.argv[3] == "hold":
        serve_until_parent_goes()
    conn.invalidate()


if __name__ == "__main__":
    main()
