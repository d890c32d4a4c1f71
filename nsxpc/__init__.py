"""nsxpc: Apple's NSXPCConnection model for Python on Linux.

Typed remote interfaces (``@nsxpc.protocol``), secure coding with per-slot
allowlists, connections with interruption and invalidation semantics, and
listeners, over Unix sockets with msgpack. This module defines nothing: it
re-exports the public names of shared/API.md.

The message-level APIs (``XPCSession`` and its kin, ``nsxpc.xpc``) and
``nsxpc.main`` are loaded when first used (nsxpc._lazy).
"""

from typing import TYPE_CHECKING

from ._coding import Coder as Coder
from ._coding import SecureCoding as SecureCoding
from ._coding import secure_coding as secure_coding
from ._connection import Connection as Connection
from ._errors import ConnectionInterrupted as ConnectionInterrupted
from ._errors import ConnectionInvalid as ConnectionInvalid
from ._errors import DecodingError as DecodingError
from ._errors import EncodingError as EncodingError
from ._errors import ErrorCode as ErrorCode
from ._errors import InterfaceError as InterfaceError
from ._errors import LimitExceeded as LimitExceeded
from ._errors import PeerRequirementFailure as PeerRequirementFailure
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import ReplyInvalid as ReplyInvalid
from ._errors import TimedOut as TimedOut
from ._errors import XPCError as XPCError
from ._fdvalues import FileDescriptor as FileDescriptor
from ._fdvalues import SharedMemory as SharedMemory
from ._interface import Interface as Interface
from ._interface import protocol as protocol
from ._lazy import package_dir as __dir__  # noqa: F401  (PEP 562)
from ._lazy import package_getattr as __getattr__  # noqa: F401
from ._limits import Limits as Limits
from ._listener import Listener as Listener
from ._requirements import PeerRequirement as PeerRequirement
from ._state import ConnectionState as ConnectionState
from ._transactions import begin_transaction as begin_transaction
from ._transactions import end_transaction as end_transaction
from ._transactions import transaction as transaction
from ._transport import PeerCredentials as PeerCredentials
from ._values import ListenerEndpoint as ListenerEndpoint

if TYPE_CHECKING:
    from . import xpc as xpc
    from ._service import main as main
    from ._session import XPCListener as XPCListener
    from ._session import XPCReceivedMessage as XPCReceivedMessage
    from ._session import XPCRichError as XPCRichError
    from ._session import XPCSession as XPCSession

__version__ = "0.1.0"

__all__ = [
    "Coder",
    "Connection",
    "ConnectionInterrupted",
    "ConnectionInvalid",
    "ConnectionState",
    "DecodingError",
    "EncodingError",
    "ErrorCode",
    "FileDescriptor",
    "Interface",
    "InterfaceError",
    "LimitExceeded",
    "Limits",
    "Listener",
    "ListenerEndpoint",
    "PeerCredentials",
    "PeerRequirement",
    "PeerRequirementFailure",
    "ProtocolError",
    "RemoteError",
    "ReplyInvalid",
    "SecureCoding",
    "SharedMemory",
    "TimedOut",
    "XPCError",
    "XPCListener",
    "XPCReceivedMessage",
    "XPCRichError",
    "XPCSession",
    "begin_transaction",
    "end_transaction",
    "main",
    "protocol",
    "secure_coding",
    "transaction",
    "xpc",
]
