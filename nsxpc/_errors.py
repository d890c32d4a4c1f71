"""The whole nsxpc error hierarchy, and nothing else.

Every error the library reports is an :class:`XPCError` carrying an
:class:`ErrorCode`. Codes are Apple's where Apple has one (NSCocoaErrorDomain
4097-4102, NSCoder 4864/4866); the rest are project-defined inside Apple's
reserved XPC window, 4103-4223 (``NSXPCConnectionErrorMinimum`` and
``...Maximum`` exclusive), and are listed in docs/PROTOCOL.md.

Errors say what happened to the resource: *interrupted* (the peer went away,
the connection may be used again) versus *invalid* (closed for good), and who
is at fault: a local misuse (:class:`EncodingError`) versus a bad peer
(:class:`DecodingError`, :class:`ProtocolError`).
"""

from __future__ import annotations

import enum

__all__ = [
    "ConnectionInterrupted",
    "ConnectionInvalid",
    "DecodingError",
    "EncodingError",
    "ErrorCode",
    "InterfaceError",
    "LimitExceeded",
    "PeerRequirementFailure",
    "ProtocolError",
    "RemoteError",
    "ReplyInvalid",
    "TimedOut",
    "XPCError",
    "error_for_code",
]


class ErrorCode(enum.IntEnum):
    """Error codes of :class:`XPCError`, Apple's values where Apple has one."""

    #: NSXPCConnectionInterrupted: the peer went away; the next message may reconnect.
    CONNECTION_INTERRUPTED = 4097
    #: NSXPCConnectionInvalid: the connection is closed for good.
    CONNECTION_INVALID = 4099
    #: NSXPCConnectionReplyInvalid: the reply could not be decoded, or was dropped uncalled.
    REPLY_INVALID = 4101
    #: NSXPCConnectionCodeSigningRequirementFailure: the peer failed its requirement.
    PEER_REQUIREMENT_FAILURE = 4102
    #: The remote method raised; the error carries its type name and message.
    REMOTE_ERROR = 4103
    #: The call's ``timeout=`` expired before a reply arrived.
    TIMED_OUT = 4104
    #: The peer broke the wire protocol (corrupt framing, bad msgpack, unexpected message).
    PROTOCOL_ERROR = 4105
    #: A resource limit of nsxpc.Limits was exceeded (docs/LIMITS.md names which).
    LIMIT_EXCEEDED = 4110
    #: NSCoderReadCorruptError: a value failed its slot's allowlist or annotation.
    DECODING_ERROR = 4864
    #: NSCoderInvalidValueError: a value cannot be sent in its slot.
    ENCODING_ERROR = 4866


class XPCError(Exception):
    """Base of every error nsxpc reports (Apple: an NSError in NSCocoaErrorDomain).

    Attributes:
        code: the :class:`ErrorCode`.
        can_retry: True when the same operation may succeed if tried again
            (interruption, timeout), False otherwise.
    """

    code: ErrorCode = ErrorCode.CONNECTION_INVALID
    can_retry: bool = False

    def __init__(self, message: str = "", *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable text of the error."""
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={int(self.code)})"

    def __eq__(self, other: object) -> bool:
        # Errors travel as plain values (API section 3) and must compare equal
        # after a round trip, as the other value types do.
        if not isinstance(other, XPCError):
            return NotImplemented
        return (type(self), self.code, self.message) == (type(other), other.code, other.message)

    def __hash__(self) -> int:
        return hash((type(self), self.code, self.message))

    def __reduce__(self) -> tuple[object, ...]:
        return (error_for_code, (int(self.code), self.message))


class ConnectionInterrupted(XPCError):
    """The peer exited or crashed; the next message may relaunch or reconnect it."""

    code = ErrorCode.CONNECTION_INTERRUPTED
    can_retry = True


class ConnectionInvalid(XPCError):
    """The connection is invalid: invalidated, refused, or could never be formed."""

    code = ErrorCode.CONNECTION_INVALID


class ReplyInvalid(XPCError):
    """The reply could not be decoded, or the peer dropped the reply block uncalled."""

    code = ErrorCode.REPLY_INVALID


class PeerRequirementFailure(XPCError):
    """The peer does not satisfy the connection's peer requirement."""

    code = ErrorCode.PEER_REQUIREMENT_FAILURE


class RemoteError(XPCError):
    """The remote method raised. Carries the exception's type name and message, never a traceback.

    Attributes:
        type_name: the remote exception's class name, e.g. ``"ValueError"``.
    """

    code = ErrorCode.REMOTE_ERROR

    @property
    def type_name(self) -> str:
        head, sep, _ = self.message.partition(": ")
        return head if sep else ""


class TimedOut(XPCError):
    """The call's ``timeout=`` expired; a late reply is discarded. The connection stays up."""

    code = ErrorCode.TIMED_OUT
    can_retry = True


class ProtocolError(XPCError):
    """The peer broke the wire protocol. The stream cannot resynchronise, so the
    connection that received it is invalidated."""

    code = ErrorCode.PROTOCOL_ERROR


class LimitExceeded(XPCError):
    """A resource limit (``nsxpc.Limits``) was exceeded: too many calls in flight, a
    peer that reads nothing (slow consumer), or a listener's connection caps. The
    message names the limit; docs/LIMITS.md lists them."""

    code = ErrorCode.LIMIT_EXCEEDED


class DecodingError(XPCError):
    """A received value failed its slot's allowlist or annotation (NSCoderReadCorruptError)."""

    code = ErrorCode.DECODING_ERROR


class EncodingError(XPCError):
    """A value cannot be sent in its slot (NSCoderInvalidValueError). Raised by the call
    itself; nothing is sent."""

    code = ErrorCode.ENCODING_ERROR


class InterfaceError(TypeError):
    """A protocol or interface breaks a rule of NSXPCInterface. The message names the
    method and the rule."""


_BY_CODE: dict[int, type[XPCError]] = {
    cls.code: cls
    for cls in (
        ConnectionInterrupted,
        ConnectionInvalid,
        ReplyInvalid,
        PeerRequirementFailure,
        RemoteError,
        TimedOut,
        ProtocolError,
        LimitExceeded,
        DecodingError,
        EncodingError,
    )
}


def error_for_code(code: int, message: str) -> XPCError:
    """Build the error subclass registered for ``code`` (a fixed table, never a name lookup)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        try:
            return XPCError(message, code=ErrorCode(code))
        except ValueError:
            return XPCError(message)
    return cls(message)
