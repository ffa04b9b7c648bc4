"""What the hub forgets, and servers that die young, on the real hub, proxy, engine and culler.

One hub with two simulated GPUs and the GPU culler (its reconciler's grace cut to
a few seconds):

- a server that exits before it answers fails its spawn within seconds, with its
  exit status and its log's last lines, and holds nothing;
- servers the hub forgot while their containers ran (a server row deleted from
  the database while the hub was down; Docker unreachable as the hub started, so
  that its poll raised and JupyterHub cleared the server; a ``stop()`` the engine
  refused) keep their GPUs out of the free pool until the culler stops them,
  and then the GPUs go to the next students, with every home file kept.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import sqlite3
import time
from pathlib import Path

import pytest

from .realhub import docker_host, engine, home_volume, read_testbed, running_hub, simulated_gpus, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-5ec0000-0000-4000-8000-00000000000{i}" for i in range(2)]
GRACE = 4  # seconds: the culler's orphan_grace


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    usage = workdir / "usage.json"
    usage.write_text("{}")  # no GPU reading: the culler's idle rules never stop anyone here
    stops = workdir / "stops.jsonl"
    small = {"mem_limit": "512M", "cpu_limit": 0.5}
    config = f"""
    import docker.errors
    from gpuspawner import services
    from gpuspawner.spawner import GPUSpawner

    class StopRefused(GPUSpawner):
        \"\"\"The engine refuses to stop the servers of dora: a failed stop().\"\"\"

        def docker(self, method, *args, **kwargs):
            if method == "stop" and self.user.name == {user("dora")!r}:
                raise docker.errors.APIError("simulated: the engine refused to stop the container")
            return super().docker(method, *args, **kwargs)

    c.JupyterHub.spawner_class = StopRefused
    c.GPUSpawner.gpus = {simulated_gpus(GPUS)!r}
    c.GPUSpawner.profiles = [
        dict(slug="gpu", display_name="One A100", gpus=1, image={read_testbed("image")!r}, **{small!r}),
        dict(slug="crash", display_name="Crashes", gpus=1, image={read_testbed("image-crash")!r}, **{small!r}),
    ]
    c.GPUSpawner.stops_file = {str(stops)!r}
    c.GPUSpawner.home_volume_name = "jupyterhub-user-{{username}}"
    c.GPUSpawner.ledger_sync_interval = 1
    c.GPUSpawner.network_name = "host"  # no lab network: the hub must start while Docker is away
    services.add_culler(c, __file__, cull_every=1, args=[{f"--usage-file={usage}"!r}, "--orphan-grace={GRACE}"])
    """
    with running_hub(workdir, config, RUN, lab=False) as hub:
        yield hub, stops


def write_home_file(hub, name: str) -> str:
    """A file in the server's home; returns the home volume's name."""
    container = hub.container(name)
    done = container.exec_run(["sh", "-c", f"echo {name} > /home/jovyan/work.txt"])
    assert done.exit_code == 0, done.output
    return home_volume(container)


def home_file(volume: str) -> str:
    return (Path(engine().volumes.get(volume).attrs["Mountpoint"]) / "work.txt").read_text().strip()


def containers_of(name: str) -> list:
    # sparse: no inspect of each one listed, which races with the culler removing it (404)
    return engine().containers.list(all=True, sparse=True, filters={"label": f"gpuspawner.user={name}"})


def start_once_free(hub, name: str) -> None:
    """Start ``name``'s GPU server once the hub's ledger has seen the freed GPU (it checks Docker every
    ``ledger_sync_interval``, 1 s here); a refusal before that holds nothing."""
    wait_for(
        lambda: hub.start_server(name, "gpu").status_code in (201, 202),
        15,
        f"{name}'s GPU server started",
        every=1,
        details=hub.log_tail,
    )


def stop_reasons(stops: Path) -> dict[str, str]:
    lines = stops.read_text().splitlines() if stops.exists() else []
    return {record["user"]: record["reason"] for record in map(json.loads, lines)}


def test_a_server_that_exits_before_it_answers_fails_within_seconds_and_says_why(lab):
    hub, _ = lab
    frank = user("frank")
    began = time.monotonic()
    r = hub.start_server(frank, "crash")
    took = time.monotonic() - began
    # JupyterHub waits slow_spawn_timeout (10 s) for a spawn before it answers 202; this one failed before,
    # with 424 (the server failed; nothing in the hub did).
    assert r.status_code == 424, f"{r.status_code} {r.text}\n{hub.log_tail()}"
    assert took < 8, f"the failure took {took:.1f} s"
    message = r.json()["message"]
    assert "Your server exited with status 1" in message and "before it answered" in message
    assert "gpuspawner-lab-crash: exiting with status 1 on purpose" in message  # the last line of its log
    (event,) = hub.progress_events(frank)  # what the spawn page shows
    assert event["failed"] and "exited with status 1" in event["message"]
    assert "<pre>gpuspawner-lab-crash: exiting with status 1 on purpose</pre>" in event["html_message"]
    assert containers_of(frank) == []
    assert f"Released GPUs {GPUS[0]} of {frank}/ (spawn failed)" in hub.log_text()
    assert hub.server_model(frank) is None


def test_servers_the_hub_forgot_are_stopped_after_the_grace_and_their_gpus_freed(lab, tmp_path):
    hub, stops = lab
    alice, carol, bob, dora = (user(n) for n in ("alice", "carol", "bob", "dora"))
    hub.spawn_all((alice, "gpu"), (carol, "gpu"))
    homes = {name: write_home_file(hub, name) for name in (alice, carol)}

    # alice's server row goes while the hub is down; carol's poll fails as it starts, Docker being away.
    hub.stop()
    db = sqlite3.connect(hub.workdir / "jupyterhub.sqlite")
    with db:
        (server_id,) = db.execute(
            "SELECT server_id FROM spawners WHERE name = '' AND user_id = (SELECT id FROM users WHERE name = ?)",
            (alice,),
        ).fetchone()
        db.execute("UPDATE spawners SET server_id = NULL, state = NULL WHERE server_id = ?", (server_id,))
        db.execute("DELETE FROM servers WHERE id = ?", (server_id,))
    db.close()
    socket = tmp_path / "docker.sock"  # nothing there yet: the engine cannot be reached
    hub.start(engine_at=f"unix://{socket}")
    assert f"Failed to poll spawner for {carol}" in hub.log_text()
    assert hub.server_model(alice) is None and hub.server_model(carol) is None
    assert len(engine().containers.list(filters={"label": [f"gpuspawner.user={carol}"]})) == 1

    began = time.monotonic()
    socket.symlink_to(docker_host().removeprefix("unix://"))  # the engine is back
    refused = hub.start_server(bob, "gpu")  # the orphans' GPUs are not given away while they run
    assert refused.status_code == 503, refused.text
    wait_for(
        lambda: not containers_of(alice) and not containers_of(carol),
        GRACE + 20,
        "the forgotten servers stopped",
        details=hub.log_tail,
    )
    assert time.monotonic() - began >= GRACE  # not before the grace
    assert stop_reasons(stops) == {alice: "orphan", carol: "orphan"}
    assert {name: home_file(volume) for name, volume in homes.items()} == {alice: alice, carol: carol}

    # Both GPUs go to the next students (once the hub's ledger has checked Docker again: ledger_sync_interval).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both start at once
        list(pool.map(lambda name: start_once_free(hub, name), (bob, dora)))
    for name in (bob, dora):
        hub.wait_ready(name)
    assert sorted(hub.visible_devices(name) for name in (bob, dora)) == sorted(GPUS)


def test_a_failed_stop_leaves_a_container_the_culler_stops_and_its_gpu_freed(lab):
    hub, stops = lab
    dora, erin = user("dora"), user("erin")
    gpu, home = hub.visible_devices(dora), write_home_file(hub, dora)
    r = hub.request("DELETE", f"/users/{dora}/server")  # the engine refuses the stop
    assert r.status_code in (202, 204), r.text  # JupyterHub does not tell
    hub.wait_gone(dora)  # and forgets the server all the same
    assert f"Could not stop {dora}/" in hub.log_text()  # the spawner tells the admin
    assert len(engine().containers.list(filters={"label": f"gpuspawner.user={dora}"})) == 1
    assert hub.start_server(erin, "gpu").status_code == 503  # dora's container still holds her GPU

    wait_for(lambda: not containers_of(dora), GRACE + 20, "dora's container stopped", details=hub.log_tail)
    assert stop_reasons(stops)[dora] == "orphan"
    assert home_file(home) == dora
    start_once_free(hub, erin)
    hub.wait_ready(erin)
    assert hub.visible_devices(erin) == gpu
    # bob's server, which the hub knows, ran through all those rounds of the culler.
    bob = user("bob")
    assert hub.server_model(bob)["ready"] and bob not in stop_reasons(stops)
