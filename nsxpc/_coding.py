"""L2: secure coding. Python values <-> wire trees, under per-slot allowlists.

This is the trust boundary (NSSecureCoding, research/reliability.md section 1):

- A slot (one argument or reply argument of one selector, or one key of a
  coded object) has an allowlist of *exact* classes, compiled once from its
  annotation or replaced by ``Interface.set_classes``. A subclass of an
  allowed class is not allowed unless listed (the NSObject lesson).
- Decoding resolves a class name from the wire only in the allowlist of the
  slot being decoded, so a class the slot does not allow is never built, and
  nothing is ever imported or unpickled. Plain values (str, int, lists...)
  are built by msgpack; the allowlist walk then checks every node.
- On top of the allowlist the value is checked against the slot's annotation
  (``list[FrenchFry]`` is a list *of FrenchFry*), compiled to plain type tests
  where the annotation is simple, typeguard only where it needs it.
- Depth is bounded (default 32, checked as the tree is walked, so no
  RecursionError), and so is the number of values (see _codec).

The same compiled check runs on both sides: a proxy refuses to send what the
peer would refuse to receive (``EncodingError`` from the call itself).
"""

from __future__ import annotations

import abc
import collections.abc
import datetime
import os
import struct
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from . import _codec
from ._codec import Ext, ExtType
from ._errors import (
    DecodingError,
    EncodingError,
    ErrorCode,
    InterfaceError,
    ProtocolError,
    XPCError,
    error_for_code,
)
from ._fdvalues import NEVER, FileDescriptor, MessageFds, SharedMemory, check_region, memfd_with, read_region
from ._values import ListenerEndpoint

__all__ = [
    "PLAIN_TYPES",
    "Coder",
    "DecodeContext",
    "EncodeContext",
    "SecureCoding",
    "SlotType",
    "compile_slot",
    "decode_value",
    "encode_value",
    "is_secure_coding",
    "secure_coding",
    "wire_name",
]

NoneType = type(None)
_UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICRO = datetime.timedelta(microseconds=1)
_I64 = struct.Struct(">q")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

_SCALARS = frozenset({NoneType, bool, int, float, str, bytes})
#: Types allowed in a slot annotated ``Any`` or a bare ``list``/``dict``: never a custom class.
PLAIN_TYPES: frozenset[type] = _SCALARS | frozenset(
    {list, tuple, dict, set, frozenset, datetime.datetime, uuid.UUID, ListenerEndpoint, XPCError}
    | {FileDescriptor, SharedMemory}
)


# --------------------------------------------------------------------------- classes


class SecureCoding(abc.ABC):
    """A class whose instances can travel by copy (NSSecureCoding).

    Subclasses write their state with ``coder.encode(value, key)`` and read it
    back in :meth:`init_with_coder` with the ``decode_*`` methods, each naming
    the classes it accepts *before* anything is built. The class is named on
    the wire by ``__xpc_name__`` if set, else ``module.qualname``.
    """

    supports_secure_coding: ClassVar[bool] = True

    @abc.abstractmethod
    def encode_with_coder(self, coder: Coder) -> None:
        """Write this object's state (NSCoding ``encodeWithCoder:``)."""

    @classmethod
    @abc.abstractmethod
    def init_with_coder(cls, coder: Coder) -> Any:
        """Build an instance from decoded state (NSCoding ``initWithCoder:``).

        Raises:
            DecodingError: a value is missing or not of the allowed classes.
        """


_C = TypeVar("_C", bound=type)


def secure_coding(cls: _C) -> _C:
    """Class decorator: make an attrs class :class:`SecureCoding`.

    Each field is encoded under its name and decoded against its own
    annotation (allowlist and check derived as for a protocol argument), then
    the class is built through its ``__init__``, so attrs validators run too.

    Raises:
        TypeError: ``cls`` is not an attrs class.
    """
    if not attrs.has(cls):
        raise TypeError(f"@nsxpc.secure_coding needs an attrs class, not {cls!r}")
    fields_slots: list[tuple[str, str, SlotType]] = []

    def field_slots() -> list[tuple[str, str, SlotType]]:
        # Resolved lazily: a field may name a class defined after this one.
        if not fields_slots:
            hints = typing.get_type_hints(cls)
            for field in attrs.fields(cls):
                if not field.init:
                    continue
                where = f"{cls.__qualname__}.{field.name}"
                if field.name not in hints:
                    raise InterfaceError(f"{where}: field has no annotation")
                fields_slots.append((field.name, field.alias, compile_slot(hints[field.name], where)))
        return fields_slots

    def encode_with_coder(self: Any, coder: Coder) -> None:
        for name, _alias, slot in field_slots():
            value = getattr(self, name)
            reason = slot.explain(value)
            if reason is not None:
                raise EncodingError(f"{type(self).__qualname__}.{name}: {reason}")
            coder.encode(value, name)

    def init_with_coder(cls_: type, coder: Coder) -> Any:
        kwargs = {alias: coder.decode_slot(slot, name) for name, alias, slot in field_slots()}
        try:
            return cls_(**kwargs)
        except (TypeError, ValueError) as exc:
            raise DecodingError(f"{cls_.__qualname__} refused its decoded fields: {exc}") from exc

    cls.encode_with_coder = encode_with_coder  # type: ignore[attr-defined]
    cls.init_with_coder = classmethod(init_with_coder)  # type: ignore[attr-defined]
    cls.supports_secure_coding = True  # type: ignore[attr-defined]
    SecureCoding.register(cls)
    _CODABLE.pop(cls, None)
    return cls  # type: ignore[return-value]


