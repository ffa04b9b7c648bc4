"""Validate the whole GPUSpawner config when the hub starts.

JupyterHub creates spawners only when users need them, so a broken profile
would otherwise show first to a student. Ending ``jupyterhub_config.py`` with
``check_config(c)`` makes the hub refuse to start instead, naming the profile
and the field; it also starts pulling the profiles' missing images.
"""

from __future__ import annotations

import ipaddress
import os
import ssl

from jupyterhub.app import JupyterHub
from traitlets import TraitError
from traitlets.config import Config

from .disk_quota import HomesRootFacts, home_quota_refusal, writable_layer_refusal
from .gpus.inventory import InventoryError
from .gpus.nvml import discover
from .gpus.resources import oversized
from .lab_network import in_the_hub
from .profiles import Profile, ProfileError
from .reservations import ReservationError
from .spawner import GPUSpawner
from .usage.budgets import BudgetError


class ConfigInvalid(SystemExit):
    """The hub's GPUSpawner config cannot be used; the message says where."""


def check_config(config: Config, prepull: bool = True) -> tuple[Profile, ...]:
    """Validate profiles, images and GPUs of ``config`` (the hub's ``c``); return the profiles.

    Raises ``ConfigInvalid`` (the hub stops with the message). With ``prepull``,
    and when called while the hub starts (its event loop runs), missing profile
    images start pulling in the background.
    """
    try:
        spawner = _spawner_class(config)(config=config)
        profiles = spawner.lab_profiles
        if spawner.gpus != "nvml" or type(spawner).load_inventory is not GPUSpawner.load_inventory:
            spawner.load_inventory()
    except (TraitError, ProfileError, InventoryError) as e:
        raise ConfigInvalid(f"gpuspawner: the hub's config is not valid: {e}") from None
    caps = spawner.policy.resource_caps
    for profile in profiles:
        too_big = oversized(spawner._resources_of(profile), caps, profile.groups)
        if too_big:  # an admin-only profile may mean it: said, not refused
            spawner.log.warning(
                "gpuspawner: profile %r needs %s: only exempt admins can start it", profile.slug, too_big
            )
    if spawner.gpus == "nvml" and type(spawner).load_inventory is GPUSpawner.load_inventory:
        _check_nvml()
    try:
        if spawner.reservations or spawner.reservations_file:
            spawner.reservation_book()  # parsed, and placed on the units: overlaps and unknown units refused
        if spawner.gpu_budgets:
            spawner.budgets  # noqa: B018 - parsed: each budget's fields checked, profiles known
    except (ReservationError, BudgetError) as e:
        raise ConfigInvalid(f"gpuspawner: the hub's config is not valid: {e}") from None
    unreachable = _hub_unreachable(config, spawner)
    if unreachable:
        raise ConfigInvalid(f"gpuspawner: the hub's config is not valid: {unreachable}")
    unenforced = disk_quota_refusal(spawner, profiles)
    if unenforced:
        raise ConfigInvalid(f"gpuspawner: the hub's config is not valid: {unenforced}")
    unserved = tls_refusal(config.JupyterHub.get("ssl_cert", ""), config.JupyterHub.get("ssl_key", ""))
    if unserved:
        raise ConfigInvalid(f"gpuspawner: the hub's config is not valid: {unserved}")
    if prepull and in_the_hub():  # in the hub itself, not in a tool reading its config
        spawner._prepull_profile_images()
    return profiles


def disk_quota_refusal(spawner: GPUSpawner, profiles: tuple[Profile, ...], docker_info: dict | None = None) -> str:
    """Why the disk quotas the config asks for would not be enforced, or ''.

    A quota that is set is enforced or the hub does not start: never silently not.
    ``docker_info``: the engine's ``docker info`` (asked when needed and not given).
    """
    homes = [q for q in (spawner.home_quota, *(spawner.home_quota_of(p) for p in profiles)) if q]
    layers = [q for q in (spawner.container_quota, *(spawner.container_quota_of(p) for p in profiles)) if q]
    if (homes or layers or spawner.homes_root) and not spawner.enforces_disk_quotas:
        return (
            f"{type(spawner).__name__} does not apply home_quota, container_quota or homes_root yet (its homes"
            " live on the nodes' engines): remove them from the config, or run the lab on one host with GPUSpawner"
        )
    if homes or spawner.homes_root:
        quotas = spawner.home_quotas()
        facts = quotas.facts() if quotas else HomesRootFacts("")
        refusal = home_quota_refusal(facts, max(homes) if homes else None)
        if refusal:
            return refusal
    if layers:
        if docker_info is None:
            try:
                docker_info = spawner.client.info()
            except Exception as e:  # noqa: BLE001 - Docker down as the hub starts: spawns say it then
                spawner.log.warning("gpuspawner: cannot ask Docker whether it can limit writable layers: %s", e)
                return ""
        return writable_layer_refusal(docker_info, max(layers))
    return ""


