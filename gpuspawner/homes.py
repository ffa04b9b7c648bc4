"""Home volumes that belong to one person, not to a name that can be given again.

A home volume is made by gpuspawner with labels naming the hub user it was made
for: the user's name, their id in the hub's database and when the hub created
them. Ids alone can come back (SQLite gives a deleted last row's id again), and
names come back when a university recycles a login; both together with the
creation time do not. At each spawn the volume of the user's home name is
checked: made for this user, it is mounted; made for someone else (a former user
of the same name, deleted while this hub did not see it), it is archived first
and the user starts with an empty home; made before gpuspawner 0.2 (no labels),
``unowned_home`` says what to do.

When a user is deleted from the hub, their home is archived or removed, as
``GPUSpawner.deleted_user_home`` says. Docker cannot rename a volume and its
labels are fixed when it is made, so archiving copies the home into a new volume
named ``<home>-archived-<UTC time>`` (labelled with where it came from and when),
and removes the original only once the copy succeeded. The copy runs in a
throwaway container (``cp -a``, as root so that every owner and mode is kept,
without a network) on the engine, never through the hub.

With ``quotas`` (``disk_quota.HomeQuotas``, from ``GPUSpawner.homes_root``), a
home volume is a ``local`` volume bound to a btrfs subvolume of its own name with
a size limit; archives are subvolumes too (without a limit), and removing such a
volume deletes its subvolume, so that a new home of the same name starts empty.

``HomeVolumes`` does the engine's part, one blocking call per step, on the hub's
Docker pool; deciding what to do (``home_verdict``) is a pure function.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import docker.errors

from .disk_quota import HomeQuotas, QuotaError, bound_device

USER = "gpuspawner.home.user"  # the hub user the volume was made for: name,
USER_ID = "gpuspawner.home.user-id"  # id in the hub's database,
USER_CREATED = "gpuspawner.home.user-created"  # and when the hub created them (ISO 8601, UTC)
ARCHIVED_FROM = "gpuspawner.home.archived-from"  # on an archive: the home it is a copy of
ARCHIVED_AT = "gpuspawner.home.archived-at"
COPY = "gpuspawner.home.copy"  # on the throwaway container that copies a home

# What a spawn finds under the user's home name.
NEW, MINE, UNOWNED, FORMER = "new", "mine", "unowned", "former"

ARCHIVE, REMOVE, KEEP = "archive", "remove", "keep"
ADOPT = "adopt"

COPY_TIMEOUT = 3600  # seconds a copy may take (a large home on a slow disk)


@dataclass(frozen=True)
class HomeOwner:
    """The hub user a home is made for."""

    name: str
    id: str  # the user's id in the hub's database, as text
    created: str = ""  # ISO 8601; '' where the hub does not know (rows from very old hubs)

    @classmethod
    def of(cls, user) -> HomeOwner:
        """From a JupyterHub ``User`` (or its ORM row)."""
        created = getattr(user, "created", None)
        if isinstance(created, datetime):
            if created.tzinfo is not None:
                created = created.astimezone(timezone.utc).replace(tzinfo=None)
            created = created.isoformat(timespec="microseconds")
        return cls(str(user.name), str(getattr(user, "id", "") or ""), str(created or ""))

    def labels(self) -> dict[str, str]:
        return {USER: self.name, USER_ID: self.id, USER_CREATED: self.created}

    def describe(self) -> str:
        return f"{self.name} (hub user id {self.id}{', created ' + self.created if self.created else ''})"


def owner_of(labels: Mapping[str, str] | None) -> HomeOwner | None:
    """The owner a volume's labels name; None for a volume gpuspawner did not make for a user."""
    labels = labels or {}
    if USER_ID not in labels:
        return None
    return HomeOwner(labels.get(USER, ""), labels[USER_ID], labels.get(USER_CREATED, ""))


