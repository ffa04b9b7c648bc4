"""``gpuspawner image build`` and ``gpuspawner prepull`` against the test bed's engine.

The build starts FROM the test bed's image with a requirements file that installs a
tiny wheel made here from a local dir (``--wheels``, ``--no-index``: no network), and
a tiny ``--data`` dir. ``prepull`` pulls from Debian's docker-registry on loopback
(the fixtures of ``test_pull_e2e.py``). Every image made here has a tag unique to
this run and is removed at the end; nothing else on the engine is touched.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import time
import zipfile

import docker.errors
import pytest

from gpuspawner.cli import build_plan as checks  # the labels image build sets

from .realhub import engine, read_testbed
from .test_cli_e2e import RUN, gpuspawner, line, no_probe_left, write_config
from .test_pull_e2e import no_docker_config  # noqa: F401 - a fixture

pytestmark = pytest.mark.docker

WHEEL_NAME = "gpuspawner_e2e_tiny"


def tiny_wheel(folder) -> None:
    """A pure-Python wheel with one module, written by hand (no build tools, no network)."""
    dist = f"{WHEEL_NAME}-0.1.dist-info"
    files = {
        f"{WHEEL_NAME}/__init__.py": b'GREETING = "built by gpuspawner image build"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {WHEEL_NAME}\nVersion: 0.1\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(folder / f"{WHEEL_NAME}-0.1-py3-none-any.whl", "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)


def remove_image(tag: str) -> None:
    try:
        engine().images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def test_build_a_class_image(tmp_path):
    base = read_testbed("image")
    tag = f"gpuspawner-cli-build-e2e:{RUN}"
    hub = tmp_path / "hub"
    hub.mkdir()
    write_config(hub, [])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tiny_wheel(wheels)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n{WHEEL_NAME}==0.1\n")
    data = tmp_path / "tiny-data"
    data.mkdir()
    (data / "labels.csv").write_text("id,label\n1,cat\n")
    args = ["--requirements", str(requirements), "--wheels", str(wheels), "--data", str(data)]
    try:
        status, out, err, took = gpuspawner(hub, "image", "build", "--base", base, "--tag", tag, *args, timeout=300)
        print(f"\nimage build: {took:.1f} s")
        assert status == 0, out + err
        assert "the base has JupyterHub 6.1.1: kept" in out
        assert "/opt/datasets/tiny-data" in line(out, "ok", "dataset tiny-data")
        assert "Step 1/" in out and f"Successfully tagged {tag}" in out  # the build's progress, line by line
        assert f"Successfully installed {WHEEL_NAME}-0.1" in out
        assert "the base runs jupyterhub-singleuser (the image's CMD): kept" in line(out, "ok", "command")
        assert "the server answered on port 8888" in line(out, "ok", "start")  # the built image's server started
        assert line(out, "verdict:").startswith("verdict: OK")

        inspect = engine().api.inspect_image(tag)
        labels = inspect["Config"]["Labels"]
        assert labels[checks.LABEL_BASE] == base
        assert labels[checks.LABEL_JUPYTERHUB] == "6.1.1"
        assert labels[checks.LABEL_REQUIREMENTS] == "sha256:" + hashlib.sha256(requirements.read_bytes()).hexdigest()
        assert labels[checks.LABEL_DATASETS] == "tiny-data"
        assert inspect["Config"]["User"] == "jovyan"  # the base's user again
        assert inspect["RepoTags"] == [tag]  # tagged as asked, never latest
        # What is in it, as the image's user: the wheel's module, the dataset; the build's files gone.
        got = (
            engine()
            .containers.run(
                tag,
                [
                    "sh",
                    "-c",
                    f"python3 -c 'import {WHEEL_NAME} as m; print(m.GREETING)' && cat /opt/datasets/tiny-data/labels.csv"
                    " && test ! -e /tmp/gpuspawner-build && echo clean",
                ],
                network_mode="none",
                remove=True,
                labels={"gpuspawner.cli": "build-e2e"},
            )
            .decode()
        )
        assert got.splitlines() == ["built by gpuspawner image build", "id,label", "1,cat", "clean"]
        no_probe_left(tag)
    finally:
        remove_image(tag)
    with pytest.raises(docker.errors.ImageNotFound):
        engine().images.get(tag)


def test_build_from_a_base_that_runs_as_root(tmp_path):
    """Like pytorch/pytorch: the result runs as a student user with a home, and passes image check."""
    base = f"gpuspawner-cli-rootbase:{RUN}"
    tag = f"gpuspawner-cli-build-root:{RUN}"
    engine().images.build(
        fileobj=io.BytesIO(f"FROM {read_testbed('image')}\nUSER root\nWORKDIR /workspace\n".encode()),
        tag=base,
        rm=True,
        network_mode="none",
    )
    hub = tmp_path / "hub"
    hub.mkdir()
    write_config(hub, [])
    try:
        status, out, err, _ = gpuspawner(hub, "image", "build", "--base", base, "--tag", tag, timeout=300)
        assert status == 0, out + err
        assert line(out, "verdict:").startswith("verdict: OK")
        config = engine().api.inspect_image(tag)["Config"]
        assert config["User"] == "1000" and "HOME=/home/jovyan" in config["Env"]
        got = (
            engine()
            .containers.run(
                tag,
                ["sh", "-c", "id -u && echo $HOME && touch $HOME/ok && echo writable"],
                network_mode="none",
                remove=True,
                labels={"gpuspawner.cli": "build-e2e"},
            )
            .decode()
        )
        assert got.splitlines() == ["1000", "/home/jovyan", "writable"]
    finally:
        remove_image(tag)
        remove_image(base)


def test_sftp_server_for_the_ssh_gateway_is_checked_and_added(tmp_path):
    """Under a hub that runs the SSH gateway: the test bed's image lacks sftp-server (a warning), and
    ``--sftp`` installs Debian's (from the mirror, on the host's network), which the check then finds."""
    base = read_testbed("image")
    tag = f"gpuspawner-cli-build-sftp:{RUN}"
    write_config(tmp_path, [], extra="from gpuspawner import services\nservices.add_ssh_gateway(c, __file__)\n")
    try:
        status, out, err, _ = gpuspawner(tmp_path, "image", "check", base)
        assert status == 0, out + err
        assert "scp and sftp do not" in line(out, "warn", "sftp")
        status, out, err, took = gpuspawner(
            tmp_path, "image", "build", "--base", base, "--tag", tag, "--sftp", timeout=300
        )
        print(f"\nimage build --sftp: {took:.1f} s")
        assert status == 0, out + err
        assert "installing OpenSSH's with apt-get" in line(out, "ok", "sftp", "the base has no sftp-server")
        assert "/usr/lib/openssh/sftp-server: scp and sftp work" in line(out, "ok", "sftp", "work")
        assert line(out, "verdict:").startswith("verdict: OK")
    finally:
        remove_image(tag)


def test_build_refuses_unpinned_names(tmp_path):
    write_config(tmp_path, [])
    base = read_testbed("image")
    # Refused before any Docker call: with no engine to reach at all, the refusal is still the name's.
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    status, _, err, _ = gpuspawner(tmp_path, "image", "build", "--base", base, "--tag", "lab:latest", engine_at=nowhere)
    assert status == 2 and "--tag: image 'lab:latest' uses the tag 'latest'" in err
    status, _, err, _ = gpuspawner(tmp_path, "image", "build", "--base", "gpuspawner-lab", "--tag", "lab:1")
    assert status == 2 and "--base: image 'gpuspawner-lab' has no tag" in err


def test_build_never_moves_a_tag_a_profile_uses(tmp_path):
    """Refused before any Docker call (no engine here either); --force goes on (to the engine, which is not there)."""
    profiles = [{"slug": s, "display_name": s, "image": "ml101-cuda:2026.1"} for s in ("ml101", "ml101-gpu")]
    write_config(tmp_path, profiles)
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    args = ["image", "build", "--base", read_testbed("image"), "--tag", "ml101-cuda:2026.1"]
    status, out, err, _ = gpuspawner(tmp_path, *args, engine_at=nowhere)
    assert status == 2 and not out
    assert "--tag ml101-cuda:2026.1: the hub's profiles ml101, ml101-gpu use this tag" in err
    assert "(or add --force to move it: ml101, ml101-gpu would get the new image at their next start)" in err
    status, _, err, _ = gpuspawner(tmp_path, *args, "--force", engine_at=nowhere)
    assert status == 2 and "no Docker engine answers" in err  # past the refusal


@pytest.fixture(scope="module")
def registry(lab_registry, no_docker_config):  # noqa: F811 - the fixture
    """The tests' shared loopback registry: pushing the test bed image's layers again is a quick
    check, and pulling them is one of the label's layer only."""
    return lab_registry


