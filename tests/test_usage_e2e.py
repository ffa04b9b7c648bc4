"""GPU-hours on the real hub, proxy, engine, GPU culler and GPU dashboard (issue 20).

Two students of a course whose budget is a few GPU-seconds, and one of another course. The first
student's server holds a GPU; the hub is killed and started again in the middle (the open record
is matched to the running container: nothing closed twice, nothing lost); once the course's
seconds are spent, the second student's spawn is refused at once, naming the budget, and the GPU
culler stops the first student's server after the warning window, with the reason on their next
spawn page; an admin of the course is exempt. The `gpuspawner usage` CSV report equals the database.

Then the dashboard's usage page in Chromium: the course's teacher sees their course's chart and
students and not the other course's (the page and its JSON), a student only their own records, an
admin both courses. The page's picture in the docs is taken there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import secrets
import shutil
import time
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from gpuspawner.dashboard.usage_page import hours_text
from gpuspawner.usage import UsageBook, UsageStore

from .axe import assert_accessible
from .realhub import (
    REPO,
    RealHub,
    engine,
    free_port,
    read_testbed,
    run_command,
    running,
    running_hub,
    service_pids,
    simulated_gpus,
    wait_for,
)
from .test_dashboard_e2e import log_in_to_dashboard

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-5ec0{i:04d}-0000-4000-8000-00000000000{i}" for i in range(2)]
BUDGET_SECONDS = 8


def user(name: str) -> str:
    return f"{name}-{RUN}"


# Fixed names: they are in the docs' picture (the teacher starts no server: nothing of hers outlives the hub).
TEACHER, ROOT = "tia", "root"


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
    c.Authenticator.admin_users = {{{user("ada")!r}, {ROOT!r}}}
    c.JupyterHub.load_groups = {{
        "ml101": {{"users": [{user("ann")!r}, {user("bob")!r}, {user("ada")!r}, {TEACHER!r}]}},
        "ml101-teachers": {{"users": [{TEACHER!r}]}},
        "cv202": {{"users": [{user("cat")!r}]}},
    }}
    from gpuspawner import services
    services.add_culler(c, __file__, cull_every=1, args=[{f"--usage-file={usage}"!r}])
    # Students reach their own usage with the scope add_dashboard gives every user (custom:gpu-dashboard:mine).
    services.add_dashboard(
        c, __file__, url="http://127.0.0.1:{free_port()}", teacher_groups=["ml101-teachers"], args=["--refresh=0"]
    )
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

    dashboard = [service_pids(hub.proc.pid)["dashboard"]]
    hub.kill()  # in the middle: the record stays open, matched to the container that still runs
    # The killed hub's dashboard stops by itself (gpuspawner/hub_child.py): its port is free for the next.
    assert dashboard
    for pid in dashboard:
        wait_for(lambda pid=pid: not running(pid), 15, f"the killed hub's dashboard (pid {pid}) stopped")
    hub.start()
    # The same record, never closed by the restart: still open, or (a slow restart) closed by the budget's
    # stop that follows, which the culler may already have made once the hub answers.
    (kept,) = store(hub).records(user=ann)
    assert kept.id == opened.id and kept.stop_reason in (None, "budget"), kept

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

    # A student of another course is not held to the course's budget; an admin of the course is exempt.
    ada = user("ada")
    hub.spawn_all((ada, "gpu"), (cat, "gpu"))
    wait_for(lambda: f"{ada} is an admin, exempt (admins_exempt)" in hub.log_text(), 30, "the culler exempts the admin")
    said = [line for line in hub.log_text().splitlines() if f"{ada}/: ML101's budget" in line]
    assert said and not any("stopped in" in line for line in said), said  # no warning window for her
    assert hub.server_model(ada)["ready"]
    hub.stop_servers((cat,), (ada,))

    records = store(hub).records()
    assert {(r.user, r.stop_reason) for r in records} == {(ann, "budget"), (cat, "user"), (ada, "user")}
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


# --- the dashboard's usage page


def dashboard_url(hub: RealHub) -> str:
    url = f"{hub.url}/services/gpu-dashboard/"

    def answers() -> bool:
        try:
            return requests.get(url + "api/usage", timeout=2).status_code == 403
        except requests.RequestException:
            return False

    wait_for(answers, 30, "the dashboard answers", details=hub.log_tail)
    return url


def made_records(hub: RealHub) -> dict[str, float]:
    """GPU-hours of each user's records: those the budget test made, or (run alone) a server each for
    a student of each course."""
    records = store(hub).records()
    for name in ("ann", "cat"):
        if not any(r.user == user(name) for r in records):
            hub.spawn(user(name), "gpu")
            hub.stop_server(user(name))
    hours = defaultdict(float)
    for r in store(hub).records():
        hours[r.user] += r.gpu_seconds / 3600
    return hours


def log_in(browser, hub: RealHub, name: str, path: str):
    then = quote("/services/gpu-dashboard/" + path)
    context, page = log_in_to_dashboard(browser, hub, name, then=then, viewport={"width": 1100, "height": 900})
    page.wait_for_selector("h1")
    return context, page


def json_of(page, url: str) -> dict:
    response = page.request.get(url)
    assert response.status == 200, response.text()
    return response.json()


def rows_of(page) -> dict[str, str]:
    """{course or student: their GPU-hours cell} of the page's table."""
    rows = page.locator("#usage-rows tbody tr")
    return {
        rows.nth(i).get_attribute("data-key"): rows.nth(i).locator("td.num").first.inner_text()
        for i in range(rows.count())
    }


