"""What every subcommand shares: the hub's config file (``-f``), read as the hub reads it."""

from __future__ import annotations

import os
import sys
from typing import ClassVar

from traitlets import Bool, Unicode, default
from traitlets.config import Application, Config

from ..config import (
    CONFIG_VARIABLE,
    DEFAULT_CONFIG_FILE,
    ConfigError,
    HubConfig,
    NoConfigFile,
    load_hub_config,
    named_on_command_line,
)
from ..profiles import Profile, ProfileError

#: Where the hub's config is in the hub's container (deploy/hub/compose.yaml): what to suggest.
HUB_CONFIG_EXAMPLE = "/etc/jupyterhub/jupyterhub_config.py"


def no_config_refusal(command: str, path: str, folder: str) -> str:
    """Why a command that judges a hub's set-up stops when no config file names that hub."""
    return (
        f"no hub config: there is no {path} in {folder} (the default; {CONFIG_VARIABLE} is not set)."
        f" Name the hub's config: {command} -f {HUB_CONFIG_EXAMPLE},"
        f" or export {CONFIG_VARIABLE}={HUB_CONFIG_EXAMPLE}; or add --defaults to judge the hub's defaults instead"
    )


class LabCommand(Application):
    """What every subcommand shares: the hub's config file."""

    hub_config = Unicode(
        DEFAULT_CONFIG_FILE,  # shown in --help; the default is computed below
        help=f"""The hub's config file, read as JupyterHub reads it (profiles, gpus, images...).

        Default: the environment variable {CONFIG_VARIABLE} when it is set (the hub's container
        image sets it), else ./{DEFAULT_CONFIG_FILE}.
        """,
    ).tag(config=True)

    @default("hub_config")
    def _hub_config_default(self) -> str:
        return os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG_FILE

    defaults = Bool(
        False,
        help="""With no config file found, judge the hub's defaults instead of stopping.

        For the commands that judge a hub's set-up (doctor, prepull, status, network, quarantine).
        """,
    ).tag(config=True)

    #: Whether the command judges a hub's set-up: then, with no config file found, it stops
    #: (exit status 2) rather than judge the defaults, unless --defaults.
    judges_the_hub: ClassVar[bool] = False
    #: Whether the command reports the config's unset environment variables itself (doctor):
    #: else each that may change the lab is a note on stderr.
    reports_unset_variables: ClassVar[bool] = False

    aliases = {
        **Application.aliases,
        ("f", "config"): (
            "LabCommand.hub_config",
            f"The hub's config file (default: ${CONFIG_VARIABLE}, else ./{DEFAULT_CONFIG_FILE})",
        ),
    }
    flags = {
        **Application.flags,
        "defaults": (
            {"LabCommand": {"defaults": True}},
            "With no config file found, judge the hub's defaults instead of stopping.",
        ),
    }

    _own_sections = ("Application", "LabCommand")

    def config_named(self) -> str:
        """What named the config file: '-f', the environment variable, or '' (the default)."""
        if named_on_command_line(self):
            return "-f"
        return CONFIG_VARIABLE if os.environ.get(CONFIG_VARIABLE) else ""

    def load_hub_config(self) -> HubConfig:
        """The hub's config, with ``--GPUSpawner.x=y`` and the like from the command line applied over the file."""
        named = self.config_named()
        if named == CONFIG_VARIABLE and not os.path.exists(self.hub_config):
            raise NoConfigFile(f"no config file {self.hub_config} (named by {CONFIG_VARIABLE})")
        if not named and self.judges_the_hub and not self.defaults and not os.path.exists(self.hub_config):
            raise NoConfigFile(no_config_refusal(self.name, self.hub_config, os.getcwd()))
        overrides = Config(
            {k: v for k, v in self.config.items() if k not in self._own_sections + (type(self).__name__,)}
        )
        hub = load_hub_config(self.hub_config, bool(named), overrides, self.log)
        for note in hub.notes:
            print(f"gpuspawner: {note}", file=sys.stderr)
        if not self.reports_unset_variables:
            for variable in hub.unset_variables:
                if variable.decides_the_lab:
                    print(f"gpuspawner: {variable.note()}", file=sys.stderr)
        return hub

    def start(self) -> int:
        if self.subapp:
            return self.subapp.start()
        self.print_help()
        return 2


def profiles_of(hub: HubConfig) -> tuple[Profile, ...]:
    """The hub's profiles, or the ``ConfigError`` that ends a command needing them."""
    try:
        return hub.profiles
    except ProfileError as e:
        raise ConfigError(f"{hub.config_file or 'config'}: {e}") from None


def by_image(profiles: tuple[Profile, ...]) -> dict[str, list[Profile]]:
    """The profiles that use each image, in the order the config names them."""
    users: dict[str, list[Profile]] = {}
    for p in profiles:
        users.setdefault(p.image, []).append(p)
    return users
