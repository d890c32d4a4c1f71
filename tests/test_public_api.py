"""Pins the public surface and the house rules a machine can check."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import nsxpc

PACKAGE = pathlib.Path(nsxpc.__file__).parent

# The public names of shared/API.md sections 1 to 6 that exist today.
EXPECTED = {
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
}

SANS_IO = [
    "_framing",
    "_codec",
    "_messages",
    "_coding",
    "_interface",
    "_state",
    "_protocol",
    "_limits",
    "_values",
    "_errors",
]
IO_MODULES = {"socket", "selectors", "select", "threading", "subprocess", "time", "asyncio"}
PICKLE_LIKE = {
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "dill",
    "cloudpickle",
    "shelve",
    "jsonpickle",
    "multiprocessing",
}


def imports_of(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_all_is_pinned() -> None:
    assert set(nsxpc.__all__) == EXPECTED
    for name in nsxpc.__all__:
        assert getattr(nsxpc, name) is not None


def test_init_defines_nothing() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == []


def test_error_codes_match_apple() -> None:
    assert nsxpc.ConnectionInterrupted.code == 4097
    assert nsxpc.ConnectionInvalid.code == 4099
    assert nsxpc.ReplyInvalid.code == 4101
    assert nsxpc.PeerRequirementFailure.code == 4102
    assert nsxpc.DecodingError.code == 4864
    assert nsxpc.EncodingError.code == 4866
    assert 4103 <= nsxpc.RemoteError.code <= 4223
    assert 4103 <= nsxpc.TimedOut.code <= 4223
    assert nsxpc.ConnectionInterrupted("x").can_retry and nsxpc.TimedOut("x").can_retry
    assert not nsxpc.ConnectionInvalid("x").can_retry and not nsxpc.RemoteError("x").can_retry
    assert issubclass(nsxpc.InterfaceError, TypeError)


def test_sans_io_layers_do_no_io() -> None:
    for module in SANS_IO:
        found = imports_of(PACKAGE / f"{module}.py") & IO_MODULES
        assert not found, f"nsxpc/{module}.py imports {found}: L1-L3 must stay sans-I/O"


def test_no_pickle_like_module_is_imported_anywhere() -> None:
    for path in PACKAGE.rglob("*.py"):
        found = imports_of(path) & PICKLE_LIKE
        assert not found, f"{path} imports {found}"


def test_no_eval_exec_or_dynamic_import() -> None:
    banned = {"eval", "exec", "__import__", "import_module"}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in banned, f"{path}:{node.lineno} calls {name}"


def test_importing_nsxpc_loads_no_pickle_and_no_typeguard() -> None:
    code = "import sys, nsxpc; print(sorted(m for m in ('pickle', '_pickle', 'typeguard') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_import_leaves_the_message_apis_for_first_use() -> None:
    # Every launched service pays for "import nsxpc" (issue 3): the message-level APIs,
    # nsxpc.main and the timer thread's module load when first used, and then resolve.
    code = (
        "import sys, nsxpc\n"
        "lazy = ['nsxpc.xpc', 'nsxpc._session', 'nsxpc._service', 'nsxpc._timers', 'nsxpc._launcher', 'typeguard']\n"
        "print(sorted(m for m in lazy if m in sys.modules))\n"
        "print(nsxpc.XPCSession.__name__, nsxpc.xpc.__name__, nsxpc.main.__name__, 'XPCListener' in dir(nsxpc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines() == ["[]", "XPCSession nsxpc.xpc main True"]
