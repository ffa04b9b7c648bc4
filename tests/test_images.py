"""Pinned references, declared CUDA, driver refusals, digests, and the puller's own threads.

The puller runs against a fake low-level client whose ``pull`` yields a scripted
stream of the events dockerd sends; ``test_pull_e2e.py`` pulls from a real registry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docker.errors
import pytest

from gpuspawner.images import (
    ImageError,
    ImagePuller,
    PullProgress,
    check_pinned,
    cuda_refusal,
    declared_cuda,
    declared_resource_variables,
    image_digest,
    major_minor,
    passwd_uid,
    resource_variable,
    resource_variables_refusal,
    runs_as_root,
    split_reference,
    user_name_to_resolve,
)

from .fakes import not_found

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


# --- references


@pytest.mark.parametrize(
    "image, parts",
    [
        ("lab", ("lab", "", "")),
        ("lab:2026.1", ("lab", "2026.1", "")),
        ("host:5000/lab", ("host:5000/lab", "", "")),
        ("host:5000/course/lab:1.0", ("host:5000/course/lab", "1.0", "")),
        (f"lab@{DIGEST}", ("lab", "", DIGEST)),
        (f"host:5000/lab:1.0@{DIGEST}", ("host:5000/lab", "1.0", DIGEST)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_split_reference(image, parts):
    assert split_reference(image) == parts


@pytest.mark.parametrize(
    "image",
    [
        "lab:2026.1",
        "host:5000/lab:1.0",
        f"lab@{DIGEST}",
        f"lab:latest@{DIGEST}",  # the digest decides what runs
        f"host:5000/lab@{DIGEST}",
        "quay.io/jupyter/pytorch-notebook:cuda12-2025-01-06",
        "localhost/lab:Latest",  # tags are case-sensitive: not 'latest'
    ],
)
def test_pinned_images_pass(image):
    check_pinned(image)


@pytest.mark.parametrize(
    "image, message",
    [
        (
            "lab",
            r"'lab' has no tag \(which means 'latest'\).* pin a tag such as 'lab:2026.1' or a digest 'lab@sha256:...'",
        ),
        ("lab:latest", r"'lab:latest' uses the tag 'latest'.*'lab:2026.1'"),
        ("host:5000/lab", r"'host:5000/lab' has no tag.*'host:5000/lab:2026.1' or a digest 'host:5000/lab@sha256"),
        ("host:5000/lab:latest", r"uses the tag 'latest'.*'host:5000/lab:2026.1'"),
        ("quay.io/jupyter/pytorch-notebook", r"has no tag.*'quay.io/jupyter/pytorch-notebook:2026.1'"),
        ("lab@sha256:abc", r"'sha256:abc' is not a digest like 'sha256:<64 hex digits>'"),
        ("", "no repository name"),
        (":1.0", "no repository name"),
    ],
    ids=lambda v: v if isinstance(v, str) and not v.startswith(("'", "r")) else None,
)
def test_unpinned_images_are_refused_with_what_to_write(image, message):
    with pytest.raises(ImageError, match=message):
        check_pinned(image)


@pytest.mark.parametrize("image", ["lab", "lab:latest", "host:5000/lab"])
def test_unpinned_images_pass_when_allowed(image):
    check_pinned(image, allow_unpinned=True)


def test_allow_unpinned_still_refuses_a_broken_digest():
    with pytest.raises(ImageError, match="not a digest"):
        check_pinned("lab@sha256:xyz", allow_unpinned=True)


# --- declared CUDA


@pytest.mark.parametrize(
    "config, cuda",
    [
        ({"Env": ["PATH=/usr/bin", "CUDA_VERSION=12.4.1"]}, "12.4.1"),
        ({"Env": ["CUDA_VERSION=12.4.1"], "Labels": {"gpuspawner.cuda": "12.8"}}, "12.8"),  # the teacher's word wins
        ({"Labels": {"com.nvidia.cuda.version": "11.8.0"}}, "11.8.0"),
        ({"Labels": {"org.opencontainers.image.cuda": "12.6"}}, "12.6"),
        (
            {"Env": ["CUDA_VERSION=cuda12"], "Labels": {"com.nvidia.cuda.version": "12.1"}},
            "12.1",
        ),  # not a version: next
        ({"Env": ["PATH=/usr/bin"], "Labels": None}, None),
        ({"Env": None}, None),
        ({}, None),
        ({"Id": "sha256:x", "Config": {"Env": ["CUDA_VERSION=12.2.2"]}}, "12.2.2"),  # the whole inspect result
    ],
    ids=["env", "label-wins", "nvidia-label", "oci-label", "skips-junk", "none", "null-env", "empty", "inspect"],
)
def test_declared_cuda(config, cuda):
    assert declared_cuda(config) == cuda


@pytest.mark.parametrize(
    "version, expect",
    [
        ("12.4.1", (12, 4)),
        ("12", (12, 0)),
        (" 12.4 ", (12, 4)),
        ("6.0.0b1", (6, 0)),  # what pip reports of a pre-release JupyterHub
        ("5.3.0.dev0", (5, 3)),
        ("4.1.6.post1", (4, 1)),
        ("2.5.1+cu124", (2, 5)),
        ("12.4.1-cudnn", None),
        ("cuda12", None),
        ("", None),
    ],
)
def test_major_minor(version, expect):
    assert major_minor(version) == expect


# --- the host's driver


@pytest.mark.parametrize(
    "image_cuda, driver_cuda, driver_version, refused",
    [
        ("12.8", "12.4", "550.54", True),
        ("11.8", "12.4", "550.54", False),
        ("12.4.1", "12.4", "550.54", False),  # only major.minor counts
        ("12.4", "12.3", "545.23", True),  # no minor-version compatibility assumed
        ("12.8", "", "", False),  # no GPU / unknown driver: nobody can tell
        ("", "12.4", "550.54", False),  # the image declares nothing
        ("13.0", "12.9", "", True),
    ],
    ids=["12.8-on-12.4", "11.8-on-12.4", "patch-ignored", "12.4-on-12.3", "no-driver", "no-cuda", "13.0-on-12.9"],
)
def test_cuda_refusal(image_cuda, driver_cuda, driver_version, refused):
    assert (cuda_refusal("lab:2026.1", image_cuda, driver_cuda, driver_version) is not None) == refused


def test_cuda_refusal_message_names_both_versions_and_what_to_do():
    assert cuda_refusal("lab:2026.1", "12.8.0", "12.4", "550.54") == (
        "The image lab:2026.1 needs CUDA 12.8, but this host's NVIDIA driver 550.54 supports up to CUDA 12.4."
        " Ask the admin to upgrade the driver (CUDA 12.8 needs >= 570), or choose a profile with an older image."
    )


def test_cuda_refusal_without_a_known_driver_branch():
    message = cuda_refusal("lab:x", "14.2", "13.0")
    assert "this host's NVIDIA driver supports up to CUDA 13.0" in message
    assert "upgrade the driver to one that supports CUDA 14.2" in message


# --- digests


@pytest.mark.parametrize(
    "inspect, name, digest",
    [
        ({"Id": "sha256:local", "RepoDigests": [f"reg:5000/lab@{DIGEST}"]}, "", DIGEST),
        ({"Id": "sha256:local", "RepoDigests": []}, "", "sha256:local"),  # built here: its Id
        ({"Id": "sha256:local"}, "lab:1", "sha256:local"),
        (
            {"Id": "sha256:local", "RepoDigests": [f"a/lab@{DIGEST}", f"b/lab@{OTHER_DIGEST}"]},
            "b/lab:1.0",
            OTHER_DIGEST,
        ),
        ({"Id": "sha256:local", "RepoDigests": [f"a/lab@{DIGEST}"]}, "c/lab:1.0", DIGEST),  # else the first
    ],
    ids=["registry", "local", "local-no-field", "by-name", "first"],
)
def test_image_digest(inspect, name, digest):
    assert image_digest(inspect, name) == digest


# --- pull progress (pure)


def layer_events(layer: str, size: int, steps: int = 4) -> list[dict]:
    """What dockerd streams for one layer, in order."""
    events = [{"status": "Pulling fs layer", "progressDetail": {}, "id": layer}]
    for i in range(1, steps + 1):
        events.append(
            {"status": "Downloading", "progressDetail": {"current": size * i // steps, "total": size}, "id": layer}
        )
    events += [
        {"status": "Verifying Checksum", "progressDetail": {}, "id": layer},
        {"status": "Download complete", "progressDetail": {}, "id": layer},
    ]
    for i in range(1, steps + 1):
        events.append(
            {"status": "Extracting", "progressDetail": {"current": size * i // steps, "total": size}, "id": layer}
        )
    events.append({"status": "Pull complete", "progressDetail": {}, "id": layer})
    return events


def script(tag="1.0", layers=(("aaa", 3_000_000), ("bbb", 1_000_000))) -> list[dict]:
    events = [{"status": "Pulling from course/lab", "id": tag}]
    events.append({"status": "Already exists", "progressDetail": {}, "id": "base"})
    for layer, size in layers:
        events += layer_events(layer, size)
    events += [{"status": f"Digest: {DIGEST}"}, {"status": f"Status: Downloaded newer image for course/lab:{tag}"}]
    return events


def test_progress_counts_download_and_extraction_by_bytes():
    p = PullProgress()
    percents = [p.feed(e) for e in layer_events("aaa", 100_000_000)]
    # download is the first half, extraction the second; 99 until the stream ends
    assert percents == [0, 12, 25, 37, 50, 50, 50, 62, 75, 87, 99, 99]
    assert p.describe() == "100 MB of 100 MB downloaded, 1 of 1 layers extracted"


def test_progress_is_monotonic_when_new_layers_grow_the_total():
    p = PullProgress()
    first = layer_events("small", 1_000)
    second = layer_events("big", 9_000_000)
    percents = [p.feed(e) for e in first[:-1]]  # small almost done: 99 % of what is known
    percents += [p.feed(e) for e in second + first[-1:]]  # then a big layer appears
    assert percents == sorted(percents)
    assert max(percents) == 99
    assert p.percent == 99


def test_progress_ignores_layers_that_exist_and_reads_the_digest():
    p = PullProgress()
    for e in script():
        p.feed(e)
    assert set(p.sizes) == {"aaa", "bbb"}
    assert p.digest == DIGEST
    assert p.percent == 99


# --- the puller, on a fake low-level client


class FakePullClient:
    """docker-py APIClient's ``inspect_image`` and streaming ``pull``, scripted per image."""

    def __init__(self, scripts: dict[str, list[dict] | Exception], present=(), gate: threading.Event | None = None):
        self.scripts = scripts
        self.present = set(present)
        self.gate = gate
        self.pulls: list[tuple[str, str, str]] = []  # (repo, tag, thread name)
        self.inspect_threads: list[str] = []

    def inspect_image(self, image):
        self.inspect_threads.append(threading.current_thread().name)
        if image not in self.present:
            raise not_found(image)
        return {"Id": "sha256:local"}

    def pull(self, repo, tag=None, stream=False, decode=False):
        assert stream and decode
        self.pulls.append((repo, tag, threading.current_thread().name))
        script = self.scripts[f"{repo}:{tag}"]
        if isinstance(script, Exception):
            raise script

        def events():
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
            for event in script:
                time.sleep(0.001)
                yield event
            self.present.add(f"{repo}:{tag}")

        return events()


