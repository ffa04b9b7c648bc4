"""The teacher's path to a class, with no access to the hub's host, on the test bed's engine and a real hub.

The teacher builds the class image on their own machine (``gpuspawner image build``
in a folder with no hub config) and pushes it to the lab's registry (Debian's
docker-registry on loopback, ``tests/registry.py``); the local copy is removed.
The admin then runs ``gpuspawner image check <the pushed name>`` in the hub's
folder: it pulls the image, passes it, and prints the digest to pin. A profile
pinned by that digest starts on a real hub. A root image pushed the same way
(``USER 00``) is refused by the check; the hub refuses ``USER 0``, ``USER 00`` and
a second name for uid 0 before any GPU is assigned, and starts a root image only
for a profile whose ``allow_root`` the admin's config sets.

The registry keeps its blobs in ``tests.registry.CACHE`` under one fixed repository
name, so the test bed image's layer is uploaded once per machine (~30 s), not once a
run. Every image and container made here is this run's, and removed at the end.
"""

from __future__ import annotations

import io
import re
import secrets
import tarfile

import docker.errors
import pytest

from gpuspawner.images import PASSWD_LABEL

from .realhub import engine, read_testbed, running_hub, simulated_gpus, write_command_config
from .registry import CACHE, local_registry
from .test_cli_e2e import finding, gpuspawner, line, no_probe_left
from .test_pull_e2e import no_docker_config  # noqa: F401 - a fixture

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
REPOSITORY = "gpuspawner-teacher-e2e"  # fixed: the registry cache links its blobs to this name
STUDENT = f"ada-{RUN}"
# Not the student: her home volume is uid 1000's, and root without CAP_DAC_OVERRIDE could not write to it.
ROOT_USER = f"rex-{RUN}"
GPUS = simulated_gpus(["GPU-7ea00000-0000-4000-8000-000000000000"])
# uid 0 under a second name: only the image's /etc/passwd says it is root.
TOOR = "USER root\nRUN echo 'toor:x:0:0::/root:/bin/sh' >> /etc/passwd\nUSER toor"
# A root image as they come: root's own home (the test bed image's /home/jovyan is not root's, and a server
# runs without CAP_DAC_OVERRIDE), and Jupyter's --allow-root (it refuses to run as root without it).
ROOT_IMAGE = 'USER 00\nENV HOME=/root\nWORKDIR /root\nCMD ["jupyterhub-singleuser", "--allow-root"]'


def build(tag: str, lines: str) -> str:
    """``docker build`` of ``FROM <the test bed image>`` plus ``lines``, tagged ``tag``; the image id."""
    dockerfile = f"FROM {read_testbed('image')}\n{lines}\nLABEL gpuspawner.e2e={RUN}\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    image, _ = engine().images.build(fileobj=context, custom_context=True, tag=tag, network_mode="none", rm=True)
    return image.id


def push(ref: str) -> str:
    """``docker push``; the digest the registry gave the manifest."""
    digest = ""
    for event in engine().api.push(ref, stream=True, decode=True):
        assert "error" not in event, event
        digest = (event.get("aux") or {}).get("Digest", digest)
    assert digest.startswith("sha256:"), f"no digest from the push of {ref}"
    return digest


def remove_image(name: str) -> None:
    try:
        engine().images.remove(name, force=True)
    except docker.errors.ImageNotFound:
        pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory, no_docker_config):  # noqa: F811 - the fixture
    """The lab's registry, the hub's folder (its config as the admin wrote it), and this run's images."""
    made: list[str] = []
    with local_registry(tmp_path_factory.mktemp("registry"), storage=CACHE) as (address, _):
        hub_dir = tmp_path_factory.mktemp("hub")
        write_command_config(hub_dir, GPUS, [])  # pull_policy "never", as the hub's
        try:
            yield {"registry": address, "hub_dir": hub_dir, "made": made}
        finally:
            for image in made:
                remove_image(image)


@pytest.fixture(scope="module")
def class_image(lab, tmp_path_factory):
    """What the teacher does: build the class image on their own machine, push it, keep no copy on the host.

    (The name and digest the registry holds.)
    """
    ref = f"{lab['registry']}/{REPOSITORY}:ml101-{RUN}"
    teacher = tmp_path_factory.mktemp("teacher")  # their own machine: no jupyterhub_config.py
    status, out, err, took = gpuspawner(
        teacher, "image", "build", "--base", read_testbed("image"), "--tag", ref, timeout=300
    )
    print(f"\nthe teacher's image build: {took:.1f} s")
    assert status == 0, out + err
    assert "no jupyterhub_config.py" in err  # the hub's defaults: the teacher has no hub config
    assert line(out, "verdict:").startswith("verdict: OK")
    lab["made"].append(engine().images.get(ref).id)
    digest = push(ref)
    remove_image(ref)
    with pytest.raises(docker.errors.ImageNotFound):
        engine().images.get(ref)
    return ref, digest


