"""The hub's gpuspawner services in one call each, from ``jupyterhub_config.py``::

    from gpuspawner import services

    services.add_dashboard(c, __file__)  # the GPU dashboard, for c.Authenticator.admin_users
    services.add_culler(c, __file__)  # GPU-aware culling
    services.add_ssh_gateway(c, __file__, port=2222)  # ssh, scp, sftp into one's own server

Each call writes the hub-managed service (run with this Python, reading the hub's
own config with ``-f``, with the Docker variables of the hub's environment), the
custom scopes it checks, and the roles that grant exactly the scopes it needs.
Calling one twice changes nothing more; services, scopes and roles of other names
are left as they are, and a role of the same name keeps its other members.

Imports nothing beyond the standard library: a config file loads it cheaply.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

#: The Docker client's settings in the hub's environment, handed on to the services.
DOCKER_ENV = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")

DASHBOARD = "gpu-dashboard"
CULLER = "gpu-culler"
SSH_GATEWAY = "gpu-ssh"

#: The dashboard's custom scopes (as ``gpuspawner.dashboard.app`` checks them) and what they grant.
READ_SCOPE = "custom:gpu-dashboard:read"
READ_GROUPS_SCOPE = "custom:gpu-dashboard:read-groups"
STOP_SCOPE = "custom:gpu-dashboard:stop"
#: A student's own: their servers' GPUs and clocks ("My GPU") and their own usage records
#: (defined and granted to every user by add_dashboard).
MINE_SCOPE = "custom:gpu-dashboard:mine"
DASHBOARD_SCOPES = {
    READ_SCOPE: {"description": "See who holds which GPU on the GPU dashboard"},
    READ_GROUPS_SCOPE: {"description": "See the GPUs of your own groups' users"},
    STOP_SCOPE: {"description": "Stop servers from the GPU dashboard"},
    MINE_SCOPE: {"description": "See your own servers' GPUs and how long until the lab's rules stop them"},
}

#: What each service does with its own token, and no more. The dashboard lists the
#: users with their servers, activity and groups, stops servers, and lists the hub's
#: services for its Services menu; the culler is jupyterhub-idle-culler's least privilege,
#: and reads who is an admin (``read:users:name``: the name and the admin field) for budgets
#: that exempt admins.
DASHBOARD_SERVICE_SCOPES = [
    "list:users",
    "read:users:activity",
    "read:users:groups",
    "read:servers",
    "delete:servers",
    "list:services",
    "read:services",
]
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers", "read:users:name"]
#: gpuspawner's own templates of the hub's pages (its home page), for ``c.JupyterHub.template_paths``.
HUB_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "hub")

#: The SSH gateway reads a user's server, starts it when none runs, and reports an open
#: session as activity. Checking a password needs nothing: the user's own token asks
#: the hub who owns it. It cannot stop a server, read tokens or act as anyone.
SSH_GATEWAY_SCOPES = ["read:servers", "start:servers", "users:activity"]


def docker_environment() -> dict[str, str]:
    """The Docker variables set in this (the hub's) environment: a managed service gets no others."""
    return {name: os.environ[name] for name in DOCKER_ENV if name in os.environ}


def add_dashboard(
    c,
    config_file: str,
    *,
    url: str = "http://127.0.0.1:10101",
    admin_users: Iterable[str] | None = None,
    admin_groups: Iterable[str] = (),
    teacher_groups: Iterable[str] = (),
    args: Sequence[str] = (),
    name: str = DASHBOARD,
    home_page: bool = True,
) -> dict:
    """Run the GPU dashboard as a hub-managed service, in the hub's Services menu.

    ``config_file`` is the hub's config (``__file__`` in ``jupyterhub_config.py``),
    which the service reads with ``-f``. Admins (``admin_users``, by default
    ``c.Authenticator.admin_users`` as set so far, and the members of
    ``admin_groups``) see every GPU and may stop servers; the members of
    ``teacher_groups`` see the GPUs of their own groups' users. Every user may open
    "My GPU", their own servers' page (``custom:gpu-dashboard:mine``, added to the
    hub's ``user`` role). ``home_page``: the hub's home page says what each server
    holds and its rules, with a link to My GPU (gpuspawner's ``home.html``, through
    ``c.JupyterHub.template_paths``). ``args`` go to ``python -m gpuspawner.dashboard``
    (``--refresh=30``, ...). Returns the service.
    """
    if admin_users is None:
        admin_users = _configured(c.Authenticator, "admin_users", set())
    access = f"access:services!service={name}"
    service = {
        "name": name,
        "url": url,
        "command": [sys.executable, "-m", "gpuspawner.dashboard", "-f", os.path.abspath(config_file), *args],
        "environment": docker_environment(),
        "oauth_client_allowed_scopes": list(DASHBOARD_SCOPES),
        "oauth_no_confirm": True,
        "display": True,
    }
    roles = [
        # JupyterHub's own admin role cannot be changed: admins get the dashboard through this one.
        {
            "name": f"{name}-admins",
            "users": sorted(admin_users),
            "groups": sorted(admin_groups),
            "scopes": [READ_SCOPE, STOP_SCOPE, access],
        },
        {"name": f"{name}-service", "services": [name], "scopes": list(DASHBOARD_SERVICE_SCOPES)},
    ]
    if teacher_groups:
        roles.append(
            {"name": f"{name}-teachers", "groups": sorted(teacher_groups), "scopes": [READ_GROUPS_SCOPE, access]}
        )
    _add_service(c, service)
    _add_scopes(c, DASHBOARD_SCOPES)
    _add_roles(c, roles)
    _add_user_scopes(c, [MINE_SCOPE, access])
    c.GPUSpawner.my_gpu_page = f"services/{name}/mine"
    if home_page:
        _add_template_path(c, HUB_TEMPLATES)
    return service


def add_culler(
    c,
    config_file: str,
    *,
    cull_every: int = 60,
    args: Sequence[str] = (),
    name: str = CULLER,
) -> dict:
    """Run the GPU culler as a hub-managed service, with the five scopes it needs.

    ``config_file`` is the hub's config (``__file__``), which the culler reads with
    ``-f`` for the Docker settings and ``GPUSpawner.stops_file``; the rules are the
    profiles' (``gpu_idle_timeout``, ``max_runtime``, ``jupyter_activity_grace``).
    ``args`` go to ``python -m gpuspawner.culler`` (``--timeout=3600``, ...).
    Returns the service.
    """
    command = [sys.executable, "-m", "gpuspawner.culler", "-f", os.path.abspath(config_file)]
    service = {
        "name": name,
        "command": [*command, f"--cull-every={int(cull_every)}", *args],
        "environment": docker_environment(),
    }
    _add_service(c, service)
    _add_roles(c, [{"name": name, "services": [name], "scopes": list(CULLER_SCOPES)}])
    return service


def add_ssh_gateway(
    c,
    config_file: str,
    *,
    port: int = 2222,
    ip: str = "",
    url: str = "http://127.0.0.1:10102",
    admin_access: bool = False,
    args: Sequence[str] = (),
    name: str = SSH_GATEWAY,
) -> dict:
    """Run the SSH gateway as a hub-managed service: ``ssh -p PORT alice@host`` into one's own server.

    It listens for SSH on ``ip:port`` (``""``: every address of the host: open ``port`` in
    the firewall) and serves its keys page at ``/services/<name>/`` (from ``url``), in the
    hub's Services menu. Every user may open that page (``access:services!service=<name>``,
    added to the hub's ``user`` role). The service's token gets ``read:servers``,
    ``start:servers`` and ``users:activity``. ``admin_access``: a token whose scopes reach
    another user's server (an admin's) logs into it; off by default. ``args`` go to
    ``python -m gpuspawner.ssh`` (``--activity-interval=30``, ...). Returns the service.
    """
    command = [sys.executable, "-m", "gpuspawner.ssh", "-f", os.path.abspath(config_file)]
    command += [f"--port={int(port)}", f"--ip={ip}"]
    if admin_access:
        command.append("--admin-access")
    service = {
        "name": name,
        "url": url,
        "command": [*command, *args],
        "environment": docker_environment(),
        "oauth_no_confirm": True,
        "display": True,
    }
    _add_service(c, service)
    _add_roles(
        c,
        [
            {"name": f"{name}-service", "services": [name], "scopes": list(SSH_GATEWAY_SCOPES)},
        ],
    )
    _add_user_scopes(c, [f"access:services!service={name}"])  # every user may open the gateway's page
    return service


def runs_ssh_gateway(config) -> bool:
    """Whether a hub's config (a traitlets ``Config``) runs the SSH gateway among its services."""
    hub = config.get("JupyterHub", {}) if hasattr(config, "get") else {}
    listed = _configured(hub, "services", []) if "services" in hub else []
    return any("gpuspawner.ssh" in (s.get("command") or ()) for s in listed if isinstance(s, dict))


def add_node_culler(c, name: str, api_token: str) -> dict:
    """An external culler service of the hub: one GPU node's ``--node-local`` culler on a Swarm.

    The hub does not start it (it runs on its node, with ``api_token`` as its
    ``JUPYTERHUB_API_TOKEN``); it gets the same five scopes. Returns the service.
    """
    service = {"name": name, "api_token": api_token}
    _add_service(c, service)
    _add_roles(c, [{"name": name, "services": [name], "scopes": list(CULLER_SCOPES)}])
    return service


# --- merging into what the config already holds


def _configured(section, key: str, empty):
    """``section[key]`` as a plain value (a LazyConfigValue's result), ``empty`` when not set.

    Never reads ``section.key``: on a traitlets Config that would add the key.
    """
    if key not in section:
        return empty
    value = section[key]
    if hasattr(value, "get_value"):  # a LazyConfigValue: c.X.y.append(...) before y was set
        value = value.get_value(empty)
    return value


def _add_service(c, service: dict) -> None:
    """Add ``service``; one of the same name is updated in place (its other keys kept)."""
    services = list(_configured(c.JupyterHub, "services", []))
    for i, existing in enumerate(services):
        if existing.get("name") == service["name"]:
            environment = {**existing.get("environment", {}), **service.get("environment", {})}
            services[i] = {**existing, **service}
            if environment:
                services[i]["environment"] = environment
            break
    else:
        services.append(service)
    c.JupyterHub.services = services


def _add_scopes(c, scopes: dict) -> None:
    """Define ``scopes``, keeping an admin's own description of any already defined."""
    c.JupyterHub.custom_scopes = {**scopes, **_configured(c.JupyterHub, "custom_scopes", {})}


def _add_roles(c, roles: list[dict]) -> None:
    """Add ``roles``; a role of the same name gets their members and scopes added to its own."""
    current = list(_configured(c.JupyterHub, "load_roles", []))
    for role in roles:
        for i, existing in enumerate(current):
            if existing.get("name") == role["name"]:
                merged = dict(existing)
                for key in ("users", "groups", "services", "scopes"):
                    if key in role or key in existing:
                        merged[key] = _union(existing.get(key, ()), role.get(key, ()))
                current[i] = merged
                break
        else:
            current.append(dict(role))
    c.JupyterHub.load_roles = current


def _add_user_scopes(c, scopes: Sequence[str]) -> None:
    """Grant ``scopes`` to every user, keeping the default ``user`` role's own (``self``).

    JupyterHub 6's way is ``c.JupyterHub.extra_user_scopes``. A config that redefines the
    ``user`` role with scopes of its own makes the hub ignore that setting: then the scopes
    go into that role too."""
    extra = _configured(c.JupyterHub, "extra_user_scopes", set())
    c.JupyterHub.extra_user_scopes = set(extra) | set(scopes)
    roles = list(_configured(c.JupyterHub, "load_roles", []))
    if any(r.get("name") == "user" and "scopes" in r for r in roles):
        _add_roles(c, [{"name": "user", "scopes": list(scopes)}])


def _add_template_path(c, path: str) -> None:
    """Let the hub find ``path``'s templates, after the admin's own (theirs win where both have one)."""
    paths = list(_configured(c.JupyterHub, "template_paths", []))
    if path not in paths:
        c.JupyterHub.template_paths = [*paths, path]


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """Both lists' items, each once, in order."""
    return list(dict.fromkeys([*first, *second]))


__all__ = [
    "CULLER",
    "CULLER_SCOPES",
    "DASHBOARD",
    "DASHBOARD_SCOPES",
    "DASHBOARD_SERVICE_SCOPES",
    "DOCKER_ENV",
    "HUB_TEMPLATES",
    "MINE_SCOPE",
    "READ_GROUPS_SCOPE",
    "READ_SCOPE",
    "STOP_SCOPE",
    "SSH_GATEWAY",
    "SSH_GATEWAY_SCOPES",
    "add_culler",
    "add_dashboard",
    "add_node_culler",
    "add_ssh_gateway",
    "runs_ssh_gateway",
    "docker_environment",
]