@pytest.fixture
def make_puller():
    pullers = []

    def make(client, **kwargs):
        puller = ImagePuller(lambda: client, **kwargs)
        pullers.append(puller)
        return puller

    yield make
    for p in pullers:
        p.close()


async def test_pull_reports_monotonic_progress_to_100(make_puller):
    client = FakePullClient({"course/lab:1.0": script()})
    puller = make_puller(client)
    task = await puller.ensure("course/lab:1.0")
    seen = [update async for update in task.updates()]
    percents = [p for p, _ in seen]
    assert percents == sorted(percents)
    assert percents[-1] == 100 and max(percents[:-1]) <= 99
    assert seen[-1][1] == "Pulled course/lab:1.0"
    assert any("layers extracted" in message for _, message in seen)
    await task.wait()
    assert task.done and not task.error and task.digest == DIGEST
    assert client.pulls == [("course/lab", "1.0", client.pulls[0][2])]


async def test_present_image_is_a_done_task_without_a_pull(make_puller):
    client = FakePullClient({}, present={"course/lab:1.0"})
    task = await make_puller(client).ensure("course/lab:1.0")
    assert (task.done, task.percent, task.error) == (True, 100, "")
    assert [u async for u in task.updates()] == [(100, "course/lab:1.0 is present")]
    await task.wait()
    assert client.pulls == []


