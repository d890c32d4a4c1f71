"""Fuzz and property tests of the whole sans-I/O core (reliability.md A1-A3, DESIGN.md rule 9).

The codec and the frame decoder have their own properties (test_codec.py,
test_framing.py); these drive ``ConnectionCore`` itself, the way a socket would,
through tests/fuzz/harness.py (the same checks the atheris target runs):

- round trips of every wire type through real frames: a call's arguments and a
  reply's values come out of the receiving core equal, with their exact types;
- the invariant "arbitrary bytes give events or a defined nsxpc error, nothing
  else" in every phase of the connection, for random bytes and random envelopes;
- mutated valid streams (bit flips, truncation, insertion, deletion, length-field
  skew, duplicated and swapped frames): the invariant holds and a delivered call
  never carries a selector or class its interface does not allow;
- truncation at every offset of a valid stream gives exactly the events of the
  complete frames and then waits (no error, no partial message);
- any split of a valid stream gives the same events as the whole.

``NSXPC_FUZZ_EXAMPLES`` multiplies the example counts (``make fuzz`` sets it).
"""

from __future__ import annotations

import datetime
import math
import os
import struct
import uuid
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nsxpc
from nsxpc import _codec, _messages
from nsxpc._framing import encode_frame
from nsxpc._protocol import CallReceived, PendingCall, Resolved, Violation, encode_arguments
from protocols.kitchen import Cookie, FrenchFry, Rind, Watermelon
from tests.fuzz import harness
from tests.fuzz.make_corpus import CASES
from tests.helpers.lab import Lab

from .strategies import INT64_MIN, UINT64_MAX, msgpack_trees, plain_values, typed_equal

SCALE = max(1, int(os.environ.get("NSXPC_FUZZ_EXAMPLES", "1")))


def examples(n: int) -> settings:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --------------------------------------------------------------------------- round trips through frames (A2)

floats = st.floats(allow_nan=True, allow_infinity=True)
ints64 = st.integers(min_value=INT64_MIN, max_value=UINT64_MAX)
cookies = st.builds(Cookie, st.text(max_size=20), ints64)
watermelons = st.builds(Watermelon, weight=floats, seedless=st.booleans())
fries = st.builds(FrenchFry, length=floats, salted=st.booleans())
rinds = st.builds(Rind, thickness=floats, seeds=st.lists(ints64, max_size=5))


def same(a: Any, b: Any) -> bool:
    """typed_equal, extended to the kitchen's coded classes (field by field, NaN-safe)."""
    if type(a) is not type(b):
        return False
    if type(a) is Cookie:
        return same(a.flavor, b.flavor) and same(a.chips, b.chips)
    if attrs.has(type(a)):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in attrs.fields(type(a)))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return typed_equal(a, b)


def call_through_frames(selector: str, values: list[Any]) -> list[Any]:
    """Encode a call as the client core does, feed its frame to a server core, return the
    delivered arguments (a byte at a time for short frames: a split must not matter)."""
    client, _ = harness.client_core(True)
    spec = harness.method(harness.SERVER_INTERFACE, selector)
    args, fds = encode_arguments(spec.args, values, selector, "argument", 32, None)
    assert fds == []
    frame = client.invoke(spec, args, 0, PendingCall(spec) if spec.wants_reply else None, _messages.ROOT_OBJECT)
    events = harness.drive(harness.server_core(True), frame, 1 if len(frame) < 200 else 0)
    assert len(events) == 1 and isinstance(events[0], CallReceived), events
    return events[0].args


def reply_through_frames(selector: str, values: list[Any]) -> list[Any]:
    """Encode a reply as the server core does and feed it to a client core with the call outstanding."""
    client, pending = harness.client_core(True)
    server = harness.server_core(True)
    seq = harness.PENDING_SELECTORS.index(selector) + 1
    frame, fds = server.reply(seq, harness.method(harness.SERVER_INTERFACE, selector), values)
    assert fds == []
    events = harness.drive(client, frame, 0, pending, harness.CLIENT_INTERFACE)
    assert len(events) == 1 and isinstance(events[0], Resolved) and events[0].error is None, events
    assert events[0].call is pending[seq]
    return events[0].values  # type: ignore[return-value]


@examples(100)
@given(value=plain_values)
def test_every_plain_type_round_trips_through_a_call_and_a_reply(value: Any) -> None:
    (got,) = call_through_frames("echo", [value])
    assert same(value, got), f"{value!r} arrived as {got!r}"
    (back,) = reply_through_frames("echo", [value])
    assert same(value, back), f"{value!r} came back as {back!r}"


