"""A real jupyterhub process, with the real configurable-http-proxy, on the test bed's engine.

The test bed (``deploy/testbed/testbed.sh up image``) runs an isolated Docker
engine and builds the single-user image; this module starts hubs against it and
drives them through the REST API with a service token, as an admin script would,
and runs the ``gpuspawner`` command against it, as an admin does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests

from gpuspawner.lab_network import INTERNET_SUFFIX, LabNetwork, lab_network, remove_networks, remove_rules
from gpuspawner.lab_network import LABEL as LAB_LABEL
from gpuspawner.lab_network import settings as lab_settings

TESTBED = Path(os.environ.get("GPUSPAWNER_TESTBED", "/var/lib/gpuspawner-testbed"))
REPO = Path(__file__).resolve().parent.parent


class MissingTestbed(RuntimeError):
    pass


def read_testbed(name: str) -> str:
    path = TESTBED / name
    if not path.exists():
        raise MissingTestbed(f"{path} is missing: run `bash deploy/testbed/testbed.sh all` first (tests/run.sh does)")
    return path.read_text().strip()


def docker_host() -> str:
    sock = TESTBED / "docker.sock"
    if not sock.exists():
        raise MissingTestbed(f"no test engine at {sock}: run `bash deploy/testbed/testbed.sh up`")
    return f"unix://{sock}"


def engine() -> docker.DockerClient:
    return docker.DockerClient(base_url=docker_host(), version="auto")


#: The label every container of the end-to-end hubs carries (set through
#: DockerSpawner's own extra_create_kwargs): "<run>:<pid of the pytest process>",
#: so clean-up touches only this run's containers, or those of runs that died.
E2E_LABEL = "gpuspawner-e2e"
E2E_CONFIG = """
c.GPUSpawner.extra_create_kwargs = {{"labels": {{{label!r}: {value!r}}}}}
c.GPUSpawner.pull_policy = "never"  # the test engine has no registry
c.Spawner.poll_interval = 2  # notice crashed servers quickly
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_leftover(value: str, mine: str | None) -> bool:
    pid = value.rpartition(":")[2]
    return value == mine or (mine is None and not (pid.isdigit() and _pid_alive(int(pid))))


def remove_leftovers(mine: str | None = None) -> list[str]:
    """Remove end-to-end containers: this run's (``mine``), else those of runs whose pytest died."""
    removed = []
    for c in engine().containers.list(all=True, filters={"label": E2E_LABEL}):
        if _is_leftover(c.labels.get(E2E_LABEL, ""), mine):
            c.remove(force=True)
            removed.append(c.name)
    return removed


def e2e_lab(value: str, hub_port: int) -> LabNetwork:
    """A lab network of one test hub: two free /24s (10.214.K and 10.215.K) on the bridges gseKa and gseKb.

    Each hub has its own, as two labs on one host would: its rules name its own hub port.
    """
    used = {
        config.get("Subnet")
        for network in engine().networks.list()
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []
    }
    start = os.getpid() % 200  # two test runs at once start apart
    for k in [2 + (start + i) % 240 for i in range(240)]:
        if f"10.214.{k}.0/24" not in used and f"10.215.{k}.0/24" not in used:
            return lab_network(
                name=f"gpuspawner-e2e-{k}",
                subnet=f"10.214.{k}.0/24",
                internet_subnet=f"10.215.{k}.0/24",
                interface=f"gse{k}a",
                internet_interface=f"gse{k}b",
                hub_port=hub_port,
                labels={E2E_LABEL: value},
            )
    raise RuntimeError("no free 10.214.K.0/24 for a test lab network")


def remove_lab(lab: LabNetwork) -> None:
    """Take a test lab's rules and networks away (a real lab keeps them while servers may run)."""
    remove_rules(lab)
    remove_networks(engine().api, lab)


