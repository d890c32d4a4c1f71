"""The committed corpora replayed through the whole core (reliability.md A4, A6),
and a short atheris smoke run of tests/fuzz/fuzz_decoder.py (A1).

- tests/fuzz/corpus/: frame-level cases (tests/fuzz/make_corpus.py says what each
  must give); replayed whole, a byte at a time, and in 7-byte reads.
- tests/corpus/hostile/: the body-level corpus (its expectations live in
  test_codec.py), here sent as a whole frame and spliced in as a call argument:
  an "unpack" case must invalidate the connection (Violation), a "decode" case
  must reject that call only (CallRejected with DecodingError).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from nsxpc._errors import DecodingError, ProtocolError
from nsxpc._framing import encode_frame
from nsxpc._protocol import CallRejected, Violation
from tests.fuzz import harness, make_corpus
from tests.fuzz.make_corpus import CASES

from .test_codec import HOSTILE_EXPECTATIONS

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "corpus" / "hostile"
#: A4 asks for 10 ms per rejection; a loaded 2-core machine gets slack, a bomb does not fit.
BOUND = 0.25


def replay(mode: str, stream: bytes, chunk: int = 0) -> list[Any]:
    if mode.startswith("server"):
        return harness.drive(harness.server_core(mode == "server-open"), stream, chunk)
    core, pending = harness.client_core(mode == "client-open")
    return harness.drive(core, stream, chunk, pending, harness.CLIENT_INTERFACE)


def test_the_committed_corpus_is_what_the_generator_writes() -> None:
    on_disk = {p.stem: p.read_bytes() for p in make_corpus.OUT.glob("*.bin")}
    assert sorted(on_disk) == sorted(CASES), "run: python -m tests.fuzz.make_corpus"
    for name, (mode, stream, _, _) in CASES.items():
        assert on_disk[name] == harness.fuzz_input(mode, stream), f"{name}.bin is stale: rerun make_corpus"


@pytest.mark.parametrize("name", sorted(CASES))
def test_frame_corpus_case_gives_its_events(name: str) -> None:
    mode, stream, kinds, fragment = CASES[name]
    for chunk in (0, 1, 7) if len(stream) < 20_000 else (0, 4096):
        start = time.perf_counter()
        events = replay(mode, stream, chunk)
        elapsed = time.perf_counter() - start
        assert tuple(type(e).__name__ for e in events) == kinds, f"chunk {chunk}: {events!r}"
        if fragment:
            assert fragment in events[-1].error.message
        if chunk == 0:
            assert elapsed < BOUND, f"{name} took {elapsed * 1000:.1f} ms"


def test_rejections_in_the_corpus_carry_the_specific_error() -> None:
    """Each hostile case ends in a ProtocolError (the stream) or a DecodingError (one call)."""
    for name, (mode, stream, _, _) in CASES.items():
        if not name.startswith("bad_"):
            continue
        events = replay(mode, stream)
        last = events[-1]
        if isinstance(last, Violation):
            assert type(last.error) is ProtocolError and last.error.code == 4105, name
        elif isinstance(last, CallRejected):
            # a bad argument is the caller's DecodingError; an unknown object id is a ProtocolError
            assert type(last.error) in (DecodingError, ProtocolError), name


def _spliced_call(body: bytes) -> bytes:
    # [INVOKE, 1, 1, "echo", [<body>]]: the raw msgpack item as echo's one argument
    return encode_frame(b"\x95\x03\x01\x01\xa4echo\x91" + body)


@pytest.mark.parametrize("name", sorted(HOSTILE_EXPECTATIONS))
def test_hostile_body_through_the_core(name: str) -> None:
    body = (HOSTILE / name).read_bytes()
    stage, _ = HOSTILE_EXPECTATIONS[name]
    start = time.perf_counter()
    (whole,) = replay("server-open", encode_frame(body))
    (spliced,) = replay("server-open", _spliced_call(body))
    assert time.perf_counter() - start < 2 * BOUND
    assert isinstance(whole, Violation), whole  # no body of the corpus is a valid envelope
    if stage == "unpack":
        assert isinstance(spliced, Violation), spliced
    else:
        assert isinstance(spliced, CallRejected) and isinstance(spliced.error, DecodingError), spliced


@pytest.mark.parametrize("name", ["amplifier_1mib_0x90.bin", "amplifier_1mib_0x80.bin", "nest_100000.bin"])
def test_amplifiers_through_the_core_allocate_little_beyond_the_frame(name: str) -> None:
    """A4: the 72x amplifier in a frame costs about the frame (buffer and body copy), not 72 MiB."""
    stream = _spliced_call((HOSTILE / name).read_bytes())
    core = harness.server_core(True)
    tracemalloc.start()
    try:
        events = harness.drive(core, stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(events[-1], Violation)
    assert peak < 3 * len(stream) + 1024 * 1024, f"peak {peak} bytes for a {len(stream)}-byte frame"


def test_the_fuzz_target_body_accepts_every_seed() -> None:
    """What tests/fuzz/fuzz_decoder.py feeds atheris first: every seed passes the invariant."""
    for path in sorted(make_corpus.OUT.glob("*.bin")):
        harness.run_one(path.read_bytes())
    for path in sorted(HOSTILE.glob("*.bin")):
        body = path.read_bytes()
        harness.run_one(harness.fuzz_input("codec", body))
        harness.run_one(harness.fuzz_input("server-open", encode_frame(body)))


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris not installed (pip install -e '.[fuzz]')"
)
def test_atheris_smoke_run(tmp_path: Path) -> None:
    """500 coverage-guided inputs (about 2 s on an idle machine): the target starts, loads its seeds,
    and finds no crash."""
    env = dict(os.environ, NSXPC_FUZZ_ARTIFACTS=f"{tmp_path}/")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_decoder.py"), "-runs=500", "-print_final_stats=1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done 500 runs" in out.stderr
    assert list(tmp_path.iterdir()) == [], "a crash artifact was written"
