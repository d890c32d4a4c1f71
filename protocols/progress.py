"""The progress example's protocols (examples/progress/): a long job in a service that
reports progress to the client and can be cancelled by it, both through objects
passed by proxy (``NSProgress``-style reporting, the NSXPC way).

- The client passes a ``ProgressSink`` to ``Jobs.start_job``: the service receives a
  proxy and calls it back over the same connection.
- The reply of ``start_job`` carries a ``JobHandle``: an object of the service, passed
  by proxy in a reply argument. The client cancels through it and asks it for the
  job's ``JobResult``, whose reply comes when the job ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

import nsxpc


@nsxpc.secure_coding
@attrs.frozen
class JobResult:
    status: str  # "completed" or "cancelled"
    done: int  # steps done
    total: int
    __xpc_name__ = "progress.JobResult"


@nsxpc.protocol
class ProgressSink(Protocol):
    def progress(self, done: int, total: int) -> None: ...


@nsxpc.protocol
class JobHandle(Protocol):
    # Ask the job to stop; replies True if it was still running.
    def cancel(self, reply: Callable[[bool], None]) -> None: ...
    # Replies when the job has ended (at once if it already has).
    def result(self, reply: Callable[[JobResult], None]) -> None: ...


@nsxpc.protocol
class Jobs(Protocol):
    # Start a job of ``steps`` steps of ``step_seconds`` each, reporting to ``sink``.
    def start_job(
        self, steps: int, step_seconds: float, sink: ProgressSink, reply: Callable[[JobHandle], None]
    ) -> None: ...
