"""L2 protocols and interfaces: the rules of @nsxpc.protocol and Interface.

Annotations here are evaluated eagerly (no ``from __future__ import annotations``)
so that protocols defined inside a test can name local classes.
"""

import typing
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import pytest

import nsxpc
from nsxpc._coding import PLAIN_TYPES, Coder, SecureCoding, secure_coding
from nsxpc._errors import InterfaceError
from nsxpc._interface import Interface, MethodSpec, protocol

NoneType = type(None)


class Cookie(SecureCoding):
    __xpc_name__ = "test_interface.Cookie"

    def __init__(self, flavor: str) -> None:
        self.flavor = flavor

    def encode_with_coder(self, coder: Coder) -> None:
        coder.encode(self.flavor, "flavor")

    @classmethod
    def init_with_coder(cls, coder: Coder) -> "Cookie":
        return cls(coder.decode_object_of_class(str, "flavor"))


@secure_coding
@attrs.frozen
class FrenchFry:
    length: float
    __xpc_name__ = "test_interface.FrenchFry"


@secure_coding
@attrs.frozen
class Rind:
    thickness: float


class Watermelon(SecureCoding):
    def encode_with_coder(self, coder: Coder) -> None:
        pass

    @classmethod
    def init_with_coder(cls, coder: Coder) -> "Watermelon":
        return cls()


@protocol
class FeedMeACookie(Protocol):
    def feed_me_a_cookie(self, cookie: Cookie) -> None: ...


@protocol
class Kitchen(Protocol):
    def feed_me_a_cookie(self, cookie: Cookie) -> None: ...
    def feed_me_a_watermelon(self, watermelon: Watermelon, reply: Callable[[Rind], None]) -> None: ...
    def feed_me_fries(self, fries: list, reply: Callable[[int, str], None]) -> None: ...  # type: ignore[type-arg]
    def feed_someone(self, someone: FeedMeACookie) -> None: ...
    def ping(self) -> None: ...
    def tally(self, counts: dict[str, Cookie], maybe: Cookie | None, reply: Callable[[], None]) -> None: ...


# --------------------------------------------------------------------------- protocol rules


def _raises_naming(method: str, rule: str):
    return pytest.raises(InterfaceError, match=rf"(?s)\b{method}\b.*{rule}")


def test_interface_error_is_a_type_error():
    assert issubclass(InterfaceError, TypeError)
    assert nsxpc.InterfaceError is InterfaceError
    assert nsxpc.protocol is protocol
    assert nsxpc.Interface is Interface


def test_not_a_typing_protocol():
    class Plain:
        def m(self) -> None: ...

    with pytest.raises(InterfaceError, match=r"typing\.Protocol"):
        protocol(Plain)


def test_missing_return_annotation():
    class P(Protocol):
        def no_return(self, x: int): ...

    with _raises_naming("no_return", "annotated -> None"):
        protocol(P)


def test_returns_non_none():
    class P(Protocol):
        def gives_int(self, x: int) -> int: ...

    with _raises_naming("gives_int", "returns None"):
        protocol(P)


def test_missing_parameter_annotation():
    class P(Protocol):
        def bare(self, x: int, y) -> None: ...  # type: ignore[no-untyped-def]

    with _raises_naming("bare", "'y' has no annotation"):
        protocol(P)


def test_two_reply_blocks():
    class P(Protocol):
        def twice(self, a: Callable[[int], None], b: Callable[[int], None]) -> None: ...

    with _raises_naming("twice", "reply block"):
        protocol(P)


def test_reply_block_not_last():
    class P(Protocol):
        def early(self, reply: Callable[[int], None], x: int) -> None: ...

    with _raises_naming("early", "must be the last parameter"):
        protocol(P)