def remove_leftover_labs() -> None:
    """The lab networks (and their rules) of test runs whose pytest died."""
    for network in engine().networks.list(filters={"label": E2E_LABEL}):
        labels = network.attrs.get("Labels") or {}
        name = labels.get(LAB_LABEL, "")
        if name == network.name and _is_leftover(labels.get(E2E_LABEL, ""), None):
            internet = engine().networks.get(name + INTERNET_SUFFIX)

            def of(n):
                return (n.attrs["IPAM"]["Config"][0]["Subnet"], n.attrs["Options"]["com.docker.network.bridge.name"])

            (subnet, interface), (internet_subnet, internet_interface) = of(network), of(internet)
            remove_lab(lab_network(name, subnet, internet_subnet, interface, internet_interface))


def home_volume(container) -> str:
    (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == "/home/jovyan"]
    assert mount["Type"] == "volume" and mount["RW"]
    return mount["Name"]


def simulated_gpus(uuids, name: str = "NVIDIA A100-SXM4-80GB", memory: str = "80G") -> list[dict]:
    """``c.GPUSpawner.gpus`` entries of whole GPUs, indexed 0, 1, ... (the engine's hook accepts any uuid)."""
    return [{"index": i, "uuid": uuid, "name": name, "memory": memory} for i, uuid in enumerate(uuids)]


def mig_instances(uuids, *, index: int, parent_uuid: str) -> list[dict]:
    """``c.GPUSpawner.gpus`` entries of 1g.10gb MIG instances 0, 1, ... of the A100 at ``index``."""
    return [
        {
            "index": index,
            "uuid": uuid,
            "name": "NVIDIA A100-SXM4-80GB",
            "memory": "10G",
            "mig_profile": "1g.10gb",
            "parent_uuid": parent_uuid,
            "mig_index": i,
        }
        for i, uuid in enumerate(uuids)
    ]


@contextlib.contextmanager
def running_hub(workdir: Path, config: str, run: str, lab: bool = True, sigint_ignored: bool = False):
    """A started RealHub; afterwards every server is stopped through the hub, and
    the run's containers and home volumes (names ending in ``run``, and their archives) are removed.

    ``lab``: servers on a lab network of this hub's own (``e2e_lab``), as by default;
    else the config says where they run (``c.GPUSpawner.network_name = "host"``).
    ``sigint_ignored``: started as a script's background job is (``RealHub.sigint_ignored``).
    """
    require_tools()
    remove_leftovers()  # of an earlier run that was killed before its clean-up
    remove_leftover_labs()
    mine = f"{run}:{os.getpid()}"
    hub = RealHub(
        workdir, E2E_CONFIG.format(label=E2E_LABEL, value=mine) + textwrap.dedent(config), sigint_ignored=sigint_ignored
    )
    lab = hub.lab = e2e_lab(mine, hub.hub_port) if lab else None
    try:
        with started(hub):
            yield hub
    finally:
        left = remove_leftovers(mine)
        for volume in engine().volumes.list():
            # the homes, and the archives of those whose users a test deleted (deleted_user_home)
            if volume.name.startswith("jupyterhub-user-") and (
                volume.name.endswith(run) or f"{run}-archived-" in volume.name
            ):
                volume.remove()
        if lab is not None:
            remove_lab(lab)
        assert not left, f"servers left running after the hub stopped them: {left}"


@contextlib.contextmanager
def started(hub: RealHub):
    """``hub`` started; afterwards every server is stopped through the hub, then the hub."""
    hub.start()
    try:
        yield hub
    finally:
        try:
            if hub.proc:
                hub.stop_all_servers()
        finally:
            hub.stop()


