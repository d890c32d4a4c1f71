"""Hypothesis strategies and helpers shared by the unit tests of L1-L3.

- ``msgpack_trees``: raw msgpack documents as Python values (what ``_codec.pack``
  accepts), with ``tree_nodes`` counting their nodes independently of the library.
- ``plain_values``: every plain value type of API.md section 3 that travels
  without a file descriptor, nested.
- ``typed_equal``: equality that also demands the exact type of every node
  (a tuple must come back a tuple, True must not come back as 1).
"""

from __future__ import annotations

import datetime
import math
import uuid
from typing import Any

import msgpack
from hypothesis import strategies as st

from nsxpc._errors import (
    ConnectionInterrupted,
    ConnectionInvalid,
    DecodingError,
    EncodingError,
    PeerRequirementFailure,
    ProtocolError,
    RemoteError,
    ReplyInvalid,
    TimedOut,
)
from nsxpc._values import ListenerEndpoint

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

#: Every XPCError subclass that has its own error code (they travel by code).
XPC_ERROR_CLASSES = (
    ConnectionInterrupted,
    ConnectionInvalid,
    ReplyInvalid,
    PeerRequirementFailure,
    RemoteError,
    TimedOut,
    ProtocolError,
    DecodingError,
    EncodingError,
)

# --------------------------------------------------------------------------- msgpack trees

msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=UINT64_MAX),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    # sizes 1/2/4/8/16 hit fixext, others ext8
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)),
)

msgpack_trees = st.recursive(
    msgpack_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 300)), children, max_size=6),
    ),
    max_leaves=40,
)


def tree_nodes(value: Any) -> int:
    """Number of msgpack nodes of ``value``: each scalar, container or ext is one
    node; a map entry counts its key and its value."""
    if isinstance(value, list):
        return 1 + sum(tree_nodes(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(tree_nodes(k) + tree_nodes(v) for k, v in value.items())
    return 1


# --------------------------------------------------------------------------- plain values

_offsets = st.timedeltas(
    min_value=-datetime.timedelta(hours=23, minutes=59, seconds=59),
    max_value=datetime.timedelta(hours=23, minutes=59, seconds=59),
)
timezones = st.builds(datetime.timezone, _offsets)

#: Aware datetimes whose UTC equivalent stays inside datetime's range.
aware_datetimes = st.datetimes(
    min_value=datetime.datetime(1, 1, 2),
    max_value=datetime.datetime(9999, 12, 30),
    timezones=timezones,
)

uuids = st.uuids()
endpoints = st.builds(ListenerEndpoint, path=st.text(max_size=30), token=st.binary(max_size=32))
xpc_errors = st.builds(lambda cls, msg: cls(msg), st.sampled_from(XPC_ERROR_CLASSES), st.text(max_size=30))

plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=UINT64_MAX),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=30),
    aware_datetimes,
    uuids,
    endpoints,
    xpc_errors,
)

# Hashable values (set members and dict keys): no NaN, which is never equal to itself.
hashable_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=INT64_MIN, max_value=UINT64_MAX),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
        aware_datetimes,
        uuids,
        endpoints,
        xpc_errors,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(tuple),
        st.frozensets(children, max_size=4),
    ),
    max_leaves=12,
)

plain_values = st.recursive(
    plain_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.sets(hashable_values, max_size=5),
        st.frozensets(hashable_values, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),  # a msgpack map
        st.dictionaries(hashable_values, children, max_size=5),  # non-str keys: EXT_DICT
    ),
    max_leaves=30,
)


# --------------------------------------------------------------------------- comparison


def typed_equal(a: Any, b: Any) -> bool:
    """``a == b`` with the exact type of every node checked, NaN equal to NaN,
    aware datetimes required to come back in UTC."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        # insertion order survives both wire forms (map and EXT_DICT)
        return len(a) == len(b) and all(
            typed_equal(ka, kb) and typed_equal(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if type(a) in (set, frozenset):
        if a != b:
            return False
        stored = {e: e for e in b}
        return all(typed_equal(e, stored[e]) for e in a)
    if type(a) is datetime.datetime:
        return a == b and b.utcoffset() == datetime.timedelta(0) and b.tzinfo is datetime.UTC
    if type(a) is uuid.UUID:
        return a == b
    return bool(a == b)
