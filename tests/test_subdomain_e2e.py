"""Per-user subdomains (``c.JupyterHub.subdomain_host``) in a real browser.

One real hub whose proxy routes by host name, the GPU dashboard as its managed service, the
test bed's engine, and Debian's headless Chromium, which resolves every ``*.localhost`` name to
loopback by itself (this machine's own resolver does not: the test's REST calls reach those
names through ``127.0.0.1`` with a ``Host`` header). A student logs in at ``localhost``, picks
the GPU profile on the spawn page and lands in JupyterLab on an origin of their own,
``<user>.localhost``; an admin finds the GPU on the dashboard's own origin,
``gpu-dashboard--service.localhost``, and stops the server from there.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlparse

import pytest
import requests

from .realhub import engine, free_port, read_testbed, running_hub, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
GPU_ID = "GPU-5ab0d0a1-0000-4000-8000-000000000000"
STUDENT, ADMIN = f"student-{RUN}", f"admin-{RUN}"
# JupyterHub 6 (its default subdomain_hook, "idna") puts a user at <name>.<domain> and a
# service at <name>--service.<domain>.
DASHBOARD_HOST = "gpu-dashboard--service.localhost"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    image = read_testbed("image")
    gpus = [{"index": 0, "uuid": GPU_ID, "name": "Tesla T4", "memory": "16G"}]
    # The lines of docs/how-to/subdomains.md, with the test's own port as the hub's public one.
    config = f"""
    from gpuspawner import services
    c.JupyterHub.subdomain_host = f"http://localhost:{{c.JupyterHub.port}}"
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    c.GPUSpawner.gpus = {gpus!r}
    c.GPUSpawner.profiles = [
        {{"slug": "cpu", "display_name": "Python (CPU only)", "image": {image!r}, "mem_limit": "1G"}},
        {{"slug": "gpu", "display_name": "Deep learning, 1 GPU", "image": {image!r}, "gpus": 1, "mem_limit": "1G"}},
    ]
    services.add_dashboard(c, __file__, url="http://127.0.0.1:{free_port()}", args=["--refresh=0"])
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:
        h.public = f"http://localhost:{h.proxy_port}"
        h.dashboard = f"http://{DASHBOARD_HOST}:{h.proxy_port}/services/gpu-dashboard/"
        wait_for(lambda: dashboard_answers(h), 30, "the dashboard answers on its own host", details=h.log_tail)
        yield h


def test_the_hubs_own_host_no_longer_serves_the_dashboard(hub):
    """A bookmark of https://<hub>/services/gpu-dashboard/ gets the hub's 404: the dashboard moved to its host."""
    r = requests.get(f"{hub.url}/services/gpu-dashboard/", headers={"Host": f"localhost:{hub.proxy_port}"}, timeout=10)
    assert r.status_code == 404, (r.status_code, r.url)


def dashboard_answers(hub) -> bool:
    """The proxy routes the dashboard's host name to it: its API says 403 without a login."""
    try:
        r = requests.get(
            f"{hub.url}/services/gpu-dashboard/api/v1/gpus",
            headers={"Host": f"{DASHBOARD_HOST}:{hub.proxy_port}"},
            timeout=2,
        )
    except requests.RequestException:
        return False
    return r.status_code == 403


def log_in(context, hub, name: str, next_url: str = ""):
    """Through the hub's login form at the hub's own host name, as a student does."""
    page = context.new_page()
    page.goto(f"{hub.public}/hub/login" + (f"?next={next_url}" if next_url else ""))
    page.fill("#username_input", name)
    page.fill("#password_input", "any")
    with page.expect_navigation():
        page.click("#login_submit")
    return page


