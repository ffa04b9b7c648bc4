"""A server's container, described by one pure function.

``describe`` turns what the lab decided for one server (its profile, the hub's
settings, the user, the image, the units) into a ``ServerContainer``: labels,
environment, mounts, limits, ``/dev/shm``, hardening and devices. No Docker,
no spawner: the Docker spawner and the Swarm spawner only translate the value
into their API's calls, and the tests read it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from . import labels as label
from .culler.policy import CullRules
from .gpus.resources import ServerResources
from .images import declared_resource_variables, image_digest, is_resource_variable, resource_variable, runs_as_root

if TYPE_CHECKING:
    from .profiles import Profile

# Where the NVIDIA Container Toolkit looks for a container's device list given as mounts.
NVIDIA_DEVICE_MOUNTS = "/var/run/nvidia-container-devices"
DEFAULT_HOME = "/home/jovyan"


@dataclass(frozen=True)
class Limits:
    """A server's memory (bytes), CPUs and ``/dev/shm`` size (bytes); None: Docker's default."""

    mem_limit: int | None = None
    cpu_limit: float | None = None
    shm_size: int | None = None

    @classmethod
    def of(cls, profile: Profile, hub: Limits) -> Limits:
        """The profile's limits, else the hub's."""

        def pick(name: str):
            value = getattr(profile, name)
            return getattr(hub, name) if value is None else value

        return cls(pick("mem_limit"), pick("cpu_limit"), pick("shm_size"))


@dataclass(frozen=True)
class HubSettings:
    """The hub's config values a server's container depends on (a profile may override some)."""

    limits: Limits = Limits()
    home_volume: str = ""  # the user's home volume, its name expanded; '' none
    volumes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # the admin's: source -> bind, mode
    culling: CullRules = CullRules()
    device_list_as_volume_mounts: bool = True
    no_new_privileges: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    pids_limit: int = 4096


@dataclass(frozen=True)
class ImageFacts:
    """What the image says about itself, read by inspecting it before the server starts."""

    home: str = DEFAULT_HOME  # where the home volume goes
    digest: str = ""  # the sha256 actually run
    root: bool = False  # its user is root
    resource_variables: tuple[str, ...] = ()  # the DOCKER_RESOURCE_* variables its ENV sets (refused)

    @classmethod
    def of(cls, inspect: dict, image: str, home_path: str = "", passwd: str = "") -> ImageFacts:
        """From ``inspect_image(image)`` (and the image's ``/etc/passwd``, to resolve a user name);
        ``home_path`` (config) wins over the image's home."""
        config = inspect.get("Config") or {}
        return cls(
            home_path or image_home(config),
            image_digest(inspect, image),
            runs_as_root(config, passwd),
            declared_resource_variables(config),
        )


@dataclass(frozen=True)
class ContainerMount:
    """A bind mount (``source`` an absolute host path) or a Docker volume (``source`` its name).

    ``mode`` as Docker's binds write it: ``"rw"``, ``"ro"``, or an admin's own (``"z"``).
    """

    source: str
    target: str
    mode: str = "rw"

    @property
    def read_only(self) -> bool:
        return self.mode == "ro"

    @property
    def bind(self) -> str:
        """As Docker's ``Binds`` writes it: ``source:target:mode``."""
        return f"{self.source}:{self.target}:{self.mode}"


@dataclass(frozen=True)
class ServerContainer:
    """Everything the lab decides about one server's container."""

    labels: Mapping[str, str]
    environment: Mapping[str, str]
    mounts: tuple[ContainerMount, ...]
    limits: Limits
    devices: tuple[str, ...]  # unit ids for Docker's device request; empty when Swarm picks them
    no_new_privileges: bool
    cap_drop: tuple[str, ...]
    pids_limit: int  # 0: no limit


def image_home(config: dict) -> str:
    """The image's home: its HOME, else its working directory, else /home/jovyan."""
    for entry in config.get("Env") or []:
        if entry.startswith("HOME="):
            return entry.split("=", 1)[1]
    workdir = config.get("WorkingDir") or ""
    return workdir if workdir not in ("", "/") else DEFAULT_HOME


def culling_rules(profile: Profile | None, hub: CullRules) -> CullRules:
    """The GPU culling rules of a server of ``profile``: the profile's, else the hub-wide ones."""

    def rule(name: str) -> float:
        value = getattr(profile, name, None)
        return getattr(hub, name) if value is None else value

    return CullRules(
        rule("gpu_idle_timeout"),
        rule("max_runtime"),
        rule("jupyter_activity_grace"),
        rule("gpu_idle_timeout_when_waiting"),
    )


def describe(
    profile: Profile,
    hub: HubSettings,
    *,
    user: str,
    server: str = "",
    groups: Iterable[str] = (),
    image: ImageFacts = ImageFacts(),
    units: Iterable[str] = (),
    shared: bool = False,
    units_by_swarm: bool = False,
    blank_kinds: Iterable[str] = (),
    base_environment: Mapping[str, str] | None = None,
) -> ServerContainer:
    """The container of ``user``'s server ``server`` running ``profile`` with ``units``.

    ``units_by_swarm``: Swarm picks the units when it places the task (of the
    kinds and count of ``units``), so the container names none: no device
    request, no unit label, ``NVIDIA_VISIBLE_DEVICES=void``. ``blank_kinds``: the
    Swarm's generic resource kinds this server was not given; each one's
    ``DOCKER_RESOURCE_<KIND>`` is set empty, so that no variable can name a unit
    of that kind. ``DOCKER_RESOURCE_*`` variables of the profile or the hub are
    dropped: only Swarm sets them. ``base_environment`` is JupyterHub's (the
    hub's API token, URLs, ``Spawner.environment``).
    """
    units = tuple(units)
    groups = frozenset(groups)
    rules = culling_rules(profile, hub.culling) if units else CullRules()
    limits = Limits.of(profile, hub.limits)
    written = label.server_labels(
        label.ServerRecord(
            user=user,
            server=server,
            profile=profile.slug,
            unit_ids=units,
            shared=shared and bool(units),
            groups=groups,
            image_digest=image.digest,
            rules=rules,
            resources=ServerResources.of(limits.cpu_limit, limits.mem_limit),
        ),
        # On Swarm the units are read back from the task (labels.with_units), never guessed here.
        units_known=not units_by_swarm,
    )

    environment = dict(base_environment or {})
    environment.update(profile.environment)
    # The toolkit takes a Swarm container's GPUs from every DOCKER_RESOURCE_<KIND> it lists: Swarm sets the
    # kinds it assigned (after these, so its value wins), and a kind not given is empty, which names no unit.
    environment = {name: value for name, value in environment.items() if not is_resource_variable(name)}
    environment.update({resource_variable(kind): "" for kind in blank_kinds})
    # Always ours: CUDA images set NVIDIA_VISIBLE_DEVICES=all, which the toolkit would honour. On a
    # Swarm the toolkit takes the units from DOCKER_RESOURCE_<KIND>, which wins over this.
    environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(units) if units and not units_by_swarm else "void"
    if units:
        environment.setdefault("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    environment["GPUSPAWNER_PROFILE"] = profile.slug

    devices = () if units_by_swarm else units
    return ServerContainer(
        labels=MappingProxyType(written),
        environment=MappingProxyType(environment),
        mounts=_mounts(profile, hub, groups, image.home, devices),
        limits=limits,
        devices=devices,
        no_new_privileges=hub.no_new_privileges,
        cap_drop=tuple(hub.cap_drop),
        pids_limit=hub.pids_limit,
    )


def _mounts(
    profile: Profile, hub: HubSettings, groups: frozenset[str], home: str, devices: tuple[str, ...]
) -> tuple[ContainerMount, ...]:
    """The admin's mounts, the home volume, datasets (read-only), shares, the device list."""
    # One mount per source, as Docker's binds are: a later one of the same source replaces it.
    by_source = {
        source: ContainerMount(source, bind["bind"], bind.get("mode", "rw")) for source, bind in hub.volumes.items()
    }
    taken = {m.target for m in by_source.values()}
    if hub.home_volume and home and home not in taken:  # an admin's own mount at the home wins
        by_source[hub.home_volume] = ContainerMount(hub.home_volume, home)
    if home:
        for dataset in profile.datasets:
            by_source[dataset.source] = ContainerMount(dataset.source, f"{home}/datasets/{dataset.name}", "ro")
        for share in profile.shares:
            mode = "rw" if share.writable_by & groups else "ro"
            by_source[share.source] = ContainerMount(share.source, f"{home}/shared/{share.name}", mode)
    mounts = list(by_source.values())
    if hub.device_list_as_volume_mounts:
        mounts += [ContainerMount("/dev/null", f"{NVIDIA_DEVICE_MOUNTS}/{unit}", "ro") for unit in devices]
    return tuple(mounts)


__all__ = [
    "NVIDIA_DEVICE_MOUNTS",
    "ContainerMount",
    "HubSettings",
    "ImageFacts",
    "Limits",
    "ServerContainer",
    "culling_rules",
    "describe",
    "image_home",
]
