"""The deploy works: the hub image from deploy/hub/, run with its compose file, spawns a GPU server.

The image is built from ``deploy/hub/Dockerfile`` with the test bed's single-user image as
its base (no registry here: a real site uses the Dockerfile's pinned default), tagged by a
hash of its inputs so that a rerun finds it cached. ``deploy/hub/compose.yaml`` then runs it
with Debian's docker-compose against the test engine, with a small config of this test's own
(a simulated GPU list); a student logs in through the login form, gets a GPU server through
the containerised hub, keeps it across a restart of the hub's container, and stops it.
Everything made here is removed at the end: the compose project and its volume, and the
student's container and home volume (found by this run's label and name).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import requests

from gpuspawner.lab_network import LabNetwork, check_rules
from gpuspawner.lab_network import settings as lab_settings

from .realhub import (
    REPO,
    TESTBED,
    docker_host,
    e2e_lab,
    engine,
    free_port,
    pid1_environ,
    read_testbed,
    remove_lab,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
PROJECT = f"gpuspawner-deploy-e2e-{RUN}"
LABEL = "gpuspawner-deploy-e2e"
COMPOSE_FILE = REPO / "deploy" / "hub" / "compose.yaml"
GPU_IDS = ["GPU-d0000000-0000-4000-8000-000000000000", "GPU-d1111111-1111-4000-8000-111111111111"]
PASSWORD = "deploy-e2e"


# --- the image ---------------------------------------------------------------------


def context_files() -> list[tuple[str, Path]]:
    """What the Dockerfile reads from the checkout (the root .dockerignore keeps the rest out)."""
    files = [
        ("deploy/hub/Dockerfile", REPO / "deploy/hub/Dockerfile"),
        ("pyproject.toml", REPO / "pyproject.toml"),
        ("README.md", REPO / "README.md"),
    ]
    for path in sorted((REPO / "deploy/hub/ca-certificates").iterdir()):
        files.append((f"deploy/hub/ca-certificates/{path.name}", path))
    for path in sorted((REPO / "gpuspawner").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append((str(path.relative_to(REPO)), path))
    # This machine reaches the package registries through a TLS-inspecting egress
    # proxy: its CA goes where a site behind such a proxy puts its own.
    for path in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
        files.append((f"deploy/hub/ca-certificates/{path.name}", path))
    return files


def build_context() -> tuple[bytes, str]:
    """The build context as a tar, and a hash of everything in it."""
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in context_files():
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()


def hub_image(base: str) -> tuple[str, float]:
    """Build (or find) the hub image on the test engine; returns its tag and the build's seconds."""
    context, digest = build_context()
    tag = "gpuspawner-hub-test:" + hashlib.sha256(f"{digest} {base}".encode()).hexdigest()[:12]
    client = engine()
    try:
        client.images.get(tag)
        return tag, 0.0
    except Exception:  # docker.errors.ImageNotFound
        pass
    t0 = time.monotonic()
    api = client.api
    api.timeout = 600
    log = []
    for chunk in api.build(
        fileobj=io.BytesIO(context),
        custom_context=True,
        dockerfile="deploy/hub/Dockerfile",
        tag=tag,
        network_mode="host",
        buildargs={"BASE": base},
        rm=True,
        forcerm=True,
        decode=True,
        labels={"gpuspawner.test": "deploy-e2e"},
    ):
        log.append(chunk.get("stream") or chunk.get("error") or "")
        if "error" in chunk:
            raise AssertionError("hub image build failed:\n" + "".join(log[-40:]))
    client.images.get(tag)
    # Older builds of this test (another checkout's code) go: their layers below the
    # code's are shared with this one and stay cached.
    for image in client.images.list(name="gpuspawner-hub-test"):
        if tag not in image.tags:
            try:
                client.images.remove(image.id)
            except Exception:  # noqa: BLE001 (in use by a concurrent run: leave it)
                pass
    return tag, time.monotonic() - t0


# --- the hub, run by compose ----------------------------------------------------------