async def test_concurrent_ensures_share_one_pull(make_puller):
    gate = threading.Event()
    client = FakePullClient({"course/lab:1.0": script()}, gate=gate)
    puller = make_puller(client)
    first, second = await asyncio.gather(puller.ensure("course/lab:1.0"), puller.ensure("course/lab:1.0"))
    third = await puller.ensure("course/lab:1.0")  # while it runs: no new inspect either
    assert first is second is third
    gate.set()
    await asyncio.gather(first.wait(), second.wait())
    assert len(client.pulls) == 1
    assert len(client.inspect_threads) == 2


async def test_digest_reference_is_pulled_by_digest(make_puller):
    client = FakePullClient({f"course/lab:{DIGEST}": script()})
    task = await make_puller(client).ensure(f"course/lab@{DIGEST}")
    await task.wait()
    assert client.pulls[0][:2] == ("course/lab", DIGEST)


async def test_error_line_fails_the_pull_with_the_registry_message(make_puller):
    message = "manifest for course/lab:9.9 not found: manifest unknown: manifest unknown"
    failing = script("9.9")[:6] + [{"errorDetail": {"message": message}, "error": message}]
    client = FakePullClient({"course/lab:9.9": failing})
    puller = make_puller(client)
    task = await puller.ensure("course/lab:9.9")
    with pytest.raises(ImageError, match=f"Could not pull course/lab:9.9: {message}"):
        await task.wait()
    assert task.done and task.percent < 100 and task.status == "Pull failed"
    # A failed task is not handed out again: the next ensure tries afresh.
    client.scripts["course/lab:9.9"] = script("9.9")
    retry = await puller.ensure("course/lab:9.9")
    assert retry is not task
    await retry.wait()


