"""Hostile peers in a process of their own (test plan B1): each of ``n_frames``
connections completes the handshake, sends one malformed stream and waits for the
listener to close it. Prints one JSON line: the close latencies and any errors.

Run apart from the listener so that the good clients' latencies measure the
listener's isolation, not the hostile threads' share of one interpreter's GIL.

    python tests/helpers/hostile_sender.py SOCKET_PATH TOKEN_HEX N_FRAMES N_THREADS
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.conftest import RawClient
from tests.integration.test_hostile import malformed_frames


def main(path: str, token: bytes, n_frames: int, n_threads: int) -> None:
    corpus = malformed_frames()
    closes: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def hostile(worker: int) -> None:
        for k in range(worker, n_frames, n_threads):
            name, stream = corpus[k % len(corpus)]
            raw = RawClient(path)
            try:
                raw.handshake(token)
                start = time.perf_counter()
                raw.send(stream)
                raw.expect_closed()
                with lock:
                    closes.append(time.perf_counter() - start)
            except (OSError, AssertionError) as exc:
                with lock:
                    errors.append(f"{name}: {exc!r}")
            finally:
                raw.close()

    workers = [threading.Thread(target=hostile, args=(w,)) for w in range(n_threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"closes": closes, "errors": errors}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
