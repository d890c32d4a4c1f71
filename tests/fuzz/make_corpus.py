"""Write the committed frame-level corpus of tests/fuzz/corpus/ (reliability.md A1, A4, A6).

Run from the project root: ``python -m tests.fuzz.make_corpus``. Deterministic:
rerunning it leaves ``git status`` clean (tests/unit/test_fuzz_corpus.py checks
that the committed files are exactly what this module generates).

Each file is one fuzz input of tests/fuzz/harness.py: a mode byte, a chunking
byte, then a byte stream as a peer could send it (whole frames, headers
included). ``CASES`` says what each must give: the kinds of the events the core
produces, in order, and a fragment of the terminal or rejection error's text.
Valid seeds (``seed_*``) start the atheris run with one frame per selector and
argument shape; hostile cases (``bad_*``) add what the body-level corpus of
tests/corpus/hostile cannot express: frame headers, envelopes, handshake order,
answers to calls never made, and a malformed payload for every extension code.

A crash that atheris finds becomes a ``crash_*`` case here (A6: the corpus only grows).
"""

from __future__ import annotations

import datetime
import struct
import uuid
from pathlib import Path
from typing import Any

from nsxpc import _codec, _messages
from nsxpc._coding import EncodeContext, encode_value
from nsxpc._errors import RemoteError, TimedOut
from nsxpc._framing import encode_frame
from nsxpc._values import ListenerEndpoint
from protocols.kitchen import Cookie, FrenchFry, Rind, Watermelon
from tests.fuzz.harness import PENDING_SELECTORS, fuzz_input, hello_frame, welcome_frame

OUT = Path(__file__).resolve().parent / "corpus"

E = _codec.ExtType
P = _codec.pack


def wire(value: object) -> object:
    return encode_value(value, EncodeContext())


def invoke(selector: str, args: list[Any], seq: int = 1, target: int = 1) -> bytes:
    return encode_frame(P([_messages.INVOKE, seq, target, selector, args]))


def reply(seq: int, args: list[Any]) -> bytes:
    return encode_frame(P([_messages.REPLY, seq, args]))


def failure(seq: int, code: int, message: str) -> bytes:
    return encode_frame(P([_messages.FAILURE, seq, code, message]))


def header(length: int, nfds: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">IHH", length, nfds, flags)


def nested_ext(code: int, levels: int, wrap: Any) -> Any:
    inner: Any = E(code, P([]))
    for _ in range(levels):
        inner = E(code, P(wrap(inner)))
    return inner


PLAIN_SAMPLES: dict[str, object] = {
    "none": None,
    "bool": True,
    "int_min": -(2**63),
    "uint64_max": 2**64 - 1,
    "float_nan": float("nan"),
    "float_neg_inf": float("-inf"),
    "str": "héllo",
    "bytes": b"\x00\xff",
    "list": [1, [2, [3]]],
    "tuple": (1, ("a",)),
    "set": {1, 2, -3},  # ints only: str hashing is randomised, the file must be reproducible
    "frozenset": frozenset({(1, 2)}),
    "dict_str": {"a": {"b": [1]}},
    "dict_other_keys": {1: "a", (1, 2): None},
    "datetime": datetime.datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=datetime.UTC),
    "uuid": uuid.UUID(int=0x1234),
    "endpoint": ListenerEndpoint(path="/run/x.sock", token=b"t" * 8),
    "error": RemoteError("ValueError: no"),
    "timed_out": TimedOut("late"),
}

OPEN = "server-open"
CLIENT = "client-open"

# name -> (mode, stream, expected event kinds, fragment of the last error's text or "")
CASES: dict[str, tuple[str, bytes, tuple[str, ...], str]] = {}


def case(name: str, mode: str, stream: bytes, kinds: tuple[str, ...], fragment: str = "") -> None:
    assert name not in CASES, name
    CASES[name] = (mode, stream, kinds, fragment)


# --------------------------------------------------------------------------- valid seeds

