"""L2: value types that travel in messages besides Python's own.

They are plain data (frozen attrs): nothing in them does I/O, so they can be
decoded from the wire without side effects.
"""

from __future__ import annotations

import attrs

__all__ = ["ListenerEndpoint"]


@attrs.frozen(repr=False)
class ListenerEndpoint:
    """Names one listener so that any process can connect to it (NSXPCListenerEndpoint).

    An endpoint is inert: a value that can be passed as an argument, stored,
    or handed to a child process (``str(endpoint)`` and
    :meth:`from_string`). Whoever holds one can connect to the listener any
    number of times. For an anonymous listener it includes a random token the
    listener checks at handshake, so the socket path alone is not enough.

    Attributes:
        path: the listener's Unix socket path.
        token: the anonymous listener's secret, or ``b""`` for a named service.
    """

    path: str
    token: bytes = b""

    _PREFIX = "nsxpc-endpoint:"

    def __str__(self) -> str:
        return f"{self._PREFIX}{self.token.hex()}:{self.path}"

    def __repr__(self) -> str:
        kind = "anonymous" if self.token else "named"
        return f"<ListenerEndpoint {kind} {self.path}>"

    @classmethod
    def from_string(cls, text: str) -> ListenerEndpoint:
        """Parse the text ``str(endpoint)`` gave (to pass an endpoint through an
        environment variable or a file to a child process).

        Raises:
            ValueError: the text is not an nsxpc endpoint.
        """
        if not text.startswith(cls._PREFIX):
            raise ValueError(f"not an nsxpc endpoint: {text[:40]!r}")
        token_hex, sep, path = text[len(cls._PREFIX) :].partition(":")
        if not sep or not path:
            raise ValueError(f"not an nsxpc endpoint: {text[:40]!r}")
        return cls(path=path, token=bytes.fromhex(token_hex))
