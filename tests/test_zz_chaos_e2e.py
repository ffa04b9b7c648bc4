"""A chaos run: what a lab host goes through, with servers running, and what must hold after each.

On an engine of the test's own (``tests/chaos_engine.py``, live-restore on; the
shared test bed's engine is never restarted), one hub with four simulated GPUs,
the GPU culler (reconciler grace cut to a few seconds, the ledger re-checked every
second), its database, stops and denials files on a small tmpfs of the test's own:

1. the Docker engine restarts: the servers keep running and keep their units;
2. the hub is SIGKILLed (with its services; the proxy lives on, as after a crash)
   in the middle of a burst of spawns, and started again;
3. the hub's state filesystem fills up: the hub keeps answering, and a spawn or a
   stop either works or fails with a message; when space returns, spawns work.

After each, the truth in Docker (``gpuspawner status --json``, from the containers'
labels) is checked against the hub's ledger (the servers it lists and their state):
no unit held twice, no unit held by a server the hub does not know beyond the
grace, every running server of the hub has its container, every home file intact.
Named ``zz`` so it runs last: it is the slowest of the hub modules to fail cleanly.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
import requests

from . import realhub
from .chaos_engine import ChaosEngine
from .realhub import MissingTestbed, run_command, running_hub, simulated_gpus, wait_for, write_command_config

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-c4a0000-0000-4000-8000-00000000000{i}" for i in range(4)]
GRACE = 3  # seconds: the culler's --orphan-grace
SETTLE = GRACE + 20  # what a check waits at most for the ledger and Docker to agree
COUNTS: dict[str, object] = {}


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    """(hub, engine, state folder, command folder), the hub started with alice's and bob's servers running."""
    if not os.path.exists("/usr/sbin/dockerd") or os.geteuid() != 0:
        raise MissingTestbed("the chaos run starts an engine of its own: it needs root and /usr/sbin/dockerd")
    workdir = tmp_path_factory.mktemp("chaos")
    state = workdir / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(state)], check=True)
    engine = ChaosEngine(Path(f"/var/lib/gpuspawner-chaos-{os.getpid()}"))
    try:
        engine.start()
        (engine.root / "image").write_text(engine.build_image())
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(realhub, "TESTBED", engine.root)  # every engine() and docker_host() of realhub: ours
            yield from _hub(workdir, state, engine)
    finally:
        engine.remove()
        subprocess.run(["umount", "-l", str(state)], check=False)
        print(f"\nchaos run counts: {json.dumps(COUNTS)}")


def _hub(workdir: Path, state: Path, engine: ChaosEngine):
    usage = workdir / "usage.json"
    usage.write_text("{}")  # no GPU reading: the culler's idle rules never stop anyone here
    profiles = [
        dict(slug="gpu", display_name="One A100", gpus=1, image=realhub.read_testbed("image"), mem_limit="256M")
    ]
    config = f"""
    from gpuspawner import services
    c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
    c.GPUSpawner.gpus = {simulated_gpus(GPUS)!r}
    c.GPUSpawner.profiles = {profiles!r}
    c.GPUSpawner.stops_file = "{state}/stops.jsonl"
    c.GPUSpawner.denials_file = "{state}/denials.jsonl"
    c.GPUSpawner.home_volume_name = "jupyterhub-user-{{username}}"
    c.GPUSpawner.ledger_sync_interval = 1
    c.GPUSpawner.network_name = "host"
    c.Spawner.http_timeout = 20
    c.Spawner.start_timeout = 30
    services.add_culler(c, __file__, cull_every=1, args=[{f"--usage-file={usage}"!r}, "--orphan-grace={GRACE}"])
    """
    command = workdir / "command"
    command.mkdir()
    write_command_config(command, simulated_gpus(GPUS), profiles)
    with running_hub(workdir, config, RUN, lab=False) as hub:
        names = [user("alice"), user("bob")]
        hub.spawn_all(*((name, "gpu") for name in names))
        homes = {name: write_home_file(hub, name) for name in names}
        yield hub, engine, state, command, homes


# --- what must hold after each blow


def write_home_file(hub, name: str) -> str:
    """A file in the server's home, written inside it; returns the home volume's name."""
    container = hub.container(name)
    done = container.exec_run(["python3", "-c", f"open('/home/jovyan/work.txt', 'w').write({name!r})"])
    assert done.exit_code == 0, done.output
    return realhub.home_volume(container)


def docker_truth(command: Path) -> dict[str, list[str]]:
    """Unit id → the servers ("user/server") holding it, as ``gpuspawner status --json`` reads the labels."""
    done, _ = run_command(command, ["status", "--json"])
    assert done.returncode == 0, done.stderr
    units = json.loads(done.stdout)["units"]
    return {u["id"]: [f"{h['user']}/{h['server']}" for h in u["holders"]] for u in units}


def hub_ledger(hub) -> dict[str, list[str]]:
    """Server ("user/server") → its units (its state's), for every server the hub lists as running or starting."""
    r = hub.request("GET", "/users", params={"state": "active"})
    r.raise_for_status()
    return {
        f"{model['name']}/{name}": list((server.get("state") or {}).get("gpus", []))
        for model in r.json()
        for name, server in (model.get("servers") or {}).items()
    }


def agree(hub, command: Path) -> tuple[dict, dict]:
    """Wait (at most the grace and a few ledger checks) until Docker and the hub's ledger agree; both."""
    seen = {}

    def agreed():
        truth, ledger = docker_truth(command), hub_ledger(hub)
        seen.update(truth=truth, ledger=ledger)
        twice = {unit: holders for unit, holders in truth.items() if len(holders) > 1}
        assert not twice, f"units held twice in Docker: {twice}"
        held = {holder: unit for unit, holders in truth.items() for holder in holders}
        nobody = {holder: unit for holder, unit in held.items() if holder not in ledger}
        # Every server here asks for a GPU: one the hub lists holds its units in Docker, and only those.
        missing = [server for server in ledger if server not in held]
        wrong = {
            server: units for server, units in ledger.items() if units and any(held.get(server) != u for u in units)
        }
        return not (nobody or missing or wrong)

    wait_for(agreed, SETTLE, "Docker's holders and the hub's ledger agree", every=1, details=lambda: f"{seen}")
    return seen["truth"], seen["ledger"]


def homes_intact(engine: ChaosEngine, homes: dict[str, str]) -> None:
    client = engine.client()
    for name, volume in homes.items():
        path = Path(client.volumes.get(volume).attrs["Mountpoint"]) / "work.txt"
        assert path.read_text() == name, f"{name}'s home lost its file"


def held(truth: dict) -> int:
    return sum(bool(holders) for holders in truth.values())


# --- the blows, in order


def test_1_the_engine_restarts_and_the_servers_keep_running(chaos):
    hub, engine, _, command, homes = chaos
    before = {c.name: c.attrs["State"]["StartedAt"] for c in engine.client().containers.list()}
    down = engine.restart()
    after = {c.name: c.attrs["State"]["StartedAt"] for c in engine.client().containers.list()}
    assert after == before, "live-restore: the same containers, never restarted"
    for name in homes:
        assert hub.server_model(name)["ready"]
        assert requests.get(f"{hub.url}/user/{name}/api", timeout=10).ok  # through the proxy, as a browser
    carol = user("carol")
    hub.spawn(carol, "gpu")  # the hub talks to the new engine
    homes[carol] = write_home_file(hub, carol)
    truth, ledger = agree(hub, command)
    homes_intact(engine, homes)
    assert held(truth) == 3 and len(ledger) == 3
    COUNTS["engine_restart"] = {"servers": len(ledger), "units_held": held(truth), "engine_down_s": round(down, 1)}


def test_2_the_hub_is_killed_in_a_burst_of_spawns(chaos):
    hub, engine, _, command, homes = chaos
    hub.stop_server(user("carol"))  # two units free for a burst of four
    burst = [user(f"burst{i}") for i in range(4)]
    for name in burst:
        hub.ensure_user(name)
    answers: dict[str, str] = {}

    def spawn(name: str) -> None:
        try:
            r = hub.request("POST", f"/users/{name}/server", data=json.dumps({"user_options": {"profile": "gpu"}}))
        except requests.RequestException:
            answers[name] = "no answer"
            return
        message = r.json().get("message", "") if "json" in r.headers.get("Content-Type", "") else ""
        if r.status_code in (201, 202):
            answers[name] = "accepted"
        elif r.status_code == 503 and "GPU" in message:
            answers[name] = "refused"  # the spawner's refusal: every unit taken
        else:
            answers[name] = f"cut off ({r.status_code})"  # the hub died under it (the proxy answers 502/503)

    threads = [threading.Thread(target=spawn, args=(name,)) for name in burst]
    for t in threads:
        t.start()
    # In the middle of the burst: the refusals are back, the two spawns are creating and starting containers.
    wait_for(lambda: len(answers) >= 2, 10, "the burst's first answers", every=0.05)
    answered_before_kill = len(answers)
    kill_hub(hub)
    for t in threads:
        t.join(30)
    hub.start()

    truth, ledger = agree(hub, command)
    homes_intact(engine, homes)
    running = [name for name in burst if f"{name}/" in ledger]
    for name in running:
        hub.wait_ready(name, timeout=30)
    refused = sum(a == "refused" for a in answers.values())
    assert refused >= 2, answers  # never more than the two free units handed out
    assert held(truth) == 2 + len(running) <= 4
    # What the hub's ledger holds is what Docker holds: the free units start, one more is refused.
    extra = [user(f"after{i}") for i in range(4 - held(truth))]
    for name in extra:
        spawn_when_free(hub, name)
    r = hub.start_server(user("late"), "gpu")
    assert r.status_code == 503, r.text
    truth, ledger = agree(hub, command)
    assert held(truth) == 4
    COUNTS["hub_killed"] = {
        "burst": len(burst),
        "answered_before_kill": answered_before_kill,
        "answers": dict(sorted((name.removesuffix(f"-{RUN}"), a) for name, a in answers.items())),
        "succeeded": len(running),
        "refused": refused,
        "failed": len(burst) - refused - len(running),
        "spawned_after": len(extra),
        "servers": len(ledger),
        "units_held": held(truth),
    }


def test_3_the_state_filesystem_fills_up_and_recovers(chaos):
    hub, engine, state, command, homes = chaos
    # Room for one more: stop a burst survivor, or an "after" server.
    victim = next(server.split("/")[0] for server in hub_ledger(hub) if "burst" in server or "after" in server)
    hub.stop_server(victim)
    next_one, refused_one = user("full1"), user("full2")
    for name in (next_one, refused_one):
        hub.ensure_user(name)
    filler = fill(state)
    outcomes = {}
    try:
        assert requests.get(f"{hub.api}/", timeout=10).ok  # the hub answers
        outcomes["spawn"] = attempt(hub, next_one)
        outcomes["refusal"] = attempt(hub, refused_one)
        outcomes["stop"] = stop_attempt(hub, user("alice"))
        assert requests.get(f"{hub.api}/", timeout=10).ok
    finally:
        filler.unlink()
    print(f"\nwith the state filesystem full: {json.dumps(outcomes)}")
    assert requests.get(f"{hub.api}/", timeout=10).ok
    # Space is back. A stop the full disk cut off (container gone, JupyterHub's commit failed) leaves the
    # server listed, and JupyterHub no longer polls it: stopping it again, as its student or an admin
    # would, finishes it.
    repeated = hub.server_model(user("alice")) is not None
    if repeated:
        hub.stop_server(user("alice"))
    # The hub serves, spawns work, and Docker and the ledger agree.
    truth, ledger = agree(hub, command)
    homes_intact(engine, homes)
    free = [unit for unit, holders in truth.items() if not holders]
    spawned = [user(f"back{i}") for i in range(len(free))]
    for name in spawned:
        spawn_when_free(hub, name)
    truth, ledger = agree(hub, command)
    assert held(truth) == 4
    homes_intact(engine, homes)
    COUNTS["state_full"] = {
        **{what: outcome.split(":")[0] for what, outcome in outcomes.items()},
        "stop_repeated": repeated,
        "spawned_after": len(spawned),
        "servers": len(ledger),
        "units_held": held(truth),
    }


def spawn_when_free(hub, name: str) -> None:
    """Spawn on a unit Docker shows free: the hub's ledger frees a unit whose container went away at its
    next check (``ledger_sync_interval``, 1 s here), so a refusal is asked again until then."""
    answers = []

    def started() -> bool:
        r = hub.start_server(name, "gpu")
        answers.append(f"{r.status_code} {r.text}")
        return r.status_code in (201, 202)

    wait_for(started, 5, f"{name}'s spawn accepted", every=0.5, details=lambda: answers[-1])
    hub.wait_ready(name)


def kill_hub(hub) -> None:
    """SIGKILL the hub and its services (the culler), as a crash of its unit would; the proxy lives on."""
    pid = hub.proc.pid
    children = [int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()]
    proxy = int((hub.workdir / "proxy.pid").read_text()) if (hub.workdir / "proxy.pid").exists() else None
    hub.kill()
    for child in children:
        if child != proxy:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem until a write fails with ENOSPC; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def attempt(hub, name: str) -> str:
    """A spawn with the state filesystem full: "ready", "refused: <message>", or "failed: <message>"."""
    r = hub.request("POST", f"/users/{name}/server", data=json.dumps({"user_options": {"profile": "gpu"}}))
    if r.status_code in (201, 202):
        try:
            hub.wait_ready(name, timeout=30)
            return "ready"
        except AssertionError as e:
            return f"failed: {str(e).splitlines()[0]}"
    message = r.json().get("message", "") if r.headers.get("Content-Type", "").startswith("application/json") else ""
    assert message and "Traceback" not in message, f"{r.status_code} {r.text}"  # a sentence, not a stack trace
    return f"{'refused' if r.status_code in (403, 503) else 'failed'}: {r.status_code} {message}"


def stop_attempt(hub, name: str) -> str:
    r = hub.request("DELETE", f"/users/{name}/server")
    if r.status_code not in (202, 204):
        return f"failed: {r.status_code} {textwrap.shorten(r.text, 200)}"
    try:
        hub.wait_gone(name, timeout=30)
    except (AssertionError, requests.HTTPError) as e:
        return f"failed: {r.status_code}, then {textwrap.shorten(str(e), 200)}"
    return "stopped"