_CODABLE: dict[type, bool] = {}


def is_secure_coding(cls: object) -> bool:
    """True for classes that can travel by copy (SecureCoding subclasses or registered)."""
    if not isinstance(cls, type):
        return False
    known = _CODABLE.get(cls)
    if known is None:
        known = (
            issubclass(cls, SecureCoding)
            and bool(getattr(cls, "supports_secure_coding", False))
            and not getattr(cls, "__abstractmethods__", None)
        )
        _CODABLE[cls] = known
    return known


def wire_name(cls: type) -> str:
    """The name a class travels under: ``__xpc_name__`` if set, else ``module.qualname``."""
    name = cls.__dict__.get("__xpc_name__")
    return name if isinstance(name, str) else f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- contexts


class EncodeContext:
    """State of one message being encoded: the fds it carries, proxies it exports.

    (Plain classes here and below, not attrs: these are built per message, and attrs
    classes cost compile time at import, which every launched service pays.)"""

    __slots__ = ("export_object", "fds", "max_depth", "shm_threshold")

    def __init__(
        self,
        max_depth: int = 32,
        fds: list[int] | None = None,
        export_object: Callable[[object, Any], int] | None = None,
        shm_threshold: int | None = None,
    ) -> None:
        self.max_depth = max_depth
        #: fds the message carries: duplicates it owns (closed once written or dropped;
        #: by default a MessageFds, which closes them if the context is just dropped).
        self.fds: list[int] = MessageFds() if fds is None else fds
        self.export_object = export_object
        #: ``bytes`` longer than this travel through shared memory (None: never, the
        #: default here, so that a caller that does not send fds never gets any).
        self.shm_threshold = NEVER if shm_threshold is None else shm_threshold


class DecodeContext:
    """State of one message being decoded: its fds, depth and value budgets."""

    __slots__ = ("fds", "import_proxy", "max_container", "max_depth", "nodes_left", "owned", "shm_left")

    def __init__(
        self,
        fds: tuple[int, ...] = (),
        max_depth: int = 32,
        nodes_left: int = 65_536,
        max_container: int = 65_536,
        import_proxy: Callable[[int, Any], object] | None = None,
        *,
        owned: list[tuple[int, object]] | None = None,
        shm_left: int = 1 << 30,
    ) -> None:
        self.fds = fds
        self.max_depth = max_depth
        self.nodes_left = nodes_left
        self.max_container = max_container
        self.import_proxy = import_proxy
        #: (index in fds, value) of each value that adopted one of the frame's fds. The
        #: core grants them ownership only if the message is delivered (see _fdvalues).
        self.owned: list[tuple[int, object]] = [] if owned is None else owned
        #: bytes of shared memory this message may still bring (Limits.max_shared_memory).
        self.shm_left = shm_left

    def fd_at(self, index: object, adopt: bool) -> int:
        """The frame's fd at ``index``; with ``adopt``, one that no other value of
        this message owns (two owners would close it twice).

        Raises:
            DecodingError: no such fd in the frame, or it is owned already.
        """
        if type(index) is not int or not 0 <= index < len(self.fds):
            raise DecodingError(f"file descriptor {index!r} is not among the {len(self.fds)} the message carries")
        if adopt and any(i == index for i, _ in self.owned):
            raise DecodingError(f"file descriptor {index} is used twice in one message")
        return self.fds[index]

    def unpack(self, data: bytes) -> Any:
        """Unpack an extension payload under the message's remaining budget.

        The envelope around it was well formed, so a bad payload is one bad value
        (DecodingError: that message is dropped), not a broken stream.
        """
        try:
            return _codec.unpack(data, max(self.nodes_left, 0), self.max_container)
        except ProtocolError as exc:
            raise DecodingError(f"malformed value: {exc.message}") from None

    def spend(self, count: int) -> None:
        self.nodes_left -= count
        if self.nodes_left < 0:
            raise DecodingError("message holds too many values (node budget exceeded)")


# --------------------------------------------------------------------------- encoding


