"""The GPU culler's clocks: each rule's start and stop from what the culler knows (an injected clock),
their file, and the culler writing it each round."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from gpuspawner import labels as label
from gpuspawner.culler.clocks import (
    BUDGET,
    IDLE,
    IDLE_WHEN_WAITING,
    RESERVATION,
    RUNTIME,
    Clock,
    ServerClocks,
    parse_report,
    report_json,
    server_clocks,
)
from gpuspawner.culler.policy import CullRules, GPUServer, UnitReading
from gpuspawner.reservations import Booking, Reservation, Window
from gpuspawner.usage.budgets import Standing, parse_budgets

from .test_culler import BUSY, ME, T0, culler, hub_server
from .test_culler import IDLE as IDLE_READING
from .test_culler import Clock as RoundClock

RULES = CullRules(gpu_idle_timeout=1800, max_runtime=4 * 3600, gpu_idle_timeout_when_waiting=600)


def server(rules=RULES, started=T0, units=("GPU-0",)):
    return GPUServer("alice", "", ME, units, rules, started, profile="gpu")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def by_rule(clocks: ServerClocks) -> dict[str, Clock]:
    return {c.rule: c for c in clocks.clocks}


# --- the pure part


def test_an_idle_server_counts_from_when_it_was_first_seen_idle():
    clocks = by_rule(server_clocks(server(), idle_since=at(10)))
    assert clocks[IDLE] == Clock(IDLE, 1800, at(10), at(40))
    # Nobody waits: the sooner rule applies at times only, and counts nothing now.
    assert clocks[IDLE_WHEN_WAITING] == Clock(IDLE_WHEN_WAITING, 600, None, None, applies=False)
    assert clocks[RUNTIME] == Clock(RUNTIME, 4 * 3600, T0, at(240))
    assert server_clocks(server(), idle_since=at(10)).first_stop() == clocks[IDLE]


def test_a_busy_server_has_no_idle_stop_and_the_time_limit_still_counts():
    clocks = by_rule(server_clocks(server(), idle_since=None, wanted=True))
    assert (clocks[IDLE].since, clocks[IDLE].stops_at) == (None, None)
    assert clocks[IDLE_WHEN_WAITING].applies and clocks[IDLE_WHEN_WAITING].stops_at is None
    assert server_clocks(server(), idle_since=None).first_stop().rule == RUNTIME


def test_while_someone_waits_the_sooner_idle_rule_counts_from_the_same_start():
    clocks = by_rule(server_clocks(server(), idle_since=at(10), wanted=True))
    assert clocks[IDLE_WHEN_WAITING] == Clock(IDLE_WHEN_WAITING, 600, at(10), at(20))
    assert server_clocks(server(), idle_since=at(10), wanted=True).first_stop().rule == IDLE_WHEN_WAITING


def test_recent_jupyter_activity_puts_the_idle_stop_off_as_the_culler_does():
    rules = CullRules(gpu_idle_timeout=1800, jupyter_activity_grace=600)
    late = by_rule(server_clocks(server(rules), idle_since=at(0), last_activity=at(35)))[IDLE]
    assert late.stops_at == at(45) and late.grace == 600  # 10 minutes after the last activity
    early = by_rule(server_clocks(server(rules), idle_since=at(0), last_activity=at(5)))[IDLE]
    assert early.stops_at == at(30)  # long before the timeout: the timeout


def test_no_start_time_no_runtime_stop_and_rules_off_have_no_clock():
    assert by_rule(server_clocks(server(started=None)))[RUNTIME].stops_at is None
    assert server_clocks(server(CullRules())).clocks == ()
    assert server_clocks(server(CullRules())).first_stop() is None


BUDGET_ENTRY = {"name": "ML101", "group": "ml101", "gpu_hours": 10, "per": "week", "time_zone": "UTC"}


def standing(used_hours: float, rate: int = 1, name: str = "ML101") -> Standing:
    """Where a budget stands at T0: ML101's (a group's), or with no name every user's own."""
    entry = (
        {**BUDGET_ENTRY, "name": name} if name else {**BUDGET_ENTRY, "name": None, "group": None, "every_user": True}
    )
    (budget,) = parse_budgets([{k: v for k, v in entry.items() if v not in (None, "")}])
    return Standing(budget, budget.window(T0), T0, Fraction(used_hours) * 3600, Fraction(rate))


def test_a_spent_budget_stops_the_server_its_grace_after_it_was_first_seen_spent():
    (clock,) = server_clocks(server(CullRules()), budgets=[(standing(10.2), at(-3))], budget_grace=600).clocks
    assert (clock.rule, clock.since, clock.stops_at, clock.limit, clock.name) == (BUDGET, at(-3), at(7), 600, "ML101")
    assert clock.note.startswith("ML101's budget of 10 GPU-hours this week is spent: 10.2 used;")


