#!PYTHON
"""The executable of the test service bundles (the fixture writes the shebang).

Behaviour at start, from the bundle's EnvironmentVariables:
- PROBE_ROOT: the repository root, put on sys.path (for tests.helpers.probe).
- PROBE_RECORD: a file to which this instance appends its pid (counts launches).
- PROBE_START=exit:N: exit at once with status N, before serving (a crash loop).
"""

import os
import sys

sys.path.insert(0, os.environ["PROBE_ROOT"])

from tests.helpers.launch_record import record_launch

record_launch()

start = os.environ.get("PROBE_START", "")
if start.startswith("exit:"):
    print(f"probe exiting with status {start[5:]}", file=sys.stderr)
    sys.exit(int(start[5:]))

try:
    from nsxpc import main
except ImportError:  # until nsxpc/__init__.py exports it
    from nsxpc._service import main
from tests.helpers.probe import ProbeDelegate  # noqa: E402

main(ProbeDelegate())
