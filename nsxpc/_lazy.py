"""The public names ``import nsxpc`` loads only when first used (PEP 562).

The message-level APIs (``XPCSession`` and its kin, the C-style ``nsxpc.xpc``)
and ``nsxpc.main`` cost an import that most programs never need, and every
launched service pays for ``import nsxpc``. ``nsxpc/__init__.py`` takes
:func:`package_getattr` as its module ``__getattr__``.
"""

from __future__ import annotations

from typing import Any

#: The names this module provides, for ``dir(nsxpc)`` before any is used.
NAMES = ("XPCListener", "XPCReceivedMessage", "XPCRichError", "XPCSession", "main", "xpc")


def package_getattr(name: str) -> Any:
    """``nsxpc.<name>`` for a name of :data:`NAMES`, loaded now and kept in the
    package, so that the next lookup finds it directly.

    Raises:
        AttributeError: any other name.
    """
    import nsxpc

    if name == "xpc":
        # Not "from . import xpc": that asks the package for the name first, which lands here again.
        import nsxpc.xpc

        return nsxpc.xpc  # the import bound it in the package
    if name == "main":
        from ._service import main

        found: dict[str, Any] = {"main": main}
    elif name in NAMES:
        from ._session import XPCListener, XPCReceivedMessage, XPCRichError, XPCSession

        found = {
            "XPCListener": XPCListener,
            "XPCReceivedMessage": XPCReceivedMessage,
            "XPCRichError": XPCRichError,
            "XPCSession": XPCSession,
        }
    else:
        raise AttributeError(f"module 'nsxpc' has no attribute {name!r}")
    vars(nsxpc).update(found)
    return found[name]


def package_dir() -> list[str]:
    import nsxpc

    return sorted(set(vars(nsxpc)) | set(NAMES))
