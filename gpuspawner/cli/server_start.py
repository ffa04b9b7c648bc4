"""The image's server, started once as the hub would start it: does it answer?

Reading an image says what is in it; only starting it shows that the hub's
start works. ``start_plan`` takes from the hub's own spawner (built from its
config) what a spawn takes: the command as DockerSpawner resolves it
(``c.Spawner.cmd``, else the image's ``CMD``; the image's ``ENTRYPOINT`` either
way; then ``c.Spawner.args``), the image's user, JupyterHub's environment
(``Spawner.get_env`` itself, for a stand-in user), and ``container.describe``'s
limits, hardening and a fresh home volume at the image's home (the user of
``extra_create_kwargs``, when the admin sets one there). ``start_server``
runs it with no network and no GPU; a small helper exec'd in the container
stands in for the hub's API on the container's own loopback (the server asks
it for the hub's version before it listens) and waits for the server to answer
HTTP on its port, as the hub does. The container and its volume are removed
whatever happens. ``start_finding`` (pure) judges what came of it.

What a spawn adds that a check on another host cannot know is left out: the
profile's datasets and shares (``doctor`` checks those), the admin's volumes,
``extra_host_config`` and the rest of ``extra_create_kwargs``, disk quotas,
hooks (``pre_spawn_hook``, ``auth_state_hook``), and the
server's labels (a labelled container would count as a student's server).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import docker
import docker.errors
import jupyterhub
import requests

from ..config import HubConfig
from ..container import ImageFacts as ServerImage
from ..container import Limits, ServerContainer, describe
from ..profiles import Profile
from ..startup import Exited, last_lines
from .findings import FAIL, OK, Finding
from .probe import CLI_LABEL

#: The hub user a checked server is started for (its URLs and ``JUPYTERHUB_USER``).
CHECK_USER = "image-check"
#: Where the stand-in for the hub's API listens, on the container's own loopback.
STAND_IN_HUB_PORT = 8081
#: The command ``image build`` gives an image whose base has no Jupyter one.
JUPYTER_COMMAND = ("jupyterhub-singleuser",)
#: On the started server's container and home volume: the image checked.
CHECKED_IMAGE_LABEL = "gpuspawner.cli.image"
#: The lines of the server's log a failed start shows.
LOG_LINES = 12

# Exec'd in the server's container with the image's Python (stdlib only): answers the hub's API on
# loopback (the server's start-up asks for the hub's version, and later posts its activity), and asks
# the server's URL until it answers HTTP, as the hub does. Output: key=value lines, one "waiting" a beat
# (so a long wait never looks like a dead connection to the Docker client).
HELPER_PY = r"""
import http.server, sys, threading, time, urllib.error, urllib.request
hub_port, port, path, version, budget = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
class Hub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = b"{}"
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", version)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", hub_port), Hub)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("hub=ready", flush=True)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
start, last = time.time(), ""
while time.time() - start < budget:
    try:
        status = opener.open("http://127.0.0.1:%d%s" % (port, path), timeout=2).status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception as e:
        status, last = 0, "%s: %s" % (type(e).__name__, e)
    if status:
        print("answered=%d" % status, flush=True)
        sys.exit(0)
    print("waiting=%.1f" % (time.time() - start), flush=True)
    time.sleep(0.25)
