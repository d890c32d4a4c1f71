"""L2: the message envelope. Each frame body is one msgpack array whose first
element is the message kind. docs/PROTOCOL.md is the reference.

The envelope is checked strictly here (kind known, arity exact, field types
exact): any deviation is a :class:`ProtocolError`, because a peer that sends a
malformed envelope is broken or hostile and its stream cannot be trusted.
The *arguments* inside INVOKE and REPLY stay wire trees: secure coding
decodes them against the slot allowlists in L3.
"""

from __future__ import annotations

from typing import Any

from ._errors import ProtocolError

__all__ = [
    "FAILURE",
    "HELLO",
    "INVOKE",
    "KIND_NSXPC",
    "KIND_XPC",
    "MAGIC",
    "REFUSE",
    "RELEASE",
    "REPLY",
    "ROOT_OBJECT",
    "VERSION",
    "WELCOME",
    "check_envelope",
    "kind_mismatch",
]

MAGIC = "nsxpc"
#: HELLO kinds: NSXPC proxies (Connection/Listener) or XPC messages (XPCSession,
#: XPCListener, nsxpc.xpc). A listener serves one kind and refuses the other.
KIND_NSXPC = "nsxpc"
KIND_XPC = "xpc"
_KIND_NAMES = {
    KIND_NSXPC: "NSXPC proxies (kind 'nsxpc': nsxpc.Connection / nsxpc.Listener)",
    KIND_XPC: "XPC messages (kind 'xpc': nsxpc.XPCSession / nsxpc.XPCListener / nsxpc.xpc)",
}
#: Wire protocol version. A peer speaking another version is refused at handshake.
VERSION = 1
#: The exported object of a connection is object 1 (NSXPC's proxy number 1).
ROOT_OBJECT = 1

HELLO = 0  # [0, "nsxpc", version, kind, token, info]            client -> server, first frame
WELCOME = 1  # [1, "nsxpc", version, info]                       server -> client, accepted
REFUSE = 2  # [2, code, reason]                                  server -> client, then close
INVOKE = 3  # [3, seq, target, selector, args]    seq 0: one-way
REPLY = 4  # [4, seq, args]
FAILURE = 5  # [5, seq, code, message]
RELEASE = 6  # [6, target]                                       a proxy was dropped

_SHAPES: dict[int, tuple[type, ...]] = {
    HELLO: (int, str, int, str, bytes, dict),
    WELCOME: (int, str, int, dict),
    REFUSE: (int, int, str),
    INVOKE: (int, int, int, str, list),
    REPLY: (int, int, list),
    FAILURE: (int, int, int, str),
    RELEASE: (int, int),
}
_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", REFUSE: "REFUSE", INVOKE: "INVOKE", REPLY: "REPLY",
          FAILURE: "FAILURE", RELEASE: "RELEASE"}  # fmt: skip


def check_envelope(msg: Any) -> list[Any]:
    """Return ``msg`` if it is a well-formed message, else raise ProtocolError."""
    if type(msg) is not list or not msg or type(msg[0]) is not int:
        raise ProtocolError("message is not an array starting with its kind")
    shape = _SHAPES.get(msg[0])
    if shape is None:
        raise ProtocolError(f"unknown message kind {msg[0]}")
    if len(msg) != len(shape) or any(type(v) is not t for v, t in zip(msg, shape, strict=True)):
        raise ProtocolError(f"malformed {_NAMES[msg[0]]} message")
    return msg


def kind_mismatch(peer: str, ours: str) -> str:
    """The refusal reason when a HELLO's kind is not the listener's: names both kinds."""
    theirs = _KIND_NAMES.get(peer, f"unknown kind {peer!r}")
    ours_ = _KIND_NAMES.get(ours, repr(ours))
    return f"connection kind mismatch: the peer speaks {theirs}, but this listener serves only {ours_}"


def check_hello_version(msg: Any) -> None:
    """Refuse a first frame that is not an nsxpc HELLO of this version, with a reason
    that a user of either side can act on. Checked before the rest of the HELLO,
    so that a future version with another HELLO layout still gets a clear answer."""
    if type(msg) is not list or len(msg) < 3 or msg[0] != HELLO or msg[1] != MAGIC:
        raise ProtocolError("peer did not open with an nsxpc handshake")
    if msg[2] != VERSION:
        raise ProtocolError(
            f"protocol version mismatch: peer speaks nsxpc wire version {msg[2]!r}, this side speaks version {VERSION}"
        )