case("seed_hello", "server-hello", hello_frame(), ("HelloReceived",))
case("seed_hello_then_call", "server-hello", hello_frame() + invoke("add", [1, 2]), ("HelloReceived", "CallReceived"))
for _name, _value in PLAIN_SAMPLES.items():
    case(f"seed_echo_{_name}", OPEN, invoke("echo", [wire(_value)]), ("CallReceived",))
_LAB_CALLS: dict[str, list[Any]] = {
    "calls_received": [],
    "echo_list": [[wire(Cookie("oat", 3))]],
    "echo_fries": [[wire(FrenchFry(length=2.5))]],
    "echo_jar": [{"a": wire(Cookie("choc", 7))}],
    "echo_maybe": [None],
    "echo_maybe_cookie": [wire(Cookie("x", 1))],
    "echo_cookie": [wire(Cookie("y", 2))],
    "melon": [wire(Watermelon(weight=3.5, seedless=True))],
    "add": [2, 3],
    "pair": [1, "b"],
    "nothing": [],
    "recorded": [],
    "busy": [4],
    "max_busy": [],
    "hold": [1],
    "held_count": [],
    "release_held": [],
    "fail": ["boom"],
    "drop": [],
    "crash": [],
    "whoami": [],
    "ping_client": [3],
    "make_listener": [],
    "call_endpoint": [wire(ListenerEndpoint(path="/run/k.sock", token=b"")), 1, 2],
}
for _name, _args in _LAB_CALLS.items():
    _selector = "echo_maybe" if _name == "echo_maybe_cookie" else _name
    case(f"seed_call_{_name}", OPEN, invoke(_selector, _args), ("CallReceived",))
case("seed_one_way_record", OPEN, invoke("record", [7], seq=0), ("CallReceived",))
case("seed_release", OPEN, encode_frame(P([_messages.RELEASE, 5])), ("Released",))
case(
    "seed_pipelined",
    OPEN,
    b"".join(invoke("add", [i, i], seq=i + 1) for i in range(20)),
    ("CallReceived",) * 20,
)
case("seed_welcome", "client-welcome", welcome_frame(), ("Welcomed",))
case("seed_refuse", "client-welcome", encode_frame(P([_messages.REFUSE, 4099, "go away"])), ("Refused",), "go away")
_REPLIES: dict[str, list[Any]] = {
    "echo": [wire({"x": (1, 2)})],
    "echo_list": [[wire(Cookie("a", 1))]],
    "echo_fries": [[wire(FrenchFry(length=1.0))]],
    "echo_jar": [{"k": wire(Cookie("b", 2))}],
    "echo_maybe": [None],
    "melon": [wire(Rind(thickness=1.0, seeds=[1]))],
    "pair": [2, "bb"],
    "nothing": [],
    "add": [5],
}
for _seq, _selector in enumerate(PENDING_SELECTORS, start=1):
    case(f"seed_reply_{_selector}", CLIENT, reply(_seq, _REPLIES[_selector]), ("Resolved",))
case("seed_failure", CLIENT, failure(1, 4103, "ValueError: no"), ("Resolved",))
case("seed_failure_unknown_code", CLIENT, failure(2, 99_999, "odd"), ("Resolved",))
case("seed_callback", CLIENT, invoke("progress", [3], seq=0), ("CallReceived",))
case("seed_question", CLIENT, invoke("question", ["why?"], seq=1), ("CallReceived",))

# --------------------------------------------------------------------------- hostile frames

