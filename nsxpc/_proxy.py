"""L4: remote object proxies (NSXPCProxyCreating).

A proxy turns attribute access into the selector's compiled shape and a call
into a message on its connection. Three flavours share one class:

- ``plain``: ``remote_object_proxy``; failures are logged and the reply block
  is released uncalled (Apple's behaviour, H10);
- ``handler``: ``remote_object_proxy_with_error_handler``; exactly one of the
  reply block or the error handler runs, on the connection's queue;
- ``sync``: ``synchronous_remote_object_proxy_with_error_handler``; the reply
  block or error handler runs on the calling thread before the call returns,
  or, with the reply block omitted, the reply's value is returned and the
  error raised.

A proxy received in a message (an object the peer passed by proxy) holds a
:class:`RemoteRef`: one reference the peer counted when it sent the object.
Proxies made from it (``remote_object_proxy_with_error_handler`` and the
others) share it; when the last of them is garbage-collected the reference's
finalizer posts a RELEASE for the connection to send (NSXPC X6). A reference
belongs to the link it arrived on: after an interruption its calls fail with
``ConnectionInvalid`` (NSXPC H5), while the root proxy reconnects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._interface import Interface, MethodSpec

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["HANDLER", "PLAIN", "SYNC", "RemoteProxy", "RemoteRef", "bind_arguments"]

PLAIN, HANDLER, SYNC = "plain", "handler", "sync"
ErrorHandler = Callable[[Exception], object]


def bind_arguments(
    method: MethodSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], Callable[..., object] | None]:
    """Split a proxy call into the values that travel and the reply block (None if omitted).

    Raises:
        TypeError: the arguments do not fit the method, as Python would say.
    """
    n = len(method.params)
    if not kwargs:
        if method.reply_name is not None and len(args) == n + 1:
            reply = args[n]
            if not callable(reply):
                raise TypeError(f"{method.selector}(): the reply block must be callable")
            return list(args[:n]), reply
        if len(args) == n and not method.defaults:
            return list(args), None
    names = (*method.params, *((method.reply_name,) if method.reply_name else ()))
    if len(args) > len(names):
        raise TypeError(f"{method.selector}() takes {len(names)} arguments but {len(args)} were given")
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"{method.selector}() got an unexpected keyword argument {key!r}")
        if key in bound:
            raise TypeError(f"{method.selector}() got multiple values for argument {key!r}")
        bound[key] = value
    values = []
    for name in method.params:
        if name in bound:
            values.append(bound[name])
        elif name in method.defaults:
            values.append(method.defaults[name])
        else:
            raise TypeError(f"{method.selector}() missing required argument {name!r}")
    reply = bound.get(method.reply_name) if method.reply_name else None
    if reply is not None and not callable(reply):
        raise TypeError(f"{method.selector}(): the reply block must be callable")
    return values, reply


class RemoteRef:
    """One reference to an object the peer exported, received in a message.

    ``link`` is the transport it arrived on (calls on it after that link is gone
    fail), ``ident`` the peer's id for the object, ``interface`` its interface.
    """

    __slots__ = ("conn", "ident", "interface", "link")

    def __init__(self, conn: Connection, link: Any, ident: int, interface: Interface) -> None:
        self.conn = conn
        self.link = link
        self.ident = ident
        self.interface = interface

    def __repr__(self) -> str:
        return f"<nsxpc remote reference to object {self.ident} ({self.interface.protocol.__qualname__})>"

    def __del__(self) -> None:
        # A finalizer may run on any thread, in the middle of anything (even while this
        # thread holds one of the connection's locks): it only hands the release over.
        try:
            self.conn._release_later(self.link, self.ident)
        except Exception:
            pass


class ProxyCreating:
    """What every proxy offers (``NSXPCProxyCreating``): more proxies of the same remote
    object, with other error handling. Subclasses set ``_conn``, ``_target``, ``_ref``."""

    _conn: Connection
    _target: int
    _ref: RemoteRef | None

    def __dir__(self) -> list[str]:
        if self._ref is not None:
            return sorted(self._ref.interface.selectors)
        return sorted(self._conn._selectors_for(self._target))

    def remote_object_proxy_with_error_handler(self, handler: ErrorHandler, timeout: float | None = None) -> Any:
        """A proxy of the same object whose calls end in exactly one of the reply block or
        ``handler(error)`` (``-[NSXPCProxyCreating remoteObjectProxyWithErrorHandler:]``).

        Raises:
            TypeError: ``handler`` is not callable.
            ValueError: ``timeout`` is not a positive number.
        """
        return RemoteProxy(self._conn, self._target, HANDLER, handler, timeout, self._ref)

    def synchronous_remote_object_proxy_with_error_handler(
        self, handler: ErrorHandler, timeout: float | None = None
    ) -> Any:
        """A proxy of the same object whose calls wait for their reply
        (``-[NSXPCProxyCreating synchronousRemoteObjectProxyWithErrorHandler:]``).

        Raises:
            TypeError: ``handler`` is not callable.
            ValueError: ``timeout`` is not a positive number.
        """
        return RemoteProxy(self._conn, self._target, SYNC, handler, timeout, self._ref)

    def async_remote_object_proxy(self, timeout: float | None = None) -> Any:
        """An asyncio proxy of the same object: awaiting a call gives the reply's value
        (NSXPCProxyCreating, as ``Connection.async_remote_object_proxy``).

        Raises:
            ValueError: ``timeout`` is not a positive number.
        """
        from ._aio import AsyncRemoteProxy  # imported on first use: asyncio is not needed otherwise

        return AsyncRemoteProxy(self._conn, self._target, timeout, self._ref)


class RemoteProxy(ProxyCreating):
    """A proxy for an object on the other side of a connection (NSXPC's remote object proxy).

    Methods are those of the connection's ``remote_object_interface``; calling
    one sends a message. Every proxy can make further proxies of the same
    object with other error handling.
    """

    # No __slots__: a resolved method is cached as an instance attribute, so the next
    # call finds it without __getattr__ (and re-resolves if the interface changed).

    def __init__(
        self,
        conn: Connection,
        target: int,
        mode: str = PLAIN,
        handler: ErrorHandler | None = None,
        timeout: float | None = None,
        ref: RemoteRef | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if mode != PLAIN and not callable(handler):
            raise TypeError("the error handler must be callable")
        self._conn = conn
        self._target = target
        self._mode = mode
        self._handler = handler
        self._timeout = timeout
        self._ref = ref

    def __repr__(self) -> str:
        if self._ref is not None:
            what = f"{self._ref.interface.protocol.__qualname__} object {self._target} (passed by proxy)"
        else:
            what = f"object {self._target}"
        return f"<nsxpc remote proxy ({self._mode}) {what} on {self._conn!r}>"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        conn, target, mode, handler, timeout = self._conn, self._target, self._mode, self._handler, self._timeout
        ref = self._ref
        if ref is not None:
            # An object passed by proxy: its interface is the slot's, fixed when it arrived.
            found = ref.interface.method(name)
            if found is None:
                raise AttributeError(f"{ref.interface.protocol.__qualname__} has no method {name!r}")
            spec_of_ref = found

            def call_ref(*args: Any, **kwargs: Any) -> Any:
                values, reply = bind_arguments(spec_of_ref, args, kwargs)
                return conn._call(target, spec_of_ref, values, reply, mode, handler, timeout, ref)

            call_ref.__name__ = call_ref.__qualname__ = name
            self.__dict__[name] = call_ref
            return call_ref
        method = conn._method_for(target, name)
        iface = conn._remote_interface

        def call(*args: Any, **kwargs: Any) -> Any:
            spec = method if conn._remote_interface is iface else conn._method_for(target, name)
            values, reply = bind_arguments(spec, args, kwargs)
            return conn._call(target, spec, values, reply, mode, handler, timeout)

        call.__name__ = call.__qualname__ = name
        self.__dict__[name] = call
        return call
