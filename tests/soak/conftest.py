"""The long runs of reliability.md section 6 (``make soak``), skipped by ``make test``.

They are collected only when ``NSXPC_SOAK=1`` is set (the ``soak`` Makefile target
sets it), so ``pytest tests`` stays within its time budget. The integration
fixtures (runtime directory, child processes, connections, listeners) are the
same as tests/integration's.
"""

from __future__ import annotations

import os

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    connections,
    lab_server,
    runtime_dir,
    serve,
    service_name,
    spawn,
)

collect_ignore_glob = [] if os.environ.get("NSXPC_SOAK") == "1" else ["test_*.py"]