@pytest.mark.parametrize(
    ("annotation", "rule"),
    [
        (Callable[[int], int], "must return None"),
        (Callable[..., None], r"Callable\[\[\.\.\.\], None\]"),
        (Callable, r"Callable\[\[\.\.\.\], None\]"),
    ],
    ids=["returns-int", "ellipsis-args", "bare-Callable"],
)
def test_reply_block_must_be_callable_of_list_returning_none(annotation, rule):
    class P(Protocol):
        def badreply(self, reply: annotation) -> None: ...  # type: ignore[valid-type]

    with _raises_naming("badreply", rule):
        protocol(P)


def test_reply_argument_must_be_codable():
    class Plain:
        pass

    class P(Protocol):
        def replies_plain(self, reply: Callable[[Plain], None]) -> None: ...

    with _raises_naming("replies_plain", "cannot be carried"):
        protocol(P)


def test_var_positional():
    class P(Protocol):
        def star(self, *args: int) -> None: ...

    with _raises_naming("star", "positional"):
        protocol(P)


def test_var_keyword():
    class P(Protocol):
        def kw(self, **kwargs: int) -> None: ...

    with _raises_naming("kw", "positional"):
        protocol(P)


def test_keyword_only():
    class P(Protocol):
        def kwonly(self, a: int, *, b: int) -> None: ...

    with _raises_naming("kwonly", "positional"):
        protocol(P)


def test_async_def():
    class P(Protocol):
        async def coro(self, a: int) -> None: ...

    with _raises_naming("coro", "async def"):
        protocol(P)


def test_attribute_in_protocol():
    class P(Protocol):
        flavor: str

        def m(self) -> None: ...

    with pytest.raises(InterfaceError, match=r"\bflavor\b.*methods only"):
        protocol(P)


def test_uncodable_parameter_annotation():
    class Plain:
        pass

    class P(Protocol):
        def takes_plain(self, thing: Plain) -> None: ...

    with _raises_naming("takes_plain", "cannot be carried"):
        protocol(P)


def test_attrs_class_without_secure_coding_is_refused():
    @attrs.frozen
    class Bare:
        x: int

    class P(Protocol):
        def takes_bare(self, thing: Bare) -> None: ...

    with _raises_naming("takes_bare", "secure_coding"):
        protocol(P)


def test_static_and_class_methods_refused():
    class P(Protocol):
        @staticmethod
        def static() -> None: ...

    with _raises_naming("static", "instance methods"):
        protocol(P)


def test_protocol_needs_a_method():
    class Empty(Protocol):
        pass

    with pytest.raises(InterfaceError, match="at least one method"):
        protocol(Empty)


def test_valid_protocol_is_returned_unchanged():
    class P(Protocol):
        def m(self, a: int, reply: Callable[[str], None]) -> None: ...

    assert protocol(P) is P


# --------------------------------------------------------------------------- compiled methods


def test_method_specs():
    iface = Interface(Kitchen)
    spec = iface.method("feed_me_fries")
    assert isinstance(spec, MethodSpec)
    assert spec.selector == "feed_me_fries"
    assert spec.params == ("fries",)
    assert spec.reply_name == "reply"
    assert spec.wants_reply
    assert spec.reply is not None and len(spec.reply) == 2
    one_way = iface.method("feed_me_a_cookie")
    assert one_way is not None and not one_way.wants_reply and one_way.reply_name is None
    assert iface.method("nope") is None
    empty_reply = iface.method("tally")
    assert empty_reply is not None and empty_reply.reply == ()


def test_protocol_inheritance_gives_all_methods():
    @protocol
    class Base(Protocol):
        def base_method(self, a: int) -> None: ...

    @protocol
    class Derived(Base, Protocol):
        def derived_method(self, b: str, reply: Callable[[int], None]) -> None: ...

    assert Interface(Derived).selectors == frozenset({"base_method", "derived_method"})
    assert Interface(Base).selectors == frozenset({"base_method"})
    assert Interface(Derived).classes_for("base_method", 0) == frozenset({int})


def test_inherited_rule_violation_is_reported():
    class Base(Protocol):
        def bad_base(self, a: int) -> int: ...

    class Derived(Base, Protocol):
        def fine(self) -> None: ...

    with _raises_naming("bad_base", "returns None"):
        protocol(Derived)


