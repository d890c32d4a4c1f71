"""Nothing from the wire is unpickled, evaluated or imported by name (DESIGN.md rule 2;
reliability.md F1, F2).

- AST scan of every module of nsxpc/: no import of a pickle-like or code-loading
  module; no call of eval, exec, compile, __import__, import_module, find_class,
  loads/load on marshal or pickle; ``getattr`` with a computed name only at the
  reviewed sites listed in ``GETATTR_SITES`` (the dispatch site resolves a
  selector the interface already admitted, never the raw wire string).
- Runtime: a child process runs a client and a listener through real calls
  (coded objects, errors, a rejected call) with an audit hook installed; it
  reports every import that nsxpc's own code triggered and every pickle,
  marshal, exec or compile event raised from an nsxpc frame. ``marshal`` and
  ``copyreg`` are loaded by the interpreter itself at start-up, so for those the
  check is that nsxpc never imports or calls them, not their absence from
  ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nsxpc"

BANNED_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "pickletools",
    "marshal",
    "shelve",
    "copyreg",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "multiprocessing",
    "runpy",
    "code",
    "codeop",
    "imp",
}
BANNED_CALLS = {"eval", "exec", "compile", "__import__", "import_module", "find_class", "reload", "run_path"}
#: ``from importlib import X`` is allowed only for these X (reading entry-point metadata names no module).
IMPORTLIB_ALLOWED = {"importlib.metadata"}
#: Reviewed ``getattr(obj, <computed name>)`` sites: (module, source of the call) -> why it is safe.
GETATTR_SITES = {
    ("_connection", "getattr(obj, method.selector, None)"): "dispatch: method came from Interface.method(), "
    "so the selector is one the protocol declares; unknown selectors were rejected by the core",
    ("_connection", "getattr(obj, s, None)"): "selectors of the exported interface, not of the wire",
    ("_coding", "getattr(self, name)"): "encoding: attrs field names of the sender's own class",
    ("_log", "getattr(logging.getLogger('nsxpc'), name)"): "module __getattr__ of the lazy logger (code names)",
    ("_protocol", "getattr(self, f)"): "__slots__ of the event classes",
    ("_protocol", "getattr(other, f)"): "__slots__ of the event classes",
    ("_requirements", "getattr(self, n)"): "a constant tuple of field names",
}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.stem, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def test_no_pickle_like_or_code_loading_module_is_imported() -> None:
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in imported:
                top = module.split(".")[0]
                assert top not in BANNED_MODULES, f"nsxpc/{name}.py:{node.lineno} imports {module}"
                if top == "importlib":
                    assert any(module.startswith(ok) for ok in IMPORTLIB_ALLOWED) and not module.endswith(
                        "import_module"
                    ), f"nsxpc/{name}.py:{node.lineno} imports {module}"


def test_no_eval_exec_compile_or_dynamic_import_is_called() -> None:
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = (
                    func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
                )
                assert called not in BANNED_CALLS, f"nsxpc/{name}.py:{node.lineno} calls {ast.unparse(func)}"
                if isinstance(func, ast.Attribute) and func.attr in {"loads", "load"}:
                    base = ast.unparse(func.value)
                    assert base not in {"pickle", "marshal", "_pickle", "shelve"}, f"nsxpc/{name}.py:{node.lineno}"
            if isinstance(node, ast.Name):
                assert node.id != "__builtins__", f"nsxpc/{name}.py:{node.lineno} reaches into __builtins__"


def test_getattr_with_a_computed_name_only_at_reviewed_sites() -> None:
    found = set()
    for name, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "setattr", "delattr"}
                and len(node.args) >= 2
                and not isinstance(node.args[1], ast.Constant)
            ):
                site = (name, ast.unparse(node))
                found.add(site)
                assert site in GETATTR_SITES, (
                    f"nsxpc/{name}.py:{node.lineno}: {site[1]} resolves a computed attribute name; if the name "
                    "can never come off the wire, add it to GETATTR_SITES in tests/test_no_pickle.py with the reason"
                )


def test_the_scan_would_catch_a_violation() -> None:
    """The scanners must be able to fail (rule 9): run them over a planted module."""
    planted = ast.parse("import pickle\nfrom importlib import import_module\nx = eval('1')\nmarshal.loads(b'')\n")
    calls = [n for n in ast.walk(planted) if isinstance(n, ast.Call)]
    assert {getattr(c.func, "id", None) or c.func.attr for c in calls} & BANNED_CALLS == {"eval"}  # type: ignore[attr-defined]
    assert any(isinstance(n, ast.Import) and n.names[0].name in BANNED_MODULES for n in ast.walk(planted))
    assert any(isinstance(c.func, ast.Attribute) and ast.unparse(c.func.value) == "marshal" for c in calls)


# --------------------------------------------------------------------------- runtime

CHILD = textwrap.dedent(
    """
    import json, sys

    ROOT = sys.argv[1]
    sys.path.insert(0, ROOT)
    nsxpc_imports, nsxpc_events = set(), []
    WATCHED = {"pickle.find_class", "marshal.loads", "marshal.load", "marshal.dumps", "exec", "compile"}

    def nsxpc_frame():
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name.startswith("nsxpc"):
                return name
            if not (name.startswith("importlib") or name.startswith("_frozen_importlib")):
                return None
            frame = frame.f_back
        return None

    def hook(event, args):
        if event == "import":
            who = nsxpc_frame()
            if who is not None:
                nsxpc_imports.add(args[0])
        elif event in WATCHED:
            who = sys._getframe(1).f_globals.get("__name__", "")
            if who.startswith("nsxpc"):
                nsxpc_events.append([event, who])

    sys.addaudithook(hook)
    import nsxpc
    from protocols.kitchen import FrenchFry, Potato, Rind, Watermelon, kitchen_interface

    class Impl:
        def feed_me_a_cookie(self, cookie): pass
        def feed_me_a_watermelon(self, melon, reply): reply(Rind(thickness=melon.weight, seeds=[1]))
        def feed_me_fries(self, fries, reply): reply(len(fries), "yum")
        def add(self, a, b, reply): raise ValueError("no")
        def cookies_eaten(self, reply): reply([])

    class Delegate:
        def should_accept_new_connection(self, listener, conn):
            conn.exported_interface = kitchen_interface()
            conn.exported_object = Impl()
            conn.resume()
            return True

    listener = nsxpc.Listener.anonymous()
    listener.delegate = Delegate()
    listener.resume()
    conn = nsxpc.Connection(listener_endpoint=listener.endpoint)
    conn.remote_object_interface = kitchen_interface()
    conn.resume()
    sync = conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=30)
    assert sync.feed_me_a_watermelon(Watermelon(weight=2.0)) == Rind(thickness=2.0, seeds=[1])
    assert sync.feed_me_fries([FrenchFry(length=1.0)]) == (1, "yum")
    try:
        sync.add(1, 2)
    except nsxpc.RemoteError:
        pass
    try:
        sync.feed_me_fries([Potato(variety="x")])
    except nsxpc.EncodingError:
        pass
    conn.invalidate()
    listener.invalidate()
    loaded = sorted(m for m in ("pickle", "_pickle", "shelve", "dill", "cloudpickle", "jsonpickle", "pickletools")
                    if m in sys.modules)
    print(json.dumps({"imports": sorted(nsxpc_imports), "events": nsxpc_events, "loaded": loaded}))
    """
)


def test_a_real_round_trip_imports_and_calls_nothing_pickle_like() -> None:
    with tempfile.TemporaryDirectory(prefix="nx", dir="/tmp") as runtime:
        env = dict(os.environ, NSXPC_RUNTIME_DIR=runtime, PYTHONPATH=str(ROOT))
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(ROOT)], capture_output=True, text=True, timeout=120, env=env, check=False
        )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], f"pickle-like modules in sys.modules: {report['loaded']}"
    assert report["events"] == [], f"nsxpc code raised {report['events']}"
    imported = {m.split(".")[0] for m in report["imports"]}
    assert imported, "the audit hook saw no import by nsxpc: the check itself is broken"
    assert "msgpack" in imported and "socket" in imported, sorted(imported)
    assert not imported & BANNED_MODULES, f"nsxpc imported {sorted(imported & BANNED_MODULES)}"


def test_the_runtime_check_would_catch_pickle() -> None:
    """The same child with one pickle round trip planted in nsxpc's name must report it."""
    planted = CHILD.replace(
        "conn.invalidate()",
        "exec(compile('import pickle; pickle.loads(pickle.dumps(Rind(thickness=1.0, seeds=[])))', 'x', 'exec'),"
        " {'__name__': 'nsxpc._planted', 'Rind': Rind})\nconn.invalidate()",
    )
    with tempfile.TemporaryDirectory(prefix="nx", dir="/tmp") as runtime:
        env = dict(os.environ, NSXPC_RUNTIME_DIR=runtime, PYTHONPATH=str(ROOT))
        out = subprocess.run(
            [sys.executable, "-c", planted, str(ROOT)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] == ["_pickle", "pickle"]
    assert ["pickle.find_class", "nsxpc._planted"] in report["events"]
    assert "pickle" in report["imports"]
