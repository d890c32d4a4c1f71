"""Proxies are typed as their protocol (issue 5 item 2; docs/ASYNCIO.md "Typing").

Runs mypy --strict (the project's configuration) on two small clients:
client_ok.py must type-check; client_bad.py must fail on exactly the lines marked
``# error`` and nowhere else, so the typing both accepts good code and catches bad.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OK = HERE / "client_ok.py"
BAD = HERE / "client_bad.py"
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<text>.*)$")


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, list[tuple[int, str]]]:
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--show-absolute-path", "--no-error-summary", str(OK), str(BAD)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors: dict[str, list[tuple[int, str]]] = {}
    for line in proc.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            errors.setdefault(Path(m["path"]).name, []).append((int(m["line"]), m["text"]))
    assert proc.returncode in (0, 1), f"mypy crashed:\n{proc.stdout}\n{proc.stderr}"
    return errors


def test_a_typed_client_type_checks(mypy_errors: dict[str, list[tuple[int, str]]]) -> None:
    assert mypy_errors.get(OK.name, []) == []


def test_type_errors_in_calls_through_a_proxy_are_caught(mypy_errors: dict[str, list[tuple[int, str]]]) -> None:
    marked = {n for n, text in enumerate(BAD.read_text().splitlines(), 1) if "  # error:" in text}
    assert len(marked) == 6
    found = {line for line, _ in mypy_errors.get(BAD.name, [])}
    assert found == marked, mypy_errors.get(BAD.name)
    assert set(mypy_errors) <= {BAD.name}, mypy_errors