def compose_cmd() -> list[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed: run `bash deploy/testbed/testbed.sh install`"
    return [exe, "--project-name", PROJECT, "--file", str(COMPOSE_FILE)]


def compose(env: dict, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(compose_cmd() + list(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def hub_config(image: str, ports: dict, token: str, lab: LabNetwork) -> str:
    gpus = [{"index": i, "uuid": u, "name": "Tesla T4", "memory": "16G"} for i, u in enumerate(GPU_IDS)]
    return textwrap.dedent(f"""
        # The deploy test's own config: the image's layout (db and cookie secret in
        # /srv/jupyterhub, the working directory), loopback ports of its own.
        c = get_config()  # noqa
        c.JupyterHub.ip = "127.0.0.1"
        c.JupyterHub.port = {ports["proxy"]}
        c.JupyterHub.hub_ip = "127.0.0.1"
        c.JupyterHub.hub_port = {ports["hub"]}
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports["proxy_api"]}"
        c.JupyterHub.cleanup_servers = False
        c.JupyterHub.authenticator_class = "dummy"
        c.DummyAuthenticator.password = {PASSWORD!r}
        c.Authenticator.allow_all = True
        c.JupyterHub.services = [{{"name": "deploy-e2e", "api_token": {token!r}}}]
        c.JupyterHub.load_roles = [{{"name": "deploy-e2e", "services": ["deploy-e2e"],
                                     "scopes": ["admin:users", "admin:servers", "access:servers", "read:services",
                                                "custom:gpu-dashboard:read"]}}]
        c.JupyterHub.spawner_class = "gpu"
        c.GPUSpawner.gpus = {gpus!r}
        c.GPUSpawner.profiles = [
            {{"slug": "cpu", "display_name": "Python (CPU only)", "image": {image!r}, "mem_limit": "1G"}},
            {{"slug": "gpu", "display_name": "Deep learning (1 GPU)", "image": {image!r}, "gpus": 1,
              "mem_limit": "1G"}},
        ]
        c.GPUSpawner.pull_policy = "never"  # the test engine has no registry
        c.GPUSpawner.extra_create_kwargs = {{"labels": {{{LABEL!r}: {RUN!r}}}}}
        c.Spawner.http_timeout = 90
        c.Spawner.start_timeout = 120
        # The deploy config's two lines: the services run in the hub's image, on this file (-f).
        from gpuspawner import services
        services.add_dashboard(c, __file__, url="http://127.0.0.1:{ports["dashboard"]}")
        services.add_culler(c, __file__, cull_every=2)
        # The deploy config's lab network, with a subnet and bridges of this test's own.
        from gpuspawner.lab_network import add_lab_network
        add_lab_network(c, **{ {k: v for k, v in lab_settings(lab).items() if k != "hub_port"}!r})
        """)


class ComposedHub:
    def __init__(self, workdir: Path):
        self.token = secrets.token_hex(16)
        self.ports = {"proxy": free_port(), "hub": free_port(), "proxy_api": free_port(), "dashboard": free_port()}
        self.url = f"http://127.0.0.1:{self.ports['proxy']}"
        self.lab = e2e_lab(f"deploy-{RUN}:{os.getpid()}", self.ports["hub"])
        self.workdir = workdir
        (workdir / "tls").mkdir()  # empty: plain HTTP on loopback
        (workdir / "datasets").mkdir()
        (workdir / "courses").mkdir()
        (workdir / "hub.env").write_text("# no secrets: the test logs in with the dummy authenticator\n")
        self.config = workdir / "jupyterhub_config.py"
        client_dir = TESTBED / "client"
        client_dir.mkdir(exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            # every call goes to the test engine, with a private client config
            "DOCKER_HOST": docker_host(),
            "DOCKER_CONFIG": str(client_dir),
            "GPUSPAWNER_DOCKER_SOCKET": str(TESTBED / "docker.sock"),
            "GPUSPAWNER_HUB_CONFIG": str(self.config),
            "GPUSPAWNER_TLS_DIR": str(workdir / "tls"),
            "GPUSPAWNER_HUB_ENV_FILE": str(workdir / "hub.env"),
            "GPUSPAWNER_DATASETS_ROOT": str(workdir / "datasets"),
            "GPUSPAWNER_COURSES_ROOT": str(workdir / "courses"),
        }

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(
            method, f"{self.url}/hub/api{path}", timeout=60, headers={"Authorization": f"token {self.token}"}, **kwargs
        )

    def wait_up(self, timeout: float = 90) -> None:
        def answers() -> bool:
            try:
                return requests.get(f"{self.url}/hub/api/", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(answers, timeout, "the containerised hub answers", every=0.5, details=self.logs)

    def container(self):
        (found,) = engine().containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
        return found

    def logs(self, tail: int | str = 60) -> str:
        try:
            return self.container().logs(tail=tail).decode(errors="replace")
        except Exception as e:  # noqa: BLE001 (only for a failure message)
            return f"(no hub logs: {e})"

    def server(self, user: str) -> dict | None:
        r = self.api("GET", f"/users/{user}")
        r.raise_for_status()
        return r.json().get("servers", {}).get("")

    def wait_server(self, user: str, ready: bool, timeout: float = 120) -> None:
        def done() -> bool:
            model = self.server(user)
            return bool(model and model.get("ready")) if ready else model is None

        wait_for(done, timeout, f"{user}'s server {'ready' if ready else 'gone'}", every=0.5, details=self.logs)

    def teardown(self) -> None:
        client = engine()
        try:
            compose(self.env, "down", "--volumes", "--remove-orphans", timeout=90)
        finally:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
                c.remove(force=True)
            for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}):
                c.remove(force=True)
            for v in client.volumes.list(filters={"label": f"com.docker.compose.project={PROJECT}"}):
                v.remove(force=True)
            for v in home_volumes():
                v.remove(force=True)
            remove_lab(self.lab)


CONFIG_IN_HUB = "/etc/jupyterhub/jupyterhub_config.py"  # where compose.yaml mounts the config


def dashboard_units(hub: ComposedHub) -> list[dict] | None:
    """The dashboard's units (its JSON API, through the hub's proxy), once it answers."""
    try:
        r = hub_get(hub, "/services/gpu-dashboard/api/v1/gpus")
    except requests.RequestException:
        return None
    return r.json()["units"] if r.status_code == 200 else None


def hub_get(hub: ComposedHub, path: str) -> requests.Response:
    return requests.get(f"{hub.url}{path}", timeout=10, headers={"Authorization": f"token {hub.token}"})


def culler_rounds(hub: ComposedHub) -> int:
    """The culler's rounds so far: each lists the hub's users once, which the hub logs."""
    return sum(1 for line in hub.logs("all").splitlines() if "GET /hub/api/users" in line and "(gpu-culler@" in line)


def home_volumes() -> list:
    """This run's student's home volume (DockerSpawner escapes the name's hyphen)."""
    return [v for v in engine().volumes.list() if v.name.startswith("jupyterhub-user-") and v.name.endswith(RUN)]


def log_in(hub: ComposedHub, name: str) -> requests.Session:
    """Through the hub's login form, as a student's browser does."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
    r = s.post(
        f"{hub.url}/hub/login",
        timeout=30,
        data={"username": name, "password": PASSWORD, "_xsrf": s.cookies.get("_xsrf", "")},
    )
    r.raise_for_status()
    assert r.url == f"{hub.url}/hub/spawn", r.url  # logged in, shown the spawn page
    assert "Deep learning (1 GPU)" in r.text and "2 of 2 Tesla T4 free now" in r.text
    return s


def test_the_hub_image_runs_under_compose_and_spawns_a_gpu_server(tmp_path):
    lab_image = read_testbed("image")
    t0 = time.monotonic()
    tag, build_s = hub_image(base=lab_image)
    hub = ComposedHub(tmp_path)
    hub.env["GPUSPAWNER_HUB_IMAGE"] = tag
    hub.config.write_text(hub_config(lab_image, hub.ports, hub.token, hub.lab))
    name = f"student-{RUN}"
    try:
        compose(hub.env, "up", "--detach", "--no-build")
        hub.wait_up()
        up_s = time.monotonic() - t0
        print(f"\nhub image {tag}: build {build_s:.0f} s (0: cached); the hub answers after {up_s:.0f} s")

        # The container is what compose.yaml says: restart policy, host network, state volume.
        attrs = hub.container().attrs
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["HostConfig"]["Init"] is True
        (state,) = [m for m in attrs["Mounts"] if m["Destination"] == "/srv/jupyterhub"]
        assert state["Type"] == "volume" and state["Name"] == f"{PROJECT}_hub-data"

        # A student logs in through the form, and gets a GPU server through the containerised hub.
        session = log_in(hub, name)
        r = hub.api("POST", f"/users/{name}/server", data=json.dumps({"user_options": {"profile": "gpu"}}))
        assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{hub.logs()}"
        hub.wait_server(name, ready=True)
        (server,) = engine().containers.list(filters={"label": [f"gpuspawner.user={name}", f"{LABEL}={RUN}"]})
        assert pid1_environ(server)["NVIDIA_VISIBLE_DEVICES"] in GPU_IDS
        # On the lab network, closed by the rules the containerised hub installed (NET_ADMIN).
        assert list(server.attrs["NetworkSettings"]["Networks"]) == [hub.lab.name]
        assert check_rules(hub.lab) == []
        assert server.labels["gpuspawner.profile"] == "gpu"
        # ... and opens JupyterLab through the hub's proxy, with its own login.
        r = session.get(f"{hub.url}/user/{name}/lab", timeout=60)
        assert r.status_code == 200 and "jupyter-config-data" in r.text, r.text[:500]

        # The services of services.add_dashboard/add_culler run in the hub's container, on its config
        # (-f) and its Docker engine (DOCKER_HOST handed on): the dashboard sees who holds the GPU ...
        units = wait_for(lambda: dashboard_units(hub), 60, "the dashboard's GPU list", details=hub.logs)
        assert [h["user"] for u in units if u["id"] in GPU_IDS for h in u["holders"]] == [name], units
        # ... and the culler, every 2 s, lists the hub's servers and reads the containers without an error.
        for service in ("gpu-dashboard", "gpu-culler"):
            command = hub.api("GET", f"/services/{service}").json()["command"]
            assert command[1:5] == ["-m", service.replace("gpu-", "gpuspawner."), "-f", CONFIG_IN_HUB], command
        wait_for(lambda: culler_rounds(hub) >= 2, 60, "two rounds of the culler", details=hub.logs)
        assert "Cannot read the GPU servers from Docker" not in hub.logs("all")

        # The hub's container restarts: database and cookie secret live in the volume, so the
        # server is still known, still holds its GPU, and the student's login still works.
        secret = hub.container().exec_run(["cat", "/srv/jupyterhub/jupyterhub_cookie_secret"]).output
        assert len(secret.strip()) >= 64
        compose(hub.env, "restart", "hub")
        hub.wait_up()
        assert hub.container().exec_run(["cat", "/srv/jupyterhub/jupyterhub_cookie_secret"]).output == secret
        hub.wait_server(name, ready=True)
        assert session.get(f"{hub.url}/user/{name}/lab", timeout=60).status_code == 200
        assert server.id in [c.id for c in engine().containers.list(filters={"label": f"{LABEL}={RUN}"})]

        # Stopped through the hub: the container goes, the home volume stays.
        r = hub.api("DELETE", f"/users/{name}/server")
        assert r.status_code in (202, 204), r.text
        hub.wait_server(name, ready=False)
        assert not engine().containers.list(all=True, filters={"label": f"{LABEL}={RUN}"})
        assert len(home_volumes()) == 1
        print(f"spawned, restarted, stopped: {time.monotonic() - t0:.0f} s before tear-down")
    finally:
        hub.teardown()
    assert not engine().containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
    assert not engine().volumes.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
