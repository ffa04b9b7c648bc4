"""GPU-hours at work: what the spawner and the GPU culler tell the usage book, and budgets applied.

Above a fake Docker client, with a real SQLite database in a temporary folder: the pure parts
(records, budgets, reports) are tested in test_usage*.py; here, that each start, stop, failed
start, reconciliation and hub restart reaches the book with the right reason, and that a spent
budget refuses a spawn at once and shows on the spawn page.
"""

import asyncio

import pytest
from jupyterhub.spawner import SpawnException

from gpuspawner import GPUSpawner
from gpuspawner.hub_state import reset_hub_state
from gpuspawner.usage import UsageStore

from .fakes import FakeDocker, make_spawner
from .test_spawner import GPUS, PROFILES, spawner


@pytest.fixture
def engine():
    return FakeDocker()


def records(db):
    return UsageStore(f"sqlite:///{db}").records()


async def settled(s):
    """Until the usage thread has written everything told before."""
    await s.shared.usage.uses()


async def test_a_start_and_a_stop_make_one_closed_record_with_the_reason(engine, tmp_path):
    db = tmp_path / "usage.sqlite"
    s = spawner(engine, "ann", profile="gpu", groups=["ml101"], usage_db_url=f"sqlite:///{db}")
    cpu = spawner(engine, "cpu-only", profile="cpu", usage_db_url=f"sqlite:///{db}")
    await s.start()
    await cpu.start()  # holds no unit: no record
    await settled(s)
    (opened,) = records(db)
    assert (opened.user, opened.groups, opened.profile, opened.units) == ("ann", ("ml101",), "gpu", ("GPU-0000",))
    assert opened.stopped_at is None and opened.image_digest == s.image_digest
    await s.stop()
    await settled(s)
    (closed,) = records(db)
    assert closed.stop_reason == "user" and closed.stopped_at >= closed.started_at
    assert closed.gpu_seconds == pytest.approx((closed.stopped_at - closed.started_at).total_seconds(), abs=1e-3)


async def test_a_failed_start_closes_its_record_as_failed_start(engine, tmp_path):
    db = tmp_path / "usage.sqlite"
    s = spawner(engine, "ann", profile="gpu", usage_db_url=f"sqlite:///{db}")

    async def broken(*args, **kwargs):
        raise RuntimeError("the engine said no")

    type(s).start_object = broken
    try:
        with pytest.raises(RuntimeError):
            await s.start()
    finally:
        del type(s).start_object
    await settled(s)
    (record,) = records(db)
    assert record.stop_reason == "failed_start"


async def test_a_restarted_hub_keeps_the_running_servers_record_open(engine, tmp_path):
    db = tmp_path / "usage.sqlite"
    s = spawner(engine, "ann", profile="gpu", usage_db_url=f"sqlite:///{db}")
    await s.start()
    await settled(s)
    reset_hub_state()  # the hub restarts: a new ledger, rebuilt from the containers
    again = make_spawner(GPUSpawner, engine, user="bob", profiles=PROFILES, gpus=GPUS, usage_db_url=f"sqlite:///{db}")
    await again.ledger()
    await settled(again)
    (record,) = records(db)
    assert record.user == "ann" and record.stopped_at is None  # kept open: nothing closed twice, nothing lost


BUDGET = {"group": "ml101", "gpu_hours": 0.001, "per": "week", "time_zone": "UTC", "name": "ML101"}  # 3.6 s


async def test_a_spent_budget_refuses_at_once_and_the_card_says_what_is_left(engine, tmp_path):
    db = tmp_path / "usage.sqlite"
    config = {"usage_db_url": f"sqlite:///{db}", "gpu_budgets": [BUDGET]}
    first = spawner(engine, "ann", profile="gpu", groups=["ml101"], **config)
    page = make_spawner(GPUSpawner, engine, user="bob", groups=["ml101"], profiles=PROFILES, gpus=GPUS, **config)
    assert "1 of 0.001 GPU-hours left this week" not in await page.get_options_form()
    assert "0 of 0.001 GPU-hours left this week." in await page.get_options_form()  # rounded down to a tenth
    await first.start()
    await asyncio.sleep(3.7)  # the group's 3.6 GPU-seconds spent
    second = spawner(engine, "bob", profile="gpu", groups=["ml101"], **config)
    with pytest.raises(SpawnException) as refused:
        await second.start()
    assert refused.value.reason == "budget" and refused.value.status_code == 403
    assert refused.value.message.startswith("GPU: ML101's budget of 0.001 GPU-hours this week is spent: ")
    assert "it renews Monday 00:00 UTC" in refused.value.message
    html = await page.get_options_form()
    assert 'value="gpu" disabled required>' in html and "is spent" in html
    other = spawner(engine, "cat", profile="gpu", groups=["stats"], **config)
    await other.start()  # not the group's budget
    assert other.gpu_ids


def test_budgets_are_validated_when_the_hub_starts(tmp_path):
    from traitlets.config import Config

    from gpuspawner.checks import ConfigInvalid, check_config

    c = Config()
    c.GPUSpawner.gpus = GPUS
    c.GPUSpawner.profiles = PROFILES
    c.GPUSpawner.network_name = "host"
    c.GPUSpawner.gpu_budgets = [{**BUDGET, "per": "month"}]
    with pytest.raises(ConfigInvalid, match="budget 'ML101': per: 'month' is not a period"):
        check_config(c, prepull=False)