def home_verdict(labels: Mapping[str, str] | None, owner: HomeOwner, exists: bool = True) -> str:
    """What a spawn of ``owner`` finds under their home name: NEW (no volume), MINE, UNOWNED (no
    owner labels: made by hand or before gpuspawner 0.2) or FORMER (someone else's)."""
    if not exists:
        return NEW
    found = owner_of(labels)
    if found is None:
        return UNOWNED
    same = found.id == owner.id and found.name == owner.name
    # A time on one side only (a hub upgraded under the volume) does not decide against.
    if same and found.created and owner.created:
        same = found.created == owner.created
    return MINE if same else FORMER


def archive_name(volume: str, when: datetime) -> str:
    """``jupyterhub-user-ana-archived-20261201T173300Z``: sortable, a valid volume name."""
    return f"{volume}-archived-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


class HomeError(RuntimeError):
    """A home could not be archived or made; nothing was removed."""


class HomeVolumes:
    """The engine's part: inspect, make, archive (copy) and remove home volumes.

    ``client`` is a docker-py ``APIClient``; ``image`` is one the engine has, with
    ``sh`` and ``cp`` (a class image), for the copy.
    """

    def __init__(
        self,
        client,
        image: str,
        log: logging.Logger | None = None,
        copy_timeout: float = COPY_TIMEOUT,
        quotas: HomeQuotas | None = None,
    ):
        self.client = client
        self.image = image
        self.log = log or logging.getLogger(__name__)
        self.copy_timeout = copy_timeout
        self.quotas = quotas

    def _inspect(self, volume: str) -> dict | None:
        try:
            return self.client.inspect_volume(volume)
        except docker.errors.NotFound:
            return None

    def _labels(self, volume: str) -> tuple[bool, dict]:
        info = self._inspect(volume)
        return info is not None, (info or {}).get("Labels") or {}

    def claim(
        self, volume: str, owner: HomeOwner, unowned: str = ADOPT, now: datetime | None = None, quota: int | None = None
    ) -> str:
        """Make ``volume`` ``owner``'s home before their server mounts it; returns what was done.

        'created', 'mine', 'adopted' (an unlabelled home, used as before), or
        'archived <name>' (the home of someone else, or an unlabelled one with
        ``unowned`` ARCHIVE, was archived and a new empty one made). With ``quotas``,
        the home's limit is set to ``quota`` bytes (None: none) each time. Raises ``HomeError``.
        """
        info = self._inspect(volume)
        exists, labels = info is not None, (info or {}).get("Labels") or {}
        verdict = home_verdict(labels, owner, exists)
        if verdict == MINE:
            self._limit(volume, info, quota)
            return "mine"
        if verdict == UNOWNED and unowned != ARCHIVE:
            self.log.warning(
                "Home %s of %s has no owner labels (made before gpuspawner 0.2, or by hand): mounted for the user"
                " of its name, as before. docs/how-to/homes.md says how to tie it to its user.",
                volume,
                owner.name,
            )
            self._limit(volume, info, quota)
            return "adopted"
        archived = ""
        if verdict != NEW:
            former = owner_of(labels)
            self.log.warning(
                "Home %s was made for %s, not for %s: archiving it before %s starts with an empty home",
                volume,
                former.describe() if former else "no recorded user",
                owner.describe(),
                owner.name,
            )
            archived = self.archive(volume, now=now)
        self._create(volume, owner.labels(), quota)
        return f"archived {archived}" if archived else "created"

    def _create(self, volume: str, labels: dict, quota: int | None = None) -> None:
        """A new volume; with ``quotas``, bound to a new subvolume limited to ``quota`` bytes."""
        if self.quotas is None:
            self.client.create_volume(volume, labels=labels)
            return
        try:
            path = self.quotas.create(volume, quota)
        except QuotaError as e:
            raise HomeError(str(e)) from None
        try:
            self.client.create_volume(
                volume, driver="local", driver_opts=self.quotas.volume_options(path), labels=labels
            )
        except BaseException:
            self.quotas.remove(path, quiet=True)  # empty: nothing was in it yet
            raise

    def _limit(self, volume: str, info: dict | None, quota: int | None) -> None:
        """Set the limit of an existing home; a home not on a subvolume cannot have one: said, not refused."""
        if self.quotas is None:
            return
        device = bound_device(info or {})
        if not self.quotas.holds(device):
            if quota:
                self.log.warning(
                    "Home %s is not a subvolume under %s (made before home quotas were turned on): its quota of %d"
                    " bytes cannot be enforced. docs/how-to/homes.md ('Disk quotas') says how to move it.",
                    volume,
                    self.quotas.root,
                    quota,
                )
            return
        try:
            self.quotas.limit(device, quota)
        except QuotaError as e:
            raise HomeError(str(e)) from None

    def retire(self, volume: str, mode: str, now: datetime | None = None) -> str:
        """The home of a deleted user: archived (returns the archive's name), removed ('removed'),
        or kept (''); '' too when there is no such volume."""
        exists, _ = self._labels(volume)
        if not exists or mode == KEEP:
            return ""
        if mode == REMOVE:
            self._remove(volume)
            return "removed"
        return self.archive(volume, now=now)

    def archive(self, volume: str, now: datetime | None = None) -> str:
        """Copy ``volume`` into a new, dated volume, then remove it; returns the archive's name."""
        now = now or datetime.now(timezone.utc)
        target = archive_name(volume, now)
        _, labels = self._labels(volume)
        kept = {k: v for k, v in labels.items() if k in (USER, USER_ID, USER_CREATED)}
        self._create(target, {**kept, ARCHIVED_FROM: volume, ARCHIVED_AT: now.isoformat(timespec="seconds")})
        try:
            self._copy(volume, target)
        except BaseException:
            self._remove(target, quiet=True)  # the half copy; the original stays
            raise
        self._remove(volume)
        self.log.info("Archived home %s as %s", volume, target)
        return target

    def _copy(self, source: str, target: str) -> None:
        host_config = self.client.create_host_config(
            binds={source: {"bind": "/from", "mode": "ro"}, target: {"bind": "/to", "mode": "rw"}},
            network_mode="none",
        )
        container = self.client.create_container(
            self.image,
            entrypoint=["/bin/sh", "-c"],
            command=["cp -a /from/. /to/"],
            user="0",  # every file, whoever owns it, with its owner and mode
            network_disabled=True,
            labels={COPY: source},
            host_config=host_config,
        )
        cid = container["Id"]
        try:
            self.client.start(cid)
            status = self.client.wait(cid, timeout=self.copy_timeout)
            code = status.get("StatusCode") if isinstance(status, dict) else status
            if code != 0:
                logs = self.client.logs(cid, tail=5).decode(errors="replace").strip()
                raise HomeError(f"copying home {source} into {target} failed ({code}): {logs}")
        except docker.errors.APIError as e:
            raise HomeError(f"copying home {source} into {target} failed: {e.explanation or e}") from None
        finally:
            try:
                self.client.remove_container(cid, force=True)
            except docker.errors.APIError as e:
                self.log.warning("Could not remove the copy container %s: %s", cid[:12], e)

    def _remove(self, volume: str, quiet: bool = False) -> None:
        """Remove the volume, and with ``quotas`` its subvolume: Docker removes only its record of a bound one."""
        device = bound_device(self._inspect(volume) or {}) if self.quotas is not None else ""
        try:
            self.client.remove_volume(volume)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if quiet:
                self.log.warning("Could not remove volume %s: %s", volume, e)
                return
            raise HomeError(f"could not remove home {volume}: {e.explanation or e}") from None
        if device and self.quotas.holds(device):
            try:
                self.quotas.remove(device)
            except QuotaError as e:
                if quiet:
                    self.log.warning("Could not delete the subvolume of %s: %s", volume, e)
                    return
                raise HomeError(f"home {volume} removed, but not its files: {e}") from None


__all__ = [
    "ADOPT",
    "ARCHIVE",
    "KEEP",
    "REMOVE",
    "HomeError",
    "HomeOwner",
    "HomeVolumes",
    "archive_name",
    "home_verdict",
    "owner_of",
]
