"""Disk quotas end to end: homes as btrfs subvolumes with qgroup limits, on the test bed's engine.

The module makes a 256 MB btrfs filesystem on a loop file, with quotas on, and removes it
afterwards (this kernel has no XFS or ext4 quotas: ../shared/TESTBED.md). One hub, two
students with a 20 MB quota each: the one who writes 40 MB gets "Disk quota exceeded" in
their own server at 20 MB, and the other student, the filesystem and the hub are unaffected.

Writable layers: the test bed's engine (overlay2 on ext4) cannot limit them. A second, throwaway
engine with the btrfs storage driver on a loop file of its own shows that the ``storage_opt``
gpuspawner sets is enforced there (a tiny image of the host's ``sh`` and ``dd``: no registry).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import docker
import pytest

from gpuspawner import GPUSpawner
from gpuspawner.checks import disk_quota_refusal
from gpuspawner.disk_quota import storage_opt, writable_layer_refusal
from gpuspawner.homes import ARCHIVED_FROM

from .realhub import RealHub, engine, home_volume, read_testbed, require_tools, running_hub

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
ANA, BEN, LATE = f"ana-{RUN}", f"ben-{RUN}", f"late-{RUN}"
MiB = 1024 * 1024
QUOTA = 20 * MiB

# Written by the student's own server process (as its user): 40 chunks of 1 MiB, each flushed.
WRITE = """
import errno, os, sys
done = 0
try:
    with open(os.path.expanduser("~/big"), "wb", buffering=0) as f:
        for _ in range(int(sys.argv[1])):
            f.write(b"x" * 1048576)
            done += 1
        os.fsync(f.fileno())
    print("ok", done)
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno), done, e)
"""


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def homes_root(tmp_path_factory):
    """A btrfs filesystem on a loop file, quotas on; unmounted, its loop device detached, removed after."""
    if os.geteuid() != 0 or not (shutil.which("mkfs.btrfs") and shutil.which("btrfs")):
        pytest.skip("needs root and btrfs-progs (apt-get install btrfs-progs)")
    folder = tmp_path_factory.mktemp("btrfs")
    image, mountpoint = folder / "homes.img", folder / "homes"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(256 * MiB)
    run("mkfs.btrfs", "-q", str(image))
    run("mount", "-o", "loop", str(image), str(mountpoint))
    try:
        run("btrfs", "quota", "enable", str(mountpoint))
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        for line in run("losetup", "-j", str(image)).splitlines():  # mount -o loop detaches; make sure
            subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
        image.unlink()


@pytest.fixture(scope="module")
def hub(homes_root, tmp_path_factory):
    image = read_testbed("image")
    config = f"""
    c.GPUSpawner.gpus = []
    c.GPUSpawner.homes_root = {str(homes_root)!r}
    c.GPUSpawner.home_quota = "20M"
    c.GPUSpawner.profiles = [{{"slug": "cpu", "display_name": "CPU", "image": {image!r}, "mem_limit": "1G"}}]
    from gpuspawner import check_config
    check_config(c)  # passes: the homes root is btrfs with quotas on
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:  # removes the homes and archives
        yield h


def write(hub, user: str, mib: int) -> tuple[str, int]:
    """What a student's server gets when it writes ``mib`` MiB into its home: ('ok' or the errno's name, MiB done)."""
    result = hub.container(user).exec_run(["python3", "-c", WRITE, str(mib)])
    assert result.exit_code == 0, result.output
    word, done, *_ = result.output.decode().split()
    return word, int(done)


def test_a_student_who_writes_past_the_quota_gets_a_disk_full_error_in_their_server(hub, homes_root):
    hub.spawn_all((ANA, "cpu"), (BEN, "cpu"))
    home = home_volume(hub.container(ANA))
    options = engine().volumes.get(home).attrs["Options"]
    assert options == {"type": "none", "o": "bind", "device": str(homes_root / home)}
    assert "btrfs" in run("stat", "-f", "-c", "%T", str(homes_root / home))

    word, done = write(hub, ANA, 40)
    assert word in (errno.errorcode[errno.EDQUOT], errno.errorcode[errno.ENOSPC]), (word, done)
    assert 15 <= done <= 20, done  # stopped at the quota, not at the disk
    assert os.path.getsize(homes_root / home / "big") <= QUOTA
    print(f"\nana: {word} after {done} MiB of 40 (quota 20 MiB)")

    # Another student writes as before; the filesystem has room; the hub writes its database.
    assert write(hub, BEN, 10) == ("ok", 10)
    free = os.statvfs(homes_root)
    assert free.f_bavail * free.f_frsize > 100 * MiB
    hub.ensure_user(LATE)
    assert hub.request("GET", f"/users/{LATE}").status_code == 200
    # The one over quota can still remove files, and write again.
    assert hub.container(ANA).exec_run(["sh", "-c", "rm ~/big"]).exit_code == 0
    assert write(hub, ANA, 5) == ("ok", 5)