def encode_value(value: object, ctx: EncodeContext, depth: int = 0) -> object:
    """Convert a Python value into a wire tree that :func:`_codec.pack` can carry.

    Raises:
        EncodingError: the value (or something inside it) cannot be sent.
    """
    t = type(value)
    if t in _SCALARS:
        if t is int and not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise EncodingError(f"integer {value} does not fit in 64 bits")
        if t is bytes and len(value) > ctx.shm_threshold:  # type: ignore[arg-type]
            return _promote(value, ctx)  # type: ignore[arg-type]
        return value
    if depth >= ctx.max_depth:
        raise EncodingError(f"value nests deeper than {ctx.max_depth} levels")
    depth += 1
    if t is list:
        return [encode_value(v, ctx, depth) for v in value]  # type: ignore[attr-defined]
    if t is dict:
        d: dict[Any, Any] = value  # type: ignore[assignment]
        if all(type(k) is str for k in d):
            return {k: encode_value(v, ctx, depth) for k, v in d.items()}
        flat: list[object] = []
        for k, v in d.items():
            flat.append(encode_value(k, ctx, depth))
            flat.append(encode_value(v, ctx, depth))
        return ExtType(_codec.EXT_DICT, _codec.pack(flat))
    if t is tuple or t is set or t is frozenset:
        code = {tuple: _codec.EXT_TUPLE, set: _codec.EXT_SET, frozenset: _codec.EXT_FROZENSET}[t]
        items = [encode_value(v, ctx, depth) for v in value]  # type: ignore[attr-defined]
        return ExtType(code, _codec.pack(items))
    if t is datetime.datetime:
        dt: datetime.datetime = value  # type: ignore[assignment]
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise EncodingError(f"naive datetime {dt.isoformat()} cannot be sent: make it timezone-aware")
        try:
            dt.astimezone(_UTC)  # the receiver rebuilds it in UTC: it must exist there
        except OverflowError:
            raise EncodingError(f"datetime {dt.isoformat()} is out of range in UTC") from None
        return ExtType(_codec.EXT_DATETIME, _I64.pack((dt - _EPOCH) // _MICRO))
    if t is uuid.UUID:
        return ExtType(_codec.EXT_UUID, value.bytes)  # type: ignore[attr-defined]
    if t is ListenerEndpoint:
        ep: ListenerEndpoint = value  # type: ignore[assignment]
        return ExtType(_codec.EXT_ENDPOINT, _codec.pack([ep.path, ep.token]))
    if t is FileDescriptor or t is SharedMemory:
        return _encode_fd_value(value, ctx)  # type: ignore[arg-type]
    if isinstance(value, XPCError):
        # Errors are rebuilt from a fixed code table, never from a class name; the
        # flag keeps a plain XPCError plain.
        return ExtType(_codec.EXT_ERROR, _codec.pack([int(value.code), value.message, t is XPCError]))
    if is_secure_coding(t):
        coder = Coder._for_encoding(ctx, depth)
        value.encode_with_coder(coder)  # type: ignore[attr-defined]
        return ExtType(_codec.EXT_OBJECT, _codec.pack([wire_name(t), coder._fields]))
    raise EncodingError(
        f"{t.__module__}.{t.__qualname__} cannot be sent by copy: "
        "it is not a plain value and does not adopt nsxpc.SecureCoding"
    )


def _add_fd(ctx: EncodeContext, source: int) -> int:
    """Dup ``source`` into the message (which owns the copy) and return its index."""
    try:
        ctx.fds.append(os.dup(source))
    except OSError as exc:
        raise EncodingError(f"cannot duplicate file descriptor {source}: {exc.strerror}") from exc
    return len(ctx.fds) - 1


def _encode_fd_value(value: FileDescriptor | SharedMemory, ctx: EncodeContext) -> ExtType:
    # Extension 9: the fd's index in the frame. Extension 10: [index, size, promoted
    # bytes?]; the flag keeps the two forms apart, so that each is decoded only in a
    # slot that allows it (a bytes slot never yields a SharedMemory, nor the reverse).
    if type(value) is FileDescriptor:
        if value.closed:
            raise EncodingError("a closed nsxpc.FileDescriptor cannot be sent")
        return ExtType(_codec.EXT_FD, _codec.pack(_add_fd(ctx, value.fileno())))
    shm: SharedMemory = value  # type: ignore[assignment]
    return ExtType(_codec.EXT_SHM, _codec.pack([_add_fd(ctx, shm._fileno()), shm.size, False]))


def _promote(value: bytes, ctx: EncodeContext) -> ExtType:
    """A large ``bytes`` through a sealed memfd: the frame stays small, and the bytes
    are copied once each way (write(2) here, pread(2) there) instead of through the
    socket. The receiver gets ``bytes``, in a slot that allows bytes."""
    ctx.fds.append(memfd_with(value))
    return ExtType(_codec.EXT_SHM, _codec.pack([len(ctx.fds) - 1, len(value), True]))


# --------------------------------------------------------------------------- decoding


class Allowed:
    """An allowlist ready for decoding: exact types, and custom classes by wire name."""

    __slots__ = ("names", "types")

    def __init__(self, types: frozenset[type], names: Mapping[str, type]) -> None:
        self.types = types
        self.names = names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Allowed) and (self.types, dict(self.names)) == (other.types, dict(other.names))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Allowed({{{self.describe()}}})"

    @classmethod
    def of(cls, classes: Iterable[type]) -> Allowed:
        types_ = frozenset(classes)
        return cls(types_, {wire_name(c): c for c in types_ if is_secure_coding(c)})

    def describe(self) -> str:
        return ", ".join(sorted(_type_name(t) for t in self.types)) or "nothing"


def _type_name(t: type) -> str:
    return "None" if t is NoneType else t.__qualname__


def _refuse(what: str, allowed: Allowed) -> DecodingError:
    return DecodingError(f"{what} is not allowed here (allowed: {allowed.describe()})")


def decode_value(raw: object, allowed: Allowed, ctx: DecodeContext, depth: int = 0) -> object:
    """Build a Python value from a wire tree, admitting only ``allowed`` classes.

    Raises:
        DecodingError: a node is of a class the slot does not allow, is
            malformed, or the value is too deep or too large.
    """
    t = type(raw)
    if t in _SCALARS:
        if t not in allowed.types:
            raise _refuse(f"a value of class {_type_name(t)}", allowed)
        return raw
    if depth >= ctx.max_depth:
        raise DecodingError(f"value nests deeper than {ctx.max_depth} levels")
    depth += 1
    if t is list:
        if list not in allowed.types:
            raise _refuse("a list", allowed)
        items: list[object] = raw  # type: ignore[assignment]
        ctx.spend(len(items))
        return [decode_value(v, allowed, ctx, depth) for v in items]
    if t is dict:
        if dict not in allowed.types:
            raise _refuse("a dict", allowed)
        d: dict[object, object] = raw  # type: ignore[assignment]
        ctx.spend(2 * len(d))
        return {decode_value(k, allowed, ctx, depth): decode_value(v, allowed, ctx, depth) for k, v in d.items()}
    if t is Ext:
        return _decode_ext(raw, allowed, ctx, depth)  # type: ignore[arg-type]
    raise DecodingError(f"unexpected wire value of type {t.__name__}")


def _plain_error(code: int, message: str) -> XPCError:
    try:
        return XPCError(message, code=ErrorCode(code))
    except ValueError:
        return XPCError(message)


def _decode_items(ext: Ext, ctx: DecodeContext) -> list[object]:
    items = ctx.unpack(ext.data)
    if type(items) is not list:
        raise DecodingError(f"malformed extension {ext.code}: expected an array")
    ctx.spend(len(items))
    return items


def _decode_ext(ext: Ext, allowed: Allowed, ctx: DecodeContext, depth: int) -> object:
    code = ext.code
    if code in (_codec.EXT_TUPLE, _codec.EXT_SET, _codec.EXT_FROZENSET):
        kind: type = {_codec.EXT_TUPLE: tuple, _codec.EXT_SET: set, _codec.EXT_FROZENSET: frozenset}[code]
        if kind not in allowed.types:
            raise _refuse(f"a {kind.__name__}", allowed)
        members = [decode_value(v, allowed, ctx, depth) for v in _decode_items(ext, ctx)]
        try:
            return kind(members)
        except TypeError as exc:  # an unhashable member of a set
            raise DecodingError(f"malformed {kind.__name__}: {exc}") from exc
    if code == _codec.EXT_DICT:
        if dict not in allowed.types:
            raise _refuse("a dict", allowed)
        flat = _decode_items(ext, ctx)
        if len(flat) % 2:
            raise DecodingError("malformed dict: odd number of keys and values")
        out: dict[object, object] = {}
        for i in range(0, len(flat), 2):
            key = decode_value(flat[i], allowed, ctx, depth)
            try:
                out[key] = decode_value(flat[i + 1], allowed, ctx, depth)
            except TypeError as exc:
                raise DecodingError(f"malformed dict: {exc}") from exc
        return out
    if code == _codec.EXT_DATETIME:
        if datetime.datetime not in allowed.types:
            raise _refuse("a datetime", allowed)
        if len(ext.data) != 8:
            raise DecodingError("malformed datetime")
        try:
            return _EPOCH + _I64.unpack(ext.data)[0] * _MICRO
        except OverflowError as exc:
            raise DecodingError("datetime out of range") from exc
    if code == _codec.EXT_UUID:
        if uuid.UUID not in allowed.types:
            raise _refuse("a UUID", allowed)
        if len(ext.data) != 16:
            raise DecodingError("malformed UUID")
        return uuid.UUID(bytes=ext.data)
    if code == _codec.EXT_ENDPOINT:
        if ListenerEndpoint not in allowed.types:
            raise _refuse("a ListenerEndpoint", allowed)
        parts = _decode_items(ext, ctx)
        if len(parts) != 2 or type(parts[0]) is not str or type(parts[1]) is not bytes:
            raise DecodingError("malformed ListenerEndpoint")
        return ListenerEndpoint(path=parts[0], token=parts[1])
    if code == _codec.EXT_ERROR:
        if not any(issubclass(t, XPCError) for t in allowed.types):
            raise _refuse("an XPCError", allowed)
        parts = _decode_items(ext, ctx)
        if len(parts) != 3 or type(parts[0]) is not int or type(parts[1]) is not str or type(parts[2]) is not bool:
            raise DecodingError("malformed XPCError")
        error = _plain_error(parts[0], parts[1]) if parts[2] else error_for_code(parts[0], parts[1])
        if type(error) not in allowed.types and XPCError not in allowed.types:
            raise _refuse(f"an error of class {type(error).__name__}", allowed)
        return error
    if code == _codec.EXT_OBJECT:
        parts = _decode_items(ext, ctx)
        if len(parts) != 2 or type(parts[0]) is not str or type(parts[1]) is not dict:
            raise DecodingError("malformed coded object")
        name: str = parts[0]
        fields: dict[str, object] = parts[1]
        cls = allowed.names.get(name)
        if cls is None:
            # The name is looked up in this slot's allowlist only: never imported.
            raise _refuse(f"class {name!r}", allowed)
        if any(type(k) is not str for k in fields):
            raise DecodingError(f"malformed {name}: keys must be strings")
        ctx.spend(len(fields))
        coder = Coder._for_decoding(fields, ctx, depth)
        try:
            obj = cls.init_with_coder(coder)  # type: ignore[attr-defined]
        except XPCError:
            raise
        except Exception as exc:
            # A class's own decoder refusing its input is a decoding failure of this value.
            raise DecodingError(f"{cls.__qualname__}.init_with_coder failed: {type(exc).__name__}: {exc}") from exc
        if type(obj) is not cls:
            raise DecodingError(f"{cls.__qualname__}.init_with_coder returned {type(obj).__qualname__}")
        return obj
    if code == _codec.EXT_FD or code == _codec.EXT_SHM:
        return _decode_fd_value(ext, allowed, ctx)
    if code == _codec.EXT_PROXY:
        raise DecodingError("an object by proxy is not allowed here (the slot has no interface)")
    raise DecodingError(f"unknown extension type {code}")


def _decode_fd_value(ext: Ext, allowed: Allowed, ctx: DecodeContext) -> object:
    """Extensions 9 and 10. The allowlist is checked before the fd is touched."""
    if ext.code == _codec.EXT_FD:
        if FileDescriptor not in allowed.types:
            raise _refuse("a FileDescriptor", allowed)
        index = ctx.unpack(ext.data)
        fd = ctx.fd_at(index, adopt=True)
        value: object = FileDescriptor._adopt(fd)
        ctx.owned.append((index, value))
        return value
    parts = _decode_items(ext, ctx)
    if len(parts) != 3 or type(parts[0]) is not int or type(parts[1]) is not int or type(parts[2]) is not bool:
        raise DecodingError("malformed shared memory reference")
    slot: int = parts[0]
    size: int = parts[1]
    promoted = parts[2]
    if promoted and bytes not in allowed.types:
        raise _refuse("a value of class bytes", allowed)
    if not promoted and SharedMemory not in allowed.types:
        raise _refuse("a SharedMemory", allowed)
    if size < 0:
        raise DecodingError("malformed shared memory reference")
    if size > ctx.shm_left:
        raise DecodingError(
            f"{size} bytes of shared memory exceed what is left of this message's "
            f"allowance ({ctx.shm_left} bytes, nsxpc.Limits.max_shared_memory)"
        )
    ctx.shm_left -= size
    fd = ctx.fd_at(slot, adopt=not promoted)
    check_region(fd, size)
    if promoted:
        return read_region(fd, size)  # the fd stays the frame's: the core closes it
    value = SharedMemory._adopt(fd, size)
    ctx.owned.append((slot, value))
    return value


# --------------------------------------------------------------------------- Coder


_ALLOWED_CACHE: dict[frozenset[type], Allowed] = {}


def _allowed(classes: Iterable[type]) -> Allowed:
    key = frozenset(classes)
    found = _ALLOWED_CACHE.get(key)
    if found is None:
        found = _ALLOWED_CACHE[key] = Allowed.of(key)
    return found


def _as_classes(classes: type | Iterable[type], argument: str) -> frozenset[type]:
    if isinstance(classes, type):
        return frozenset({classes})
    result = frozenset(classes)
    if not result or not all(isinstance(c, type) for c in result):
        raise TypeError(f"{argument} must be a class or a non-empty set of classes")
    return result


_COLLECTIONS = frozenset({list, tuple, dict, set, frozenset})


class Coder:
    """Reads and writes the state of a :class:`SecureCoding` object (NSCoder, secure mode).

    One coder either encodes or decodes. Every ``decode_*`` method names the
    classes it accepts; a value that is missing or of another class raises
    :class:`DecodingError` before anything of that class is built.
    """

    __slots__ = ("_dec", "_depth", "_enc", "_fields")
    _enc: EncodeContext | None
    _dec: DecodeContext | None
    _depth: int
    _fields: dict[str, Any]

    def __init__(self) -> None:
        raise TypeError("nsxpc.Coder instances are made by nsxpc while encoding or decoding")

    @classmethod
    def _for_encoding(cls, ctx: EncodeContext, depth: int) -> Coder:
        self = object.__new__(cls)
        self._enc, self._dec, self._depth, self._fields = ctx, None, depth, {}
        return self

    @classmethod
    def _for_decoding(cls, fields: dict[str, object], ctx: DecodeContext, depth: int) -> Coder:
        self = object.__new__(cls)
        self._enc, self._dec, self._depth, self._fields = None, ctx, depth, fields
        return self

    def __repr__(self) -> str:
        mode = "encoding" if self._enc is not None else "decoding"
        return f"<nsxpc.Coder {mode} keys={sorted(self._fields)}>"

    # ---- encoding

    def encode(self, obj: object, key: str) -> None:
        """Write ``obj`` under ``key`` (NSCoder ``encodeObject:forKey:``).

        Raises:
            EncodingError: ``obj`` cannot be sent by copy.
            RuntimeError: this coder is decoding.
        """
        if self._enc is None:
            raise RuntimeError("this Coder is decoding; encode() is not available")
        if type(key) is not str:
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        self._fields[key] = encode_value(obj, self._enc, self._depth)

    # ---- decoding

    def _raw(self, key: str) -> object:
        if self._dec is None:
            raise RuntimeError("this Coder is encoding; decode methods are not available")
        try:
            return self._fields[key]
        except KeyError:
            raise DecodingError(f"value for key {key!r} is missing") from None

    def contains_value(self, key: str) -> bool:
        """True if a value was encoded under ``key`` (NSCoder ``containsValueForKey:``)."""
        return key in self._fields

    def decode_object_of_class(self, cls: type, key: str) -> Any:
        """Decode the value under ``key``, which must be exactly of ``cls``.

        Raises:
            DecodingError: the value is missing or of another class.
        """
        return self.decode_object_of_classes(cls, key)

    def decode_object_of_classes(self, classes: type | Iterable[type], key: str) -> Any:
        """Decode the value under ``key``: it, and every member of any collection
        inside it, must be exactly of one of ``classes``.

        Raises:
            DecodingError: the value is missing or holds another class.
        """
        allowed = _allowed(_as_classes(classes, "classes"))
        return self._decode(key, allowed)

    def decode_array_of_objects_of_classes(self, classes: type | Iterable[type], key: str) -> list[Any]:
        """Decode a list under ``key`` whose members are of ``classes`` (no nested collections).

        Raises:
            TypeError: ``classes`` names a collection class.
            DecodingError: the value is not such a list.
        """
        members = _as_classes(classes, "classes")
        if members & _COLLECTIONS:
            raise TypeError("decode_array_of_objects_of_classes supports non-nested collections only")
        value = self._decode(key, _allowed(members | {list}))
        if type(value) is not list or any(type(v) is list for v in value):
            raise DecodingError(f"value for key {key!r} is not a list of {_names(members)}")
        return value

    def decode_dictionary_with_keys_of_classes(
        self, key_classes: type | Iterable[type], object_classes: type | Iterable[type], key: str
    ) -> dict[Any, Any]:
        """Decode a dict under ``key`` with keys of ``key_classes`` and values of ``object_classes``.

        Raises:
            TypeError: a class set names a collection class.
            DecodingError: the value is not such a dict.
        """
        keys = _as_classes(key_classes, "key_classes")
        values = _as_classes(object_classes, "object_classes")
        if (keys | values) & _COLLECTIONS:
            raise TypeError("decode_dictionary_with_keys_of_classes supports non-nested collections only")
        value = self._decode(key, _allowed(keys | values | {dict}))
        if type(value) is not dict or not all(type(k) in keys and type(v) in values for k, v in value.items()):
            raise DecodingError(f"value for key {key!r} is not a dict of {_names(keys)} to {_names(values)}")
        return value

    def decode_slot(self, slot: SlotType, key: str) -> Any:
        """Decode the value under ``key`` against a compiled slot (used by ``@secure_coding``)."""
        value = self._decode(key, slot.allowed)
        reason = slot.explain(value)
        if reason is not None:
            raise DecodingError(f"value for key {key!r}: {reason}")
        return value

    def _decode(self, key: str, allowed: Allowed) -> Any:
        raw = self._raw(key)
        assert self._dec is not None
        try:
            return decode_value(raw, allowed, self._dec, self._depth)
        except DecodingError as exc:
            raise DecodingError(f"value for key {key!r}: {exc.message}") from None


def _names(classes: Iterable[type]) -> str:
    return " or ".join(sorted(_type_name(c) for c in classes))


# --------------------------------------------------------------------------- slots


Check = Callable[[object], bool]


class SlotType:
    """One compiled slot: its allowlist (``classes``) and its annotation check.

    ``check(value)`` is the fast test (no allocation on success);
    ``explain(value)`` returns why a value fails, or None.
    """

    __slots__ = (
        "_ann_check",
        "_restricted",
        "_walk",
        "allowed",
        "annotation",
        "as_is",
        "check",
        "classes",
        "interface",
        "plain",
    )
    allowed: Allowed
    annotation: object
    check: Check
    classes: frozenset[type]
    interface: Any
    #: The scalar type whose values this slot takes exactly as they are (an ``int``,
    #: ``str``, ``bytes``, ``bool``, ``float`` or ``None`` annotation, its allowlist not
    #: replaced), else None: such values need neither conversion nor a call to ``check``.
    #: (The message port's slot for what it sends sets ``dict``: see nsxpc._session.)
    plain: type | None
    #: Whether a value may go, or be delivered, as it is without conversion, given the
    #: depth limit: a slot's own shortcut beyond ``plain`` (the message port's plain
    #: dictionaries), else None. True implies the value passes ``check``. On receipt it
    #: is consulted for a method of one argument (the message port's are all such).
    as_is: Callable[[object, int], bool] | None
    _walk: bool
    _ann_check: Check

    def __init__(
        self,
        annotation: object,
        classes: frozenset[type],
        ann_check: Check,
        *,
        walk: bool = False,
        interface: Any = None,
    ) -> None:
        self.annotation = annotation
        self.classes = classes
        self.allowed = _allowed(classes)
        self.interface = interface
        self._ann_check = ann_check
        self._walk = walk
        plain = NoneType if annotation is None else annotation
        self.plain = plain if plain in _PLAIN and not walk and interface is None else None
        self.as_is = None
        self._restricted: dict[frozenset[type], SlotType] = {}  # with_classes, made once per set
        if walk:
            self.check = lambda v: _walk(v, classes, 0) and ann_check(v)
        else:
            self.check = ann_check

    def with_classes(self, classes: frozenset[type]) -> SlotType:
        """This slot with its allowlist replaced (``set_classes``): every node must be of
        ``classes``, and the annotation is still checked on top. Made once per set of
        classes (slots are immutable): an interface made per connection, as Apple's
        examples do, does not compile its slots again."""
        slot = self._restricted.get(classes)
        if slot is None:
            slot = SlotType(self.annotation, classes, self._ann_check, walk=True, interface=self.interface)
            self._restricted[classes] = slot
        return slot

    def with_interface(self, interface: Any) -> SlotType:
        if interface is self.interface:
            return self
        return SlotType(self.annotation, self.classes, self._ann_check, walk=self._walk, interface=interface)

    def explain(self, value: object) -> str | None:
        if self.check(value):
            return None
        bad = _first_disallowed(value, self.classes, 0)
        if bad is not None:
            return f"class {_type_name(bad)} is not allowed (allowed: {self.allowed.describe()})"
        return f"{_type_name(type(value))} value does not match annotation {_ann_name(self.annotation)}"

    def __repr__(self) -> str:
        return f"<SlotType {_ann_name(self.annotation)} classes={{{self.allowed.describe()}}}>"


def _ann_name(ann: object) -> str:
    if isinstance(ann, type):
        return ann.__qualname__
    return repr(ann).replace("typing.", "")


def _walk(v: object, classes: frozenset[type], depth: int) -> bool:
    t = type(v)
    if t not in classes and not (isinstance(v, XPCError) and XPCError in classes):
        return False
    if depth > 64:
        return False
    if t is list or t is tuple or t is set or t is frozenset:
        return all(_walk(e, classes, depth + 1) for e in v)  # type: ignore[attr-defined]
    if t is dict:
        return all(
            _walk(k, classes, depth + 1) and _walk(x, classes, depth + 1)
            for k, x in v.items()  # type: ignore[attr-defined]
        )
    return True


def _first_disallowed(v: object, classes: frozenset[type], depth: int) -> type | None:
    t = type(v)
    if t not in classes and not (isinstance(v, XPCError) and XPCError in classes):
        return t
    if depth > 64:
        return None
    if t in (list, tuple, set, frozenset):
        for e in v:  # type: ignore[attr-defined]
            bad = _first_disallowed(e, classes, depth + 1)
            if bad is not None:
                return bad
    elif t is dict:
        for k, x in v.items():  # type: ignore[attr-defined]
            bad = _first_disallowed(k, classes, depth + 1) or _first_disallowed(x, classes, depth + 1)
            if bad is not None:
                return bad
    return None


_EXACT = frozenset(
    {bool, int, str, bytes, datetime.datetime, uuid.UUID, ListenerEndpoint, FileDescriptor, SharedMemory}
)
_BARE = frozenset({list, tuple, dict, set, frozenset})
# Scalars a slot can take as they are (a large bytes is still promoted: see encode_arguments).
_PLAIN = frozenset({NoneType, bool, int, float, str, bytes})
_ABC_ORIGINS: dict[object, tuple[type, ...]] = {
    collections.abc.Sequence: (list, tuple),
    collections.abc.MutableSequence: (list,),
    collections.abc.Mapping: (dict,),
    collections.abc.MutableMapping: (dict,),
    collections.abc.Set: (set, frozenset),
    collections.abc.MutableSet: (set,),
}


def _is_protocol(ann: object) -> bool:
    return isinstance(ann, type) and "__xpc_protocol__" in ann.__dict__


def compile_slot(annotation: object, where: str) -> SlotType:
    """Compile an annotation into a slot: default allowlist and check.

    Raises:
        InterfaceError: the annotation names something that cannot be carried.
    """
    if _is_protocol(annotation):
        # Travels by proxy (the interface is attached by Interface).
        return SlotType(annotation, frozenset(), lambda v: v is not None, interface=annotation)
    classes, check, walk = _compile(annotation, where)
    return SlotType(annotation, classes, check, walk=walk)


Compiled = tuple[frozenset[type], Check, bool]


def _always(v: object) -> bool:
    return True


def _compile(ann: object, where: str) -> Compiled:
    """Compile an annotation: (allowlist, check, whether the allowlist must be walked).

    ``Any`` and bare containers admit plain values anywhere inside: their check
    tests only the outer type, and the slot walks the allowlist over the tree,
    so that ``set_classes`` can widen what they hold."""
    if ann is Any or ann is object:
        return PLAIN_TYPES, _always, True
    if ann is None or ann is NoneType:
        return frozenset({NoneType}), lambda v: v is None, False
    if ann is float:
        # PEP 484: an int is acceptable where a float is annotated.
        return frozenset({float, int}), lambda v: type(v) is float or type(v) is int, False
    if ann in _EXACT:
        exact: type = ann
        return frozenset({exact}), lambda v: type(v) is exact, False
    if isinstance(ann, type) and issubclass(ann, XPCError):
        err: type = ann
        return frozenset({ann}), lambda v: isinstance(v, err), False
    if ann in _BARE:
        bare: type = ann
        return PLAIN_TYPES, lambda v: type(v) is bare, True
    if is_secure_coding(ann):
        cls: type = ann  # type: ignore[assignment]
        return frozenset({cls}), lambda v: type(v) is cls, False
    if isinstance(ann, type) and attrs.has(ann):
        raise InterfaceError(f"{where}: {ann.__qualname__} is an attrs class without @nsxpc.secure_coding")
    if _is_protocol(ann):
        raise InterfaceError(f"{where}: an object by proxy may only be a whole argument, not nested")
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return _compile(args[0], where)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_compile(a, where) for a in args]
        checks = [c for _, c, _ in parts]
        classes = frozenset().union(*(c for c, _, _ in parts))
        walk = any(w for _, _, w in parts)
        if len(checks) == 2 and NoneType in args:
            other = checks[0] if args[1] is NoneType else checks[1]
            return classes, lambda v: v is None or other(v), walk
        return classes, lambda v: any(c(v) for c in checks), walk
    if origin is typing.Literal:
        values = {(type(a), a) for a in args}
        return frozenset(t for t, _ in values), lambda v: (type(v), v) in values, False
    if origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        container: type = origin
        member_classes, member, walk = _compile(args[0] if args else Any, where)
        return (
            frozenset({container}) | member_classes,
            lambda v: (
                type(v) is container
                and all(
                    member(e)
                    for e in v  # type: ignore[attr-defined]
                )
            ),
            walk,
        )
    if origin is tuple:
        if args == ((),):
            args = ()
        parts = [_compile(a, where) for a in args]
        tchecks = [c for _, c, _ in parts]
        n = len(tchecks)
        classes = frozenset({tuple}).union(*(c for c, _, _ in parts))
        return (
            classes,
            lambda v: type(v) is tuple and len(v) == n and all(c(e) for c, e in zip(tchecks, v, strict=True)),
            any(w for _, _, w in parts),
        )
    if origin is dict:
        (kc, kcheck, kw), (vc, vcheck, vw) = (_compile(a, where) for a in (args or (Any, Any)))
        return (
            frozenset({dict}) | kc | vc,
            lambda v: type(v) is dict and all(kcheck(k) and vcheck(x) for k, x in v.items()),
            kw or vw,
        )
    if origin in _ABC_ORIGINS:
        concrete = _ABC_ORIGINS[origin]
        parts = [_compile(a, where) for a in args] or [(PLAIN_TYPES, _always, True)]
        classes = frozenset(concrete).union(*(c for c, _, _ in parts))
        walk = any(w for _, _, w in parts)
        if concrete[0] is dict:
            kcheck, vcheck = parts[0][1], parts[-1][1]
            return (
                classes,
                lambda v: type(v) is dict and all(kcheck(k) and vcheck(x) for k, x in v.items()),
                walk,
            )
        mcheck = parts[0][1]
        return classes, lambda v: type(v) in concrete and all(mcheck(e) for e in v), walk
    if typing.is_typeddict(ann) or (origin is None and not isinstance(ann, type) and ann is not None):
        return _typeguard_slot(ann, where)
    if isinstance(ann, type) and callable(ann) and issubclass(ann, collections.abc.Callable):  # type: ignore[arg-type]
        raise InterfaceError(f"{where}: a reply block may only be the last parameter")
    if isinstance(ann, str):
        raise InterfaceError(f"{where}: unresolved annotation {ann!r}")
    name = _ann_name(ann)
    raise InterfaceError(
        f"{where}: {name} cannot be carried: use a plain value type, an @nsxpc.protocol class, "
        "or a class adopting nsxpc.SecureCoding"
    )


def _typeguard_slot(ann: object, where: str) -> Compiled:
    """Annotations the compiler does not know (TypedDict, NewType...) are checked by
    typeguard, imported on first use: its import alone costs twice attrs and msgpack."""
    if isinstance(ann, str):
        raise InterfaceError(f"{where}: unresolved annotation {ann!r}")
    if typing.get_origin(ann) is collections.abc.Callable:
        raise InterfaceError(f"{where}: a reply block may only be the last parameter")

    def check(v: object) -> bool:
        import typeguard

        try:
            typeguard.check_type(v, ann, collection_check_strategy=typeguard.CollectionCheckStrategy.ALL_ITEMS)
        except typeguard.TypeCheckError:
            return False
        return True

    return PLAIN_TYPES, check, True
