"""Resource limits of one connection and of a listener, with their documented defaults.

Each limit has a specific error when exceeded; docs/LIMITS.md has the table.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._framing import DEFAULT_MAX_FDS, DEFAULT_MAX_FRAME_SIZE

__all__ = ["Limits"]


def _positive(_inst: object, attr: Any, value: Any) -> None:
    if type(value) not in (int, float) or value <= 0:
        raise ValueError(f"Limits.{attr.name} must be a positive number, not {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """Limits applied to what a peer sends (and to what we send it).

    The defaults (research/reliability.md section 6.G, D-Bus's where it has one)
    serve most uses; docs/LIMITS.md says what each counts and what happens when
    it is exceeded.

    Attributes:
        max_frame_size: largest frame body in bytes (``ProtocolError``, connection invalidated).
        max_depth: deepest nesting of containers and objects in one value (``DecodingError``).
        max_nodes: most values in one message, counted before decoding (``ProtocolError``).
        max_fds: most file descriptors in one frame (``ProtocolError``).
        handshake_timeout: seconds a new peer has to complete the handshake (listener side).
        max_calls_in_flight: calls awaiting a reply per connection, each way. Beyond it
            a caller waits for a slot (``LimitExceeded`` where waiting would deadlock:
            on the connection's own queue, on an event loop, or before ``resume()``);
            the receiving side stops reading from a peer that has this many calls
            unanswered.
        max_outgoing_buffer: bytes the kernel may hold unread for one peer (its
            socket's send buffer, listener side).
        send_timeout: seconds a write may wait for a peer that reads nothing before it
            is dropped as a slow consumer (``LimitExceeded``; listener side).
        max_pending_connections: connections a listener holds that have not completed
            the handshake; when full, the oldest of them is closed to admit a new one.
        max_connections_per_uid: connections a listener holds from one uid (handshake
            complete or not); one more is refused.
        shared_memory_threshold: ``bytes`` values longer than this are *sent* through
            shared memory (docs/FDS.md); None never promotes them.
        max_shared_memory: most bytes of shared memory (regions and promoted bytes)
            one received message may bring (``DecodingError``, message dropped).
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_depth: int = 32
    max_nodes: int = 65_536
    max_fds: int = DEFAULT_MAX_FDS
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_calls_in_flight: int = attrs.field(default=128, validator=_positive)
    max_outgoing_buffer: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    send_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_pending_connections: int = attrs.field(default=64, validator=_positive)
    max_connections_per_uid: int = attrs.field(default=256, validator=_positive)
    # Shared memory (docs/FDS.md).
    shared_memory_threshold: int | None = 1024 * 1024
    max_shared_memory: int = 1024 * 1024 * 1024


DEFAULT_LIMITS = Limits()
