"""Disk quotas: a size limit on each home, and on each container's writable layer.

Homes. With ``c.GPUSpawner.homes_root`` on a btrfs filesystem with quotas
enabled, each home is a btrfs subvolume ``<homes_root>/<home volume name>`` with a
qgroup limit (``home_quota``, hub-wide or per profile), and the home volume stays
a Docker volume of the same name: a ``local`` volume bound to the subvolume
(``type=none, o=bind, device=<subvolume>``). Everything else that knows the home
by its volume (labels, archiving, the copy container) is unchanged. A write past
the limit fails with EDQUOT ("Disk quota exceeded") in the student's own server;
other homes, the engine's disk and the hub's state are not touched.

The hub runs the ``btrfs`` command (btrfs-progs), so it must see ``homes_root``
at the same path as the engine does, as root (qgroup limits need CAP_SYS_ADMIN).

Writable layers. ``storage_opt={"size": ...}`` is enforced only by some storage
drivers: ``btrfs``, ``zfs``, and ``overlay2`` on XFS mounted with ``pquota``.
:func:`writable_layer_refusal` judges ``docker info``.

Pure parts (:func:`filesystem_of`, :func:`home_quota_refusal`,
:func:`writable_layer_refusal`) take facts; :class:`HomeQuotas` runs commands
through one seam, ``runner(args) -> (exit status, output)``, whose test double
is a plain function.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .quantities import format_bytes

Runner = Callable[[list[str]], tuple[int, str]]

COMMAND_TIMEOUT = 60  # seconds a btrfs command may take (a subvolume delete on a busy disk)

#: Storage drivers whose ``storage_opt size`` limits a container's writable layer (overlay2: on XFS pquota only).
SIZE_DRIVERS = ("btrfs", "zfs")


def run_command(args: list[str]) -> tuple[int, str]:
    """Run ``args``; (exit status, stdout and stderr together). 127 when the program is missing."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        return 127, f"{args[0]}: command not found (install btrfs-progs)"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(args)}: no answer within {COMMAND_TIMEOUT} s"
    return done.returncode, (done.stdout + done.stderr).strip()