def pushed_image(address: str, tag: str) -> str:
    """An image FROM the test bed's, pushed to the loopback registry, then removed from the engine."""
    client = engine()
    ref = f"{address}/gpuspawner-prepull-e2e:{tag}"
    dockerfile = f"FROM {read_testbed('image')}\nLABEL gpuspawner.e2e={RUN}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=ref, network_mode="none", rm=True, forcerm=True)
    for event in client.api.push(ref, stream=True, decode=True):
        assert "error" not in event, event
    client.images.remove(ref)
    return ref


def test_prepull_every_profiles_image(tmp_path, registry):  # noqa: F811 - the fixture
    address, _ = registry
    base = read_testbed("image")
    ref = pushed_image(address, f"pulled-{RUN}")
    missing = f"{address}/gpuspawner-prepull-e2e:missing-{RUN}"
    profiles = [
        {"slug": "cpu", "display_name": "CPU", "image": base},
        {"slug": "gpu", "display_name": "GPU", "image": ref, "gpus": 1},
        {"slug": "gpu-too", "display_name": "GPU too", "image": ref},
    ]
    try:
        with pytest.raises(docker.errors.ImageNotFound):
            engine().images.get(ref)
        write_config(tmp_path, profiles)
        t0 = time.monotonic()
        status, out, err, took = gpuspawner(tmp_path, "prepull")
        print(f"\nprepull: {took:.1f} s\n{out}")
        assert status == 0, out + err
        assert "pull_policy is 'never'" in out  # the test config's; prepull pulls all the same
        assert "already present" in line(out, base, "cpu", "MiB")
        assert "pulled" in line(out, ref, "gpu, gpu-too", "MiB")  # each image once
        assert "2 image(s): 1 already present, 1 pulled, 0 failed" in line(out, "verdict:")
        assert engine().images.get(ref)  # it is on the engine now

        write_config(tmp_path, [*profiles, {"slug": "gone", "display_name": "Gone", "image": missing}])
        status, out, err, _ = gpuspawner(tmp_path, "prepull")
        assert status == 1, out + err
        assert "failed" in line(out, missing, "│")  # its row of the table
        assert "manifest unknown" in line(out, "fail", missing, "Could not pull")  # the registry's answer
        assert "3 image(s): 2 already present, 0 pulled, 1 failed" in line(out, "verdict:")
        print(f"both prepulls: {time.monotonic() - t0:.1f} s (timed by benchmarks/cli.py, not asserted)")
    finally:
        remove_image(ref)
