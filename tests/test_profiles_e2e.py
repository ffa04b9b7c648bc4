"""Course profiles on the real hub, proxy and engine: who sees what, tampering,
datasets and shares, hardening, and a profiles file edited while the hub runs."""

from __future__ import annotations

import json
import secrets
import textwrap

import pytest

from .realhub import RealHub, engine, read_testbed, require_tools, running_hub

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
STUDENT, TEACHER, OTHER = f"sam-{RUN}", f"tess-{RUN}", f"olga-{RUN}"
GPU = "GPU-c0000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    dataset = root / "mnist"
    dataset.mkdir()
    (dataset / "README").write_text("60000 digits\n")
    share = root / "share"
    share.mkdir()
    share.chmod(0o777)  # the admin makes the share writable for the containers' user
    profiles = root / "profiles.yaml"
    return {"root": root, "dataset": dataset, "share": share, "profiles": profiles}


def write_profiles(path, image, extra=""):
    path.write_text(
        textwrap.dedent(
            f"""\
            profiles:
            - slug: open
              display_name: Open lab
              image: {image}
              mem_limit: 512M
            - slug: ml101
              display_name: ML 101
              image: {image}
              gpus: 1
              groups: [ml101, teachers]
              mem_limit: 512M
              environment: {{COURSE: ml101}}
              datasets:
              - {{name: mnist, source: "{path.parent / "mnist"}"}}
              shares:
              - {{name: ml101, source: "{path.parent / "share"}", writable_by: [teachers]}}
            - slug: cv
              display_name: Computer vision
              image: {image}
              groups: [cv]
            - slug: newcuda
              display_name: Newest PyTorch
              image: {read_testbed("image-cuda")}
              gpus: 1
              groups: [ml101]
            """
        )
        + textwrap.dedent(extra)
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory, paths):
    image = read_testbed("image")
    write_profiles(paths["profiles"], image)
    config = f"""
    c.GPUSpawner.profiles_file = {str(paths["profiles"])!r}
    c.GPUSpawner.mount_roots = [{str(paths["root"])!r}]  # the course's dataset and share, nothing else
    c.GPUSpawner.gpus = [{{"index": 0, "uuid": {GPU!r}, "name": "Tesla T4", "memory": "16G"}}]
    c.GPUSpawner.driver_cuda_version = "12.2"  # older than the CUDA image's 12.4
    c.JupyterHub.load_groups = {{
        "ml101": {{"users": [{STUDENT!r}]}},
        "teachers": {{"users": [{TEACHER!r}]}},
    }}
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:
        yield h


def sh(container, command: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", command])
    return result.exit_code, result.output.decode()


def gpu_holders() -> list[str]:
    return [
        c.name
        for c in engine().containers.list(filters={"label": "gpuspawner.user"})
        if c.labels["gpuspawner.gpus"] and c.labels["gpuspawner.user"].endswith(RUN)
    ]


@pytest.mark.parametrize(
    "user, options, status, message",
    [
        (OTHER, {"profile": "ml101"}, 403, "profile 'ml101' is not available to you"),
        (STUDENT, {"profile": "cv"}, 403, "profile 'cv' is not available to you"),
        (STUDENT, {"profile": "nope"}, 400, "unknown profile 'nope'; choose one of: open, ml101, newcuda"),
        (STUDENT, {"profile": "ml101", "image": "evil:1"}, 400, "not allowed: image"),
        (STUDENT, {"profile": "open", "gpus": 1}, 400, "not allowed: gpus"),
        (STUDENT, {"profile": "open", "environment": {"LD_PRELOAD": "x"}}, 400, "not allowed: environment"),
        (STUDENT, {"profile": "open", "mem_limit": "64G", "cpu_limit": 16}, 400, "not allowed: cpu_limit, mem_limit"),
        (STUDENT, {"profile": "open", "volumes": {"/etc": "/mnt"}}, 400, "not allowed: volumes"),
        (STUDENT, {"profile": ["open"]}, 400, "must be a profile's slug"),
        (STUDENT, {"profile": 7}, 400, "must be a profile's slug"),
    ],
    ids=[
        "other-course",
        "not-my-course",
        "unknown",
        "image",
        "gpus",
        "environment",
        "limits",
        "mounts",
        "slug-in-a-list",
        "slug-a-number",
    ],
)
def test_tampering_over_rest_is_refused_with_nothing_started(hub, user, options, status, message):
    hub.ensure_user(user)
    r = hub.request("POST", f"/users/{user}/servers/", data=json.dumps({"user_options": options}))
    assert r.status_code == status, r.text
    assert message in r.json()["message"]
    assert hub.server_model(user) is None
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={user}"})
    assert gpu_holders() == []


@pytest.mark.parametrize(
    "query, status",
    [("opt-profile=cv", 403), ("opt-profile=nope", 400), ("opt-profile=open&opt-image=evil:1", 400)],
    ids=["not-my-course", "unknown", "image"],
)
def test_tampering_through_the_spawn_url_is_refused(hub, query, status):
    session = hub.login(STUDENT)
    r = session.get(f"{hub.url}/hub/spawn/{STUDENT}?{query}", timeout=60)
    assert r.status_code == status, r.text[-500:]
    assert hub.server_model(STUDENT) is None
    assert gpu_holders() == []


def test_students_see_only_their_courses_profiles(hub):
    page = hub.login(STUDENT).get(f"{hub.url}/hub/spawn", timeout=30).text
    assert 'value="open"' in page and 'value="ml101"' in page and 'value="cv"' not in page
    page = hub.login(OTHER).get(f"{hub.url}/hub/spawn", timeout=30)
    # one profile to choose from: no form, the server starts at once
    assert 'value="ml101"' not in page.text
    hub.wait_ready(OTHER)
    assert hub.container(OTHER).labels["gpuspawner.profile"] == "open"
    # the admin page's Profile column reads user_options.profile: the default is recorded too
    assert hub.server_model(OTHER)["user_options"] == {"profile": "open"}
    hub.stop_server(OTHER)


def test_an_image_needing_a_newer_cuda_is_refused_before_any_gpu(hub):
    r = hub.start_server(STUDENT, "newcuda")
    assert r.status_code == 400, r.text
    assert r.json()["message"] == (
        f"The image {read_testbed('image-cuda')} needs CUDA 12.4, but this host's NVIDIA driver supports"
        " up to CUDA 12.2. Ask the admin to upgrade the driver (CUDA 12.4 needs >= 550), or choose a"
        " profile with an older image."
    )
    assert hub.server_model(STUDENT) is None
    assert gpu_holders() == []


def test_student_reads_datasets_cannot_write_them_teacher_writes_the_share(hub):
    hub.spawn(STUDENT, "ml101")
    student = hub.container(STUDENT)
    assert sh(student, "id -u")[1].strip() != "0"
    assert sh(student, "cat ~/datasets/mnist/README") == (0, "60000 digits\n")
    code, out = sh(student, "touch ~/datasets/mnist/mine")
    assert code != 0 and "Read-only file system" in out
    code, out = sh(student, "touch ~/shared/ml101/answers")
    assert code != 0 and "Read-only file system" in out
    assert sh(student, "echo $COURSE")[1].strip() == "ml101"  # the profile's environment
    host = student.attrs["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["ALL"]
    assert host["PidsLimit"] == 4096
    hub.stop_server(STUDENT)

    hub.spawn(TEACHER, "ml101")
    teacher = hub.container(TEACHER)
    assert sh(teacher, "echo week1 > ~/shared/ml101/notes.txt && cat ~/shared/ml101/notes.txt") == (0, "week1\n")
    code, _ = sh(teacher, "touch ~/datasets/mnist/mine")
    assert code != 0
    hub.stop_server(TEACHER)


def exam_profile(image: str, more: str = "") -> str:
    """The exam profile a teacher adds to the profiles file (``more``: its extra lines, indented by two)."""
    return f"- slug: exam\n  display_name: Exam\n  image: {image}\n  users: [{OTHER}]\n{more}"


def test_a_profiles_file_edit_takes_effect_without_a_restart(hub, paths):
    image = read_testbed("image")
    hub_pid = hub.proc.pid
    write_profiles(paths["profiles"], image, exam_profile(image))
    hub.spawn(OTHER, "exam")
    assert hub.container(OTHER).labels["gpuspawner.profile"] == "exam"
    hub.stop_server(OTHER)
    paths["profiles"].write_text("profiles: [{slug: broken, gpus: many}]\n")  # a bad edit
    hub.spawn(OTHER, "exam")  # the last good profiles are kept
    hub.stop_server(OTHER)
    assert hub.proc.pid == hub_pid
    assert "Keeping the last good profiles" in hub.log_tail(400)
    # A teacher who mounts the host's / is refused the same way: nothing under the roots, no new profile.
    write_profiles(paths["profiles"], image, exam_profile(image, "  datasets: [{name: host, source: /}]\n"))
    hub.spawn(OTHER, "exam")  # the last good exam profile, without the host
    assert not any(m["Source"] == "/" for m in hub.container(OTHER).attrs["Mounts"])
    hub.stop_server(OTHER)
    assert (
        f"Keeping the last good profiles: {paths['profiles']}: profile 'exam': field 'datasets': host: source '/'"
        f" is not under the mount roots the admin allows (c.GPUSpawner.mount_roots: {paths['root']})"
    ) in hub.log_tail(400)


def profiles_in_effect(hub) -> str:
    """The profiles OTHER may choose, as the hub's refusal of an unknown one lists them (the file is read for it)."""
    r = hub.start_server(OTHER, "nope")
    assert r.status_code == 400, r.text
    return r.json()["message"].partition("choose one of: ")[2]


