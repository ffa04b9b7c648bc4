"""The GPU culler and the usage records: admins exempt from a budget's stop where it says so, and the
utilisation and peak memory of each server's own processes kept on its record (a fake NVML at the seam)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from gpuspawner import labels as label
from gpuspawner.culler.figures import UNMEASURED, FigureBook, OpenRecord, Sample, sample
from gpuspawner.culler.policy import UnitReading
from gpuspawner.culler.usage import NVMLUsage
from gpuspawner.usage import UsageBook, UsageStore

from .test_culler import ME, OTHER, T0, Clock, culler, hub_server
from .test_nvml import Dev, FakeNVML

G = 1024**3
ARGS = {"inactive": timedelta(0), "inactive_limit": 0}


# --- what a server's own processes did in one round (pure)


def reading(util=None, owners=None, per_process=None, memory=None):
    return UnitReading(util, owners, per_process, memory)


def test_a_sample_counts_the_servers_own_processes_only():
    readings = {
        "GPU-0": reading(90, {1: ME, 2: ME, 3: OTHER, 4: ""}, {1: 30, 2: 25, 3: 40}, {1: 2 * G, 2: G, 3: 9 * G, 4: G}),
        "GPU-1": reading(10, {5: ME}, {5: 10}, {5: 3 * G}),
    }
    assert sample(ME, ["GPU-0", "GPU-1"], readings) == Sample((55 + 10) / 2, 6 * G)  # the mean of its two units
    assert sample(OTHER, ["GPU-0"], readings) == Sample(40, 9 * G)


def test_a_server_without_processes_on_its_gpu_is_measured_as_0():
    assert sample(ME, ["GPU-0"], {"GPU-0": reading(0, {}, {}, {})}) == Sample(0, 0)


def test_per_process_shares_are_capped_at_the_whole_unit():
    assert sample(ME, ["GPU-0"], {"GPU-0": reading(100, {1: ME, 2: ME}, {1: 70, 2: 60}, {})}).utilisation == 100


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ({}, UNMEASURED),  # NVML did not answer: nothing read
        ({"GPU-0": reading(None, None, None, None)}, UNMEASURED),  # the unit could not be read
        ({"GPU-0": reading(None, {1: ME}, None, {1: G})}, Sample(None, G)),  # a MIG instance: memory, no share
        ({"GPU-0": reading(50, {1: ME, 2: ME}, {1: 50}, {1: G})}, Sample(50, None)),  # 2's memory unknown
    ],
    ids=["no-nvml", "unreadable", "mig", "memory-unknown"],
)
def test_what_nvml_cannot_say_is_never_0(readings, expected):
    assert sample(ME, ["GPU-0"], readings) == expected


# --- the figures over the rounds (pure)


def test_the_book_keeps_a_time_weighted_mean_and_the_peak_and_says_what_changed():
    book = FigureBook(interval=60)
    record = OpenRecord(7, "ann/", T0)
    opened = {"ann/": record}
    assert book.round(T0 + timedelta(seconds=60), opened, {"ann/": Sample(90, 2 * G)}) == {7: (90.0, 2 * G)}
    assert book.round(T0 + timedelta(seconds=180), opened, {"ann/": Sample(0, G)}) == {
        7: (30.0, 2 * G)
    }  # 60 s at 90, 120 at 0
    assert book.round(T0 + timedelta(seconds=240), opened, {"ann/": Sample(None, 5 * G)}) == {7: (30.0, 5 * G)}
    assert book.round(T0 + timedelta(seconds=300), opened, {"ann/": Sample(None, G)}) == {}  # nothing changed
    assert book.round(T0 + timedelta(seconds=300), opened, {"ann/": Sample(100, 9 * G)}) == {}  # the same round again
    assert book.round(T0 + timedelta(seconds=360), opened, {"bob/": Sample(50, G)}) == {}  # no record open for bob
    assert book.round(T0 + timedelta(seconds=360), {}, {}) == {} and not book._kept  # closed: forgotten


def test_a_restarted_culler_goes_on_from_the_figures_on_the_record():
    book = FigureBook(interval=60)
    kept = OpenRecord(7, "ann/", T0, utilisation=80.0, peak_memory=4 * G)  # an hour of rounds before the restart
    changed = book.round(T0 + timedelta(hours=1), {"ann/": kept}, {"ann/": Sample(20, G)})
    assert changed == {7: (round((80 * 3540 + 20 * 60) / 3600, 1), 4 * G)}


# --- the culler keeps them on the open record, through a fake NVML


def nvml_lab(tmp_path):
    """A fake NVML with two GPUs, and a /proc that places its processes: 101 and 102 in ann's
    container, 201 in another's (on the same GPU), 301 on the host."""
    proc = tmp_path / "proc"
    for pid, cgroup in (
        (101, f"/docker/{ME}"),
        (102, f"/docker/{ME}"),
        (201, f"/docker/{OTHER}"),
        (301, "/init.scope"),
    ):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
    return proc


