"""A typed client: mypy --strict must accept this file (tests/typing/test_typing.py).

Not run, only type-checked: proxies of a ``Connection[Kitchen]`` are ``Kitchen``s.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, assert_type

import nsxpc
from protocols.kitchen import Cookie, Kitchen, Rind, Watermelon


class KitchenValues(Protocol):
    """The value-returning form, which the type system cannot derive from Kitchen."""

    def add(self, a: int, b: int) -> int: ...
    def feed_me_fries(self, fries: list[object]) -> tuple[int, str]: ...


class AsyncKitchen(Protocol):
    """The async form, declared the same way."""

    async def add(self, a: int, b: int) -> int: ...


def on_error(err: Exception) -> None:
    print("failed:", err)


def on_rind(rind: Rind) -> None:
    print(rind.thickness)


def client() -> None:
    iface = nsxpc.Interface(Kitchen)
    assert_type(iface, nsxpc.Interface[Kitchen])
    assert_type(nsxpc.Interface.with_protocol(Kitchen), nsxpc.Interface[Kitchen])

    conn: nsxpc.Connection[Kitchen] = nsxpc.Connection(mach_service_name="com.example.kitchen")
    conn.remote_object_interface = iface
    conn.resume()

    proxy = conn.remote_object_proxy_with_error_handler(on_error, timeout=5)
    assert_type(proxy, Kitchen)
    proxy.feed_me_a_cookie(Cookie("chocolate", 12))
    proxy.feed_me_a_watermelon(Watermelon(3.0), on_rind)
    proxy.add(1, 2, lambda total: print(total + 1))  # total is inferred as int
    assert_type(conn.remote_object_proxy, Kitchen)

    # Reply omitted: the type system cannot remove a trailing parameter and change the
    # return type of every method, so the sync proxy is Any; annotate it with a mirror.
    values: KitchenValues = conn.synchronous_remote_object_proxy_with_error_handler(on_error)
    total: int = values.add(1, 2)
    print(total)

    # An unparameterised Connection is Connection[Any]: proxies are Any, as before.
    plain = nsxpc.Connection(mach_service_name="com.example.kitchen")
    plain.remote_object_proxy.anything_goes(1, "2")


async def async_client() -> int:
    conn: nsxpc.Connection[Kitchen] = nsxpc.Connection(
        mach_service_name="com.example.kitchen", loop=asyncio.get_running_loop()
    )
    conn.remote_object_interface = nsxpc.Interface(Kitchen)
    conn.resume()
    kitchen: AsyncKitchen = conn.async_remote_object_proxy(timeout=5)
    return await kitchen.add(1, 2)
