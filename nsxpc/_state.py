"""L3: the connection's life cycle: one enum, one class, every transition here.

    INACTIVE --resume/activate--> ACTIVE <--suspend/resume--> SUSPENDED
        \\__________________________|_____________________________/
                                invalidate
                                    v
                                 INVALID (forever)

Invariants:
- A connection starts INACTIVE, which counts as one suspension (xpc(3):
  "created in a suspended state"); ``resume`` or ``activate`` lifts it.
- Suspensions nest; a resume with nothing to balance raises RuntimeError
  (Darling aborts with "connection was resumed too many times"; Python raises).
- ``activate`` on an already activated connection does nothing (L3).
- INVALID is terminal; ``invalidate`` is idempotent and reports whether this
  call was the one that invalidated.
"""

from __future__ import annotations

import enum

__all__ = ["ConnectionState", "Lifecycle"]


class ConnectionState(enum.Enum):
    """Where a connection is in its life cycle."""

    #: Created, never resumed: calls queue, nothing is sent or delivered.
    INACTIVE = "inactive"
    #: Resumed: messages flow.
    ACTIVE = "active"
    #: Suspended after activation: calls queue, nothing is delivered.
    SUSPENDED = "suspended"
    #: Invalidated: terminal.
    INVALID = "invalid"


class Lifecycle:
    """The suspend count and state of one connection or listener."""

    __slots__ = ("_activated", "_suspends", "invalid", "running")

    def __init__(self) -> None:
        self._suspends = 1
        self._activated = False
        #: Invalidated (terminal). Read-only outside this class.
        self.invalid = False
        #: Activated, not suspended, not invalid: messages may flow. Like ``invalid``, a
        #: plain attribute, recomputed on every transition, because the hot path reads it
        #: per message.
        self.running = False

    @property
    def state(self) -> ConnectionState:
        if self.invalid:
            return ConnectionState.INVALID
        if not self._activated:
            return ConnectionState.INACTIVE
        return ConnectionState.SUSPENDED if self._suspends else ConnectionState.ACTIVE

    @property
    def activated(self) -> bool:
        return self._activated

    def resume(self) -> bool:
        """Balance one suspension. Returns True when messages may now flow.

        Raises:
            RuntimeError: nothing to balance.
        """
        if self.invalid:
            return False
        if self._suspends == 0:
            raise RuntimeError("resume() without a matching suspend(): the connection is already running")
        self._suspends -= 1
        self._activated = True
        self.running = self._suspends == 0
        return self.running

    def activate(self) -> bool:
        """Lift the initial suspension once; later calls do nothing. Returns True when
        messages may now flow."""
        if self.invalid or self._activated:
            return False
        return self.resume()

    def suspend(self) -> None:
        if not self.invalid:
            self._suspends += 1
            self.running = False

    def invalidate(self) -> bool:
        """Enter INVALID. Returns True only for the call that did it."""
        if self.invalid:
            return False
        self.invalid = True
        self.running = False
        return True