@pytest.mark.parametrize(
    "more, refusal",
    [
        (
            "  datasets: [{name: docker, source: /var/run}]\n",
            "field 'datasets': docker: source '/var/run' is not under",
        ),
        (
            "  shares: [{name: hub, source: jupyterhub-data}]\n",
            "field 'shares': hub: source 'jupyterhub-data' is not a volume the admin allows"
            " (c.GPUSpawner.mount_volumes: none, so no volume may be mounted)",
        ),
        (
            "  allow_root: true\n",
            "field 'allow_root': only the admin's config (c.GPUSpawner.profiles) may set it, not a profiles file",
        ),
        (
            "  internet: true\n",
            "field 'internet': only the admin's config (c.GPUSpawner.profiles) may set it, not a profiles file",
        ),
        (
            "  gpus: 2\n",
            "field 'gpus': asks for 2 GPUs; a profiles file may ask for at most 1 (c.GPUSpawner.profiles_file_max_gpus)",
        ),
    ],
    ids=["var-run", "unlisted-volume", "allow-root", "internet", "gpus-over-the-cap"],
)
def test_a_profiles_file_that_sets_what_only_the_admin_may_is_refused_at_load(hub, paths, more, refusal):
    """As for the host's / above: the edit is refused when the file loads, naming the profile and the field."""
    image = read_testbed("image")
    paths["profiles"].write_text("- {slug: open, display_name: Open lab, image: " + image + "}\n")
    assert profiles_in_effect(hub) == "open"
    write_profiles(paths["profiles"], image, exam_profile(image, more))
    assert profiles_in_effect(hub) == "open"  # the last good profiles: no exam
    assert f"Keeping the last good profiles: {paths['profiles']}: profile 'exam': {refusal}" in hub.log_tail(100)
    assert hub.server_model(OTHER) is None and gpu_holders() == []


def test_a_broken_profile_stops_the_hub_at_start(tmp_path):
    """With check_config(c) at the end of the config (as in the default one)."""
    require_tools()
    config = f"""
    c.GPUSpawner.profiles = [{{"slug": "ml101", "display_name": "ML 101", "image": {read_testbed("image")!r}, "gpus": "two"}}]
    from gpuspawner import check_config
    check_config(c)
    """
    hub = RealHub(tmp_path, textwrap.dedent(config))
    with pytest.raises(RuntimeError, match="jupyterhub exited") as e:
        hub.start()
    assert "profile 'ml101': field 'gpus': must be a whole number of GPUs >= 0, got 'two'" in str(e.value)