@protocol
class ForwardRef(Protocol):
    def later(self, thing: "DefinedLater") -> None: ...


@secure_coding
@attrs.frozen
class DefinedLater:
    x: int


def test_forward_reference_resolved_when_interface_is_made():
    assert Interface(ForwardRef).classes_for("later", 0) == frozenset({DefinedLater})


def test_unresolvable_forward_reference_raises_when_interface_is_made():
    @protocol
    class Broken(Protocol):
        def m(self, thing: "NoSuchClass") -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(InterfaceError, match="NoSuchClass"):
        Interface(Broken)


# --------------------------------------------------------------------------- Interface


def test_interface_basics():
    iface = Interface(Kitchen)
    assert iface.protocol is Kitchen
    assert iface.selectors == frozenset(
        {"feed_me_a_cookie", "feed_me_a_watermelon", "feed_me_fries", "feed_someone", "ping", "tally"}
    )
    assert isinstance(iface.selectors, frozenset)
    other = Interface.with_protocol(Kitchen)
    assert isinstance(other, Interface)
    assert other.protocol is Kitchen
    assert other.selectors == iface.selectors


@pytest.mark.parametrize("not_protocol", [int, object(), Protocol, Watermelon], ids=repr)
def test_interface_of_non_protocol(not_protocol):
    with pytest.raises(InterfaceError):
        Interface(not_protocol)


def test_default_classes_from_annotations():
    iface = Interface(Kitchen)
    assert iface.classes_for("feed_me_a_cookie", 0) == frozenset({Cookie})
    assert iface.classes_for("feed_me_a_watermelon", 0, of_reply=False) == frozenset({Watermelon})
    assert iface.classes_for("feed_me_a_watermelon", 0, of_reply=True) == frozenset({Rind})
    assert iface.classes_for("feed_me_fries", 0) == PLAIN_TYPES
    assert iface.classes_for("feed_me_fries", 0, of_reply=True) == frozenset({int})
    assert iface.classes_for("feed_me_fries", 1, of_reply=True) == frozenset({str})
    assert iface.classes_for("tally", 0) == frozenset({dict, str, Cookie})
    assert iface.classes_for("tally", 1) == frozenset({Cookie, NoneType})


def test_set_classes_replaces_the_allowlist():
    """API.md section 2: fries arrive in a list, which admits only plain values until
    FrenchFry is allowed there."""
    iface = Interface(Kitchen)
    slot = iface.method("feed_me_fries").args[0]
    assert not slot.check([FrenchFry(1.0)])
    iface.set_classes({FrenchFry, list}, "feed_me_fries", argument_index=0, of_reply=False)
    assert iface.classes_for("feed_me_fries", argument_index=0, of_reply=False) == frozenset({FrenchFry, list})
    slot = iface.method("feed_me_fries").args[0]
    assert slot.check([FrenchFry(1.0), FrenchFry(2.0)])
    assert not slot.check([FrenchFry(1.0), 1])  # int was replaced away, not kept
    assert not slot.check((FrenchFry(1.0),))  # the list annotation still applies
    # a second call replaces again, it does not add
    iface.set_classes({list, int}, "feed_me_fries", 0)
    assert iface.classes_for("feed_me_fries", 0) == frozenset({list, int})
    assert not iface.method("feed_me_fries").args[0].check([FrenchFry(1.0)])


def test_set_classes_on_reply_slot():
    iface = Interface(Kitchen)
    iface.set_classes({int, bool}, "feed_me_fries", 0, of_reply=True)
    assert iface.classes_for("feed_me_fries", 0, of_reply=True) == frozenset({int, bool})
    assert iface.classes_for("feed_me_fries", 0, of_reply=False) == PLAIN_TYPES
    assert iface.classes_for("feed_me_fries", 1, of_reply=True) == frozenset({str})


def test_set_classes_refuses_uncodable_classes():
    class Plain:
        pass

    iface = Interface(Kitchen)
    with pytest.raises(InterfaceError):
        iface.set_classes({Plain, list}, "feed_me_fries", 0)
    with pytest.raises(InterfaceError):
        iface.set_classes(list, "feed_me_fries", 0)  # type: ignore[arg-type]
    assert iface.classes_for("feed_me_fries", 0) == PLAIN_TYPES