def fake_nvml(busy_101: int, memory_101: int) -> FakeNVML:
    import time

    now_us = int(time.time() * 1e6)
    return FakeNVML(
        [
            Dev(
                "GPU-0",
                "NVIDIA A100-SXM4-40GB",
                40 * G,
                utilization=95,
                pids=(101, 201, 301),
                samples=[(101, busy_101, now_us - 1_000_000), (201, 60, now_us - 1_000_000)],
                pid_memory={101: memory_101, 201: 20 * G, 301: G},
            ),
            Dev("GPU-1", "NVIDIA A100-SXM4-40GB", 40 * G, pids=(102,), samples=[], pid_memory={102: G}),
        ]
    )


def usage_db(tmp_path, *servers):
    url = f"sqlite:///{tmp_path}/usage.sqlite"
    book = UsageBook(UsageStore(url))
    for user, units in servers:
        book.assigned(f"{user}/", user=user, units=units, groups=["ml101"], profile="gpu", at=T0 - timedelta(hours=1))
    return url, book


def labelled(user, units, cid=ME, groups=("ml101",)):
    record = label.ServerRecord(user, "", "gpu", tuple(units), groups=frozenset(groups))
    return {"Id": cid, "Labels": label.server_labels(record)}


async def test_the_culler_keeps_a_servers_own_utilisation_and_peak_memory_on_its_open_record(tmp_path):
    url, book = usage_db(tmp_path, ("ann", ["GPU-0", "GPU-1"]))
    proc = nvml_lab(tmp_path)
    clock = Clock()
    app = culler(
        tmp_path,
        [labelled("ann", ["GPU-0", "GPU-1"])],
        {},
        clock,
        cull_every=60,
        hub=f"c.GPUSpawner.usage_db_url = {url!r}\n",
    )
    app.usage_source = NVMLUsage(proc=str(proc), nvml=fake_nvml(busy_101=80, memory_101=6 * G))
    ann = hub_server("ann/", T0 - timedelta(hours=1), T0)
    assert await app.arbiter(server=ann, **ARGS) is False  # the round reads NVML and keeps the figures
    (record,) = book.store.records()
    # GPU-0: 101's 80 % (201 is another server's, 301 the host's); GPU-1: 102 ran nothing. Memory: 6 + 1 GiB.
    assert (record.utilisation, record.peak_memory) == (40.0, 7 * G)
    clock.advance(60)
    app.usage_source = NVMLUsage(proc=str(proc), nvml=fake_nvml(busy_101=0, memory_101=2 * G))
    await app.arbiter(server=ann, **ARGS)
    (record,) = book.store.records()
    assert (record.utilisation, record.peak_memory) == (20.0, 7 * G)  # a minute at 40 %, one at 0; the peak kept
    closed = book.released("ann/", "user", at=T0 + timedelta(minutes=2))  # the hub's close keeps them
    assert (closed.utilisation, closed.peak_memory) == (20.0, 7 * G)


async def test_without_nvml_the_figures_stay_empty_and_the_culler_goes_on(tmp_path, caplog):
    url, book = usage_db(tmp_path, ("ann", ["GPU-0"]))
    clock = Clock()
    app = culler(
        tmp_path, [labelled("ann", ["GPU-0"])], {}, clock, cull_every=60, hub=f"c.GPUSpawner.usage_db_url = {url!r}\n"
    )
    app.usage_source = NVMLUsage(nvml=FakeNVML(fail_init=FakeNVML.NVML_ERROR_DRIVER_NOT_LOADED))
    logged(app)
    with caplog.at_level(logging.WARNING):
        assert await app.arbiter(server=hub_server("ann/", T0 - timedelta(hours=1), T0), **ARGS) is False
    (record,) = book.store.records()
    assert (record.utilisation, record.peak_memory) == (None, None)
    assert "Cannot read GPU usage" in caplog.text


async def test_a_usage_database_the_hub_has_not_made_is_not_made_by_the_culler(tmp_path, caplog):
    missing = tmp_path / "not-yet.sqlite"
    app = culler(
        tmp_path,
        [labelled("ann", ["GPU-0"])],
        {"GPU-0": reading(50, {1: ME}, {1: 50}, {1: G})},
        Clock(),
        cull_every=60,
        hub=f"c.GPUSpawner.usage_db_url = 'sqlite:///{missing}'\n",
    )
    logged(app)
    with caplog.at_level(logging.WARNING):
        await app.arbiter(server=hub_server("ann/", T0 - timedelta(hours=1), T0), **ARGS)
    assert not missing.exists()
    assert "Cannot keep the GPU servers' utilisation on their usage records: no usage database at" in caplog.text


# --- admins exempt from a budget's stop


def logged(app):
    """The culler's log into pytest's caplog (a traitlets app's own logger does not propagate)."""
    app.log = logging.getLogger("gpuspawner.tests.culler")
    return app


