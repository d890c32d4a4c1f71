"""The broker example's protocols (examples/broker/): a named-service daemon that hands
one process's anonymous listener endpoint to another, so that they talk directly.

``Broker`` is served by the daemon under a mach service name; ``Greeter`` is served by
a provider process on an anonymous listener that only the broker knows about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import nsxpc


@nsxpc.protocol
class Broker(Protocol):
    # Publish ``endpoint`` under ``name``; replies False if the name is taken.
    def register(self, name: str, endpoint: nsxpc.ListenerEndpoint, reply: Callable[[bool], None]) -> None: ...
    # The endpoint published under ``name``, or None.
    def lookup(self, name: str, reply: Callable[[nsxpc.ListenerEndpoint | None], None]) -> None: ...


@nsxpc.protocol
class Greeter(Protocol):
    # Replies with a greeting and the pid of the process that made it.
    def greet(self, who: str, reply: Callable[[str, int], None]) -> None: ...
