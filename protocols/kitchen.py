"""Apple's kitchen from "Creating XPC Services" (Daemons and Services Programming
Guide), as an nsxpc protocol shared by the kitchen service and its clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

import nsxpc


class Cookie(nsxpc.SecureCoding):
    """A hand-written SecureCoding class: the coder names each key's class."""

    __xpc_name__ = "kitchen.Cookie"

    def __init__(self, flavor: str, chips: int) -> None:
        self.flavor = flavor
        self.chips = chips

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cookie) and (self.flavor, self.chips) == (other.flavor, other.chips)

    def __repr__(self) -> str:
        return f"Cookie({self.flavor!r}, {self.chips})"

    def encode_with_coder(self, coder: nsxpc.Coder) -> None:
        coder.encode(self.flavor, "flavor")
        coder.encode(self.chips, "chips")

    @classmethod
    def init_with_coder(cls, coder: nsxpc.Coder) -> Cookie:
        return cls(coder.decode_object_of_class(str, "flavor"), coder.decode_object_of_class(int, "chips"))


@nsxpc.secure_coding
@attrs.frozen
class Watermelon:
    weight: float
    seedless: bool = False
    __xpc_name__ = "kitchen.Watermelon"


@nsxpc.secure_coding
@attrs.frozen
class Rind:
    thickness: float
    seeds: list[int]
    __xpc_name__ = "kitchen.Rind"


@nsxpc.secure_coding
@attrs.frozen
class FrenchFry:
    length: float
    salted: bool = True
    __xpc_name__ = "kitchen.FrenchFry"


@nsxpc.secure_coding
@attrs.frozen
class Potato:
    """Not allowed in any slot of the kitchen: sending one is refused."""

    variety: str
    __xpc_name__ = "kitchen.Potato"


@nsxpc.protocol
class Kitchen(Protocol):
    def feed_me_a_cookie(self, cookie: Cookie) -> None: ...
    def feed_me_a_watermelon(self, watermelon: Watermelon, reply: Callable[[Rind], None]) -> None: ...
    def feed_me_fries(self, fries: list, reply: Callable[[int, str], None]) -> None: ...  # type: ignore[type-arg]
    def add(self, a: int, b: int, reply: Callable[[int], None]) -> None: ...
    def cookies_eaten(self, reply: Callable[[list[Cookie]], None]) -> None: ...


def kitchen_interface() -> nsxpc.Interface:
    """The kitchen interface as Apple configures it: fries arrive in a list, which
    allows only plain values by default, so the FrenchFry class is allowed there."""
    iface = nsxpc.Interface(Kitchen)
    iface.set_classes({FrenchFry, list}, "feed_me_fries", argument_index=0, of_reply=False)
    return iface