# From the student's server's page: a terminal over a websocket through the proxy, and what
# the page's JavaScript can do with the hub (another origin now).
OPEN_TERMINAL = """async (prefix) => {
  const xsrf = decodeURIComponent(document.cookie.split("; ").find((c) => c.startsWith("_xsrf=")).slice(6));
  const made = await fetch(prefix + "api/terminals", {method: "POST", headers: {"X-XSRFToken": xsrf}});
  if (!made.ok) return "POST api/terminals: " + made.status;
  const name = (await made.json()).name;
  const ws = new WebSocket(`ws://${location.host}${prefix}terminals/websocket/${name}`);
  return await new Promise((done) => {
    ws.onmessage = (e) => { ws.close(); done("message: " + e.data.slice(0, 40)); };
    ws.onclose = (e) => done("closed " + e.code);
    setTimeout(() => done("no message in 20 s"), 20000);
  });
}"""
READ_HUB = """async (url) => {
  try {
    const r = await fetch(url, {credentials: "include"});
    return "read " + r.status;
  } catch (e) {
    return "blocked";
  }
}"""


def test_a_student_on_their_own_subdomain_and_the_dashboard_on_its_own(hub, browser):
    student = browser.new_context()
    page = log_in(student, hub, STUDENT)
    assert urlparse(page.url).netloc == f"localhost:{hub.proxy_port}"
    assert urlparse(page.url).path == "/hub/spawn"
    assert "1 of 1 Tesla T4 free now" in page.locator("label[for=profile-gpu]").inner_text()
    page.check("#profile-gpu")
    page.click("input[type=submit], button[type=submit]")

    # The hub sends the student to their own origin; the server's OAuth goes through the hub's.
    server = f"http://{STUDENT}.localhost:{hub.proxy_port}/user/{STUDENT}/"
    page.wait_for_url(f"{server}lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    assert hub.server_model(STUDENT)["url"] == server
    assert hub.container(STUDENT).labels["gpuspawner.profile"] == "gpu"
    assert hub.visible_devices(STUDENT) == GPU_ID

    # Websockets pass the proxy's host routing and the server's origin check.
    assert page.evaluate(OPEN_TERMINAL, f"/user/{STUDENT}/").startswith("message: "), hub.log_tail()
    # A course page's link through the hub's host still reaches each student's own server.
    page.goto(f"{hub.public}/hub/user-redirect/lab")
    page.wait_for_url(f"{server}lab**")
    # The hub is another origin: the server's JavaScript cannot read the hub's pages or API with
    # the student's login, and the hub's cookies stay on the hub's host (never sent to a server).
    assert page.evaluate(READ_HUB, f"{hub.public}/hub/api/user") == "blocked"
    assert page.evaluate(READ_HUB, f"{hub.public}/hub/token") == "blocked"
    domains = {c["name"]: c["domain"] for c in student.cookies() if c["name"].startswith("jupyterhub-")}
    assert domains == {
        "jupyterhub-hub-login": "localhost",
        "jupyterhub-session-id": "localhost",
        f"jupyterhub-user-{STUDENT}": f"{STUDENT}.localhost",
    }
    student.close()

    # The admin: the hub's Services menu names the dashboard's own host, where its OAuth works.
    admin = browser.new_context()
    page = log_in(admin, hub, ADMIN, "/hub/home")
    assert page.evaluate(READ_HUB, f"{hub.public}/hub/token") == "read 200"  # what the hub's own origin can
    (link,) = [a.get_attribute("href") for a in page.locator("a.dropdown-item").all() if "dashboard" in a.inner_text()]
    # JupyterHub 6.1.1 writes it as //<host>/services/gpu-dashboard/, without the proxy's port.
    assert urlparse(f"http:{link}").hostname == DASHBOARD_HOST
    assert urlparse(f"http:{link}").path == "/services/gpu-dashboard/"
    page.goto(hub.dashboard)
    assert page.url == hub.dashboard, (page.url, hub.log_tail())
    row = page.locator(f'tr[data-unit="{GPU_ID}"]')
    assert row.get_attribute("data-state") == "used"
    assert row.locator("td.user").inner_text() == STUDENT

    # The stop form posts to the dashboard's own origin, with its xsrf token.
    with page.expect_navigation():
        row.locator("button.stop").click()
    assert page.url == hub.dashboard
    hub.wait_gone(STUDENT)
    assert not engine().containers.list(filters={"label": f"gpuspawner.user={STUDENT}"})
    page.reload()
    assert page.locator(f'tr[data-unit="{GPU_ID}"]').get_attribute("data-state") == "free"
    admin.close()
