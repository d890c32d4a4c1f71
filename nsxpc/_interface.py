"""L2: protocols and interfaces (NSXPCInterface).

``@nsxpc.protocol`` checks a ``typing.Protocol`` class against NSXPC's rules
when it is applied (xpc-semantics P5/P6: methods return void, at most one
reply block, only codable argument types) and compiles every slot once.
:class:`Interface` is a mutable copy of those slots per use, so that
``set_classes`` on one interface does not change another, as with
``+[NSXPCInterface interfaceWithProtocol:]``.

A selector is the method name; argument indexes count from 0 and skip
``self``; reply arguments are indexed separately (``of_reply=True``). On the
wire a protocol is identified by its selectors and arities, not by its name.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._coding import PLAIN_TYPES, SlotType, compile_slot, is_secure_coding
from ._errors import InterfaceError, XPCError

__all__ = ["Interface", "MethodSpec", "protocol"]

NoneType = type(None)
_P = TypeVar("_P", bound=type)
if TYPE_CHECKING:
    # The remote protocol type of an Interface and a Connection (docs/ASYNCIO.md "Typing").
    # Its default (PEP 696) keeps an unparameterised Connection or Interface meaning
    # [Any], as before; at run time a plain TypeVar (3.11's has no default=).
    from typing_extensions import TypeVar as _TypeVarWithDefault

    Remote = _TypeVarWithDefault("Remote", default=Any)
    Remote2 = _TypeVarWithDefault("Remote2", default=Any)
else:
    Remote = TypeVar("Remote")
    Remote2 = TypeVar("Remote2")


class MethodSpec:
    """One selector's compiled shape (treat it as immutable).

    Not an attrs class: attrs compiles methods for each class when the module is
    imported, and every launched service pays for ``import nsxpc``.

    Attributes:
        selector: the method name.
        params: names of the parameters that travel (the reply block excluded).
        args: one compiled slot per parameter.
        reply_name: the reply block parameter's name, or None for a one-way method.
        reply: one compiled slot per reply argument, or None for a one-way method.
        defaults: default values of trailing parameters, by name.
        wants_reply: True when the method has a reply block (read per message: an
            attribute, not a property).
        arg_types, reply_types: the exact types of arguments (and reply arguments)
            that travel as they are, when every slot has one (``SlotType.plain``);
            else None. A call whose values have exactly these types skips the
            per-slot encoding and decoding.
    """

    __slots__ = (
        "arg_types",
        "args",
        "defaults",
        "params",
        "reply",
        "reply_name",
        "reply_types",
        "selector",
        "wants_reply",
    )

    def __init__(
        self,
        selector: str,
        params: tuple[str, ...],
        args: tuple[SlotType, ...],
        reply_name: str | None,
        reply: tuple[SlotType, ...] | None,
        defaults: dict[str, object] | None = None,
    ) -> None:
        self.selector = selector
        self.params = params
        self.args = args
        self.reply_name = reply_name
        self.reply = reply
        self.defaults: dict[str, object] = {} if defaults is None else defaults
        self.wants_reply = reply is not None
        self.arg_types = _plain_types(args)
        self.reply_types = _plain_types(reply)

    def replace(
        self, *, args: tuple[SlotType, ...] | None = None, reply: tuple[SlotType, ...] | None = None
    ) -> MethodSpec:
        """This method with its argument or reply slots replaced."""
        return MethodSpec(
            self.selector,
            self.params,
            self.args if args is None else args,
            self.reply_name,
            self.reply if reply is None else reply,
            self.defaults,
        )

    def _key(self) -> tuple[object, ...]:
        return (self.selector, self.params, self.args, self.reply_name, self.reply)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if type(other) is MethodSpec else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"<MethodSpec {self.selector}({', '.join(self.params)}) reply={self.reply_name}>"


def _plain_types(slots: tuple[SlotType, ...] | None) -> tuple[type, ...] | None:
    if slots is None or any(slot.plain is None for slot in slots):
        return None
    return tuple(slot.plain for slot in slots)  # type: ignore[misc]


def _is_callable_annotation(ann: object) -> bool:
    return typing.get_origin(ann) is collections.abc.Callable or ann is collections.abc.Callable


class _ProtocolSpec:
    """What ``@nsxpc.protocol`` attaches to a class: its methods, compiled lazily
    when an annotation names a class defined after the protocol."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._methods: dict[str, MethodSpec] | None = None

    def methods(self) -> dict[str, MethodSpec]:
        if self._methods is None:
            self._methods = _compile_protocol(self.cls)
        return self._methods


def protocol(cls: _P) -> _P:
    """Class decorator: declare a ``typing.Protocol`` as a remote interface.

    Checks every rule when applied (annotations that name classes defined
    later are checked when the first :class:`Interface` is made).

    Raises:
        InterfaceError: naming the method and the rule it breaks.
    """
    if not isinstance(cls, type) or not getattr(cls, "_is_protocol", False):
        raise InterfaceError(f"{getattr(cls, '__qualname__', cls)!r}: @nsxpc.protocol needs a typing.Protocol class")
    spec = _ProtocolSpec(cls)
    cls.__xpc_protocol__ = spec  # type: ignore[attr-defined]
    try:
        spec.methods()
    except NameError:
        pass  # a forward reference: checked again when an Interface is made
    return cls


