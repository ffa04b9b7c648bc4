"""The GPU dashboard end to end: the real hub starts it as a managed service, users log in
through the hub's OAuth in Debian's headless Chromium, servers run on the test bed's engine."""

from __future__ import annotations

import json
import re
import secrets

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .axe import assert_accessible
from .realhub import engine, free_port, read_testbed, running_hub, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
GPU_ID = "GPU-da5b0a2d-0000-4000-8000-000000000000"
GPU2_ID = "GPU-da5b0a2d-0000-4000-8000-000000000001"
EVIL = "<script>alert('xss')</script>"
ADMIN, STUDENT, LATE = f"admin-{RUN}", f"student-{RUN}", f"late-{RUN}"
TEACHER, TEACHER_B = f"teacher-{RUN}", f"teacher-b-{RUN}"
# A user name crafted as HTML. JupyterHub 6 refuses '/' in names (so no `</b>`), lowercases
# them, and allows the rest: quotes, angle brackets, spaces, '=' and parentheses.
EVIL_USER = f'eve"><img src=x onerror=alert(1)>{RUN}'
PROM_TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    image = read_testbed("image")
    gpus = [
        {"index": 0, "uuid": GPU_ID, "name": "Tesla T4", "memory": "16G"},
        {"index": 1, "uuid": GPU2_ID, "name": "Tesla T4", "memory": "16G"},
    ]
    # The line of docs/how-to/dashboard.md, next to the test's own users, groups and roles.
    config = f"""
    from gpuspawner import services
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    c.GPUSpawner.gpus = {gpus!r}
    c.GPUSpawner.profiles = [
        {{"slug": "cpu", "display_name": "CPU", "image": {image!r}, "mem_limit": "1G"}},
        {{"slug": "gpu", "display_name": "Deep {EVIL}", "image": {image!r}, "gpus": 1, "mem_limit": "1G"}},
    ]
    services.add_dashboard(c, __file__, url="http://127.0.0.1:{free_port()}", args=["--refresh=60"])
    c.GPUSpawner.denials_merge_window = 3  # a short window: the test sees it close
    c.JupyterHub.services.append({{"name": "prometheus", "api_token": {PROM_TOKEN!r}}})
    c.JupyterHub.load_groups = {{
        "course-a": {{"users": [{TEACHER!r}, {STUDENT!r}]}},
        "course-b": {{"users": [{EVIL_USER!r}]}},
    }}
    c.JupyterHub.load_roles += [
        {{"name": "gpu-dashboard-teachers", "users": [{TEACHER!r}],
          "scopes": ["custom:gpu-dashboard:read-groups", "access:services!service=gpu-dashboard"]}},
        {{"name": "gpu-dashboard-course-b", "users": [{TEACHER_B!r}],
          "scopes": ["custom:gpu-dashboard:read!group=course-b", "access:services!service=gpu-dashboard"]}},
        {{"name": "gpu-dashboard-metrics", "services": ["prometheus"], "scopes": ["custom:gpu-dashboard:read"]}},
    ]
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:
        h.dashboard = f"{h.url}/services/gpu-dashboard/"
        wait_for_dashboard(h)
        yield h


def wait_for_dashboard(hub, timeout=30):
    def answers() -> bool:
        try:
            return requests.get(hub.dashboard + "metrics", timeout=2).status_code == 403
        except requests.RequestException:
            return False

    wait_for(answers, timeout, "the dashboard answers", details=hub.log_tail)


def log_in_to_dashboard(browser, hub, name, then="/services/gpu-dashboard/", **context_options):
    """A new browser context of ``name``, logged in through the hub's form, at ``then``."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login?next={then}")
    page.fill("#username_input", name)
    page.fill("#password_input", "any")
    with page.expect_navigation():
        page.click("#login_submit")
    return context, page


def own_token(context, page, hub, name) -> str:
    """A token of ``name``'s own (all of their scopes), made as the hub's token page does."""
    xsrf = next(c["value"] for c in context.cookies() if c["name"] == "_xsrf" and c["path"].startswith("/hub"))
    made = page.request.post(f"{hub.api}/users/{name}/tokens", data={"note": "e2e"}, headers={"X-XSRFToken": xsrf})
    assert made.status == 201, made.text()
    return made.json()["token"]


