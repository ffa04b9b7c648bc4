"""Disk quotas: the pure judgements, and homes as btrfs subvolumes through a fake ``btrfs`` command."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone

import pytest
from jupyterhub.spawner import SpawnException
from traitlets import TraitError
from traitlets.config import Config

from gpuspawner import GPUSpawner
from gpuspawner.checks import ConfigInvalid, check_config, disk_quota_refusal
from gpuspawner.cli.doctor import disk_quota_findings
from gpuspawner.cli.findings import FAIL, OK, WARN
from gpuspawner.disk_quota import (
    HomeQuotas,
    HomesRootFacts,
    Mount,
    QuotaError,
    bound_device,
    filesystem_of,
    home_quota_refusal,
    storage_opt,
    writable_layer_refusal,
)
from gpuspawner.homes import ARCHIVED_FROM, USER_ID, HomeError, HomeOwner, HomeVolumes, archive_name
from gpuspawner.profiles import ProfileError, parse_profiles
from gpuspawner.spawner import apply_profile_choice

from .fakes import FakeDocker, make_spawner

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
/dev/loop0 /srv/homes btrfs rw,relatime,space_cache=v2 0 0
/dev/loop1 /srv/homes/odd\\040name xfs rw,pquota 0 0
tmpfs /srv/homes tmpfs rw 0 0
"""
ANA = HomeOwner("ana", "7", "2026-09-01T08:00:00.000000")
NOW = datetime(2026, 12, 1, 17, 33, tzinfo=timezone.utc)
HOME = "jupyterhub-user-ana"
MiB = 1024 * 1024


@pytest.mark.parametrize(
    "path, mountpoint, fstype",
    [
        ("/srv/homes/x", "/srv/homes", "tmpfs"),  # mounted over: the last mount wins
        ("/srv/homes/odd name/y", "/srv/homes/odd name", "xfs"),  # escapes decoded
        ("/srv/homesick", "/", "ext4"),  # a prefix of a name is not a parent
        ("/", "/", "ext4"),
    ],
    ids=["over", "escaped", "prefix", "root"],
)
def test_the_filesystem_a_path_lies_on(path, mountpoint, fstype):
    found = filesystem_of(path, MOUNTS)
    assert (found.mountpoint, found.fstype) == (mountpoint, fstype)


def test_no_mount_matches():
    assert filesystem_of("/x", "garbage\n") is None


BTRFS = Mount("/srv/homes", "btrfs")


@pytest.mark.parametrize(
    "facts, says",
    [
        (HomesRootFacts(""), "needs c.GPUSpawner.homes_root"),
        (HomesRootFacts("/srv/homes"), "/srv/homes does not exist"),
        (HomesRootFacts("/srv/homes", True, Mount("/", "ext4")), "is on ext4, not btrfs"),
        (HomesRootFacts("/srv/homes", True, BTRFS, None, "btrfs: command not found"), "needs btrfs-progs"),
        (HomesRootFacts("/srv/homes", True, BTRFS, None, "Operation not permitted"), "as root"),
        (HomesRootFacts("/srv/homes", True, BTRFS, False), "btrfs quota enable /srv/homes"),
        (HomesRootFacts("/srv/homes", True, BTRFS, True), ""),
    ],
    ids=["no-root", "missing", "ext4", "no-command", "not-root", "quota-off", "ok"],
)
def test_can_homes_be_held_to_a_quota(facts, says):
    refusal = home_quota_refusal(facts, 10 * 1024**3)
    assert (says in refusal) if says else refusal == ""
    if says and facts.quota_enabled is not False and facts.mount is None:
        assert "mkfs.btrfs" in refusal  # how to get there


def docker_info(driver, backing=""):
    return {"Driver": driver, "DriverStatus": [["Backing Filesystem", backing]] if backing else []}


@pytest.mark.parametrize(
    "info, enforced",
    [
        (docker_info("btrfs", "btrfs"), True),
        (docker_info("zfs"), True),
        (docker_info("overlay2", "xfs"), True),  # pquota is not in docker info: Docker refuses a spawn if missing
        (docker_info("overlay2", "extfs"), False),
        (docker_info("vfs"), False),
        ({}, False),
    ],
    ids=["btrfs", "zfs", "overlay2-xfs", "overlay2-ext4", "vfs", "unknown"],
)
def test_can_the_engine_limit_writable_layers(info, enforced):
    refusal = writable_layer_refusal(info, 20 * 1024**3)
    assert (refusal == "") == enforced
    if not enforced:
        assert "container_quota (20 GiB)" in refusal and "pquota" in refusal


