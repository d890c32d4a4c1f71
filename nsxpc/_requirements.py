"""L5: peer requirements (NSXPCConnection ``setCodeSigningRequirement:``, NSXPCListener
``setConnectionCodeSigningRequirement:``), on the identity the kernel gives a Unix socket.

A requirement is a frozen value: a *term* names a uid, a gid and/or an executable
path (all given fields must match), and terms combine with ``&`` and ``|``. It is
evaluated once, against the :class:`PeerCredentials` captured when the connection
was made (research/reliability.md 1.4 rule 1), before any message of that peer is
dispatched (rule 2).

Soundness (research 2.1, 2.2; docs/SECURITY.md): uid and gid come from SO_PEERCRED
and are a snapshot taken by the kernel at ``connect()``; exec'ing anything after
that does not change them, so they are sound. The executable is ``/proc/<pid>/exe``
read at accept while the peer's pidfd shows it alive: a recycled pid cannot lend
its executable, but a peer may connect, queue its request and then exec a trusted
binary, so an executable alone proves nothing against a same-uid attacker. A
requirement that could be satisfied by an executable term alone (a branch with no
uid or gid term) is therefore refused when it is configured (:func:`check_sound`).
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from ._errors import PeerRequirementFailure
from ._transport import PeerCredentials

__all__ = ["PeerRequirement", "check_peer", "check_sound"]

_ALL = "&"
_ANY = "|"


def _check_id(name: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if value is None:
            return
        if type(value) is not int:
            raise TypeError(f"PeerRequirement {name}= must be an int, not {type(value).__name__}")
        if not 0 <= value < 2**32 - 1:
            raise ValueError(f"PeerRequirement {name}={value} is not a valid id")

    return check


def _resolve_executable(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"PeerRequirement executable= must be a path string, not {type(value).__name__}")
    if not os.path.isabs(value):
        raise ValueError(f"PeerRequirement executable={value!r} must be an absolute path")
    # /proc/<pid>/exe names the file the kernel executed, symlinks resolved
    # (/usr/bin/python3 -> /usr/bin/python3.11): compare like with like.
    return os.path.realpath(value)


@attrs.frozen(repr=False, eq=True)
class PeerRequirement:
    """What a peer must be for a connection to it to be used (Apple: a code signing
    requirement, ``-[NSXPCConnection setCodeSigningRequirement:]``).

    ``PeerRequirement(uid=..., gid=..., executable=...)`` is met by a peer whose
    identity at connect matches every field given. Combine requirements with ``&``
    (both) and ``|`` (either). ``PeerRequirement.same_user()`` is met by peers
    running as this process's effective uid.

    Args:
        uid: the peer's effective uid at connect (SO_PEERCRED).
        gid: the peer's effective gid at connect (SO_PEERCRED; supplementary groups
            are not considered).
        executable: an absolute path, compared with the peer's ``/proc/<pid>/exe``
            read at connect (symlinks in the given path are resolved once, here).
            Advisory only (exec after connect defeats it): it must be combined
            with a uid or gid term on every branch, or configuring it raises.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: no field is given, an id is out of range, or the path is relative.
    """

    uid: int | None = attrs.field(default=None, kw_only=True, validator=_check_id("uid"))
    gid: int | None = attrs.field(default=None, kw_only=True, validator=_check_id("gid"))
    executable: str | None = attrs.field(default=None, kw_only=True, converter=_resolve_executable)
    #: "" for a term; "&" or "|" for a combination of ``_terms``.
    _op: str = attrs.field(default="", init=False)
    _terms: tuple[PeerRequirement, ...] = attrs.field(default=(), init=False)

    def __attrs_post_init__(self) -> None:
        if self.uid is None and self.gid is None and self.executable is None and not self._op:
            raise ValueError("PeerRequirement needs at least one of uid=, gid=, executable=")

    @classmethod
    def same_user(cls) -> PeerRequirement:
        """A requirement met by peers whose effective uid is this process's effective uid."""
        return cls(uid=os.geteuid())

    @classmethod
    def _combine(cls, op: str, left: PeerRequirement, right: PeerRequirement) -> PeerRequirement:
        terms: list[PeerRequirement] = []
        for side in (left, right):
            # (a & b) & c is flattened to one "&" of three: the repr stays readable.
            terms.extend(side._terms if side._op == op else (side,))
        combined = object.__new__(cls)
        for name, value in (("uid", None), ("gid", None), ("executable", None), ("_op", op), ("_terms", tuple(terms))):
            object.__setattr__(combined, name, value)
        return combined

    def __and__(self, other: object) -> PeerRequirement:
        if not isinstance(other, PeerRequirement):
            return NotImplemented
        return PeerRequirement._combine(_ALL, self, other)

    def __or__(self, other: object) -> PeerRequirement:
        if not isinstance(other, PeerRequirement):
            return NotImplemented
        return PeerRequirement._combine(_ANY, self, other)

    def __repr__(self) -> str:
        if self._op:
            return "(" + f" {self._op} ".join(repr(t) for t in self._terms) + ")"
        fields = [f"{n}={getattr(self, n)!r}" for n in ("uid", "gid", "executable") if getattr(self, n) is not None]
        return f"PeerRequirement({', '.join(fields)})"

    def is_satisfied_by(self, creds: PeerCredentials) -> bool:
        """True if ``creds`` (a peer's identity at connect) meets this requirement."""
        if self._op == _ALL:
            return all(t.is_satisfied_by(creds) for t in self._terms)
        if self._op == _ANY:
            return any(t.is_satisfied_by(creds) for t in self._terms)
        if self.uid is not None and creds.uid != self.uid:
            return False
        if self.gid is not None and creds.gid != self.gid:
            return False
        # An executable that could not be read soundly (no pidfd, the peer gone) matches nothing.
        return self.executable is None or (creds.executable is not None and creds.executable == self.executable)

    @property
    def is_sound(self) -> bool:
        """True if every way to meet the requirement includes a uid or gid term, the
        identity the kernel vouches for at connect (an executable alone can be faked
        by exec'ing after connect)."""
        if self._op == _ALL:
            return any(t.is_sound for t in self._terms)
        if self._op == _ANY:
            return all(t.is_sound for t in self._terms)
        return self.uid is not None or self.gid is not None


