"""L2 msgpack with limits: count_nodes, unpack, the hostile corpus (A4) and the
fuzz invariant (A1/A3): bytes give a value or ProtocolError, nothing else."""

from __future__ import annotations

import datetime
import math
import struct
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nsxpc import _codec
from nsxpc._codec import Ext, count_nodes, pack, unpack
from nsxpc._coding import PLAIN_TYPES, Allowed, DecodeContext, EncodeContext, SecureCoding, decode_value, encode_value
from nsxpc._errors import DecodingError, EncodingError, ErrorCode, ProtocolError
from nsxpc._values import ListenerEndpoint

from .strategies import msgpack_scalars, msgpack_trees, tree_nodes

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hostile"
BUDGET = 65_536  # the runtime's node budget and container cap (Limits.max_nodes)


# --------------------------------------------------------------------------- count_nodes


@settings(max_examples=150, deadline=None)
@given(tree=msgpack_trees)
def test_count_nodes_equals_true_node_count(tree):
    data = pack(tree)
    n = tree_nodes(tree)
    assert count_nodes(data, n) == n
    assert count_nodes(data, 10**9) == n


@settings(max_examples=50, deadline=None)
@given(tree=msgpack_trees)
def test_count_nodes_refuses_one_past_the_budget(tree):
    data = pack(tree)
    n = tree_nodes(tree)
    with pytest.raises(ProtocolError, match="node budget"):
        count_nodes(data, n - 1)


def _large_format_cases():
    big = 70_000  # past 16-bit lengths
    return [
        ("str8", "x" * 40),
        ("str16", "x" * 300),
        ("str32", "x" * big),
        ("bin8", b"x"),
        ("bin16", b"x" * 300),
        ("bin32", b"x" * big),
        ("array16", [None] * 20),
        ("array32", [1] * big),
        ("map16", {str(i): i for i in range(20)}),
        ("map32", {str(i): None for i in range(big)}),
        ("fixext", [msgpack.ExtType(3, b"x" * n) for n in (1, 2, 4, 8, 16)]),
        ("ext8_16_32", [msgpack.ExtType(3, b"x" * n) for n in (3, 255, 300, big)]),
        ("ints", [0, -1, -33, 127, 128, 255, 256, 65_535, 65_536, 2**32, -(2**7), -(2**15), -(2**31), -(2**63)]),
        ("uint64", [2**64 - 1]),
        ("floats", [0.0, 1.5, -math.inf, math.nan]),
        ("nested", [{"a": [{"b": [msgpack.ExtType(1, b"")]}]}, [[[]]], {}]),
    ]


@pytest.mark.parametrize(("name", "tree"), _large_format_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_count_nodes_every_format(name, tree):
    data = pack(tree)
    assert count_nodes(data, 10**9) == tree_nodes(tree)


def test_count_nodes_float32():
    data = b"\x92\xca" + struct.pack(">f", 1.5) + b"\xc0"
    assert msgpack.unpackb(data) == [1.5, None]
    assert count_nodes(data, 100) == 3


@pytest.mark.parametrize("data", [b"", b"\x92\x01", b"\x81\xa1a", b"\xdd\x00\x00\x00\x03\xc0\xc0"])
def test_count_nodes_truncated(data):
    with pytest.raises(ProtocolError, match="truncated"):
        count_nodes(data, 100)


def test_count_nodes_reserved_byte():
    with pytest.raises(ProtocolError, match="reserved"):
        count_nodes(b"\x93\xc0\xc1\xc0", 100)


# --------------------------------------------------------------------------- unpack


def _normal(v):
    """Compare unpacked trees: Ext and ExtType as (code, data); NaN as a marker."""
    if isinstance(v, (Ext, msgpack.ExtType)):
        return ("ext", v.code, v.data)
    if isinstance(v, list):
        return [_normal(x) for x in v]
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return (type(v).__name__, v)


str_keyed_trees = st.recursive(
    msgpack_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), children, max_size=6),
    ),
    max_leaves=40,
)


@settings(max_examples=100, deadline=None)
@given(tree=str_keyed_trees, budget=st.sampled_from([1, 16, BUDGET]))
def test_unpack_round_trip_or_node_budget(tree, budget):
    data = pack(tree)
    if tree_nodes(tree) > budget:
        with pytest.raises(ProtocolError):
            unpack(data, budget, BUDGET)
    else:
        assert _normal(unpack(data, budget, BUDGET)) == _normal(tree)


def test_unpack_extensions_stay_inert():
    value = unpack(pack([msgpack.ExtType(_codec.EXT_OBJECT, b"\x92\xa3x.Y\x80")]), BUDGET, BUDGET)
    assert type(value[0]) is Ext
    assert (value[0].code, value[0].data) == (_codec.EXT_OBJECT, b"\x92\xa3x.Y\x80")


def test_unpack_container_cap():
    unpack(pack([None] * 10), BUDGET, 10)
    with pytest.raises(ProtocolError):
        unpack(pack([None] * 11), BUDGET, 10)
    with pytest.raises(ProtocolError):
        unpack(pack({str(i): 1 for i in range(11)}), BUDGET, 10)


