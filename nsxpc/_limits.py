"""Resource limits of one connection, with their documented defaults.

Each limit has a specific error when exceeded; docs/PROTOCOL.md has the table.
"""

from __future__ import annotations

import attrs

from ._framing import DEFAULT_MAX_FDS, DEFAULT_MAX_FRAME_SIZE

__all__ = ["Limits"]


@attrs.frozen(kw_only=True)
class Limits:
    """Limits applied to what a peer sends (and to what we send it).

    Attributes:
        max_frame_size: largest frame body in bytes (``ProtocolError``, connection invalidated).
        max_depth: deepest nesting of containers and objects in one value (``DecodingError``).
        max_nodes: most values in one message, counted before decoding (``ProtocolError``).
        max_fds: most file descriptors in one frame (``ProtocolError``).
        handshake_timeout: seconds a new peer has to complete the handshake.
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_depth: int = 32
    max_nodes: int = 65_536
    max_fds: int = DEFAULT_MAX_FDS
    handshake_timeout: float = 5.0


DEFAULT_LIMITS = Limits()
