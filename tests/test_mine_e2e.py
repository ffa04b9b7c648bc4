"""My GPU end to end: the real hub runs the dashboard and the GPU culler as managed services; students
log in through the hub's OAuth in Debian's headless Chromium; servers run on the test bed's engine.

GPU use comes from a file both services read (``--usage-file``): the student's GPU idle, the others'
busy. The culler's clocks count down on the student's page until the culler stops the server.
The student tutorial's My GPU screenshots (light and dark) are taken here too.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest
import requests

from .axe import assert_accessible
from .realhub import engine, free_port, read_testbed, running_hub, simulated_gpus, wait_for
from .test_browser_e2e import save
from .test_dashboard_e2e import log_in_to_dashboard, own_token, wait_for_dashboard

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-3e1f0000-0000-4000-8000-00000000000{i}" for i in range(3)]
IDLE_TIMEOUT = 12  # seconds: the quick profile's gpu_idle_timeout
STUDENT, OTHER, ADMIN = f"student-{RUN}", f"other-{RUN}", f"admin-{RUN}"
TUTORIAL_STUDENT = "ada"  # a fixed name, so the pictures do not change from run to run
G = 1024**3


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    usage = workdir / "usage.json"
    usage.write_text("{}")  # every unit unknown: never idle, no figures
    image = read_testbed("image")
    small = {"image": image, "mem_limit": "512M", "cpu_limit": 0.5}
    config = f"""
    from gpuspawner import services
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    c.GPUSpawner.gpus = {simulated_gpus(GPUS, "NVIDIA L40S", "48G")!r}
    c.GPUSpawner.profiles = [
        dict(slug="quick", display_name="Quick test", gpus=1, gpu_idle_timeout={IDLE_TIMEOUT}, **{small!r}),
        dict(slug="ml101-gpu", display_name="ML101 - PyTorch, 1 GPU", gpus=1, gpu_idle_timeout="30m",
             max_runtime="4h", **{small!r}),
    ]
    services.add_dashboard(c, __file__, url="http://127.0.0.1:{free_port()}",
                           args=["--refresh=60", {f"--usage-file={usage}"!r}])
    services.add_culler(c, __file__, cull_every=2, args=[{f"--usage-file={usage}"!r}])
    """
    try:
        with running_hub(workdir, config, RUN) as hub:
            hub.dashboard = f"{hub.url}/services/gpu-dashboard/"
            wait_for_dashboard(hub)
            yield hub, usage
    finally:
        for volume in engine().volumes.list():
            if volume.name.startswith("jupyterhub-user-") and volume.name.endswith(TUTORIAL_STUDENT):
                volume.remove(force=True)


def write_usage(path, idle=(), busy=()) -> None:
    """The units' use, in the culler's terms and the dashboard's, in one file (each reads its own keys)."""
    readings = {}
    for unit, percent in [(u, 0) for u in idle] + [(u, 63) for u in busy]:
        readings[unit] = {
            "utilization": percent,
            "processes": [],  # none visible: busy counts as the server's, idle as idle
            "utilization_gpu": percent,
            "memory_used": (9 if percent else 1) * G,
            "memory_total": 48 * G,
        }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(readings))
    tmp.replace(path)


def next_stop(page) -> tuple[str, int] | None:
    """The page's soonest stop: (its rule, its seconds left), once the culler has judged the server."""
    found = page.locator("[data-next-stop]")
    if not found.count() or found.first.get_attribute("data-seconds-left") in (None, "", "None"):
        return None
    return found.first.get_attribute("data-next-stop"), int(found.first.get_attribute("data-seconds-left"))


