"""GPUSpawner: DockerSpawner with course profiles, exclusive GPUs and a home volume.

Thin glue: profiles come from ``profiles.py``, GPU decisions from
``gpus.allocation``, what the hub's spawners share from ``hub_state.py``, and
the container itself is described by ``container.describe``; this module only
translates that description into Docker's calls, and records the decisions
where a restarted hub finds them again (labels on the container, and the
server's state).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace
from datetime import datetime, timezone
from fractions import Fraction
from functools import cached_property
from urllib.parse import urlsplit

import aiohttp
import docker.tls
import docker.types
from docker.utils import kwargs_from_env
from dockerspawner import DockerSpawner
from jupyterhub.httpclient import fetch
from jupyterhub.spawner import SpawnException
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import make_ssl_context, maybe_future, random_port, url_path_join
from markupsafe import Markup
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import (
    Bool,
    Callable,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from . import homes, refusal_log
from . import labels as label
from .container import HubSettings, ImageFacts, Limits, ServerContainer, culling_rules, describe
from .culler.policy import GPU_IDLE, MAX_RUNTIME, CullRules
from .culler.records import stop_record_for
from .disk_quota import HomeQuotas, storage_opt
from .docker_pool import DEFAULT_THREADS
from .eventfiles import DenialLog
from .gpus import (
    NO_RESOURCES,
    PACK,
    SPREAD,
    Assignment,
    Caps,
    GPURequest,
    Inventory,
    Ledger,
    NoCapacity,
    Policy,
    Requester,
    ServerResources,
    holder_key,
    parse_static_inventory,
)
from .gpus.allocation import NoFreeUnit
from .gpus.inventory import InventoryError
from .gpus.nvml import NVMLUnavailable, discover, discover_auto
from .gpus.queue import Refusal
from .gpus.resources import REASONS as CAP_REASONS
from .homes import HomeError, HomeOwner, HomeVolumes
from .hub_state import HubState, hub_state
from .images import ImageError, cuda_refusal, declared_cuda, resource_variables_refusal
from .lab_network import DEFAULT_NAME as DEFAULT_LAB_NETWORK
from .lab_network import INTERNET_SUFFIX
from .labels import adopt_containers, reconcile_ledger
from .profiles import (
    FileLimits,
    MountPolicy,
    Profile,
    ProfileError,
    ProfileForbidden,
    ProfilesFile,
    allowed_profiles,
    choose_profile,
    normal_host_path,
    parse_profiles,
    root_allowed,
)
from .quantities import format_duration, parse_bytes
from .reservations import ReservationBook, ReservationError, ReservationsFile, parse_reservations
from .spawn_page import render_profile_cards
from .startup import (
    Exited,
    NotAServer,
    command_line,
    exit_message,
    last_lines,
    never_serves,
    not_a_server_message,
    top_commands,
    watch_start,
)
from .summary import ServerSummary, summarize
from .traits import Duration
from .usage import book as usage_book
from .usage import recorder as _usage_recorder  # noqa: F401 - its metrics, in the hub's /hub/metrics
from .usage import records as usage
from .usage.budgets import parse_budgets
from .usage.budgets import standings as budget_standings

#: The GPU culler's stop reasons (its stops file), as a usage record's stop reasons.
CULLER_REASONS = {
    GPU_IDLE: usage.GPU_CULLER,
    MAX_RUNTIME: usage.GPU_CULLER,
    "reservation": usage.RESERVATION,
    "budget": usage.BUDGET,
    "orphan": usage.RECONCILER,
}


class LabSpawnException(SpawnException):
    """A ``SpawnException`` whose sentence is what the spawn page shows: not its code and class name
    ("503 SpawnException(reason=no_gpu): ..."), which JupyterHub shows of any other exception."""

    def __init__(self, message: str, *, expected: bool = False, **kwargs):
        super().__init__(message, **kwargs)
        self.jupyterhub_message = self.message
        if self.message_html:
            self.jupyterhub_html_message = self.message_html
        #: A refusal the lab makes on purpose (no GPU free, a quota, a budget, a wait run out): the hub logs
        #: it as one WARNING line (``refusal_log``), not an ERROR with a traceback.
        self.expected = expected

    def __str__(self):
        if self.expected:
            return f"refused ({self.reason}): {self.message}"
        return f"{self.status_code} {self.reason}: {self.log_message or self.message}"


def refused(status: int, message: str) -> web.HTTPError:
    """An expected refusal of a choice (an unknown profile, one the user may not choose): the sentence
    alone on the spawn page (not "HTTP 400: Bad Request (...)"), one WARNING line in the log."""
    e = web.HTTPError(status, message)
    e.jupyterhub_message = message
    e.expected = True
    return e


def apply_profile_choice(spawner: GPUSpawner, user_options: dict) -> None:
    """The default ``apply_user_options``: resolve ``user_options["profile"]``.

    The profile is the only thing a user chooses: any other option (an image,
    GPUs, environment, limits, mounts) is refused with HTTP 400, an unknown
    profile with 400 and a profile not for this user with 403, before anything
    is allocated. The form, the REST body and ``/hub/spawn?opt-profile=`` all
    arrive here.
    """
    try:
        extra = sorted(set(user_options) - {"profile"})
        if extra:
            raise refused(400, f"only a profile may be chosen; not allowed: {', '.join(map(str, extra))}")
        try:
            spawner.profile = spawner.choose_profile(user_options.get("profile"))
            spawner._lengthen_start_timeout(spawner.profile)
        except ProfileForbidden as e:
            raise refused(403, str(e)) from None
        except ProfileError as e:
            raise refused(400, str(e)) from None
    except web.HTTPError:
        # JupyterHub saved these options as the next default before asking us:
        # forget them, or every later visit to /hub/spawn would be refused again.
        _remember_options(spawner, {})
        raise
    # JupyterHub's admin page shows user_options.profile: record the default too.
    spawner.user_options = {**user_options, "profile": spawner.profile.slug}
    _remember_options(spawner, spawner.user_options)


def _remember_options(spawner: GPUSpawner, options: dict) -> None:
    orm = getattr(spawner, "orm_spawner", None)
    if orm is None or not hasattr(orm, "__table__"):
        return  # not a database row (unit tests)
    orm.user_options = options
    session = object_session(orm)
    if session is not None:
        session.commit()


class GPUSpawner(DockerSpawner):
    """A DockerSpawner for GPU course labs.

    Each server runs the image of the profile its user chose, holds whole GPUs
    that no other server holds, and mounts the user's persistent home volume.
    Everything DockerSpawner's config does keeps working; the defaults that
    differ are ``network_name`` ("gpuspawner-lab", a network of its own), ``use_internal_ip`` and ``remove`` (True).
    """

    # --- configuration

    profiles = List(
        Dict(),
        help="""The course profiles users choose from.

        A list of dicts, each with:

        - ``slug``: the id a user sends (``user_options["profile"]``), e.g. ``"ml101-gpu"``;
        - ``display_name``, ``description``: what the spawn page shows;
        - ``image``: the single-user image, pinned (a tag other than ``latest``, or a digest);
        - the GPU request: ``gpus`` (default 0), ``gpu_kind``, ``gpu_model``,
          ``gpu_min_memory``, ``mig_profile``, or ``shared_gpu``;
        - ``mem_limit``, ``cpu_limit``, ``shm_size``: limits (default: this spawner's);
        - ``environment``: variables for the server;
        - ``datasets`` (read-only at ``~/datasets/<name>``) and ``shares``
          (at ``~/shared/<name>``, writable by the ``writable_by`` groups), from
          sources ``mount_roots`` and ``mount_volumes`` allow;
        - ``groups`` and/or ``users`` who may choose it (none: everyone; admins: all);
        - ``default``: the profile used when a user chooses none (else their first);
        - only here, never in ``profiles_file``: ``allow_root`` (its image may run as
          root) and ``internet`` (its servers may reach the internet; default false).

        Empty: one profile made of ``DockerSpawner.image`` and no GPU, as in plain DockerSpawner.
        The list is validated whenever a spawner loads its config (a broken
        profile refuses every spawn with an error naming the profile and the field).
        """,
    ).tag(config=True)

    allow_unpinned_images = Bool(
        False,
        help="""Allow profile images without a pinned tag (no tag, or ``latest``).

        By default every profile's image must name a tag other than ``latest`` or
        a digest, so that the environment cannot change under a running course.
        """,
    ).tag(config=True)

    driver_cuda_version = Unicode(
        "",
        help="""The highest CUDA version the host's NVIDIA driver supports, e.g. ``"12.4"``.

        Read from NVML when ``gpus`` is ``"nvml"`` or ``"auto"``; set it with a
        static ``gpus`` list. A GPU profile whose image declares a newer CUDA
        (``CUDA_VERSION`` or a label) is refused before any GPU is assigned.
        Empty: not checked.
        """,
    ).tag(config=True)

    @validate("profiles")
    def _validate_profiles(self, proposal):
        try:
            parse_profiles(proposal.value, allow_unpinned=True)  # pinning: see lab_profiles
        except ProfileError as e:
            raise TraitError(f"GPUSpawner.profiles: {e}") from None
        return proposal.value

    profiles_file = Unicode(
        "",
        help="""A YAML file of profiles (often the teachers'), offered after the admin's ``profiles``.

        A list of profile dicts (or a mapping with a ``profiles:`` list), in the
        same form as ``profiles``; it adds profiles and cannot replace one of the
        admin's (same slug) or its default. An edit takes effect on the next spawn, without
        a hub restart; a broken edit keeps the last good profiles and logs why.
        Its editors cannot widen what it may mount: that is ``mount_roots`` and
        ``mount_volumes``, here in the hub's config. Nor may it set the fields only
        the admin's config may (``allow_root``, ``internet``), or ask for more GPUs
        than ``profiles_file_max_gpus``: such an edit is refused like a broken one.
        """,
    ).tag(config=True)

    profiles_file_max_gpus = Int(
        1,
        min=0,
        help="""The most GPU units (whole GPUs or MIG instances) a profile in ``profiles_file`` may ask for.

        A profile there asking for more is refused, naming the profile and the field
        (a profiles file edit keeps the last good profiles). 1 covers the usual course
        profile (one GPU, one MIG instance or a shared slot per student); a profile that
        gives each student several GPUs is the admin's call about the lab's capacity:
        put it in ``profiles``, or raise this. 0: a profiles file may not ask for GPUs.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    mount_roots = List(
        Unicode(),
        help="""Host folders under which a profile's dataset or share ``source`` may lie.

        A host-path source is allowed only if it is one of these folders or inside
        one (compared component by component: ``/srv/datasets-evil`` is not inside
        ``/srv/datasets``). Each must be an absolute path; it is normalised. For example::

            c.GPUSpawner.mount_roots = ["/srv/datasets", "/srv/courses"]

        Empty (the default): no profile may mount a host path. Whoever may edit the
        profiles (``profiles_file`` is often the teachers') can mount only what is here,
        never ``/``, the Docker socket or the hub's own files. A profile that names a
        source outside is refused with its profile and field named: the hub does not
        start (``check_config``), or a profiles file edit keeps the last good profiles.
        ``"/"`` is accepted only written as ``"/"``, and it lets a profile mount the
        whole host, the Docker socket included: do not.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @validate("mount_roots")
    def _validate_mount_roots(self, proposal):
        roots = []
        for root in proposal.value:
            if not root.startswith("/") or ".." in root.split("/"):
                raise TraitError(f"GPUSpawner.mount_roots: {root!r} must be an absolute host path, without '..'")
            normal = normal_host_path(root)
            if normal == "/" and root != "/":
                raise TraitError(
                    f"GPUSpawner.mount_roots: {root!r} is the whole host; write '/' itself if you mean it (not advised)"
                )
            roots.append(normal)
        return roots

    mount_volumes = List(
        Unicode(),
        help="""Docker volumes a profile's dataset or share ``source`` may name: names or ``fnmatch`` patterns.

        For example ``["course-*", "imagenet"]``: ``course-ml101`` and ``imagenet``
        may be mounted, ``jupyterhub-data`` (the hub's own) or another student's
        home volume may not. Patterns match the whole name, case-sensitively.

        Empty (the default): no profile may mount a volume. Avoid ``"*"``: it would
        let a profile mount every volume of the engine, students' homes included.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @validate("mount_volumes")
    def _validate_mount_volumes(self, proposal):
        for pattern in proposal.value:
            if not pattern.strip() or pattern.startswith("/"):
                raise TraitError(
                    f"GPUSpawner.mount_volumes: {pattern!r} must be a volume name or pattern such as 'course-*'"
                    " (host folders go in mount_roots)"
                )
        return proposal.value

    gpus = Union(
        [Unicode(), List(Dict())],
        default_value=[],
        help="""The GPUs of this host: ``"nvml"``, ``"auto"``, or a static list.

        - ``"nvml"``: discover them through NVML (``nvidia-ml-py``) when the hub
          starts; with ``check_config(c)`` the hub does not start if no driver answers.
        - ``"auto"``: NVML when a driver answers, else no GPUs until it does (asked
          again every ``nvml_retry_interval``; the GPU dashboard says so).
        - a list of dicts with ``index`` (as ``nvidia-smi`` numbers it), ``uuid``
          (``GPU-...``, from ``nvidia-smi -L``), ``name`` and ``memory`` (``"80G"``);
          a MIG instance also has ``mig_profile`` (``"1g.10gb"``) and ``parent_uuid``.

        A GPU in MIG mode is handed out only as its MIG instances, never whole.
        Units are passed to Docker by uuid.
        """,
    ).tag(config=True)

    @validate("gpus")
    def _validate_gpus(self, proposal):
        value = proposal.value
        if isinstance(value, str):
            if value not in ("nvml", "auto"):
                raise TraitError(f'GPUSpawner.gpus: must be "nvml", "auto" or a list of GPUs, got {value!r}')
            return value
        try:
            parse_static_inventory(value)
        except InventoryError as e:
            raise TraitError(f"GPUSpawner.gpus: {e}") from None
        return value

    placement = CaselessStrEnum(
        [PACK, SPREAD],
        default_value=PACK,
        help="""Where new work goes when several units fit.

        ``"pack"``: fill GPUs that are already in use (MIG instances of a busy
        GPU, the fullest shared GPU), keeping idle GPUs free for whole-GPU
        requests. ``"spread"``: prefer idle GPUs. Either way the smallest unit that
        fits is taken first.
        """,
    ).tag(config=True)

    shared_gpu_users = Int(
        4,
        min=2,
        help="""K: how many servers may share one GPU, for profiles with ``shared_gpu``.

        Sharing is time-slicing: it isolates neither memory nor faults. One
        student can take all of the GPU's memory or crash the CUDA context of
        the others. Only MIG instances are isolated in hardware.
        """,
    ).tag(config=True)

    max_gpus_per_user = Float(
        None,
        allow_none=True,
        help="""The most GPUs one user may hold at once, across all their named servers.

        A MIG instance counts as one GPU, a shared slot as 1/K. None: no limit.
        """,
    ).tag(config=True)

    group_gpu_quotas = Dict(
        value_trait=Float(),
        help="""GPU quotas of JupyterHub groups: the course's cap, e.g. ``{"ml101": 4}``.

        The GPUs held by all members of a group together stay within its quota;
        a user in several groups is held to each. Counted as ``max_gpus_per_user``.
        """,
    ).tag(config=True)

    max_cpus_per_user = Float(
        None,
        allow_none=True,
        min=0,
        help="""The most CPUs one user's servers may have together, across all their named servers.

        Each server counts its ``cpu_limit`` (its profile's, else the hub-wide
        ``cpu_limit``) from its start until it stops. A start that would go past
        it is refused at once, saying what the user's servers use. None: no limit.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    max_memory_per_user = ByteSpecification(
        None,
        allow_none=True,
        help="""The most memory one user's servers may have together (``"8G"``), across all their named servers.

        Each server counts its ``mem_limit`` (its profile's, else the hub-wide
        ``mem_limit``), as ``max_cpus_per_user`` counts CPUs. None: no limit.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    group_cpu_quotas = Dict(
        value_trait=Float(),
        help="""CPU quotas of JupyterHub groups: a course's cap, e.g. ``{"ml101": 64}``.

        The CPUs of all the servers of a group's members together stay within its
        quota; a user in several groups is held to each. Counted as ``max_cpus_per_user``.
        One dict per resource, as ``group_gpu_quotas``: each cap can be set alone.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    group_memory_quotas = Dict(
        help="""Memory quotas of JupyterHub groups: a course's cap, e.g. ``{"ml101": "256G"}``.

        Sizes as ``mem_limit`` takes them (bytes, or a number with K, M, G or T).
        Counted as ``max_memory_per_user``, for all the members of the group together.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @validate("group_memory_quotas")
    def _validate_group_memory_quotas(self, proposal):
        try:
            return {group: parse_bytes(size) for group, size in proposal.value.items()}
        except ValueError as e:
            raise TraitError(f"GPUSpawner.group_memory_quotas: {e}") from None

    quota_exempt_admins = Bool(
        True,
        help="""JupyterHub admins are exempt from the GPU, CPU and memory quotas, per user and per group.

        What an admin's servers hold still counts in their groups' totals.
        """,
    ).tag(config=True)

    home_volume_name = Unicode(
        "jupyterhub-user-{username}",
        help="""The Docker volume that keeps a user's home, mounted at the image's home.

        Expands ``{username}``, ``{servername}`` and the other DockerSpawner
        volume fields. It is created on first use and never removed by the
        spawner: stopping, crashing or culling a server keeps it. Empty: no
        home volume.
        """,
    ).tag(config=True)

    home_path = Unicode(
        "",
        help="""Where the home volume is mounted in the container.

        Empty (default): the image's home, read from the image (its ``HOME``,
        else its working directory, else ``/home/jovyan``).
        """,
    ).tag(config=True)

    mem_limit = Union(
        [Callable(), ByteSpecification(allow_none=True)],
        default_value=4 * 1024**3,
        allow_none=True,
        help="""The memory of a server whose profile sets no ``mem_limit`` (default ``"4G"``).

        So that no server is unlimited: without a limit one student's notebook
        can take the host's memory, and the kernel's OOM killer then picks from
        everyone's servers, the hub's included. 4G runs a notebook with pandas and a
        small model; give profiles that need more their own ``mem_limit``. A server
        counts its limit against ``max_memory_per_user`` and ``group_memory_quotas``.
        Set on ``c.GPUSpawner`` (or ``c.Spawner``); a callable ``(spawner) -> size``
        works, as in DockerSpawner. None: no limit (not advised).

        .. versionchanged:: 0.2
           The default was None (no limit).
        """,
    ).tag(config=True)

    cpu_limit = Union(
        [Callable(), Float(allow_none=True)],
        default_value=2.0,
        allow_none=True,
        help="""The CPUs of a server whose profile sets no ``cpu_limit`` (default 2).

        Docker's CPU quota: the server's processes get at most this many CPUs' time.
        Counted against ``max_cpus_per_user`` and ``group_cpu_quotas``. None: no limit.

        .. versionchanged:: 0.2
           The default was None (no limit).
        """,
    ).tag(config=True)

    deleted_user_home = CaselessStrEnum(
        [homes.ARCHIVE, homes.REMOVE, homes.KEEP],
        default_value=homes.ARCHIVE,
        help="""What becomes of a user's home volume when the user is deleted from the hub.

        ``"archive"``: copied into ``<home>-archived-<UTC time>`` (Docker cannot rename a
        volume), then removed; ``"remove"``: removed; ``"keep"``: left as it is. Either
        way a new user given the same name starts with an empty home: a home volume is
        labelled with the hub user it was made for, and one made for someone else is
        archived at the next spawn. See docs/how-to/homes.md.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    unowned_home = CaselessStrEnum(
        [homes.ADOPT, homes.ARCHIVE],
        default_value=homes.ADOPT,
        help="""What a spawn does with a home volume that names no owner (made before gpuspawner 0.2, or by hand).

        ``"adopt"``: mount it for the user of its name, as before (logged; docs/how-to/homes.md
        says how to tie it to its user). ``"archive"``: archive it, and the user starts
        with an empty home (for a lab that knows its names were given again).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    home_copy_image = Unicode(
        "",
        help="""The image whose ``sh`` and ``cp`` archive a home (a throwaway container, no network).

        Empty: the first profile's image, which the engine already has.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    homes_root = Unicode(
        "",
        help="""A folder on a btrfs filesystem with quotas enabled, where each home is a subvolume with a size limit.

        Each home volume is then a ``local`` Docker volume bound to the subvolume
        ``<homes_root>/<home volume name>``, made at the user's first spawn; its limit
        is ``home_quota`` (the profile's, else the hub-wide one), set again at each
        spawn. The hub runs ``btrfs`` (btrfs-progs) as root and must see this folder
        at the same path as the engine. Empty (default): homes are plain Docker
        volumes, on the engine's disk, without a limit. See docs/how-to/homes.md.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @validate("homes_root")
    def _validate_homes_root(self, proposal):
        if proposal.value and not proposal.value.startswith("/"):
            raise TraitError(f"GPUSpawner.homes_root: must be an absolute path, got {proposal.value!r}")
        return normal_host_path(proposal.value) if proposal.value else ""

    home_quota = ByteSpecification(
        None,
        allow_none=True,
        help="""The most a home may hold, e.g. ``"10G"``, unless the server's profile sets ``home_quota``.

        Enforced with btrfs qgroups under ``homes_root``: a write past it fails with
        "Disk quota exceeded" in the student's server, and nothing else fills up.
        ``check_config`` refuses to start the hub when a quota is set and ``homes_root``
        cannot enforce it. None: no limit.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    container_quota = ByteSpecification(
        None,
        allow_none=True,
        help="""The most a server may write outside its home and mounts (its writable layer), e.g. ``"20G"``.

        Unless the server's profile sets ``container_quota``. Docker's ``storage_opt size``:
        enforced only by the ``btrfs`` and ``zfs`` storage drivers, and by ``overlay2``
        on XFS mounted with ``pquota``; ``check_config`` refuses to start the hub when
        the engine's storage cannot. None: no limit.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    quarantine_after = Int(
        2,
        min=0,
        help="""Set a unit aside after this many failed starts in a row caused by the device.

        The device's: the NVIDIA hook or runtime could not set up the GPU (an Xid, a GPU
        fallen off the bus). Placement is deterministic and would pick it again; a
        quarantined unit is skipped until an admin puts it back (``gpuspawner quarantine
        put-back`` or the GPU dashboard). 0: never.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    quarantine_file = Unicode(
        "gpuspawner-quarantine.json",
        help="""Where the quarantined units are kept, so that a restarted hub still skips them.

        Read by the hub (again whenever it changes), the dashboard and the command.
        Relative to the hub's working directory. Empty: quarantine lasts until the hub restarts.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    nvml_retry_interval = Duration(
        60,
        help="""How often to ask NVML again while it does not answer (``gpus`` "auto"): ``"1m"``.

        The hub hands out no GPU until it answers, then the GPUs it finds. 0: never again.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @property
    def inventory_retry(self) -> float:
        """Seconds between asks of NVML while it does not answer; 0 where the GPUs are not NVML's."""
        return self.nvml_retry_interval if self.gpus in ("nvml", "auto") else 0

    shm_size = ByteSpecification(
        None,
        allow_none=True,
        help="""Size of ``/dev/shm`` for every server, unless its profile sets one.

        PyTorch DataLoader workers share batches through ``/dev/shm``, and
        Docker's default of 64M makes them fail; ``"1G"`` or more suits GPU work.
        None: Docker's default.
        """,
    ).tag(config=True)

    max_concurrent_pulls = Int(
        2,
        min=1,
        help="""How many image pulls run at once, on threads of their own.

        A pull never holds up other users' spawns: their Docker calls go
        through gpuspawner's Docker pool (``docker_threads``), not the pull threads. Missing profile images start pulling
        in the background when the hub first uses its GPU ledger (its first poll, spawn page or spawn).
        """,
    ).tag(config=True)

    docker_threads = Int(
        DEFAULT_THREADS,
        min=1,
        help="""How many Docker calls (create, start, inspect, stop, ...) run at once, for all users together.

        DockerSpawner runs every call of every user on one thread, so when a
        class starts together each student waits for all the others, and for
        any slow call. Here each server's calls still run one at a time and in
        order, while up to this many servers' calls run side by side. The bound
        keeps a burst from flooding the engine: dockerd does much of create and
        start one at a time anyway, and more threads only queue there. Image
        pulls (``pull_policy`` "ifnotpresent") run on threads of their own
        (``max_concurrent_pulls``) and take none of these. Read once, when the
        hub's shared state is made (its first Docker call, ledger or profiles file).
        """,
    ).tag(config=True)

    prepull_images = Bool(
        True,
        help="""Pull every profile's missing image in the background when the hub first uses
        its GPU ledger, and from ``check_config`` when the hub starts, so that students rarely wait for a pull.""",
    ).tag(config=True)

    denials_file = Unicode(
        "gpuspawner-denials.jsonl",
        help="""Where refused GPU spawns are appended, one JSON object a line.

        Each line has time, user, server, profile, reason (``no_gpu``,
        ``user_quota``, ``group_quota``, and for CPU and memory caps ``user_cpu_quota``,
        ``user_memory_quota``, ``group_cpu_quota``, ``group_memory_quota``), the message
        the student saw and ``count``:
        refusals of one user for one profile and reason within ``denials_merge_window``
        are one record. The demand that was turned away, for the GPU dashboard.
        Rotated by size (``denials_file_max_size``). Relative to the hub's working
        directory. Empty: not recorded.
        """,
    ).tag(config=True)

    denials_merge_window = Duration(
        60,
        help="""Refusals of one user for one profile, for one reason, within this long are one record.

        The first is written at once (``count`` 1); those after it within the window
        are written as one record when the window closes, with their ``count``, the
        time of the first (``first``) and the latest's time and message. A REST loop
        of refusals thus writes two lines a window, not one a request. 0: every
        refusal is a line of its own.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    denials_file_max_size = ByteSpecification(
        "10M",
        help="""Rotate ``denials_file`` when a line would make it larger than this (``"10M"``); 0: never.

        The file becomes ``FILE.1`` (``FILE.1`` becomes ``FILE.2``, ...), by the
        standard library's ``RotatingFileHandler``; ``denials_file_backups`` are kept.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    denials_file_backups = Int(
        3,
        min=1,
        help="""How many rotated generations of ``denials_file`` are kept (``FILE.1`` ... ``FILE.N``).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    device_list_as_volume_mounts = Bool(
        True,
        help="""Also name each server's GPUs as volume mounts
        (``/var/run/nvidia-container-devices/<uuid>``), besides Docker's device request.

        With the NVIDIA Container Toolkit's ``accept-nvidia-visible-devices-as-volume-mounts
        = true`` and ``accept-nvidia-visible-devices-envvar-when-unprivileged = false``
        (deploy/hub/nvidia/config.toml), the toolkit takes a container's GPUs from these
        mounts, which only the spawner sets, and never from an environment variable, which
        an image can set. With the toolkit's defaults the mounts are ignored.
        """,
    ).tag(config=True)

    gpu_idle_timeout = Duration(
        0,
        help="""Stop a GPU server whose GPUs stayed idle this long (``"30m"``); 0: never.

        Idle: its own processes ran kernels less than the culler's
        ``busy_threshold`` (5%) of the time, read through NVML. A profile's
        ``gpu_idle_timeout`` overrides it. Carried out by the GPU culler service
        (docs/how-to/culling.md); the home volume is kept.
        """,
    ).tag(config=True)

    max_runtime = Duration(
        0,
        help="""Stop a GPU server after this long (``"4h"``), whatever it does; 0: never.
        A profile's ``max_runtime`` overrides it. Carried out by the GPU culler service.""",
    ).tag(config=True)

    jupyter_activity_grace = Duration(
        0,
        help="""A server active in Jupyter this recently (``"10m"``) is not stopped for GPU
        idleness (``max_runtime`` still applies); 0: no grace. A profile's
        ``jupyter_activity_grace`` overrides it.""",
    ).tag(config=True)

    queue_timeout = Duration(
        0,
        help="""How long a spawn may wait in line for a GPU when none is free (``"20m"``); 0: refused at once.

        Only a spawn refused because every unit it fits is in use waits; quotas, caps,
        forbidden profiles and unmet CUDA are refused at once. First come, first
        served; a student who already holds a unit of the kind waits behind those who
        hold none; a unit that frees goes to the first waiting spawn it fits. Waiting
        holds nothing. The spawn page shows the place in line, live. A profile's
        ``queue_timeout`` overrides it. JupyterHub's ``start_timeout`` is lengthened by
        the profile's ``queue_timeout`` for its spawns, so the wait is not cut short.
        The line is the hub's, in memory: a restarted hub fails the spawns that were
        waiting (their students start again); nobody held anything (docs/how-to/queue.md).
        """,
    ).tag(config=True)

    usage_db_url = Unicode(
        "sqlite:///gpuspawner-usage.sqlite",
        help="""Where every server's holding of GPU units is recorded (docs/how-to/usage.md): an SQLAlchemy
        URL, as JupyterHub's ``db_url`` (SQLite by default, in the hub's working directory, next to
        its own database; PostgreSQL or MySQL by URL). The schema is created and upgraded (Alembic)
        when the hub first uses it. Empty: nothing is recorded, and budgets cannot apply.""",
    ).tag(config=True)

    usage_retention = Duration(
        0,
        help="""How long usage records are kept after they close (``"400d"``): what
        ``gpuspawner usage purge`` deletes when given no ``--older-than``; 0: kept until purged by hand.
        Run the purge daily (cron, a systemd timer) to apply it.""",
    ).tag(config=True)

    gpu_budgets = List(
        Dict(),
        help="""GPU-hour budgets (docs/how-to/usage.md). Each a dict: who (``user``, ``group`` or
        ``every_user: true``), ``gpu_hours``, ``per`` (``week`` from ``week_starts``, or ``term`` from
        ``from`` to ``until``) in ``time_zone``, optionally one ``profile`` and ``admins_exempt``
        (default true). A spawn with a budget already spent is refused at once, naming it; a running
        server that spends the rest is stopped by the GPU culler after ``budget_grace``.""",
    ).tag(config=True)

    budget_grace = Duration(
        600,
        help="""How long a server whose budget is spent may run on before the GPU culler stops it: the
        warning window, said on the dashboard; 0: at once.""",
    ).tag(config=True)

    reservations = List(
        Dict(),
        help="""Lab hours: units reserved for a course at set times (docs/how-to/queue.md).

        Each a dict: ``name``; who it serves (``groups``, ``users``); which units (``units``: their
        ids) or how many (``gpus``, optionally ``gpu_model``, ``gpu_kind``, ``mig_profile``); which
        profiles may use them (``profiles``; none: any of a member's); when: ``weekly`` (e.g.
        ``[{"day": "tuesday", "start": "14:00", "end": "16:00"}]``) with ``time_zone``, ``from`` and
        ``until`` dates, and/or ``dates`` (``{"day", "start", "end"}`` or ``{"start", "end"}`` as
        date and time). During a window the reserved units go only to those it serves; others'
        servers on them are stopped by the GPU culler at its start (their homes kept), and a server
        started before on such a unit has its ``max_runtime`` cut to end by then. Validated when
        the hub starts: overlaps beyond the lab's units, unknown profiles, impossible dates are refused.
        """,
    ).tag(config=True)

    reservations_file = Unicode(
        "",
        help="""A YAML file of more reservations (a list, or ``reservations:`` and a list), as
        ``reservations`` takes them; re-read when it changes. A broken edit keeps the last good
        reservations and logs why. Empty: none.""",
    ).tag(config=True)

    queue_file = Unicode(
        "gpuspawner-queue.json",
        help="""Where the hub writes who waits in line for what, and since when, at each change.

        The dashboard lists it; the GPU culler reads which units someone waits for
        (``gpu_idle_timeout_when_waiting``). Relative to the hub's working directory.
        Empty: not written.
        """,
    ).tag(config=True)

    gpu_idle_timeout_when_waiting = Duration(
        0,
        help="""While someone waits in line for a GPU server's units, stop it after this long without
        GPU use (``"10m"``), sooner than ``gpu_idle_timeout``; 0: no sooner. Idle as for
        ``gpu_idle_timeout``; the student is told why on their next spawn page, and the home is
        kept. A profile's ``gpu_idle_timeout_when_waiting`` overrides it. Carried out by the GPU
        culler, which reads the line from ``queue_file``.""",
    ).tag(config=True)

    stops_file = Unicode(
        "gpuspawner-stops.jsonl",
        help="""Where the GPU culler records the servers it stops, and why, one JSON object a line.

        The spawner reads it when a server stops, to tell the student on the next
        spawn page; the dashboard lists the recent stops. Relative to the hub's
        working directory. Empty: not recorded.
        """,
    ).tag(config=True)

    clocks_file = Unicode(
        "gpuspawner-clocks.json",
        help="""Where the GPU culler writes its clocks each round, for the dashboard's "My GPU" page.

        One JSON object, replaced whole each round: for each running GPU server, each rule that can
        stop it (``gpu_idle_timeout``, ``gpu_idle_timeout_when_waiting``, ``max_runtime``, a spent
        budget's ``budget_grace``, the next lab hours on its GPU), since when it counts and when it
        would stop the server. Relative to the hub's working directory. Empty: not written (the page
        then lists the rules without their clocks).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    my_gpu_page = Unicode(
        "",
        help="""The students' "My GPU" page, under the hub's base URL (``services/gpu-dashboard/mine``).

        ``services.add_dashboard`` sets it. The hub's home page (gpuspawner's ``home.html``) and
        the spawn's progress link to it, where a student sees their server's GPU and how long until
        each rule would stop it. Empty: no link.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    ledger_sync_interval = Float(
        30,
        min=0,
        help="""Check the GPU ledger against the running containers at most this often (seconds).

        The hub rebuilds its ledger from the containers' labels when it starts; after
        that, units whose container no longer runs (a server the hub had forgotten,
        stopped by the GPU culler's reconciler; a server that exited) are freed, and
        a labelled container the ledger lacks is adopted, at the first use of the
        ledger (a poll, a spawn, the spawn page) after this many seconds.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    allow_root = Bool(
        False,
        help="""Allow images whose user is root, for every profile.

        By default a server runs as its image's non-root user, and an image
        whose user is root (no ``USER``, ``root``, uid 0 written any way, ``00``, or
        a name the image's ``/etc/passwd`` gives uid 0) is refused with a message saying how to fix it. To allow root for one
        profile only, give it ``allow_root: True`` in ``profiles`` (a profiles file
        may not).
        """,
    ).tag(config=True)

    no_new_privileges = Bool(
        True, help="Start servers with ``no-new-privileges``: setuid binaries cannot raise privileges."
    ).tag(config=True)

    cap_drop = List(
        Unicode(),
        ["ALL"],
        help="""Linux capabilities dropped from every server (default: all of them).

        A Jupyter server running as a non-root user needs none. Set ``[]`` to keep Docker's defaults.
        """,
    ).tag(config=True)

    pids_limit = Int(
        4096,
        min=0,
        help="""The most processes and threads one server may run (0: no limit).

        Stops a fork bomb from taking the host; DataLoader workers and their threads fit well within it.
        """,
    ).tag(config=True)

    lab_network = Dict(
        help="""The students' network, as ``gpuspawner.lab_network.add_lab_network(c)`` sets it.

        Set by that call in ``jupyterhub_config.py``, not by hand: it makes the
        network, the rules that let a server reach the hub's API and nothing else,
        and points the hub's API at the network's gateway. Every server joins
        ``name``; servers of profiles with ``internet: true`` join ``<name>-internet``.
        ``network_name = "host"`` instead runs servers in the host's own network,
        which docs/topic/security.md explains the dangers of.
        """,
    ).tag(config=True)

    # --- DockerSpawner defaults that differ

    @default("network_name")
    def _default_network_name(self):
        # Each server in its own network namespace on the lab's network (docs/topic/security.md).
        return self.lab_network.get("name") or DEFAULT_LAB_NETWORK

    @default("use_internal_ip")
    def _default_use_internal_ip(self):
        # host: no port bindings; a user-defined network: its internal ip (as DockerSpawner)
        return self.network_name != "bridge"

    @default("remove")
    def _default_remove(self):
        return True

    @validate("remove")
    def _validate_remove(self, proposal):
        # DockerSpawner with remove=False restarts the old container with its old
        # GPUs, limits and port, behind the ledger's back: every start must be fresh.
        if not proposal.value:
            raise TraitError(
                "GPUSpawner.remove must be True: each start creates a new container with the"
                " GPUs, image and limits decided for it. Home volumes are kept either way."
            )
        return proposal.value

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return apply_profile_choice

    @default("options_form")
    def _default_options_form(self):
        return GPUSpawner.render_profile_form

    @default("options_from_form")
    def _default_options_from_form(self):
        def options_from_form(formdata):
            # Every field is passed on, so that apply_user_options refuses what it does not know.
            options = {}
            for key, values in formdata.items():
                if key == "_xsrf":
                    continue
                options[key] = values[0] if isinstance(values, list) and len(values) == 1 else values
            if options.get("profile") == "":
                del options["profile"]
            return options

        return options_from_form

    # --- per-server state

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        refusal_log.install(self.log)  # expected refusals: one WARNING line each, not an ERROR and a traceback
        self._progress: list[dict] = []  # this spawn's steps, for progress()
        self._progress_changed = asyncio.Event()
        self.stop_reason: dict = {}  # {"time", "reason", "message"} of the culler's last stop of this server

    profile: Profile | None = None
    gpu_ids: tuple[str, ...] = ()
    gpu_shared: bool = False
    image_digest: str = ""  # the sha256 actually run: "what exactly did this student run"
    container: ServerContainer | None = None  # this start's container, as described (container.describe)
    _image: ImageFacts | None = None  # the profile's image, inspected before this start's GPUs are decided

    @property
    def shared(self) -> HubState:
        """What all spawners of this hub share: the ledger, its lock, the Docker pool, ... (``hub_state.py``)."""
        return hub_state(self)

    @property
    def mount_policy(self) -> MountPolicy:
        """What profiles may mount as datasets and shares: ``mount_roots`` and ``mount_volumes``."""
        return MountPolicy(tuple(self.mount_roots), tuple(self.mount_volumes))

    @property
    def lab_profiles(self) -> tuple[Profile, ...]:
        """Every profile of the hub: the admin's ``profiles``, then those of ``profiles_file``; mounts
        checked against the admin's ``mount_roots`` and ``mount_volumes`` (here, where all config is known)."""
        admins = parse_profiles(self.profiles, self.allow_unpinned_images, self.mount_policy) if self.profiles else ()
        if self.profiles_file:
            files = self.shared.profiles_files
            source = files.get(self.profiles_file)
            if source is None:
                limits = FileLimits(
                    self.profiles_file_max_gpus,
                    admin_slugs=frozenset(p.slug for p in admins),
                    admin_default=next((p.slug for p in admins if p.default), ""),
                )
                source = files[self.profiles_file] = ProfilesFile(
                    self.profiles_file, self.log, self.allow_unpinned_images, self.mount_policy, limits
                )
            return admins + source.load()
        return admins or (Profile(slug="default", display_name="Default", image=self.image),)

    def reservation_book(self) -> ReservationBook:
        """The lab hours of ``reservations`` and ``reservations_file``, placed on the hub's units; checked
        against the profiles. The same book until either changes."""
        shared = self.shared
        if shared.config_reservations is None:
            shared.config_reservations = parse_reservations(
                list(self.reservations), known_profiles=self._profile_slugs()
            )
        entries = shared.config_reservations
        if self.reservations_file:
            files = shared.reservations_files
            source = files.get(self.reservations_file)
            if source is None:
                source = files[self.reservations_file] = ReservationsFile(self.reservations_file, self.log)
            entries += source.load(known_profiles=self._profile_slugs())
        return shared.book_of(entries)

    def _profile_slugs(self) -> frozenset[str]:
        return frozenset(p.slug for p in self.lab_profiles)

    @property
    def user_profiles(self) -> tuple[Profile, ...]:
        """The profiles this user may choose; admins see every profile."""
        r = self.requester
        return allowed_profiles(self.lab_profiles, r.user, r.groups, self._is_admin)

    @property
    def _is_admin(self) -> bool:
        return bool(getattr(self.user, "admin", False))

    def choose_profile(self, choice) -> Profile:
        r = self.requester
        return choose_profile(self.lab_profiles, choice, r.user, r.groups, self._is_admin)

    @property
    def holder(self) -> str:
        return holder_key(self.user.name, self.name or "")

    @property
    def lab_summary(self) -> ServerSummary | None:
        """What this running server holds and the rules that stop it, in sentences: for the hub's home
        page (gpuspawner's ``home.html``). None before it has a profile (and never an error: a page reads it)."""
        try:
            profile = self.profile
            if profile is None:
                return None
            ledger = self.shared.ledger
            held = ledger.assignment(self.holder)
            if held is not None and held.ids == self.gpu_ids:
                units, shared = held.units, held.shared
            else:  # the hub restarted and has not looked at its containers yet: the state's units
                known = {u.id: u for u in ledger.inventory}
                units, shared = tuple(known[i] for i in self.gpu_ids if i in known), self.gpu_shared
            others = max((len(ledger.holders_of(u.id)) - 1 for u in units), default=0) if shared else 0
            return summarize(
                profile.display_name,
                units,
                shared,
                self.culling_rules_of(profile),
                others=others,
                slots=self.shared_gpu_users,
                my_gpu=self.my_gpu_page,
            )
        except Exception:  # noqa: BLE001 - the home page shows without it rather than fail
            self.log.debug("No summary of %s for the home page", self.holder, exc_info=True)
            return None

    def get_state(self):
        state = super().get_state()
        if self.profile is not None:
            state["profile"] = self.profile.slug
        if self.gpu_ids:
            state["gpus"] = list(self.gpu_ids)
            state["gpu_shared"] = self.gpu_shared
        if self.image_digest:
            state["image"] = self.image
            state["image_digest"] = self.image_digest
        if self.stop_reason:
            state["stop_reason"] = self.stop_reason
        return state

    def load_state(self, state):
        super().load_state(state)
        slug = state.get("profile")
        self.profile = next((p for p in self.lab_profiles if p.slug == slug), None)
        self.gpu_ids = tuple(state.get("gpus", ()))
        self.gpu_shared = bool(state.get("gpu_shared", False))
        self.image_digest = state.get("image_digest", "")
        self.stop_reason = state.get("stop_reason") or {}

    def clear_state(self):
        super().clear_state()
        self.gpu_ids = ()
        self.gpu_shared = False
        self.image_digest = ""
        self.profile = None  # each start resolves the profile again
        self.container = None
        # stop_reason stays: the next spawn page tells the student why the server stopped.

    # --- the hub's shared ledger

    @property
    def policy(self) -> Policy:
        """The admin's placement, sharing and quota rules, from this spawner's config."""
        return Policy(
            placement=self.placement,
            share_limit=self.shared_gpu_users,
            max_gpus_per_user=self.max_gpus_per_user,
            group_quotas=dict(self.group_gpu_quotas),
            resource_caps=Caps(
                cpus_per_user=self.max_cpus_per_user,
                memory_per_user=self.max_memory_per_user,
                group_cpus=dict(self.group_cpu_quotas),
                group_memory=dict(self.group_memory_quotas),
            ),
        )

    @property
    def requester(self) -> Requester:
        groups = frozenset(g.name for g in getattr(self.user, "groups", []) or [])
        exempt = self._is_admin and self.quota_exempt_admins
        return Requester(self.user.name, groups, exempt)

    def load_inventory(self) -> Inventory:
        if self.gpus == "auto":
            return discover_auto()
        if self.gpus == "nvml":
            try:
                return discover()
            except NVMLUnavailable as e:
                self.log.error("GPUSpawner.gpus = 'nvml', but %s: no GPU will be assigned", e)
                return Inventory(source="none", note=str(e))
        return Inventory(units=parse_static_inventory(self.gpus), source="static")

    async def ledger(self) -> Ledger:
        """The hub's GPU ledger, rebuilt from running containers on the hub's first use,
        and checked against them again at most every ``ledger_sync_interval`` seconds."""
        shared = self.shared
        if not shared.synced or self._sync_due():
            async with shared.lock:
                if not shared.synced:
                    self._prepull_profile_images()  # the hub's first use: missing images start pulling
                    await self._adopt_running_containers(shared.ledger)
                    shared.retry_inventory()
                    shared.synced = True
                    shared.synced_at = time.monotonic()
                elif self._sync_due():
                    shared.synced_at = time.monotonic()  # first: a failed check is not retried by every caller
                    await self._resync_ledger(shared.ledger)
        shared.refresh_quarantine()
        if self.reservations or self.reservations_file:
            try:
                shared.use_reservations(self.reservation_book(), prepull=self._prepull_profile_images)
            except ReservationError as e:  # the first read of a file, or the config's own list: said at once
                raise LabSpawnException(f"The lab's reservations cannot be read: {e}", reason="reservations") from None
        return shared.ledger

    def _sync_due(self) -> bool:
        return time.monotonic() - self.shared.synced_at >= self.ledger_sync_interval

    async def _resync_ledger(self, ledger: Ledger) -> None:
        """Free the units no running container holds (unless their server is starting); adopt the others."""
        starting = set(self.shared.starting)  # read under the lock, before the engine is asked
        try:
            containers = await self.docker("containers", filters={"label": label.GPUS})
        except Exception as e:  # noqa: BLE001 - the engine is away: the ledger stays as it is
            self.log.warning("Cannot check the GPU ledger against Docker: %s", e)
            return
        changes = reconcile_ledger(ledger, containers, keep=starting)
        for a in changes.released:
            self.shared.ports.pop(a.holder, None)
            self.log.info("Released GPUs %s of %s: no running container holds them", ",".join(a.ids), a.holder)
        if changes.released:
            if self.shared.usage is not None:
                for a in changes.released:
                    self.shared.usage.released(a.holder, usage.RECONCILER)
            self.shared.line.serve(ledger)
        for holder in changes.adopted:
            self.log.warning("Adopted GPUs of %s: its container runs, but the ledger did not have it", holder)
        for warning in changes.warnings:  # said at the hub's first adoption; again at every check
            self.log.debug("Checking the GPU ledger: %s", warning)

    async def _adopt_running_containers(self, ledger: Ledger) -> None:
        containers = await self.docker("containers", filters={"label": label.GPUS})
        for warning in adopt_containers(ledger, containers):
            self.log.warning("Adopting running servers: %s", warning)
        for a in ledger.assignments():
            self.log.info("Adopted GPUs %s of running server %s", ",".join(a.ids), a.holder)
        self._record_rebuilt(containers)

    def _record_rebuilt(self, containers: list[dict]) -> None:
        """After a (re)start of the hub: the open usage records matched to the servers running now."""
        if self.shared.usage is None:
            return
        running = {}
        hostname = socket.gethostname()
        nodes = {u.id: u.node for u in self.shared.ledger.inventory}
        for c in containers:
            record = label.read_server(c.get("Labels"))
            if record is None or not record.unit_ids:
                continue
            created = c.get("Created")
            running[record.holder] = usage_book.Running(
                units=record.unit_ids,
                user=record.user,
                groups=tuple(sorted(record.groups)),
                profile=record.profile,
                image_digest=record.image_digest,
                share=Fraction(1, self.policy.share_limit) if record.shared else 1,
                host=nodes.get(record.unit_ids[0]) or hostname,
                started_at=datetime.fromtimestamp(created, timezone.utc) if isinstance(created, int) else None,
            )
        self.shared.usage.rebuilt(running)

    @property
    def decision_node(self) -> str | None:
        """The node whose units this server may take (on a Swarm, its home's); None: any."""
        return None

    def _can_fit(
        self, ledger: Ledger, request: GPURequest, resources: ServerResources = NO_RESOURCES
    ) -> NoCapacity | None:
        """Why this user cannot start a server of ``request`` (with ``resources``) now, or None."""
        return ledger.can_fit(request, self.requester, self.holder, node=self.decision_node, resources=resources)

    def _resources_of(self, profile: Profile) -> ServerResources:
        """What a server of ``profile`` counts against the CPU and memory caps: its limits."""
        limits = Limits.of(profile, self._hub_limits())
        return ServerResources.of(limits.cpu_limit, limits.mem_limit)

    def _limits_of(self, profile: Profile) -> dict:
        limits = Limits.of(profile, self._hub_limits())
        return {"mem_limit": limits.mem_limit, "cpu_limit": limits.cpu_limit}

    def _can_start(self, ledger: Ledger, profile: Profile) -> NoCapacity | None:
        """Why this user cannot start ``profile`` now (GPUs, CPUs, memory), or None."""
        return self._can_fit(ledger, profile.gpu_request, self._resources_of(profile))

    def _release_gpus(self, why: str, reason: str = usage.CRASH) -> None:
        """Free this server's units (``why``, for the log); its usage record closes with ``reason``."""
        shared = self.shared
        shared.ports.pop(self.holder, None)
        shared.line.ends.pop(self.holder, None)
        released = shared.ledger.release(self.holder)
        if released and released.units:
            self.log.info("Released GPUs %s of %s (%s)", ",".join(released.ids), self.holder, why)
            if shared.usage is not None:
                shared.usage.released(self.holder, reason)
            shared.line.serve(shared.ledger)  # to the first waiting spawn they fit

    # --- the spawn

    _configured: dict | None = None  # the hub-wide limits, before a profile overrides them

    def _hub_limits(self) -> Limits:
        """The hub-wide limits, as configured before a profile overrode ``mem_limit`` and ``cpu_limit``."""
        if self._configured is None:
            self._configured = {"mem_limit": self.mem_limit, "cpu_limit": self.cpu_limit}
        return Limits(self._configured["mem_limit"], self._configured["cpu_limit"], self.shm_size)

    def hub_settings(self) -> HubSettings:
        """The hub's config values a server's container depends on."""
        return HubSettings(
            limits=self._hub_limits(),
            home_volume=self.format_volume_name(self.home_volume_name, self) if self.home_volume_name else "",
            volumes=self.volume_binds,
            culling=self.hub_culling_rules,
            device_list_as_volume_mounts=self.device_list_as_volume_mounts,
            no_new_privileges=self.no_new_privileges,
            cap_drop=tuple(self.cap_drop),
            pids_limit=self.pids_limit,
        )

    @property
    def hub_culling_rules(self) -> CullRules:
        return CullRules(
            self.gpu_idle_timeout, self.max_runtime, self.jupyter_activity_grace, self.gpu_idle_timeout_when_waiting
        )

    def culling_rules_of(self, profile: Profile | None) -> CullRules:
        """The GPU culling rules of a server of ``profile``: the profile's, else the hub-wide ones."""
        return culling_rules(profile, self.hub_culling_rules)

    def _apply_profile(self, profile: Profile) -> None:
        """Take image and limits from ``profile``; what it leaves out comes from config."""
        self.profile = profile
        self.image = profile.image
        limits = Limits.of(profile, self._hub_limits())
        self.mem_limit, self.cpu_limit = limits.mem_limit, limits.cpu_limit  # also JupyterHub's MEM_LIMIT, ...

    def describe_container(self, units_by_swarm: bool = False, blank_kinds: tuple[str, ...] = ()) -> ServerContainer:
        """This start's container, from what was decided for it (``container.describe``)."""
        return describe(
            self.profile,
            self.hub_settings(),
            user=self.user.name,
            server=self.name or "",
            groups=self.requester.groups,
            image=self._image or ImageFacts(),
            units=self.gpu_ids,
            shared=self.gpu_shared,
            units_by_swarm=units_by_swarm,
            blank_kinds=blank_kinds,
            base_environment=self.get_env(),
        )

    def _choose_port(self) -> int:
        ports = self.shared.ports
        in_use = set(ports.values())
        port = random_port()
        while port in in_use:
            port = random_port()
        ports[self.holder] = port
        return port

    async def start(self):
        self._start_began = time.monotonic()
        self._refused = False
        if self.profile is None:  # an admin replaced apply_user_options
            try:
                self.profile = self.choose_profile(self.user_options.get("profile"))
            except ProfileError as e:
                raise LabSpawnException(str(e), reason="profile") from None
        profile = self.profile
        self._progress.clear()  # the same list and event: a reader may already be waiting
        self._report(2, f"Preparing {profile.display_name}")
        self._apply_profile(profile)
        self._check_mount_links(profile)
        ledger = await self.ledger()
        # Fail fast: no image pull or inspection when the answer is already no (and waiting would not change it).
        refusal = self._can_start(ledger, profile)
        if refusal is not None and not (isinstance(refusal, NoFreeUnit) and self.queue_timeout_of(profile)):
            raise self._refusal(profile, refusal, ledger)
        await self._check_budget(profile)
        if self.network_name != "host":
            await self._check_network(self.server_network)
        inspect = await self._image_ready()
        self._check_image(inspect, await self.shared.puller.passwd(inspect))
        await self._claim_home()

        if profile.gpu_request.slots:
            self._report(65, f"Assigning {profile.gpu_request.describe()}")
        async with self.shared.lock:
            admission, ticket = self._admit(ledger, profile)
            if admission.refusal is not None:
                raise self._refusal(profile, admission.refusal, ledger)
            self.shared.starting.add(self.holder)  # no container runs yet: the ledger's check keeps its units
        assignment, until = admission.assignment, admission.until
        if ticket is not None:
            assignment, until = await self._wait_in_line(ledger, profile, ticket)
        if until is not None:  # its units are reserved for a lab that will not serve it: it ends by then
            profile = self._ending_by(profile, until)
        self.gpu_ids = assignment.ids
        self._record_usage_start(profile, assignment)
        self.gpu_shared = assignment.shared
        # A lasting record of what ran (the container and its labels go when it stops).
        self.log.info(
            "Starting %s: profile %s, image %s (%s), GPUs %s",
            self.holder,
            profile.slug,
            self.image,
            self.image_digest,
            ("shared " if assignment.shared else "") + (",".join(self.gpu_ids) or "none"),
        )

        try:
            if self.network_name == "host":
                self.ip = "127.0.0.1"
                self.port = self._choose_port()
            held = ""
            if assignment.units:  # as people name them: 'GPU 3 (NVIDIA A100-SXM4-80GB, 80 GiB)', a slot on it
                what = ", ".join(u.describe() for u in assignment.units)
                held = f" with a slot on the shared {what}" if assignment.shared else f" with {what}"
            self._report(75, f"Starting your server{held}")
            self._report_rules(profile)
            started = await super().start()
            self.shared.started(self.gpu_ids)
            runtime = self.culling_rules_of(profile).max_runtime
            if runtime and self.gpu_ids:
                self.shared.line.ends[self.holder] = time.time() + runtime  # for the estimates of those waiting
            self.stop_reason = {}  # told on the spawn page; a new server starts afresh
            self._report(90, "Container started; waiting for the server to answer")
            await self._until_it_answers(started)
            return started
        except BaseException as e:
            # A refused or failed spawn holds no GPU and leaves no container.
            await self._discard_container()
            self._release_gpus("spawn failed", usage.FAILED_START)
            units, self.gpu_ids = self.gpu_ids, ()
            self.gpu_shared = False
            if isinstance(e, docker.errors.APIError):
                failure = self._device_failure(units, e)
                if failure is not None:
                    raise failure from None
            raise
        finally:
            self.shared.starting.discard(self.holder)

    # --- GPU-hours (gpuspawner.usage)

    def _record_usage_start(self, profile: Profile, assignment: Assignment) -> None:
        shared = self.shared
        if shared.usage is None or not assignment.units:
            return
        share = Fraction(1, self.policy.share_limit) if assignment.shared else 1
        shared.usage.assigned(
            self.holder,
            units=assignment.ids,
            share=share,
            user=self.user.name,
            groups=sorted(self.requester.groups),
            profile=profile.slug,
            image_digest=self.image_digest,
            host=assignment.units[0].node or socket.gethostname(),
        )

    @property
    def budgets(self) -> tuple:
        """``gpu_budgets``, validated once."""
        shared = self.shared
        if shared.budgets is None:
            shared.budgets = parse_budgets(list(self.gpu_budgets), profiles=self._profile_slugs())
        return shared.budgets

    async def _budget_standings(self, profiles: tuple[Profile, ...]) -> dict[str, list]:
        """By profile slug, the budgets a start of it by this user answers to, where they stand now: the
        records read once for all of ``profiles`` (the spawn page asks for every card at each refresh)."""
        if not self.gpu_budgets or self.shared.usage is None:
            return {}
        now = datetime.now(timezone.utc)
        r = self.requester
        applying = {
            p.slug: [b for b in self.budgets if b.applies(r.user, r.groups, p.slug, self._is_admin)]
            for p in profiles
            if p.gpu_request.slots
        }
        windows = [w for budgets in applying.values() for w in (b.window(now) for b in budgets) if w is not None]
        if not windows:
            return {}
        uses = await self.shared.usage.uses(since=min(w.start for w in windows))
        return {
            slug: budget_standings(budgets, uses, now, r.user, r.groups, slug, self._is_admin)
            for slug, budgets in applying.items()
        }

    async def _check_budget(self, profile: Profile) -> None:
        """Refuse at once a start whose budget is spent: naming it, what was used and when it renews."""
        for standing in (await self._budget_standings((profile,))).get(profile.slug, ()):
            if standing.spent:
                message = f"{profile.display_name}: {standing.refusal()}."
                self._record_denial(profile, "budget", message)
                self._refused = True
                raise LabSpawnException(message, reason="budget", status_code=403, expected=True)

    # --- waiting in line for a unit (gpuspawner.waiting)

    def queue_timeout_of(self, profile: Profile) -> float:
        """How long a spawn of ``profile`` may wait for a unit; 0: it does not wait."""
        if not profile.gpu_request.slots:
            return 0
        return self.queue_timeout if profile.queue_timeout is None else profile.queue_timeout

    _configured_start_timeout: float | None = None

    def _lengthen_start_timeout(self, profile: Profile) -> None:
        """JupyterHub reads ``start_timeout`` before ``start`` runs: a profile that waits gets its
        ``queue_timeout`` on top, so that JupyterHub does not cut the wait short."""
        if self._configured_start_timeout is None:
            self._configured_start_timeout = self.start_timeout
        self.start_timeout = int(self._configured_start_timeout + self.queue_timeout_of(profile))

    def _admit(self, ledger: Ledger, profile: Profile):
        """Units now, a place in line, or a refusal (under the hub's lock): ``(Admission, Ticket | None)``."""
        rules = self.culling_rules_of(profile)
        wait = self.queue_timeout_of(profile)
        return self.shared.line.admit(
            ledger,
            self.holder,
            tell=self._tell_standing,
            request=profile.gpu_request,
            requester=self.requester,
            profile=profile.slug,
            label=profile.display_name,
            node=self.decision_node,
            resources=self._resources_of(profile),
            wait=bool(wait),
            timeout=wait or None,
            runtime=rules.max_runtime or None,
        )

    def _tell_standing(self, standing) -> None:
        text = standing.describe(time.time())
        if not self._progress or self._progress[-1]["message"] != text:
            self._report(50, text)

    #: Seconds between looks at the line while waiting, for the time left and the estimate shown.
    line_check_interval = 15.0

    def _ending_by(self, profile: Profile, until) -> Profile:
        """``profile`` with its ``max_runtime`` cut to end when ``until`` (a lab's window) starts; told."""
        now = time.time()
        left = max(until.window.start - now, 1)
        runtime = self.culling_rules_of(profile).max_runtime
        self._report(66, f"Note: {until.free_until(now)}. Your server stops then; your files are kept.")
        self.log.info("%s: %s", self.holder, until.free_until(now))
        self.profile = replace(profile, max_runtime=min(runtime, left) if runtime else left)
        return self.profile

    async def _wait_in_line(self, ledger: Ledger, profile: Profile, ticket) -> tuple[Assignment, object]:
        """Wait for ``ticket``'s grant; its refusal (``queue_timeout``, a quota filled meanwhile) fails the spawn.

        Stopping the pending server (JupyterHub cancels ``start``) takes it out of the line."""
        line = self.shared.line
        deadline = line.queue.entry(self.holder).deadline
        self.log.info("%s waits in line for %s", self.holder, profile.gpu_request.describe())
        try:
            while not ticket.outcome.done():
                wait = self.line_check_interval
                if deadline is not None:
                    wait = min(wait, max(deadline - time.time(), 0) + 0.05)
                try:
                    await asyncio.wait_for(asyncio.shield(ticket.outcome), wait)
                except TimeoutError:
                    line.expire(ledger)  # refuses this spawn, and any other, whose time ran out
                    if not ticket.outcome.done():
                        line.announce(ledger)  # the time left, the estimate
            outcome = ticket.outcome.result()
        except BaseException:  # cancelled: the server was stopped, or the hub gives up on it
            line.leave(ledger, ticket)
            raise
        if isinstance(outcome, Refusal):
            self._record_denial(profile, outcome.reason, outcome.message)
            self._refused = True
            raise LabSpawnException(outcome.message, reason=outcome.reason, status_code=503, expected=True)
        self._report(60, f"Your turn: {profile.gpu_request.describe()} assigned after {outcome.waited:.0f} s in line")
        return outcome.assignment, outcome.until

    # --- a server that dies, or is not one, before it answers: told at once, not after http_timeout

    watches_start = True  # a subclass whose server is not one container of this engine says False
    start_check_interval = 0.5  # seconds between looks at the container and at the server's URL
    _start_began = 0.0  # time.monotonic() when this start began
    _container_started_at = 0.0  # time.monotonic() when its container started
    #: The HTTP status of a spawn whose server failed before it answered. Not 500: nothing in the hub failed.
    #: 424 Failed Dependency, as JupyterHub answers for a server that is not running.
    start_failed_status = 424
    answer_timeout = 3.0  # seconds one look waits for the server's HTTP answer (a busy hub answers late)
    #: Seconds between looks at a running container's processes (``docker top``, which runs ``ps`` on the
    #: engine's host: dearer than an inspect); the first comes this long after the container started.
    #: A server that only sleeps is told after a few seconds, and a class's burst of starts stays cheap.
    process_check_interval = 2.0
    _processes_seen_at = float("-inf")  # time.monotonic() of the last look at the processes

    async def _until_it_answers(self, started) -> None:
        """Wait until the server answers; fail the spawn now if its container shows it never will.

        JupyterHub waits up to ``http_timeout`` for a started server to answer and does not look
        at its container meanwhile. Here the container is watched during that wait. It shows the
        server never will answer when it exits, or when its processes are only ones that never
        serve (``sleep infinity``, Python or a shell with nothing to run: ``startup.never_serves``);
        either fails the spawn at once with the exit status or the command and the last lines of its
        log (the caller frees the GPUs and removes the container). A server that stays silent is
        failed after ``http_timeout``, as JupyterHub would, with its log's last lines. Within
        ``start_timeout`` only: what is left of it after a long pull goes to JupyterHub's wait.
        """
        if not self.watches_start or not isinstance(started, tuple):
            return
        ip, port = started
        began = self._container_started_at = time.monotonic()
        left = self.start_timeout - (began - self._start_began) - 1  # JupyterHub cancels start() then
        window = min(self.http_timeout, left)
        try:
            failed = await watch_start(
                lambda: self._server_answers(ip, port),
                self._never_will,
                timeout=max(window, 0),
                every=self.start_check_interval,
            )
        except TimeoutError:
            if window < self.http_timeout:
                return  # start_timeout is near: JupyterHub's own wait takes over
            lines = await self._log_tail()
            shown = ". The last lines of its log:\n" + "\n".join(lines) if lines else ""
            raise LabSpawnException(
                f"Your server did not answer within {self.http_timeout:g} s{shown}\n"
                "Its GPUs are free again and your files are kept; start it again, or show this to the admin.",
                reason="http_timeout",
                status_code=504,
            ) from None
        if failed is None:
            return
        seconds = time.monotonic() - began
        if isinstance(failed, NotAServer):
            text, page = not_a_server_message(failed, await self._log_tail(), seconds)
            self.log.warning("Server %s is not a Jupyter server: it runs %s", self.holder, failed.command)
            reason = "not_a_server"
        else:
            text, page = exit_message(failed, await self._log_tail(), seconds)
            self.log.warning("Server %s exited with status %s before it answered", self.holder, failed.status)
            reason = "early_exit"
        raise LabSpawnException(text, reason=reason, message_html=page, status_code=self.start_failed_status)

    async def _server_answers(self, ip: str, port: int) -> bool:
        """Does the server answer at ``ip:port`` as JupyterHub's own wait for it asks: over HTTP?

        The same request (its URL's ``api``, any status below 500, the hub's internal SSL where it is
        on), not a mere connection, which a port that is published (Docker's proxy), or opened by a
        server that then dies, also accepts. Once this says yes, JupyterHub's wait ends at its first
        try: a server that dies is told here, not after that wait's ``http_timeout`` (in which the REST
        spawn would also fail with HTTP 500, JupyterHub's InvalidStateError).
        """
        if not ip:  # a container that exited at once has no address on its network
            return False
        host = f"[{ip}]" if ":" in ip else ip
        proto = "https" if self.internal_ssl else "http"
        base_url = self.server.base_url if self.server is not None else "/"
        url = url_path_join(f"{proto}://{host}:{int(port)}", base_url, "api")
        options = {"allow_redirects": False, "timeout": aiohttp.ClientTimeout(total=self.answer_timeout)}
        if self._hub_ssl_context is not None:
            options["ssl"] = self._hub_ssl_context
        try:
            response = await fetch(url, raise_for_status=False, **options)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False
        response.release()
        return response.status < 500

    @cached_property
    def _hub_ssl_context(self):
        """The hub's client SSL context for its servers (``internal_ssl``), as JupyterHub's wait uses; else None."""
        settings = getattr(self.user, "settings", None) or {}
        key, cert = settings.get("internal_ssl_key"), settings.get("internal_ssl_cert")
        return make_ssl_context(key, cert, cafile=settings.get("internal_ssl_ca"))

    async def _never_will(self) -> Exited | NotAServer | None:
        """How this server's container shows it will never answer: it exited, or runs only non-servers."""
        try:
            inspect = await self.docker("inspect_container", self.object_id)
        except docker.errors.NotFound:
            return Exited(status=-1, error="its container is gone")
        state = inspect.get("State") or {}
        exited = Exited.of(state, command_line(inspect))
        if exited is not None or not state.get("Running"):
            return exited
        now = time.monotonic()
        if now - max(self._processes_seen_at, self._container_started_at) < self.process_check_interval:
            return None
        self._processes_seen_at = now
        try:
            top = await self.docker("top", self.object_id)
        except docker.errors.APIError as e:  # it stopped meanwhile: the next look says how
            self.log.debug("No processes of %s: %s", self.holder, e)
            return None
        return never_serves(top_commands(top))

    async def _log_tail(self, lines: int = 12) -> list[str]:
        try:
            log = await self.docker("logs", self.object_id, stdout=True, stderr=True, tail=lines * 4)
        except docker.errors.APIError as e:
            self.log.debug("No log of %s: %s", self.holder, e)
            return []
        return last_lines(log, lines)

    def _device_failure(self, units: tuple[str, ...], error: docker.errors.APIError) -> SpawnException | None:
        """The spawn's error when its GPU could not be set up (counted towards quarantine), else None."""
        blamed, quarantined = self.shared.start_failed(self.holder, units, str(error.explanation or error))
        if not blamed:
            return None
        by_id = {u.id: u for u in self.shared.ledger.inventory}
        which = ", ".join(by_id[u].describe() if u in by_id else u for u in blamed)
        message = f"Your server could not start: its GPU ({which}) failed to set up."
        if quarantined:
            message += " That GPU is now set aside until an admin checks it: start again to get another one."
        else:
            message += " Start again; if it fails again, that GPU is set aside and you get another one."
        self.log.warning("Not starting %s: device failure on %s: %s", self.holder, ",".join(blamed), error)
        return LabSpawnException(message, reason="gpu_failed", status_code=503)

    # --- the home volume: one person's

    def _home_volumes(self) -> HomeVolumes:
        image = self.home_copy_image or next((p.image for p in self.lab_profiles), "") or self.image
        return HomeVolumes(self.client, image, self.log, quotas=self.home_quotas())

    #: Whether this spawner applies ``home_quota`` and ``container_quota``; check_config refuses them where not.
    enforces_disk_quotas = True

    def home_quotas(self) -> HomeQuotas | None:
        """The homes' subvolumes and limits (``homes_root``); None: homes are plain volumes."""
        return HomeQuotas(self.homes_root) if self.homes_root else None

    def home_quota_of(self, profile: Profile | None) -> int | None:
        """The limit of a home when a server of ``profile`` starts: the profile's, else the hub-wide one."""
        value = profile.home_quota if profile is not None else None
        return self.home_quota if value is None else value

    def container_quota_of(self, profile: Profile | None) -> int | None:
        value = profile.container_quota if profile is not None else None
        return self.container_quota if value is None else value

    async def _on_pool(self, target, method: str, *args, **kwargs):
        """``target.method(...)`` on the hub's Docker pool, after this server's earlier calls."""
        if self._docker_order is None:
            self._docker_order = asyncio.Lock()
        return await self.shared.docker_calls.call(self._docker_order, target, method, *args, **kwargs)

    async def _claim_home(self) -> None:
        """Make sure the home volume is this user's (``homes.py``) before it is mounted."""
        volume = self.hub_settings().home_volume
        if not volume:
            return
        quota = self.home_quota_of(self.profile)
        if quota and self.home_quotas() is None:  # check_config refuses this; a hub without it must too
            self.log.error("Not starting %s: home_quota is set, but not homes_root", self.holder)
            raise LabSpawnException(
                "Your home cannot be held to its quota: the hub's home_quota is set, but homes_root (a btrfs"
                " filesystem with quotas on) is not. Nothing was started; ask an admin.",
                reason="home",
                status_code=503,
            )
        try:
            done = await self._on_pool(
                self._home_volumes(),
                "claim",
                volume,
                HomeOwner.of(self.user),
                self.unowned_home,
                quota=quota,
            )
        except (HomeError, docker.errors.APIError) as e:
            self.log.error("Not starting %s: home %s: %s", self.holder, volume, e)
            raise LabSpawnException(
                f"Your home ({volume}) could not be prepared: {e}. Nothing was started; ask an admin.",
                reason="home",
                status_code=503,
            ) from None
        if done.startswith("archived"):
            self._report(62, "The home of a former user of this name was archived: yours starts empty")

    async def _retire_home(self) -> None:
        """The user is deleted: archive or remove their home, as ``deleted_user_home`` says."""
        volume = self.hub_settings().home_volume
        if not volume or self.deleted_user_home == homes.KEEP:
            return
        try:
            done = await self._on_pool(self._home_volumes(), "retire", volume, self.deleted_user_home)
        except (HomeError, docker.errors.APIError) as e:
            # Kept as it is: the next user of this name will find it someone else's and archive it then.
            self.log.error(
                "Could not %s the home %s of deleted user %s: %s", self.deleted_user_home, volume, self.user.name, e
            )
            return
        if done:
            self.log.info("Home %s of deleted user %s: %s", volume, self.user.name, done)

    def _check_mount_links(self, profile: Profile) -> None:
        """Refuse a dataset or share whose path now leads, through a symbolic link, outside the mount roots.

        Only paths this hub sees can be resolved: the deploy's compose file mounts the roots
        read-only into the hub's container at the same paths.
        """
        policy = self.mount_policy
        for field_name, mounts in (("datasets", profile.datasets), ("shares", profile.shares)):
            for mount in mounts:
                if not os.path.lexists(mount.source):
                    continue  # a volume, or a path on the engine's host that this hub does not see
                refusal = policy.link_refusal(mount.source)
                if refusal:
                    self.log.warning("Not starting %s: profile %r: %s", self.holder, profile.slug, refusal)
                    raise LabSpawnException(
                        f"{profile.display_name} cannot start: its {field_name[:-1]} {mount.name!r}: {refusal}."
                        " Nothing was started; an admin must fix the link.",
                        reason="mount",
                        status_code=503,
                    )

    # --- images: pulled on their own threads, with progress

    def new_docker_client(self) -> docker.APIClient:
        """A client of its own, with DockerSpawner's settings, for use from other threads."""
        kwargs = {"version": "auto"}
        if self.tls_config:
            kwargs["tls"] = docker.tls.TLSConfig(**self.tls_config)
        kwargs.update(kwargs_from_env())
        kwargs.update(self.client_kwargs)
        return docker.APIClient(**kwargs)

    def _prepull_profile_images(self) -> None:
        if not self.prepull_images or self.pull_policy.lower() != "ifnotpresent":
            return
        try:
            images = [p.image for p in self.lab_profiles]
            asyncio.get_running_loop().create_task(self.shared.puller.prepull(images))
        except (RuntimeError, ProfileError) as e:  # no loop yet (tests), or broken profiles (logged at spawn)
            self.log.debug("No background pull: %s", e)

    async def pull_image(self, image):
        """Pull a missing image on the pull threads, reporting progress; other policies as DockerSpawner."""
        if image == self._ready_image:
            return  # made present and inspected moments ago, in this start
        if self.pull_policy.lower() != "ifnotpresent":
            return await super().pull_image(image)
        task = await self.shared.puller.ensure(image)
        async for percent, status in task.updates():  # a done task (present, pulled) says so once
            self._report(5 + percent * 55 // 100, status)
        try:
            await task.wait()
        except ImageError as e:
            raise LabSpawnException(str(e), reason="image_pull") from None

    def _report(self, percent: int, message: str, html: str = "") -> None:
        """One step of this spawn, for ``progress()`` (``html``: the same with links, for the page)."""
        event = {"progress": percent, "message": message}
        if html:
            event["html_message"] = html
        self._progress.append(event)
        self._progress_changed.set()

    def _report_rules(self, profile: Profile) -> None:
        """The rules that will stop this GPU server, and where its clocks are shown."""
        rules = self.culling_rules_of(profile).describe() if self.gpu_ids else ""
        if not rules:
            return
        message = f"The lab's rules: {rules[0].lower()}{rules[1:]}"
        if not self.my_gpu_page:
            self._report(76, message)
            return
        hub_url = getattr(self.hub, "base_url", "") or "/hub/"  # the hub's pages; its base URL is above them
        base = hub_url[: -len("hub/")] if hub_url.endswith("hub/") else "/"
        link = url_path_join(base, self.my_gpu_page)
        self._report(
            76,
            f"{message} My GPU ({link}) shows how long until each would stop it.",
            Markup('{} <a href="{}">My GPU</a> shows how long until each would stop it.').format(message, link),
        )

    async def progress(self):
        """The spawn's steps as they happen: pulling (with %), assigning GPUs, starting."""
        sent = 0
        while True:
            while sent < len(self._progress):
                yield self._progress[sent]
                sent += 1
            self._progress_changed.clear()
            await self._progress_changed.wait()

    async def _image_ready(self) -> dict:
        """The profile's image, pulled if needed, inspected: before any GPU is assigned."""
        self._ready_image = ""
        try:
            await self.pull_image(self.image)
            inspect = await self.docker("inspect_image", self.image)
        except docker.errors.NotFound:
            raise LabSpawnException(
                f"The image {self.image} is not on this host, and pulling it is off"
                f" (pull_policy={self.pull_policy!r}). Ask the admin to pull it.",
                reason="image_missing",
            ) from None
        except docker.errors.APIError as e:
            raise LabSpawnException(
                f"The image {self.image} could not be pulled: {e.explanation or e}", reason="image_pull"
            ) from None
        self._ready_image = self.image
        return inspect

    _ready_image = ""

    def _refusal(self, profile: Profile, e: NoCapacity, ledger: Ledger) -> SpawnException:
        """A spawn refused at once: what was asked, what is in use, what can start instead."""
        message = f"{profile.display_name}: {e.message}"
        by_caps = e.reason in CAP_REASONS  # then say what each would take
        startable = [
            f"{p.display_name} ({self._resources_of(p).describe()})"
            if by_caps and self._resources_of(p)
            else p.display_name
            for p in self.user_profiles
            if p is not profile and self._can_start(ledger, p) is None
        ]
        if startable:
            message += " Can start now: " + "; ".join(startable) + "."
        status = 503 if e.reason == "no_gpu" else 403
        self._record_denial(profile, e.reason, message)
        self._refused = True  # before any container: JupyterHub's cleanup poll need not ask the engine
        return LabSpawnException(message, reason=e.reason, status_code=status, expected=True)

    def _record_denial(self, profile: Profile, reason: str, message: str) -> None:
        """Record a refused spawn in ``denials_file``: the demand that was turned away.

        Merged with this user's other refusals for this profile and reason within
        ``denials_merge_window``, appended with rotation (``gpuspawner.eventfiles``).
        """
        if not self.denials_file:
            return
        event = {
            "user": self.user.name,
            "server": self.name or "",
            "profile": profile.slug,
            "reason": reason,
            "message": message,
        }
        DenialLog.of(
            self.denials_file,
            window=self.denials_merge_window,
            max_bytes=self.denials_file_max_size,
            backups=self.denials_file_backups,
        ).record(event, self.log)

    async def _discard_container(self) -> None:
        if not self.object_id:
            return
        try:
            await self.docker("remove_container", self.object_id, force=True)
        except docker.errors.APIError as e:
            if e.status_code not in (404, 409):
                self.log.warning("Could not remove failed container %s: %s", self.object_id[:12], e)
        self.object_id = ""

    def _check_image(self, inspect: dict, passwd: str = "") -> None:
        """Refuse an image this host cannot run as configured, before any GPU is assigned.

        ``passwd``: the image's ``/etc/passwd``, when its user is a name (uid 0 under any name is root).
        """
        image = self._image = ImageFacts.of(inspect, self.image, self.home_path, passwd)
        if image.root and not root_allowed([self.profile] if self.profile else [], self.allow_root):
            raise LabSpawnException(
                f"The image {self.image} runs as root. Build it with a non-root user"
                " (for example USER 1000 in its Dockerfile), or an admin may allow root"
                " for this profile (allow_root in c.GPUSpawner.profiles) or for every image"
                " (c.GPUSpawner.allow_root = True).",
                reason="image_root",
            )
        refusal = resource_variables_refusal(self.image, image.resource_variables)
        if refusal:
            raise LabSpawnException(refusal, reason="image_resource_env")
        self.image_digest = image.digest
        if self.profile is not None and self.profile.gpu_request.slots:
            inventory = self.shared.inventory
            driver_cuda = inventory.cuda_version or self.driver_cuda_version
            config = inspect.get("Config") or {}
            refusal = cuda_refusal(self.image, declared_cuda(config) or "", driver_cuda, inventory.driver_version)
            if refusal:
                raise LabSpawnException(refusal, reason="cuda")

    # --- Docker: the description translated into create_container, on the hub's pool

    _docker_order: asyncio.Lock | None = None  # this server's calls, one at a time

    def docker(self, method, *args, **kwargs):
        """Call ``method`` of the Docker client on the shared pool, after this server's earlier calls.

        Instead of DockerSpawner's one thread for everyone: another user's slow
        call no longer holds this one up. Returns an awaitable, as DockerSpawner's does.
        """
        if method == "create_container":
            kwargs = self._as_described(kwargs)
        if self._docker_order is None:
            self._docker_order = asyncio.Lock()
        return self.shared.docker_calls.call(self._docker_order, self.client, method, *args, **kwargs)

    async def create_object(self):
        """Describe this server's container, then have DockerSpawner create it (see ``_as_described``)."""
        self.container = self.describe_container()
        # DockerSpawner writes these into the host config.
        self.mem_limit, self.cpu_limit = self.container.limits.mem_limit, self.container.limits.cpu_limit
        return await super().create_object()

    def _as_described(self, create_kwargs: dict) -> dict:
        """DockerSpawner's ``create_container`` arguments, with what ``self.container`` describes."""
        described = self.container
        host_config = create_kwargs["host_config"]
        # The description holds the admin's volumes too; binds from extra_host_config stay.
        admins = {f"{source}:{b['bind']}:{b.get('mode', 'rw')}" for source, b in self.volume_binds.items()}
        binds = [m.bind for m in described.mounts]
        binds += [b for b in host_config.get("Binds") or () if b not in admins and b not in binds]
        if binds:
            host_config["Binds"] = binds
        if described.devices:
            # Explicit ids: a count would give every container GPU 0.
            host_config["DeviceRequests"] = [
                docker.types.DeviceRequest(device_ids=list(described.devices), capabilities=[["gpu"]])
            ]
        else:
            host_config.pop("DeviceRequests", None)
        if described.limits.shm_size is not None:
            host_config["ShmSize"] = int(described.limits.shm_size)
        # Hardening, each loosened only by an explicit admin setting.
        if described.no_new_privileges:
            host_config["SecurityOpt"] = sorted({*(host_config.get("SecurityOpt") or []), "no-new-privileges"})
        if described.cap_drop:
            host_config["CapDrop"] = list(described.cap_drop)
        if described.pids_limit:
            host_config["PidsLimit"] = described.pids_limit
        quota = storage_opt(self.container_quota_of(self.profile))
        if quota:
            host_config["StorageOpt"] = quota
        if self.network_name != "host":
            host_config["NetworkMode"] = self.server_network
        # Not Docker's auto-remove: a server that exits before it answers is told with its status and its
        # log, which go with the container. start() and poll() remove an exited container themselves.
        host_config["AutoRemove"] = False
        return {
            **create_kwargs,
            "environment": dict(described.environment),
            "labels": {**(create_kwargs.get("labels") or {}), **described.labels},
        }

    async def get_ip_and_port(self):
        if self.network_name == "host":
            return "127.0.0.1", self.port
        return await super().get_ip_and_port()

    async def get_url(self):
        """The server's URL, asked by a restarted hub of a server that poll() says runs.

        A hub killed after the container started but before it stored the address
        has in its database neither the address nor the port the server listens on
        (on the host network, chosen for that start): JupyterHub then looks for the
        server elsewhere, never finds it, and stops it after ``http_timeout``. Both
        come from the container instead (its ``JUPYTERHUB_SERVICE_URL``).
        """
        url = await super().get_url()
        server = self.server
        if server is None or server.ip:
            return url
        try:
            found = await self.docker("inspect_container", self.object_id or self.container_name)
            env = dict(entry.partition("=")[::2] for entry in found["Config"].get("Env") or [])
            listens = urlsplit(env.get("JUPYTERHUB_SERVICE_URL", "")).port
            if listens:
                self.port = self.shared.ports[self.holder] = listens
            ip, port = await self.get_ip_and_port()
        except Exception as e:  # noqa: BLE001 - then JupyterHub's own check decides
            self.log.warning("Could not find the address of %s in Docker: %s", self._log_name, e)
            return url
        host = f"[{ip}]" if ":" in ip else ip
        return f"{server.proto}://{host}:{int(port)}{server.base_url}"

    # --- the lab network

    @property
    def server_network(self) -> str:
        """The Docker network this server joins: the lab's, or its internet one for an ``internet`` profile."""
        if self.network_name != "host" and self.profile is not None and self.profile.internet:
            return self.network_name + INTERNET_SUFFIX
        return self.network_name

    async def _check_network(self, name: str) -> None:
        """Refuse the spawn, before any unit is assigned, when the server's network is not on the engine."""
        seen = self.shared.networks_seen
        if name in seen:
            return
        try:
            await self.docker("inspect_network", name)
        except docker.errors.NotFound:
            if name.removesuffix(INTERNET_SUFFIX) == self.lab_network.get("name"):
                why = "it is made when the hub starts (add_lab_network in its config): restart the hub"
            else:
                why = (
                    "the hub's config must call gpuspawner.lab_network.add_lab_network(c), which makes it,"
                    ' or set c.GPUSpawner.network_name = "host" (no isolation: see docs/topic/security.md)'
                )
            raise LabSpawnException(
                f"The servers' network {name!r} does not exist on the Docker engine: {why}.",
                reason="no_network",
                status_code=503,
            ) from None
        seen.add(name)

    def get_network_ip(self, network_settings):
        """The server's address on the network it joined (the lab's or its internet one)."""
        networks = network_settings["Networks"]
        if self.server_network in networks:
            return networks[self.server_network]["IPAddress"]
        return super().get_network_ip(network_settings)

    _refused = False  # the last start was refused, before any container was made

    async def poll(self):
        if self._refused and not self.object_id:
            # JupyterHub polls a spawn that failed before it stops it. A refusal made no container: no
            # Docker call, which in a class's burst would queue behind the starts of the servers that
            # did get GPUs, and keep each refusal waiting for them.
            return 0
        await self.ledger()  # a restarted hub polls every server first: adopt before deciding
        status = await super().poll()
        if status is None:
            return None
        self._release_gpus(f"server not running: {status}")
        container = self.object_id
        await self._discard_container()  # exited: no auto-remove (see _as_described)
        if self._waiting_for_response:
            # start() returned before the server answered (start_timeout nearly spent: see _until_it_answers),
            # and JupyterHub still waits for its first answer. Told now that it stopped, its REST spawn handler
            # would read the result of that unfinished spawn: InvalidStateError, HTTP 500. Its wait fails
            # the spawn instead, at http_timeout; the units are free already.
            if container:  # (said once: later polls find no container)
                self.log.warning(
                    "Server %s stopped (%s) before it answered; JupyterHub's wait fails it", self.holder, status
                )
            return None
        return status

    async def stop(self, now=False):
        record = stop_record_for(self.stops_file, self.object_id, log=self.log) if self.object_id else None
        reason = usage.USER
        if record:
            self.stop_reason = {k: record.get(k, "") for k in ("time", "reason", "message")}
            self.log.info("Stopping %s: %s (GPU culler)", self.holder, record.get("message"))
            reason = CULLER_REASONS.get(record.get("reason", ""), usage.GPU_CULLER)
        if self.object_id:
            try:
                await super().stop(now=now)
            except Exception as e:
                # JupyterHub forgets the server all the same (and may not log why): the container keeps
                # its units until the GPU culler's reconciler stops it.
                self.log.error(
                    "Could not stop %s (container %s): %s. Its GPUs stay held until the GPU culler stops"
                    " its container (orphan_grace), or an admin does.",
                    self.holder,
                    self.object_id[:12],
                    e,
                )
                raise
        else:
            self.clear_state()
        self._release_gpus("stopped", reason)

    async def delete_forever(self):
        """The user (or this named server) is deleted: free what it held.

        The home volume goes (``deleted_user_home``) with the user, that is with their
        default server, which JupyterHub deletes only when it deletes the user; a
        named server's deletion keeps it, unless the home is per server (``{servername}``).
        """
        self._release_gpus("deleted", usage.ADMIN)
        await maybe_future(super().delete_forever())
        if not self.name or "{servername}" in self.home_volume_name:
            await self._retire_home()

    # --- the spawn page

    async def render_profile_form(self) -> str:
        """The profile choice on JupyterHub's spawn page: one card per profile this user may choose."""
        ledger = await self.ledger()
        chosen = self.user_options.get("profile") if self.user_options else None
        # Each card says the limits its server gets: the profile's, else the hub-wide ones.
        profiles = tuple(replace(p, **self._limits_of(p)) for p in self.user_profiles)
        if len(profiles) <= 1 and not self.stop_reason:
            return ""  # nothing to choose: JupyterHub spawns at once (a refusal says why)
        limits = {}
        waits = {}
        spent = {}
        line = self.shared.line.queue
        book, now = line.reservations, time.time()
        budgets = await self._budget_standings(profiles)
        for p in profiles:
            if p.gpu_request.slots:
                limits[p.slug] = self.culling_rules_of(p).describe()
                for standing in budgets.get(p.slug, ()):
                    limits[p.slug] = " ".join(filter(None, (limits[p.slug], standing.card_line() + ".")))
                    if standing.spent:
                        spent.setdefault(p.slug, NoCapacity("budget", standing.refusal() + ".", request=p.gpu_request))
                if book:
                    fitting = [u.id for u in ledger.inventory if p.gpu_request.matches(u)]
                    hours = book.describe_units(fitting, self.requester, p.slug, now)
                    limits[p.slug] = " ".join(filter(None, (limits[p.slug], hours)))
            timeout = self.queue_timeout_of(p)
            if timeout and isinstance(self._can_start(ledger, p), NoFreeUnit):
                ahead = sum(1 for e in line.waiting() if e.request == p.gpu_request)
                free, total = ledger.availability(p.gpu_request, node=self.decision_node)
                waits[p.slug] = (
                    f"All {total} in use now: you wait in line"
                    + (f" behind {ahead}" if ahead else "")
                    + f", {format_duration(timeout)} at most, and start as soon as one frees."
                )
        return render_profile_cards(
            profiles,
            ledger,
            lambda profile: spent.get(profile.slug) or self._can_start(ledger, profile),
            chosen,
            node=self.decision_node,
            stopped=self.stop_reason.get("message", ""),
            limits=limits,
            waits=waits,
        )


__all__ = ["GPUSpawner", "apply_profile_choice"]
