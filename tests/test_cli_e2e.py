"""The ``gpuspawner`` command as an admin runs it, against the test bed's engine.

Each test runs ``python -m gpuspawner.cli`` in a process of its own, with a
``jupyterhub_config.py`` written for it. Images derived from the test bed's
image (no jupyterhub-singleuser, root, a too-new CUDA, frameworks) are built
here with tags unique to this run and removed at the end; the one container
this module starts itself (for ``status``) too. Nothing else on the engine is touched.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import docker
import docker.errors
import pytest

from gpuspawner.cli import probe, server_start
from gpuspawner.gpus.nvml import NVMLUnavailable, discover

from .realhub import (
    REPO,
    TESTBED,
    docker_host,
    engine,
    read_testbed,
    run_command,
    simulated_gpus,
    write_command_config,
)

pytestmark = pytest.mark.docker

RUN = secrets.token_hex(4)
REPOSITORY = "gpuspawner-cli-e2e"

FAKE_TORCH = '__version__ = "2.5.1+cu124"\n\n\nclass version:\n    cuda = "12.4"\n'
BROKEN_TENSORFLOW = (
    'raise ImportError("libcudart.so.11.0: cannot open shared object file: No such file or directory")\n'
)

DOCKERFILES = {
    # the venv's jupyterhub-singleuser removed: the hub could not start it
    "nosu": "USER root\nRUN rm /opt/venv/bin/jupyterhub-singleuser\nUSER jovyan\n",
    # a root image as they come: root's own home, and Jupyter's --allow-root (it refuses root without it)
    "root": 'USER root\nENV HOME=/root\nWORKDIR /root\nCMD ["jupyterhub-singleuser", "--allow-root"]\n',
    # an import error the probe cannot see: `import jupyterhub` works, the server's own imports do not
    "broken-server": "USER root\nRUN rm -r /opt/venv/lib/python3.*/site-packages/tornado\nUSER jovyan\n",
    "cu128": "ENV CUDA_VERSION=12.8.0\n",
    # what a PyTorch image looks like to the check, without gigabytes of PyTorch: a CUDA
    # runtime, a torch that imports, and a tensorflow that fails as a CUDA mismatch does
    "frameworks": textwrap.dedent(
        """\
        USER root
        COPY torch /tmp/fw/torch
        COPY tensorflow /tmp/fw/tensorflow
        RUN cp -r /tmp/fw/* /opt/venv/lib/python3.*/site-packages/ && rm -rf /tmp/fw \\
            && touch /usr/local/lib/libcudart.so.12.4.127
        LABEL gpuspawner.cuda=12.4
        USER jovyan
        """
    ),
}


def build(client: docker.DockerClient, base: str, kind: str) -> str:
    tag = f"{REPOSITORY}:{kind}-{RUN}"
    files = {"Dockerfile": f"FROM {base}\n{DOCKERFILES[kind]}"}
    if kind == "frameworks":
        files.update({"torch/__init__.py": FAKE_TORCH, "tensorflow/__init__.py": BROKEN_TENSORFLOW})
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    # network "none": the test engine has no bridge; RUN needs no network here
    client.images.build(fileobj=context, custom_context=True, tag=tag, network_mode="none", rm=True, forcerm=True)
    return tag


@pytest.fixture(scope="module")
def images():
    """The test bed's images and this run's derived ones, by kind; derived ones removed after."""
    client = engine()
    base = read_testbed("image")
    built = {}
    try:
        for kind in DOCKERFILES:
            built[kind] = build(client, base, kind)
        yield {"base": base, "cuda": read_testbed("image-cuda"), **built}
    finally:
        for tag in built.values():
            try:
                client.images.remove(tag, force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def hub_dir(tmp_path):
    return tmp_path


@pytest.fixture
def no_profiles(hub_dir):
    """The hub's folder, with a config of no profiles (the two simulated GPUs, a driver for CUDA 12.4)."""
    write_config(hub_dir, [])
    return hub_dir


GPUS = simulated_gpus([f"GPU-c11e2e00-{RUN}-4000-8000-00000000000{i}" for i in range(2)], "NVIDIA TEST GPU", "16G")


