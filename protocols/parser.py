"""The document parser of ``examples/parser``: an app hands untrusted files to a
crash-isolated ``Parser.xpc`` service, as Apple's apps do with XPC services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

import nsxpc

SERVICE_NAME = "com.example.parser"


@nsxpc.secure_coding
@attrs.frozen
class ParsedDocument:
    """What the parser found in one document."""

    title: str
    lines: int
    words: int
    parser_pid: int  # which instance did the work: a crash makes the next one fresh
    __xpc_name__ = "parser.ParsedDocument"


@nsxpc.protocol
class Parser(Protocol):
    def parse(self, name: str, data: bytes, reply: Callable[[ParsedDocument], None]) -> None: ...


def parser_interface() -> nsxpc.Interface:
    return nsxpc.Interface(Parser)
