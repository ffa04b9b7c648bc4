"""The admin's path, as shipped: deploy/hub/compose.yaml runs deploy/hub/jupyterhub_config.py.

The hub image is built from ``deploy/hub/Dockerfile`` with the test bed's single-user image as
its base (no registry here: a real site uses the Dockerfile's pinned default), tagged by a
hash of its inputs so that a rerun finds it cached. The example course config is used as
shipped: only its "Fill in" block differs, with what the admin is told to fill in there (the
hub's address and ports, the certificate, the single sign-on provider's URLs, the GPU list, the
lab's subnets, the folders and the class images), and the test checks that nothing else does.

Around it, what a site has: a single sign-on provider on loopback (``oidc-provider-mock``, a
packaged OpenID Connect provider on Authlib) issuing a student and a teacher with course group
claims; a certificate the test makes, which the hub serves HTTPS with; the class images in a
registry on loopback; dataset and course folders as the admin tutorial creates them. In
Chromium, the student logs in through the provider, sees only the course's profiles and starts
one; the teacher sees the course on the GPU dashboard, a profile added to
``/etc/jupyterhub/profiles.yaml``, and writes to the course share. ``gpuspawner prepull`` and
``doctor`` run in the hub's container as the tutorial says; the culler and the dashboard run
with the shipped settings; the hub's container restarts under a running server. Everything
made here is removed at the end.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from gpuspawner.lab_network import check_rules
from gpuspawner.lab_network import settings as lab_settings

from .conftest import chromium
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
    stop_process,
    wait_for,
)
from .tls import make_certificate

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
PROJECT = f"gpuspawner-deploy-e2e-{RUN}"
DEPLOY = REPO / "deploy" / "hub"
COMPOSE_FILE = DEPLOY / "compose.yaml"
GPU_IDS = ["GPU-d0000000-0000-4000-8000-000000000000", "GPU-d1111111-1111-4000-8000-111111111111"]
STUDENT, TEACHER = f"alice-{RUN}", f"carol-{RUN}"
IDP_USERS = [  # as the university's provider sends them: its groups claim names the course groups
    {"sub": STUDENT, "preferred_username": STUDENT, "name": "Alice", "groups": ["ml101"]},
    # a teacher is in the course's group and in its teachers' group
    {"sub": TEACHER, "preferred_username": TEACHER, "name": "Carol", "groups": ["ml101", "ml101-teachers"]},
]
CLASS_IMAGES = {
    "ML101_IMAGE": "ml101-cuda:2026.1",
    "CV201_IMAGE": "cv201-cuda:2026.1",
    "CPU_IMAGE": "python-cpu:2026.1",
}


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


# --- the site around the hub ------------------------------------------------------------

FILL_IN_START = "# --- Fill in: your site"
FILL_IN_END = "# --- End of what to fill in"


def fill_in(shipped: str, values: dict[str, object]) -> str:
    """The shipped config with its "Fill in" block given ``values``: every name it assigns, nothing else."""
    start = shipped.index(FILL_IN_START)
    start = shipped.index("\n", start) + 1
    end = shipped.index(FILL_IN_END)
    block = shipped[start:end]
    names = [t.id for node in ast.parse(block).body for t in getattr(node, "targets", [])]
    assert sorted(names) == sorted(values), f"the Fill in block assigns {names}; the test fills in {list(values)}"
    filled = "".join(f"{name} = {values[name]!r}\n" for name in names)
    return shipped[:start] + filled + shipped[end:]


class Provider:
    """The university's OpenID Connect provider, on loopback: a process of its own."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(self.port)]
        for user in IDP_USERS:
            args += ["--user-claims", json.dumps(user)]
        self.log = workdir / "provider.log"
        self.proc = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

        def answers() -> bool:
            try:
                return requests.get(f"{self.url}/.well-known/openid-configuration", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(answers, 30, "the OpenID Connect provider answers", details=self.log.read_text)

    def endpoints(self) -> dict[str, str]:
        found = requests.get(f"{self.url}/.well-known/openid-configuration", timeout=5).json()
        return {
            "SSO_AUTHORIZE_URL": found["authorization_endpoint"],
            "SSO_TOKEN_URL": found["token_endpoint"],
            "SSO_USERINFO_URL": found["userinfo_endpoint"],
        }

    def stop(self) -> None:
        stop_process(self.proc)


class Site:
    """/etc/jupyterhub, the data folders, the class images and the hub, as the admin tutorial makes them."""

    def __init__(self, workdir: Path, registry: str, provider: Provider):
        self.workdir = workdir
        self.ports = {"https": free_port(), "hub_api": free_port(), "proxy_api": free_port(), "dashboard": free_port()}
        self.url = f"https://127.0.0.1:{self.ports['https']}"
        self.lab = e2e_lab(f"deploy-{RUN}:{os.getpid()}", self.ports["hub_api"])
        self.images = {name: f"{registry}/{ref}" for name, ref in CLASS_IMAGES.items()}

        # /etc/jupyterhub: the config and profiles file copied from deploy/hub, the secrets, the certificate.
        self.etc = workdir / "etc-jupyterhub"
        (self.etc / "tls").mkdir(parents=True)
        self.cert = make_certificate(workdir / "certbot", ["127.0.0.1", "localhost"])
        shutil.copy(self.cert.fullchain, self.etc / "tls" / "fullchain.pem")
        shutil.copy(self.cert.privkey, self.etc / "tls" / "privkey.pem")
        shutil.copy(DEPLOY / "profiles.yaml", self.etc / "profiles.yaml")
        env = self.etc / "hub.env"
        env.write_text(f"OAUTH_CLIENT_ID=gpu-lab-{RUN}\nOAUTH_CLIENT_SECRET={secrets.token_hex(16)}\n")
        env.chmod(0o600)

        # The folders the profiles mount, made as the admin tutorial says: datasets owned by root and
        # readable by all, the course shares owned by the class images' user (uid 1000).
        self.datasets, self.courses = workdir / "datasets", workdir / "courses"
        for name in ("mnist", "cifar10", "coco-val"):
            (self.datasets / name).mkdir(parents=True)
            (self.datasets / name / "README").write_text(f"{name}\n")
        for course in ("ml101", "cv201"):
            subprocess.run(["install", "-d", "-o", "1000", "-g", "100", "-m", "2775", str(self.courses / course)],
                           check=True)  # fmt: skip
        for folder in (self.datasets, self.courses, workdir):
            folder.chmod(0o755)

        gpus = [{"index": i, "uuid": u, "name": "Tesla T4", "memory": "16G"} for i, u in enumerate(GPU_IDS)]
        self.shipped = (DEPLOY / "jupyterhub_config.py").read_text()
        values = {
            "PUBLIC_URL": self.url,
            "LISTEN_IP": "127.0.0.1",
            "PORTS": self.ports,
            "TLS": "/etc/jupyterhub/tls",
            **provider.endpoints(),
            "GPUS": gpus,
            "LAB_NETWORK": {k: v for k, v in lab_settings(self.lab).items() if k not in ("hub_port", "allow")},
            "DATASETS": str(self.datasets),
            "COURSES": str(self.courses),
            **self.images,
        }
        (self.etc / "jupyterhub_config.py").write_text(fill_in(self.shipped, values))
        client_dir = TESTBED / "client"
        client_dir.mkdir(exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            # every call goes to the test engine, with a private client config
            "DOCKER_HOST": docker_host(),
            "DOCKER_CONFIG": str(client_dir),
            "GPUSPAWNER_DOCKER_SOCKET": str(TESTBED / "docker.sock"),
            "GPUSPAWNER_HUB_ETC": str(self.etc),
            "GPUSPAWNER_DATASETS_ROOT": str(self.datasets),
            "GPUSPAWNER_COURSES_ROOT": str(self.courses),
        }

    def get(self, path: str, **kwargs) -> requests.Response:
        """Over HTTPS, trusting only the test's certificate authority."""
        return requests.get(f"{self.url}{path}", timeout=30, verify=str(self.cert.ca), **kwargs)

    def wait_up(self, timeout: float = 90) -> None:
        def answers() -> bool:
            try:
                return self.get("/hub/api/").ok
            except requests.RequestException:
                return False

        wait_for(answers, timeout, "the containerised hub answers over HTTPS", every=0.5, details=self.logs)

    def container(self):
        (found,) = engine().containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
        return found

    def logs(self, tail: int | str = 60) -> str:
        try:
            return self.container().logs(tail=tail).decode(errors="replace")
        except Exception as e:  # noqa: BLE001 (only for a failure message)
            return f"(no hub logs: {e})"

    def server_of(self, user: str):
        found = engine().containers.list(filters={"label": f"gpuspawner.user={user}"})
        return found[0] if found else None

    def teardown(self) -> None:
        client = engine()
        try:
            compose(self.env, "down", "--volumes", "--remove-orphans", timeout=90)
        finally:
            for user in (STUDENT, TEACHER):
                for c in client.containers.list(all=True, filters={"label": f"gpuspawner.user={user}"}):
                    c.remove(force=True)
            for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}):
                c.remove(force=True)
            for v in client.volumes.list(filters={"label": f"com.docker.compose.project={PROJECT}"}):
                v.remove(force=True)
            for v in home_volumes():
                v.remove(force=True)
            for ref in self.images.values():
                try:
                    client.images.remove(ref)
                except Exception:  # noqa: BLE001 - not pulled
                    pass
            remove_lab(self.lab)