def write_config(folder, profiles: list[dict], extra: str = "") -> None:
    write_command_config(folder, GPUS, profiles, extra)


def gpuspawner(folder, *args: str, timeout: float = 120, engine_at: str = "") -> tuple[int, str, str, float]:
    """Run the command in ``folder`` (where the hub's config is); (exit status, stdout, stderr, seconds).

    ``engine_at``: the DOCKER_HOST it is given (default: the test bed's engine). The
    seconds are for printing: how long commands take is measured by
    ``benchmarks/cli.py``, never asserted here.
    """
    done, seconds = run_command(folder, args, engine_at=engine_at, timeout=timeout)
    return done.returncode, done.stdout, done.stderr, seconds


def check_image(folder, image: str, *options: str) -> tuple[int, str, str, float]:
    """``gpuspawner image check IMAGE [OPTIONS]`` in ``folder``, as ``gpuspawner`` returns it."""
    return gpuspawner(folder, "image", "check", image, *options)


def line(out: str, *words: str) -> str:
    """The one output line that has all of ``words``."""
    found = [ln for ln in out.splitlines() if all(w in ln for w in words)]
    assert len(found) == 1, f"expected one line with {words}, got {found} in:\n{out}"
    return found[0]


def finding(out: str, level: str, subject: str, *words: str) -> str:
    """The one finding line of ``level`` and ``subject`` (that also has all of ``words``)."""
    start = re.compile(rf"^\s*{level}\s+{re.escape(subject)}\s\s")
    found = [ln for ln in out.splitlines() if start.match(ln) and all(w in ln for w in words)]
    assert len(found) == 1, f"expected one {level} {subject} line with {words}, got {found} in:\n{out}"
    return found[0]


def no_probe_left(image: str) -> None:
    left = engine().containers.list(all=True, filters={"label": probe.CLI_LABEL, "ancestor": image})
    assert not left, f"check containers left behind: {[c.name for c in left]}"
    volumes = engine().volumes.list(filters={"label": f"{server_start.CHECKED_IMAGE_LABEL}={image}"})
    assert not volumes, f"home volumes of checked servers left behind: {[v.name for v in volumes]}"


# --- image check


def test_the_test_bed_image_passes(images, no_profiles):
    status, out, err, _ = check_image(no_profiles, images["base"])
    assert status == 0, out + err
    assert "JupyterHub 6.1.1 (the hub runs 6.1.1)" in finding(out, "ok", "jupyterhub-singleuser")
    assert "jovyan (uid 1000), home /home/jovyan" in finding(out, "ok", "user")
    assert "Python 3.11" in finding(out, "ok", "python")
    assert "JupyterLab" in finding(out, "ok", "jupyterlab")
    assert "none of torch, tensorflow, jax installed" in out
    assert "MiB" in finding(out, "ok", "size")
    # started as the hub starts it, and it answered (how long it takes: benchmarks/cli.py)
    assert f"{images['base']}: starting its server as the hub would: jupyterhub-singleuser (the image's CMD)" in out
    started = finding(out, "ok", "start", "the server answered on port 8888 after")
    assert "(a new home volume at /home/jovyan, no network, no GPU)" in started
    assert line(out, "verdict:").startswith("verdict: OK")
    no_probe_left(images["base"])


def test_a_server_that_does_not_start_fails_with_its_log(images, no_profiles):
    status, out, err, _ = check_image(no_profiles, images["broken-server"])
    assert status == 1, out + err
    assert "JupyterHub 6.1.1" in finding(out, "ok", "jupyterhub-singleuser")  # reading the image finds nothing
    failed = finding(out, "fail", "start", "jupyterhub-singleuser (the image's CMD) exited with status 1")
    assert "-> fix: fix what the server's log below says" in failed
    log = out[out.index("the last lines of the server's log:") :]
    assert "ModuleNotFoundError: No module named 'tornado'" in log
    assert line(out, "verdict:").startswith("verdict: FAIL (1 failure")
    no_probe_left(images["broken-server"])


def test_the_cuda_image_passes_with_a_warning(images, no_profiles):
    status, out, err, _ = check_image(no_profiles, images["cuda"])
    assert status == 0, out + err
    assert "declared 12.4.1; found none" in finding(out, "warn", "cuda")
    assert "verdict: OK (1 warning)" in out


