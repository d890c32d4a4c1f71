"""The ``nsxpc`` logger, loaded on first use.

Every launched service pays for ``import nsxpc``, and :mod:`logging` is among the
costlier imports; a process that never logs never loads it. Messages go to the
standard ``logging.getLogger("nsxpc")``, so handlers and pytest's caplog see them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["log"]


class _LazyLogger:
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("nsxpc"), name)


log: Any = _LazyLogger()
