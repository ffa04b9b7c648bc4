"""The hub's config, read once for everything outside the hub: the ``gpuspawner`` command,
the dashboard and the GPU culler.

Each reads the hub's own ``jupyterhub_config.py`` as JupyterHub does and builds its
spawner from it, so profiles, the inventory and the Docker settings are written
once. No printing here: the command and the services say what they like about
``HubConfig.notes`` and ``ConfigError``.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
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

#: The environment variable that names the hub's config file for the ``gpuspawner`` command when
#: ``-f`` does not (the hub's container image sets it to /etc/jupyterhub/jupyterhub_config.py).
CONFIG_VARIABLE = "GPUSPAWNER_CONFIG"

#: The config file the command reads when neither ``-f`` nor ``GPUSPAWNER_CONFIG`` names one.
DEFAULT_CONFIG_FILE = "jupyterhub_config.py"


class ConfigError(Exception):
    """The hub's config cannot be used (no file, a broken file, no engine): the command exits 2."""


class NoConfigFile(ConfigError):
    """No config file where one was named, or none found for a command that judges a hub's set-up."""


@dataclass(frozen=True)
class UnsetVariable:
    """An environment variable the config file read that is not set where it was read.

    Where the hub runs it may be set (an env_file), so the hub may see another set-up
    than a command run here: another image, say.
    """

    name: str
    default: str | None  # what the config used instead (``os.environ.get``'s default); None: not known
    settings: tuple[str, ...] = ()  # the config's settings it decides ("GPUSpawner.profiles"), by name
    unknown: str = ""  # why what it decides could not be told ('' when ``settings`` says it)

    @property
    def decides_the_lab(self) -> bool:
        """Whether it may change what the lab's commands judge (the spawner's or the hub's own settings)."""
        return bool(self.unknown) or any(lab_setting(s) for s in self.settings)

    def note(self) -> str:
        """One sentence for whoever runs a command here."""
        instead = f" ({self.default!r} used instead)" if self.default else ""
        if self.settings:
            decides = f"it decides {', '.join('c.' + s for s in self.settings)}"
        elif self.unknown:
            decides = f"what it decides cannot be told ({self.unknown})"
        else:
            decides = "it changes none of the config's settings"
        return (
            f"the config reads {self.name}, which is not set here{instead}: {decides}, so the hub,"
            f" where it is set, may see another set-up than this command"
        )


@dataclass
class HubConfig:
    """The hub as its config describes it: a GPUSpawner built from ``jupyterhub_config.py``."""

    config_file: str  # '' when no file was found and hub defaults are used
    spawner: GPUSpawner
    spawner_problem: str = ""  # the config does not make gpuspawner the hub's spawner
    notes: list[str] = field(default_factory=list)
    unset_variables: tuple[UnsetVariable, ...] = ()  # read by the config, not set here

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


#: The modules a read of ``os.environ`` passes through before the code that asked.
_ENVIRON_MODULES = frozenset({__name__, "os", "collections.abc", "_collections_abc"})


class RecordingEnviron(MutableMapping):
    """``os.environ`` as a config file sees it while it loads: each variable it asks for and finds
    unset is recorded in ``unset`` (name -> the default it fell back to, None when none was given).

    ``pretend`` maps names to values served as if they were set, without setting them.
    Writes go through to the real environment, as the config meant.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str],
        unset: dict,
        pretend: Mapping[str, str] | None = None,
        folder: str = "",
    ):
        self._environ = environ
        self.unset = unset
        self._pretend = dict(pretend or {})
        self._folder = folder

    def __getitem__(self, name: str) -> str:
        if name in self._pretend:
            return self._pretend[name]
        try:
            return self._environ[name]
        except KeyError:
            if self._read_by_the_config():
                self.unset.setdefault(name, None)
            raise

    def get(self, name, default=None):  # os.getenv comes here too
        if name in self:
            return self[name]
        if isinstance(default, str) and self.unset.get(name, "") is None:
            self.unset[name] = default
        return default

    def _read_by_the_config(self) -> bool:
        """Whether the code asking is in the config's own folder (the config file, or a file of its
        own beside it), not a library it imports (which reads variables of its own)."""
        if not self._folder:
            return True
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__") in _ENVIRON_MODULES:
            frame = frame.f_back
        return frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == self._folder

    def __setitem__(self, name: str, value: str) -> None:
        self._pretend.pop(name, None)
        self._environ[name] = value

    def __delitem__(self, name: str) -> None:
        self._pretend.pop(name, None)
        del self._environ[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**self._environ, **self._pretend})

    def __len__(self) -> int:
        return len({**self._environ, **self._pretend})

    def copy(self) -> dict[str, str]:
        return {**self._environ, **self._pretend}


@contextmanager
def recording_environ(pretend: Mapping[str, str] | None = None, folder: str = "") -> Iterator[dict]:
    """While it lasts, ``os.environ`` (and so ``os.getenv``) records the unset variables read by code
    in ``folder`` (any code when ''); yields the record (name -> default). For loading a config file
    only: it swaps a process-wide global."""
    unset: dict = {}
    real = os.environ
    os.environ = RecordingEnviron(real, unset, pretend, folder)
    try:
        yield unset
    finally:
        os.environ = real


def _read_config_file(path: str, pretend: Mapping[str, str] | None = None) -> tuple[Config, dict]:
    """The config file as JupyterHub loads it, and the unset variables it read (name -> default)."""
    folder, name = os.path.split(os.path.abspath(path))
    with recording_environ(pretend, folder) as unset:
        config = PyFileConfigLoader(name, path=folder).load_config()
    return config, unset


def flat_settings(config: Config) -> dict[str, object]:
    """``{"GPUSpawner.profiles": [...], ...}``: every setting of a config, by section and name."""
    return {
        f"{section}.{name}": value
        for section, values in config.items()
        if isinstance(values, Mapping)
        for name, value in values.items()
    }


def _plain(value: object) -> bool:
    """Data that compares by value (not a function or an object made anew by each load)."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return True
    if isinstance(value, Mapping):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    return False


