"""Waiting in line for a GPU, on the real hub, proxy and engine (issue 19).

Two simulated GPUs and a profile that waits (``queue_timeout``). Two students hold both GPUs;
three more wait, in order, and are told their place through the REST progress stream (what the
spawn page shows); one stops their pending spawn and leaves the line; a GPU that frees goes to the
first in line; another profile's short ``queue_timeout`` runs out with a clear message; a hub killed
and started again fails the spawn that was waiting (JupyterHub's own rule for pending spawns) and
leaves nothing held, and the student who starts again waits again and gets the next GPU.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from .realhub import RealHub, engine, read_testbed, running_hub, simulated_gpus, wait_for
from .test_browser_e2e import save

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-c0de{i:04d}-0000-4000-8000-00000000000{i}" for i in range(2)]


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    usage = workdir / "usage.json"
    usage.write_text("{}")  # every unit's use unknown: the culler never finds one idle
    small = {"image": read_testbed("image"), "mem_limit": "512M", "cpu_limit": 0.5}
    config = f"""
    c.GPUSpawner.gpus = {simulated_gpus(GPUS)!r}
    c.GPUSpawner.profiles = [
        dict(slug="ml101", display_name="ML101", gpus=1, queue_timeout="10m", **{small!r}),
        dict(slug="quick", display_name="Quick look", gpus=1, queue_timeout=3, **{small!r}),
    ]
    c.GPUSpawner.queue_file = "gpuspawner-queue.json"
    c.GPUSpawner.stops_file = {str(workdir / "stops.jsonl")!r}
    c.GPUSpawner.reservations_file = {str(workdir / "reservations.yaml")!r}
    c.JupyterHub.load_groups = {{"ml101": {{"users": [{user("mia")!r}]}}}}
    from gpuspawner import services
    services.add_culler(c, __file__, cull_every=1, args=[{f"--usage-file={usage}"!r}])
    # The REST answer of a pending spawn comes after slow_spawn_timeout (10 s): 1 s keeps the test short.
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 1}}
    """
    (workdir / "reservations.yaml").write_text("reservations: []\n")  # none yet: a test writes its lab hours
    with running_hub(workdir, config, RUN) as h:
        yield h


def progress_until(hub: RealHub, name: str, pattern: str, timeout: float = 30) -> dict:
    """Read the spawn's live progress stream (as the spawn page does) until an event's message matches."""
    r = hub.request("GET", f"/users/{name}/servers//progress", stream=True, timeout=timeout)
    r.raise_for_status()
    seen = []
    deadline = time.monotonic() + timeout
    try:
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:") :])
            seen.append(event.get("message", ""))
            if re.search(pattern, event.get("message", "")):
                return event
            if event.get("failed") or event.get("ready") or time.monotonic() > deadline:
                break
    except requests.exceptions.ConnectionError:  # read timeout of a stream with nothing new
        pass
    finally:
        r.close()
    raise AssertionError(f"{name}: no progress event matching {pattern!r}; saw {seen}\n{hub.log_tail()}")


def waiting(hub: RealHub) -> list[str]:
    path = hub.workdir / "gpuspawner-queue.json"
    return [w["user"] for w in json.loads(path.read_text())["waiting"]] if path.exists() else []


def log_time(hub: RealHub, pattern: str) -> datetime:
    """When the hub's log first says ``pattern`` (its lines start '[I 2026-12-01 10:00:00.123 ...')."""
    for line in hub.log_text().splitlines():
        if re.search(pattern, line):
            return datetime.strptime(line[3:26], "%Y-%m-%d %H:%M:%S.%f")
    raise AssertionError(f"no line matching {pattern!r} in the hub's log:\n{hub.log_tail()}")


def test_students_wait_in_order_leave_the_line_and_get_freed_gpus(hub: RealHub):
    s = [user(f"s{i}") for i in range(5)]
    for name in s[:2]:
        assert hub.start_server(name, "ml101").status_code in (201, 202)
    for name in s[2:]:  # one after the other: the line's order
        r = hub.start_server(name, "ml101")
        assert r.status_code == 202, r.text  # as any slow spawn
        wait_for(lambda n=name: n in waiting(hub), 30, f"{name} in line", details=hub.log_tail)
    assert waiting(hub) == s[2:]
    model = hub.server_model(s[3])
    assert model["pending"] == "spawn" and not model["ready"]
    progress_until(hub, s[3], r"^Waiting for a GPU: 2nd in line for ML101 \(2 NVIDIA A100-SXM4-80GB GPUs, all in use\)")
    # Waiting holds nothing: only the two holders have containers.
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={s[2]}"})

    # The second in line stops their pending spawn: out of the line, and the third moves up.
    r = hub.request("DELETE", f"/users/{s[3]}/servers/")
    assert r.status_code in (202, 204), r.text
    hub.wait_gone(s[3])
    assert waiting(hub) == [s[2], s[4]]
    progress_until(hub, s[4], r"^Waiting for a GPU: 2nd in line")

    # A GPU frees: the first in line gets it.
    hub.wait_ready(s[0])
    freed = hub.visible_devices(s[0])
    hub.stop_server(s[0])
    hub.wait_ready(s[2])
    assert hub.visible_devices(s[2]) == freed
    granted = log_time(hub, rf"Granted {freed} to {s[2]}/")
    released = granted - log_time(hub, rf"Released GPUs {freed} of {s[0]}/")
    stopping = granted - log_time(hub, rf"Removing user {s[0]} from proxy")
    print(
        f"\nthe freed GPU reached the first in line {released.total_seconds():.3f} s after its release,"
        f" {stopping.total_seconds():.3f} s after the stop began (measured, not asserted)"
    )
    progress_until(hub, s[4], r"^Waiting for a GPU: 1st in line")


def test_a_short_queue_timeout_runs_out_with_a_clear_message(hub: RealHub):
    name = user("quick")
    assert hub.start_server(name, "quick").status_code == 202
    event = progress_until(hub, name, r"waited", timeout=30)
    assert "Quick look: waited 3 seconds in line and no unit freed in time" in event["message"]
    hub.wait_gone(name)
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={name}"})
    # An expected refusal: WARNING lines in the hub's log, no ERROR and no traceback.
    lines = [line for line in hub.log_text().splitlines() if name in line]
    assert any(line.startswith("[W") and "refused (queue_timeout)" in line for line in lines), lines
    assert not [line for line in lines if line.startswith("[E")], lines


def test_a_restarted_hub_fails_the_waiting_spawn_and_it_waits_again(hub: RealHub):
    s1, s2, s4 = user("s1"), user("s2"), user("s4")
    assert waiting(hub) == [s4]
    hub.kill()
    hub.start()
    # JupyterHub stops a spawn that was pending when it went down; nothing of it is held or running.
    hub.wait_gone(s4)
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={s4}"})
    assert hub.server_model(s1)["ready"] and hub.server_model(s2)["ready"]
    # Starting again, the student waits again, and gets the next GPU that frees.
    assert hub.start_server(s4, "ml101").status_code == 202
    wait_for(lambda: waiting(hub) == [s4], 30, f"{s4} in line again", details=hub.log_tail)
    freed = hub.visible_devices(s1)
    hub.stop_server(s1)
    hub.wait_ready(s4)
    assert hub.visible_devices(s4) == freed
    assert waiting(hub) == []


@pytest.mark.browser
def test_the_waiting_page_shows_the_place_in_line_live(hub: RealHub, browser, tmp_path):
    ahead, web = user("ahead"), user("web")
    assert not waiting(hub)  # both GPUs are held (by s2 and s4), and nobody waits
    assert hub.start_server(ahead, "ml101").status_code == 202
    wait_for(lambda: waiting(hub) == [ahead], 30, f"{ahead} in line", details=hub.log_tail)
    page = browser.new_context(viewport={"width": 1024, "height": 600}).new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", web)
    page.fill("#password_input", "any")
    page.click("#login_submit")
    page.wait_for_url("**/hub/spawn**")
    card = page.locator("label[for=profile-ml101]").inner_text()
    assert "All 2 in use now: you wait in line behind 1, 10 minutes at most" in card
    page.check("#profile-ml101")
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/spawn-pending/**", timeout=30_000)
    message = page.locator("#progress-message")
    message.filter(has_text="2nd in line for ML101").wait_for(timeout=30_000)
    save(page, tmp_path, "student-waiting.png")  # the student tutorial's picture
    # The student ahead leaves the line: the page says so without a reload.
    hub.request("DELETE", f"/users/{ahead}/servers/")
    message.filter(has_text="1st in line for ML101").wait_for(timeout=30_000)
    hub.request("DELETE", f"/users/{web}/servers/")
    hub.wait_gone(web)
    hub.wait_gone(ahead)
    assert waiting(hub) == []


#: Seconds from writing the lab's hours to their start: two servers start before it (together, a few
#: seconds), with room for a slow machine; then the test waits for the start.
LAB_STARTS_IN = 15


def granted(hub: RealHub, name: str, timeout: float = 30) -> str:
    """The GPUs the spawner assigned to ``name``'s default server, from its "Starting" line in the hub's log."""

    def assigned() -> str | None:
        found = re.findall(rf"Starting {re.escape(name)}/: profile .*, GPUs (\S+)", hub.log_text())
        return found[-1] if found else None

    return wait_for(assigned, timeout, f"{name}'s GPUs assigned", details=hub.log_tail)


def test_lab_hours_stop_a_non_member_at_their_start_and_the_waiting_member_gets_the_gpu(hub: RealHub):
    hub.stop_all_servers()
    out, late, mia = user("out"), user("late"), user("mia")
    start = datetime.now(timezone.utc) + timedelta(seconds=LAB_STARTS_IN)
    fmt = "%Y-%m-%d %H:%M:%S"
    (hub.workdir / "reservations.yaml").write_text(
        json.dumps(  # YAML reads JSON
            {
                "reservations": [
                    {
                        "name": "ML101 lab",
                        "groups": ["ml101"],
                        "units": [GPUS[0]],
                        "time_zone": "UTC",
                        "dates": [{"start": start.strftime(fmt), "end": (start + timedelta(minutes=30)).strftime(fmt)}],
                    }
                ]
            }
        )
    )
    # Before the window: the unit the lab takes is left while another is free ...
    assert hub.start_server(out, "ml101").status_code in (201, 202)
    assert granted(hub, out) == GPUS[1]
    # ... and taken when nothing else fits, by a server told it must end by the lab's start. (Each is
    # started once the one before holds its GPU: the two servers start at once, well before the window.)
    assert hub.start_server(late, "ml101").status_code in (201, 202)
    assert granted(hub, late) == GPUS[0]
    hub.wait_ready(out)
    hub.wait_ready(late)
    assert datetime.now(timezone.utc) < start, "the servers started after the lab's start: a longer LAB_STARTS_IN"
    assert hub.visible_devices(out) == GPUS[1]
    assert hub.visible_devices(late) == GPUS[0]
    assert re.search(rf"{late}/: this GPU is free until \d\d:\d\d, when ML101 lab starts", hub.log_text())
    assert 0 < float(hub.container(late).labels["gpuspawner.max-runtime"]) <= LAB_STARTS_IN
    # The course's student waits; at the window's start the GPU culler stops the other, and she gets the GPU.
    assert hub.start_server(mia, "ml101").status_code == 202
    wait_for(lambda: waiting(hub) == [mia], 30, f"{mia} in line", details=hub.log_tail)
    hub.wait_gone(late, timeout=60)
    hub.wait_ready(mia)
    assert hub.visible_devices(mia) == GPUS[0]
    assert hub.server_model(out)["ready"]  # not on the reserved GPU: kept
    page = hub.login(late).get(f"{hub.url}/hub/spawn", timeout=30).text
    assert re.search(r"Your last server was stopped at \d\d:\d\d, when ML101 lab started: its GPU is reserved", page)
    assert "Your files are kept" in page