print("silent=" + last, flush=True)
"""


# --- the command the hub runs (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class ServerCommand:
    """What a server of the image runs, as DockerSpawner decides it."""

    entrypoint: tuple[str, ...]  # the image's ENTRYPOINT: DockerSpawner never replaces it
    command: tuple[str, ...]  # c.Spawner.cmd, else the image's CMD; then c.Spawner.args
    source: str  # where the command comes from, for people: "the image's CMD", "c.Spawner.cmd"

    @property
    def argv(self) -> tuple[str, ...]:
        return self.entrypoint + self.command

    @property
    def missing(self) -> bool:
        """No CMD and no c.Spawner.cmd: DockerSpawner fails to build the command (an error 500 on the hub)."""
        return self.source == ""

    @property
    def looks_like_jupyter(self) -> bool:
        return any(word in part for part in self.argv for word in ("jupyter", "singleuser", "start-"))

    def describe(self) -> str:
        if self.missing:
            return "none: the image has no CMD and c.Spawner.cmd is not set"
        shown = " ".join(self.argv)
        if self.entrypoint:
            return f"{shown} (the image's ENTRYPOINT, then {self.source})"
        return f"{shown} ({self.source})"


def server_command(
    image_config: Mapping, cmd: tuple[str, ...] | list[str] | None = (), args: tuple[str, ...] | list[str] = ()
) -> ServerCommand:
    """The command of a server of an image whose ``inspect_image()["Config"]`` is ``image_config``.

    As ``DockerSpawner.get_command``: ``c.Spawner.cmd`` when set, else the image's
    ``Cmd``; then ``c.Spawner.args``. The image's ``Entrypoint`` runs it.
    """
    entrypoint = tuple(image_config.get("Entrypoint") or ())
    if cmd:
        return ServerCommand(entrypoint, (*cmd, *args), "c.Spawner.cmd")
    image_cmd = image_config.get("Cmd")
    if image_cmd is None:  # DockerSpawner adds the args to None: the spawn fails
        return ServerCommand(entrypoint, tuple(args), "")
    return ServerCommand(entrypoint, (*image_cmd, *args), "the image's CMD")


# --- how the hub would start it ---------------------------------------------------------------


@dataclass(frozen=True)
class StandInUser:
    """The hub user ``Spawner.get_env`` reads: a name and its URL."""

    name: str = CHECK_USER
    groups: tuple = ()
    admin: bool = False

    @property
    def escaped_name(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return f"/user/{self.name}/"


@dataclass(frozen=True)
class StandInHub:
    """The hub ``Spawner.get_env`` reads: its API, on the server's own loopback."""

    port: int = STAND_IN_HUB_PORT
    base_url: str = "/hub/"
    public_host: str = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"


@dataclass(frozen=True)
class StartPlan:
    """How the hub would start a server of one image, and how long it would wait for it."""

    image: str
    command: ServerCommand
    container: ServerContainer  # environment, home volume, limits, hardening (container.describe)
    port: int  # where the server listens in its container
    prefix: str  # the server's URL path (JUPYTERHUB_SERVICE_PREFIX)
    timeout: float  # the hub's c.Spawner.http_timeout: how long it waits for the server to answer
    hub_port: int = STAND_IN_HUB_PORT
    home: str = ""  # where the home volume goes ('' when the hub mounts none)
    profile: str = ""  # the profile whose settings it starts with; '' for the hub's defaults
    environment_error: str = ""  # the hub's environment could not be computed (a callable raised)
    user: str = ""  # the container's user when the admin's extra_create_kwargs sets one; '' the image's


def start_plan(hub: HubConfig, image: str, inspect: dict, profile: Profile | None = None) -> StartPlan:
    """How the hub of ``hub``'s config would start ``image`` (for ``profile``, else with its defaults)."""
    spawner = hub.spawner
    chosen = profile or Profile(slug=CHECK_USER, display_name="image check", image=image)
    # Without datasets and shares: their folders are the hub host's (doctor checks them), and a bind
    # of a path that does not exist here would make Docker create it.
    chosen = replace(chosen, datasets=(), shares=())
    port = int(spawner.port)
    hub_port = STAND_IN_HUB_PORT if port != STAND_IN_HUB_PORT else STAND_IN_HUB_PORT + 1
    # A spawner of the hub's class and config, for a stand-in user: JupyterHub's own get_env.
    stand_in = type(spawner)(
        config=spawner.config,
        log=spawner.log,
        user=StandInUser(),
        hub=StandInHub(hub_port),
        api_token=secrets.token_hex(16),
        oauth_client_id=f"jupyterhub-user-{CHECK_USER}",
        hub_connect_url=None,  # the hub's API is the stand-in's, on loopback
        image=image,
    )
    settings = stand_in.hub_settings()
    home_volume = f"gpuspawner-check-home-{secrets.token_hex(6)}" if settings.home_volume else ""
    settings = replace(settings, home_volume=home_volume, volumes=MappingProxyType({}))
    facts = ServerImage.of(inspect, image, spawner.home_path)
    limits = Limits.of(chosen, settings.limits)
    stand_in.mem_limit, stand_in.cpu_limit = limits.mem_limit, limits.cpu_limit  # MEM_LIMIT, CPU_LIMIT
    ip = "127.0.0.1" if spawner.network_name == "host" else (spawner.ip or "0.0.0.0")
    prefix = StandInUser().url
    environment_error = ""
    try:
        environment = stand_in.get_env()
    except Exception as e:  # noqa: BLE001 - an admin's Spawner.environment callable may raise anything
        environment, environment_error = {}, f"{type(e).__name__}: {e}"
    # No server record for the stand-in user: JupyterHub would put its URL in these two.
    environment["JUPYTERHUB_SERVICE_PREFIX"] = prefix
    environment["JUPYTERHUB_SERVICE_URL"] = f"http://{ip}:{port}{prefix}"
    extra = spawner.extra_create_kwargs
    user = str(extra.get("user") or "") if isinstance(extra, Mapping) else ""  # a callable: not known here
    return StartPlan(
        image=image,
        command=server_command(inspect.get("Config") or {}, spawner.cmd, spawner.args),
        container=describe(chosen, settings, user=CHECK_USER, image=facts, base_environment=environment),
        port=port,
        prefix=prefix,
        timeout=float(spawner.http_timeout),
        hub_port=hub_port,
        home=facts.home if home_volume else "",
        profile=profile.slug if profile else "",
        environment_error=environment_error,
        user=user,
    )