def test_storage_opt():
    assert storage_opt(20 * MiB) == {"size": str(20 * MiB)}
    assert storage_opt(None) == {}


def test_bound_device():
    assert bound_device({"Options": {"type": "none", "o": "bind", "device": "/srv/homes/h"}}) == "/srv/homes/h"
    assert bound_device({"Options": None}) == ""
    assert bound_device({"Options": {"type": "nfs", "o": "addr=1.2.3.4", "device": ":/x"}}) == ""


class FakeBtrfs:
    """The ``btrfs`` command on a folder: subvolumes are folders, limits a dict."""

    def __init__(self, quota_enabled: bool = True):
        self.quota_enabled = quota_enabled
        self.limits: dict[str, str] = {}
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> tuple[int, str]:
        self.calls.append(args)
        assert args[0] == "btrfs"
        what, path = args[1:3], args[-1]
        if what == ["qgroup", "show"] or what == ["qgroup", "limit"]:
            if not self.quota_enabled:
                return 1, "ERROR: can't list qgroups: quotas not enabled"
            if what == ["qgroup", "limit"]:
                self.limits[path] = args[3]
            return 0, ""
        if what == ["subvolume", "create"]:
            os.mkdir(path)
            return 0, f"Create subvolume '{path}'"
        if what == ["subvolume", "delete"]:
            shutil.rmtree(path)
            self.limits.pop(path, None)
            return 0, f"Delete subvolume '{path}'"
        raise AssertionError(f"unexpected {args}")


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "homes"
    path.mkdir()
    return str(path)


def quotas_at(root: str, btrfs: FakeBtrfs, fstype: str = "btrfs") -> HomeQuotas:
    return HomeQuotas(root, runner=btrfs, mounts=lambda: f"/dev/loop0 {root} {fstype} rw 0 0\n")


def test_facts_of_a_homes_root(root):
    assert quotas_at(root, FakeBtrfs()).refusal(MiB) == ""
    assert "btrfs quota enable" in quotas_at(root, FakeBtrfs(quota_enabled=False)).refusal(MiB)
    assert "is on ext4" in quotas_at(root, FakeBtrfs(), "ext4").refusal(MiB)
    assert "does not exist" in quotas_at(root + "/nope", FakeBtrfs()).refusal(MiB)


def test_a_home_is_a_subvolume_bound_to_its_volume_with_its_limit(root):
    engine, btrfs = FakeDocker(), FakeBtrfs()
    homes = HomeVolumes(engine, "lab:1", quotas=quotas_at(root, btrfs))
    path = os.path.join(root, HOME)
    assert homes.claim(HOME, ANA, quota=20 * MiB) == "created"
    assert engine.volumes[HOME]["Options"] == {"type": "none", "o": "bind", "device": path}
    assert engine.volumes[HOME]["Labels"] == ANA.labels()
    assert btrfs.limits == {path: str(20 * MiB)}
    # The limit follows the profile each spawn starts; None takes it away.
    assert homes.claim(HOME, ANA, quota=50 * MiB) == "mine" and btrfs.limits[path] == str(50 * MiB)
    assert homes.claim(HOME, ANA, quota=None) == "mine" and btrfs.limits[path] == "none"


def test_a_recycled_name_gets_a_new_empty_subvolume_and_the_old_one_is_archived(root):
    engine, btrfs = FakeDocker(), FakeBtrfs()
    homes = HomeVolumes(engine, "lab:1", quotas=quotas_at(root, btrfs))
    homes.claim(HOME, ANA, quota=20 * MiB)
    engine.volumes[HOME]["files"]["thesis.tex"] = "old ana"
    new_ana = HomeOwner("ana", "9", "2026-12-01T09:00:00.000000")
    assert homes.claim(HOME, new_ana, now=NOW, quota=20 * MiB) == f"archived {archive_name(HOME, NOW)}"
    archive = engine.volumes[archive_name(HOME, NOW)]
    assert archive["files"] == {"thesis.tex": "old ana"} and archive["Labels"][ARCHIVED_FROM] == HOME
    assert archive["Options"]["device"] == os.path.join(root, archive_name(HOME, NOW))  # on the homes' disk
    deleted = [c for c in btrfs.calls if c[1:3] == ["subvolume", "delete"]]
    assert deleted == [["btrfs", "subvolume", "delete", os.path.join(root, HOME)]]  # then made again, empty
    assert engine.volumes[HOME]["files"] == {} and engine.volumes[HOME]["Labels"][USER_ID] == "9"
    assert btrfs.limits[os.path.join(root, HOME)] == str(20 * MiB)
    assert btrfs.limits[os.path.join(root, archive_name(HOME, NOW))] == "none"  # an archive has no limit