def _protocol_members(cls: type) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        if base in (object, typing.Protocol, typing.Generic) or not getattr(base, "_is_protocol", False):
            continue
        for name in getattr(base, "__annotations__", {}):
            if not name.startswith("_"):
                raise InterfaceError(f"{base.__qualname__}.{name}: protocols carry methods only, not attributes")
        for name, member in vars(base).items():
            if name.startswith("_"):
                continue
            members[name] = member
    return members


def _compile_protocol(cls: type) -> dict[str, MethodSpec]:
    methods: dict[str, MethodSpec] = {}
    for name, member in sorted(_protocol_members(cls).items()):
        where = f"{cls.__qualname__}.{name}"
        if isinstance(member, (staticmethod, classmethod, property)) or not inspect.isfunction(member):
            raise InterfaceError(f"{where}: protocols carry instance methods only")
        methods[name] = _compile_method(member, where)
    if not methods:
        raise InterfaceError(f"{cls.__qualname__}: a protocol needs at least one method")
    return methods


def _compile_method(func: Any, where: str) -> MethodSpec:
    if inspect.iscoroutinefunction(func):
        raise InterfaceError(f"{where}: declare protocol methods with def, not async def")
    hints = typing.get_type_hints(func, include_extras=True)
    sig = inspect.signature(func)
    if "return" not in hints:
        raise InterfaceError(f"{where}: every method must be annotated -> None")
    if hints["return"] is not NoneType:
        raise InterfaceError(f"{where}: every method returns None (results travel through a reply block)")
    params = list(sig.parameters.values())[1:]  # skip self
    blocks = [p.name for p in params if _is_callable_annotation(hints.get(p.name))]
    if len(blocks) > 1:
        raise InterfaceError(f"{where}: only one reply block is allowed per method (found {', '.join(blocks)})")
    names: list[str] = []
    slots: list[SlotType] = []
    defaults: dict[str, object] = {}
    reply_name: str | None = None
    reply: tuple[SlotType, ...] | None = None
    for index, param in enumerate(params):
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            raise InterfaceError(
                f"{where}: parameter {param.name!r} must be positional (no *args, **kwargs or keyword-only)"
            )
        if param.name not in hints:
            raise InterfaceError(f"{where}: parameter {param.name!r} has no annotation")
        ann = hints[param.name]
        if _is_callable_annotation(ann):
            if reply_name is not None:
                raise InterfaceError(f"{where}: only one reply block is allowed per method")
            if index != len(params) - 1:
                raise InterfaceError(f"{where}: the reply block {param.name!r} must be the last parameter")
            reply_name = param.name
            reply = _compile_reply(ann, f"{where} reply block")
            continue
        slot = compile_slot(ann, f"{where} argument {index} ({param.name})")
        names.append(param.name)
        slots.append(slot)
        if param.default is not param.empty:
            defaults[param.name] = param.default
    return MethodSpec(where.rsplit(".", 1)[1], tuple(names), tuple(slots), reply_name, reply, defaults)


def _compile_reply(ann: object, where: str) -> tuple[SlotType, ...]:
    args = typing.get_args(ann)
    if len(args) != 2 or args[0] is Ellipsis or not isinstance(args[0], list):
        raise InterfaceError(f"{where}: annotate it Callable[[...], None] with the reply's argument types")
    if args[1] is not NoneType and args[1] is not None:
        raise InterfaceError(f"{where}: a reply block must return None")
    return tuple(compile_slot(a, f"{where} argument {i}") for i, a in enumerate(args[0]))


def _codable_class(cls: object) -> bool:
    return isinstance(cls, type) and (cls in PLAIN_TYPES or is_secure_coding(cls) or issubclass(cls, XPCError))