def test_an_image_without_jupyterhub_singleuser_fails(images, no_profiles):
    status, out, err, _ = check_image(no_profiles, images["nosu"])
    assert status == 1, out + err
    assert "not found on the image's PATH" in finding(out, "fail", "jupyterhub-singleuser")
    assert "-> fix: install jupyterhub==6.1.1" in out
    assert line(out, "verdict:").startswith("verdict: FAIL (1 failure")
    no_probe_left(images["nosu"])


def test_a_root_image_fails_unless_allowed(images, no_profiles):
    status, out, _, _ = check_image(no_profiles, images["root"])
    assert status == 1
    assert "runs as root" in finding(out, "fail", "user")
    # Any hub option can be set for one run, over the config file.
    status, out, _, _ = check_image(no_profiles, images["root"], "--GPUSpawner.allow_root=True")
    assert status == 0, out
    assert "allowed by c.GPUSpawner.allow_root" in finding(out, "warn", "user")
    assert "a new home volume at /root" in finding(out, "ok", "start")


def test_a_cuda_newer_than_the_driver_fails(images, no_profiles):
    status, out, _, _ = check_image(no_profiles, images["cu128"])  # the config's driver: CUDA 12.4
    assert status == 1, out
    refusal = finding(out, "fail", "cuda")
    assert "needs CUDA 12.8, but this host's NVIDIA driver supports up to CUDA 12.4" in refusal
    assert "(CUDA 12.8 needs >= 570)" in refusal
    status, out, _, _ = check_image(no_profiles, images["cu128"], "--GPUSpawner.driver_cuda_version=12.8")
    assert status == 0, out


def test_frameworks_are_imported_in_the_image(images, no_profiles):
    status, out, err, _ = check_image(no_profiles, images["frameworks"])
    assert status == 1, out + err
    assert "torch 2.5.1+cu124, built for CUDA 12.4" in finding(out, "ok", "torch")
    broken = finding(out, "fail", "tensorflow")
    assert "`import tensorflow` fails: ImportError: libcudart.so.11.0: cannot open shared object file" in broken
    cuda = finding(out, "ok", "cuda")
    assert "declared 12.4; found libcudart 12.4.127, torch built for CUDA 12.4" in cuda
    assert "supports up to CUDA 12.4" in cuda


def test_every_profiles_image(images, hub_dir):
    profiles = [
        # a CPU profile: its image's CUDA is not compared with the driver's
        {"slug": "cpu", "display_name": "CPU", "image": images["cu128"]},
        {"slug": "gpu", "display_name": "GPU", "image": images["cuda"], "gpus": 1},
        {"slug": "gpu-too", "display_name": "GPU too", "image": images["cuda"], "gpus": 1},
    ]
    write_config(hub_dir, profiles)
    status, out, err, _ = gpuspawner(hub_dir, "image", "check", "--profiles")
    assert status == 0, out + err
    assert f"{images['cu128']} (profiles cpu): running the check" in out
    assert f"{images['cuda']} (profiles gpu, gpu-too): running the check" in out  # each image once
    assert "only CPU profiles use this image" in out
    assert "2 images: 2 OK, 0 FAIL" in out

    write_config(hub_dir, [{**profiles[0], "gpus": 1}, profiles[1]])
    status, out, _, _ = gpuspawner(hub_dir, "image", "check", "--profiles")
    assert status == 1 and "2 images: 1 OK, 1 FAIL" in out


# --- doctor


def nvml_answers() -> bool:
    try:
        discover()
    except NVMLUnavailable:
        return False
    return True


