#!/usr/bin/env python3
"""atheris (libFuzzer) target for the frame and message decoder (reliability.md A1).

    python tests/fuzz/fuzz_decoder.py -runs=200000          # what `make fuzz` runs
    python tests/fuzz/fuzz_decoder.py -max_total_time=600   # a longer session

Every input goes through :func:`tests.fuzz.harness.run_one`: its first byte picks
the entry point (server before/after the handshake, client before/after it with
calls outstanding, the codec alone, the frame decoder alone), its second byte the
read chunking. Any exception is a crash: the harness raises ``InvariantBroken``
when the core breaks its contract, and the core itself must never raise.

The run starts from the committed seeds (tests/fuzz/corpus/, and the small files
of tests/corpus/hostile wrapped for the codec and as call arguments) copied to a
scratch folder, so the committed corpus is never rewritten by a run. A crash is
written to ``$NSXPC_FUZZ_ARTIFACTS`` (default /tmp/nsxpc-fuzz-artifacts/); turn it
into a ``crash_*`` case of tests/fuzz/make_corpus.py (A6).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402  (the fuzz extra: pip install -e '.[fuzz]')

#: Coverage feedback comes from the decoder (L1-L3 and the harness). The runtime and
#: endpoint modules are left uninstrumented: they are imported, never run here, and
#: instrumenting them triples the start-up.
RUNTIME = [
    "nsxpc.xpc",
    "nsxpc._aio",
    "nsxpc._bundle",
    "nsxpc._connection",
    "nsxpc._launcher",
    "nsxpc._listener",
    "nsxpc._log",
    "nsxpc._proxy",
    "nsxpc._requirements",
    "nsxpc._sandbox",
    "nsxpc._service",
    "nsxpc._session",
    "nsxpc._timers",
    "nsxpc._transactions",
    "nsxpc._transport",
    "tests.helpers",
]


def load_harness(instrument: bool) -> Any:
    """The harness module; instrumented (with the decoder) in the fuzzing child only."""
    if not instrument:
        from tests.fuzz import harness

        return harness
    with atheris.instrument_imports(include=["nsxpc", "tests.fuzz.harness"], exclude=RUNTIME):
        from tests.fuzz import harness
    return harness


HOSTILE = ROOT / "tests" / "corpus" / "hostile"
SEEDS = Path(__file__).resolve().parent / "corpus"
#: Hostile bodies above this size stay out of the seeds: libFuzzer's -max_len would cut them anyway.
MAX_SEED = 8192


def write_seeds(folder: Path) -> int:
    """Copy the committed seeds into ``folder``; return how many."""
    harness = load_harness(False)
    count = 0
    for path in sorted(SEEDS.glob("*.bin")):
        shutil.copy(path, folder / path.name)
        count += 1
    for path in sorted(HOSTILE.glob("*.bin")):
        body = path.read_bytes()
        if len(body) > MAX_SEED:
            continue
        (folder / f"codec_{path.name}").write_bytes(harness.fuzz_input("codec", body))
        (folder / f"frame_{path.name}").write_bytes(harness.fuzz_input("server-open", harness_frame(body)))
        count += 2
    return count


def harness_frame(body: bytes) -> bytes:
    from nsxpc._framing import encode_frame

    return encode_frame(body)


def main(argv: list[str]) -> int:
    """Prepare the seeds, then fuzz in a child: libFuzzer ends its process with exit(),
    which skips Python's cleanup, so the scratch folder is removed here."""
    if os.environ.get("NSXPC_FUZZ_SCRATCH"):
        scratch = Path(os.environ["NSXPC_FUZZ_SCRATCH"])
        harness = load_harness(True)
        atheris.Setup([*argv, str(scratch / "work"), str(scratch / "seeds")], harness.run_one)
        atheris.Fuzz()
        return 0  # not reached
    artifacts = os.environ.get("NSXPC_FUZZ_ARTIFACTS", "/tmp/nsxpc-fuzz-artifacts/")
    os.makedirs(artifacts, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="nsxpc-fuzz-"))
    try:
        (scratch / "seeds").mkdir()
        (scratch / "work").mkdir()
        count = write_seeds(scratch / "seeds")
        print(f"fuzz_decoder: {count} seed inputs; crashes go to {artifacts}", file=sys.stderr, flush=True)
        args = [sys.executable, argv[0], f"-artifact_prefix={artifacts}", "-max_len=16384", *argv[1:]]
        env = dict(os.environ, NSXPC_FUZZ_SCRATCH=str(scratch))
        return subprocess.run(args, env=env, check=False).returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