def budget_culler(tmp_path, clock, **budget):
    tmp_path.mkdir(exist_ok=True)
    url, book = usage_db(tmp_path, ("ada", ["GPU-0"]))
    spec = {"name": "ML101", "group": "ml101", "gpu_hours": 0.5, "per": "week", "time_zone": "UTC", **budget}
    hub = (
        f"c.GPUSpawner.usage_db_url = {url!r}\nc.GPUSpawner.gpu_budgets = [{spec!r}]\nc.GPUSpawner.budget_grace = 60\n"
    )
    app = culler(tmp_path, [labelled("ada", ["GPU-0"])], {"GPU-0": reading(90, {1: ME})}, clock, cull_every=1, hub=hub)
    return logged(app)


def hub_says(**model):
    asked = []

    async def hub_user(name):
        asked.append(name)
        if isinstance(model.get("error"), Exception):
            raise model["error"]
        return {"kind": "user", "name": name, **model}

    hub_user.asked = asked
    return hub_user


async def test_an_admin_is_not_stopped_for_a_budget_that_exempts_admins(tmp_path, caplog):
    clock = Clock()
    app = budget_culler(tmp_path, clock)
    app.hub_user = hub_says(admin=True)
    ada = hub_server("ada/", T0 - timedelta(hours=1), T0)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert await app.arbiter(server=ada, **ARGS) is False
            clock.advance(61)  # well past the grace each round
    assert "ada/: ML101's budget of 0.5 GPU-hours this week is spent: 1 used;" in caplog.text
    assert caplog.text.count("ada is an admin, exempt (admins_exempt)") == 1
    assert app.hub_user.asked == ["ada"] * 3  # once a round
    assert not (tmp_path / "stops.jsonl").exists()


async def test_an_admin_is_stopped_for_a_budget_that_does_not_exempt_admins_and_so_is_anyone(tmp_path):
    for budget, model in (({"admins_exempt": False}, {"admin": True}), ({}, {"admin": False})):
        clock = Clock()
        app = budget_culler(tmp_path / str(len(model) + len(budget)), clock, **budget)
        app.hub_user = hub_says(**model)
        ada = hub_server("ada/", T0 - timedelta(hours=1), T0)
        assert await app.arbiter(server=ada, **ARGS) is False  # the grace starts
        clock.advance(61)
        assert await app.arbiter(server=ada, **ARGS) is True
        if budget:
            assert app.hub_user.asked == []  # no budget exempts admins: nobody asked


async def test_while_the_hub_cannot_say_who_is_an_admin_nobody_is_stopped_for_a_budget(tmp_path, caplog):
    clock = Clock()
    app = budget_culler(tmp_path, clock)
    app.hub_user = hub_says(error=ConnectionError("the hub restarts"))
    ada = hub_server("ada/", T0 - timedelta(hours=1), T0)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert await app.arbiter(server=ada, **ARGS) is False
            clock.advance(61)
    assert "Cannot ask the hub whether ada is an admin: the hub restarts" in caplog.text
    app.hub_user = hub_says(admin=False)
    assert await app.arbiter(server=ada, **ARGS) is False  # known now: the grace starts
    clock.advance(61)
    assert await app.arbiter(server=ada, **ARGS) is True


async def test_a_token_that_cannot_read_the_admin_field_is_said_once_and_budgets_apply(tmp_path, caplog):
    clock = Clock()
    app = budget_culler(tmp_path, clock)
    app.hub_user = hub_says()  # a model without "admin": the token lacks read:users:name
    ada = hub_server("ada/", T0 - timedelta(hours=1), T0)
    with caplog.at_level(logging.WARNING):
        assert await app.arbiter(server=ada, **ARGS) is False
        clock.advance(61)
        assert await app.arbiter(server=ada, **ARGS) is True
    assert caplog.text.count("it needs the scope read:users:name") == 1


async def test_the_culler_asks_the_hub_for_a_user_with_its_own_token(tmp_path, monkeypatch):
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port
    from tornado.web import Application, RequestHandler

    seen = []

    class User(RequestHandler):
        def get(self, name):
            seen.append((self.request.path, name, self.request.headers.get("Authorization")))
            self.write(json.dumps({"kind": "user", "name": name, "admin": name == "ada x"}))

    sock, port = bind_unused_port()
    server = HTTPServer(Application([(r"/hub/api/users/([^/]+)", User)]))
    server.add_sockets([sock])
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "culler-token")
    app = budget_culler(tmp_path, Clock())
    app.url = f"http://127.0.0.1:{port}/hub/api"
    try:
        assert await app.is_admin("ada x") is True and await app.is_admin("bob") is False
    finally:
        server.stop()
    assert seen == [
        ("/hub/api/users/ada%20x", "ada x", "token culler-token"),
        ("/hub/api/users/bob", "bob", "token culler-token"),
    ]
