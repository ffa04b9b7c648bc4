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

The registry is the tests' shared one (``lab_registry`` in ``conftest.py``): the test
bed image's layers are pushed to it once per run at most, by whichever module pushes first. Every image and container made here is this run's, and removed at the end.
"""

from __future__ import annotations

import io
import re
import secrets
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker.errors
import jupyterhub
import pytest

from gpuspawner.images import PASSWD_LABEL

from .realhub import (
    TESTBED,
    MissingTestbed,
    engine,
    read_testbed,
    running_hub,
    simulated_gpus,
    write_command_config,
)
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
def lab(tmp_path_factory, lab_registry, no_docker_config):  # noqa: F811 - the fixture
    """The lab's registry, the hub's folder (its config as the admin wrote it), and this run's images."""
    made: list[str] = []
    address, _ = lab_registry
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
def hub(lab, class_image, root_images, teacher_walk, broken_command_image, tmp_path_factory):
    """The admin's hub: the class profile pinned by digest, profiles of root images, and of the images
    the tutorial's walk built (the class image, and the same with CMD ["python3"])."""
    _, digest = class_image
    profiles = [
        {"slug": "walk", "display_name": "Walk", "image": teacher_walk["image"], "gpus": 1},
        {"slug": "walk-python3", "display_name": "Walk, python3", "image": broken_command_image, "gpus": 1},
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


def test_the_hub_fails_the_image_whose_command_is_python3_at_once_then_starts_the_built_one(hub, teacher_walk):
    """Issue 18: what `image check` failed fails on the hub too, at once (no HTTP 500, no wait of
    http_timeout), holding nothing; what it passed starts, on the same GPU."""
    began = time.monotonic()
    r = hub.start_server(STUDENT, "walk-python3")
    took = time.monotonic() - began
    assert r.status_code == 424, r.text
    message = r.json()["message"]
    assert re.match(r"Your server('s command, python3, is not a Jupyter server| exited with status 0)", message)
    assert 'CMD ["jupyterhub-singleuser"]' in message, message
    assert took < 10, took  # within JupyterHub's slow_spawn_timeout: the REST request itself says it failed
    assert hub.server_model(STUDENT) is None
    hub.spawn(STUDENT, "walk")  # the hub's one GPU is free again
    assert hub.container(STUDENT).attrs["Config"]["Image"] == teacher_walk["image"]
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


# --- the tutorial's walk (docs/tutorials/teacher.md, sections 2 and 3), replayed in its order
#
# A root base stands in for pytorch/pytorch: Python and pip, no JupyterHub, no student user, CMD ["python3"].
# Builds here reach no package index (the index the tutorial's pip download uses is the test bed's wheel
# cache, given as --find-links); a build without --wheels is given --network none, so that it fails the same
# way on any machine. Reusable by a hub test: the fixtures teacher_walk ("image": the class image it built)
# and broken_command_image (the same image with CMD ["python3"]).

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "teacher.md"
TUTORIAL_BASE = "registry.example.edu/bases/pytorch-cuda12.4:2.5.1"
TUTORIAL_TAG = "registry.example.edu/ml101-cuda:2026.1"
STAND_IN_FOR_PYTORCH = (
    "USER root\n"
    "RUN /opt/venv/bin/python3 -m pip uninstall -y -q jupyterhub && userdel -r jovyan\n"
    "ENV HOME=/root\nWORKDIR /workspace\n"
    'CMD ["python3"]'
)
HUB_VERSION = jupyterhub.__version__


def tutorial_commands() -> list[str]:
    """The `gpuspawner image ...` and `pip download ...` commands of the tutorial's sections 2 and 3, in its
    order, each once (the prompt dropped, continuation lines joined)."""
    text = TUTORIAL.read_text()
    text = text[text.index("## 2. ") : text.index("## 4. ")]
    commands: list[str] = []
    console, current = False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            console = raw.strip() == "```console"
            continue
        if not console:
            continue
        if current:
            current += " " + raw.strip()
        elif raw.startswith(("$ ", "# ")):
            current = raw[2:].strip()
        if current and not current.endswith("\\"):
            commands.append(" ".join(current.replace("\\ ", " ").split()))
            current = ""
    wanted = [c for c in commands if c.startswith(("gpuspawner image", "pip download"))]
    return list(dict.fromkeys(wanted))


def wheel_cache() -> Path:
    """The test bed's wheels of the hub's JupyterHub and its dependencies (testbed.sh fetched them)."""
    for folder in sorted((TESTBED / "cache").glob("wheels-*")):
        if any(folder.glob(f"jupyterhub-{HUB_VERSION}-*.whl")):
            return folder
    raise MissingTestbed(f"no wheels of jupyterhub {HUB_VERSION} under {TESTBED / 'cache'}: run testbed.sh image")


def replay(teacher: Path, command: str, names: dict[str, str]) -> tuple[int, str, str, float]:
    """Run one of the tutorial's commands in the teacher's folder, with the test's names for its names."""
    for theirs, ours in names.items():
        command = command.replace(theirs, ours)
    words = shlex.split(command)
    if words[0] == "pip":  # the index: the test bed's wheel cache
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", *words, "--no-index", "--find-links", str(wheel_cache())],
            cwd=teacher,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout, done.stderr, time.monotonic() - started
    if words[1:3] == ["image", "build"] and "--wheels" not in words:
        words += ["--network", "none"]  # no index from inside builds, on any machine
    return gpuspawner(teacher, *words[1:], timeout=600)


@pytest.fixture(scope="module")
def teacher_walk(tmp_path_factory):
    """The tutorial's commands, run by a teacher with no hub config, from the stand-in base. Their results
    by step; "image": the class image built (removed at the end, with the base)."""
    base = f"{REPOSITORY}-local:pytorch-stand-in-{RUN}"
    image = f"{REPOSITORY}-local:ml101-walk-{RUN}"
    build(base, STAND_IN_FOR_PYTORCH)
    teacher = tmp_path_factory.mktemp("teacher-walk")
    # The tutorial's requirements list, cut to what the test bed's wheel cache has.
    (teacher / "requirements.txt").write_text(f"jupyterhub=={HUB_VERSION}\n")
    (teacher / "mnist-small").mkdir()
    (teacher / "mnist-small" / "labels.csv").write_text("id,label\n1,7\n")
    names = {TUTORIAL_BASE: base, TUTORIAL_TAG: image}
    steps = {"commands": tutorial_commands(), "base": base, "image": image, "teacher": teacher, "names": names}
    try:
        for i, command in enumerate(steps["commands"]):
            steps[i] = replay(teacher, command, names)
            print(f"\n{command}: {steps[i][3]:.1f} s")
        yield steps
    finally:
        remove_image(image)
        remove_image(base)


def test_the_tutorial_walks_build_wheels_build_check(teacher_walk):
    assert teacher_walk["commands"] == [
        f"gpuspawner image build --base {TUTORIAL_BASE} --tag {TUTORIAL_TAG} --requirements requirements.txt"
        " --data ./mnist-small",
        f"pip download -d wheels -r requirements.txt jupyterhub=={HUB_VERSION}",
        f"gpuspawner image build --base {TUTORIAL_BASE} --tag {TUTORIAL_TAG} --requirements requirements.txt"
        " --data ./mnist-small --wheels wheels",
        f"gpuspawner image check {TUTORIAL_TAG}",
    ]


def test_a_build_that_reaches_no_index_quotes_pip_and_names_the_wheels_route(teacher_walk):
    status, out, err, _ = teacher_walk[0]
    assert status == 1, out + err
    assert "the base has no jupyterhub-singleuser: installing jupyterhub" in finding(out, "ok", "jupyterhub")
    assert 'setting CMD ["jupyterhub-singleuser"]' in finding(out, "ok", "command")
    finding(
        out, "fail", "pip", f"ERROR: Could not find a version that satisfies the requirement jupyterhub=={HUB_VERSION}"
    )
    hint = finding(out, "fail", "pip", f"ERROR: No matching distribution found for jupyterhub=={HUB_VERSION}")
    assert "-> fix: pip in the build could not reach the package index (a network error)" in hint
    # The command it prints is the tutorial's next one, which the walk ran.
    assert f"`{teacher_walk['commands'][1]}`, then add `--wheels wheels` to this command" in hint
    assert line(out, "verdict:") == (
        f"verdict: FAIL: the build of {teacher_walk['image']} failed: pip: ERROR: No matching distribution found"
        f" for jupyterhub=={HUB_VERSION}"
    )
    assert "\x1b" not in out and "[0m" not in out and "[91m" not in out  # Docker's colours, in a pipe: gone
    assert teacher_walk[1][0] == 0, teacher_walk[1][1] + teacher_walk[1][2]
    assert any((teacher_walk["teacher"] / "wheels").glob(f"jupyterhub-{HUB_VERSION}-*.whl"))


def test_the_wheels_route_builds_an_image_whose_server_starts(teacher_walk):
    status, out, err, took = teacher_walk[2]
    print(f"\nimage build --wheels, its check included: {took:.1f} s")
    assert status == 0, out + err
    assert "building" in line(out, "pip from wheels only")
    assert f"Successfully installed jupyterhub-{HUB_VERSION}" in out
    assert "the base runs python3 (the image's CMD): setting CMD" in finding(out, "ok", "command")
    assert "jupyterhub-singleuser (the image's CMD)" in line(out, "starting its server as the hub would")
    assert "the server answered on port 8888" in finding(out, "ok", "start")
    assert line(out, "verdict:") == f"verdict: OK: {teacher_walk['image']} can start under this hub"
    config = engine().api.inspect_image(teacher_walk["image"])["Config"]
    assert config["Cmd"] == ["jupyterhub-singleuser"] and config["User"] == "1000"  # as the tutorial's Dockerfile


def test_the_check_of_the_built_image_starts_it(teacher_walk):
    status, out, err, took = teacher_walk[3]
    print(f"\nimage check, the start included: {took:.1f} s")
    assert status == 0, out + err
    assert "jovyan (uid 1000), home /home/jovyan" in finding(out, "ok", "user")
    assert "(a new home volume at /home/jovyan, no network, no GPU)" in finding(out, "ok", "start")
    assert line(out, "verdict:") == f"verdict: OK: {teacher_walk['image']} can start under this hub"
    no_probe_left(teacher_walk["image"])


def test_mistake_an_image_without_jupyterhub_singleuser(teacher_walk):
    status, out, err, _ = gpuspawner(teacher_walk["teacher"], "image", "check", teacher_walk["base"])
    assert status == 1, out + err
    assert "not found on the image's PATH" in finding(out, "fail", "jupyterhub-singleuser")
    assert f"-> fix: install jupyterhub=={HUB_VERSION} in the image" in out
    assert "start" not in [ln.split()[1] for ln in out.splitlines() if ln.startswith("  ")]  # nothing to start
    assert "jupyterhub-singleuser  not found on the image's PATH" in TUTORIAL.read_text()


def test_mistake_a_data_folder_that_does_not_exist(teacher_walk):
    command = teacher_walk["commands"][2].replace("--data ./mnist-small", "--data ./nope")
    status, out, err, _ = replay(teacher_walk["teacher"], command, teacher_walk["names"])
    assert status == 2 and not out
    assert "gpuspawner image build: --data ./nope: no such dir" in err
    assert "`--data ./nope: no such dir`" in TUTORIAL.read_text()


def test_mistake_a_misspelled_package(teacher_walk):
    teacher = teacher_walk["teacher"]
    (teacher / "requirements-typo.txt").write_text(f"jupyterhub=={HUB_VERSION}\njupyterhubb=={HUB_VERSION}\n")
    command = teacher_walk["commands"][2].replace("requirements.txt", "requirements-typo.txt")
    names = {**teacher_walk["names"], TUTORIAL_TAG: f"{REPOSITORY}-local:typo-walk-{RUN}"}  # never built
    status, out, err, _ = replay(teacher, command, names)
    assert status == 1, out + err
    hint = finding(out, "fail", "pip", f"ERROR: No matching distribution found for jupyterhubb=={HUB_VERSION}")
    assert f"-> fix: jupyterhubb=={HUB_VERSION} is not among the wheels: a misspelled name or version?" in hint
    assert "make the wheels again: `pip download -d wheels -r requirements-typo.txt" in hint
    assert "verdict: FAIL: the build of" in line(out, "verdict:")
    assert "a misspelled name or version?" in TUTORIAL.read_text()


@pytest.fixture(scope="module")
def broken_command_image(teacher_walk):
    """The class image with a command that is not a Jupyter server's (a Dockerfile ending in CMD ["python3"])."""
    tag = f"{REPOSITORY}-local:cmd-python3-{RUN}"
    dockerfile = f'FROM {teacher_walk["image"]}\nCMD ["python3"]\nLABEL gpuspawner.e2e={RUN}\n'.encode()
    engine().images.build(fileobj=io.BytesIO(dockerfile), tag=tag, network_mode="none", rm=True)
    try:
        yield tag
    finally:
        remove_image(tag)


def test_a_broken_command_fails_the_check_with_its_message(teacher_walk, broken_command_image):
    status, out, err, _ = gpuspawner(teacher_walk["teacher"], "image", "check", broken_command_image)
    assert status == 1, out + err
    warned = finding(out, "warn", "command", "the hub runs python3 (the image's CMD): not a Jupyter server's command")
    assert '-> fix: CMD ["jupyterhub-singleuser"] in the Dockerfile (or set c.Spawner.cmd)' in warned
    failed = finding(out, "fail", "start", "python3 (the image's CMD) exited with status 0")
    assert "without answering, and wrote nothing to its log: students' spawns on the hub would fail" in failed
    assert line(out, "verdict:").startswith(f"verdict: FAIL (1 failure, 1 warning): {broken_command_image} will not")
    assert "the hub runs python3 (the image's CMD): not a Jupyter server's command" in TUTORIAL.read_text()
    no_probe_left(broken_command_image)