def test_the_admin_checks_the_pushed_image_and_pins_its_digest(lab, class_image):
    ref, digest = class_image
    status, out, err, took = gpuspawner(lab["hub_dir"], "image", "check", ref)
    print(f"\nthe admin's image check (pull included): {took:.1f} s")
    assert status == 0, out + err
    assert f"{ref}: not on this engine" in line(out, "pulling it")
    assert "jovyan (uid 1000)" in finding(out, "ok", "user")
    pinned = f"{lab['registry']}/{REPOSITORY}@{digest}"
    assert finding(out, "ok", "digest").endswith(f"pin it in the profile as image: {pinned}")
    assert line(out, "verdict:") == f"verdict: OK: {ref} can start under this hub"
    assert engine().api.inspect_image(pinned)["Id"] == engine().api.inspect_image(ref)["Id"]
    no_probe_left(ref)


def test_a_root_image_pushed_the_same_way_is_refused_by_the_check(lab):
    ref = f"{lab['registry']}/{REPOSITORY}:root00-{RUN}"
    lab["made"].append(build(ref, "USER 00"))
    push(ref)
    remove_image(ref)
    status, out, err, _ = gpuspawner(lab["hub_dir"], "image", "check", ref)
    assert status == 1, out + err
    refusal = finding(out, "fail", "user")
    assert "root (uid 0) runs as root: the hub refuses root images" in refusal
    assert "-> fix: add a non-root user and end the Dockerfile with USER 1000" in refusal
    assert "digest" not in out  # nothing to pin
    assert line(out, "verdict:").startswith(f"verdict: FAIL (1 failure, 0 warnings): {ref} will not start")


@pytest.fixture(scope="module")
def root_images(lab) -> dict[str, str]:
    """Root images on the hub's engine (built there, never pushed), by the profile that names them."""
    images = {}
    for slug, lines in [("user0", "USER 0"), ("user00", "USER 00"), ("toor", TOOR), ("lab-admin", ROOT_IMAGE)]:
        images[slug] = f"{REPOSITORY}-local:{slug}-{RUN}"
        lab["made"].append(build(images[slug], lines))
    return images


@pytest.fixture(scope="module")
def hub(lab, class_image, root_images, tmp_path_factory):
    """The admin's hub: the class profile pinned by digest, and profiles of root images."""
    _, digest = class_image
    profiles = [
        {"slug": "ml101", "display_name": "ML 101", "image": f"{lab['registry']}/{REPOSITORY}@{digest}", "gpus": 1},
        {"slug": "user0", "display_name": "USER 0", "image": root_images["user0"], "gpus": 1},
        {"slug": "user00", "display_name": "USER 00", "image": root_images["user00"], "gpus": 1},
        {"slug": "toor", "display_name": "USER toor", "image": root_images["toor"], "gpus": 1},
        {"slug": "lab-admin", "display_name": "Root", "image": root_images["lab-admin"], "allow_root": True},
    ]
    config = f"""
    c.GPUSpawner.profiles = {profiles!r}
    c.GPUSpawner.gpus = {GPUS!r}
    """
    with running_hub(tmp_path_factory.mktemp("hub-run"), config, RUN) as h:
        yield h


def test_a_profile_pinned_by_the_checked_digest_starts(hub, lab, class_image):
    ref, digest = class_image
    hub.spawn(STUDENT, "ml101")
    container = hub.container(STUDENT)
    assert container.labels["gpuspawner.image-digest"] == digest  # what ran: exactly what was checked
    assert container.attrs["Config"]["Image"] == f"{lab['registry']}/{REPOSITORY}@{digest}"
    assert container.exec_run(["id", "-u"]).output.decode().strip() == "1000"
    hub.stop_server(STUDENT)


@pytest.mark.parametrize("slug, user", [("user0", "0"), ("user00", "00"), ("toor", "toor")])
def test_a_root_image_is_refused_before_any_gpu_by_any_number_or_name(hub, root_images, slug, user):
    assert engine().api.inspect_image(root_images[slug])["Config"]["User"] == user
    r = hub.start_server(STUDENT, slug)
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert re.fullmatch(r"The image \S+ runs as root\. Build it with a non-root user .*", message), message
    assert "allow root for this profile (allow_root in c.GPUSpawner.profiles)" in message
    assert hub.server_model(STUDENT) is None
    hub.refused_before_start(STUDENT)
    assert not engine().containers.list(all=True, filters={"label": PASSWD_LABEL})  # the read of /etc/passwd: gone


def test_a_profile_the_admin_allows_root_starts_a_root_image(hub):
    hub.spawn(ROOT_USER, "lab-admin")
    container = hub.container(ROOT_USER)
    assert container.attrs["Config"]["User"] == "00"
    assert container.exec_run(["id", "-u"]).output.decode().strip() == "0"
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]  # root, without its powers
    hub.stop_server(ROOT_USER)
