"""GPU-hours on the real hub, proxy, engine and GPU culler (issue 20).

Two students of a course whose budget is a few GPU-seconds, and one of no course. The first
student's server holds a GPU; the hub is killed and started again in the middle (the open record
is matched to the running container: nothing closed twice, nothing lost); once the course's
seconds are spent, the second student's spawn is refused at once, naming the budget, and the GPU
culler stops the first student's server after the warning window, with the reason on their next
spawn page. The `gpuspawner usage` CSV report equals the database.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import time
from collections import defaultdict

import pytest

from gpuspawner.usage import UsageStore

from .realhub import RealHub, engine, read_testbed, run_command, running_hub, simulated_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-5ec0{i:04d}-0000-4000-8000-00000000000{i}" for i in range(2)]
BUDGET_SECONDS = 8


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    usage = workdir / "usage.json"
    usage.write_text("{}")  # every unit's use unknown: never idle, so only the budget stops a server
    small = {"image": read_testbed("image"), "mem_limit": "512M", "cpu_limit": 0.5}
    budget = {
        "name": "ML101",
        "group": "ml101",
        "gpu_hours": BUDGET_SECONDS / 3600,
        "per": "week",
        "time_zone": "UTC",
    }
    config = f"""
    c.GPUSpawner.gpus = {simulated_gpus(GPUS)!r}
    c.GPUSpawner.profiles = [dict(slug="gpu", display_name="One A100", gpus=1, **{small!r})]
    c.GPUSpawner.usage_db_url = {f"sqlite:///{workdir / 'usage.sqlite'}"!r}
    c.GPUSpawner.gpu_budgets = [{budget!r}]
    c.GPUSpawner.budget_grace = 2
    c.GPUSpawner.stops_file = {str(workdir / "stops.jsonl")!r}
    c.JupyterHub.load_groups = {{"ml101": {{"users": [{user("ann")!r}, {user("bob")!r}]}}}}
    from gpuspawner import services
    services.add_culler(c, __file__, cull_every=1, args=[{f"--usage-file={usage}"!r}])
    """
    with running_hub(workdir, config, RUN) as h:
        yield h


def store(hub: RealHub) -> UsageStore:
    return UsageStore(f"sqlite:///{hub.workdir / 'usage.sqlite'}", upgrade=False)


def test_a_course_budget_refuses_then_stops_and_the_report_equals_the_database(hub: RealHub):
    ann, bob, cat = user("ann"), user("bob"), user("cat")
    hub.spawn(ann, "gpu")
    started = time.monotonic()
    (opened,) = store(hub).records(user=ann)
    assert opened.stopped_at is None and opened.units == (hub.visible_devices(ann),)
    assert opened.groups == ("ml101",) and opened.image_digest.startswith("sha256:")

    hub.kill()  # in the middle: the record stays open, matched to the container that still runs
    hub.start()
    assert hub.server_model(ann)["ready"]
    (kept,) = store(hub).records(user=ann)
    assert kept.id == opened.id and kept.stopped_at is None

    time.sleep(max(BUDGET_SECONDS + 0.5 - (time.monotonic() - started), 0))  # the course's seconds are spent
    t0 = time.monotonic()
    r = hub.start_server(bob, "gpu")
    refused_in = time.monotonic() - t0
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert message.startswith("One A100: ML101's budget of 0.0022 GPU-hours this week is spent: "), message
    assert "it renews Monday 00:00 UTC" in message
    assert hub.server_model(bob) is None
    print(f"\nthe budget's refusal: {refused_in:.3f} s (measured, not asserted)")

    # The GPU culler stops ann's server after the warning window; her home is kept, and she is told why.
    hub.wait_gone(ann, timeout=60)
    (stop,) = [json.loads(line) for line in (hub.workdir / "stops.jsonl").read_text().splitlines()]
    assert (stop["user"], stop["reason"]) == (ann, "budget")
    page = hub.login(ann).get(f"{hub.url}/hub/spawn", timeout=30).text
    assert "Your last server was stopped: ML101&#39;s budget of 0.0022 GPU-hours this week is spent" in page

    # A student of no course is not held to the course's budget.
    hub.spawn(cat, "gpu")
    hub.stop_server(cat)

    records = store(hub).records()
    assert {(r.user, r.stop_reason) for r in records} == {(ann, "budget"), (cat, "user")}
    assert all(r.stopped_at is not None and r.gpu_seconds > 0 for r in records)
    by_user = defaultdict(float)
    for r in records:
        by_user[r.user] += r.gpu_seconds
    done, _ = run_command(hub.workdir, ["usage", "-f", "jupyterhub_config.py", "--by", "user", "--format", "csv"])
    assert done.returncode == 0, done.stderr
    rows = {row["user"]: row for row in csv.DictReader(io.StringIO(done.stdout))}
    assert set(rows) == set(by_user)
    for name, seconds in by_user.items():
        assert float(rows[name]["gpu_seconds"]) == pytest.approx(seconds, abs=0.002)
        assert rows[name]["servers"] == "1"
    assert not engine().containers.list(filters={"label": f"gpuspawner.user={ann}"})