@dataclass(frozen=True)
class Mount:
    """The mounted filesystem a path lies on, from ``/proc/self/mounts``."""

    mountpoint: str
    fstype: str
    options: tuple[str, ...] = ()


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_of(path: str, mounts_text: str) -> Mount | None:
    """The filesystem ``path`` (absolute, links resolved) lies on: the mount with the longest
    matching mount point (the last one mounted wins a tie); None when no line matches."""
    best: Mount | None = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = _unescape(fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = Mount(point, fields[2], tuple(fields[3].split(",")))
    return best


@dataclass(frozen=True)
class HomesRootFacts:
    """What was found about ``homes_root``: enough for :func:`home_quota_refusal` to judge."""

    path: str
    exists: bool = False
    mount: Mount | None = None
    quota_enabled: bool | None = None  # btrfs only; None: not asked (not btrfs, or no btrfs command)
    error: str = ""  # the btrfs command's answer when it failed for another reason


BTRFS_HOWTO = (
    "mkfs.btrfs /dev/<disk>; mount /dev/<disk> {root}; btrfs quota enable {root} (docs/how-to/homes.md, 'Disk quotas')"
)


def home_quota_refusal(facts: HomesRootFacts, home_quota: int | None = None) -> str:
    """Why homes under ``facts.path`` cannot be held to a quota; '' when they can.

    The sentence says what to do. ``home_quota`` only words the message.
    """
    root = facts.path or "/srv/homes"
    howto = BTRFS_HOWTO.format(root=root)
    wanted = f"home_quota ({format_bytes(home_quota)}) " if home_quota else "home quotas "
    if not facts.path:
        return (
            f"{wanted}needs c.GPUSpawner.homes_root: a folder on a btrfs filesystem with quotas enabled,"
            f" where each home becomes a subvolume with a limit. To make one: {howto}"
        )
    if not facts.exists:
        return f"c.GPUSpawner.homes_root {facts.path} does not exist (or this hub cannot see it). To make it: {howto}"
    fstype = facts.mount.fstype if facts.mount else "unknown"
    if fstype != "btrfs":
        return (
            f"c.GPUSpawner.homes_root {facts.path} is on {fstype}, not btrfs, so {wanted}cannot be enforced."
            f" Put it on btrfs: {howto}. (XFS project quotas are the other common way, for the engine's"
            " writable layers; gpuspawner limits homes with btrfs qgroups.)"
        )
    if facts.quota_enabled is None:
        return (
            f"cannot ask btrfs about quotas on {facts.path}: {facts.error or 'no btrfs command'}. The hub needs"
            " btrfs-progs and runs it as root (with CAP_SYS_ADMIN in a container)"
        )
    if not facts.quota_enabled:
        return (
            f"btrfs quotas are not enabled on {facts.mount.mountpoint if facts.mount else facts.path},"
            f" so {wanted}cannot be enforced: run `btrfs quota enable {facts.mount.mountpoint if facts.mount else root}`"
        )
    return ""


def engine_storage(info: Mapping) -> tuple[str, str]:
    """(storage driver, backing filesystem) from ``docker info``; '' where not said."""
    status = {str(k): str(v) for k, v in (info.get("DriverStatus") or []) if k}
    return str(info.get("Driver") or ""), status.get("Backing Filesystem", "")


def writable_layer_refusal(info: Mapping, container_quota: int | None = None) -> str:
    """Why the engine of ``info`` (``docker info``) cannot limit writable layers; '' when it can.

    overlay2 on XFS can, if XFS is mounted with ``pquota``, which ``docker info`` does not say:
    accepted, and a spawn then fails with Docker's own sentence if it is not.
    """
    driver, backing = engine_storage(info)
    if driver in SIZE_DRIVERS or (driver == "overlay2" and backing == "xfs"):
        return ""
    wanted = f"container_quota ({format_bytes(container_quota)})" if container_quota else "container_quota"
    on = f"{driver} on {backing}" if backing else driver or "an unknown storage driver"
    return (
        f"{wanted} limits each server's writable layer, but the engine stores containers with {on}, which"
        " cannot limit them. Docker can with overlay2 when its data root (/var/lib/docker) is on XFS mounted"
        " with the pquota option, or with the btrfs storage driver on btrfs (docs/how-to/homes.md, 'Disk"
        " quotas'). Or remove c.GPUSpawner.container_quota."
    )


def storage_opt(container_quota: int | None) -> dict[str, str]:
    """Docker's ``StorageOpt`` for a writable layer of at most ``container_quota`` bytes."""
    return {"size": str(int(container_quota))} if container_quota else {}


class QuotaError(RuntimeError):
    """A home's subvolume or limit could not be made; the sentence says why."""


class HomeQuotas:
    """Homes as btrfs subvolumes with qgroup limits, under ``root``."""

    def __init__(self, root: str, runner: Runner = run_command, mounts: Callable[[], str] | None = None):
        self.root = os.path.normpath(root)
        self.runner = runner
        self.mounts = mounts or _read_mounts

    def path_of(self, volume: str) -> str:
        """The subvolume of the home volume ``volume`` (a valid volume name is a valid file name)."""
        if "/" in volume or volume in ("", ".", ".."):
            raise QuotaError(f"{volume!r} cannot name a home's subvolume")
        return os.path.join(self.root, volume)

    def holds(self, device: str) -> bool:
        """Is ``device`` (a bound volume's source) a subvolume directly under ``root``?"""
        return bool(device) and os.path.dirname(os.path.normpath(device)) == self.root

    def facts(self) -> HomesRootFacts:
        exists = os.path.isdir(self.root)
        if not exists:
            return HomesRootFacts(self.root)
        mount = filesystem_of(os.path.realpath(self.root), self.mounts())
        if mount is None or mount.fstype != "btrfs":
            return HomesRootFacts(self.root, True, mount)
        rc, out = self.runner(["btrfs", "qgroup", "show", self.root])
        if rc == 0:
            return HomesRootFacts(self.root, True, mount, True)
        if "quota" in out.lower() and ("not enabled" in out.lower() or "disabled" in out.lower()):
            return HomesRootFacts(self.root, True, mount, False, out)
        return HomesRootFacts(self.root, True, mount, None, out)

    def refusal(self, home_quota: int | None = None) -> str:
        return home_quota_refusal(self.facts(), home_quota)

    def _run(self, *args: str) -> str:
        rc, out = self.runner(["btrfs", *args])
        if rc != 0:
            raise QuotaError(f"`btrfs {' '.join(args)}` failed ({rc}): {out}")
        return out

    def exists(self, volume: str) -> bool:
        return os.path.lexists(self.path_of(volume))

    def create(self, volume: str, limit: int | None) -> str:
        """A new, empty subvolume for ``volume`` with ``limit`` bytes (None: none); returns its path.

        Refuses a path that exists: it holds someone's files (a home whose volume was removed by hand).
        """
        path = self.path_of(volume)
        if os.path.lexists(path):
            raise QuotaError(
                f"{path} exists but no home volume {volume} names it: it may hold a former user's files."
                " Move it away (or delete it with `btrfs subvolume delete`), then start again"
            )
        self._run("subvolume", "create", path)
        try:
            self.limit(path, limit)
        except QuotaError:
            self.remove(path, quiet=True)
            raise
        return path

    def limit(self, path: str, limit: int | None) -> None:
        """Set the subvolume's limit (on what it references); None removes it."""
        self._run("qgroup", "limit", str(int(limit)) if limit else "none", path)

    def remove(self, path: str, quiet: bool = False) -> None:
        """Delete a home's subvolume and its files."""
        if not self.holds(path):
            raise QuotaError(f"{path} is not a home under {self.root}: not deleted")
        try:
            self._run("subvolume", "delete", path)
        except QuotaError:
            if not quiet:
                raise

    @staticmethod
    def volume_options(path: str) -> dict[str, str]:
        """``driver_opts`` of a ``local`` Docker volume bound to ``path``."""
        return {"type": "none", "o": "bind", "device": path}


def bound_device(volume_info: Mapping) -> str:
    """The host path a ``local`` volume is bound to (``inspect_volume``), '' for a plain volume."""
    options = volume_info.get("Options") or {}
    if options.get("type") == "none" and "bind" in str(options.get("o", "")).split(","):
        return str(options.get("device") or "")
    return ""


def _read_mounts() -> str:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return f.read()


__all__ = [
    "HomeQuotas",
    "HomesRootFacts",
    "Mount",
    "QuotaError",
    "bound_device",
    "engine_storage",
    "filesystem_of",
    "home_quota_refusal",
    "run_command",
    "storage_opt",
    "writable_layer_refusal",
]