def settings_changed(before: Mapping[str, object], after: Mapping[str, object], marker: str) -> tuple[str, ...]:
    """The settings that differ between two loads of one config: ``marker`` (a value given to one
    variable in the second load) shows in them, or their plain data differs."""
    changed = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if (
            marker in repr(new)
            or (name not in before or name not in after)
            or (_plain(old) and _plain(new) and old != new)
        ):
            changed.append(name)
    return tuple(changed)


def lab_setting(name: str) -> bool:
    """Whether a setting (``"Section.name"``) is one the lab's commands judge: the spawner's or the hub's."""
    section = name.partition(".")[0]
    return section == "JupyterHub" or section.endswith("Spawner")


#: More unset variables than this are reported without finding what each decides (one load each).
MAX_VARIABLES_TRACED = 20


def unset_variables(path: str, config: Config, unset: Mapping[str, str | None]) -> tuple[UnsetVariable, ...]:
    """What each unset variable the config read decides: the config is loaded again with that variable
    alone set to a marker, and the settings that change are its own."""
    before = flat_settings(config)
    found = []
    for n, (name, default) in enumerate(sorted(unset.items())):
        if n >= MAX_VARIABLES_TRACED:
            found.append(UnsetVariable(name, default, unknown="too many unset variables to trace each"))
            continue
        token = secrets.token_hex(4)
        marker = f"gpuspawner-unset-{token}:{token}"  # passes for an image name, a path, a host name
        disabled = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # what the config says again, with a marker in it, is not news
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                other, _ = _read_config_file(path, {name: marker})
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a config can raise anything (check_config exits)
            found.append(UnsetVariable(name, default, unknown=f"with it set, the config fails: {type(e).__name__}"))
            continue
        finally:
            logging.disable(disabled)
        found.append(UnsetVariable(name, default, settings_changed(before, flat_settings(other), marker)))
    return tuple(found)


def load_hub_config(path: str, explicit: bool = True, overrides: Config | None = None, log=None) -> HubConfig:
    """Read the hub's config file as JupyterHub does, and build its spawner from it.

    A missing file is an error when it was named (``explicit``); otherwise the
    hub's defaults are used, with a note. ``overrides`` (``--GPUSpawner.x=y``)
    apply on top. Raises ``ConfigError`` when the file or the spawner's config
    is broken; profile errors are left for ``HubConfig.profiles`` to raise.
    """
    notes, unset = [], ()
    if os.path.exists(path):
        try:
            config, read = _read_config_file(path)
        except Exception as e:  # noqa: BLE001 - a config file can raise anything
            raise ConfigError(f"{path} does not load: {type(e).__name__}: {e}") from None
        unset = unset_variables(path, config, read)
        config_file = path
    elif explicit:
        raise NoConfigFile(f"no config file {path}: name the hub's config with -f")
    else:
        config, config_file = Config(), ""
        notes.append(
            f"no {path} in {os.getcwd()}: using the hub's defaults (name the hub's config with -f or {CONFIG_VARIABLE})"
        )
    if overrides:
        config.merge(overrides)
    cls, problem = _spawner_class(config)
    try:
        spawner = cls(config=config, **({"log": log} if log else {}))
    except Exception as e:  # noqa: BLE001 - traitlets' validation errors name the option
        raise ConfigError(f"{path}: {e}") from None
    return HubConfig(config_file, spawner, problem if config_file else "", notes, unset)


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
    for variable in hub.unset_variables:
        if variable.decides_the_lab:
            app.log.warning("%s (set it in the service's environment)", variable.note())
    return hub


__all__ = [
    "CONFIG_VARIABLE",
    "DEFAULT_CONFIG_FILE",
    "ConfigError",
    "HubConfig",
    "NoConfigFile",
    "UnsetVariable",
    "engine_where",
    "load_hub_config",
    "load_service_config",
    "recording_environ",
]