# --- what came of it (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class StartResult:
    """What happened when the server was started."""

    answered: int = 0  # the HTTP status of the server's first answer; 0: it never answered
    seconds: float = 0.0  # from the container's start to the answer (or to the end of the wait)
    exited: Exited | None = None  # the container stopped before it answered
    refused: str = ""  # the engine could not create or start it: its message
    helper_error: str = ""  # the check's own helper could not run in the container
    log: tuple[str, ...] = field(default=(), compare=False)  # the server's last log lines


def start_finding(plan: StartPlan, result: StartResult) -> Finding:
    """The ``start`` line of the report: did the server answer as it would on the hub, and if not, why."""
    how = "no network, no GPU"
    if plan.home:
        how = f"a new home volume at {plan.home}, " + how
    as_for = f" with profile {plan.profile}'s settings" if plan.profile else ""
    if result.answered:
        return Finding(
            OK,
            "start",
            f"the server answered on port {plan.port} after {result.seconds:.1f} s, started as the hub"
            f" starts it{as_for} ({how})",
        )
    fix = "fix what the server's log below says, and check the image again"
    if not plan.command.looks_like_jupyter:
        fix = f'CMD ["{JUPYTER_COMMAND[0]}"] in the Dockerfile (or set c.Spawner.cmd)'
    if result.refused:
        return Finding(
            FAIL,
            "start",
            f"the engine could not start {plan.command.describe()}: {result.refused}",
            f'the command must be a program on the image\'s PATH: CMD ["{JUPYTER_COMMAND[0]}"] in the Dockerfile'
            " (or set c.Spawner.cmd)",
        )
    if result.helper_error:
        return Finding(
            FAIL,
            "start",
            f"the server started, but the check could not watch it: {result.helper_error}",
            "the image needs a Python 3 with its standard library (the one that runs jupyterhub-singleuser)",
        )
    if result.exited is not None:
        status = f"exited with status {result.exited.status}"
        if result.exited.oom_killed:
            status += " (out of memory: more than the server's mem_limit)"
        elif result.exited.error:
            status += f" ({result.exited.error})"
        said = "" if result.log else ", and wrote nothing to its log"
        return Finding(
            FAIL,
            "start",
            f"{plan.command.describe()} {status}, {result.seconds:.1f} s after it started, without answering{said}:"
            " students' spawns on the hub would fail the same way",
            fix,
        )
    return Finding(
        FAIL,
        "start",
        f"{plan.command.describe()} did not answer on port {plan.port} within {plan.timeout:g} s"
        " (the hub's c.Spawner.http_timeout): students' spawns on the hub would time out the same way",
        fix,
    )


# --- the engine -------------------------------------------------------------------------------


