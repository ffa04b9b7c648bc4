"""Course profiles: who may use which image, GPUs, limits, environment and datasets.

Profiles are plain dicts in config (``c.GPUSpawner.profiles``) or in a YAML file
(``c.GPUSpawner.profiles_file``); they are validated all at once, and every error
names the profile and the field, so a typo shows before a student meets it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import yaml

from .gpus.allocation import GPURequest
from .images import ImageError, check_pinned
from .traits import format_bytes, is_mig_profile, parse_bytes, parse_duration

_SLUG = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")
_MOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
# Set by the spawner, never by a profile: they decide GPUs and the hub connection.
_RESERVED_ENV = re.compile(r"^(NVIDIA_VISIBLE_DEVICES|CUDA_VISIBLE_DEVICES|JUPYTERHUB_.*|JPY_.*)$")


class ProfileError(ValueError):
    """A profile in config that cannot be used, or a choice that cannot be made."""


class ProfileForbidden(ProfileError):
    """A profile that exists but is not for this user."""


@dataclass(frozen=True)
class Mount:
    """A dataset (read-only for everyone) or a course share (writable by some groups).

    ``source`` is a host path (absolute) or a Docker volume name; only the admin
    names sources, in the profile, never a user.
    """

    name: str  # the folder: ~/datasets/<name> or ~/shared/<name>
    source: str
    writable_by: frozenset[str] = frozenset()  # groups; empty: read-only for all


def normal_host_path(path: str) -> str:
    """An absolute host path written one way: no ``.``, no doubled or trailing ``/``."""
    normal = os.path.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal  # POSIX keeps a leading '//'


@dataclass(frozen=True)
class MountPolicy:
    """What the admin's config lets a profile mount as a dataset or share.

    ``roots``: host folders (absolute, normalised) a host-path source must be, or lie under;
    ``volumes``: Docker volume names or ``fnmatch`` patterns. Empty: nothing of that kind.
    A profile never widens it: only ``c.GPUSpawner.mount_roots`` and ``mount_volumes`` do.
    """

    roots: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def refusal(self, source: str) -> str:
        """Why ``source`` (a normalised host path or a volume name) may not be mounted; '' when it may."""
        if source.startswith("/"):
            if any(os.path.commonpath([root, source]) == root for root in self.roots):
                return ""
            allowed = ", ".join(self.roots) or "none, so no host path may be mounted"
            return (
                f"source {source!r} is not under the mount roots the admin allows (c.GPUSpawner.mount_roots: {allowed})"
            )
        if any(fnmatch.fnmatchcase(source, pattern) for pattern in self.volumes):
            return ""
        allowed = ", ".join(self.volumes) or "none, so no volume may be mounted"
        return f"source {source!r} is not a volume the admin allows (c.GPUSpawner.mount_volumes: {allowed})"

    def link_refusal(self, source: str, resolve: Callable[[str], str] = os.path.realpath) -> str:
        """Why host path ``source`` may not be mounted as it stands now: a symbolic link on the way
        leads outside every root (Docker follows it). '' when it may, or when ``source`` is a volume.

        Checked at each spawn, since whoever may write inside a root (a teacher's share) can plant
        a link after the profile was loaded. ``resolve`` follows links as the host does.
        """
        if not source.startswith("/"):
            return ""
        target = resolve(source)
        if any(os.path.commonpath([resolve(root), target]) == resolve(root) for root in self.roots):
            return ""
        return (
            f"source {source!r} leads through a symbolic link to {target!r}, which is not under the mount roots"
            f" the admin allows (c.GPUSpawner.mount_roots: {', '.join(self.roots) or 'none'})"
        )


#: Profile fields only the admin's config (``c.GPUSpawner.profiles``) may set: a profiles file that
#: sets one, whatever its value, is refused (its editors, often teachers, must not loosen them).
ADMIN_ONLY_FIELDS = ("allow_root", "internet", "home_quota", "container_quota")
_ADMIN_FLAGS = ("allow_root", "internet")  # the true-or-false ones


@dataclass(frozen=True)
class FileLimits:
    """What a profile in a profiles file (``c.GPUSpawner.profiles_file``, often the teachers') may not ask for.

    None of ``ADMIN_ONLY_FIELDS``, and at most ``max_gpus`` GPU units (whole GPUs or
    MIG instances; a shared slot counts 1). Profiles in the admin's config have no such limits.
    """

    max_gpus: int = 1
    admin_slugs: frozenset[str] = frozenset()  # the admin's config's profiles, which the file cannot replace
    admin_default: str = ""  # the admin's default profile, if it names one


@dataclass(frozen=True)
class Profile:
    """One choice a student may make."""

    slug: str
    display_name: str
    image: str
    gpus: int = 0
    gpu_kind: str = "gpu"  # "gpu" whole GPUs, "mig" MIG instances, "any" either
    gpu_model: str = ""  # a part of the GPU's name, e.g. "A100"
    gpu_min_memory: int = 0  # bytes
    mig_profile: str = ""  # e.g. "1g.10gb"
    shared_gpu: bool = False  # a slot on a GPU shared with other users, instead of whole units
    mem_limit: int | None = None  # bytes; None: the spawner's hub-wide mem_limit
    cpu_limit: float | None = None  # CPUs; None: the spawner's hub-wide cpu_limit
    shm_size: int | None = None  # bytes of /dev/shm; None: the spawner's shm_size
    description: str = ""
    environment: dict = dataclass_field(default_factory=dict, hash=False, compare=False)
    datasets: tuple[Mount, ...] = ()  # read-only, at ~/datasets/<name>
    shares: tuple[Mount, ...] = ()  # at ~/shared/<name>, writable by ``writable_by`` groups
    groups: frozenset[str] = frozenset()  # who may use it; with ``users`` empty too: everyone
    users: frozenset[str] = frozenset()
    default: bool = False
    allow_root: bool = False  # its image may run as root (admin's config only)
    internet: bool = False  # its servers may reach the internet (admin's config only)
    # Disk quotas in bytes (admin's config only); None: the spawner's hub-wide home_quota / container_quota.
    home_quota: int | None = None
    container_quota: int | None = None
    # GPU culling, in seconds (0: never); None: the spawner's hub-wide value.
    gpu_idle_timeout: float | None = None
    max_runtime: float | None = None
    jupyter_activity_grace: float | None = None
    gpu_idle_timeout_when_waiting: float | None = None
    # Waiting in line for a unit, in seconds (0: refused at once when none is free); None: the hub-wide value.
    queue_timeout: float | None = None

    def allows(self, user: str, groups: frozenset[str] | set[str], admin: bool = False) -> bool:
        """May this user choose this profile? Admins may choose every profile."""
        if admin or not (self.groups or self.users):
            return True
        return user in self.users or bool(self.groups & set(groups))

    @property
    def gpu_request(self) -> GPURequest:
        return GPURequest(
            count=self.gpus,
            shared=self.shared_gpu,
            kind=self.gpu_kind,
            model=self.gpu_model,
            min_memory=self.gpu_min_memory,
            mig_profile=self.mig_profile,
        )

    def summary(self) -> str:
        """One line for people: '1 whole GPU, 4 CPUs, 16 GiB RAM'."""
        request = self.gpu_request
        parts = [request.describe() if request.slots else "no GPU"]
        if self.cpu_limit is not None:
            parts.append(f"{self.cpu_limit:g} CPU{'s' if self.cpu_limit != 1 else ''}")
        if self.mem_limit is not None:
            parts.append(f"{format_bytes(self.mem_limit)} RAM")
        return ", ".join(parts)


_REQUIRED = ("slug", "display_name", "image")
_GPU_FIELDS = {"gpus", "gpu_kind", "gpu_model", "gpu_min_memory", "mig_profile", "shared_gpu"}
_CULL_FIELDS = ("gpu_idle_timeout", "max_runtime", "jupyter_activity_grace", "gpu_idle_timeout_when_waiting")
_QUEUE_FIELDS = ("queue_timeout",)
#: Every key a profile may have; any other is refused, naming it (docs/how-to/profiles.md has one row each).
PROFILE_FIELDS = frozenset(
    {
        "slug",
        "display_name",
        "image",
        "mem_limit",
        "cpu_limit",
        "shm_size",
        "description",
        "environment",
        "datasets",
        "shares",
        "groups",
        "users",
        "default",
        *ADMIN_ONLY_FIELDS,
    }
    | _GPU_FIELDS
    | set(_CULL_FIELDS)
    | set(_QUEUE_FIELDS)
)


def _field_error(position: int, slug: object, field: str, problem: str) -> ProfileError:
    name = f"profile {slug!r}" if isinstance(slug, str) and slug else f"profile #{position + 1}"
    return ProfileError(f"{name}: field {field!r}: {problem}")


def parse_profile(
    position: int,
    entry: object,
    allow_unpinned: bool = False,
    mount_policy: MountPolicy | None = None,
    file_limits: FileLimits | None = None,
) -> Profile:
    """Validate one profile dict (``position`` counts from 0, for messages).

    Datasets and shares must be mounts ``mount_policy`` allows; ``None``: not checked.
    ``file_limits``: the profile comes from a profiles file and must keep to them; ``None``:
    from the admin's config.
    """
    if not isinstance(entry, dict):
        raise ProfileError(f"profile #{position + 1}: must be a dict, got {type(entry).__name__}")
    slug = entry.get("slug")

    def error(field: str, problem: str) -> ProfileError:
        return _field_error(position, slug, field, problem)

    for field in _REQUIRED:
        if field not in entry:
            raise error(field, "is required")
    unknown = sorted(set(entry) - PROFILE_FIELDS)
    if unknown:
        raise error(unknown[0], f"is not a profile field; known fields: {', '.join(sorted(PROFILE_FIELDS))}")
    if file_limits is not None:
        for field in ADMIN_ONLY_FIELDS:
            if field in entry:
                raise error(field, "only the admin's config (c.GPUSpawner.profiles) may set it, not a profiles file")

    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise error(
            "slug", f"must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit; got {slug!r}"
        )
    for field in ("display_name", "image"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise error(field, f"must be a non-empty string, got {entry[field]!r}")
    try:
        check_pinned(entry["image"], allow_unpinned)
    except ImageError as e:
        raise error("image", f"{e} (or set c.GPUSpawner.allow_unpinned_images = True)") from None
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise error("description", f"must be a string, got {description!r}")

    gpus = entry.get("gpus", 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise error("gpus", f"must be a whole number of GPUs >= 0, got {gpus!r}")
    shared_gpu = entry.get("shared_gpu", False)
    if not isinstance(shared_gpu, bool):
        raise error("shared_gpu", f"must be true or false, got {shared_gpu!r}")
    if shared_gpu and gpus > 1:
        raise error("shared_gpu", f"is one slot on one shared GPU; set 'gpus' to 0 or 1, not {gpus}")
    units = 1 if shared_gpu else gpus
    if file_limits is not None and units > file_limits.max_gpus:
        raise error(
            "shared_gpu" if shared_gpu else "gpus",
            f"asks for {units} GPU{'s' if units != 1 else ''}; a profiles file may ask for at most {file_limits.max_gpus}"
            " (c.GPUSpawner.profiles_file_max_gpus): only the admin's config may set more",
        )
    mig_profile = entry.get("mig_profile", "")
    if not isinstance(mig_profile, str) or (mig_profile and not is_mig_profile(mig_profile)):
        raise error("mig_profile", f"must be a MIG profile such as '1g.10gb', got {mig_profile!r}")
    gpu_kind = entry.get("gpu_kind", "mig" if mig_profile else "gpu")
    if gpu_kind not in ("gpu", "mig", "any"):
        raise error("gpu_kind", f"must be 'gpu' (whole GPUs), 'mig' (MIG instances) or 'any', got {gpu_kind!r}")
    if mig_profile and gpu_kind == "gpu":
        raise error("gpu_kind", "is 'gpu' (whole GPUs), but 'mig_profile' asks for MIG instances")
    gpu_model = entry.get("gpu_model", "")
    if not isinstance(gpu_model, str):
        raise error("gpu_model", f"must be a part of a GPU name such as 'A100', got {gpu_model!r}")
    asks_gpu = gpus > 0 or shared_gpu
    for field in sorted(_GPU_FIELDS - {"gpus", "shared_gpu", "gpu_kind"}) + list(_CULL_FIELDS + _QUEUE_FIELDS):
        if entry.get(field) and not asks_gpu:
            raise error(field, "constrains GPUs, but this profile asks for none (set 'gpus' or 'shared_gpu')")
    culling = {}
    for field in _CULL_FIELDS + _QUEUE_FIELDS:
        value = entry.get(field)
        try:
            culling[field] = None if value is None else parse_duration(value)
        except ValueError as e:
            raise error(field, str(e)) from None

    sizes = {}
    for field in ("mem_limit", "shm_size", "gpu_min_memory", "home_quota", "container_quota"):
        value = entry.get(field)
        if value is None:
            sizes[field] = None
            continue
        try:
            sizes[field] = parse_bytes(value)
        except ValueError as e:
            raise error(field, str(e)) from None
        if sizes[field] == 0:
            raise error(field, "must be more than 0")

    cpu_limit = entry.get("cpu_limit")
    if cpu_limit is not None:
        if isinstance(cpu_limit, bool) or not isinstance(cpu_limit, (int, float)) or cpu_limit <= 0:
            raise error("cpu_limit", f"must be a number of CPUs > 0, such as 2 or 0.5; got {cpu_limit!r}")
        cpu_limit = float(cpu_limit)

    environment = entry.get("environment") or {}
    if not isinstance(environment, dict):
        raise error("environment", f"must be a mapping of NAME: value, got {environment!r}")
    env = {}
    for key, value in environment.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise error("environment", f"{key!r} is not a variable name")
        if _RESERVED_ENV.match(key):
            raise error("environment", f"{key} is set by gpuspawner and JupyterHub, not by a profile")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise error("environment", f"{key}: must be a string or a number, got {value!r}")
        env[key] = str(value)

    datasets = _parse_mounts(entry.get("datasets"), "datasets", error, False, mount_policy)
    shares = _parse_mounts(entry.get("shares"), "shares", error, True, mount_policy)
    names = [m.name for m in datasets]
    if len(set(names)) != len(names):
        raise error("datasets", "two datasets share a name")
    names = [m.name for m in shares]
    if len(set(names)) != len(names):
        raise error("shares", "two shares share a name")

    who = {}
    for field_name in ("groups", "users"):
        value = entry.get(field_name) or []
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise error(field_name, f"must be a list of names, got {value!r}")
        if not all(isinstance(v, str) and v for v in value):
            raise error(field_name, f"must be a list of names, got {value!r}")
        who[field_name] = frozenset(value)
    flags = {}
    for field_name in ("default", *_ADMIN_FLAGS):
        flags[field_name] = entry.get(field_name, False)
        if not isinstance(flags[field_name], bool):
            raise error(field_name, f"must be true or false, got {flags[field_name]!r}")

    return Profile(
        slug=slug,
        display_name=entry["display_name"].strip(),
        image=entry["image"].strip(),
        gpus=units,
        gpu_kind=gpu_kind,
        gpu_model=gpu_model.strip(),
        gpu_min_memory=sizes["gpu_min_memory"] or 0,
        mig_profile=mig_profile,
        shared_gpu=shared_gpu,
        mem_limit=sizes["mem_limit"],
        cpu_limit=cpu_limit,
        shm_size=sizes["shm_size"],
        home_quota=sizes["home_quota"],
        container_quota=sizes["container_quota"],
        description=description.strip(),
        environment=env,
        datasets=datasets,
        shares=shares,
        groups=who["groups"],
        users=who["users"],
        **flags,
        **culling,
    )


def _parse_mounts(value, field_name, error, writable: bool, policy: MountPolicy | None) -> tuple[Mount, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise error(field_name, f"must be a list of {{name, source}}, got {value!r}")
    known = {"name", "source", "description"} | ({"writable_by"} if writable else set())
    mounts = []
    for item in value:
        if not isinstance(item, dict) or not {"name", "source"} <= item.keys():
            raise error(field_name, f"each entry needs 'name' and 'source', got {item!r}")
        if item.keys() - known:
            raise error(field_name, f"unknown key(s) {sorted(item.keys() - known)}; known: {sorted(known)}")
        name, source = item["name"], item["source"]
        if not isinstance(name, str) or not _MOUNT_NAME.match(name):
            raise error(field_name, f"name {name!r} must be a folder name (letters, digits, '.', '_', '-')")
        if not isinstance(source, str) or not (
            (source.startswith("/") and ".." not in Path(source).parts) or _VOLUME_NAME.match(source)
        ):
            raise error(field_name, f"{name}: source {source!r} must be an absolute host path or a volume name")
        writable_by = item.get("writable_by", [])
        if isinstance(writable_by, str) or not isinstance(writable_by, (list, tuple)):
            raise error(field_name, f"{name}: writable_by must be a list of groups, got {writable_by!r}")
        source = normal_host_path(source) if source.startswith("/") else source
        refusal = policy.refusal(source) if policy is not None else ""
        if refusal:
            raise error(field_name, f"{name}: {refusal}")
        mounts.append(Mount(name, source, frozenset(writable_by)))
    return tuple(mounts)


def parse_profiles(
    entries: object,
    allow_unpinned: bool = False,
    mount_policy: MountPolicy | None = None,
    file_limits: FileLimits | None = None,
) -> tuple[Profile, ...]:
    """Validate the whole ``c.GPUSpawner.profiles`` list; slugs must be unique.

    Images must be pinned (a tag other than ``latest``, or a digest) unless
    ``allow_unpinned``. Datasets and shares must be mounts ``mount_policy`` allows
    (the hub passes its ``mount_roots`` and ``mount_volumes``); ``None``: not checked.
    Profiles from a profiles file keep to ``file_limits`` (see ``FileLimits``).
    """
    if not isinstance(entries, (list, tuple)):
        raise ProfileError(f"profiles must be a list of dicts, got {type(entries).__name__}")
    profiles = tuple(
        parse_profile(i, entry, allow_unpinned, mount_policy, file_limits) for i, entry in enumerate(entries)
    )
    seen: set[str] = set()
    for profile in profiles:
        if profile.slug in seen:
            raise ProfileError(f"profile {profile.slug!r}: field 'slug': two profiles share this slug")
        seen.add(profile.slug)
    if file_limits is not None:
        for profile in profiles:
            if profile.slug in file_limits.admin_slugs:
                raise ProfileError(
                    f"profile {profile.slug!r}: field 'slug': the admin's config has a profile of this slug;"
                    " a profiles file adds profiles beside the admin's, it cannot replace one"
                )
    defaults = ([file_limits.admin_default] if file_limits and file_limits.admin_default else []) + [
        p.slug for p in profiles if p.default
    ]
    if len(defaults) > 1:
        raise ProfileError(
            f"profile {defaults[1]!r}: field 'default': only one profile may be the default ({defaults[0]!r} is)"
        )
    return profiles


def allowed_profiles(
    profiles: tuple[Profile, ...], user: str, groups: frozenset[str] | set[str], admin: bool = False
) -> tuple[Profile, ...]:
    """The profiles this user may choose, in config order."""
    return tuple(p for p in profiles if p.allows(user, groups, admin))


def root_allowed(profiles: Iterable[Profile], hub_wide: bool = False) -> bool:
    """May an image that ``profiles`` use run as root? ``hub_wide`` (``c.GPUSpawner.allow_root``),
    or every one of them allows it (``allow_root``): one that does not would refuse it."""
    profiles = list(profiles)
    return hub_wide or (bool(profiles) and all(p.allow_root for p in profiles))


def choose_profile(
    profiles: tuple[Profile, ...],
    choice: object,
    user: str = "",
    groups: frozenset[str] | set[str] = frozenset(),
    admin: bool = True,
) -> Profile:
    """The profile a user chose (``user_options["profile"]``), or their default.

    The default is the allowed profile marked ``default``, else the first allowed.
    Raises ``ProfileError`` (unknown slug, naming the choices) or
    ``ProfileForbidden`` (a profile that is not for this user).
    """
    if not profiles:
        raise ProfileError("no profiles are configured (c.GPUSpawner.profiles is empty)")
    mine = allowed_profiles(profiles, user, groups, admin)
    if choice is None or choice == "":
        if not mine:
            raise ProfileForbidden("no profile is available to you: ask your teacher to add you to your course's group")
        return next((p for p in mine if p.default), mine[0])
    if not isinstance(choice, str):
        raise ProfileError(f"profile must be a profile's slug, got {choice!r}")
    for profile in profiles:
        if profile.slug == choice:
            if profile not in mine:
                raise ProfileForbidden(f"profile {choice!r} is not available to you")
            return profile
    choices = ", ".join(p.slug for p in mine)
    raise ProfileError(f"unknown profile {choice!r}; choose one of: {choices}")


class ProfilesFile:
    """Profiles read from a YAML file, re-read when it changes.

    A broken edit keeps the last good profiles and logs why, so a teacher's typo
    never takes the hub's profiles away; the first read must succeed. So does an
    edit that sets a field only the admin's config may (``FileLimits``).
    """

    def __init__(
        self,
        path: str,
        log: logging.Logger | None = None,
        allow_unpinned: bool = False,
        mount_policy: MountPolicy | None = None,
        limits: FileLimits = FileLimits(),
    ):
        self.path = Path(path)
        self.allow_unpinned = allow_unpinned
        self.mount_policy = mount_policy
        self.limits = limits
        self.log = log or logging.getLogger("gpuspawner")
        self._stamp: tuple[int, int] | None = None
        self._profiles: tuple[Profile, ...] | None = None

    def load(self) -> tuple[Profile, ...]:
        try:
            stat = self.path.stat()
        except OSError as e:
            return self._keep(f"cannot read {self.path}: {e.strerror}")
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and self._profiles is not None:
            return self._profiles
        try:
            data = yaml.safe_load(self.path.read_text())
            if isinstance(data, dict) and "profiles" in data:
                data = data["profiles"]
            profiles = parse_profiles(
                data if data is not None else [], self.allow_unpinned, self.mount_policy, self.limits
            )
        except (OSError, yaml.YAMLError, ProfileError) as e:
            self._stamp = stamp  # do not re-parse (and re-log) until it changes again
            return self._keep(f"{self.path}: {e}")
        if self._profiles is not None:
            self.log.info("Profiles reloaded from %s: %s", self.path, ", ".join(p.slug for p in profiles))
        self._stamp, self._profiles = stamp, profiles
        return profiles

    def _keep(self, why: str) -> tuple[Profile, ...]:
        if self._profiles is None:
            raise ProfileError(why)
        self.log.error("Keeping the last good profiles: %s", why)
        return self._profiles
