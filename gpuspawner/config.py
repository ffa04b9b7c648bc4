"""The hub's config, read once for everything outside the hub: the ``gpuspawner`` command,
the dashboard and the GPU culler.

Each reads the hub's own ``jupyterhub_config.py`` as JupyterHub does and builds its
spawner from it, so profiles, the inventory and the Docker settings are written
once. No printing here: the command and the services say what they like about
``HubConfig.notes`` and ``ConfigError``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points

import docker
import docker.errors
from traitlets.config import Application, Config, PyFileConfigLoader
from traitlets.utils.importstring import import_item

from .gpus import Inventory
from .profiles import Profile
from .spawner import GPUSpawner


class ConfigError(Exception):
    """The hub's config cannot be used (no file, a broken file, no engine): the command exits 2."""


@dataclass
class HubConfig:
    """The hub as its config describes it: a GPUSpawner built from ``jupyterhub_config.py``."""

    config_file: str  # '' when no file was found and hub defaults are used
    spawner: GPUSpawner
    spawner_problem: str = ""  # the config does not make gpuspawner the hub's spawner
    notes: list[str] = field(default_factory=list)

    @cached_property
    def profiles(self) -> tuple[Profile, ...]:
        """Every profile, validated and pinned as the hub does; raises ``ProfileError``."""
        return self.spawner.lab_profiles

    @cached_property
    def inventory(self) -> Inventory:
        """The units the hub hands out (its own rule: static list, NVML, or auto)."""
        return self.spawner.load_inventory()

    @property
    def driver_cuda(self) -> str:
        """The highest CUDA the driver supports, as the hub decides it (NVML, else config)."""
        return self.inventory.cuda_version or self.spawner.driver_cuda_version

    def docker(self) -> docker.APIClient:
        """A client of the hub's engine (DOCKER_HOST, ``client_kwargs``, ``tls_config``) that answered."""
        try:
            client = self.spawner.new_docker_client()  # version "auto": it asks the engine at once
            client.ping()
        except (docker.errors.DockerException, OSError) as e:
            raise ConfigError(f"no Docker engine answers at {engine_where(self.spawner)}: {e}") from None
        return client


def engine_where(spawner: GPUSpawner) -> str:
    """The engine the hub talks to, as the admin wrote it (client_kwargs, else DOCKER_HOST)."""
    return (
        (spawner.client_kwargs or {}).get("base_url") or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    )


def _spawner_class(config: Config) -> tuple[type[GPUSpawner], str]:
    """The config's spawner class when it is a GPUSpawner, else GPUSpawner and what is wrong."""
    value = config.JupyterHub.get("spawner_class")
    if value is None:
        return GPUSpawner, "c.JupyterHub.spawner_class is not set: the hub would not use gpuspawner"
    cls = value
    if isinstance(value, str):
        try:
            found = entry_points(group="jupyterhub.spawners", name=value)
            cls = next(iter(found)).load() if found else import_item(value)
        except Exception as e:  # noqa: BLE001 - whatever the import raises, it is the config's problem
            return GPUSpawner, f"c.JupyterHub.spawner_class = {value!r} cannot be loaded: {e}"
    if isinstance(cls, type) and issubclass(cls, GPUSpawner):
        return cls, ""
    return GPUSpawner, f"c.JupyterHub.spawner_class is {value!r}, not gpuspawner's GPUSpawner ('gpu')"


def load_hub_config(path: str, explicit: bool = True, overrides: Config | None = None, log=None) -> HubConfig:
    """Read the hub's config file as JupyterHub does, and build its spawner from it.

    A missing file is an error when it was named (``explicit``); otherwise the
    hub's defaults are used, with a note. ``overrides`` (``--GPUSpawner.x=y``)
    apply on top. Raises ``ConfigError`` when the file or the spawner's config
    is broken; profile errors are left for ``HubConfig.profiles`` to raise.
    """
    notes = []
    if os.path.exists(path):
        folder, name = os.path.split(os.path.abspath(path))
        try:
            config = PyFileConfigLoader(name, path=folder).load_config()
        except Exception as e:  # noqa: BLE001 - a config file can raise anything
            raise ConfigError(f"{path} does not load: {type(e).__name__}: {e}") from None
        config_file = path
    elif explicit:
        raise ConfigError(f"no config file {path}: name the hub's config with -f")
    else:
        config, config_file = Config(), ""
        notes.append(f"no {path} in {os.getcwd()}: using the hub's defaults (name the hub's config with -f)")
    if overrides:
        config.merge(overrides)
    cls, problem = _spawner_class(config)
    try:
        spawner = cls(config=config, **({"log": log} if log else {}))
    except Exception as e:  # noqa: BLE001 - traitlets' validation errors name the option
        raise ConfigError(f"{path}: {e}") from None
    return HubConfig(config_file, spawner, problem if config_file else "", notes)


def named_on_command_line(app: Application, trait: str = "hub_config") -> bool:
    """Whether ``trait`` was set (``-f``), rather than left at its default.

    traitlets files a value under the most derived class, so any section may hold it.
    """
    return any(isinstance(v, dict) and trait in v for v in app.config.values())


def load_service_config(app: Application, path: str) -> HubConfig:
    """The hub's config for a hub-managed service (the dashboard, the culler): its config file
    ``path``, an error only when it was named with -f; notes go to the service's log."""
    hub = load_hub_config(path, named_on_command_line(app), log=app.log)
    for note in hub.notes:
        app.log.warning(note)
    return hub


__all__ = ["ConfigError", "HubConfig", "engine_where", "load_hub_config", "load_service_config"]
