"""GPUs that fail, servers that are not servers, and homes of one person: the real hub on the test bed's engine.

The hook double (deploy/testbed/fake-nvidia) fails for the unit ids its fail file names, as the
real NVIDIA hook fails for a broken device; only this module writes that file, with a unit id of
its own, and removes its line afterwards, so every other test's containers start as before.

Images whose command is not a Jupyter server are built here from the test bed's image (and removed
after): the teacher's image of issue 18 (``CMD ["python3"]``, as a ``pytorch/pytorch`` base leaves it),
one whose server dies of an ImportError, one that sleeps, and one that opens its port but never
speaks HTTP and then exits (where JupyterHub itself answered the REST spawn with HTTP 500).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import time

import docker.errors
import pytest

from gpuspawner.gpus.health import Quarantined
from gpuspawner.homes import ARCHIVED_FROM, USER_CREATED, USER_ID
from gpuspawner.quarantine import quarantine, read_quarantine

from .realhub import TESTBED, engine, free_port, home_volume, read_testbed, run_command, running_hub, wait_for
from .test_browser_e2e import log_in
from .test_dashboard_e2e import log_in_to_dashboard, wait_for_dashboard

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
BAD = f"GPU-bad{RUN}-0000-4000-8000-000000000000"  # unique to this run: the hook fails for it only
GOOD = f"GPU-good{RUN}-0000-4000-8000-000000000001"
ADMIN, STUDENT, HOMER = f"admin-{RUN}", f"student-{RUN}", f"homer-{RUN}"
FAIL_FILE = TESTBED / "hook-fail-units"
HOOK = TESTBED / "fake-nvidia" / "nvidia-container-runtime-hook"

# Servers that will never answer: each profile's Dockerfile lines after FROM the test bed's image.
LISTEN_MUTE = (
    "import os, socket, time, urllib.parse as u;"
    " s = socket.create_server(('', u.urlsplit(os.environ['JUPYTERHUB_SERVICE_URL']).port));"
    " print('listening, saying nothing', flush=True); time.sleep(2)"
)
NOT_SERVERS = {
    "python": 'CMD ["python3"]',  # the teacher's image: Python's REPL reads an empty stdin and ends
    "importerror": "\n".join(
        [
            "USER root",
            "RUN mkdir /opt/broken && echo 'raise ImportError(\"tornado is broken in this image\")' > /opt/broken/tornado.py",
            "ENV PYTHONPATH=/opt/broken",
            "USER jovyan",
        ]
    ),
    "sleep": 'CMD ["sleep", "infinity"]',
    "mute": f"CMD {json.dumps(['python3', '-c', LISTEN_MUTE])}",
}


def build_image(tag: str, lines: str) -> None:
    dockerfile = f"FROM {read_testbed('image')}\n{lines}\n"
    engine().images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, network_mode="none")


@pytest.fixture(scope="module")
def not_servers():
    """This run's images of NOT_SERVERS, by profile slug."""
    tags = {slug: f"gpuspawner-not-a-server-{slug}:{RUN}" for slug in NOT_SERVERS}
    try:
        for slug, tag in tags.items():
            build_image(tag, NOT_SERVERS[slug])
        yield tags
    finally:
        for tag in tags.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine().images.remove(tag, force=True)