def test_two_interfaces_of_one_protocol_are_independent():
    a = Interface(Kitchen)
    b = Interface(Kitchen)
    a.set_classes({FrenchFry, list}, "feed_me_fries", 0)
    assert b.classes_for("feed_me_fries", 0) == PLAIN_TYPES
    assert Interface(Kitchen).classes_for("feed_me_fries", 0) == PLAIN_TYPES
    b.set_interface(Interface(FeedMeACookie), "feed_me_a_cookie", 0)
    assert a.interface_for("feed_me_a_cookie", 0) is None


def test_protocol_slot_defaults_to_its_interface():
    iface = Interface(Kitchen)
    sub = iface.interface_for("feed_someone", 0)
    assert isinstance(sub, Interface)
    assert sub.protocol is FeedMeACookie
    assert iface.interface_for("feed_someone", 0) is sub  # stable
    assert iface.interface_for("feed_me_a_cookie", 0) is None
    assert iface.interface_for("feed_me_fries", 0, of_reply=True) is None


def test_set_interface_and_interface_for():
    iface = Interface(Kitchen)
    proxy_iface = Interface(FeedMeACookie)
    iface.set_interface(proxy_iface, "feed_me_a_watermelon", 0, of_reply=True)
    assert iface.interface_for("feed_me_a_watermelon", 0, of_reply=True) is proxy_iface
    assert iface.interface_for("feed_me_a_watermelon", 0, of_reply=False) is None
    # replacing the default proxy interface of a protocol slot
    other = Interface(FeedMeACookie)
    iface.set_interface(other, "feed_someone", 0)
    assert iface.interface_for("feed_someone", 0) is other
    # set_classes turns a slot back into a by-copy slot
    iface.set_classes({Rind}, "feed_me_a_watermelon", 0, of_reply=True)
    assert iface.interface_for("feed_me_a_watermelon", 0, of_reply=True) is None


def test_set_interface_needs_an_interface():
    with pytest.raises(TypeError):
        Interface(Kitchen).set_interface(FeedMeACookie, "feed_someone", 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.classes_for("nope", 0),
        lambda i: i.set_classes({int}, "nope", 0),
        lambda i: i.interface_for("nope", 0),
        lambda i: i.set_interface(Interface(FeedMeACookie), "nope", 0),
    ],
    ids=["classes_for", "set_classes", "interface_for", "set_interface"],
)
def test_unknown_selector(call):
    with pytest.raises(InterfaceError, match="nope"):
        call(Interface(Kitchen))


@pytest.mark.parametrize(
    ("selector", "index", "of_reply"),
    [
        ("feed_me_a_cookie", 1, False),
        ("feed_me_a_cookie", -1, False),
        ("feed_me_fries", 2, True),
        ("feed_me_a_cookie", 0, True),  # a one-way method has no reply arguments
        ("ping", 0, False),
        ("tally", 0, True),
        ("feed_me_a_cookie", True, False),
        ("feed_me_a_cookie", "0", False),
    ],
)
def test_out_of_range_index(selector, index, of_reply):
    iface = Interface(Kitchen)
    for call in (
        lambda: iface.classes_for(selector, index, of_reply),
        lambda: iface.set_classes({int}, selector, index, of_reply),
        lambda: iface.interface_for(selector, index, of_reply),
        lambda: iface.set_interface(Interface(FeedMeACookie), selector, index, of_reply),
    ):
        with pytest.raises(InterfaceError, match=selector):
            call()


def test_any_and_annotated_parameters():
    @protocol
    class Loose(Protocol):
        def anything(self, a: Any, b: typing.Annotated[int, "doc"]) -> None: ...

    iface = Interface(Loose)
    assert iface.classes_for("anything", 0) == PLAIN_TYPES
    assert iface.classes_for("anything", 1) == frozenset({int})
