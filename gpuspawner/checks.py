"""Validate the whole GPUSpawner config when the hub starts.

JupyterHub creates spawners only when users need them, so a broken profile
would otherwise show first to a student. Ending ``jupyterhub_config.py`` with
``check_config(c)`` makes the hub refuse to start instead, naming the profile
and the field; it also starts pulling the profiles' missing images.
"""

from __future__ import annotations

from jupyterhub.app import JupyterHub
from traitlets import TraitError
from traitlets.config import Config

from .gpus.inventory import InventoryError
from .profiles import Profile, ProfileError
from .spawner import GPUSpawner


class ConfigInvalid(SystemExit):
    """The hub's GPUSpawner config cannot be used; the message says where."""


def check_config(config: Config, prepull: bool = True) -> tuple[Profile, ...]:
    """Validate profiles, images and GPUs of ``config`` (the hub's ``c``); return the profiles.

    Raises ``ConfigInvalid`` (the hub stops with the message). With ``prepull``,
    and when called while the hub starts (its event loop runs), missing profile
    images start pulling in the background.
    """
    try:
        spawner = GPUSpawner(config=config)
        profiles = spawner.lab_profiles
        spawner.load_inventory()
    except (TraitError, ProfileError, InventoryError) as e:
        raise ConfigInvalid(f"gpuspawner: the hub's config is not valid: {e}") from None
    if prepull and JupyterHub.initialized():  # in the hub itself, not in a tool reading its config
        spawner._prepull_profile_images()
    return profiles
