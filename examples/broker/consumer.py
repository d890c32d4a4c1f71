"""Process B: ``python examples/broker/consumer.py BROKER_NAME PROVIDER_NAME [TIMES]``.

Asks the broker for the endpoint registered under ``PROVIDER_NAME``, then connects
to the provider directly, ``TIMES`` times (one new connection each time:
``Connection(listener_endpoint=...)`` can be made from the same endpoint again and
again), and prints who answered. It also looks up a name nobody registered.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nsxpc
from protocols.broker import Broker, Greeter

TIMEOUT = 5.0


def failed(err: Exception) -> None:
    raise err  # the value-returning form raises; this is never called


def main(argv: list[str]) -> int:
    broker_name, provider_name = argv[1], argv[2]
    times = int(argv[3]) if len(argv) > 3 else 2

    broker = nsxpc.Connection(mach_service_name=broker_name)
    broker.remote_object_interface = nsxpc.Interface(Broker)
    broker.resume()
    lookup = broker.synchronous_remote_object_proxy_with_error_handler(failed, timeout=TIMEOUT).lookup
    endpoint = lookup(provider_name)
    if endpoint is None:
        print(f"broker: no provider named {provider_name!r}")
        return 1
    # (Only the path: str(endpoint) also holds the listener's secret token.)
    print(f"broker (pid {broker.process_identifier}) gave the endpoint of {endpoint.path}")
    print("unknown: no provider named 'nobody'" if lookup("nobody") is None else "unknown: ???")
    broker.invalidate()

    for i in range(1, times + 1):
        conn = nsxpc.Connection(listener_endpoint=endpoint)
        conn.remote_object_interface = nsxpc.Interface(Greeter)
        conn.resume()
        text, pid = conn.synchronous_remote_object_proxy_with_error_handler(failed, timeout=TIMEOUT).greet(
            f"consumer #{i}"
        )
        print(f"connection {i}: {text!r}, answered by pid {pid} (peer pid {conn.process_identifier})")
        conn.invalidate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