case("bad_frame_4gib", OPEN, header(2**32 - 1) + b"x", ("Violation",), "exceeds")
case("bad_frame_cap_plus_one", OPEN, header(4 * 1024 * 1024 + 1), ("Violation",), "exceeds")
case("bad_frame_65535_fds", OPEN, header(1, 65535) + b"\xc0", ("Violation",), "file descriptors")
case("bad_frame_17_fds", OPEN, header(1, 17) + b"\xc0", ("Violation",), "file descriptors")
case("bad_frame_flags", OPEN, header(1, 0, 1) + b"\xc0", ("Violation",), "flags")
case("bad_frame_fds_missing", OPEN, encode_frame(P([_messages.RELEASE, 5]), 1), ("Violation",), "arrived")
case("bad_frame_length_skew_short", OPEN, header(2) + P([_messages.RELEASE, 5]), ("Violation",), "")
case("bad_frame_length_skew_long", OPEN, header(5) + P([_messages.RELEASE, 5]) + header(0), ("Violation",), "")
case("bad_frame_empty_body", OPEN, header(0), ("Violation",), "")
case("bad_hello_garbage", "server-hello", b"GET / HTTP/1.1\r\n\r\n", ("Violation",), "flags")
case("bad_hello_http_in_frame", "server-hello", encode_frame(b"GET / HTTP/1.1\r\n\r\n"), ("BadHello",), "")
case("bad_hello_version", "server-hello", encode_frame(P([0, "nsxpc", 2, "nsxpc", b"", {}])), ("BadHello",), "version")
case("bad_hello_kind", "server-hello", encode_frame(P([0, "nsxpc", 1, "other", b"", {}])), ("BadHello",), "other")
case("bad_hello_short", "server-hello", encode_frame(P([0, "nsxpc", 1])), ("BadHello",), "")
case("bad_call_before_hello", "server-hello", invoke("add", [1, 2]), ("BadHello",), "handshake")
case("bad_second_hello", OPEN, hello_frame(), ("Violation",), "")
case("bad_welcome_to_server", OPEN, welcome_frame(), ("Violation",), "")
case("bad_unknown_kind", OPEN, encode_frame(P([42, 1])), ("Violation",), "unknown message kind")
case("bad_kind_not_int", OPEN, encode_frame(P(["3", 1, 1, "add", []])), ("Violation",), "")
case("bad_not_array", OPEN, encode_frame(P({"kind": 3})), ("Violation",), "")
case("bad_invoke_arity", OPEN, encode_frame(P([3, 1, 1, "add"])), ("Violation",), "malformed INVOKE")
case("bad_invoke_seq_str", OPEN, encode_frame(P([3, "1", 1, "add", [1, 2]])), ("Violation",), "malformed INVOKE")
case("bad_invoke_seq_negative", OPEN, invoke("add", [1, 2], seq=-1), ("Violation",), "negative")
case("bad_invoke_args_map", OPEN, encode_frame(P([3, 1, 1, "add", {"a": 1}])), ("Violation",), "malformed INVOKE")
case("bad_invoke_seq_bool", OPEN, encode_frame(P([3, True, 1, "add", [1, 2]])), ("Violation",), "malformed INVOKE")
case("bad_reply_to_server", OPEN, reply(1, [1]), ("Violation",), "never made")
case("bad_reply_never_made", CLIENT, reply(99, [1]), ("Violation",), "never made")
case("bad_reply_seq_zero", CLIENT, reply(0, [1]), ("Violation",), "never made")
case("bad_failure_never_made", CLIENT, failure(10_000, 4103, "x"), ("Violation",), "never made")
case("bad_reply_twice", CLIENT, reply(9, [5]) + reply(9, [5]), ("Resolved",), "")  # the second is discarded
case("bad_reply_wrong_type", CLIENT, reply(9, ["five"]), ("Resolved",), "")  # ends with ReplyInvalid
case("bad_reply_extra_values", CLIENT, reply(9, [5, 6]), ("Resolved",), "")
case("bad_welcome_version", "client-welcome", encode_frame(P([1, "nsxpc", 7, {}])), ("Violation",), "version")
case("bad_welcome_then_garbage", "client-welcome", welcome_frame() + b"\xff" * 16, ("Welcomed", "Violation"), "")
case("bad_refuse_code_str", "client-welcome", encode_frame(P([2, "x", "y"])), ("Violation",), "")
case("bad_call_unknown_selector", OPEN, invoke("__init__", []), ("CallRejected",), "not in protocol")
case("bad_call_dunder_class", OPEN, invoke("__class__", []), ("CallRejected",), "not in protocol")
case("bad_call_unknown_target", OPEN, invoke("add", [1, 2], target=2**64 - 1), ("CallRejected",), "no exported")
case("bad_call_one_way_for_reply", OPEN, invoke("add", [1, 2], seq=0), ("CallRejected",), "reply block")
case("bad_call_nan_for_int", OPEN, invoke("add", [float("nan"), 1]), ("CallRejected",), "not allowed")
case("bad_call_bool_for_int", OPEN, invoke("add", [True, 1]), ("CallRejected",), "")
case("bad_call_potato", OPEN, invoke("echo", [E(7, P(["kitchen.Potato", {"variety": "x"}]))]), ("CallRejected",), "")
case("bad_call_cookie_in_echo", OPEN, invoke("echo", [wire(Cookie("a", 1))]), ("CallRejected",), "not allowed")
case(
    "bad_call_cookie_missing_key", OPEN, invoke("echo_cookie", [E(7, P(["kitchen.Cookie", {}]))]), ("CallRejected",), ""
)
case(
    "bad_call_cookie_wrong_field",
    OPEN,
    invoke("echo_cookie", [E(7, P(["kitchen.Cookie", {"flavor": 1, "chips": "x"}]))]),
    ("CallRejected",),
    "",
)
case(
    "bad_call_duplicate_field_keys",
    OPEN,
    invoke("echo_cookie", [E(7, b"\x92\xaekitchen.Cookie\x82\xa6flavor\xa1a\xa6flavor\xa1b")]),
    ("CallRejected",),
    "",
)
# A malformed payload for every extension code of the fixed table, and codes outside it.
_EXT_PAYLOADS: dict[str, Any] = {
    "tuple_c1": E(1, b"\xc1"),
    "set_not_array": E(2, P(5)),
    "set_unhashable": E(2, P([[1]])),
    "frozenset_holding_set": E(3, P([E(2, P([1]))])),
    "dict_odd": E(4, P([1, 2, 3])),
    "dict_unhashable_key": E(4, P([{"a": 1}, 2])),
    "datetime_7_bytes": E(5, b"\0" * 7),
    "datetime_max": E(5, struct.pack(">q", 2**63 - 1)),
    "uuid_15_bytes": E(6, b"\0" * 15),
    "object_name_int": E(7, P([5, {}])),
    "object_fields_list": E(7, P(["kitchen.Cookie", [1]])),
    "endpoint_types": E(8, P([1, 2])),
    "endpoint_not_msgpack": E(8, b"\xc1"),
    "fd_without_fds": E(9, P(0)),
    "fd_negative": E(9, P(-1)),
    "shm_without_fds": E(10, P([0, 10])),
    "error_code_str": E(11, P(["x", "m", True])),
    "error_short": E(11, P([4097])),
    "proxy_in_value_slot": E(12, P(5)),
    "ext_13": E(13, b""),
    "ext_timestamp": b"\xd6\xff\x00\x00\x00\x00",
    "tuple_bomb_3000": nested_ext(1, 3000, lambda inner: [inner]),
    "dict_bomb_3000": nested_ext(4, 3000, lambda inner: [1, inner]),
}
for _name, _payload in _EXT_PAYLOADS.items():
    if isinstance(_payload, bytes):  # a raw msgpack item spliced in
        _stream = encode_frame(b"\x95\x03\x01\x01\xa4echo\x91" + _payload)
    else:
        _stream = invoke("echo", [_payload])
    case(f"bad_ext_{_name}", OPEN, _stream, ("CallRejected",), "")
case("seed_echo_error_70k", OPEN, invoke("echo", [E(11, P([4097, "m" * 70_000, False]))]), ("CallReceived",))
# The rejected call leaves the connection usable.
case("bad_then_good", OPEN, invoke("add", ["x", 1]) + invoke("add", [1, 2], seq=2), ("CallRejected", "CallReceived"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.bin"):
        if old.stem not in CASES:
            old.unlink()
    for name, (mode, stream, _, _) in CASES.items():
        (OUT / f"{name}.bin").write_bytes(fuzz_input(mode, stream))


if __name__ == "__main__":
    main()
