"""What every subcommand shares: the hub's config file (``-f``), read as the hub reads it."""

from __future__ import annotations

import sys

from traitlets import Unicode
from traitlets.config import Application, Config

from ..config import ConfigError, HubConfig, load_hub_config, named_on_command_line
from ..profiles import Profile, ProfileError


class LabCommand(Application):
    """What every subcommand shares: the hub's config file."""

    hub_config = Unicode(
        "jupyterhub_config.py",
        help="""The hub's config file, read as JupyterHub reads it (profiles, gpus, images...).""",
    ).tag(config=True)

    aliases = {
        **Application.aliases,
        ("f", "config"): ("LabCommand.hub_config", "The hub's config file (default: ./jupyterhub_config.py)"),
    }

    _own_sections = ("Application", "LabCommand")

    def load_hub_config(self) -> HubConfig:
        """The hub's config, with ``--GPUSpawner.x=y`` and the like from the command line applied over the file."""
        overrides = Config(
            {k: v for k, v in self.config.items() if k not in self._own_sections + (type(self).__name__,)}
        )
        hub = load_hub_config(self.hub_config, named_on_command_line(self), overrides, self.log)
        for note in hub.notes:
            print(f"gpuspawner: {note}", file=sys.stderr)
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
