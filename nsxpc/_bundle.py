"""L5: service bundles (``NAME.xpc``) and where to find them.

A bundle is a folder ``NAME.xpc/`` with ``Contents/Info.plist`` (read with
plistlib) and ``Contents/MacOS/<CFBundleExecutable>``. Bundles are searched,
in this order, in the folders of ``$NSXPC_SERVICES_PATH``, in ``XPCServices/``
beside the running main script, and through the ``nsxpc.services`` entry-point
group (each entry point loads to a bundle path or a folder of bundles).

Everything about a bundle is checked when it is read; a malformed one is
reported with its path and the reason, never half-used.
"""

from __future__ import annotations

import os
import plistlib
import sys
from collections.abc import Iterator, Mapping

import attrs

from ._errors import ConnectionInvalid
from ._sandbox import SandboxError, SandboxProfile, parse_profile

__all__ = ["BundleError", "ServiceBundle", "find_service", "load_bundle", "search_folders"]

SERVICE_TYPES = ("Application", "User")
RUN_LOOP_TYPES = ("dispatch_main", "asyncio")
DEFAULT_IDLE_EXIT_SECONDS = 30.0


class BundleError(ConnectionInvalid):
    """A service bundle is missing or malformed; the message names the bundle path and why."""


@attrs.frozen
class ServiceBundle:
    """One service bundle's Info.plist, checked.

    Attributes:
        path: the ``NAME.xpc`` folder.
        identifier: ``CFBundleIdentifier``, the name clients use.
        executable: absolute path of ``Contents/MacOS/<CFBundleExecutable>``.
        service_type: ``"Application"`` (one instance per client process) or ``"User"``.
        environment: ``XPCService/EnvironmentVariables``.
        join_existing_session: inherit the client's whole environment.
        run_loop_type: ``"dispatch_main"`` (threads) or ``"asyncio"``.
        idle_exit_seconds: ``NSXPCIdleExitSeconds``.
        sandbox: ``NSXPCSandbox``, checked (``nsxpc._sandbox``), or None when there is none.
    """

    path: str
    identifier: str
    executable: str
    service_type: str = "Application"
    environment: Mapping[str, str] = attrs.field(factory=dict)
    join_existing_session: bool = False
    run_loop_type: str = "dispatch_main"
    idle_exit_seconds: float = DEFAULT_IDLE_EXIT_SECONDS
    sandbox: SandboxProfile | None = None


def _fail(path: str, reason: str) -> BundleError:
    return BundleError(f"service bundle {path} is malformed: {reason}")