def test_removing_a_home_deletes_its_subvolume(root):
    engine, btrfs = FakeDocker(), FakeBtrfs()
    homes = HomeVolumes(engine, "lab:1", quotas=quotas_at(root, btrfs))
    homes.claim(HOME, ANA, quota=MiB)
    assert homes.retire(HOME, "remove") == "removed"
    assert engine.volumes == {} and os.listdir(root) == []


def test_a_subvolume_no_volume_names_is_not_given_to_someone(root):
    """A home whose volume an admin removed by hand: its files may be a former user's."""
    engine, btrfs = FakeDocker(), FakeBtrfs()
    os.mkdir(os.path.join(root, HOME))
    homes = HomeVolumes(engine, "lab:1", quotas=quotas_at(root, btrfs))
    with pytest.raises(HomeError, match="exists but no home volume"):
        homes.claim(HOME, ANA, quota=MiB)
    assert HOME not in engine.volumes


def test_a_failed_limit_leaves_no_subvolume(root):
    engine, btrfs = FakeDocker(), FakeBtrfs(quota_enabled=False)
    homes = HomeVolumes(engine, "lab:1", quotas=quotas_at(root, btrfs))
    with pytest.raises(HomeError, match="quotas not enabled"):
        homes.claim(HOME, ANA, quota=MiB)
    assert os.listdir(root) == [] and HOME not in engine.volumes


def test_a_home_made_before_quotas_is_mounted_and_said_not_limited(root, caplog):
    engine, btrfs = FakeDocker(), FakeBtrfs()
    engine.volumes[HOME] = {"Labels": ANA.labels(), "files": {}}
    homes = HomeVolumes(engine, "lab:1", quotas=quotas_at(root, btrfs))
    assert homes.claim(HOME, ANA, quota=MiB) == "mine"
    assert "cannot be enforced" in caplog.text and btrfs.limits == {}


def test_quotas_refuse_paths_outside_the_root(root):
    quotas = quotas_at(root, FakeBtrfs())
    with pytest.raises(QuotaError):
        quotas.path_of("../etc")
    with pytest.raises(QuotaError, match="not deleted"):
        quotas.remove("/etc")


# --- profiles and the spawner

PROFILES = [
    {"slug": "cpu", "display_name": "CPU", "image": "lab:1"},
    {"slug": "big", "display_name": "Big", "image": "lab:1", "home_quota": "50M", "container_quota": "1G"},
]


def test_a_profile_sets_its_quotas_in_the_admins_config_only():
    plain, big = parse_profiles(PROFILES)
    assert (plain.home_quota, plain.container_quota) == (None, None)
    assert (big.home_quota, big.container_quota) == (50 * MiB, 1024**3)
    with pytest.raises(ProfileError, match="field 'home_quota'"):
        parse_profiles([{**PROFILES[0], "home_quota": "lots"}])


def spawner(engine, profile="cpu", **config):
    s = make_spawner(GPUSpawner, engine, user="ana", profiles=PROFILES, denials_file="", **config)
    s.user.created = datetime(2026, 9, 1, 8)
    s.user_options = {"profile": profile}
    apply_profile_choice(s, s.user_options)
    return s


@pytest.mark.parametrize("profile, limit", [("cpu", str(20 * MiB)), ("big", str(50 * MiB))], ids=["hub", "profile"])
async def test_a_spawn_limits_the_home_as_its_profile_or_the_hub_says(root, monkeypatch, profile, limit):
    engine, btrfs = FakeDocker(), FakeBtrfs()
    monkeypatch.setattr(GPUSpawner, "home_quotas", lambda self: quotas_at(root, btrfs))
    s = spawner(engine, profile, homes_root=root, home_quota="20M")
    await s.start()
    assert btrfs.limits == {os.path.join(root, HOME): limit}
    host_config = engine.inspect_container(s.object_id)["HostConfig"]
    assert f"{HOME}:/home/jovyan:rw" in host_config["Binds"]
    assert host_config.get("StorageOpt") == ({"size": str(1024**3)} if profile == "big" else None)