def wait_for(condition, timeout: float, what: str, *, every: float = 0.3, details=lambda: ""):
    """Poll ``condition()`` until it returns something true, and return that.

    Fails after ``timeout`` seconds, saying what did not happen and ``details()``
    (a log's tail). ``condition`` may raise to stop the wait early (a process died).
    The sleep between looks is the polling interval, never what the test waits on.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{details()}")
        time.sleep(every)


def debian_binary(path: str, package: str) -> str:
    """``path``, of Debian's ``package``: installed with apt when missing (as ``testbed.sh install`` does)."""
    if not os.path.exists(path) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
        subprocess.run([*apt, "update", "-q"], env=env, check=False, capture_output=True)
        subprocess.run([*apt, "install", "-y", "-q", package], env=env, check=False, capture_output=True)
    if not os.path.exists(path):
        raise MissingTestbed(f"{path} is missing: run `bash deploy/testbed/testbed.sh install`")
    return path


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """End a process this test started: SIGTERM, then SIGKILL after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def service_pids(hub_pid: int) -> dict[str, int]:
    """``{"dashboard": pid, "culler": pid, "ssh": pid}`` of the hub's running gpuspawner services, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for name in ("dashboard", "culler", "ssh"):
            if ppid == hub_pid and f"gpuspawner.{name}".encode() in argv and running(int(entry.name)):
                found[name] = int(entry.name)
    return found


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has exited: whoever inherits it reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid1_environ(container) -> dict[str, str]:
    """The environment of PID 1: where the GPU hook's NVIDIA_VISIBLE_DEVICES lands."""
    out = container.exec_run(["cat", "/proc/1/environ"]).output.decode()
    env: dict[str, str] = {}
    for entry in filter(None, out.split("\0")):
        key, _, value = entry.partition("=")
        env[key] = value  # the last of duplicates wins, as getenv sees it
    return env