def load_bundle(path: str) -> ServiceBundle:
    """Read and check one bundle.

    Raises:
        BundleError: naming the bundle path and what is wrong with it.
    """
    path = os.path.abspath(path)
    plist_path = os.path.join(path, "Contents", "Info.plist")
    try:
        with open(plist_path, "rb") as f:
            info = plistlib.load(f)
    except FileNotFoundError:
        raise _fail(path, "Contents/Info.plist is missing") from None
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        raise _fail(path, f"Contents/Info.plist cannot be read: {exc}") from None
    if not isinstance(info, dict):
        raise _fail(path, "Info.plist is not a dictionary")
    for key in ("CFBundleIdentifier", "CFBundlePackageType", "CFBundleExecutable"):
        if not isinstance(info.get(key), str) or not info[key]:
            raise _fail(path, f"Info.plist has no {key} string")
    if info["CFBundlePackageType"] != "XPC!":
        raise _fail(path, f"CFBundlePackageType is {info['CFBundlePackageType']!r}, not 'XPC!'")
    name = info["CFBundleExecutable"]
    if "/" in name or name in (".", ".."):
        raise _fail(path, f"CFBundleExecutable {name!r} must be a file name")
    executable = os.path.join(path, "Contents", "MacOS", name)
    if not os.path.isfile(executable):
        raise _fail(path, f"the executable Contents/MacOS/{name} is missing")
    if not os.access(executable, os.X_OK):
        raise _fail(path, f"the executable Contents/MacOS/{name} is not executable")
    service = info.get("XPCService", {})
    if not isinstance(service, dict):
        raise _fail(path, "XPCService is not a dictionary")
    service_type = service.get("ServiceType", "Application")
    if service_type not in SERVICE_TYPES:
        raise _fail(path, f"XPCService/ServiceType is {service_type!r}, not one of {', '.join(SERVICE_TYPES)}")
    env = service.get("EnvironmentVariables", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise _fail(path, "XPCService/EnvironmentVariables must map strings to strings")
    join = service.get("JoinExistingSession", False)
    if not isinstance(join, bool):
        raise _fail(path, "XPCService/JoinExistingSession must be a boolean")
    run_loop = service.get("RunLoopType", "dispatch_main")
    if run_loop not in RUN_LOOP_TYPES:
        raise _fail(path, f"XPCService/RunLoopType is {run_loop!r}, not one of {', '.join(RUN_LOOP_TYPES)}")
    idle = service.get("NSXPCIdleExitSeconds", DEFAULT_IDLE_EXIT_SECONDS)
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle <= 0:
        raise _fail(path, "XPCService/NSXPCIdleExitSeconds must be a positive number")
    sandbox = None
    if "NSXPCSandbox" in service:
        try:
            sandbox = parse_profile(service["NSXPCSandbox"], path)
        except SandboxError as exc:
            raise _fail(path, f"XPCService/{exc}") from None
    return ServiceBundle(
        path=path,
        identifier=info["CFBundleIdentifier"],
        executable=executable,
        service_type=service_type,
        environment=dict(env),
        join_existing_session=join,
        run_loop_type=run_loop,
        idle_exit_seconds=float(idle),
        sandbox=sandbox,
    )


def search_folders() -> Iterator[str]:
    """Folders (and bundles) to search, in order. Read from the environment on each call."""
    for folder in os.environ.get("NSXPC_SERVICES_PATH", "").split(os.pathsep):
        if folder:
            yield folder
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main:
        yield os.path.join(os.path.dirname(os.path.abspath(main)), "XPCServices")
    yield from _entry_point_folders()


def _entry_point_folders() -> Iterator[str]:
    from importlib.metadata import entry_points

    for ep in entry_points(group="nsxpc.services"):
        try:
            target = ep.load()
            if callable(target):
                target = target()
            yield os.fspath(target)
        except Exception as exc:  # a broken plug-in must not stop the search
            import logging

            logging.getLogger("nsxpc").warning("nsxpc: entry point %s in nsxpc.services failed: %s", ep.name, exc)


def _candidates(folder: str) -> Iterator[str]:
    if folder.endswith(".xpc"):
        yield folder
        return
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for entry in names:
        if entry.endswith(".xpc"):
            yield os.path.join(folder, entry)


def find_service(name: str) -> ServiceBundle:
    """Find the bundle whose CFBundleIdentifier is ``name``.

    A bundle folder named ``<name>.xpc`` that is malformed is reported (it is
    meant to be this service); other malformed bundles met on the way are skipped.

    Raises:
        BundleError: no bundle has that identifier, or its bundle is malformed.
    """
    searched: list[str] = []
    skipped: list[str] = []
    for folder in search_folders():
        searched.append(folder)
        for candidate in _candidates(folder):
            try:
                bundle = load_bundle(candidate)
            except BundleError as exc:
                if os.path.basename(candidate) == f"{name}.xpc":
                    raise
                skipped.append(exc.message)
                continue
            if bundle.identifier == name:
                return bundle
    where = ", ".join(searched) or "no folders (set NSXPC_SERVICES_PATH)"
    # A malformed bundle may be the one meant (its folder named otherwise): say so.
    also = f"; skipped: {'; '.join(skipped)}" if skipped else ""
    raise BundleError(f"no service bundle named {name} was found (searched: {where}{also})")
