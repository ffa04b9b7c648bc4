"""Home volumes that belong to one person: labelled for their hub user, archived or removed with them."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from jupyterhub.spawner import SpawnException

from gpuspawner import GPUSpawner
from gpuspawner.homes import (
    ARCHIVED_FROM,
    FORMER,
    MINE,
    NEW,
    UNOWNED,
    USER_ID,
    HomeError,
    HomeOwner,
    HomeVolumes,
    archive_name,
    home_verdict,
)
from gpuspawner.spawner import apply_profile_choice

from .fakes import FakeDocker, make_spawner

ANA = HomeOwner("ana", "7", "2026-09-01T08:00:00.000000")
NOW = datetime(2026, 12, 1, 17, 33, tzinfo=timezone.utc)
HOME = "jupyterhub-user-ana"


@pytest.mark.parametrize(
    "labels, exists, verdict",
    [
        (None, False, NEW),
        (ANA.labels(), True, MINE),
        ({}, True, UNOWNED),  # made before 0.2, or by hand
        ({**ANA.labels(), USER_ID: "3"}, True, FORMER),  # another hub user of the same name
        (HomeOwner("ana", "7", "2025-01-01T00:00:00.000000").labels(), True, FORMER),  # an id given again
        (HomeOwner("ana", "7", "").labels(), True, MINE),  # a time on one side only does not decide
    ],
    ids=["none", "mine", "unowned", "other-id", "id-reused", "no-time"],
)
def test_whose_home_a_spawn_finds(labels, exists, verdict):
    assert home_verdict(labels, ANA, exists) == verdict


def test_owner_of_a_hub_user_and_archive_names():
    user = SimpleNamespace(name="ana", id=7, created=datetime(2026, 9, 1, 8))
    assert HomeOwner.of(user) == ANA
    assert archive_name(HOME, NOW) == "jupyterhub-user-ana-archived-20261201T173300Z"


@pytest.fixture
def engine():
    return FakeDocker()


def test_claim_makes_keeps_archives(engine):
    homes = HomeVolumes(engine, "lab:1")
    assert homes.claim(HOME, ANA) == "created"
    assert engine.volumes[HOME]["Labels"] == ANA.labels()
    engine.volumes[HOME]["files"]["notes.txt"] = "ana's"
    assert homes.claim(HOME, ANA) == "mine"
    new_ana = HomeOwner("ana", "9", "2026-12-01T09:00:00.000000")  # the name given to someone else
    assert homes.claim(HOME, new_ana, now=NOW) == f"archived {archive_name(HOME, NOW)}"
    assert engine.volumes[HOME] == {"Labels": new_ana.labels(), "files": {}}
    archive = engine.volumes[archive_name(HOME, NOW)]
    assert archive["files"] == {"notes.txt": "ana's"} and archive["Labels"][ARCHIVED_FROM] == HOME
    assert archive["Labels"][USER_ID] == "7"
    assert not engine.containers_by_id  # the copy's container is gone


def test_an_unowned_home_is_adopted_or_archived_as_the_admin_says(engine, caplog):
    engine.volumes[HOME] = {"Labels": {}, "files": {"old.txt": "?"}}
    homes = HomeVolumes(engine, "lab:1")
    assert homes.claim(HOME, ANA) == "adopted" and "has no owner labels" in caplog.text
    assert homes.claim(HOME, ANA, "archive", now=NOW).startswith("archived")
    assert engine.volumes[HOME]["files"] == {}


def test_a_failed_copy_keeps_the_home_and_leaves_no_half_archive(engine):
    engine.volumes[HOME] = {"Labels": ANA.labels(), "files": {"a": "1"}}
    engine.fail_copy = True
    with pytest.raises(HomeError, match="copying home jupyterhub-user-ana .* failed"):
        HomeVolumes(engine, "lab:1").retire(HOME, "archive", now=NOW)
    assert set(engine.volumes) == {HOME} and engine.volumes[HOME]["files"] == {"a": "1"}


def test_retire_archives_removes_or_keeps(engine):
    homes = HomeVolumes(engine, "lab:1")
    assert homes.retire(HOME, "archive") == ""  # no home: nothing to do
    engine.volumes[HOME] = {"Labels": ANA.labels(), "files": {"a": "1"}}
    assert homes.retire(HOME, "keep") == "" and HOME in engine.volumes
    assert homes.retire(HOME, "remove") == "removed" and HOME not in engine.volumes


PROFILES = [{"slug": "cpu", "display_name": "CPU", "image": "lab:1"}]


def spawner(engine, user="ana", server="", **config):
    s = make_spawner(GPUSpawner, engine, user=user, server_name=server, profiles=PROFILES, denials_file="", **config)
    s.user.created = datetime(2026, 9, 1, 8)
    s.user_options = {"profile": "cpu"}
    apply_profile_choice(s, s.user_options)
    return s


async def test_a_spawn_labels_a_new_home_for_its_user(engine):
    s = spawner(engine)
    await s.start()
    assert engine.volumes[HOME]["Labels"] == HomeOwner.of(s.user).labels()
    assert f"{HOME}:/home/jovyan:rw" in engine.inspect_container(s.object_id)["HostConfig"]["Binds"]


async def test_a_recycled_name_starts_empty_and_the_old_home_is_archived(engine):
    engine.volumes[HOME] = {"Labels": {**ANA.labels(), USER_ID: "1"}, "files": {"thesis.tex": "old ana"}}
    s = spawner(engine)
    await s.start()
    assert engine.volumes[HOME]["files"] == {}
    (archived,) = [v for v in engine.volumes if v.startswith(f"{HOME}-archived-")]
    assert engine.volumes[archived]["files"] == {"thesis.tex": "old ana"}
    assert any("yours starts empty" in step["message"] for step in s._progress)


async def test_deleting_the_user_archives_the_home_deleting_a_named_server_does_not(engine):
    s = spawner(engine)
    await s.start()
    await s.stop()
    named = spawner(engine, server="big")
    await named.delete_forever()
    assert HOME in engine.volumes
    await s.delete_forever()  # JupyterHub deletes the default server only with the user
    assert HOME not in engine.volumes
    assert [v for v in engine.volumes if v.startswith(f"{HOME}-archived-")]


async def test_deleted_user_home_remove(engine):
    s = spawner(engine, deleted_user_home="remove")
    await s.start()
    await s.stop()
    await s.delete_forever()
    assert engine.volumes == {}


async def test_a_home_that_cannot_be_prepared_refuses_the_spawn_holding_nothing(engine):
    engine.volumes[HOME] = {"Labels": {**ANA.labels(), USER_ID: "1"}, "files": {}}
    engine.fail_copy = True
    s = spawner(engine)
    with pytest.raises(SpawnException, match=r"Your home \(jupyterhub-user-ana\) could not be prepared"):
        await s.start()
    assert not engine.containers_by_id and HOME in engine.volumes