def _check_nvml(nvml=None) -> None:
    """``gpus = "nvml"`` says this host has GPUs: a driver that does not answer stops the hub."""
    try:
        discover(nvml)
    except Exception as e:  # noqa: BLE001 - NVMLUnavailable, or a GPU fallen off the bus
        raise ConfigInvalid(
            f'gpuspawner: c.GPUSpawner.gpus = "nvml", but NVML does not answer: {e}. Check that the NVIDIA'
            " driver is loaded (`nvidia-smi` works on the host), that the hub sees the GPUs and libnvidia-ml"
            " (in a container: the NVIDIA Container Toolkit, and the GPU reservation of deploy/hub/compose.yaml),"
            " and that nvidia-ml-py is installed; `gpuspawner doctor` checks all of these. Or set"
            ' c.GPUSpawner.gpus = "auto" to start without GPUs and take them once NVML answers.'
        ) from None


def _hub_unreachable(config: Config, spawner: GPUSpawner) -> str:
    """Why servers on their own network could not reach the hub's API, or ''."""
    if spawner.network_name == "host":
        return ""
    hub = config.JupyterHub
    if hub.get("hub_connect_ip") or hub.get("hub_connect_url") or hub.get("hub_bind_url"):
        return ""  # the admin's own routing
    ip = hub.get("hub_ip", "127.0.0.1")
    try:
        loopback = ip == "localhost" or ipaddress.ip_address(ip).is_loopback
    except ValueError:
        loopback = False  # a host name: the admin's
    if not loopback:
        return ""
    return (
        f"servers run on the network {spawner.network_name!r}, from which the hub's API on {ip} cannot"
        " be reached. Call gpuspawner.lab_network.add_lab_network(c) in the config (it sets"
        ' c.JupyterHub.hub_ip), or run servers on the host\'s network with c.GPUSpawner.network_name = "host"'
        " (no isolation: see docs/topic/security.md)."
    )


def tls_refusal(cert: str, key: str) -> str:
    """Why the hub could not serve HTTPS with ``c.JupyterHub.ssl_cert`` and ``ssl_key``, or ''.

    A certificate that is configured but cannot be used stops the hub: it must never
    fall back to plain HTTP. Both files must be readable here, and the key must be the
    certificate's (a chain of PEM certificates, the leaf first, as certbot's fullchain.pem).
    """
    if not cert and not key:
        return ""
    if not cert or not key:
        given, missing = ("ssl_cert", "ssl_key") if cert else ("ssl_key", "ssl_cert")
        return f"c.JupyterHub.{given} is set but c.JupyterHub.{missing} is not: HTTPS needs both"
    for name, path in (("certificate", cert), ("key", key)):
        unreadable = _unreadable(path)
        if unreadable:
            return f"the TLS {name} {path} {unreadable}; the hub will not serve plain HTTP instead"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        return (
            f"the TLS certificate {cert} and key {key} do not make a pair ({e.reason or e}): the key must be"
            " the certificate's, both PEM, the certificate first in its file"
        )
    return ""


def _unreadable(path: str) -> str:
    """How ``path`` fails to be a readable file, as the rest of a sentence; '' when it is one."""
    if os.path.islink(path) and not os.path.exists(path):
        return (
            f"is a symbolic link to {os.readlink(path)}, which does not exist here (in the hub's container only"
            " /etc/jupyterhub is mounted: copy the files there, with certbot's --deploy-hook, instead of linking)"
        )
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isfile(path):
        return "is not a file"
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return ""


def _spawner_class(config: Config) -> type[GPUSpawner]:
    """The hub's spawner class when it is a GPUSpawner (its config sections apply, and the state
    all its spawners share is made for it), else GPUSpawner."""
    value = config.JupyterHub.get("spawner_class")
    try:
        cls = JupyterHub.class_traits()["spawner_class"].validate(None, value) if value else GPUSpawner
    except (TraitError, ImportError):
        return GPUSpawner  # the hub itself says what is wrong with it
    return cls if isinstance(cls, type) and issubclass(cls, GPUSpawner) else GPUSpawner