def test_pack_refuses_what_msgpack_cannot_carry():
    with pytest.raises(EncodingError):
        pack(object())
    with pytest.raises(EncodingError):
        pack(2**64)


# --------------------------------------------------------------------------- hostile corpus (A4)

# file -> (stage, error). "unpack": _codec.unpack must raise it. "decode": unpack
# succeeds and decode_value with the plain allowlist must raise it.
HOSTILE_EXPECTATIONS: dict[str, tuple[str, type[Exception]]] = {
    "bin32_4gib.bin": ("unpack", ProtocolError),
    "str32_4gib.bin": ("unpack", ProtocolError),
    "ext32_4gib.bin": ("unpack", ProtocolError),
    "array32_4g_elements.bin": ("unpack", ProtocolError),
    "map32_4g_entries.bin": ("unpack", ProtocolError),
    "array32_50m_header.bin": ("unpack", ProtocolError),
    "nest_33.bin": ("decode", DecodingError),
    "nest_1025.bin": ("unpack", ProtocolError),
    "nest_100000.bin": ("unpack", ProtocolError),
    "nest_100000_maps.bin": ("unpack", ProtocolError),
    "amplifier_1mib_0x90.bin": ("unpack", ProtocolError),
    "amplifier_1mib_0x80.bin": ("unpack", ProtocolError),
    "invalid_utf8.bin": ("unpack", ProtocolError),
    "utf8_surrogate.bin": ("unpack", ProtocolError),
    "invalid_utf8_map_key.bin": ("unpack", ProtocolError),
    "trailing_bytes.bin": ("unpack", ProtocolError),
    "trailing_after_array.bin": ("unpack", ProtocolError),
    "reserved_c1.bin": ("unpack", ProtocolError),
    "reserved_c1_in_long_body.bin": ("unpack", ProtocolError),
    "empty.bin": ("unpack", ProtocolError),
    "truncated_array.bin": ("unpack", ProtocolError),
    "truncated_uint16.bin": ("unpack", ProtocolError),
    "truncated_str8.bin": ("unpack", ProtocolError),
    "truncated_map.bin": ("unpack", ProtocolError),
    "truncated_long_array.bin": ("unpack", ProtocolError),
    "int_map_key.bin": ("unpack", ProtocolError),
    "array_map_key.bin": ("unpack", ProtocolError),
    "duplicate_keys.bin": ("unpack", ProtocolError),
    "ext_timestamp.bin": ("decode", DecodingError),
    "ext_code_0.bin": ("decode", DecodingError),
    "ext_code_13.bin": ("decode", DecodingError),
    "ext_code_127.bin": ("decode", DecodingError),
    "ext_code_minus_128.bin": ("decode", DecodingError),
    "object_unknown_class.bin": ("decode", DecodingError),
}


def test_corpus_files_match_expectations():
    """Every committed corpus file has an expectation, and every expectation a file."""
    assert sorted(p.name for p in CORPUS.glob("*.bin")) == sorted(HOSTILE_EXPECTATIONS)


def _run_hostile(data: bytes, stage: str, error: type[Exception], budget: int = BUDGET) -> None:
    if stage == "unpack":
        with pytest.raises(error) as info:
            unpack(data, budget, BUDGET)
        assert info.value.code == ErrorCode.PROTOCOL_ERROR
    else:
        raw = unpack(data, budget, BUDGET)
        with pytest.raises(error):
            decode_value(raw, Allowed.of(PLAIN_TYPES), DecodeContext())


@pytest.mark.parametrize("name", sorted(HOSTILE_EXPECTATIONS))
def test_hostile_corpus_rejected_quickly(name):
    data = (CORPUS / name).read_bytes()
    stage, error = HOSTILE_EXPECTATIONS[name]
    start = time.perf_counter()
    _run_hostile(data, stage, error)
    # A4 asks for 10 ms; a loaded CI machine gets slack, an allocation bomb does not fit.
    assert time.perf_counter() - start < 0.25


@pytest.mark.parametrize("name", ["nest_100000.bin", "nest_100000_maps.bin", "nest_1025.bin"])
def test_deep_nesting_is_protocol_error_even_with_a_huge_budget(name):
    """Past msgpack's own depth limit the error is still a ProtocolError, never
    RecursionError, whether or not the node budget catches it first."""
    data = (CORPUS / name).read_bytes()
    limit = sys.getrecursionlimit()
    with pytest.raises(ProtocolError):
        unpack(data, 10**7, 10**7)
    assert sys.getrecursionlimit() == limit


@pytest.mark.parametrize("name", ["amplifier_1mib_0x90.bin", "amplifier_1mib_0x80.bin", "nest_100000.bin"])
def test_node_budget_refuses_amplifier_without_building_it(name):
    """1 MiB of empty arrays decodes to ~72 MiB; the node budget must refuse it
    from the headers alone, allocating next to nothing."""
    data = (CORPUS / name).read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="node budget"):
            unpack(data, BUDGET, BUDGET)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"refusing the amplifier allocated {peak} bytes"


