"""Secure coding end to end, through a real service process (API.md sections 2 and 3)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pytest

import nsxpc
from protocols.kitchen import Cookie, FrenchFry, Kitchen, Potato, Rind, Watermelon, kitchen_interface
from tests.helpers.lab import Lab, lab_interface
from tests.integration.conftest import Child, Connections, Recorder, nested_lists, sync_proxy


def same(a: Any, b: Any) -> bool:
    """Equal, and of exactly the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, (set, frozenset)):
        return a == b and sorted(map(repr, a)) == sorted(map(repr, b))
    return bool(a == b)


_UTC = datetime.UTC
PLAIN_VALUES = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int64-min": -(2**63),
    "uint64-max": 2**64 - 1,
    "float": 2.5,
    "negative-float": -0.125,
    "str": "gâteau 🍪",
    "empty-str": "",
    "bytes": b"\x00\xffcrumbs",
    "list": [1, "two", 3.0, None],
    "tuple": (1, "two", (3, 4)),
    "empty-tuple": (),
    "dict": {"a": 1, "b": [2, 3]},
    "dict-non-str-keys": {1: "one", (2, 3): "pair", b"k": None},
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "empty-set": set(),
    "utc-datetime": datetime.datetime(2024, 2, 29, 12, 30, 45, 123456, tzinfo=_UTC),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "endpoint": nsxpc.ListenerEndpoint(path="/tmp/x.sock", token=b"\x01\x02"),
    "xpc-error": nsxpc.XPCError("plain error"),
    "xpc-error-subclass": nsxpc.TimedOut("too slow"),
    "nested": [(1, frozenset({2})), {"k": ({3}, b"4")}, [[[(5,)]]]],
    "bool-in-list-stays-bool": [True, 1, False, 0],
}


@pytest.fixture
def lab(lab_server: Child, connections: Connections) -> Any:
    return sync_proxy(connections.lab(lab_server.name))


@pytest.mark.parametrize("case", list(PLAIN_VALUES))
def test_plain_values_round_trip_with_their_exact_types(case: str, lab: Any):
    value = PLAIN_VALUES[case]
    back = lab.echo(value)
    assert same(back, value), f"{value!r} came back as {back!r}"