def host_config_of(client: docker.APIClient, container: ServerContainer) -> dict:
    """The host config of a checked server: its home volume, limits and hardening, no network, no GPU."""
    limits = container.limits
    return client.create_host_config(
        network_mode="none",
        binds=[m.bind for m in container.mounts] or None,
        mem_limit=limits.mem_limit,
        cpu_period=100_000 if limits.cpu_limit else None,  # as DockerSpawner turns cpu_limit into a quota
        cpu_quota=int(limits.cpu_limit * 100_000) if limits.cpu_limit else None,
        shm_size=limits.shm_size,
        security_opt=["no-new-privileges"] if container.no_new_privileges else None,
        cap_drop=list(container.cap_drop) or None,
        pids_limit=container.pids_limit or None,
    )


def start_server(client: docker.APIClient, plan: StartPlan, python: str) -> StartResult:
    """Start the server as ``plan`` says and wait until it answers, exits, or the hub would give up.

    ``python``: the image's interpreter, for the helper that stands in for the hub. The
    container and its home volume are removed whatever happens.
    """
    labels = {CLI_LABEL: "image-check-start", CHECKED_IMAGE_LABEL: plan.image}
    volumes = [m.source for m in plan.container.mounts if m.target == plan.home and plan.home]
    for volume in volumes:
        client.create_volume(volume, labels=labels)
    cid = ""
    try:
        try:
            cid = client.create_container(
                plan.image,
                command=list(plan.command.command),
                user=plan.user or None,
                environment=dict(plan.container.environment),
                labels=labels,
                host_config=host_config_of(client, plan.container),
            )["Id"]
            client.start(cid)
        except docker.errors.APIError as e:
            return StartResult(refused=str(e.explanation or e))
        began = time.monotonic()
        answered, helper_error, waited_out = _watch(client, cid, plan, python)
        seconds = time.monotonic() - began
        if answered:
            return StartResult(answered=answered, seconds=seconds)
        if not waited_out:
            # The helper ended with the container (its processes go with it), or could not run because
            # the container was already stopping: let it stop, and tell its exit rather than the helper's.
            try:
                client.wait(cid, timeout=3 if helper_error else 10)
            except (docker.errors.APIError, requests.exceptions.RequestException):
                pass
        exited = Exited.of(client.inspect_container(cid).get("State") or {})
        log = tuple(last_lines(client.logs(cid, stdout=True, stderr=True, tail=LOG_LINES * 4), LOG_LINES))
        if exited is None and helper_error:
            return StartResult(seconds=seconds, helper_error=helper_error, log=log)
        return StartResult(seconds=seconds, exited=exited, log=log)
    finally:
        if cid:
            try:
                client.remove_container(cid, force=True, v=True)
            except docker.errors.APIError:
                pass
        for volume in volumes:
            try:
                client.remove_volume(volume, force=True)
            except docker.errors.APIError:
                pass


def _watch(client: docker.APIClient, cid: str, plan: StartPlan, python: str) -> tuple[int, str, bool]:
    """(the HTTP status the server answered with, 0 if none; what kept the helper from running, '' if
    nothing; whether the helper waited the whole time).

    The helper's exec ends when the server answers, when the wait is over, or when the
    container stops (its processes go with it).
    """
    command = [python, "-c", HELPER_PY, str(plan.hub_port), str(plan.port), f"{plan.prefix}api"]
    command += [jupyterhub.__version__, str(plan.timeout)]
    try:
        exec_id = client.exec_create(cid, command, stdout=True, stderr=True)["Id"]
        text = b"".join(client.exec_start(exec_id, stream=True)).decode(errors="replace")
    except docker.errors.APIError as e:  # the container stopped before the helper could start
        return 0, str(e.explanation or e), False
    except requests.exceptions.RequestException as e:
        return 0, f"the engine stopped answering: {e}", False
    values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    if values.get("answered", "").isdigit():
        return int(values["answered"]), "", False
    if "hub" in values:
        return 0, "", "silent" in values
    shown = last_lines(text, 3)
    return 0, f"{python} -c <helper> said: {' '.join(shown) or 'nothing'}", False


__all__ = [
    "CHECKED_IMAGE_LABEL",
    "CHECK_USER",
    "JUPYTER_COMMAND",
    "ServerCommand",
    "StartPlan",
    "StartResult",
    "server_command",
    "start_finding",
    "start_plan",
    "start_server",
]