def test_depth_32_is_accepted_and_33_refused():
    ok = b"\x91" * 31 + b"\x90"
    raw = unpack(ok, BUDGET, BUDGET)
    decode_value(raw, Allowed.of(PLAIN_TYPES), DecodeContext())
    raw = unpack((CORPUS / "nest_33.bin").read_bytes(), BUDGET, BUDGET)
    with pytest.raises(DecodingError, match="deeper"):
        decode_value(raw, Allowed.of(PLAIN_TYPES), DecodeContext())


# --------------------------------------------------------------------------- fuzz invariant


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), budget=st.sampled_from([1, 8, 64, BUDGET]))
@example(data=b"\xc1", budget=BUDGET)
@example(data=b"\xdd\xff\xff\xff\xff", budget=1)
@example(data=b"\xc7\xff\x07", budget=BUDGET)
def test_arbitrary_bytes_give_a_value_or_protocol_error(data, budget):
    try:
        unpack(data, budget, 1024)
    except ProtocolError:
        pass


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_through_secure_decoding(data):
    """Arbitrary bytes through unpack and decode_value: a value of an allowed
    class, ProtocolError or DecodingError, nothing else."""
    try:
        raw = unpack(data, BUDGET, 1024)
    except ProtocolError:
        return
    try:
        value = decode_value(raw, Allowed.of(PLAIN_TYPES), DecodeContext())
    except (DecodingError, ProtocolError):
        return
    assert _only_plain(value)


def _only_plain(v, depth=0) -> bool:
    t = type(v)
    if t not in PLAIN_TYPES and not isinstance(v, tuple(PLAIN_TYPES)):
        return False
    if t in (list, tuple, set, frozenset):
        return all(_only_plain(e, depth + 1) for e in v)
    if t is dict:
        return all(_only_plain(k) and _only_plain(x) for k, x in v.items())
    return True


# --------------------------------------------------------------------------- mutated valid messages (A3)


class Cookie(SecureCoding):
    __xpc_name__ = "test_codec.Cookie"

    def __init__(self, flavor: str, chips: int) -> None:
        self.flavor = flavor
        self.chips = chips

    def encode_with_coder(self, coder):
        coder.encode(self.flavor, "flavor")
        coder.encode(self.chips, "chips")

    @classmethod
    def init_with_coder(cls, coder):
        return cls(coder.decode_object_of_class(str, "flavor"), coder.decode_object_of_class(int, "chips"))


def _wire(value) -> bytes:
    return pack(encode_value(value, EncodeContext()))


SEEDS = {
    "cookie": (_wire(Cookie("chocolate", 12)), Allowed.of({Cookie})),
    "invoke": (
        pack([3, 7, 1, "feed_me_a_cookie", [encode_value(Cookie("oat", 3), EncodeContext()), 5]]),
        Allowed.of({list, int, str, Cookie}),
    ),
    "plain": (
        _wire(
            {
                "when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC),
                "id": uuid.UUID(int=0x1234),
                1: (b"raw", frozenset({1, 2}), {3.5, None}),
                "ep": ListenerEndpoint(path="/tmp/x.sock", token=b"t" * 8),
            }
        ),
        Allowed.of(PLAIN_TYPES),
    ),
}


def _mutations(data: bytes):
    for i in range(len(data)):
        yield data[:i]  # truncation
        for bit in range(8):
            yield data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
        yield data[:i] + b"\x00" + data[i:]  # insertion


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_truncation_at_every_offset_is_protocol_error(seed):
    data, _ = SEEDS[seed]
    for i in range(len(data)):
        with pytest.raises(ProtocolError):
            unpack(data[:i], BUDGET, BUDGET)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_mutated_valid_message_decodes_within_allowlist_or_fails_cleanly(seed):
    data, allowed = SEEDS[seed]
    assert decode_value(unpack(data, BUDGET, BUDGET), allowed, DecodeContext()) is not None
    outcomes = {"value": 0, "error": 0}
    for mutated in _mutations(data):
        try:
            raw = unpack(mutated, BUDGET, BUDGET)
            value = decode_value(raw, allowed, DecodeContext())
        except (ProtocolError, DecodingError):
            outcomes["error"] += 1
            continue
        outcomes["value"] += 1
        assert _within(value, allowed), f"{mutated!r} decoded to {value!r}, outside {allowed.describe()}"
    assert outcomes["error"] > 0


def _within(v, allowed: Allowed) -> bool:
    t = type(v)
    error_allowed = isinstance(v, Exception) and any(issubclass(a, Exception) for a in allowed.types)
    if t not in allowed.types and not error_allowed:
        return False
    if t is Cookie:
        return type(v.flavor) is str and type(v.chips) is int
    if t in (list, tuple, set, frozenset):
        return all(_within(e, allowed) for e in v)
    if t is dict:
        return all(_within(k, allowed) and _within(x, allowed) for k, x in v.items())
    return True