def metrics(hub, token=PROM_TOKEN):
    r = requests.get(hub.dashboard + "metrics", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def rows_by_holder(page) -> dict:
    """``{holder: row}`` of the units table, read from the attributes (no CSS quoting of odd names)."""
    rows = page.locator("tr[data-holder]")
    return {rows.nth(i).get_attribute("data-holder"): rows.nth(i) for i in range(rows.count())}


def test_admin_sees_the_holders_stops_a_server_and_the_gpu_is_free(hub, browser, tmp_path):
    hub.spawn_all((STUDENT, "gpu"), (EVIL_USER, "gpu"))
    refused = hub.start_server(LATE, "gpu")  # no GPU left: recorded in the denials file
    assert refused.status_code == 503, refused.text
    # A REST loop of refusals: one record at once, the 30 that follow as one when the window closes.
    for _ in range(30):
        assert hub.start_server(LATE, "gpu").status_code == 503
    denials_file = hub.workdir / "gpuspawner-denials.jsonl"

    def records():
        found = [json.loads(line) for line in denials_file.read_text().splitlines()]
        return found if sum(r["count"] for r in found) == 31 else None

    # The 30 fit in one 3-second window on a quiet machine (two lines); a loaded one may close a window
    # in the middle of the loop: then a new one opens (a line of 1) and its repeats follow as one.
    merged = wait_for(records, 15, "the window's refusals written as merged records", details=hub.log_tail)
    assert {(r["user"], r["reason"]) for r in merged} == {(LATE, "no_gpu")}
    assert merged[0]["count"] == 1 and max(r["count"] for r in merged) > 1 and len(merged) <= 10, merged

    context, page = log_in_to_dashboard(browser, hub, ADMIN)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    assert page.url == hub.dashboard, (page.url, page.content()[:2000], hub.log_tail())
    page.reload()  # once more, with the dialog listener on
    rows = rows_by_holder(page)
    assert set(rows) == {f"{STUDENT}/", f"{EVIL_USER}/"}, hub.log_tail()
    row = rows[f"{STUDENT}/"]
    student_unit = row.get_attribute("data-unit")
    assert student_unit in (GPU_ID, GPU2_ID) and row.get_attribute("data-state") == "used"
    assert row.locator("td.user").inner_text() == STUDENT
    assert row.locator("td.profile").inner_text() == "gpu"
    assert row.locator("td.image").inner_text() == read_testbed("image")
    # The user name crafted as HTML is text: in the cell, in the attributes, no element made of it.
    evil = rows[f"{EVIL_USER}/"]
    assert evil.locator("td.user").inner_text() == EVIL_USER
    assert evil.locator("button.stop").get_attribute("data-holder") == f"{EVIL_USER}/"
    assert evil.locator("button.stop").get_attribute("value") == f"{EVIL_USER}/"  # what the stop form posts
    # The hub's logo is the page's one image; no element is made of the name, on the map or in the table.
    assert page.locator("img").count() == 1 and page.locator("img.jpy-logo").count() == 1
    assert page.locator(".gpu-dashboard img, .gpu-dashboard script").count() == 0
    assert page.locator("#total-free").inner_text() == "0"
    assert page.locator("#total-used").inner_text() == "2"
    denials = page.locator("#denials").inner_text()
    assert LATE in denials and "no_gpu" in denials
    assert f"Deep {EVIL}" in denials  # the profile's display name, shown as text
    assert re.search(r"\(\d+ times since", denials)
    assert page.locator("#denials script").count() == 0 and not dialogs
    # No driver here, and the GPUs are a static list: said as a note, not as an alarm.
    assert "No GPU usage figures" in page.content() and "Cannot read NVML" not in page.content()
    assert_accessible(page, "the dashboard, for an admin")
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 0

    # The map: a tile per unit, its state in words, its holder and profile; the history in the API.
    tile = page.locator(f'li[data-tile="{student_unit}"]')
    assert tile.get_attribute("data-map-state") == "held" and tile.locator(".state").inner_text() == "held"
    assert tile.locator(".tile-user").inner_text() == STUDENT and "gpu" in tile.locator(".tile-holder").inner_text()
    assert tile.locator("svg.spark").count() == 1
    evil_tile = page.locator(f'li[data-tile="{next(u for u in (GPU_ID, GPU2_ID) if u != student_unit)}"]')
    assert evil_tile.locator(".tile-user").inner_text() == EVIL_USER
    assert "?view=table" in page.locator("#views").inner_html()
    table = context.new_page()
    table.goto(hub.dashboard + "?view=table")
    assert table.locator("li[data-tile]").count() == 0 and set(rows_by_holder(table)) == set(rows)
    assert_accessible(table, "the dashboard's table, for an admin")
    table.close()

    # The JSON API: the same data, through the same login.
    api = page.request.get(hub.dashboard + "api/v1/gpus")
    assert api.status == 200
    body = api.json()
    assert {u["id"]: u["map_state"]["kind"] for u in body["units"]} == {GPU_ID: "held", GPU2_ID: "held"}
    history = body["units"][0]["history"]
    assert history["interval_seconds"] == 30 and len(history["utilization_gpu"]) == 120
    assert set(history["utilization_gpu"]) == {None}  # no driver here: gaps, never zeros
    assert body["totals"] == {"units": 2, "free": 0, "used": 2, "shared": 0, "quarantined": 0}
    held = {h["user"]: (u["id"], h["server"], h["profile"]) for u in body["units"] for h in u["holders"]}
    assert held == {STUDENT: (student_unit, "", "gpu"), EVIL_USER: (held[EVIL_USER][0], "", "gpu")}
    holders = {h["user"]: h for u in body["units"] for h in u["holders"]}
    assert holders[STUDENT]["last_activity"]  # from the hub API, with the service's own token
    assert holders[STUDENT]["groups"] == ["course-a"] and holders[EVIL_USER]["groups"] == ["course-b"]
    assert body["sources"]["docker"]["ok"] and body["sources"]["hub"]["ok"] and body["sources"]["groups"]["ok"]
    assert body["restricted_to"] is None

    # Prometheus, with a service token that has the read scope: matches the page.
    families = metrics(hub)
    assert families["gpuspawner_units"].samples[0].value == 2
    assert families["gpuspawner_units_free"].samples[0].value == 0
    assert families["gpuspawner_units_assigned"].samples[0].value == 2
    assigned = {
        s.labels["user"]: (s.labels["unit"], s.labels["profile"], s.value)
        for s in families["gpuspawner_unit_assigned"].samples
    }
    assert assigned == {STUDENT: (student_unit, "gpu", 1), EVIL_USER: (held[EVIL_USER][0], "gpu", 1)}
    no_gpu = [
        s.value
        for s in families["gpuspawner_denials"].samples
        if s.name == "gpuspawner_denials_total" and s.labels["reason"] == "no_gpu"
    ]
    assert no_gpu == [31]  # a merged record counts as the refusals it stands for

    # A POST without the xsrf token is refused: the stop action needs the page's form.
    forged = page.request.post(hub.dashboard + "stop", form={"user": STUDENT, "server": ""})
    assert forged.status == 403
    assert hub.server_model(STUDENT) is not None

    with page.expect_navigation():
        rows_by_holder(page)[f"{STUDENT}/"].locator("button.stop").click()
    assert page.url == hub.dashboard, (page.url, page.content()[:1000])
    wait_for(lambda: hub.server_model(STUDENT) is None, 60, f"{STUDENT}'s server stopped", details=hub.log_tail)
    assert not engine().containers.list(filters={"label": f"gpuspawner.user={STUDENT}"})
    page.reload()
    assert page.locator(f'tr[data-unit="{student_unit}"]').get_attribute("data-state") == "free"
    assert page.locator("#total-free").inner_text() == "1"
    assert metrics(hub)["gpuspawner_units_free"].samples[0].value == 1
    context.close()


def test_a_teacher_sees_their_groups_gpus_only_and_cannot_stop(hub, browser):
    hub.spawn(STUDENT, "gpu")  # course-a, with the teacher; EVIL_USER (course-b) still holds the other GPU
    context, page = log_in_to_dashboard(browser, hub, TEACHER)
    assert page.url == hub.dashboard, (page.url, page.content()[:2000], hub.log_tail())
    assert set(rows_by_holder(page)) == {f"{STUDENT}/"}
    assert EVIL_USER not in page.content() and "eve" not in page.locator("#units").inner_text()
    assert page.locator("#restricted").inner_text().startswith("Showing only the GPUs of group course-a")
    assert page.locator("button.stop").count() == 0
    assert page.locator("#total-free").inner_text() == "0"  # the host's totals: counts, no names
    assert_accessible(page, "the dashboard, for a teacher")
    body = page.request.get(hub.dashboard + "api/v1/gpus").json()
    assert [(u["id"], [h["user"] for h in u["holders"]]) for u in body["units"]] == [
        (next(u["id"] for u in body["units"]), [STUDENT])
    ]
    assert EVIL_USER not in str(body) and LATE not in str(body)
    text = page.request.get(hub.dashboard + "metrics").text()
    users = {
        s.labels["user"]
        for f in text_string_to_metric_families(text)
        if f.name == "gpuspawner_unit_assigned"
        for s in f.samples
    }
    assert users == {STUDENT}
    # No stop scope: refused for another course's server and for their own student's.
    xsrf = next(c["value"] for c in context.cookies() if c["name"] == "_xsrf")
    for target in (EVIL_USER, STUDENT):
        r = page.request.post(
            hub.dashboard + "stop", form={"user": target, "server": ""}, headers={"X-XSRFToken": xsrf}, max_redirects=0
        )
        assert r.status == 403, (target, r.status)
        assert hub.server_model(target) is not None
    context.close()

    # A role with the read scope filtered to a group (`!group=course-b`): that group's users only.
    context, page = log_in_to_dashboard(browser, hub, TEACHER_B)
    body = page.request.get(hub.dashboard + "api/v1/gpus").json()
    assert [h["user"] for u in body["units"] for h in u["holders"]] == [EVIL_USER]
    assert body["restricted_to"] == "group course-b"
    context.close()


def test_a_student_gets_my_gpu_and_403_on_the_whole_labs_api(hub, browser):
    context, page = log_in_to_dashboard(browser, hub, STUDENT)
    assert page.url == hub.dashboard + "mine", page.url  # their own servers' page (My GPU), not the lab's
    assert page.locator("main h1").inner_text() == "My GPU" and EVIL_USER not in page.content()
    assert_accessible(page, "My GPU, for a student without a server")
    assert page.request.get(hub.dashboard + "api/v1/gpus").status == 403
    assert page.request.get(hub.dashboard + "metrics").status == 403
    token = own_token(context, page, hub, STUDENT)  # all of the student's scopes: not enough either
    context.close()
    for path in ("api/v1/gpus", "metrics"):
        got = requests.get(hub.dashboard + path, headers={"Authorization": f"token {token}"}, timeout=30)
        assert got.status_code == 403, (path, got.status_code)
    assert requests.get(hub.dashboard + "api/v1/gpus", timeout=30).status_code == 403  # no credentials at all


def test_the_page_is_the_hubs_own_look_follows_its_theme_and_fits_a_phone(hub, browser):
    """JupyterHub's navigation bar, stylesheet and theme toggle, loaded under the page's CSP; the theme
    chosen on a hub page is the dashboard's; at 390 px the map's tiles fit the screen."""
    if hub.server_model(STUDENT) is None:  # run alone; after the tests above, it still runs
        hub.spawn(STUDENT, "gpu")
    context, page = log_in_to_dashboard(browser, hub, ADMIN)
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.goto(hub.dashboard)
    page.wait_for_load_state("networkidle")
    assert not problems, problems  # no CSP violation, no missing static file
    assert "script-src 'self' 'sha256-" in page.request.get(hub.dashboard).headers["content-security-policy"]
    assert page.locator("nav.navbar #dark-theme-toggle").count() == 1
    assert page.evaluate("getComputedStyle(document.querySelector('nav.navbar')).display") == "flex"  # Bootstrap
    assert page.locator("a.nav-link", has_text="Home").get_attribute("href") == "/hub/home"
    # The theme: chosen with the toggle on the hub's home page, followed here, and back.
    page.goto(f"{hub.url}/hub/home")
    before = page.evaluate("document.documentElement.getAttribute('data-bs-theme')")
    page.click("#dark-theme-toggle")
    chosen = page.evaluate("document.documentElement.getAttribute('data-bs-theme')")
    assert chosen != before and chosen in ("light", "dark")
    page.goto(hub.dashboard)
    assert page.evaluate("document.documentElement.getAttribute('data-bs-theme')") == chosen
    assert_accessible(page, f"the dashboard in the {chosen} theme")
    page.click("#pause-updates")  # its updates, paused by the reader
    assert page.locator("#pause-updates").get_attribute("aria-pressed") == "true"
    page.click("#dark-theme-toggle")
    page.goto(f"{hub.url}/hub/home")
    assert page.evaluate("document.documentElement.getAttribute('data-bs-theme')") == before
    # Without JavaScript: the same page, its forms and refresh, no "requires JavaScript" shown.
    plain = browser.new_context(java_script_enabled=False, storage_state=context.storage_state())
    quiet = plain.new_page()
    quiet.goto(hub.dashboard)
    assert quiet.locator("li[data-tile]").count() == 2 and quiet.locator("tr[data-holder]").count() >= 1
    assert not quiet.locator("#noscript").is_visible()
    assert (
        quiet.locator("#refresh-now").get_attribute("href") == "./" and not quiet.locator("#pause-updates").is_visible()
    )
    plain.close()
    # A phone: the tiles are as wide as the screen, nothing but the table scrolls sideways.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=context.storage_state())
    small = phone.new_page()
    small.goto(hub.dashboard)
    assert small.evaluate("document.documentElement.scrollWidth") <= 390
    box = small.locator("li[data-tile]").first.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    phone.close()
    # A 1300-pixel window: the model names stay on one line.
    wide = browser.new_context(viewport={"width": 1300, "height": 900}, storage_state=context.storage_state())
    table = wide.new_page()
    table.goto(hub.dashboard + "?view=table")
    lines = table.eval_on_selector_all(
        "td.model",
        "els => els.map(e => { const r = document.createRange(); r.selectNodeContents(e.firstChild);"
        " return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; })",
    )
    assert lines and set(lines) == {1}, lines
    wide.close()
    context.close()