def test_a_students_countdown_runs_down_to_the_stop_and_nobody_elses_server_shows(lab, browser):
    hub, usage = lab
    hub.spawn_all((STUDENT, "quick"), (OTHER, "ml101-gpu"), (TUTORIAL_STUDENT, "ml101-gpu"))
    unit = {name: hub.visible_devices(name) for name in (STUDENT, OTHER, TUTORIAL_STUDENT)}
    write_usage(usage, idle=[unit[STUDENT]], busy=[unit[OTHER], unit[TUTORIAL_STUDENT]])

    # The dashboard's own page sends a student to their My GPU page.
    context, page = log_in_to_dashboard(browser, hub, STUDENT)
    assert page.url == hub.dashboard + "mine", (page.url, page.content()[:1000], hub.log_tail())

    def counting():
        page.reload()
        found = next_stop(page)
        return found if found and found[0] == "gpu_idle_timeout" else None

    rule, first = wait_for(counting, 20, "the idle clock on the student's page", every=0.5, details=hub.log_tail)
    assert 0 < first <= IDLE_TIMEOUT
    assert page.locator("[data-next-stop]").inner_text().startswith("⚠ This server stops in ")
    sentence = page.locator('[data-rule="gpu_idle_timeout"]').inner_text()
    assert sentence.startswith("Idle for ") and f"of {IDLE_TIMEOUT} seconds: this server stops in" in sentence
    assert sentence.endswith("unless the GPU is used.")
    held = page.locator("[data-unit]").inner_text()
    assert f"GPU {GPUS.index(unit[STUDENT])}" in held and "NVIDIA L40S" in held and "0%" in held
    assert OTHER not in page.content()
    page.wait_for_timeout(2100)
    page.reload()
    later = next_stop(page)
    assert later and later[0] == rule and later[1] < first, (first, later)

    # A crafted URL names another student: the page is still the viewer's own, or there is none.
    crafted = context.new_page()
    crafted.goto(hub.dashboard + f"mine?user={OTHER}")
    assert OTHER not in crafted.content() and crafted.locator("[data-server]").count() == 1
    assert crafted.goto(hub.dashboard + f"mine/{OTHER}").status == 404
    assert page.request.get(hub.dashboard + "api/v1/gpus").status == 403  # never the whole lab
    crafted.close()

    # The other student's own token: only their own server, whatever the URL says.
    other, other_page = log_in_to_dashboard(browser, hub, OTHER)
    token = own_token(other, other_page, hub, OTHER)
    other.close()
    got = requests.get(
        hub.dashboard + f"api/v1/mine?user={STUDENT}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert got.status_code == 200 and got.json()["user"] == OTHER
    assert [u["id"] for s in got.json()["servers"] for u in s["units"]] == [unit[OTHER]]
    assert STUDENT not in got.text

    # The clock reaches zero: the culler stops the server, and the page says so.
    hub.wait_gone(STUDENT, timeout=IDLE_TIMEOUT + 20)

    def told():
        page.reload()
        return page.locator("#stops").count() and page.locator("#no-server").count()

    wait_for(told, 15, "the student's page says the server was stopped", every=0.5, details=hub.log_tail)
    assert (
        f"Your server was stopped after {IDLE_TIMEOUT} seconds without GPU use" in page.locator("#stops").inner_text()
    )
    context.close()

    # An admin on My GPU: their own servers (none), nobody else's.
    context, page = log_in_to_dashboard(browser, hub, ADMIN)
    page.goto(hub.dashboard + "mine")
    assert page.locator("#no-server").count() == 1 and OTHER not in page.content()
    context.close()


def test_the_home_page_links_my_gpu_which_follows_the_theme_works_without_javascript_and_on_a_phone(
    lab, browser, tmp_path
):
    hub, usage = lab
    if hub.server_model(TUTORIAL_STUDENT) is None:  # run alone
        hub.spawn(TUTORIAL_STUDENT, "ml101-gpu")
        write_usage(usage, busy=[hub.visible_devices(TUTORIAL_STUDENT)])
    context, page = log_in_to_dashboard(
        browser, hub, TUTORIAL_STUDENT, then="/hub/home", viewport={"width": 1024, "height": 640}
    )
    # The hub's home page: what the server holds, its rules, the link.
    home = page.locator(".gpuspawner-home").inner_text()
    assert "ML101 - PyTorch, 1 GPU" in home and "Holds GPU " in home and "(NVIDIA L40S, 48 GiB)" in home
    assert "Stops after 30 minutes without GPU use; runs 4 hours at most." in home
    assert_accessible(page, "the hub's home page, what gpuspawner adds", within=".gpuspawner-home")
    save(page, tmp_path, "student-home.png")
    with page.expect_navigation():
        page.click("a.gpuspawner-my-gpu")
    assert page.url == hub.dashboard + "mine"

    def judged():
        page.reload()
        return page.locator('[data-rule="max_runtime"][data-seconds-left]').count()

    wait_for(judged, 20, "the culler's clocks on the page", every=0.5, details=hub.log_tail)
    rules = page.locator(".rules").inner_text()
    assert "It stops after 30 minutes without GPU use. Its GPU is in use now." in rules
    assert re.search(r"Runs at most 4 hours: stops at \d\d:\d\d \(in (3 hours 5\d minutes|4 hours)\)\.", rules), rules
    assert (
        page.locator("nav.navbar #dark-theme-toggle").count() == 1 and page.locator("main h1").inner_text() == "My GPU"
    )
    assert page.locator('a.dropdown-item[href="/services/gpu-dashboard/"]').count() == 1  # the hub's Services menu
    assert_accessible(page, "My GPU, for a student with a server")
    save(page, tmp_path, "student-my-gpu.png")

    # The theme: chosen with the toggle on the hub's home page, followed here, and back.
    page.goto(f"{hub.url}/hub/home")
    before = page.evaluate("document.documentElement.getAttribute('data-bs-theme')")
    page.click("#dark-theme-toggle")
    chosen = page.evaluate("document.documentElement.getAttribute('data-bs-theme')")
    assert chosen != before
    page.goto(hub.dashboard + "mine")
    assert page.evaluate("document.documentElement.getAttribute('data-bs-theme')") == chosen
    assert_accessible(page, f"My GPU in the {chosen} theme")
    if chosen == "dark":
        save(page, tmp_path, "student-my-gpu-dark.png")
    page.click("#dark-theme-toggle")
    assert page.evaluate("document.documentElement.getAttribute('data-bs-theme')") == before

    # Without JavaScript: the same page, with a link to refresh it.
    plain = browser.new_context(java_script_enabled=False, storage_state=context.storage_state())
    quiet = plain.new_page()
    quiet.goto(hub.dashboard + "mine")
    assert quiet.locator("[data-rule]").count() == 2 and not quiet.locator("#noscript").is_visible()
    assert quiet.locator("#refresh-now").count() == 1 and not quiet.locator("#pause-updates").is_visible()
    plain.close()
    # A phone: nothing scrolls sideways.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=context.storage_state())
    small = phone.new_page()
    small.goto(hub.dashboard + "mine")
    assert small.evaluate("document.documentElement.scrollWidth") <= 390
    assert small.locator("[data-next-stop]").bounding_box()["width"] <= 390
    phone.close()
    context.close()