def check_sound(req: object) -> PeerRequirement:
    """Validate a requirement being configured; returns it.

    Raises:
        TypeError: ``req`` is not a PeerRequirement.
        ValueError: it can be met by an executable term alone (research 2.2).
    """
    if not isinstance(req, PeerRequirement):
        raise TypeError(f"a peer requirement must be an nsxpc.PeerRequirement, not {type(req).__name__}")
    if not req.is_sound:
        raise ValueError(
            f"{req!r} can be met by an executable alone, which a peer can fake by exec'ing that "
            "executable after it connects: combine it with a uid or gid requirement on every branch, "
            "e.g. PeerRequirement.same_user() & PeerRequirement(executable=...)"
        )
    return req


def describe_peer(creds: PeerCredentials) -> str:
    exe = creds.executable if creds.executable is not None else "executable unknown"
    return f"pid {creds.pid} (uid {creds.uid}, gid {creds.gid}, {exe})"


def check_peer(req: PeerRequirement | None, creds: PeerCredentials, what: str) -> None:
    """The one requirement check: call it where the peer's identity is first known,
    before anything of that peer is dispatched (and before anything is sent to it).

    Raises:
        PeerRequirementFailure: ``creds`` does not meet ``req`` (its message names both).
    """
    if req is not None and not req.is_satisfied_by(creds):
        raise PeerRequirementFailure(f"{what}, {describe_peer(creds)}, does not satisfy the peer requirement {req!r}")
