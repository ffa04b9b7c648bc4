"""GPUSpawner: DockerSpawner with course profiles, exclusive GPUs and a home volume.

Thin glue: profiles come from ``profiles.py``, GPU decisions from
``gpus.allocation``; this module only applies them to the container it asks
Docker for, and records them where a restarted hub finds them again (labels on
the container, and the server's state).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker.types
import jinja2
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Dict, List, TraitError, Unicode, default, validate

from .gpus import GPU, Ledger, NoGPUAvailable, holder_key, parse_static_inventory
from .gpus.inventory import InventoryError
from .profiles import Profile, ProfileError, choose_profile, parse_profiles

#: Labels every gpuspawner container carries: the record a restarted hub rebuilds from.
LABEL_USER = "gpuspawner.user"
LABEL_SERVER = "gpuspawner.server"
LABEL_PROFILE = "gpuspawner.profile"
LABEL_GPUS = "gpuspawner.gpus"  # comma-separated GPU ids; '' when none

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)


class _Lab:
    """What all spawners of one hub share: the GPU ledger and the ports in use."""

    def __init__(self, inventory: tuple[GPU, ...]):
        self.ledger = Ledger(inventory)
        self.synced = False  # rebuilt from the running containers yet?
        self.lock = asyncio.Lock()
        self.ports: dict[str, int] = {}  # holder -> port, while starting or running


def apply_profile_choice(spawner: GPUSpawner, user_options: dict) -> None:
    """The default ``apply_user_options``: resolve ``user_options["profile"]``.

    An unknown profile is refused with HTTP 400 before anything is allocated.
    """
    try:
        spawner.profile = choose_profile(spawner.lab_profiles, user_options.get("profile"))
    except ProfileError as e:
        raise web.HTTPError(400, str(e)) from None


class GPUSpawner(DockerSpawner):
    """A DockerSpawner for GPU course labs.

    Each server runs the image of the profile its user chose, holds whole GPUs
    that no other server holds, and mounts the user's persistent home volume.
    Everything DockerSpawner's config does keeps working; the defaults that
    differ are ``network_name`` ("host"), ``use_internal_ip`` and ``remove`` (True).
    """

    # --- configuration

    profiles = List(
        Dict(),
        help="""The course profiles a user chooses from.

        A list of dicts, each with:

        - ``slug``: the id a user sends (``user_options["profile"]``), e.g. ``"ml101-gpu"``;
        - ``display_name``: what the spawn page shows;
        - ``image``: the single-user image;
        - ``gpus``: how many whole GPUs (default 0);
        - ``mem_limit``, ``cpu_limit``, ``shm_size``: limits (default: this spawner's);
        - ``description``: a line for the spawn page.

        The first profile is used when a user chooses none. Empty: one profile
        made of ``DockerSpawner.image`` and no GPU, as in plain DockerSpawner.
        The list is validated whenever a spawner loads its config (a broken
        profile refuses every spawn with an error naming the profile and the field).
        """,
    ).tag(config=True)

    @validate("profiles")
    def _validate_profiles(self, proposal):
        try:
            parse_profiles(proposal.value)
        except ProfileError as e:
            raise TraitError(f"GPUSpawner.profiles: {e}") from None
        return proposal.value

    gpus = List(
        Dict(),
        help="""The GPUs of this host, as a static list.

        Each GPU is a dict with ``index`` (as ``nvidia-smi`` numbers it),
        ``uuid`` (``GPU-...``, from ``nvidia-smi -L``), ``name`` and ``memory``
        (e.g. ``"80G"``). Whole GPUs are given to one server at a time and
        passed to Docker by uuid.
        """,
    ).tag(config=True)

    @validate("gpus")
    def _validate_gpus(self, proposal):
        try:
            parse_static_inventory(proposal.value)
        except InventoryError as e:
            raise TraitError(f"GPUSpawner.gpus: {e}") from None
        return proposal.value

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

    shm_size = ByteSpecification(
        None,
        allow_none=True,
        help="""Size of ``/dev/shm`` for every server, unless its profile sets one.

        PyTorch DataLoader workers share batches through ``/dev/shm``, and
        Docker's default of 64M makes them fail; ``"1G"`` or more suits GPU work.
        None: Docker's default.
        """,
    ).tag(config=True)

    # --- DockerSpawner defaults that differ

    @default("network_name")
    def _default_network_name(self):
        # An engine with no bridge network is enough: servers listen on 127.0.0.1.
        return "host"

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
        if len(self.lab_profiles) <= 1:
            return ""
        return GPUSpawner.render_profile_form

    @default("options_from_form")
    def _default_options_from_form(self):
        def options_from_form(formdata):
            choice = formdata.get("profile", [""])
            return {"profile": choice[0]} if choice and choice[0] else {}

        return options_from_form

    # --- per-server state

    profile: Profile | None = None
    gpu_ids: tuple[str, ...] = ()

    @property
    def lab_profiles(self) -> tuple[Profile, ...]:
        if self.profiles:
            return parse_profiles(self.profiles)
        return (Profile(slug="default", display_name="Default", image=self.image),)

    @property
    def holder(self) -> str:
        return holder_key(self.user.name, self.name or "")

    def get_state(self):
        state = super().get_state()
        if self.profile is not None:
            state["profile"] = self.profile.slug
        if self.gpu_ids:
            state["gpus"] = list(self.gpu_ids)
        return state

    def load_state(self, state):
        super().load_state(state)
        slug = state.get("profile")
        self.profile = next((p for p in self.lab_profiles if p.slug == slug), None)
        self.gpu_ids = tuple(state.get("gpus", ()))

    def clear_state(self):
        super().clear_state()
        self.gpu_ids = ()
        self.profile = None  # each start resolves the profile again

    # --- the hub's shared ledger

    _lab: _Lab | None = None

    def _shared_lab(self) -> _Lab:
        cls = GPUSpawner
        if cls._lab is None:
            cls._lab = _Lab(parse_static_inventory(self.gpus))
        return cls._lab

    async def ledger(self) -> Ledger:
        """The hub's GPU ledger, rebuilt from running containers on first use."""
        lab = self._shared_lab()
        if not lab.synced:
            async with lab.lock:
                if not lab.synced:
                    await self._adopt_running_containers(lab.ledger)
                    lab.synced = True
        return lab.ledger

    async def _adopt_running_containers(self, ledger: Ledger) -> None:
        containers = await self.docker("containers", filters={"label": LABEL_GPUS})
        for container in containers:
            labels = container.get("Labels") or {}
            gpu_ids = [g for g in labels.get(LABEL_GPUS, "").split(",") if g]
            if not gpu_ids or LABEL_USER not in labels:
                continue
            holder = holder_key(labels[LABEL_USER], labels.get(LABEL_SERVER, ""))
            unknown = ledger.adopt(holder, gpu_ids)
            self.log.info("Adopted GPUs %s of running server %s", ",".join(gpu_ids), holder)
            if unknown:
                self.log.warning(
                    "Server %s holds GPUs not in this hub's inventory: %s", holder, ",".join(unknown)
                )

    def _release_gpus(self, why: str) -> None:
        lab = self._shared_lab()
        lab.ports.pop(self.holder, None)
        released = lab.ledger.release(self.holder)
        if released and released.gpus:
            self.log.info(
                "Released GPUs %s of %s (%s)", ",".join(g.id for g in released.gpus), self.holder, why
            )

    # --- the spawn

    _configured: dict | None = None  # the hub-wide values a profile may override

    def _apply_profile(self, profile: Profile) -> None:
        """Set image and limits from ``profile``; what it leaves out comes from config."""
        if self._configured is None:
            self._configured = {k: getattr(self, k) for k in ("image", "mem_limit", "cpu_limit")}
        self.profile = profile
        self.image = profile.image
        for name in ("mem_limit", "cpu_limit"):
            value = getattr(profile, name)
            setattr(self, name, self._configured[name] if value is None else value)

    def _choose_port(self) -> int:
        in_use = set(self._shared_lab().ports.values())
        port = random_port()
        while port in in_use:
            port = random_port()
        self._shared_lab().ports[self.holder] = port
        return port

    async def start(self):
        if self.profile is None:  # an admin replaced apply_user_options
            try:
                self.profile = choose_profile(self.lab_profiles, self.user_options.get("profile"))
            except ProfileError as e:
                raise SpawnException(str(e), reason="profile") from None
        profile = self.profile
        self._apply_profile(profile)

        ledger = await self.ledger()
        try:
            assignment = ledger.assign(self.holder, profile.gpus)
        except NoGPUAvailable as e:
            raise SpawnException(e.message, reason="no_gpu", status_code=503) from None
        self.gpu_ids = tuple(gpu.id for gpu in assignment.gpus)
        if self.gpu_ids:
            self.log.info("Assigned GPUs %s to %s (profile %s)", ",".join(self.gpu_ids), self.holder, profile.slug)

        try:
            if self.network_name == "host":
                self.ip = "127.0.0.1"
                self.port = self._choose_port()
            return await super().start()
        except BaseException:
            # A refused or failed spawn holds no GPU and leaves no container.
            await self._discard_container()
            self._release_gpus("spawn failed")
            self.gpu_ids = ()
            raise

    async def _discard_container(self) -> None:
        if not self.object_id:
            return
        try:
            await self.docker("remove_container", self.object_id, force=True)
        except docker.errors.APIError as e:
            if e.status_code not in (404, 409):
                self.log.warning("Could not remove failed container %s: %s", self.object_id[:12], e)
        self.object_id = ""

    async def create_object(self):
        self._home = await self._home_mount_point()
        return await super().create_object()

    async def _home_mount_point(self) -> str:
        if self.home_path:
            return self.home_path
        config = (await self.docker("inspect_image", self.image)).get("Config") or {}
        for entry in config.get("Env") or []:
            if entry.startswith("HOME="):
                return entry.split("=", 1)[1]
        workdir = config.get("WorkingDir") or ""
        return workdir if workdir not in ("", "/") else "/home/jovyan"

    _home: str = ""

    @property
    def volume_binds(self):
        binds = super().volume_binds
        if self.home_volume_name and self._home:
            taken = {bind["bind"] for bind in binds.values()}
            if self._home not in taken:  # an admin's own mount at the home wins
                name = self.format_volume_name(self.home_volume_name, self)
                binds[name] = {"bind": self._home, "mode": "rw"}
        return binds

    def docker(self, method, *args, **kwargs):
        if method == "create_container":
            kwargs = self._with_lab_settings(kwargs)
        return super().docker(method, *args, **kwargs)

    def _with_lab_settings(self, create_kwargs: dict) -> dict:
        """Add what the lab decided to the container DockerSpawner is about to create."""
        profile = self.profile
        labels = dict(create_kwargs.get("labels") or {})
        labels.update(
            {
                LABEL_USER: self.user.name,
                LABEL_SERVER: self.name or "",
                LABEL_PROFILE: profile.slug if profile else "",
                LABEL_GPUS: ",".join(self.gpu_ids),
            }
        )
        host_config = create_kwargs["host_config"]
        if self.gpu_ids:
            # Explicit ids: a count would give every container GPU 0.
            host_config["DeviceRequests"] = [
                docker.types.DeviceRequest(device_ids=list(self.gpu_ids), capabilities=[["gpu"]])
            ]
        else:
            host_config.pop("DeviceRequests", None)
        shm_size = profile.shm_size if profile and profile.shm_size is not None else self.shm_size
        if shm_size is not None:
            host_config["ShmSize"] = int(shm_size)
        return {**create_kwargs, "labels": labels}

    def get_env(self):
        env = super().get_env()
        # Always ours: CUDA images set NVIDIA_VISIBLE_DEVICES=all, which the toolkit would honour.
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids) or "void"
        if self.gpu_ids:
            env.setdefault("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
        if self.profile is not None:
            env["GPUSPAWNER_PROFILE"] = self.profile.slug
        return env

    async def get_ip_and_port(self):
        if self.network_name == "host":
            return "127.0.0.1", self.port
        return await super().get_ip_and_port()

    async def poll(self):
        await self.ledger()  # a restarted hub polls every server first: adopt before deciding
        status = await super().poll()
        if status is not None:
            self._release_gpus(f"server not running: {status}")
        return status

    async def stop(self, now=False):
        if self.object_id:
            await super().stop(now=now)
        else:
            self.clear_state()
        self._release_gpus("stopped")

    # --- the spawn page

    async def render_profile_form(self) -> str:
        """The profile choice shown on JupyterHub's spawn page."""
        ledger = await self.ledger()
        free = len(ledger.free())
        chosen = self.user_options.get("profile") if self.user_options else None
        profiles = self.lab_profiles
        if chosen not in {p.slug for p in profiles}:
            chosen = profiles[0].slug
        choices = [
            {"profile": p, "checked": p.slug == chosen, "free_gpus": free} for p in profiles
        ]
        return _templates.get_template("profile_form.html").render(
            choices=choices, total_gpus=len(ledger.inventory)
        )


__all__ = ["GPUSpawner", "apply_profile_choice"]