def test_a_budget_not_spent_yet_stops_the_server_when_the_running_servers_spend_the_rest_and_the_grace():
    (clock,) = server_clocks(server(CullRules()), budgets=[(standing(9.5), None)], budget_grace=600).clocks
    assert clock.since is None and clock.stops_at == at(30 + 10)  # half an hour at one GPU, then the grace
    assert clock.note == "ML101's budget: 0.5 of 10 GPU-hours left this week"
    (idle,) = server_clocks(server(CullRules()), budgets=[(standing(2, rate=0, name=""), None)]).clocks
    assert idle.stops_at is None and idle.note == "Your budget: 8 of 10 GPU-hours left this week"


def test_the_next_lab_hours_on_its_gpu_stop_it_at_their_start():
    zone = ZoneInfo("Europe/Berlin")
    window = Window(at(90).timestamp(), at(210).timestamp(), zone)
    booking = Booking(Reservation("ML101 lab", zone, (window,)), window)
    (clock,) = server_clocks(server(CullRules()), booking=booking).clocks
    assert (clock.rule, clock.since, clock.stops_at, clock.name) == (RESERVATION, None, at(90), "ML101 lab")
    assert clock.note == "Friday 27 November 2026, 11:30-13:30 (Europe/Berlin)"


def test_the_file_says_every_clock_and_reads_back_skipping_what_it_cannot_read():
    clocks = server_clocks(server(), idle_since=at(10), wanted=True)
    body = report_json([clocks], at(12), 60)
    assert json.loads(json.dumps(body)) == body  # plain JSON
    assert body["servers"][0]["clocks"][0] == {
        "rule": IDLE,
        "limit": 1800,
        "since": "2026-11-27T09:10:00+00:00",
        "stops_at": "2026-11-27T09:40:00+00:00",
        "applies": True,
        "grace": 0.0,
        "name": "",
        "note": "",
    }
    assert "container" not in body["servers"][0]  # the culler's own business
    body["servers"] += [{"user": "bob", "clocks": [{"rule": "no such rule"}]}, {"clocks": []}, "junk"]
    report = parse_report(body)
    assert report.skipped == 3 and list(report.servers) == ["alice/"]
    assert report.servers["alice/"].clocks == clocks.clocks
    assert (report.time, report.cull_every) == (at(12), 60)
    assert not report.stale(at(15)) and report.stale(at(16))  # three rounds, at least a minute
    with pytest.raises(ValueError):
        parse_report(["not", "a", "report"])
    with pytest.raises(ValueError, match="timezone"):
        parse_report({"time": "2026-11-27T09:00:00", "servers": []})


# --- the culler writes it


def labelled(user="alice", units=("GPU-0",), rules=CullRules(gpu_idle_timeout=60, max_runtime=3600), cid=ME):
    record = label.ServerRecord(user, "", "gpu", tuple(units), rules=rules)
    return {"Id": cid, "Labels": label.server_labels(record)}


def read(path) -> dict:
    return json.loads(path.read_text())


async def test_each_round_the_culler_writes_each_running_servers_clocks(tmp_path):
    clock = RoundClock()
    clocks_file = tmp_path / "clocks.json"
    hub = f"c.GPUSpawner.clocks_file = {str(clocks_file)!r}\n"
    containers = [labelled(), labelled("bob", ("GPU-1",), cid="b" * 64)]
    bob_busy = UnitReading(90, {202: "b" * 64})
    app = culler(tmp_path, containers, {"GPU-0": IDLE_READING, "GPU-1": bob_busy}, clock, cull_every=10, hub=hub)
    assert app.clocks_file == str(clocks_file)  # the hub's, read from its config
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    alice = hub_server("alice/", T0 - timedelta(minutes=5), T0)
    bob = hub_server("bob/", T0 - timedelta(minutes=1), T0)
    assert await app.arbiter(server=alice, **args) is False
    assert await app.arbiter(server=bob, **args) is False
    app.write_clocks()
    body = read(clocks_file)
    assert body["time"] == T0.isoformat() and body["cull_every"] == 10
    report = parse_report(body)
    idle, runtime = report.servers["alice/"].clocks
    assert (idle.rule, idle.since, idle.stops_at) == (IDLE, T0, T0 + timedelta(seconds=60))
    assert (runtime.since, runtime.stops_at) == (T0 - timedelta(minutes=5), T0 + timedelta(minutes=55))
    assert by_rule(report.servers["bob/"])[IDLE].since is None  # busy
    clock.advance(61)  # alice's GPU idle for the timeout: stopped, and her clocks gone from the file
    assert await app.arbiter(server=alice, **args) is True
    app.write_clocks()
    assert list(parse_report(read(clocks_file)).servers) == ["bob/"]