@examples(100)
@given(cookie=cookies, melon=watermelons, fry_list=st.lists(fries, max_size=4), rind=rinds)
def test_every_coded_class_round_trips_in_its_slots(
    cookie: Cookie, melon: Watermelon, fry_list: list, rind: Rind
) -> None:  # type: ignore[type-arg]
    assert same(call_through_frames("echo_cookie", [cookie]), [cookie])
    assert same(call_through_frames("echo_maybe", [cookie]), [cookie])
    assert same(call_through_frames("echo_jar", [{cookie.flavor: cookie}]), [{cookie.flavor: cookie}])
    assert same(call_through_frames("echo_list", [[cookie]]), [[cookie]])
    assert same(call_through_frames("melon", [melon]), [melon])
    assert same(call_through_frames("echo_fries", [fry_list]), [fry_list])
    assert same(reply_through_frames("melon", [rind]), [rind])
    assert same(reply_through_frames("echo_fries", [fry_list]), [fry_list])
    assert same(reply_through_frames("echo_jar", [{"k": cookie}]), [{"k": cookie}])


@examples(100)
@given(a=ints64, b=st.text(max_size=40))
def test_scalar_slots_round_trip_exactly(a: int, b: str) -> None:
    assert same(call_through_frames("pair", [a, b]), [a, b])
    assert same(reply_through_frames("pair", [a, b]), [a, b])


#: Extension codes whose round trip needs a real fd or a proxy table: their owners'
#: integration tests cover them (tests/integration/test_fds.py, test_proxies.py).
NEEDS_A_PEER = {"EXT_FD", "EXT_SHM", "EXT_PROXY"}
#: The value type that travels under each other extension code, as plain_values generates it.
ROUND_TRIPPED = {
    "EXT_TUPLE": tuple,
    "EXT_SET": set,
    "EXT_FROZENSET": frozenset,
    "EXT_DICT": dict,
    "EXT_DATETIME": datetime.datetime,
    "EXT_UUID": uuid.UUID,
    "EXT_OBJECT": Cookie,
    "EXT_ENDPOINT": nsxpc.ListenerEndpoint,
    "EXT_ERROR": nsxpc.XPCError,
}


def test_every_extension_code_has_a_round_trip() -> None:
    """A new extension code must be added here, with a strategy that sends it."""
    codes = {name for name in dir(_codec) if name.startswith("EXT_")}
    assert codes == set(ROUND_TRIPPED) | NEEDS_A_PEER
    assert len({getattr(_codec, name) for name in codes}) == len(codes), "extension codes must be distinct"


# --------------------------------------------------------------------------- arbitrary bytes (A1 invariant)


@examples(400)
@given(mode=st.sampled_from(harness.MODES), chunk=st.integers(0, 16), data=st.binary(max_size=300))
def test_arbitrary_bytes_give_events_or_a_defined_error_in_every_phase(mode: str, chunk: int, data: bytes) -> None:
    harness.run_one(harness.fuzz_input(mode, data, chunk))


def frames_of(bodies: list[bytes]) -> bytes:
    return b"".join(encode_frame(b) for b in bodies)


envelopes = st.lists(
    st.one_of(
        # a known kind with random fields: the envelope checks and the decoders behind them
        st.tuples(st.integers(0, 7), st.lists(msgpack_trees, max_size=5)).map(lambda t: [t[0], *t[1]]),
        # a call to a real selector with random arguments
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([1, 1, 2]),
            st.sampled_from([*sorted(s for s in dir(Lab) if not s.startswith("_")), "__init__", ""]),
            st.lists(msgpack_trees, max_size=3),
        ).map(lambda t: [_messages.INVOKE, t[0], t[1], t[2], t[3]]),
        # an answer to a call that is (or is not) outstanding on the client
        st.tuples(st.integers(-1, 12), st.lists(msgpack_trees, max_size=3)).map(lambda t: [_messages.REPLY, *t]),
        st.tuples(st.integers(-1, 12), st.integers(-(2**63), 2**64 - 1), st.text(max_size=10)).map(
            lambda t: [_messages.FAILURE, *t]
        ),
    ),
    max_size=6,
)


@examples(50)
@given(mode=st.sampled_from(harness.MODES[:4]), messages=envelopes, chunk=st.integers(0, 9))
def test_random_envelopes_give_events_or_a_defined_error(mode: str, messages: list[Any], chunk: int) -> None:
    try:
        bodies = [_codec.pack(m) for m in messages]
    except nsxpc.EncodingError:
        return  # msgpack cannot carry it (an int over 64 bits): nothing to send
    harness.run_one(harness.fuzz_input(mode, frames_of(bodies), chunk))


# --------------------------------------------------------------------------- mutated valid streams (A3)

SEED_CASES = sorted(name for name in CASES if name.startswith("seed_"))


def _mutate(stream: bytes, kind: str, pos: int, arg: int) -> bytes:
    if not stream:
        return stream
    i = pos % len(stream)
    if kind == "flip":
        return stream[:i] + bytes([stream[i] ^ (1 << (arg % 8))]) + stream[i + 1 :]
    if kind == "set":
        return stream[:i] + bytes([arg % 256]) + stream[i + 1 :]
    if kind == "truncate":
        return stream[:i]
    if kind == "insert":
        return stream[:i] + bytes([arg % 256]) + stream[i:]
    if kind == "delete":
        return stream[:i] + stream[i + 1 :]
    if kind in ("skew", "big-length", "nfds") and len(stream) < 8:
        return stream[:-1]
    if kind == "skew":
        # change the first frame's declared length by a small amount either way
        (length,) = struct.unpack_from(">I", stream)
        return struct.pack(">I", max(0, length + (arg % 9) - 4)) + stream[4:]
    if kind == "big-length":
        return struct.pack(">I", (arg * 0x01010101) & 0xFFFFFFFF) + stream[4:]
    if kind == "nfds":
        return stream[:4] + struct.pack(">H", arg % 40) + stream[6:]
    if kind == "duplicate":
        return stream + stream
    raise AssertionError(kind)


