"""Deliberate type errors: mypy --strict must report exactly the lines marked ``# error``
(tests/typing/test_typing.py). Not run, only type-checked."""

from __future__ import annotations

import nsxpc
from protocols.kitchen import Cookie, Kitchen, Watermelon
from tests.helpers.lab import Lab


def on_error(err: Exception) -> None:
    print(err)


def client() -> None:
    conn: nsxpc.Connection[Kitchen] = nsxpc.Connection(mach_service_name="com.example.kitchen")
    conn.remote_object_interface = nsxpc.Interface(Kitchen)
    conn.remote_object_interface = nsxpc.Interface(Lab)  # error: another protocol's interface
    proxy = conn.remote_object_proxy_with_error_handler(on_error)
    proxy.feed_me_a_cookie("chocolate")  # error: a str where a Cookie goes
    proxy.feed_me_a_watermelon(Watermelon(1.0), lambda rind: rind.no_such_field)  # error: Rind has no such field
    proxy.add(1, 2, lambda total: total.upper())  # error: the reply's value is an int
    proxy.feed_me_a_pizza(Cookie("x", 1))  # error: not in the protocol
    print(proxy.add(1, 2, print) + 1)  # error: a call through a callback proxy returns None
