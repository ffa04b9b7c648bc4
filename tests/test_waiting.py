"""Waiting in line for a GPU: the spawner's glue to the wait queue, above a fake Docker client.

The queue's own rules (order, fairness, reservations) are tested in test_queue.py; here, what a
spawn does with them: it waits holding nothing, is told where it stands, starts when a unit frees,
leaves the line when stopped or when its ``queue_timeout`` runs out.
"""

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from jupyterhub.spawner import SpawnException

from gpuspawner import GPUSpawner
from gpuspawner.eventfiles import read_snapshot
from gpuspawner.hub_state import reset_hub_state
from gpuspawner.waiting import QUEUE_WAIT

from .fakes import FakeDocker
from .test_spawner import GPUS, PROFILES, spawner

WAITING = [*PROFILES, {"slug": "line", "display_name": "ML101", "image": "lab:1", "gpus": 1, "queue_timeout": "1h"}]


def container_labels(engine, s) -> dict:
    return engine.inspect_container(s.object_id)["Labels"]


@pytest.fixture
def engine():
    return FakeDocker()


def waiting_spawner(engine, user, **config):
    return spawner(engine, user, profile="line", profiles=WAITING, **config)


async def until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_five_students_on_two_gpus_wait_in_order_holding_nothing(engine, tmp_path):
    queue_file = tmp_path / "queue.json"
    students = [waiting_spawner(engine, f"s{i}", queue_file=str(queue_file)) for i in range(5)]
    await students[0].start()
    await students[1].start()
    ledger = students[0].shared.ledger
    waits = []
    for n, s in enumerate(students[2:], 1):  # one after the other: the order they come in is the line's
        waits.append(asyncio.ensure_future(s.start()))
        await until(lambda: len(students[0].shared.line.queue) == n)
    assert {a.holder for a in ledger.assignments()} == {"s0/", "s1/"}  # waiting holds nothing
    # Each is told its place, on its progress.
    assert [s._progress[-1]["message"] for s in students[2:]] == [
        f"Waiting for a GPU: {n} in line for ML101 (2 A100 GPUs, all in use). Waits 1 hour more at most."
        for n in ("1st", "2nd", "3rd")
    ]
    snapshot = read_snapshot(str(queue_file))
    assert [(w["user"], w["position"]) for w in snapshot["waiting"]] == [("s2", 1), ("s3", 2), ("s4", 3)]
    assert snapshot["waiting_for"] == ["GPU-0000", "GPU-1111"]
    # The JupyterHub start timeout is lengthened by the wait.
    assert students[2].start_timeout == 60 + 3600

    observed = QUEUE_WAIT._sum.get()
    await students[0].stop()  # a GPU frees: the first in line gets it, at once
    await asyncio.wait_for(waits[0], 5)
    assert students[2].gpu_ids == ("GPU-0000",)
    assert students[3]._progress[-1]["message"].startswith("Waiting for a GPU: 1st in line for ML101")
    assert not waits[1].done() and not waits[2].done()
    assert QUEUE_WAIT._sum.get() > observed

    # The second stops waiting (JupyterHub cancels its start): it leaves the line, holding nothing.
    waits[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waits[1]
    await until(lambda: len(students[0].shared.line.queue) == 1)
    assert students[4]._progress[-1]["message"].startswith("Waiting for a GPU: 1st in line")
    await students[1].stop()
    await asyncio.wait_for(waits[2], 5)
    assert students[4].gpu_ids == ("GPU-1111",)
    assert read_snapshot(str(queue_file))["waiting"] == []
    assert {a.holder for a in ledger.assignments()} == {"s2/", "s4/"}


def test_only_the_hubs_own_spawners_keep_the_lines_file(engine, tmp_path):
    """A new hub clears the file a stopped hub left; a spawner made from the hub's config by the
    culler (for the lab hours) or a command, with no user, leaves the hub's file as it is."""
    queue_file = tmp_path / "queue.json"
    hubs_line = json.dumps({"time": 1.0, "waiting": [{"user": "s2"}], "waiting_for": ["GPU-0000"]})
    queue_file.write_text(hubs_line)
    service = GPUSpawner(queue_file=str(queue_file), gpus=GPUS, profiles=PROFILES, usage_db_url="")
    service.shared.line.serve(service.shared.ledger, changed=True)  # the lab hours' moves, as the culler's book
    assert queue_file.read_text() == hubs_line
    reset_hub_state()
    waiting_spawner(engine, "s0", queue_file=str(queue_file)).shared  # the hub, started again
    assert read_snapshot(str(queue_file))["waiting"] == []


async def test_queue_timeout_runs_out_with_a_clear_message_holding_nothing(engine, tmp_path):
    denials = tmp_path / "denials.jsonl"
    profiles = [*PROFILES, {"slug": "line", "display_name": "ML101", "image": "lab:1", "gpus": 1, "queue_timeout": 1}]
    holders = [spawner(engine, u, profile="gpu") for u in ("a", "b")]
    for s in holders:
        await s.start()
    late = spawner(engine, "late", profile="line", profiles=profiles, denials_file=str(denials))
    with pytest.raises(SpawnException) as refused:
        await asyncio.wait_for(late.start(), 5)
    assert refused.value.reason == "queue_timeout"
    assert refused.value.message.startswith("ML101: waited 1 second in line and no unit freed in time")
    assert late.gpu_ids == () and "late/" not in late.shared.line
    assert json.loads(denials.read_text())["reason"] == "queue_timeout"
    assert await late.poll() == 0  # no container was made


async def test_a_profile_without_queue_timeout_is_refused_at_once_and_a_quota_never_waits(engine):
    first = waiting_spawner(engine, "ann", max_gpus_per_user=1)
    await first.start()
    second = spawner(engine, "ann", profile="line", profiles=WAITING, server_name="b", max_gpus_per_user=1)
    with pytest.raises(SpawnException) as refused:
        await asyncio.wait_for(second.start(), 2)
    assert refused.value.reason == "user_quota"  # a quota is not a unit in use: no waiting
    await spawner(engine, "bob", profile="gpu").start()
    with pytest.raises(SpawnException) as refused:
        await asyncio.wait_for(spawner(engine, "cat", profile="gpu").start(), 2)
    assert refused.value.status_code == 503 and refused.value.reason == "no_gpu"  # "gpu" has no queue_timeout
    assert not first.shared.line.queue.waiting()


async def test_the_spawn_page_card_of_a_profile_that_waits_stays_selectable_and_says_so(engine):
    from .fakes import make_spawner

    for name in ("a", "b"):
        await spawner(engine, name, profile="gpu").start()
    first = waiting_spawner(engine, "c")
    waiting = asyncio.ensure_future(first.start())
    await until(lambda: "c/" in first.shared.line)
    s = make_spawner(GPUSpawner, engine, user="d", profiles=WAITING, gpus=GPUS)
    html = await s.get_options_form()
    assert 'value="gpu" disabled required>' in html  # no queue_timeout: cannot be chosen
    assert 'value="line" required>' in html
    assert "All 2 in use now: you wait in line behind 1, 1 hour at most, and start as soon as one frees." in html
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- lab hours (c.GPUSpawner.reservations)


def lab_hours(start_in: float, minutes: float = 60, unit: str = "GPU-0000") -> list[dict]:
    start = datetime.now(timezone.utc) + timedelta(seconds=start_in)
    end = start + timedelta(minutes=minutes)
    fmt = "%Y-%m-%d %H:%M:%S"
    return [
        {
            "name": "ML101 lab",
            "groups": ["ml101"],
            "units": [unit],
            "time_zone": "UTC",
            "dates": [{"start": start.strftime(fmt), "end": end.strftime(fmt)}],
        }
    ]


async def test_a_server_on_a_unit_soon_reserved_is_told_and_its_runtime_cut(engine):
    hours = lab_hours(600)
    other = spawner(engine, "bob", profile="gpu", reservations=hours)
    await other.start()
    assert other.gpu_ids == ("GPU-1111",)  # the unit a lab takes soon is left while another is free
    late = spawner(engine, "cat", profile="gpu", reservations=hours)
    await late.start()
    assert late.gpu_ids == ("GPU-0000",)  # nothing else fits: it may run until the lab starts
    note = next(p["message"] for p in late._progress if p["message"].startswith("Note:"))
    assert note.startswith("Note: this GPU is free until ") and note.endswith(
        ", when ML101 lab starts. Your server stops then; your files are kept."
    )
    labels = container_labels(engine, late)
    assert 595 <= float(labels["gpuspawner.max-runtime"]) <= 600


async def test_at_the_window_start_the_waiting_member_gets_the_reserved_unit(engine):
    hours = lab_hours(1.5, unit="GPU-1111")
    for name in ("a", "b"):
        await spawner(engine, name, profile="gpu", reservations=hours).start()
    member = waiting_spawner(engine, "mia", groups=["ml101"], reservations=hours)
    waiting = asyncio.ensure_future(member.start())
    await until(lambda: "mia/" in member.shared.line)
    holder = next(s for s in member.shared.ledger.assignments() if "GPU-1111" in s.ids)
    # The culler stops the holder at the window's start (tests/test_culler.py); here, its units free.
    await asyncio.sleep(1.6)
    member.shared.ledger.release(holder.holder)
    member.shared.line.serve(member.shared.ledger)
    await asyncio.wait_for(waiting, 5)
    assert member.gpu_ids == ("GPU-1111",)
    # A non-member may not take the reserved unit while the window lasts, even when it is free.
    await member.stop()
    with pytest.raises(SpawnException) as refused:
        await spawner(engine, "zed", profile="gpu", reservations=hours).start()
    assert refused.value.reason == "no_gpu"


async def test_when_the_window_ends_its_free_unit_goes_to_a_non_member_waiting(engine):
    hours = lab_hours(-1, minutes=0.05)  # under way, ending ~2 s from now
    await spawner(engine, "a", profile="gpu", reservations=hours).start()  # takes the unreserved GPU
    zed = waiting_spawner(engine, "zed", reservations=hours)
    waiting = asyncio.ensure_future(zed.start())
    await until(lambda: "zed/" in zed.shared.line)
    assert zed.shared.ledger.free() and not waiting.done()  # the reserved unit is free, but not for zed
    await asyncio.wait_for(waiting, 6)  # the line moves at the window's end, by itself
    assert zed.gpu_ids == ("GPU-0000",)


async def test_the_cards_and_the_dashboard_show_the_lab_hours_now_and_next(engine):
    from gpuspawner.gpus import Requester

    from .fakes import make_spawner

    now_hours = lab_hours(-60, minutes=60)
    s = make_spawner(
        GPUSpawner, engine, user="mia", groups=["ml101"], profiles=WAITING, gpus=GPUS, reservations=now_hours
    )
    await s.ledger()
    html = await s.get_options_form()
    assert "Lab hours: 1 reserved for ML101 lab (yours) until " in html
    reset_hub_state()  # another hub, whose lab hours come later
    later = make_spawner(GPUSpawner, engine, user="bob", profiles=WAITING, gpus=GPUS, reservations=lab_hours(3600))
    book = later.reservation_book()
    line = book.describe_units(["GPU-0000", "GPU-1111"], Requester("bob"), "gpu", time.time())
    assert line.startswith("Lab hours: next: ML101 lab, ") and line.endswith("(UTC)")
    assert book.describe_unit("GPU-0000", time.time()).startswith("next lab hours: ML101 lab, ")
    assert book.describe_unit("GPU-1111", time.time()) == ""


async def test_the_profiles_images_are_pulled_again_before_a_window(engine):
    s = spawner(engine, "bob", profile="gpu", reservations=lab_hours(30), pull_policy="ifnotpresent")
    s.shared.prepull_lead = 29.5  # a window 30 s ahead: its pull is due in half a second
    pulls = []

    async def prepull(images):
        pulls.append(list(images))

    s.shared.puller.prepull = prepull
    await s.ledger()
    await until(lambda: len(pulls) == 1)  # the hub's first use of its ledger
    await until(lambda: len(pulls) == 2, timeout=5)  # before the window
    assert pulls[1] == ["lab:1"] * len(PROFILES)
    await asyncio.sleep(0.5)
    assert len(pulls) == 2  # once per window