@pytest.fixture
def srv():
    """A folder of mount roots the servers' users may reach (pytest's own temporary folders are
    mode 700: uid 1000 could not pass them), removed after."""
    root = Path(tempfile.mkdtemp(prefix=f"gpuspawner-cli-e2e-{RUN}-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def folder(path: Path, mode: int = 0o755, owner: tuple[int, int] = (0, 0), files: int = 1) -> Path:
    path.mkdir(parents=True)
    for n in range(files):
        (path / f"part-{n}.csv").write_text("x,y\n1,2\n")
    os.chown(path, *owner)
    path.chmod(mode)
    return path


def no_look_left() -> None:
    left = engine().containers.list(all=True, filters={"label": f"{probe.CLI_LABEL}=doctor-mounts"})
    assert not [c for c in left if RUN in str(c.attrs.get("Mounts"))], "doctor's look containers left behind"


def test_doctor_on_the_test_bed(images, hub_dir, srv):
    data = folder(srv / "mnist")
    share = f"gpuspawner-cli-e2e-missing-{RUN}"  # never created: Docker would make it empty
    profiles = [
        {
            "slug": "cpu",
            "display_name": "CPU",
            "image": images["base"],
            "datasets": [{"name": "mnist", "source": str(data)}],
        },
        {
            "slug": "gpu",
            "display_name": "GPU",
            "image": images["cuda"],
            "gpus": 1,
            "shares": [{"name": "ml101", "source": share}],  # read-only for all: a missing one only warns
        },
    ]
    write_config(
        hub_dir, profiles, f"c.GPUSpawner.mount_roots = [{str(data)!r}]\nc.GPUSpawner.mount_volumes = [{share!r}]\n"
    )
    status, out, err, _ = gpuspawner(hub_dir, "doctor")
    assert status == 0, out + err
    assert "jupyterhub_config.py loads; the hub's spawner is gpuspawner" in finding(out, "ok", "config")
    assert "2 profile(s) valid, images pinned: cpu, gpu" in finding(out, "ok", "profiles")
    assert "(API 1." in finding(out, "ok", "docker") and docker_host() in out
    # The test engine runs with the test double of the NVIDIA hook on its PATH (see TESTBED.md).
    gpu_mode = (TESTBED / "gpu").read_text().strip()
    if gpu_mode in ("fake", "real"):
        assert "the engine accepts GPU requests" in finding(out, "ok", "toolkit")
    else:
        assert "refuses GPU requests" in finding(out, "warn", "toolkit")
    if not nvml_answers():
        assert "NVML" in finding(out, "warn", "nvml") and "install the NVIDIA driver" in out
    assert "2 unit(s) from the list in c.GPUSpawner.gpus" in finding(out, "ok", "gpus")
    assert "1 whole GPU: 2 unit(s) fit" in finding(out, "ok", "profile gpu")
    assert f"{images['cuda']} is present" in finding(out, "ok", "image", images["cuda"])
    assert f"host path {data} is there, not empty, readable by uid 1000 (jovyan)" in finding(out, "ok", "dataset mnist")
    assert f"volume {share} is missing: Docker creates it empty on first use" in finding(out, "warn", "share ml101")
    assert line(out, "verdict:").startswith("verdict: OK (")
    for image in (images["base"], images["cuda"]):
        no_probe_left(image)
    with pytest.raises(docker.errors.NotFound):
        engine().volumes.get(share)  # looked for, never made


def test_doctor_judges_datasets_and_shares_as_the_servers_user_where_the_hub_runs(images, srv, hub_dir):
    """In the hub's container the mount roots may not be there at all: doctor asks the engine. Here it
    runs where they are hidden (a mount namespace with an empty folder over them), the config named by
    GPUSPAWNER_CONFIG as the hub's image does, and the profile's image from an unset variable's default."""
    folder(srv / "data" / "good")
    secret = folder(srv / "data" / "secret", mode=0o700)  # root's, mode 700
    empty = folder(srv / "data" / "empty", files=0)
    locked = folder(srv / "courses" / "locked", files=0)  # root's: uid 1000 cannot write
    folder(srv / "courses" / "open", owner=(1000, 100), files=0)
    new = srv / "courses" / "new"  # not there: Docker would make it root's
    image_variable = f"GPUSPAWNER_E2E_LAB_IMAGE_{RUN}"
    profiles = [
        {
            "slug": "ml101",
            "display_name": "ML 101",
            "image": "replaced-below:1",
            "datasets": [{"name": n, "source": str(srv / "data" / n)} for n in ("good", "secret", "empty")],
            "shares": [
                {"name": n, "source": str(srv / "courses" / n), "writable_by": ["teachers"]}
                for n in ("locked", "open", "new")
            ],
        }
    ]
    config_dir = hub_dir  # not under the hidden roots
    write_config(
        config_dir,
        profiles,
        f"""
        import os
        c.GPUSpawner.mount_roots = [{str(srv)!r}]
        c.GPUSpawner.profiles[0]["image"] = os.environ.get({image_variable!r}, {images["base"]!r})
        """,
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != image_variable},
        "DOCKER_HOST": docker_host(),
        "PYTHONPATH": str(REPO),
        "GPUSPAWNER_CONFIG": str(config_dir / "jupyterhub_config.py"),
    }
    hidden = f'mount -t tmpfs gpuspawner-e2e {srv} && test ! -e {srv}/data && exec "$@"'
    started = time.monotonic()
    done = subprocess.run(
        ["unshare", "--mount", "--", "sh", "-c", hidden, "sh", sys.executable, "-m", "gpuspawner.cli", "doctor"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"\ndoctor with 6 mounts: {time.monotonic() - started:.1f} s")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert finding(out, "warn", "environment").startswith(
        f"warn  environment      profile ml101 runs {images['base']}, from the default the config gives"
        f" {image_variable}, which is not set here: the hub, where it is set, may run another image,"
        " so doctor may be checking another image than the hub  -> fix: export"
    )
    assert f"host path {srv}/data/good is there, not empty, readable by uid 1000 (jovyan)" in finding(
        out, "ok", "dataset good"
    )
    who = f"uid 1000 (jovyan) of image {images['base']}"
    assert finding(out, "fail", "dataset secret").endswith(
        f"host path {secret} is not readable by {who} (owned by 0:0, mode 700): its servers would get"
        f" 'Permission denied'  -> fix: chmod -R a+rX {secret}"
    )
    assert finding(out, "fail", "dataset empty").endswith(
        f"host path {empty} is empty: students would see an empty folder (profile ml101)"
        f"  -> fix: cp -a /path/to/the/data/. {empty}/ && chmod -R a+rX {empty}"
    )
    assert finding(out, "fail", "share locked").endswith(
        f"host path {locked} is not writable by {who} (owned by 0:0, mode 755), though writable_by lets teachers"
        f" write it (profile ml101)  -> fix: chown -R 1000:1000 {locked}"
    )
    assert "writable by uid 1000 (jovyan) for writable_by teachers" in finding(out, "ok", "share open")
    assert finding(out, "fail", "share new").endswith(
        f"host path {new} is missing: Docker would create it empty and owned by root, and uid 1000 (jovyan) could"
        f" not write it (writable_by teachers, profile ml101)  -> fix: mkdir -p {new} && chown 1000:1000 {new}"
    )
    assert line(out, "verdict:").startswith("verdict: FAIL (4 failures")
    assert not new.exists() and not any(locked.iterdir())  # looked at, nothing made or written
    no_look_left()


def test_doctor_refuses_to_judge_no_config(tmp_path):
    status, out, err, _ = gpuspawner(tmp_path, "doctor")
    assert (status, out) == (2, "")
    assert err.startswith(f"gpuspawner: no hub config: there is no jupyterhub_config.py in {tmp_path}")
    assert "gpuspawner doctor -f /etc/jupyterhub/jupyterhub_config.py" in err and "--defaults" in err


def test_doctor_fails_with_the_fixes(images, hub_dir):
    profiles = [
        {
            "slug": "cpu",
            "display_name": "CPU",
            "image": images["root"],
            "datasets": [{"name": "gone", "source": f"/nonexistent/gpuspawner-{RUN}"}],
        },
        {"slug": "gpu", "display_name": "GPU", "image": images["cu128"], "gpus": 1},
        {"slug": "big", "display_name": "Big", "image": f"{REPOSITORY}:never-built-{RUN}", "gpus": 3},
    ]
    write_config(hub_dir, profiles, 'c.GPUSpawner.mount_roots = ["/nonexistent"]\n')
    status, out, err, _ = gpuspawner(hub_dir, "doctor")
    assert status == 1, out + err
    assert "runs as root" in finding(out, "fail", "image", images["root"])
    assert "needs CUDA 12.8" in finding(out, "fail", "image", images["cu128"])
    assert "pull_policy is 'never'" in finding(out, "fail", "image", "never-built")
    assert "asks for 3 whole GPUs, and only 2 fit" in finding(out, "fail", "profile big")
    assert "students would see an empty folder" in finding(out, "fail", "dataset gone")
    assert all("-> fix:" in ln for ln in out.splitlines() if ln.startswith("fail"))
    assert line(out, "verdict:").startswith("verdict: FAIL (5 failures")


def test_doctor_with_a_broken_config(hub_dir):
    write_config(hub_dir, [{"slug": "gpu", "display_name": "GPU", "image": "lab:latest"}])
    status, out, _, _ = gpuspawner(hub_dir, "doctor")
    assert status == 1
    assert "uses the tag 'latest'" in finding(out, "fail", "profiles")
    assert "Docker" in finding(out, "ok", "docker")  # the host is still checked


def test_an_engine_without_the_nvidia_hook_is_recognised(images):
    """What doctor sees on a host with no toolkit: dockerd's refusal (a capability no driver has)."""
    client = docker.APIClient(base_url=docker_host(), version="auto")
    refusal = probe.gpu_request_refusal(client, images["base"], capabilities=(("gpuspawner-e2e-none",),))
    assert refusal.startswith('could not select device driver "" with capabilities: [[gpuspawner-e2e-none]]')
    no_probe_left(images["base"])


# --- status


@pytest.fixture
def running_server(images):
    """A container labelled as gpuspawner labels a server holding GPU 1 (it runs `sleep`)."""
    user = f"cli-e2e-{RUN}"
    container = engine().containers.run(
        images["base"],
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels={  # as gpuspawner.labels.server_labels writes them: lists as JSON arrays
            "gpuspawner.user": user,
            "gpuspawner.server": "exp",
            "gpuspawner.profile": "gpu",
            "gpuspawner.gpus": json.dumps([GPUS[1]["uuid"]], separators=(",", ":")),
            "gpuspawner.shared": "",
            "gpuspawner.groups": json.dumps(["ml101"], separators=(",", ":")),
        },
        name=f"gpuspawner-cli-e2e-{RUN}",
    )
    try:
        yield user, container
    finally:
        container.remove(force=True)


def test_status_shows_who_holds_which_gpu(images, hub_dir, running_server):
    user, container = running_server
    write_config(hub_dir, [{"slug": "gpu", "display_name": "GPU", "image": images["base"], "gpus": 1}])
    status, out, err, _ = gpuspawner(hub_dir, "status", "--json")
    assert status == 0, out + err
    data = json.loads(out)
    assert data["inventory"]["source"] == "static"
    units = {u["id"]: u for u in data["units"]}
    assert units[GPUS[0]["uuid"]]["free"] is True
    held = units[GPUS[1]["uuid"]]
    assert held["free"] is False and held["model"] == "NVIDIA TEST GPU" and held["memory"] == 16 * 1024**3
    assert held["holders"] == [
        {"user": user, "server": "exp", "profile": "gpu", "container": container.name, "shared": False}
    ]

    status, out, err, _ = gpuspawner(hub_dir, "status")
    assert status == 0, out + err
    row = line(out, GPUS[1]["uuid"])
    assert f"{user}/exp" in row and "gpu" in row and "NVIDIA TEST GPU" in row and "16 GiB" in row
    assert "free" in line(out, GPUS[0]["uuid"])


def test_status_at_80_columns_cuts_nothing(images, hub_dir, running_server, monkeypatch):
    user, _ = running_server
    write_config(hub_dir, [{"slug": "gpu", "display_name": "GPU", "image": images["base"], "gpus": 1}])
    monkeypatch.setenv("COLUMNS", "80")  # piped: as wide as COLUMNS says
    status, out, err, _ = gpuspawner(hub_dir, "status")
    assert status == 0, out + err
    short = [f"{u['uuid'][:12]}…{u['uuid'][-4:]}" for u in GPUS]
    assert line(out, short[1]) == f"GPU 1  {short[1]}  NVIDIA TEST GPU  16 GiB: {user}/exp (profile gpu)"
    assert line(out, short[0]).endswith(": free")
    assert "(ids shortened: `gpuspawner status --json` prints them whole)" in out