async def test_api_error_fails_the_pull(make_puller):
    response = type("R", (), {"status_code": 500, "reason": "x", "url": "fake://"})()
    error = docker.errors.APIError("500 Server Error", response=response, explanation="registry on fire")
    task = await make_puller(FakePullClient({"course/lab:1.0": error})).ensure("course/lab:1.0")
    with pytest.raises(ImageError, match="Could not pull course/lab:1.0: registry on fire"):
        await task.wait()


async def test_a_slow_pull_blocks_neither_the_loop_nor_another_executor(make_puller):
    """The pull runs on the puller's own threads: a single-thread executor like
    DockerSpawner's stays free for other users' creates and starts."""
    gate = threading.Event()
    client = FakePullClient({"course/big:1.0": script()}, gate=gate)
    puller = make_puller(client)
    spawner_executor = ThreadPoolExecutor(1, thread_name_prefix="dockerspawner-like")
    try:
        task = await puller.ensure("course/big:1.0")
        while not client.pulls:  # the pull has started, and is stuck at the gate
            await asyncio.sleep(0.01)
        # While the pull is held at the gate, the other executor still runs work.
        created = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(spawner_executor, lambda: "created"), 30
        )
        assert created == "created"
        assert not task.done
        (_, _, thread), *_ = client.pulls
        assert thread.startswith("gpuspawner-pull")
        assert all(t.startswith("gpuspawner-image-check") for t in client.inspect_threads)
    finally:
        gate.set()
        spawner_executor.shutdown()
    await task.wait()


async def test_at_most_max_concurrent_pulls_run_at_once(make_puller):
    gate = threading.Event()
    images = [f"course/lab{i}:1.0" for i in range(3)]
    client = FakePullClient({i: script() for i in images}, gate=gate)
    tasks = await make_puller(client, max_concurrent=2).prepull(images + images[:1])
    assert len(tasks) == 3
    while len(client.pulls) < 2:  # two start at once ...
        await asyncio.sleep(0.01)
    for _ in range(20):  # ... and the third waits for a free puller thread while both are held at the gate
        await asyncio.sleep(0.01)
        assert len(client.pulls) == 2
    gate.set()
    await asyncio.gather(*(t.wait() for t in tasks))
    assert sorted(f"{r}:{t}" for r, t, _ in client.pulls) == images


