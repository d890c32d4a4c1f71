"""A daemon started by ``systemd-socket-activate``: ``activated_daemon.py NAME MARKER``.

Writes its pid to MARKER as soon as it starts (so a test can tell it was not
running before the first connection), then serves the Probe protocol with
``Listener(mach_service_name=NAME)``, which adopts the socket that socket
activation passed. Exits when stdin closes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with open(sys.argv[2], "w") as marker:
    marker.write(f"{os.getpid()}\n")

import nsxpc
from tests.helpers._child import serve_until_parent_goes
from tests.helpers.probe import ProbeDelegate

listener = nsxpc.Listener(mach_service_name=sys.argv[1])
listener.delegate = ProbeDelegate()
listener.resume()
serve_until_parent_goes()