def compose_cmd() -> list[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed: run `bash deploy/testbed/testbed.sh install`"
    return [exe, "--project-name", PROJECT, "--file", str(COMPOSE_FILE)]


def compose(env: dict, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(compose_cmd() + list(args), env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def home_volumes() -> list:
    """This run's users' home volumes (DockerSpawner escapes the names' hyphens)."""
    return [v for v in engine().volumes.list() if v.name.startswith("jupyterhub-user-") and v.name.endswith(RUN)]


def push_class_images(registry: str) -> None:
    """The teachers' class images in the lab's registry (the test bed's image under the config's names)."""
    client = engine()
    base = client.images.get(read_testbed("image"))
    for ref in CLASS_IMAGES.values():
        repository, tag = f"{registry}/{ref}".rsplit(":", 1)
        base.tag(repository, tag)
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        client.images.remove(f"{repository}:{tag}")  # only the tag: `gpuspawner prepull` pulls it


@pytest.fixture(scope="module")
def site(tmp_path_factory, lab_registry):
    workdir = tmp_path_factory.mktemp("deploy")
    t0 = time.monotonic()
    tag, build_s = hub_image(base=read_testbed("image"))
    registry, _ = lab_registry
    push_class_images(registry)
    provider = Provider(workdir)
    site = Site(workdir, registry, provider)
    site.env["GPUSPAWNER_HUB_IMAGE"] = tag
    try:
        compose(site.env, "up", "--detach", "--no-build")
        site.wait_up()
        print(f"\nhub image {tag}: build {build_s:.0f} s (0: cached); answers after {time.monotonic() - t0:.0f} s")
        yield site
    finally:
        try:
            site.teardown()
        finally:
            provider.stop()
    assert not engine().containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})


@pytest.fixture(scope="module")
def pinned_browser(site):
    """Chromium that trusts the hub's certificate (pinned by its key), nothing more."""
    with chromium(f"--ignore-certificate-errors-spki-list={site.cert.spki_sha256}") as b:
        yield b


def log_in(browser, site: Site, user: str):
    """A browser page logged in through the single sign-on provider, as a student's browser does."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{site.url}/hub/login")
    page.get_by_role("button", name="Sign in with university login").click()
    page.get_by_placeholder("sub").fill(user)  # the provider's login form
    page.get_by_role("button", name="Authorize").click()
    # the spawn page, or with a server running, that server
    page.wait_for_url(re.compile(rf".*/(hub/(spawn|home)|user/{user}/).*"), timeout=30_000)
    return page


# --- the tests, in the tutorial's order ------------------------------------------------------


def test_only_the_fill_in_block_differs_from_the_shipped_config(site):
    written = (site.etc / "jupyterhub_config.py").read_text()
    before, after = site.shipped.split(FILL_IN_START, 1), written.split(FILL_IN_START, 1)
    assert before[0] == after[0]
    assert before[1].split(FILL_IN_END, 1)[1] == after[1].split(FILL_IN_END, 1)[1]


def test_the_hub_serves_https_with_the_sites_certificate_and_nothing_in_plain_http(site):
    attrs = site.container().attrs
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert attrs["HostConfig"]["NetworkMode"] == "host" and attrs["HostConfig"]["Init"] is True
    (state,) = [m for m in attrs["Mounts"] if m["Destination"] == "/srv/jupyterhub"]
    assert state["Type"] == "volume" and state["Name"] == f"{PROJECT}_hub-data"
    (etc,) = [m for m in attrs["Mounts"] if m["Destination"] == "/etc/jupyterhub"]
    assert etc["Source"] == str(site.etc) and etc["RW"] is False
    assert site.get("/hub/api/").json()["version"]  # verified against the test's CA
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{site.ports['https']}/hub/api/", timeout=5)


def test_prepull_and_doctor_run_in_the_hubs_container_as_the_tutorial_says(site):
    # `docker compose exec hub gpuspawner prepull`: no -f, the hub's config all the same.
    out = compose(site.env, "exec", "-T", "hub", "gpuspawner", "prepull", timeout=300)
    for ref in site.images.values():
        assert ref in out.stdout, out.stdout
        engine().images.get(ref)  # pulled, from the lab's registry
    # `docker compose exec hub gpuspawner doctor`: the hub's config, its folders and images.
    doctor = compose(site.env, "exec", "-T", "hub", "gpuspawner", "doctor", timeout=300, check=False)
    report = doctor.stdout + doctor.stderr
    assert doctor.returncode == 0, report
    assert "FAIL" not in report, report
    assert str(site.datasets / "mnist") in report or "mnist" in report, report


def test_a_student_logs_in_through_single_sign_on_and_starts_the_courses_gpu_profile(site, pinned_browser):
    page = log_in(pinned_browser, site, STUDENT)
    assert "/hub/spawn" in page.url, page.url
    text = page.inner_text("body")
    # only their course's profiles: ML101's and the CPU one, never CV201's
    assert "ML101 - PyTorch 2.5, 1 GPU" in text and "Python (CPU only)" in text and "CV201" not in text, text
    page.check("#profile-ml101-gpu")
    page.get_by_role("button", name=re.compile("Start")).click()
    page.wait_for_url(re.compile(rf".*/user/{STUDENT}/lab.*"), timeout=120_000)
    server = site.server_of(STUDENT)
    assert server is not None and server.labels["gpuspawner.profile"] == "ml101-gpu"
    assert pid1_environ(server)["NVIDIA_VISIBLE_DEVICES"] in GPU_IDS
    # on the lab network, closed by the rules the containerised hub installed (NET_ADMIN)
    assert list(server.attrs["NetworkSettings"]["Networks"]) == [site.lab.name]
    assert check_rules(site.lab) == []
    # the course's datasets and share, read-only for a student
    mounts = {m["Source"]: m for m in server.attrs["Mounts"]}
    for source in (site.datasets / "mnist", site.datasets / "cifar10", site.courses / "ml101"):
        assert mounts[str(source)]["RW"] is False, mounts
    page.context.close()


def test_a_teacher_sees_the_course_on_the_dashboard_and_a_profile_added_to_the_profiles_file(site, pinned_browser):
    # A teacher adds a profile to /etc/jupyterhub/profiles.yaml: the hub re-reads it, no restart.
    profiles = site.etc / "profiles.yaml"
    shipped = profiles.read_text()
    assert "profiles: []" in shipped
    exam = (
        "profiles:\n"
        "  - slug: ml101-exam\n"
        '    display_name: "ML101 - exam (CPU)"\n'
        f"    image: {site.images['CPU_IMAGE']}\n"
        "    groups: [ml101, ml101-teachers]\n"
        f"    datasets: [{{name: mnist, source: {site.datasets / 'mnist'}}}]\n"
    )
    profiles.write_text(shipped.replace("profiles: []\n", exam))

    page = log_in(pinned_browser, site, TEACHER)

    def shows_the_exam() -> bool:
        page.reload()
        return "ML101 - exam (CPU)" in page.inner_text("body")

    wait_for(shows_the_exam, 30, "the edited profiles file read", every=1)
    assert "CV201" not in page.inner_text("body")

    page.goto(f"{site.url}/services/gpu-dashboard/")
    wait_for(lambda: STUDENT in page.inner_text("body"), 30, "the student's GPU on the teacher's dashboard")

    # The teacher's own server: the course share is writable for the share's writers (uid 1000).
    page.goto(f"{site.url}/hub/spawn")
    page.check("#profile-ml101-gpu")
    page.get_by_role("button", name=re.compile("Start")).click()
    page.wait_for_url(re.compile(rf".*/user/{TEACHER}/lab.*"), timeout=120_000)
    server = site.server_of(TEACHER)
    (share,) = [m for m in server.attrs["Mounts"] if m["Source"] == str(site.courses / "ml101")]
    assert share["RW"] is True
    done = server.exec_run(["sh", "-c", f"echo week 1 > {share['Destination']}/notes.txt"])
    assert done.exit_code == 0, done.output
    assert (site.courses / "ml101" / "notes.txt").read_text() == "week 1\n"
    page.context.close()


def test_the_culler_and_the_dashboard_run_with_the_shipped_settings(site):
    for service in ("gpu-dashboard", "gpu-culler"):
        assert f"Starting managed service {service}" in site.logs("all")
    # both read the hub's own config (-f), as the hub's container mounts it
    ps = "import glob; print(*(open(p, 'rb').read().replace(b'\\0', b' ').decode() for p in glob.glob('/proc/[0-9]*/cmdline')), sep='\\n')"
    running = site.container().exec_run(["python3", "-c", ps]).output.decode()
    for module in ("gpuspawner.dashboard", "gpuspawner.culler"):
        assert f"-m {module} -f /etc/jupyterhub/jupyterhub_config.py" in running, running
    wait_for(lambda: "(gpu-culler@" in site.logs("all"), 90, "the culler's first round", every=1, details=site.logs)
    logs = site.logs("all")
    assert "Cannot read the GPU servers from Docker" not in logs
    assert not re.search(r"Service gpu-(culler|dashboard) exited", logs), logs


def test_students_keep_their_server_while_the_hubs_container_restarts(site, pinned_browser):
    server = site.server_of(STUDENT)
    secret = site.container().exec_run(["cat", "/srv/jupyterhub/jupyterhub_cookie_secret"]).output
    assert len(secret.strip()) >= 64
    compose(site.env, "restart", "hub")
    site.wait_up()
    assert site.container().exec_run(["cat", "/srv/jupyterhub/jupyterhub_cookie_secret"]).output == secret
    assert site.server_of(STUDENT).id == server.id

    # logged in again (the provider remembers nothing), the student is back in the same server,
    # and stops it from the hub's home page: the container goes, the home volume stays
    page = log_in(pinned_browser, site, STUDENT)
    page.goto(f"{site.url}/hub/home", wait_until="networkidle")  # the button works once home.js is loaded
    page.get_by_role("button", name=re.compile("Stop My Server")).click()
    wait_for(lambda: site.server_of(STUDENT) is None, 60, "the student's server stopped", details=site.logs)
    assert any(v.name.endswith(RUN) and "alice" in v.name for v in home_volumes())
    page.context.close()