async def test_updates_from_several_listeners_each_end(make_puller):
    client = FakePullClient({"course/lab:1.0": script()}, gate=(gate := threading.Event()))
    task = await make_puller(client).ensure("course/lab:1.0")

    async def listen():
        return [p async for p, _ in task.updates()]

    listeners = [asyncio.create_task(listen()) for _ in range(3)]
    while len(task._listeners) < 3:  # every listener is waiting for updates
        await asyncio.sleep(0.01)
    gate.set()
    for percents in await asyncio.gather(*listeners):
        assert percents[0] == 0 and percents[-1] == 100 and percents == sorted(percents)
    assert task._listeners == []


async def test_the_puller_makes_a_new_client_after_the_engine_failed():
    class Down:
        def inspect_image(self, image):
            raise ConnectionError("the engine is restarting")

    clients = iter([Down(), FakePullClient({}, present={"course/lab:1.0"})])
    made = []
    puller = ImagePuller(lambda: made.append(next(clients)) or made[-1])
    try:
        with pytest.raises(ConnectionError):
            await puller.ensure("course/lab:1.0")
        task = await puller.ensure("course/lab:1.0")
        assert (task.done, task.error, len(made)) == (True, "", 2)
    finally:
        puller.close()


@pytest.mark.parametrize(
    "user, root",
    [
        ("", True),
        ("root", True),
        ("0", True),
        ("00", True),
        ("0:0", True),
        ("root:staff", True),
        ("1000", False),
        ("1000:0", False),  # group 0 is not root's power
        ("jovyan", False),
        ("010", False),
    ],
    ids=repr,
)
def test_runs_as_root_by_any_name_or_number(user, root):
    assert runs_as_root({"Config": {"User": user}}) is root
    assert runs_as_root({"User": user}) is root


PASSWD = "root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/root:/bin/sh\njovyan:x:1000:100::/home/jovyan:/bin/bash\n"


@pytest.mark.parametrize(
    "user, resolve, root",
    [
        ("toor", "toor", True),  # a second name for uid 0
        ("toor:staff", "toor", True),
        ("jovyan", "jovyan", False),
        ("nobody-here", "nobody-here", False),  # not in the file: Docker would not start it as that user
        ("root", "", True),
        ("00", "", True),
        ("1000", "", False),
        ("", "", True),
    ],
    ids=repr,
)
def test_a_user_name_is_resolved_to_its_uid_in_the_images_passwd(user, resolve, root):
    assert user_name_to_resolve({"User": user}) == resolve
    assert runs_as_root({"User": user}, PASSWD) is root


def test_passwd_uid():
    assert passwd_uid(PASSWD, "toor") == 0 and passwd_uid(PASSWD, "jovyan") == 1000
    assert passwd_uid(PASSWD, "jo") is None and passwd_uid("broken\nx:y:notanumber:1\n", "x") is None


# --- Swarm's resource variables


@pytest.mark.parametrize(
    "env, names",
    [
        ([], ()),
        (["PATH=/bin", "CUDA_VERSION=12.4.1", "NVIDIA_VISIBLE_DEVICES=all"], ()),
        (["DOCKER_RESOURCE_NVIDIA-GPU=GPU-1"], ("DOCKER_RESOURCE_NVIDIA-GPU",)),
        (["DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB="], ("DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB",)),  # empty: still refused
        (["docker_resource_x=1", "DOCKER_RESOURCE_X=2"], ("docker_resource_x", "DOCKER_RESOURCE_X")),
        (["DOCKER_RESOURCES=1", "MY_DOCKER_RESOURCE_X=1"], ()),
    ],
    ids=["none", "others", "gpu", "mig-empty", "any-case", "look-alikes"],
)
def test_declared_resource_variables(env, names):
    assert declared_resource_variables({"Config": {"Env": env}}) == names
    assert declared_resource_variables({"Env": env}) == names


def test_a_resource_variable_refusal_names_the_variable_and_the_fix():
    assert resource_variables_refusal("lab:1", ()) is None
    message = resource_variables_refusal("lab:1", ["DOCKER_RESOURCE_NVIDIA-GPU"])
    assert "lab:1 sets DOCKER_RESOURCE_NVIDIA-GPU" in message and "Remove that ENV line" in message


def test_resource_variable_is_swarms_name():
    assert resource_variable("NVIDIA-MIG-1g.10gb") == "DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB"