def test_a_deleted_users_home_is_archived_on_the_homes_filesystem(hub, homes_root):
    home = home_volume(hub.container(ANA))
    hub.stop_server(ANA)
    assert hub.request("DELETE", f"/users/{ANA}").status_code == 204
    (archive,) = [v for v in engine().volumes.list() if v.name.startswith(f"{home}-archived-")]
    assert archive.attrs["Labels"][ARCHIVED_FROM] == home
    assert archive.attrs["Options"]["device"] == str(homes_root / archive.name)
    assert (homes_root / archive.name / "big").stat().st_size == 5 * MiB
    assert not (homes_root / home).exists()  # its subvolume went with it: a new user of the name starts empty


def test_a_quota_the_filesystem_cannot_enforce_stops_the_hub(tmp_path):
    require_tools()
    plain = tmp_path / "homes"  # on the machine's disk, not btrfs
    plain.mkdir()
    config = f"""
    c.GPUSpawner.gpus = []
    c.GPUSpawner.network_name = "host"
    c.GPUSpawner.homes_root = {str(plain)!r}
    c.GPUSpawner.home_quota = "10G"
    c.GPUSpawner.profiles = [{{"slug": "cpu", "display_name": "CPU", "image": {read_testbed("image")!r}}}]
    from gpuspawner import check_config
    check_config(c)
    """
    hub = RealHub(tmp_path / "hub", textwrap.dedent(config))
    with pytest.raises(RuntimeError, match="jupyterhub exited") as e:
        hub.start()
    fstype = run("stat", "-f", "-c", "%T", str(plain)).strip()
    assert f"c.GPUSpawner.homes_root {plain} is on" in str(e.value), str(e.value)[-2000:]
    assert "not btrfs, so home_quota (10 GiB) cannot be enforced" in str(e.value), fstype


def test_the_test_engine_cannot_limit_writable_layers():
    """The test bed's engine is overlay2 on ext4: container_quota is refused, with the way there."""
    info = engine().info()
    if info["Driver"] != "overlay2" or dict(info["DriverStatus"]).get("Backing Filesystem") == "xfs":
        pytest.skip(f"the engine stores containers with {info['Driver']}")
    refusal = disk_quota_refusal(GPUSpawner(container_quota="1G"), (), info)
    assert "cannot limit them" in refusal and "pquota" in refusal


@pytest.fixture
def btrfs_engine():
    """A Docker engine of its own, storage driver btrfs on a 512 MB loop file; all of it removed after."""
    needed = ("dockerd", "mkfs.btrfs", "ldd")
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in needed):
        pytest.skip(f"needs root and {', '.join(needed)}")
    folder = Path(tempfile.mkdtemp(prefix="gsq-", dir="/tmp"))  # short: the engine's sockets live under it
    image, mountpoint = folder / "engine.img", folder / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 * MiB)
    run("mkfs.btrfs", "-q", str(image))
    run("mount", "-o", "loop", str(image), str(mountpoint))
    sock, log = folder / "docker.sock", open(folder / "dockerd.log", "wb")
    dockerd = None
    try:
        dockerd = subprocess.Popen(
            ["dockerd", "--data-root", str(mountpoint / "data"), "--exec-root", str(folder / "exec")]
            + ["--pidfile", str(folder / "docker.pid"), "-H", f"unix://{sock}", "--storage-driver", "btrfs"]
            + ["--bridge=none", "--iptables=false", "--ip-masq=false"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=f"unix://{sock}", version="auto")  # asks the engine
                break
            except Exception:  # noqa: BLE001 - not up yet
                if dockerd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the btrfs engine did not start: {(folder / 'dockerd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.3)
        yield client, _tiny_image(client, folder / "rootfs")
    finally:
        if dockerd is not None:
            dockerd.terminate()
            try:
                dockerd.wait(30)
            except subprocess.TimeoutExpired:
                dockerd.kill()
                dockerd.wait(10)
        log.close()
        inside = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if str(folder) in line]
        for point in sorted(inside, reverse=True):  # what the engine left mounted, then the loop filesystem
            subprocess.run(["umount", point], check=False)
        for line in run("losetup", "-j", str(image)).splitlines():
            subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _tiny_image(client, rootfs: Path) -> str:
    """An image of the host's sh and dd with the libraries they load."""
    files = ["/bin/sh", "/bin/dd"]
    libraries = run("ldd", *files).split()
    files += [word for word in libraries if word.startswith("/") and os.path.isfile(word)]
    for path in set(files):
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)  # follows links
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True).stdout
    client.api.import_image_from_data(tar, repository="gpuspawner-e2e-tiny", tag="1")
    return "gpuspawner-e2e-tiny:1"


def test_a_btrfs_engine_limits_the_writable_layer_to_container_quota(btrfs_engine):
    client, image = btrfs_engine
    info = client.info()
    assert info["Driver"] == "btrfs" and writable_layer_refusal(info, 10 * MiB) == ""
    assert disk_quota_refusal(GPUSpawner(container_quota="10M"), (), info) == ""
    out = client.containers.run(
        image,
        ["/bin/sh", "-c", "dd if=/dev/zero of=/big bs=1M count=30 2>&1; echo rc=$?"],
        storage_opt=storage_opt(10 * MiB),  # what the spawner sets as HostConfig.StorageOpt
        network_mode="none",
        remove=True,
    ).decode()
    assert "rc=1" in out and ("Disk quota exceeded" in out or "No space left" in out), out
    print(f"\nwritable layer, container_quota 10 MiB, 30 MiB written: {out.splitlines()[0]}")