@contextlib.contextmanager
def failing(unit: str):
    """The hook double fails for ``unit`` while this lasts (its line only: the file may hold others')."""
    with FAIL_FILE.open("a") as f:
        f.write(unit + "\n")
    try:
        yield
    finally:
        lines = [line for line in FAIL_FILE.read_text().splitlines() if line != unit]
        if lines:
            FAIL_FILE.write_text("".join(line + "\n" for line in lines))
        else:
            FAIL_FILE.unlink()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, not_servers):
    if read_testbed("gpu") != "fake" or "hook-fail-units" not in HOOK.read_text():
        pytest.skip("the test engine's hook is not the double that can fail: run `deploy/testbed/testbed.sh up`")
    image = read_testbed("image")
    gpus = [
        {"index": 0, "uuid": BAD, "name": "Tesla T4", "memory": "16G"},
        {"index": 1, "uuid": GOOD, "name": "Tesla T4", "memory": "16G"},
    ]
    # Both GPUs each: a spawn that held them after its failure would have the next one refused (503).
    broken = [{"slug": s, "display_name": s, "image": t, "gpus": 2, "mem_limit": "1G"} for s, t in not_servers.items()]
    config = f"""
    from gpuspawner import services
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    c.GPUSpawner.gpus = {gpus!r}
    c.GPUSpawner.profiles = [
        {{"slug": "cpu", "display_name": "CPU", "image": {image!r}, "mem_limit": "1G"}},
        {{"slug": "gpu", "display_name": "GPU", "image": {image!r}, "gpus": 1, "mem_limit": "1G"}},
    ] + {broken!r}
    services.add_dashboard(c, __file__, url="http://127.0.0.1:{free_port()}", args=["--refresh=60"])
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:  # it removes the homes and archives
        h.dashboard = f"{h.url}/services/gpu-dashboard/"
        wait_for_dashboard(h)
        yield h


def test_a_failing_gpu_is_quarantined_shown_and_put_back(hub, browser):
    with failing(BAD):
        for attempt in (1, 2):
            r = hub.start_server(STUDENT, "gpu")
            assert r.status_code == 503, f"{r.status_code} {r.text}\n{hub.log_tail()}"
            message = r.json()["message"]
            assert "Your server could not start: its GPU (GPU 0 (Tesla T4, 16 GiB)) failed to set up." in message
            assert ("set aside until an admin checks it" in message) == (attempt == 2), message
        # The next spawn gets the other GPU, without a restart.
        hub.spawn(STUDENT, "gpu")
        assert hub.visible_devices(STUDENT) == GOOD
    (record,) = read_quarantine(str(hub.workdir / "gpuspawner-quarantine.json")).values()
    assert (record.unit, record.failures, record.holder) == (BAD, 2, f"{STUDENT}/")
    assert f"nvidia-container-cli: device error: {BAD}" in record.reason

    # The dashboard shows it with the reason, and an admin may put it back.
    context, page = log_in_to_dashboard(browser, hub, ADMIN)
    row = page.locator(f'tr[data-unit="{BAD}"]')
    assert row.get_attribute("data-state") == "quarantined", page.content()[:3000]
    assert "device error" in row.locator(f'[data-quarantine="{BAD}"]').inner_text()
    assert page.locator(f'button.put-back[data-unit="{BAD}"]').count() == 1

    # The command puts it back: the hub hands it out again from its next spawn (tests/test_gpu_health.py).
    done, _ = run_command(hub.workdir, ["quarantine", "put-back", BAD])
    assert done.returncode == 0 and f"put back: GPU 0 (Tesla T4, 16 GiB) ({BAD})" in done.stdout, done
    page.reload()
    assert page.locator(f'tr[data-unit="{BAD}"]').get_attribute("data-state") == "free"
    hub.stop_server(STUDENT)

    # The dashboard's button, for a unit the hub set aside again.
    quarantine(str(hub.workdir / "gpuspawner-quarantine.json"), [Quarantined(BAD, record.since, "again", 2)])
    page.reload()
    with page.expect_navigation():
        page.locator(f'button.put-back[data-unit="{BAD}"]').click()
    assert page.locator(f'tr[data-unit="{BAD}"]').get_attribute("data-state") == "free"
    assert read_quarantine(str(hub.workdir / "gpuspawner-quarantine.json")) == {}
    context.close()


def test_a_deleted_users_home_is_archived_and_the_name_starts_empty(hub):
    hub.spawn(HOMER, "cpu")
    home = home_volume(hub.container(HOMER))  # DockerSpawner escapes the name: homer-2d...
    owner = engine().volumes.get(home).attrs["Labels"]
    old_id, old_created = owner[USER_ID], owner[USER_CREATED]  # the hub user's id in its database, and birth
    assert old_id and old_created
    exec_ = hub.container(HOMER).exec_run(["sh", "-c", "echo 'old thesis' > ~/thesis.txt"])
    assert exec_.exit_code == 0, exec_.output
    hub.stop_server(HOMER)

    r = hub.request("DELETE", f"/users/{HOMER}")
    assert r.status_code == 204, r.text
    names = [v.name for v in engine().volumes.list() if v.name.startswith(home)]
    (archive,) = [n for n in names if n.startswith(f"{home}-archived-")]
    assert home not in names, names
    labels = engine().volumes.get(archive).attrs["Labels"]
    assert labels[ARCHIVED_FROM] == home and labels[USER_ID] == old_id
    kept = engine().containers.run(
        read_testbed("image"), ["cat", "/a/thesis.txt"], volumes={archive: {"bind": "/a", "mode": "ro"}}, remove=True
    )
    assert kept.decode().strip() == "old thesis"

    # The name is given to someone new: an empty home, labelled for them.
    hub.spawn(HOMER, "cpu")
    listing = hub.container(HOMER).exec_run(["sh", "-c", "ls -A ~"]).output.decode()
    assert "thesis.txt" not in listing, listing
    # SQLite gives the new user the deleted one's id again: the creation time tells them apart.
    owner = engine().volumes.get(home).attrs["Labels"]
    assert owner[USER_CREATED] != old_created, (owner, old_created)
    hub.stop_server(HOMER)


# The two sentences the teacher's image fails with: its Python is seen either before it reads its empty stdin, or
# after, when it has ended.
PYTHON = (
    r"^Your server's command, python3, is not a Jupyter server: it runs, but will never answer"
    r"|^Your server exited with status 0 before it answered \(.* s after it started\): its command, python3, ended by"
)
# The sentence each spawn fails with (the first line; the HTML's first paragraph), and its log's last line.
NEVER_ANSWER = [
    ("python", "Your server", "python3", None),  # exited, or seen running Python with nothing to run: see PYTHON
    ("importerror", "Your server exited with status 1 before it answered", "", "tornado is broken in this image"),
    ("sleep", "Your server's command, sleep infinity, is not a Jupyter server", "will never answer", None),
    ("mute", "Your server exited with status 0 before it answered", "ended by itself", "listening, saying nothing"),
]


def home_of(name: str) -> list[str]:
    return [v.name for v in engine().volumes.list(filters={"label": f"gpuspawner.home.user={name}"})]


@pytest.mark.parametrize("profile, sentence, then, log_line", NEVER_ANSWER, ids=[p for p, *_ in NEVER_ANSWER])
def test_a_server_that_is_no_server_fails_its_rest_spawn_at_once_holding_nothing(
    hub, profile, sentence, then, log_line
):
    """Issue 18: no HTTP 500 and no wait of http_timeout (90 s here); the reason, and all units free again."""
    name = f"{profile}-{RUN}"
    began = time.monotonic()
    r = hub.start_server(name, profile)
    took = time.monotonic() - began
    print(f"\n{profile}: REST spawn failed with {r.status_code} in {took:.1f} s")
    # 424 says it failed within JupyterHub's slow_spawn_timeout (10 s; later, 202 and the wait of http_timeout),
    # 503 would say a GPU was still held.
    assert r.status_code == 424, f"{r.status_code} {r.text}\n{hub.log_tail()}"
    message = r.json()["message"]
    first = message.splitlines()[0]
    assert first.startswith(sentence) and then in first, message
    assert profile != "python" or re.match(PYTHON, first), message
    assert log_line is None or "The last lines of its log:\n" in message and log_line in message, message
    assert 'CMD ["jupyterhub-singleuser"]' in message or profile == "importerror", message
    (event,) = hub.progress_events(name)  # what the spawn page shows
    assert event["failed"] and sentence in event["message"], event
    assert event["html_message"].startswith("<p>" + sentence.replace("'", "&#x27;")), event
    assert hub.server_model(name) is None
    assert engine().containers.list(all=True, sparse=True, filters={"label": f"gpuspawner.user={name}"}) == []
    assert home_of(name), "the home volume is kept"
    (released,) = [line for line in hub.log_text().splitlines() if "Released GPUs " in line and f" {name}/ " in line]
    assert BAD in released and GOOD in released and released.endswith("(spawn failed)"), released


def test_the_spawn_page_says_why_a_server_that_is_no_server_failed(hub, browser):
    name = f"page-{RUN}"
    context = browser.new_context()
    page = log_in(context.new_page(), hub, name)
    page.check("#profile-python")
    began = time.monotonic()
    page.click("input[type=submit], button[type=submit]")
    # Where JupyterHub shows it depends on when it fails: under a second, the spawn form's error banner;
    # later, its progress page; in between, its "Spawn failed" page (the redirect found it failed).
    # (A locator, as it is looked for again after each navigation; the redirect to the progress page is one.)
    page.get_by_text('CMD ["jupyterhub-singleuser"]').first.wait_for(timeout=15_000)
    print(f"\nthe spawn page says why in {time.monotonic() - began:.1f} s ({page.url})")
    text = page.inner_text("body")
    said = [line.removeprefix("Error: ") for line in text.splitlines() if "python3" in line]
    assert said and re.match(PYTHON, said[0]), text
    # Where the student lands next (a reload, a bookmark): JupyterHub's "Spawn failed" page, with the same.
    wait_for(lambda: hub.server_model(name) is None, 10, f"{name}'s spawn over")
    page.goto(f"{hub.url}/hub/spawn-pending/{name}")
    assert page.locator("h1").inner_text().strip() == "Spawn failed"
    text = page.inner_text("body")
    said = [line for line in text.splitlines() if "python3" in line]
    assert said and re.match(PYTHON, said[0]) and "It wrote nothing to its log." in text, text
    context.close()