@dataclass
class RealHub:
    """One jupyterhub process and its state directory."""

    workdir: Path
    config: str
    hub_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None
    lab: LabNetwork | None = None  # its servers' network (add_lab_network), made as the hub starts
    # Started as a non-interactive shell's background job (`hub &` in a script) is: with SIGINT ignored,
    # which the hub's children then inherit.
    sigint_ignored: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"

    def write_config(self) -> Path:
        path = self.workdir / "jupyterhub_config.py"
        path.write_text(
            textwrap.dedent(
                f"""
                c = get_config()  # noqa
                c.JupyterHub.ip = "127.0.0.1"
                c.JupyterHub.port = {self.proxy_port}
                c.JupyterHub.hub_ip = "127.0.0.1"
                c.JupyterHub.hub_port = {self.hub_port}
                c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
                c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
                c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
                c.ConfigurableHTTPProxy.pid_file = "{self.workdir}/proxy.pid"
                c.JupyterHub.authenticator_class = "dummy"
                c.Authenticator.allow_all = True
                c.JupyterHub.cleanup_servers = False
                c.JupyterHub.services = [{{"name": "e2e", "api_token": "{self.token}"}}]
                c.JupyterHub.load_roles = [
                    {{
                        "name": "e2e",
                        "scopes": ["admin:users", "admin:servers", "admin:server_state", "access:servers"],
                        "services": ["e2e"],
                    }}
                ]
                c.JupyterHub.spawner_class = "gpu"
                c.Spawner.http_timeout = 90
                c.Spawner.start_timeout = 120
                """
            )
            + (self.lab_config() if self.lab else "")
            + textwrap.dedent(self.config)
        )
        return path

    def lab_config(self) -> str:
        settings = lab_settings(self.lab)
        del settings["hub_port"]  # the hub's, set above
        return f"from gpuspawner.lab_network import add_lab_network\nadd_lab_network(c, **{settings!r})\n"

    def start(self, timeout: float = 60, engine_at: str = "") -> None:
        """Start the hub and wait until it answers; ``engine_at``: its DOCKER_HOST (default: the test bed's)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        env = {**os.environ, "DOCKER_HOST": engine_at or docker_host()}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        self.log = open(self.workdir / "jupyterhub.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if self.sigint_ignored else None,
        )

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return requests.get(f"{self.api}/", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(answers, timeout, "jupyterhub answers", details=self.log_tail)

    def stop(self) -> None:
        """Stop the hub (and the proxy it started); single-user servers keep running."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        """The hub's whole log so far (every start of this hub appends to it)."""
        path = self.workdir / "jupyterhub.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def refused_before_start(self, user: str, server: str = "") -> None:
        """Assert the hub's spawn of ``user``'s server failed with the spawner's own refusal
        (a SpawnException) and never waited out ``start_timeout``, and left no container."""
        log = self.log_text()
        name = f"{user}'s server {server}"  # as JupyterHub writes it ("alice's server :" for the default one)
        assert f"Not starting {name}:" in log, f"no refusal of {name} in the hub's log:\n{self.log_tail()}"
        assert f"{user}'s server failed to start in" not in log, self.log_tail()
        containers = engine().containers.list(all=True, filters={"label": f"gpuspawner.user={user}"})
        assert not [c for c in containers if c.labels.get("gpuspawner.server", "") == server], containers

    def log_tail(self, lines: int = 60) -> str:
        path = self.workdir / "jupyterhub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --- REST, as an admin script would use it

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return requests.request(method, f"{self.api}{path}", headers=headers, **kwargs)

    def login(self, name: str) -> requests.Session:
        """A browser-like session of ``name``, logged in through the login form."""
        session = requests.Session()
        session.get(f"{self.url}/hub/login", timeout=30)
        r = session.post(
            f"{self.url}/hub/login?next=",
            data={"username": name, "password": "x", "_xsrf": session.cookies.get("_xsrf")},
            timeout=30,
        )
        assert r.ok, r.text
        return session

    def ensure_user(self, name: str) -> None:
        r = self.request("POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text

    def start_server(self, user: str, profile: str | None = None, server: str = "") -> requests.Response:
        """Request a spawn; returns the REST response (201 started, 202 pending, 4xx/5xx refused)."""
        self.ensure_user(user)
        body = {"user_options": {"profile": profile}} if profile else {}
        return self.request("POST", f"/users/{user}/servers/{server}", data=json.dumps(body))

    def start_servers(self, *starts: tuple) -> list[requests.Response]:
        """Request several spawns at once, each ``(user, profile[, server])``; their REST responses, in order.

        JupyterHub answers a spawn request when the spawn ends (or with 202 after its
        ``slow_spawn_timeout``, 10 s): requests made one after the other start servers one after the other.
        """
        with concurrent.futures.ThreadPoolExecutor(len(starts)) as pool:
            return list(pool.map(lambda start: self.start_server(*start), starts))

    def spawn_all(self, *starts: tuple) -> list[dict]:
        """``spawn`` of several servers at once, each ``(user, profile[, server])``; their models, in order."""
        for start, r in zip(starts, self.start_servers(*starts), strict=True):
            assert r.status_code in (201, 202), f"{start}: {r.status_code} {r.text}\n{self.log_tail()}"
        return [self.wait_ready(start[0], *start[2:]) for start in starts]

    def server_model(self, user: str, server: str = "") -> dict | None:
        r = self.request("GET", f"/users/{user}")
        r.raise_for_status()
        return r.json().get("servers", {}).get(server)

    def progress_events(self, user: str, server: str = "") -> list[dict]:
        """The spawn's progress events (``/progress``, what the spawn page shows), up to its end."""
        r = self.request("GET", f"/users/{user}/servers/{server}/progress", stream=True)
        r.raise_for_status()
        lines = r.iter_lines(decode_unicode=True)
        return [json.loads(line[len("data:") :]) for line in lines if line.startswith("data:")]

    def wait_ready(self, user: str, server: str = "", timeout: float = 120) -> dict:
        def ready() -> dict | None:
            model = self.server_model(user, server)
            if model is None:
                raise AssertionError(f"server {user}/{server} is gone:\n{self.log_tail()}")
            return model if model.get("ready") else None

        return wait_for(ready, timeout, f"server {user}/{server} ready", every=0.5, details=self.log_tail)

    def spawn(self, user: str, profile: str | None = None, server: str = "") -> dict:
        r = self.start_server(user, profile, server)
        assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{self.log_tail()}"
        return self.wait_ready(user, server)

    def stop_server(self, user: str, server: str = "", timeout: float = 60) -> None:
        r = self.request("DELETE", f"/users/{user}/servers/{server}")
        assert r.status_code in (202, 204), r.text
        self.wait_gone(user, server, timeout)

    def wait_gone(self, user: str, server: str = "", timeout: float = 60) -> None:
        """Until the hub no longer lists the server (stopped by anyone: a test, the culler, a crash)."""
        wait_for(
            lambda: self.server_model(user, server) is None,
            timeout,
            f"server {user}/{server} stopped",
            details=self.log_tail,
        )

    def stop_servers(self, *stops: tuple, gone_already: bool = False) -> None:
        """``stop_server`` of several servers at once, each ``(user[, server])``: all asked, then each waited for.

        JupyterHub answers a stop request when the stop ends (or after ``slow_stop_timeout``): the requests
        go from threads, else each server would stop only after the one before. ``gone_already``: a server
        stopped meanwhile (404: a culler, a crash) is no error.
        """
        if not stops:
            return

        def ask(stop: tuple) -> requests.Response:
            user, server = (*stop, "")[:2]
            return self.request("DELETE", f"/users/{user}/servers/{server}")

        with concurrent.futures.ThreadPoolExecutor(len(stops)) as pool:
            answers = list(pool.map(ask, stops))
        for stop, r in zip(stops, answers, strict=True):
            assert r.status_code in (202, 204) or (gone_already and r.status_code == 404), f"{stop}: {r.text}"
        for stop in stops:
            self.wait_gone(*stop)

    def stop_all_servers(self) -> None:
        """Every server stopped through the hub: all asked at once, then each waited for."""
        servers = [(m["name"], server) for m in self.request("GET", "/users").json() for server in m.get("servers", {})]
        self.stop_servers(*servers, gone_already=True)

    def visible_devices(self, user: str, server: str = "") -> str:
        """NVIDIA_VISIBLE_DEVICES as the server's PID 1 sees it."""
        return pid1_environ(self.container(user, server))["NVIDIA_VISIBLE_DEVICES"]

    def kill(self) -> None:
        """SIGKILL the hub alone, as a crash would: its proxy and servers keep running."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def container(self, user: str, server: str = ""):
        """The running container of one server, found by gpuspawner's labels."""
        found = engine().containers.list(filters={"label": [f"gpuspawner.user={user}", f"gpuspawner.server={server}"]})
        assert len(found) == 1, f"expected one container for {user}/{server}, found {len(found)}"
        return found[0]


# --- the ``gpuspawner`` command, as an admin runs it in the hub's folder


def write_command_config(folder: Path, gpus: list[dict], profiles: list[dict], extra: str = "") -> None:
    """A ``jupyterhub_config.py`` in ``folder`` for the command: simulated ``gpus``, ``profiles``, then ``extra``."""
    body = f"""\
        c = get_config()  # noqa
        c.JupyterHub.spawner_class = "gpu"
        c.GPUSpawner.pull_policy = "never"  # no registry on the test bed
        c.GPUSpawner.driver_cuda_version = "12.4"
        c.GPUSpawner.gpus = {gpus!r}
        c.GPUSpawner.profiles = {profiles!r}
    """
    (folder / "jupyterhub_config.py").write_text(textwrap.dedent(body) + textwrap.dedent(extra))


def run_command(
    folder: Path, args, *, engine_at: str = "", timeout: float = 120
) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m gpuspawner.cli ARGS`` in ``folder``, with ``DOCKER_HOST=engine_at`` (default: the test
    bed's engine); its completed process (text) and the seconds it took, Python's start and imports included."""
    env = {**os.environ, "DOCKER_HOST": engine_at or docker_host(), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gpuspawner.cli", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - started


def require_tools() -> None:
    if not shutil.which("configurable-http-proxy"):
        raise MissingTestbed("configurable-http-proxy is not on PATH: run `bash deploy/testbed/testbed.sh install`")