MUTATIONS = ["flip", "set", "truncate", "insert", "delete", "skew", "big-length", "nfds", "duplicate"]


@examples(250)
@given(
    seed=st.sampled_from(SEED_CASES),
    steps=st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 2**16), st.integers(0, 2**16)), min_size=1, max_size=3
    ),
    chunk=st.integers(0, 9),
)
def test_mutated_valid_streams_give_allowed_events_or_a_defined_error(seed: str, steps: list, chunk: int) -> None:  # type: ignore[type-arg]
    mode, stream, _, _ = CASES[seed]
    for kind, pos, arg in steps:
        stream = _mutate(stream, kind, pos, arg)
    # run_one checks every delivered call against its slots with an independent walker
    harness.run_one(harness.fuzz_input(mode, stream, chunk))


def _replay(mode: str, stream: bytes, chunk: int = 0) -> list[Any]:
    if mode.startswith("server"):
        return harness.drive(harness.server_core(mode == "server-open"), stream, chunk)
    core, pending = harness.client_core(mode == "client-open")
    return harness.drive(core, stream, chunk, pending, harness.CLIENT_INTERFACE)


def _kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


@pytest.mark.parametrize("seed", SEED_CASES)
def test_truncation_at_every_offset_gives_the_complete_frames_then_waits(seed: str) -> None:
    mode, stream, kinds, _ = CASES[seed]
    ends = []  # offsets where each frame ends
    pos = 0
    while pos < len(stream):
        (length,) = struct.unpack_from(">I", stream, pos)
        pos += 8 + length
        ends.append(pos)
    step = max(1, len(stream) // 300)  # every offset of short streams; 300 of a long one
    for cut in [*range(0, len(stream), step), *(e - 1 for e in ends)]:
        complete = sum(1 for e in ends if e <= cut)
        got = _kinds(_replay(mode, stream[:cut]))
        assert got == list(kinds[:complete]), f"cut at {cut}: {got}"


@examples(200)
@given(seed=st.sampled_from(SEED_CASES), cuts=st.lists(st.integers(0, 2**16), max_size=8))
def test_any_split_of_a_valid_stream_gives_the_same_events(seed: str, cuts: list[int]) -> None:
    mode, stream, kinds, _ = CASES[seed]
    whole = _replay(mode, stream)
    assert _kinds(whole) == list(kinds)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    if mode.startswith("server"):
        core = harness.server_core(mode == "server-open")
        pending = None
        iface = harness.SERVER_INTERFACE
    else:
        core, pending = harness.client_core(mode == "client-open")
        iface = harness.CLIENT_INTERFACE
    events: list[Any] = []
    resolved: set[int] = set()
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        core.feed(stream[a:b])
        while (event := core.next_event()) is not None:
            harness.check_event(event, events, resolved, pending, iface)
            events.append(event)
    assert _kinds(events) == _kinds(whole)
    for x, y in zip(events, whole, strict=True):
        if isinstance(x, CallReceived):
            assert x.method is y.method and same(x.args, y.args)


def test_a_mutation_that_names_another_selector_is_checked_against_that_selector() -> None:
    """A3: a bit flip that turns ``add`` into another selector's name must be decoded
    against the new selector's slots (here: refused), never the old one's."""
    stream = encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "add", [1, 2]]))
    flipped = stream.replace(b"\xa3add", b"\xa3adc")
    events = _replay("server-open", flipped)
    assert _kinds(events) == ["CallRejected"]
    # "hold" takes one int: the two-argument call of "add" must not slip through under it
    renamed = encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "hold", [1, 2]]))
    assert _kinds(_replay("server-open", renamed)) == ["CallRejected"]


def test_the_invariant_checker_catches_a_call_outside_its_slots() -> None:
    """The harness must be able to fail: a forged event with a disallowed value is caught."""
    spec = harness.method(harness.SERVER_INTERFACE, "add")
    forged = CallReceived(1, 1, object(), spec, [1.5, 2])
    with pytest.raises(harness.InvariantBroken, match="outside its slot"):
        harness.check_event(forged, [], set(), None, harness.SERVER_INTERFACE)
    with pytest.raises(harness.InvariantBroken, match="after the terminal"):
        harness.check_event(forged, [Violation(harness.ProtocolError("x"))], set(), None, harness.SERVER_INTERFACE)
    assert not harness.within([1, [math.nan]], frozenset({list, int}))
