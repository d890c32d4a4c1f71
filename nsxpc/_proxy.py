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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._interface import MethodSpec

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["HANDLER", "PLAIN", "SYNC", "RemoteProxy", "bind_arguments"]

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


class RemoteProxy:
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

    def __repr__(self) -> str:
        return f"<nsxpc remote proxy ({self._mode}) object {self._target} on {self._conn!r}>"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        conn, target, mode, handler, timeout = self._conn, self._target, self._mode, self._handler, self._timeout
        method = conn._method_for(target, name)
        iface = conn._remote_interface

        def call(*args: Any, **kwargs: Any) -> Any:
            spec = method if conn._remote_interface is iface else conn._method_for(target, name)
            values, reply = bind_arguments(spec, args, kwargs)
            return conn._call(target, spec, values, reply, mode, handler, timeout)

        call.__name__ = call.__qualname__ = name
        self.__dict__[name] = call
        return call

    def __dir__(self) -> list[str]:
        return sorted(self._conn._selectors_for(self._target))

    def remote_object_proxy_with_error_handler(self, handler: ErrorHandler, timeout: float | None = None) -> Any:
        """A proxy of the same object whose calls report failures to ``handler``."""
        return RemoteProxy(self._conn, self._target, HANDLER, handler, timeout)

    def synchronous_remote_object_proxy_with_error_handler(
        self, handler: ErrorHandler, timeout: float | None = None
    ) -> Any:
        """A proxy of the same object whose calls wait for their reply."""
        return RemoteProxy(self._conn, self._target, SYNC, handler, timeout)
