#!PYTHON
"""The executable of the asyncio test service bundle (RunLoopType asyncio); the test
writes the shebang and sets PROBE_ROOT, the repository root, in EnvironmentVariables."""

import os
import sys

sys.path.insert(0, os.environ["PROBE_ROOT"])

import nsxpc
from tests.helpers.aio_lab import AsyncLab, AsyncLabImpl


class Delegate:
    def __init__(self) -> None:
        self.impl = AsyncLabImpl()  # one per process: record/recorded span connections

    def should_accept_new_connection(self, listener: nsxpc.Listener, connection: nsxpc.Connection) -> bool:
        connection.exported_interface = nsxpc.Interface(AsyncLab)
        connection.exported_object = self.impl  # async def methods: refused without a loop
        connection.resume()
        return True


nsxpc.main(Delegate())
