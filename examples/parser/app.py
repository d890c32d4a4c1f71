"""A document app that never parses an untrusted file itself.

    python examples/parser/app.py [FILE ...]     (default: the files in samples/)

Each file goes to ``Parser.xpc``, the service bundle in ``XPCServices/`` beside
this script, which nsxpc launches on demand with the first message
(``Connection(service_name="com.example.parser")``). One of the samples is
hostile: it makes the parser read through a wild pointer and die of SIGSEGV.
The app is untouched: that call ends with ``ConnectionInterrupted``, the
connection's interruption handler reports it, and the next file is parsed by a
fresh instance of the service, on the same connection. The service runs
sandboxed (``NSXPCSandbox`` in its Info.plist: no network, a read-only
filesystem limited to what it needs, memory and open-file limits).

Exits 0 when every file was parsed or crashed only its parser, and every file
after a crash was parsed by a new parser process; 1 otherwise. Every wait is bounded.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: nsxpc/, protocols/

import nsxpc
from protocols.parser import SERVICE_NAME, ParsedDocument, parser_interface

HERE = Path(__file__).resolve().parent
TIMEOUT = 10.0  # seconds: a cold start included


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((HERE / "samples").glob("*.doc"))
    interrupted = threading.Event()

    def on_interruption() -> None:
        # Runs on the connection's queue; the main thread reports it, after the failed call.
        interrupted.set()

    conn = nsxpc.Connection(service_name=SERVICE_NAME)
    conn.remote_object_interface = parser_interface()
    conn.interruption_handler = on_interruption
    conn.resume()  # launches nothing: the first message does
    parser = conn.synchronous_remote_object_proxy_with_error_handler(lambda err: None, timeout=TIMEOUT)

    ok = True
    crashed_pid: int | None = None  # the pid that parsed before the last crash
    last_pid: int | None = None
    try:
        for path in files:
            try:
                doc: ParsedDocument = parser.parse(path.name, path.read_bytes())
            except nsxpc.ConnectionInterrupted as exc:
                print(f"!! {path.name}: the parser crashed on it ({exc.message})")
                if interrupted.wait(TIMEOUT):
                    print("   interruption handler: the parser went away; the next file gets a fresh one")
                else:
                    print("!! the interruption handler did not run")
                    ok = False
                interrupted.clear()
                crashed_pid = last_pid
                continue
            except (nsxpc.XPCError, OSError) as exc:
                print(f"!! {path.name}: {exc}")
                ok = False
                continue
            fresh = " (a fresh parser)" if crashed_pid is not None and doc.parser_pid != crashed_pid else ""
            if crashed_pid is not None and doc.parser_pid == crashed_pid:
                print(f"!! {path.name} was parsed by the parser that crashed")
                ok = False
            crashed_pid = None
            last_pid = doc.parser_pid
            counts = f"{doc.lines} lines, {doc.words} words"
            print(f"ok {path.name}: {doc.title!r}, {counts}, parser pid {doc.parser_pid}{fresh}")
    finally:
        conn.invalidate()
    print("the app is still running:", "everything went as described" if ok else "something went wrong")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
