"""L2: msgpack with explicit limits. The only module that imports msgpack.

Why these limits (research/reliability.md section 3.2):
- ``unpackb`` is given per-container caps (``max_array_len``, ``max_map_len``)
  and builds only complete, length-checked bodies: a header that claims 50M
  elements is refused instead of waiting for data.
- A length cap alone does not bound memory: an array of empty arrays grows
  about 72x when decoded. So before any body longer than the remaining node
  budget is handed to msgpack, :func:`count_nodes` walks its headers without
  building anything and refuses it past the budget. Every node takes at least
  one byte, so shorter bodies cannot exceed the budget and skip the scan.
- Map keys must be ``str`` or ``bytes`` (``strict_map_key``, against hash DoS).
- Extension types are never interpreted here: each becomes an inert
  :class:`Ext` marker that L2's secure coding resolves against the slot's
  allowlist. msgpack's own timestamp extension (-1) is left as msgpack builds
  it and is refused by the allowlist like any other unknown type.

Every failure raises :class:`~nsxpc._errors.ProtocolError`; no msgpack
exception escapes this module.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._errors import EncodingError, ProtocolError

__all__ = [
    "EXT_DATETIME",
    "EXT_DICT",
    "EXT_ENDPOINT",
    "EXT_ERROR",
    "EXT_FD",
    "EXT_FROZENSET",
    "EXT_OBJECT",
    "EXT_PROXY",
    "EXT_SET",
    "EXT_SHM",
    "EXT_TUPLE",
    "EXT_UUID",
    "Ext",
    "ExtType",
    "count_nodes",
    "pack",
    "unpack",
]

# Extension codes: a fixed table. Anything else on the wire is refused.
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DICT = 4  # a dict whose keys are not all str: a flat [k0, v0, k1, v1, ...] array
EXT_DATETIME = 5  # int64 microseconds since the Unix epoch, UTC, big-endian
EXT_UUID = 6  # 16 bytes
EXT_OBJECT = 7  # [wire class name, {key: value}] of a SecureCoding object
EXT_ENDPOINT = 8  # a ListenerEndpoint
EXT_FD = 9  # index into the frame's file descriptors
EXT_SHM = 10  # shared memory: index of its fd in the frame, and its size
EXT_ERROR = 11  # [code, message] of an XPCError
EXT_PROXY = 12  # an object passed by proxy: its id in the sender's exported-object table

ExtType = msgpack.ExtType


class Ext:
    """An extension value as received: inert until resolved against an allowlist."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code = code
        self.data = data

    def __repr__(self) -> str:
        return f"Ext({self.code}, {len(self.data)} bytes)"


def _ext_hook(code: int, data: bytes) -> Ext:
    return Ext(code, data)


def _no_duplicate_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    # msgpack keeps the last of duplicate keys silently; a validator and a consumer
    # could then disagree about a map's content (research/reliability.md A4).
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("map has duplicate keys")
    return result


# Reusable Packers: msgpack.packb builds a Packer (and parses its options) on every
# call, which costs more than packing a small message. A Packer must not be shared
# by two threads at once, so each pack takes one from the pool (list.pop and
# list.append are atomic) and puts it back.
_packers: list[Any] = []


def pack(obj: object) -> bytes:
    """Pack an already-converted wire tree (plain values, lists, str-keyed dicts, ExtType).

    Raises:
        EncodingError: the tree holds something msgpack cannot carry.
    """
    try:
        packer = _packers.pop()
    except IndexError:
        packer = msgpack.Packer(use_bin_type=True, datetime=False)
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except OverflowError:
        packer.reset()  # a failed pack may leave partial output behind
        raise EncodingError("cannot encode value: an integer does not fit in 64 bits") from None
    except (TypeError, ValueError) as exc:
        packer.reset()
        raise EncodingError(f"cannot encode value: {exc}") from exc
    finally:
        _packers.append(packer)


def unpack(data: bytes, node_budget: int, max_container: int) -> Any:
    """Unpack one complete msgpack document under explicit limits.

    Args:
        data: exactly one msgpack document (trailing bytes are an error).
        node_budget: refuse documents with more nodes than this, before building them.
        max_container: the largest array or map accepted.

    Raises:
        ProtocolError: malformed msgpack, trailing data, limits exceeded.
    """
    if len(data) > node_budget:
        count_nodes(data, node_budget)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_ext_hook,
            object_pairs_hook=_no_duplicate_keys,
            max_array_len=max_container,
            max_map_len=max_container,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers FormatError, StackError, ExtraData, UnicodeDecodeError
        # and the length limits; OutOfData is an UnpackException only.
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc


# Sizes of the fixed-width msgpack types, by first byte.
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}  # fmt: skip
# Length-prefixed blobs: first byte -> (width of the length field, extra type byte).
_BLOB = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
         0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}  # fmt: skip
# Containers with a length field: first byte -> (width, children per element).
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def count_nodes(data: bytes, budget: int) -> int:
    """Count the nodes of one msgpack document by reading headers only.

    Nothing is allocated per node, so a hostile body costs at most ``budget``
    steps. Ext payloads count as one node here; they are scanned when decoded.

    Raises:
        ProtocolError: more than ``budget`` nodes, or a truncated document.
    """
    pos, pending, nodes, end = 0, 1, 0, len(data)
    while pending:
        if pos >= end:
            raise ProtocolError("malformed msgpack: document is truncated")
        b = data[pos]
        pending -= 1
        nodes += 1
        if nodes > budget:
            raise ProtocolError(f"message has more than {budget} values (node budget exceeded)")
        pos += 1
        if b <= 0x7F or b >= 0xE0:
            continue
        if b <= 0x8F:
            pending += 2 * (b & 0x0F)
        elif b <= 0x9F:
            pending += b & 0x0F
        elif b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _BLOB:
            width, extra = _BLOB[b]
            pos += width + extra + int.from_bytes(data[pos : pos + width], "big")
        elif b in _CONTAINER:
            width, per = _CONTAINER[b]
            pending += per * int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:  # 0xC1 is never used
            raise ProtocolError(f"malformed msgpack: reserved byte {b:#04x}")
    return nodes