async def test_a_server_gone_between_rounds_leaves_the_file_and_a_write_that_fails_is_said_once(tmp_path):
    clock = RoundClock()
    clocks_file = tmp_path / "clocks.json"
    containers = [labelled()]
    app = culler(
        tmp_path,
        containers,
        {"GPU-0": BUSY},
        clock,
        cull_every=1,
        hub=f"c.GPUSpawner.clocks_file = {str(clocks_file)!r}\n",
    )
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    await app.arbiter(server=hub_server("alice/", T0, T0), **args)
    containers.clear()  # stopped by the student between rounds
    clock.advance(2)
    await app.publish_round()  # a round with no server to judge still writes
    assert parse_report(read(clocks_file)).servers == {}
    assert read(clocks_file)["time"] == clock().isoformat()
    said = []
    app.log.warning = lambda message, *args: said.append(message % args)
    app.clocks_file = str(tmp_path / "missing" / "clocks.json")
    app.write_clocks()
    app.write_clocks()
    assert said.count(f"Could not write the clocks to {app.clocks_file}: No such file or directory") == 1


async def test_the_write_waits_for_the_rounds_last_server(tmp_path):
    import asyncio

    clocks_file = tmp_path / "clocks.json"
    app = culler(
        tmp_path,
        [labelled()],
        {"GPU-0": BUSY},
        RoundClock(),
        cull_every=1,
        hub=f"c.GPUSpawner.clocks_file = {str(clocks_file)!r}\n",
    )
    app.clocks_delay = 0.05
    await app.arbiter(server=hub_server("alice/", T0, T0), inactive=timedelta(0), inactive_limit=0)
    assert not clocks_file.exists()  # not at once: the round's other servers come first
    await asyncio.sleep(0.2)
    assert list(parse_report(read(clocks_file)).servers) == ["alice/"]


async def test_a_spent_budget_shows_its_grace_on_the_clock(tmp_path):
    from gpuspawner.usage import UsageBook, UsageStore

    db = tmp_path / "usage.sqlite"
    book = UsageBook(UsageStore(f"sqlite:///{db}"))
    book.assigned("ann/", user="ann", units=["GPU-0"], groups=["ml101"], profile="gpu", at=T0 - timedelta(hours=1))
    budget = {**BUDGET_ENTRY, "gpu_hours": 0.5}
    clocks_file = tmp_path / "clocks.json"
    hub = (
        f"c.GPUSpawner.usage_db_url = 'sqlite:///{db}'\nc.GPUSpawner.gpu_budgets = [{budget!r}]\n"
        f"c.GPUSpawner.budget_grace = 600\nc.GPUSpawner.clocks_file = {str(clocks_file)!r}\n"
    )
    record = label.ServerRecord("ann", "", "gpu", ("GPU-0",), groups=frozenset({"ml101"}))
    clock = RoundClock()
    app = culler(
        tmp_path, [{"Id": ME, "Labels": label.server_labels(record)}], {"GPU-0": BUSY}, clock, cull_every=1, hub=hub
    )

    async def not_an_admin(name):  # the hub's GET /users/ann, as the culler's token reads it
        return {"kind": "user", "name": name, "admin": False}

    app.hub_user = not_an_admin
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    await app.arbiter(server=hub_server("ann/", T0 - timedelta(hours=1), T0), **args)
    clock.advance(120)
    await app.arbiter(server=hub_server("ann/", T0 - timedelta(hours=1), T0), **args)
    app.write_clocks()
    (spent,) = parse_report(read(clocks_file)).servers["ann/"].clocks
    assert (spent.rule, spent.since, spent.stops_at) == (
        BUDGET,
        T0,
        T0 + timedelta(seconds=600),
    )  # from the first round


def test_a_node_local_culler_writes_no_clocks_unless_told_where(tmp_path):
    from gpuspawner.culler.app import GPUCuller

    (tmp_path / "jupyterhub_config.py").write_text("")
    for argv, expected in (([], ""), ([f"--clocks-file={tmp_path / 'n1.json'}"], str(tmp_path / "n1.json"))):
        GPUCuller.clear_instance()
        app = GPUCuller()
        app.initialize(["-f", str(tmp_path / "jupyterhub_config.py"), "--node-local", *argv])
        assert app.clocks_file == expected
    GPUCuller.clear_instance()
    app = GPUCuller()
    app.initialize(["-f", str(tmp_path / "jupyterhub_config.py")])
    assert app.clocks_file == "gpuspawner-clocks.json"  # the hub's default, beside its other files
