"""The exported-object table and objects by proxy in the sans-I/O core (NSXPC X6).

No sockets, no threads: two ConnectionCore objects and an ExportTable, with the
runtime's export/import hooks played by plain functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pytest

import nsxpc
from nsxpc import _codec, _messages
from nsxpc._framing import encode_frame
from nsxpc._protocol import (
    CallReceived,
    CallRejected,
    ConnectionCore,
    ExportTable,
    HelloReceived,
    PendingCall,
    Released,
    Resolved,
    Welcomed,
    encode_arguments,
    interface_of,
)


@nsxpc.protocol
class Listener(Protocol):
    def heard(self, text: str) -> None: ...


@nsxpc.protocol
class Radio(Protocol):
    def tune(self, listener: Listener, reply: Callable[[Listener], None]) -> None: ...
    def plain(self, listener: Any, reply: Callable[[int], None]) -> None: ...


class Obj:
    pass


# --------------------------------------------------------------------------- the table


def test_ids_start_after_the_root_and_are_never_reused() -> None:
    table = ExportTable()
    iface = nsxpc.Interface(Listener)
    table[_messages.ROOT_OBJECT] = (Obj(), iface)
    a, b = Obj(), Obj()
    assert table.export(a, iface) == 2
    assert table.export(b, iface) == 3
    assert table.release(2) == (True, (a, iface))
    c = Obj()
    assert table.export(c, iface) == 4  # 2 is gone for good
    assert table.exported_count == 2


def test_an_object_exported_again_keeps_its_id_with_a_count() -> None:
    table = ExportTable()
    iface = nsxpc.Interface(Listener)
    obj = Obj()
    ident = table.export(obj, iface)
    assert table.export(obj, iface) == ident
    assert table.references(ident) == 2
    assert table.release(ident) == (True, None)  # one reference left: still exported
    assert table[ident][0] is obj
    known, entry = table.release(ident)
    assert known and entry is not None and entry[0] is obj
    assert ident not in table and table.exported_count == 0
    assert table.release(ident) == (False, None)  # a release too many: unknown


def test_the_same_object_under_another_interface_gets_another_id() -> None:
    table = ExportTable()
    obj = Obj()
    assert table.export(obj, nsxpc.Interface(Listener)) != table.export(obj, nsxpc.Interface(Listener))


def test_the_root_object_is_never_released_and_survives_a_drop() -> None:
    table = ExportTable()
    root = (Obj(), nsxpc.Interface(Listener))
    table[_messages.ROOT_OBJECT] = root
    table.export(Obj(), root[1])
    assert table.release(_messages.ROOT_OBJECT) == (True, None)
    generation = table.generation
    dropped = table.drop_exported()
    assert len(dropped) == 1 and table.exported_count == 0
    assert table[_messages.ROOT_OBJECT] is root
    assert table.generation == generation + 1
    table.clear()
    assert not table and table.exported_count == 0


# --------------------------------------------------------------------------- slots


def test_a_protocol_annotation_and_set_interface_make_by_proxy_slots() -> None:
    iface = nsxpc.Interface(Radio)
    tune = iface.method("tune")
    assert tune is not None and tune.reply is not None
    assert interface_of(tune.args[0]).protocol is Listener
    assert interface_of(tune.reply[0]).protocol is Listener
    assert iface.interface_for("plain", 0) is None
    sub = nsxpc.Interface(Listener)
    iface.set_interface(sub, "plain", 0)
    plain = iface.method("plain")
    assert plain is not None
    assert interface_of(plain.args[0]) is sub  # the very interface given
    # interface_for hands out the slot's interface: changing it changes the slot.
    got = iface.interface_for("tune", 0)
    assert got is not None
    tune = iface.method("tune")
    assert tune is not None and interface_of(tune.args[0]) is got


# --------------------------------------------------------------------------- on the wire


class Side:
    """One core with its table and hooks, as the runtime sets them up."""

    def __init__(self, client: bool, exported: object = None, iface: nsxpc.Interface | None = None) -> None:
        self.table = ExportTable()
        if exported is not None:
            assert iface is not None
            self.table[_messages.ROOT_OBJECT] = (exported, iface)
        self.core = ConnectionCore(client=client, exports=self.table)
        self.imported: list[tuple[int, nsxpc.Interface]] = []
        self.core.export_object = lambda value, slot: self.table.export(value, interface_of(slot))
        self.core.import_proxy = self._import

    def _import(self, ident: int, slot: Any) -> object:
        self.imported.append((ident, interface_of(slot)))
        return ("proxy", ident)


def pair() -> tuple[Side, Side, nsxpc.Interface]:
    iface = nsxpc.Interface(Radio)
    client = Side(True)
    server = Side(False, Obj(), iface)
    (hello,) = server.core.receive(client.core.hello())
    assert isinstance(hello, HelloReceived)
    (welcomed,) = client.core.receive(server.core.welcome())
    assert isinstance(welcomed, Welcomed)
    return client, server, iface


def test_an_object_passed_by_proxy_arrives_as_an_import_and_comes_back_in_the_reply() -> None:
    client, server, iface = pair()
    method = iface.method("tune")
    assert method is not None
    listener = Obj()
    args, fds = encode_arguments(method.args, [listener], "tune", "argument", 32, client.core.export_object)
    call = PendingCall(method)
    (received,) = server.core.receive(client.core.invoke(method, args, len(fds), call, _messages.ROOT_OBJECT))
    assert isinstance(received, CallReceived)
    assert received.args == [("proxy", 2)]
    assert server.imported[0][0] == 2 and server.imported[0][1].protocol is Listener
    assert client.table[2][0] is listener
    # The server replies with an object of its own, by proxy.
    mine = Obj()
    frame, _ = server.core.reply(received.seq, method, [mine])
    (resolved,) = client.core.receive(frame)
    assert isinstance(resolved, Resolved) and resolved.values == [("proxy", 2)]
    assert server.table[2][0] is mine
    # RELEASE travels as [6, id].
    (released,) = client.core.receive(server.core.release(2))
    assert released == Released(2)


def test_a_call_to_an_unknown_or_released_id_is_refused_with_a_protocol_error() -> None:
    _, server, _ = pair()
    for target in (2, 99):
        body = _codec.pack([_messages.INVOKE, 5, target, "heard", ["x"]])
        (rejected,) = server.core.receive(encode_frame(body))
        assert isinstance(rejected, CallRejected)
        assert isinstance(rejected.error, nsxpc.ProtocolError)
        assert f"id {target}" in rejected.error.message
    # A call to an object passed by proxy reaches it, with its own interface.
    listener = Obj()
    ident = server.table.export(listener, nsxpc.Interface(Listener))
    (received,) = server.core.receive(encode_frame(_codec.pack([_messages.INVOKE, 0, ident, "heard", ["x"]])))
    assert isinstance(received, CallReceived) and received.obj is listener and received.args == ["x"]
    # ...until it is released.
    server.table.release(ident)
    (rejected,) = server.core.receive(encode_frame(_codec.pack([_messages.INVOKE, 0, ident, "heard", ["x"]])))
    assert isinstance(rejected, CallRejected) and "already released" in rejected.error.message


@pytest.mark.parametrize("raw", ["a value", _codec.ExtType(_codec.EXT_PROXY, _codec.pack("x")),
                                 _codec.ExtType(_codec.EXT_PROXY, _codec.pack(0))])  # fmt: skip
def test_a_by_proxy_slot_refuses_anything_but_a_proxy_reference(raw: object) -> None:
    _, server, _ = pair()
    (rejected,) = server.core.receive(encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "tune", [raw]])))
    assert isinstance(rejected, CallRejected) and isinstance(rejected.error, nsxpc.DecodingError)
    assert server.imported == []


def test_a_proxy_reference_in_a_slot_without_an_interface_is_refused() -> None:
    _, server, _ = pair()
    raw = _codec.ExtType(_codec.EXT_PROXY, _codec.pack(2))
    (rejected,) = server.core.receive(encode_frame(_codec.pack([_messages.INVOKE, 1, 1, "plain", [raw]])))
    assert isinstance(rejected, CallRejected) and "no interface" in rejected.error.message


def test_encoding_a_proxy_without_an_exporter_is_an_encoding_error() -> None:
    method = nsxpc.Interface(Radio).method("tune")
    assert method is not None
    with pytest.raises(nsxpc.EncodingError, match="by proxy"):
        encode_arguments(method.args, [Obj()], "tune", "argument", 32, None)
    with pytest.raises(nsxpc.EncodingError):
        encode_arguments(method.args, [None], "tune", "argument", 32, lambda v, s: 2)
