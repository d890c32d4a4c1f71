#!PYTHON
"""The executable of the sandbox test bundles (the fixture writes the shebang).

Its first statements record what the process looks like before any other code
runs (NoNewPrivs, the network namespace, whether a file outside the sandbox can
be read): the sandbox must already be in force. PROBE_ROOT (from the bundle's
EnvironmentVariables) is the repository root, put on sys.path for
tests.helpers.sandbox_probe; a sandboxed bundle lists ``<root>/tests`` in its
ReadOnlyPaths.
"""

import os

early = []
with open("/proc/self/status") as f:
    early += [line.split()[1] for line in f if line.startswith("NoNewPrivs:")]
early.append(os.readlink("/proc/self/ns/net"))
try:
    with open(os.environ.get("PROBE_SECRET", "/nonexistent")):
        early.append("secret readable")
except OSError as exc:
    early.append(f"secret {type(exc).__name__}")
os.environ["PROBE_EARLY"] = " ".join(early)

import sys  # noqa: E402

sys.path.insert(0, os.environ["PROBE_ROOT"])

from nsxpc import main  # noqa: E402
from tests.helpers.sandbox_probe import SandboxProbeDelegate  # noqa: E402

main(SandboxProbeDelegate())