async def test_a_home_that_cannot_get_its_limit_refuses_the_spawn(root, monkeypatch):
    engine = FakeDocker()
    monkeypatch.setattr(GPUSpawner, "home_quotas", lambda self: quotas_at(root, FakeBtrfs(quota_enabled=False)))
    s = spawner(engine, homes_root=root, home_quota="20M")
    with pytest.raises(SpawnException, match="could not be prepared.*quotas not enabled"):
        await s.start()
    assert not engine.containers_by_id


def test_check_config_refuses_a_quota_that_would_not_be_enforced(root, monkeypatch):
    config = Config({"GPUSpawner": {"profiles": PROFILES[:1], "gpus": [], "home_quota": "10G", "network_name": "host"}})
    with pytest.raises(ConfigInvalid, match="home_quota \\(10 GiB\\) needs c.GPUSpawner.homes_root"):
        check_config(config, prepull=False)
    s = GPUSpawner(config=Config({"GPUSpawner": {"container_quota": "20G", "homes_root": root}}))
    monkeypatch.setattr(GPUSpawner, "home_quotas", lambda self: quotas_at(root, FakeBtrfs()))
    assert "cannot limit them" in disk_quota_refusal(s, (), docker_info("overlay2", "extfs"))
    assert disk_quota_refusal(s, (), docker_info("btrfs", "btrfs")) == ""
    monkeypatch.setattr(GPUSpawner, "home_quotas", lambda self: quotas_at(root, FakeBtrfs(), "ext4"))
    assert "is on ext4, not btrfs" in disk_quota_refusal(s, (), docker_info("btrfs", "btrfs"))


def test_no_quota_asked_needs_nothing():
    assert disk_quota_refusal(GPUSpawner(), (), {}) == ""


@pytest.mark.parametrize(
    "homes, home_quota, info, container_quota, levels",
    [
        (None, None, docker_info("overlay2", "extfs"), None, [WARN, WARN]),
        (HomesRootFacts("/srv/homes", True, BTRFS, True), 10 * 1024**3, docker_info("btrfs", "btrfs"), None, [OK, OK]),
        (HomesRootFacts("/srv/homes", True, BTRFS, False), 10 * 1024**3, None, None, [FAIL]),
        (None, None, docker_info("overlay2", "extfs"), 1024**3, [WARN, FAIL]),
        (None, None, docker_info("overlay2", "xfs"), 1024**3, [WARN, OK]),
    ],
    ids=["nothing", "btrfs-both", "quota-off", "layers-ext4", "layers-xfs"],
)
def test_doctor_says_whether_quotas_can_be_enforced(homes, home_quota, info, container_quota, levels):
    findings = disk_quota_findings(homes, home_quota, info, container_quota)
    assert [f.level for f in findings] == levels
    for f in findings:
        if f.level != OK:  # how to get there, in the message or the fix
            assert "btrfs" in f.message + f.fix
            assert "pquota" in f.message + f.fix or f.subject == "home quota"


def test_a_swarm_refuses_quotas_it_would_not_apply():
    from gpuspawner.swarm import SwarmGPUSpawner

    assert "SwarmGPUSpawner does not apply home_quota" in disk_quota_refusal(SwarmGPUSpawner(home_quota="1G"), (), {})
    assert disk_quota_refusal(SwarmGPUSpawner(), (), {}) == ""


async def test_a_quota_without_a_homes_root_refuses_the_spawn_even_without_check_config():
    engine = FakeDocker()
    s = spawner(engine, home_quota="20M")
    with pytest.raises(SpawnException, match="homes_root .* is not"):
        await s.start()
    assert not engine.containers_by_id and not engine.volumes


def test_homes_root_is_an_absolute_path():
    assert GPUSpawner(homes_root="/srv/homes/").homes_root == "/srv/homes"
    with pytest.raises(TraitError, match="absolute path"):
        GPUSpawner(homes_root="homes")
