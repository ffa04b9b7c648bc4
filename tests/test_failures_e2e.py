"""GPUs that fail and homes of one person, end to end: the real hub on the test bed's engine.

The hook double (deploy/testbed/fake-nvidia) fails for the unit ids its fail file names, as the
real NVIDIA hook fails for a broken device; only this module writes that file, with a unit id of
its own, and removes its line afterwards, so every other test's containers start as before.
"""

from __future__ import annotations

import contextlib
import secrets

import pytest

from gpuspawner.gpus.health import Quarantined
from gpuspawner.homes import ARCHIVED_FROM, USER_CREATED, USER_ID
from gpuspawner.quarantine import quarantine, read_quarantine

from .realhub import TESTBED, engine, free_port, home_volume, read_testbed, run_command, running_hub
from .test_dashboard_e2e import log_in_to_dashboard, wait_for_dashboard

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.browser]

RUN = secrets.token_hex(3)
BAD = f"GPU-bad{RUN}-0000-4000-8000-000000000000"  # unique to this run: the hook fails for it only
GOOD = f"GPU-good{RUN}-0000-4000-8000-000000000001"
ADMIN, STUDENT, HOMER = f"admin-{RUN}", f"student-{RUN}", f"homer-{RUN}"
FAIL_FILE = TESTBED / "hook-fail-units"
HOOK = TESTBED / "fake-nvidia" / "nvidia-container-runtime-hook"


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
def hub(tmp_path_factory):
    if read_testbed("gpu") != "fake" or "hook-fail-units" not in HOOK.read_text():
        pytest.skip("the test engine's hook is not the double that can fail: run `deploy/testbed/testbed.sh up`")
    image = read_testbed("image")
    gpus = [
        {"index": 0, "uuid": BAD, "name": "Tesla T4", "memory": "16G"},
        {"index": 1, "uuid": GOOD, "name": "Tesla T4", "memory": "16G"},
    ]
    config = f"""
    from gpuspawner import services
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    c.GPUSpawner.gpus = {gpus!r}
    c.GPUSpawner.profiles = [
        {{"slug": "cpu", "display_name": "CPU", "image": {image!r}, "mem_limit": "1G"}},
        {{"slug": "gpu", "display_name": "GPU", "image": {image!r}, "gpus": 1, "mem_limit": "1G"}},
    ]
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