class Interface(Generic[Remote]):
    """A remote interface: a protocol plus its per-slot allowlists (NSXPCInterface).

    Generic in its protocol: ``Interface(Kitchen)`` is an ``Interface[Kitchen]``.

    Args:
        protocol: an ``@nsxpc.protocol`` class.

    Raises:
        InterfaceError: ``protocol`` is not an ``@nsxpc.protocol`` class, or breaks a rule.
    """

    __slots__ = ("_methods", "_protocol", "_sub")

    # Callable[..., Remote] rather than type[Remote]: mypy refuses a Protocol class where
    # type[X] is expected ("Only concrete class can be given"), but infers Remote from it here.
    def __init__(self, protocol: Callable[..., Remote]) -> None:
        spec = protocol.__dict__.get("__xpc_protocol__") if isinstance(protocol, type) else None
        if not isinstance(spec, _ProtocolSpec):
            raise InterfaceError(f"{protocol!r} is not an @nsxpc.protocol class")
        assert isinstance(protocol, type)
        try:
            self._methods = dict(spec.methods())
        except NameError as exc:
            raise InterfaceError(f"{protocol.__qualname__}: unresolved annotation: {exc}") from exc
        self._protocol = protocol
        self._sub: dict[tuple[str, int, bool], Interface] = {}

    @staticmethod
    def with_protocol(protocol: Callable[..., Remote2]) -> Interface[Remote2]:
        """``+[NSXPCInterface interfaceWithProtocol:]``: same as ``Interface(protocol)``.

        Raises:
            InterfaceError: ``protocol`` is not an ``@nsxpc.protocol`` class, or breaks a rule.
        """
        return Interface(protocol)

    @property
    def protocol(self) -> type:
        """The protocol this interface was made from."""
        return self._protocol

    @property
    def selectors(self) -> frozenset[str]:
        """The method names of the protocol, inherited ones included."""
        return frozenset(self._methods)

    def __repr__(self) -> str:
        return f"<nsxpc.Interface {self._protocol.__qualname__} selectors={sorted(self._methods)}>"

    def method(self, selector: str) -> MethodSpec | None:
        """The compiled shape of ``selector``, or None if the protocol has no such method."""
        return self._methods.get(selector)

    def _slot(self, selector: str, argument_index: int, of_reply: bool) -> tuple[MethodSpec, SlotType]:
        spec = self._methods.get(selector)
        if spec is None:
            raise InterfaceError(f"selector {selector!r} is not in protocol {self._protocol.__qualname__}")
        slots = spec.reply if of_reply else spec.args
        if of_reply and slots is None:
            raise InterfaceError(f"selector {selector!r} has no reply block")
        assert slots is not None
        if type(argument_index) is not int or not 0 <= argument_index < len(slots):
            raise InterfaceError(
                f"argument index {argument_index!r} is out of range for "
                f"{'the reply block of ' if of_reply else ''}selector {selector!r}: "
                + (f"the maximum index is {len(slots) - 1}" if slots else "it has no arguments")
            )
        return spec, slots[argument_index]

    def _replace(self, selector: str, argument_index: int, of_reply: bool, slot: SlotType) -> None:
        spec = self._methods[selector]
        if of_reply:
            assert spec.reply is not None
            reply = (*spec.reply[:argument_index], slot, *spec.reply[argument_index + 1 :])
            self._methods[selector] = spec.replace(reply=reply)
        else:
            args = (*spec.args[:argument_index], slot, *spec.args[argument_index + 1 :])
            self._methods[selector] = spec.replace(args=args)

    def set_classes(self, classes: Iterable[type], selector: str, argument_index: int, of_reply: bool = False) -> None:
        """Replace the allowlist of one slot (``setClasses:forSelector:argumentIndex:ofReply:``).

        The argument, and every member of any collection inside it, must be
        exactly of one of ``classes`` (a subclass must be listed itself). The
        slot's annotation is still checked on top.

        Raises:
            InterfaceError: unknown selector, index out of range, or a class that cannot be carried.
        """
        _, slot = self._slot(selector, argument_index, of_reply)
        if isinstance(classes, type) or not isinstance(classes, Iterable):
            raise InterfaceError("classes must be a set of classes")
        chosen = frozenset(classes)
        for cls in chosen:
            if not _codable_class(cls):
                raise InterfaceError(
                    f"{selector} argument {argument_index}: {cls!r} cannot be carried by copy "
                    "(not a plain value type and not nsxpc.SecureCoding)"
                )
        self._sub.pop((selector, argument_index, of_reply), None)
        self._replace(selector, argument_index, of_reply, slot.with_classes(chosen).with_interface(None))

    def classes_for(self, selector: str, argument_index: int, of_reply: bool = False) -> frozenset[type]:
        """The classes the decoder admits anywhere in one slot's value.

        Raises:
            InterfaceError: unknown selector or index out of range.
        """
        return self._slot(selector, argument_index, of_reply)[1].classes

    def set_interface(self, interface: Interface, selector: str, argument_index: int, of_reply: bool = False) -> None:
        """Make one slot carry an object by proxy with ``interface``
        (``setInterface:forSelector:argumentIndex:ofReply:``).

        Raises:
            InterfaceError: unknown selector or index out of range.
            TypeError: ``interface`` is not an Interface.
        """
        if not isinstance(interface, Interface):
            raise TypeError(f"interface must be an nsxpc.Interface, not {type(interface).__name__}")
        _, slot = self._slot(selector, argument_index, of_reply)
        self._sub[(selector, argument_index, of_reply)] = interface
        # The slot holds the Interface itself, so its own allowlists govern the proxy.
        self._replace(selector, argument_index, of_reply, slot.with_interface(interface))

    def interface_for(self, selector: str, argument_index: int, of_reply: bool = False) -> Interface | None:
        """The interface of a slot that carries an object by proxy, else None.

        Raises:
            InterfaceError: unknown selector or index out of range.
        """
        _, slot = self._slot(selector, argument_index, of_reply)
        if slot.interface is None:
            return None
        key = (selector, argument_index, of_reply)
        found = self._sub.get(key)
        if found is None:
            found = self._sub[key] = Interface(slot.interface)
            # Changes made to the returned interface apply to the proxies of this slot.
            self._replace(selector, argument_index, of_reply, slot.with_interface(found))
        return found


# ``types`` is imported for the benefit of annotations evaluated in user modules.
del types