def test_the_usage_page_shows_a_teacher_their_course_a_student_their_own_and_an_admin_all(hub, browser, tmp_path):
    hours = made_records(hub)
    ann, cat, ada = user("ann"), user("cat"), user("ada")
    url = dashboard_url(hub)

    # The teacher of ML101 (read-groups: her own groups' members), from the dashboard's own page.
    context, page = log_in(browser, hub, TEACHER, "")
    page.click("#usage-link")
    page.wait_for_selector("#usage-chart")
    assert page.locator("h1").inner_text() == "GPU-hours"
    assert page.locator("#usage-chart title").first.text_content().startswith("GPU-hours per day, ")
    seen = rows_of(page)
    assert ann in seen and cat not in seen, seen  # per student, her course's only
    assert seen[ann] == hours_text(hours[ann])  # "< 0.01" for a few GPU-seconds
    assert page.locator(f'#usage-rows tr[data-key="{ann}"] td.num').nth(-2).inner_text() == "n/a"  # no NVML here
    assert "cv202" not in page.content() and cat not in page.content()
    assert_accessible(page, "the usage page, for a teacher")
    by_user = json_of(page, url + "api/usage?by=user")
    assert {r["user"] for r in by_user["rows"]} <= {ann, user("bob"), ada} and ann in {
        r["user"] for r in by_user["rows"]
    }
    by_group = json_of(page, url + "api/usage?by=group")
    assert [r["group"] for r in by_group["rows"]] == ["ml101"]
    assert by_group["total"]["gpu_hours"] == pytest.approx(hours[ann] + hours.get(ada, 0), abs=0.0002)
    other = page.request.get(url + "api/usage?group=cv202")
    assert other.status == 403 and "is not one of your courses" in other.json()["error"]
    page.goto(url + "usage?group=cv202")
    assert "is not one of your courses" in page.locator("#usage-error").inner_text()
    context.close()

    # A student: her own records, nobody else's.
    context, page = log_in(browser, hub, ann, "usage")
    assert page.locator("#usage p.text-body-secondary").first.inner_text().startswith("Showing your own GPU use")
    assert set(rows_of(page)) == {ann}
    assert_accessible(page, "the usage page, for a student")
    own = json_of(page, url + "api/usage?by=group")
    assert own["total"]["gpu_hours"] == pytest.approx(hours[ann], abs=0.0002) and own["total"]["users"] == 1
    context.close()

    # An admin: both courses.
    context, page = log_in(browser, hub, ROOT, "usage")
    assert {"ml101", "cv202"} <= set(rows_of(page))
    page.evaluate("document.documentElement.setAttribute('data-bs-theme', 'dark')")  # as the hub's toggle does
    assert_accessible(page, "the usage page, for an admin, dark")
    everyone = json_of(page, url + "api/usage?by=user")
    assert {ann, cat} <= {r["user"] for r in everyone["rows"]}
    assert everyone["total"]["gpu_hours"] == pytest.approx(sum(hours.values()), abs=0.0005)
    context.close()

    picture(browser, hub, tmp_path)


# The docs' picture of a teacher's page: a month of a course's lab sessions (sample data), written into the
# hub's usage database as its book (and, for the lab sessions, the GPU culler's figures) would write them,
# over fixed past dates, so that the picture is the same every run.
# It goes to docs/how-to/img/ when missing there, or always with GPUSPAWNER_SCREENSHOTS=1.
PICTURE = REPO / "docs" / "how-to" / "img" / "usage-teacher.png"
PICTURE_DAYS = (date(2026, 3, 2), date(2026, 3, 29))


def picture(browser, hub: RealHub, tmp_path: Path) -> None:
    book = UsageBook(UsageStore(f"sqlite:///{hub.workdir / 'usage.sqlite'}", upgrade=False))
    rng = random.Random(101)
    day = PICTURE_DAYS[0]
    while day <= PICTURE_DAYS[1]:
        if day.weekday() in (1, 3):  # the course's lab sessions, Tuesday and Thursday afternoons
            for n in range(1, 13):
                if rng.random() < 0.75:
                    name = f"student{n:02d}"
                    start = datetime(day.year, day.month, day.day, 13, tzinfo=timezone.utc) + timedelta(
                        minutes=rng.randrange(0, 90)
                    )
                    end = start + timedelta(minutes=rng.randrange(30, 180))
                    opened = book.assigned(
                        f"{name}/", user=name, units=["GPU-0"], groups=["ml101"], profile="gpu", at=start
                    )
                    # what the GPU culler keeps on a record where NVML answers (none does on the test bed)
                    book.store.set_figures({opened.id: (rng.uniform(15, 75), rng.randrange(2, 30) * 2**30)})
                    book.released(f"{name}/", "user", at=end)
        elif day.weekday() < 5 and rng.random() < 0.5:  # homework on other days
            name = f"student{rng.randrange(1, 13):02d}"
            start = datetime(day.year, day.month, day.day, 18, tzinfo=timezone.utc)
            book.assigned(f"{name}/", user=name, units=["GPU-0"], groups=["ml101"], profile="gpu", at=start)
            book.released(f"{name}/", "user", at=start + timedelta(minutes=rng.randrange(20, 120)))
        day += timedelta(days=1)
    book.store.close()
    since, until = PICTURE_DAYS
    context, page = log_in(browser, hub, TEACHER, f"usage?since={since}&until={until}&by=user")
    assert len(rows_of(page)) == 12
    shot = tmp_path / PICTURE.name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("GPUSPAWNER_SCREENSHOTS") == "1" or not PICTURE.exists():
        PICTURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, PICTURE)
    context.close()