def test_aware_datetime_comes_back_as_aware_utc_with_microseconds(lab: Any):
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    sent = datetime.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=india)
    back = lab.echo(sent)
    assert type(back) is datetime.datetime
    assert back == sent
    assert back.utcoffset() == datetime.timedelta(0)
    assert back.microsecond == 999999
    assert back.replace(tzinfo=None) == datetime.datetime(1999, 12, 31, 18, 29, 59, 999999)
    before_epoch = datetime.datetime(1901, 1, 1, 0, 0, 0, 1, tzinfo=_UTC)
    assert lab.echo(before_epoch) == before_epoch


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2024, 1, 1, 12, 0),  # naive
        [datetime.datetime(2024, 1, 1)],  # naive, nested
        2**64,  # larger than 64 bits
        -(2**63) - 1,
        object(),  # not codable
        Potato("russet"),  # a class no plain slot allows
        nested_lists(nsxpc.Limits().max_depth + 8),  # deeper than max_depth
    ],
    ids=[
        "naive-datetime",
        "nested-naive-datetime",
        "int-too-big",
        "int-too-small",
        "object",
        "secure-class",
        "too-deep",
    ],
)
def test_an_unsendable_value_raises_encoding_error_from_the_call_sends_nothing_and_calls_no_handler(
    value: Any, lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    sync = sync_proxy(conn)
    calls_before = sync.calls_received()
    out = Recorder()
    with pytest.raises(nsxpc.EncodingError) as info:
        conn.remote_object_proxy_with_error_handler(out.error()).echo(value, out.reply())
    assert info.value.code == 4866
    with pytest.raises(nsxpc.EncodingError):
        conn.remote_object_proxy.echo(value, out.reply())
    with pytest.raises(nsxpc.EncodingError):
        conn.synchronous_remote_object_proxy_with_error_handler(out.error()).echo(value, out.reply())
    with pytest.raises(nsxpc.EncodingError):
        sync.echo(value)
    assert sync.calls_received() == calls_before, "nothing was sent"
    assert out.snapshot() == [], "no reply block or error handler ran"


def test_secure_coding_classes_round_trip(lab: Any):
    cookie = lab.echo_cookie(Cookie("chocolate", 12))
    assert type(cookie) is Cookie and cookie == Cookie("chocolate", 12)
    rind = lab.melon(Watermelon(weight=30.0, seedless=True))
    assert type(rind) is Rind and rind == Rind(thickness=3.0, seeds=[3, 1, 4])
    assert type(rind.seeds) is list


def test_typed_collection_slots_round_trip(lab: Any):
    fries = [FrenchFry(length=1.5), FrenchFry(length=2.0, salted=False)]
    back = lab.echo_fries(fries)
    assert type(back) is list and back == fries and all(type(f) is FrenchFry for f in back)
    jar = {"morning": Cookie("oat", 3), "night": Cookie("choc", 9)}
    back = lab.echo_jar(jar)
    assert type(back) is dict and back == jar and all(type(v) is Cookie for v in back.values())
    assert lab.echo_maybe(None) is None
    assert lab.echo_maybe(Cookie("lemon", 0)) == Cookie("lemon", 0)
    assert lab.echo_fries([]) == []


@pytest.mark.parametrize(
    ("selector", "value"),
    [
        ("echo_fries", [Cookie("oat", 1)]),  # list[FrenchFry]
        ("echo_fries", (FrenchFry(length=1.0),)),  # a tuple is not a list
        ("echo_jar", {"a": FrenchFry(length=1.0)}),  # dict[str, Cookie]
        ("echo_jar", {1: Cookie("oat", 1)}),  # keys are str
        ("echo_maybe", FrenchFry(length=1.0)),  # Cookie | None
        ("echo_cookie", None),
        ("melon", Rind(thickness=1.0, seeds=[])),
        ("add", "1"),
    ],
)
def test_values_failing_the_annotation_raise_encoding_error(
    selector: str, value: Any, lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    sync = sync_proxy(conn)
    before = sync.calls_received()
    args = (value, 2) if selector == "add" else (value,)
    with pytest.raises(nsxpc.EncodingError):
        getattr(sync, selector)(*args)
    assert sync.calls_received() == before


def test_a_subclass_of_an_allowed_class_is_refused(lab_server: Child, connections: Connections):
    class SpecialCookie(Cookie):
        pass

    @nsxpc.secure_coding
    @attrs.frozen
    class CurlyFry(FrenchFry):
        pass

    conn = connections.lab(lab_server.name)
    sync = sync_proxy(conn)
    before = sync.calls_received()
    with pytest.raises(nsxpc.EncodingError):
        sync.echo_cookie(SpecialCookie("oat", 1))
    with pytest.raises(nsxpc.EncodingError):
        sync.echo_fries([FrenchFry(length=1.0), CurlyFry(length=2.0)])
    with pytest.raises(nsxpc.EncodingError):
        sync.echo_list([SpecialCookie("oat", 1)])
    assert sync.calls_received() == before


def test_set_classes_replaces_a_slots_allowlist(lab_server: Child, connections: Connections):
    default = nsxpc.Interface(Lab)
    assert Cookie not in default.classes_for("echo_list", argument_index=0)
    plain = sync_proxy(connections.lab(lab_server.name, interface=default))
    assert plain.echo_list([]) == []
    with pytest.raises(nsxpc.EncodingError):
        plain.echo_list([Cookie("oat", 1)])  # a bare list allows plain values only

    iface = lab_interface()  # set_classes({list, Cookie}) on the argument and the reply
    assert iface.classes_for("echo_list", argument_index=0) == frozenset({list, Cookie})
    assert iface.classes_for("echo_list", argument_index=0, of_reply=True) == frozenset({list, Cookie})
    widened = sync_proxy(connections.lab(lab_server.name, interface=iface))
    back = widened.echo_list([Cookie("oat", 1), [Cookie("choc", 2)]])
    assert back == [Cookie("oat", 1), [Cookie("choc", 2)]] and type(back[1][0]) is Cookie
    with pytest.raises(nsxpc.EncodingError):
        widened.echo_list([1])  # replaced, not widened: int is no longer allowed


def test_the_receiver_refuses_a_class_its_own_allowlist_does_not_list(lab_server: Child, connections: Connections):
    iface = lab_interface()
    iface.set_classes({list, Cookie, Potato}, "echo_list", argument_index=0)  # wider than the service's
    conn = connections.lab(lab_server.name, interface=iface)
    sync = sync_proxy(conn)
    before = sync.calls_received()
    out = Recorder()
    conn.remote_object_proxy_with_error_handler(out.error()).echo_list([Potato("russet")], out.reply())
    [(kind, _, err)] = out.wait_len(1)
    assert kind == "error" and type(err) is nsxpc.DecodingError and err.code == 4864, err
    with pytest.raises(nsxpc.DecodingError):
        sync.echo_list([Cookie("oat", 1), Potato("russet")])
    assert sync.calls_received() == before, "the service's method never ran"
    assert sync.echo_list([Cookie("oat", 1)]) == [Cookie("oat", 1)], "the connection stays up"


def test_the_reply_side_enforces_the_clients_allowlist(lab_server: Child, connections: Connections):
    iface = lab_interface()
    iface.set_classes({list}, "echo_list", argument_index=0, of_reply=True)
    # The argument may carry a Cookie, the reply may not: the reply fails to decode here.
    conn = connections.lab(lab_server.name, interface=iface)
    with pytest.raises(nsxpc.ReplyInvalid):
        sync_proxy(conn).echo_list([Cookie("oat", 1)])


def test_apples_kitchen_over_a_real_service(spawn: Callable[..., Child], service_name: str, connections: Connections):
    spawn("kitchen_server.py", service_name)
    conn = connections.make(mach_service_name=service_name)
    conn.remote_object_interface = kitchen_interface()
    conn.resume()
    proxy = conn.remote_object_proxy
    proxy.feed_me_a_cookie(Cookie("chocolate", 7))
    proxy.feed_me_a_cookie(Cookie("oat", 2))
    sync = sync_proxy(conn)
    eaten = sync.cookies_eaten()
    assert eaten == [Cookie("chocolate", 7), Cookie("oat", 2)] and all(type(c) is Cookie for c in eaten)
    rind = sync.feed_me_a_watermelon(Watermelon(weight=12.0))
    assert rind == Rind(thickness=1.2, seeds=[7, 7])
    assert sync.feed_me_fries([FrenchFry(length=3.0), FrenchFry(length=4.0)]) == (2, "yum")

    # Without set_classes the fries' list admits only plain values: refused at the call.
    bare = connections.make(mach_service_name=service_name)
    bare.remote_object_interface = nsxpc.Interface(Kitchen)
    bare.resume()
    with pytest.raises(nsxpc.EncodingError):
        sync_proxy(bare).feed_me_fries([FrenchFry(length=3.0)])
    with pytest.raises(nsxpc.EncodingError):
        sync_proxy(conn).feed_me_fries([Potato("russet")])


def test_a_value_near_the_frame_cap_travels_and_one_over_it_is_refused_at_the_call(
    lab_server: Child, connections: Connections
):
    conn = connections.lab(lab_server.name)
    events = Recorder()
    conn.interruption_handler = events.event("interrupted")
    sync = sync_proxy(conn)
    cap = nsxpc.Limits().max_frame_size
    # str, not bytes: bytes over Limits.shared_memory_threshold travel outside the frame
    # (docs/FDS.md), a str always inside it.
    assert sync.echo("x" * (cap - 1024)) == "x" * (cap - 1024)
    before = sync.calls_received()
    # Limits apply to what a peer sends *and to what we send it*: an argument that makes a
    # frame over the cap cannot be sent, so the call itself raises EncodingError.
    with pytest.raises(nsxpc.EncodingError):
        sync.echo("x" * (cap + 1))
    assert sync.add(1, 2) == 3
    assert sync.calls_received() == before + 1
    assert events.snapshot() == [], "the connection was not interrupted"
