"""ImagePuller against the test bed's engine and a real registry on loopback.

A registry on loopback (``tests/registry.py``, Debian's ``docker-registry``)
serves from a temporary directory. An image built FROM
the test bed image is pushed there under a tag unique to this run, untagged
locally, and pulled back through the puller. Only this run's image is touched;
no container is created or removed by this test.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import tarfile
import time

import docker
import pytest

from gpuspawner.images import ImageError, ImagePuller, declared_cuda, image_digest

from .realhub import docker_host, engine, read_testbed

pytestmark = pytest.mark.docker

RUN = secrets.token_hex(4)
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def no_docker_config(tmp_path_factory):
    """A private, empty client config: no user's credential helper runs for our registry."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
        yield


@pytest.fixture(scope="module")
def registry(lab_registry, no_docker_config):
    """``(127.0.0.1:<port>, its HTTP session)``: the tests' shared loopback registry."""
    return lab_registry


def build_context(base: str) -> io.BytesIO:
    """FROM the test bed image, plus 4 MB that do not compress: a layer with real progress."""
    dockerfile = f"FROM {base}\nCOPY payload /opt/pulltest/payload\nLABEL gpuspawner.cuda=12.4\n".encode()
    payload = os.urandom(4 * 1024 * 1024)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("payload", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def pushed(registry):
    """This run's image in the registry, absent from the engine: (reference, pushed digest)."""
    address, _ = registry
    client = engine()
    ref = f"{address}/gpuspawner-pulltest:{RUN}"
    timings = {}
    try:
        t0 = time.monotonic()
        client.images.build(
            fileobj=build_context(read_testbed("image")), custom_context=True, tag=ref, rm=True, forcerm=True
        )
        timings["build"] = time.monotonic() - t0
        t0 = time.monotonic()
        digest = ""
        for line in client.api.push(ref, stream=True, decode=True):
            assert "error" not in line, line
            digest = (line.get("aux") or {}).get("Digest", digest)
        timings["push"] = time.monotonic() - t0
        assert digest.startswith("sha256:")
        client.images.remove(ref)  # only this run's tag: the pull must fetch it
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(ref)
        print(f"\nbuild {timings['build']:.1f} s, push {timings['push']:.1f} s")
        yield ref, digest
    finally:
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture
def puller(no_docker_config):
    p = ImagePuller(lambda: docker.APIClient(base_url=docker_host(), version="auto"))
    yield p
    p.close()


async def test_pull_from_registry_reports_progress_and_digest(registry, pushed, puller):
    ref, pushed_digest = pushed
    address, http = registry
    t0 = time.monotonic()
    first, second = await asyncio.gather(puller.ensure(ref), puller.ensure(ref))
    assert first is second  # two spawns waiting for the same image: one pull
    seen = [update async for update in first.updates()]
    await first.wait()
    elapsed = time.monotonic() - t0
    print(f"\npull {elapsed:.1f} s, {len(seen)} updates, last {seen[-1]}")

    percents = [p for p, _ in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert any(0 < p < 100 for p in percents), seen  # progress between start and end was seen
    assert seen[-1][1] == f"Pulled {ref}"

    inspect = engine().api.inspect_image(ref)
    manifest = http.head(f"http://{address}/v2/gpuspawner-pulltest/manifests/{RUN}", headers={"Accept": MANIFEST_V2})
    registry_digest = manifest.headers["Docker-Content-Digest"]
    assert image_digest(inspect, ref) == registry_digest == pushed_digest == first.digest
    assert image_digest(inspect, ref) != inspect["Id"]
    assert declared_cuda(inspect["Config"]) == "12.4"

    again = await puller.ensure(ref)  # now present: no second pull
    assert again is not first and again.done and again.percent == 100


async def test_pull_of_a_missing_tag_fails_naming_it(registry, puller):
    address, _ = registry
    ref = f"{address}/gpuspawner-pulltest:missing-{RUN}"
    task = await puller.ensure(ref)
    with pytest.raises(ImageError, match=f"Could not pull {ref}: .*(not found|manifest unknown)") as e:
        await task.wait()
    print(f"\n{e.value}")
    assert task.done and task.error
