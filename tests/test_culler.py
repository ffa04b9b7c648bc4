"""GPU culling: the rules with an injected clock and usage, processes placed in containers,
the stops file, the culler's arbiter, and what the spawner does with a stop."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuspawner import GPUSpawner
from gpuspawner import labels as label
from gpuspawner.culler.app import GPUCuller, gpu_servers
from gpuspawner.culler.orphans import ORPHAN, OrphanClocks, orphan_message
from gpuspawner.culler.policy import GPU_IDLE, MAX_RUNTIME, CullRules, GPUServer, IdleClocks, UnitReading, unit_in_use
from gpuspawner.culler.records import record_stop, stop_record_for
from gpuspawner.culler.usage import FileUsage, container_of
from gpuspawner.hub_state import reset_hub_state
from gpuspawner.profiles import ProfileError, parse_profiles
from gpuspawner.spawner import apply_profile_choice

from .fakes import FakeDocker, make_spawner

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
ME = "a" * 64
OTHER = "b" * 64
IDLE = UnitReading(0, {})
BUSY = UnitReading(90, {101: ME})


def server(units=("GPU-0",), rules=CullRules(gpu_idle_timeout=1800), started=T0, container=ME):
    return GPUServer("alice", "", container, tuple(units), rules, started)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- what counts as using a GPU


@pytest.mark.parametrize(
    "reading, in_use",
    [
        (None, True),  # unreadable: never idle
        (UnitReading(0, {}), False),
        (UnitReading(3, {101: ME}), False),  # a CUDA context, kernels below the threshold
        (UnitReading(90, {101: ME}), True),
        (UnitReading(90, {}), True),  # busy with no process visible: the benefit of the doubt
        (UnitReading(90, None), True),
        (UnitReading(90, {202: OTHER}), False),  # another container's work is not ours
        (UnitReading(90, {303: ""}), False),  # nor the host's
        (UnitReading(90, {101: ME, 202: OTHER}, {101: 1, 202: 89}), False),  # per process: ours is idle
        (UnitReading(90, {101: ME, 202: OTHER}, {101: 40, 202: 50}), True),
        (UnitReading(None, {101: ME}), True),  # a MIG instance: our process is there
        (UnitReading(None, {202: OTHER}), False),
        (UnitReading(None, {}), False),
        (UnitReading(None, None), True),  # nothing known
    ],
)
def test_unit_in_use(reading, in_use):
    assert unit_in_use(reading, ME, busy_threshold=5) is in_use


# --- the rules over time


@pytest.mark.parametrize(
    "rules, reading, before, limit, reason, message",
    [
        pytest.param(
            CullRules(gpu_idle_timeout=1800),
            IDLE,
            (0, 29),
            30,
            GPU_IDLE,
            "stopped after 30 minutes without GPU use",
            id="idle-for-the-timeout",
        ),
        pytest.param(  # first seen near the end: the limit counts from the server's start
            CullRules(gpu_idle_timeout=1800, max_runtime=4 * 3600),
            BUSY,
            (239,),
            240,
            MAX_RUNTIME,
            "stopped after 4 hours, the time limit of GPU servers",
            id="max-runtime-of-a-busy-server",
        ),
    ],
)
def test_a_rule_stops_at_its_limit_with_the_reason(rules, reading, before, limit, reason, message):
    clocks = IdleClocks()
    s = server(rules=rules)
    for minute in before:
        assert not clocks.judge(s, {"GPU-0": reading}, at(minute)).stop
    verdict = clocks.judge(s, {"GPU-0": reading}, at(limit))
    assert verdict.stop and verdict.reason == reason
    assert verdict.message == message


def test_use_resets_the_idle_clock():
    clocks = IdleClocks()
    s = server()
    clocks.judge(s, {"GPU-0": IDLE}, at(0))
    assert not clocks.judge(s, {"GPU-0": BUSY}, at(25)).stop
    assert not clocks.judge(s, {"GPU-0": IDLE}, at(26)).stop
    assert not clocks.judge(s, {"GPU-0": IDLE}, at(55)).stop  # idle for 29 minutes only
    assert clocks.judge(s, {"GPU-0": IDLE}, at(56)).stop


def test_every_unit_must_be_idle():
    clocks = IdleClocks()
    s = server(units=("GPU-0", "GPU-1"))
    for minute in (0, 40):
        assert not clocks.judge(s, {"GPU-0": IDLE, "GPU-1": BUSY}, at(minute)).stop


def test_an_unreadable_gpu_never_counts_as_idle():
    clocks = IdleClocks()
    s = server()
    for minute in (0, 40, 80):
        assert not clocks.judge(s, {}, at(minute)).stop
    assert clocks.idle_since == {}


def test_another_containers_work_neither_keeps_alive_nor_culls():
    clocks = IdleClocks()
    shared = {"GPU-0": UnitReading(95, {202: OTHER, 101: ME}, {202: 95})}
    mine, theirs = server(), server(container=OTHER)
    clocks.judge(mine, shared, at(0))
    clocks.judge(theirs, shared, at(0))
    assert clocks.judge(mine, shared, at(30)).stop  # the neighbour's training is not ours
    assert not clocks.judge(theirs, shared, at(30)).stop  # nor is our idle context theirs


def test_jupyter_activity_grace_spares_idle_gpus_but_not_the_time_limit():
    clocks = IdleClocks()
    s = server(rules=CullRules(gpu_idle_timeout=1800, max_runtime=3600, jupyter_activity_grace=600))
    clocks.judge(s, {"GPU-0": IDLE}, at(0))
    assert not clocks.judge(s, {"GPU-0": IDLE}, at(40), last_activity=at(35)).stop  # typed 5 minutes ago
    assert clocks.judge(s, {"GPU-0": IDLE}, at(50), last_activity=at(35)).stop  # 15 minutes ago
    clocks = IdleClocks()
    assert clocks.judge(s, {"GPU-0": IDLE}, at(60), last_activity=at(60)).reason == MAX_RUNTIME


def test_rules_off_stop_nothing_and_a_restarted_culler_waits_again():
    s = server(rules=CullRules())
    clocks = IdleClocks()
    assert not any(clocks.judge(s, {"GPU-0": IDLE}, at(m)).stop for m in range(0, 600, 30))
    s = server()
    first = IdleClocks()
    first.judge(s, {"GPU-0": IDLE}, at(0))
    restarted = IdleClocks()  # the culler restarted at minute 20: its clock starts then
    restarted.judge(s, {"GPU-0": IDLE}, at(20))
    assert not restarted.judge(s, {"GPU-0": IDLE}, at(30)).stop
    assert restarted.judge(s, {"GPU-0": IDLE}, at(50)).stop


def test_clocks_of_gone_servers_are_forgotten():
    clocks = IdleClocks()
    a, b = server(), server(container=OTHER)
    clocks.judge(a, {"GPU-0": IDLE}, at(0))
    clocks.judge(b, {"GPU-0": IDLE}, at(0))
    clocks.forget_others([b])
    assert list(clocks.idle_since) == [f"alice/@{OTHER}"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 20), st.sampled_from(["idle", "busy", "other", "unknown"])), max_size=40),
    st.integers(1, 60),
)
def test_never_stopped_before_an_unbroken_idle_stretch_of_the_timeout(rounds, timeout_minutes):
    """Whatever the readings, a GPU-idle stop comes only after every round of the last
    ``timeout`` minutes found the server idle, and never after a use or an unknown reading."""
    readings = {
        "idle": UnitReading(0, {101: ME}),
        "busy": BUSY,
        "other": UnitReading(99, {202: OTHER}),
        "unknown": None,
    }
    clocks = IdleClocks()
    s = server(rules=CullRules(gpu_idle_timeout=timeout_minutes * 60))
    now, idle_since = T0, None
    for step, kind in rounds:
        now += timedelta(minutes=step)
        idle = kind in ("idle", "other")
        idle_since = (idle_since or now) if idle else None
        verdict = clocks.judge(s, {"GPU-0": readings[kind]}, now)
        expected = idle_since is not None and now - idle_since >= timedelta(minutes=timeout_minutes)
        assert verdict.stop == expected
        if verdict.stop:
            return


# --- processes placed in containers


def test_container_of_reads_docker_cgroups(tmp_path):
    samples = {
        1: "0::/init.scope\n",  # the host
        2: f"12:memory:/docker/{ME}\n11:cpu:/docker/{ME}\n",  # cgroupfs driver, v1
        3: f"0::/system.slice/docker-{OTHER}.scope\n",  # systemd driver, v2
        4: f"5:memory:/gpuspawner-testbed/{ME}\n",  # a cgroup parent
        5: "0::/user.slice/user-1000.slice/session-1.scope\n",
    }
    for pid, text in samples.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(text)
    found = {pid: container_of(pid, str(tmp_path)) for pid in [*samples, 99]}
    assert found == {1: "", 2: ME, 3: OTHER, 4: ME, 5: "", 99: ""}


def test_file_usage_places_processes(tmp_path):
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "cgroup").write_text(f"0::/docker/{ME}\n")
    usage = tmp_path / "usage.json"
    usage.write_text(
        json.dumps(
            {
                "GPU-0": {"utilization": 50, "processes": [7, 8], "process_utilization": {"7": 50}},
                "MIG-1": {"utilization": None, "processes": None},
            }
        )
    )
    readings = FileUsage(str(usage), str(tmp_path / "proc")).read()
    assert readings["GPU-0"] == UnitReading(50, {7: ME, 8: ""}, {7: 50})
    assert readings["MIG-1"] == UnitReading(None, None, None)


# --- the stops file


def test_stop_records_are_found_by_container_and_only_while_fresh(tmp_path):
    path = str(tmp_path / "stops.jsonl")
    assert stop_record_for(path, ME) is None  # no file yet
    record_stop(path, user="alice", server="", profile="gpu", container=ME, reason=GPU_IDLE, message="m1", now=at(0))
    with open(path, "a") as f:
        f.write('{"torn": ')  # a line the culler was still writing
    assert stop_record_for(path, ME, now=at(1))["message"] == "m1"
    assert stop_record_for(path, OTHER, now=at(1)) is None
    assert stop_record_for(path, ME, now=at(60)) is None  # too old: not this stop's reason


@pytest.mark.parametrize(
    "written",
    ["2026-03-02T09:01:00", "2026-03-02T09:01:00Z", "2026-03-02T10:01:00+01:00", "not a time"],
    ids=["no-timezone-skipped", "zulu", "offset", "unreadable"],
)
def test_a_stop_record_time_in_any_iso_form_never_breaks_a_stop(tmp_path, written, caplog):
    """A line written by hand or by another tool: read, or skipped with a warning (no timezone:
    whose time is it?), never a TypeError in stop()."""
    path = tmp_path / "stops.jsonl"
    path.write_text(json.dumps({"time": written, "container": ME, "message": "m"}) + "\n")
    found = stop_record_for(str(path), ME, now=datetime(2026, 3, 2, 9, 2, tzinfo=timezone.utc))
    unusable = written in ("2026-03-02T09:01:00", "not a time")
    assert (found is None) == unusable
    assert ("Skipped 1 unusable line(s)" in caplog.text) == unusable


def test_stop_records_are_read_from_a_bounded_tail_and_after_a_rotation(tmp_path):
    path = str(tmp_path / "stops.jsonl")
    for n in range(400):
        record_stop(
            path,
            user=f"u{n}",
            server="",
            profile="gpu",
            container=f"c{n}",
            reason=GPU_IDLE,
            message="m",
            now=at(0),
            max_bytes=16 * 1024,
            backups=1,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stops.jsonl", "stops.jsonl.1"]
    assert stop_record_for(path, "c399", now=at(1))["user"] == "u399"
    assert stop_record_for(path, "c0", now=at(1)) is None  # rotated away with the oldest generation


# --- the culler service's arbiter


class Usage:
    def __init__(self, readings):
        self.readings = readings

    def read(self):
        if isinstance(self.readings, Exception):
            raise self.readings
        return self.readings


def container(user, server_name, units, idle=1800, runtime=0, cid=ME):
    """A container as the spawner labels it (labels.server_labels)."""
    record = label.ServerRecord(
        user, server_name, "gpu", tuple(units), rules=CullRules(gpu_idle_timeout=idle, max_runtime=runtime)
    )
    return {"Id": cid, "Labels": label.server_labels(record)}


def test_gpu_servers_from_labels():
    found = gpu_servers(
        [
            container("alice", "", ["GPU-0"]),
            container("bob", "x", [], cid=OTHER),
            {"Id": "c", "Labels": {label.GPUS: '["GPU-1"]'}},
        ]
    )
    assert list(found) == ["alice/"]
    assert found["alice/"].rules == CullRules(1800, 0, 0) and found["alice/"].profile == "gpu"


def test_gpu_servers_read_the_lists_gpuspawner_0_2_wrote():
    """Labels written before units were a JSON array still read: a culler upgraded under running servers."""
    labels = {**container("alice", "", ["GPU-0", "GPU-1"])["Labels"], label.GPUS: "GPU-0,GPU-1"}
    assert gpu_servers([{"Id": ME, "Labels": labels}])["alice/"].units == ("GPU-0", "GPU-1")


class Clock:
    """The culler's clock in a test: it moves only when the test moves it."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def culler(tmp_path, containers, readings, clock=None, hub="", **config):
    hub_config = tmp_path / "jupyterhub_config.py"
    hub_config.write_text(f"c.GPUSpawner.stops_file = {str(tmp_path / 'stops.jsonl')!r}\n{hub}")
    GPUCuller.clear_instance()
    app = GPUCuller(usage_source=Usage(readings), clock=clock or Clock(), **config)
    app.initialize(["-f", str(hub_config)])
    app.new_docker_client = lambda: type("D", (), {"containers": lambda self, filters: containers})()
    return app


def hub_server(full_name, started, last_activity):
    return {"full_name": full_name, "started": started.isoformat(), "last_activity": last_activity.isoformat()}


async def test_the_arbiter_stops_an_idle_gpu_server_records_why_and_leaves_cpu_servers(tmp_path):
    clock = Clock()
    app = culler(tmp_path, [container("alice", "", ["GPU-0"], idle=1)], {"GPU-0": IDLE}, clock, cull_every=1)
    now = clock()
    alice = hub_server("alice/", now - timedelta(hours=1), now)
    carol = hub_server("carol/", now - timedelta(days=3), now - timedelta(days=3))  # CPU only, long inactive
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    assert await app.arbiter(server=alice, **args) is False  # first round: the idle clock starts
    assert await app.arbiter(server=carol, inactive=timedelta(days=3), inactive_limit=0) is False
    clock.advance(0.5)  # the same round still: not yet idle for the timeout
    assert await app.arbiter(server=alice, **args) is False
    clock.advance(0.6)  # the next round, 1.1 s after the first
    assert await app.arbiter(server=alice, **args) is True
    (line,) = (tmp_path / "stops.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert (record["user"], record["container"], record["reason"]) == ("alice", ME, GPU_IDLE)
    assert record["message"] == "stopped after 1 second without GPU use"
    assert record["time"] == (T0 + timedelta(seconds=1.1)).isoformat(timespec="seconds")  # the culler's clock


async def test_a_round_is_read_once_and_again_when_stale_or_the_clock_goes_back(tmp_path):
    """Every server of a round shares one reading of Docker and NVML; the next round reads afresh,
    and so does a round after the system clock was set back."""
    reads = []

    class Counting(Usage):
        def read(self):
            reads.append(1)
            return super().read()

    clock = Clock()
    app = culler(tmp_path, [container("alice", "", ["GPU-0"])], {"GPU-0": BUSY}, clock, cull_every=10)
    app.usage_source = Counting({"GPU-0": BUSY})
    alice = hub_server("alice/", clock(), clock())
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    for _ in range(3):
        await app.arbiter(server=alice, **args)
    assert len(reads) == 1
    clock.advance(5.1)  # fresh for min(5, cull_every / 2) seconds
    await app.arbiter(server=alice, **args)
    assert len(reads) == 2
    clock.advance(-60)
    await app.arbiter(server=alice, **args)
    assert len(reads) == 3


async def test_the_arbiter_keeps_servers_when_usage_cannot_be_read(tmp_path):
    clock = Clock()
    gone = RuntimeError("NVML gone")
    app = culler(tmp_path, [container("alice", "", ["GPU-0"], idle=0.1)], gone, clock, cull_every=1)
    now = clock()
    for _ in range(3):
        assert (
            await app.arbiter(server=hub_server("alice/", now, now), inactive=timedelta(0), inactive_limit=0) is False
        )
        clock.advance(0.6)  # a new round each time (fresh for half of cull_every)


async def test_jupyter_idle_culling_is_off_unless_a_timeout_is_given(tmp_path):
    app = culler(tmp_path, [], {}, timeout=600)
    now = T0
    cpu = hub_server("carol/", now, now)
    assert await app.arbiter(server=cpu, inactive=timedelta(seconds=601), inactive_limit=600) is True
    assert await app.arbiter(server=cpu, inactive=timedelta(seconds=599), inactive_limit=600) is False


# --- the spawner: rules on the container, the reason on the next spawn page

GPUS = [{"index": 0, "uuid": "GPU-0000", "name": "A100", "memory": "80G"}]
PROFILES = [
    {"slug": "gpu", "display_name": "GPU", "image": "lab:1", "gpus": 1, "gpu_idle_timeout": "30m"},
    {
        "slug": "long",
        "display_name": "Long runs",
        "image": "lab:1",
        "gpus": 1,
        "max_runtime": "1d",
        "gpu_idle_timeout": 0,
    },
]


def spawner(engine, profile, tmp_path, **config):
    s = make_spawner(
        GPUSpawner,
        engine,
        user="alice",
        profiles=PROFILES,
        gpus=GPUS,
        denials_file="",
        stops_file=str(tmp_path / "stops.jsonl"),
        max_runtime="4h",
        **config,
    )
    s.user_options = {"profile": profile}
    apply_profile_choice(s, s.user_options)
    return s


async def test_rules_go_on_the_container_and_the_reason_to_the_next_spawn_page(tmp_path):
    engine = FakeDocker()
    s = spawner(engine, "gpu", tmp_path, jupyter_activity_grace="10m")
    await s.start()
    labels = engine.inspect_container(s.object_id)["Labels"]
    # The profile's idle timeout, the hub-wide time limit and grace.
    assert (labels[label.GPU_IDLE_TIMEOUT], labels[label.MAX_RUNTIME], labels[label.JUPYTER_ACTIVITY_GRACE]) == (
        "1800",
        "14400",
        "600",
    )
    record_stop(
        str(tmp_path / "stops.jsonl"),
        user="alice",
        server="",
        profile="gpu",
        container=s.object_id,
        reason=GPU_IDLE,
        message="stopped after 30 minutes without GPU use",
    )
    await s.stop()
    s.clear_state()
    state = s.get_state()
    assert state["stop_reason"]["message"] == "stopped after 30 minutes without GPU use"
    reset_hub_state()
    again = spawner(engine, "gpu", tmp_path)
    again.load_state(state)  # a restarted hub
    page = await again.render_profile_form()
    assert "Your last server was stopped after 30 minutes without GPU use" in page
    assert "Stops after 30 minutes without GPU use; runs 4 hours at most." in page
    assert "Runs 1 day at most." in page
    await again.start()
    assert "stop_reason" not in again.get_state()
    await again.stop()


async def test_a_stop_of_its_own_tells_nothing(tmp_path):
    engine = FakeDocker()
    s = spawner(engine, "gpu", tmp_path)
    await s.start()
    record_stop(
        str(tmp_path / "stops.jsonl"),
        user="alice",
        server="",
        profile="gpu",
        container="another",
        reason=GPU_IDLE,
        message="x",
    )
    await s.stop()
    assert "stop_reason" not in s.get_state()


def test_profile_culling_fields_are_checked():
    (p,) = parse_profiles(
        [
            {
                "slug": "g",
                "display_name": "G",
                "image": "i:1",
                "gpus": 1,
                "gpu_idle_timeout": "1h30m",
                "max_runtime": 7200,
            }
        ]
    )
    assert (p.gpu_idle_timeout, p.max_runtime, p.jupyter_activity_grace) == (5400, 7200, None)
    with pytest.raises(ProfileError, match=r"profile 'g'.*gpu_idle_timeout.*not a duration"):
        parse_profiles([{"slug": "g", "display_name": "G", "image": "i:1", "gpus": 1, "gpu_idle_timeout": "soon"}])
    with pytest.raises(ProfileError, match="max_runtime.*asks for none"):
        parse_profiles([{"slug": "c", "display_name": "C", "image": "i:1", "max_runtime": "1h"}])


# --- on a Docker Swarm: one culler per node (--node-local)

SERVICE = "s" * 25


def task(cid, user, server_name="", env=(), idle="1", service=SERVICE):
    """A Swarm task's container as ``inspect_container`` shows it on its node's engine."""
    labels = {
        label.USER: user,
        label.SERVER: server_name,
        label.PROFILE: "gpu",
        label.GPU_IDLE_TIMEOUT: idle,
        label.MAX_RUNTIME: "0",
        label.JUPYTER_ACTIVITY_GRACE: "0",
        "com.docker.swarm.service.id": service,
    }
    return {"Id": cid, "Config": {"Labels": labels, "Env": ["PATH=/usr/bin", *env]}}


def test_a_task_container_holds_the_units_swarm_assigned():
    from gpuspawner.culler.app import task_container

    found = gpu_servers(
        [
            task_container(
                task(ME, "alice", env=["DOCKER_RESOURCE_NVIDIA-GPU=GPU-1,GPU-2", "NVIDIA_VISIBLE_DEVICES=void"])
            ),
            task_container(task(OTHER, "bob", "x", env=["DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB=MIG-7"])),
            task_container(task("c" * 64, "carol", env=["DOCKER_RESOURCE_SSD=1"])),  # no GPU unit: not a GPU server
        ]
    )
    assert {k: s.units for k, s in found.items()} == {"alice/": ("GPU-1", "GPU-2"), "bob/x": ("MIG-7",)}
    assert found["alice/"].container == ME and found["alice/"].rules == CullRules(1, 0, 0)


class NodeEngine:
    """This node's engine: the task containers it runs (listed by label, then inspected)."""

    def __init__(self, tasks):
        self.tasks = {t["Id"]: t for t in tasks}

    def containers(self, filters):
        assert filters == {"label": [label.USER, "com.docker.swarm.service.id"]}
        return [{"Id": cid, "Labels": t["Config"]["Labels"]} for cid, t in self.tasks.items()]

    def inspect_container(self, cid):
        return self.tasks[cid]


async def test_a_node_local_culler_judges_only_its_nodes_servers_and_records_the_service(tmp_path):
    engine = NodeEngine(
        [
            task(ME, "alice", env=["DOCKER_RESOURCE_NVIDIA-GPU=GPU-0"]),
            task(OTHER, "bob", env=["DOCKER_RESOURCE_NVIDIA-GPU=GPU-1"], service="t" * 25),
            task("c" * 64, "cem", service="u" * 25),
        ]
    )  # no GPU, on this node
    clock = Clock()
    app = culler(tmp_path, [], {"GPU-0": IDLE, "GPU-1": BUSY}, clock, cull_every=1, node_local=True, timeout=600)
    app.new_docker_client = lambda: engine
    now = clock()
    args = {"inactive": timedelta(0), "inactive_limit": 600}
    assert await app.arbiter(server=hub_server("alice/", now, now), **args) is False  # the idle clock starts
    # Another node's server, however idle in Jupyter and on GPUs: its own node's culler judges it.
    away = hub_server("dan/", now - timedelta(days=3), now - timedelta(days=3))
    assert await app.arbiter(server=away, inactive=timedelta(days=3), inactive_limit=600) is False
    # A CPU server on this node: the Jupyter inactivity rule still applies here.
    assert await app.arbiter(server=hub_server("cem/", now, now), inactive=timedelta(days=3), inactive_limit=600)
    clock.advance(1.1)
    assert await app.arbiter(server=hub_server("alice/", now, now), **args) is True
    assert await app.arbiter(server=hub_server("bob/", now, now), **args) is False  # busy
    (line,) = (tmp_path / "stops.jsonl").read_text().splitlines()
    record = json.loads(line)
    # The id the hub's SwarmGPUSpawner knows the server by (its service), not the node's container id.
    assert (record["user"], record["container"], record["reason"]) == ("alice", SERVICE, GPU_IDLE)


async def test_a_node_local_culler_judges_nothing_while_its_engine_cannot_be_read(tmp_path):
    class Down:
        def containers(self, filters):
            raise ConnectionError("engine down")

    clock = Clock()
    app = culler(tmp_path, [], {"GPU-0": IDLE}, clock, cull_every=1, node_local=True, timeout=1)
    app.new_docker_client = Down
    now = clock()
    old = hub_server("alice/", now - timedelta(days=1), now - timedelta(days=1))
    assert await app.arbiter(server=old, inactive=timedelta(days=1), inactive_limit=1) is False


async def test_a_new_docker_client_after_the_engine_failed(tmp_path):
    """The engine restarted under the culler: the next round reaches it with a new client."""

    class Engine:
        def __init__(self, up):
            self.up = up

        def containers(self, filters):
            if not self.up:
                raise ConnectionError("engine restarting")
            return [container("alice", "", ["GPU-0"], idle=1)]

    made = []

    def new_client():
        made.append(Engine(up=bool(made)))  # the first client fails, the next ones work
        return made[-1]

    clock = Clock()
    app = culler(tmp_path, [], {"GPU-0": IDLE}, clock, cull_every=1)
    app.new_docker_client = new_client
    alice = hub_server("alice/", clock(), clock())
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    assert await app.arbiter(server=alice, **args) is False  # nothing read, nothing judged
    for _ in range(3):
        clock.advance(0.6)
        await app.arbiter(server=alice, **args)
    assert len(made) == 2  # one new client, then kept while it works
    assert json.loads((tmp_path / "stops.jsonl").read_text())["user"] == "alice"


def test_node_local_is_a_flag():
    GPUCuller.clear_instance()
    app = GPUCuller()
    app.parse_command_line(["--node-local", "--stops-file=/srv/lab/stops.jsonl"])
    assert app.node_local is True and app.stops_file == "/srv/lab/stops.jsonl"
    assert GPUCuller.class_traits()["node_local"].help and GPUCuller.class_traits()["gpu_resource_prefix"].help


# --- the reconciler: containers holding units for servers the hub does not know


def test_an_orphan_is_due_only_after_an_unbroken_grace():
    clocks = OrphanClocks(grace=600)
    held = {ME: "alice/", OTHER: "bob/"}
    assert clocks.due(held, {"bob/"}, T0) == []  # alice's clock starts
    assert clocks.due(held, {"bob/"}, at(9)) == []
    assert clocks.due(held, {"alice/", "bob/"}, at(9.5)) == []  # listed again (a slow spawn): forgiven
    assert clocks.due(held, {"bob/"}, at(10)) == []  # a new stretch
    assert clocks.due(held, {"bob/"}, at(19.9)) == []
    assert clocks.due(held, {"bob/"}, at(20)) == [ME]
    assert clocks.due({OTHER: "bob/"}, set(), at(21)) == []  # alice's container gone: her clock too
    assert clocks.first_seen == {OTHER: at(21)}
    assert orphan_message(600) == (
        "stopped: it held GPUs, but the hub had no record of its server for 10 minutes (the home volume is kept)"
    )


class Engine:
    """The culler's Docker client: listed containers, and the stops and removals asked of it."""

    def __init__(self, containers):
        self.listed = containers
        self.calls = []

    def containers(self, filters):
        return self.listed

    def stop(self, cid, timeout):
        self.calls.append(("stop", cid))

    def remove_container(self, cid, **kwargs):
        self.calls.append(("remove", cid, kwargs))
        self.listed = [c for c in self.listed if c["Id"] != cid]


HUB_GPUS = "c.GPUSpawner.gpus = " + repr(
    [{"index": i, "uuid": f"GPU-{i}", "name": "NVIDIA A100", "memory": "80G"} for i in range(2)]
)


async def test_the_reconciler_stops_a_container_without_a_server_after_the_grace_and_records_why(tmp_path):
    clock = Clock()
    app = culler(tmp_path, [], {}, clock, hub=HUB_GPUS, cull_every=1, orphan_grace=5)
    engine = Engine(
        [
            container("alice", "", ["GPU-0"]),
            container("bob", "", ["GPU-1"], cid=OTHER),
            container("zoe", "", ["GPU-9"], cid="c" * 64),  # another hub's, on the same engine
        ]
    )
    app.new_docker_client = lambda: engine
    listed = {"bob/"}

    async def hub_servers():
        if listed is None:
            raise ConnectionError("the hub restarts")
        return set(listed)

    app.hub_servers = hub_servers
    assert await app.reconcile() == []
    clock.advance(4.9)
    assert await app.reconcile() == [] and engine.calls == []
    listed = None  # the hub cannot be read: nothing judged
    clock.advance(1)
    assert await app.reconcile() == [] and engine.calls == []
    listed = {"bob/"}
    assert await app.reconcile() == ["alice/"]
    assert engine.calls == [("stop", ME), ("remove", ME, {})]  # the container goes; no v=True: volumes stay
    (record,) = map(json.loads, (tmp_path / "stops.jsonl").read_text().splitlines())
    assert (record["user"], record["container"], record["reason"]) == ("alice", ME, ORPHAN)
    assert record["message"] == orphan_message(5)
    clock.advance(10)
    assert await app.reconcile() == []  # bob's server is known; zoe's units are not this hub's
    assert len(engine.calls) == 2


async def test_the_reconciler_judges_nothing_without_an_inventory(tmp_path):
    clock = Clock()
    app = culler(tmp_path, [container("alice", "", ["GPU-0"])], {}, clock, hub="c.GPUSpawner.gpus = []", orphan_grace=1)

    async def nobody():
        return set()

    app.hub_servers = nobody
    for _ in range(3):
        assert await app.reconcile() == []
        clock.advance(1)


async def test_the_reconciler_is_off_with_a_grace_of_0_and_on_a_node(tmp_path):
    for config in ({"orphan_grace": 0}, {"node_local": True}):
        app = culler(tmp_path, [container("alice", "", ["GPU-0"])], {}, Clock(), **config)

        async def nobody():
            return set()

        app.hub_servers = nobody
        assert await app.reconcile() == []


# --- demand-aware: sooner while someone waits in line for the server's units


def test_an_idle_server_stops_sooner_only_while_someone_waits_for_its_unit():
    rules = CullRules(gpu_idle_timeout=1800, gpu_idle_timeout_when_waiting=600)
    assert (rules.idle_limit(False), rules.idle_limit(True)) == (1800, 600)
    assert CullRules(gpu_idle_timeout_when_waiting=600).idle_limit(True) == 600  # no idle limit otherwise
    assert CullRules(gpu_idle_timeout=300, gpu_idle_timeout_when_waiting=600).idle_limit(True) == 300  # never later
    clocks = IdleClocks()
    s = server(rules=rules)
    clocks.judge(s, {"GPU-0": IDLE}, at(0))
    assert not clocks.judge(s, {"GPU-0": IDLE}, at(11)).stop  # nobody waits: 30 minutes
    verdict = clocks.judge(s, {"GPU-0": IDLE}, at(11), wanted=True)
    assert verdict.stop and verdict.reason == GPU_IDLE
    assert verdict.message == "stopped after 10 minutes without GPU use, while others waited in line for its GPU"
    assert not clocks.judge(server(rules=rules), {"GPU-0": BUSY}, at(12), wanted=True).stop  # busy: kept


async def test_the_arbiter_reads_who_waits_from_the_hubs_line(tmp_path):
    clock = Clock()
    record = label.ServerRecord(
        "alice", "", "gpu", ("GPU-0",), rules=CullRules(gpu_idle_timeout=3600, gpu_idle_timeout_when_waiting=1)
    )
    labelled = {"Id": ME, "Labels": label.server_labels(record)}
    assert label.read_server(labelled["Labels"]).rules == record.rules
    line = tmp_path / "queue.json"
    hub = f"c.GPUSpawner.queue_file = {str(line)!r}\n"  # the culler reads the hub's
    app = culler(tmp_path, [labelled], {"GPU-0": IDLE}, clock, cull_every=1, hub=hub)
    alice = hub_server("alice/", clock() - timedelta(hours=1), clock())
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    assert await app.arbiter(server=alice, **args) is False  # the idle clock starts
    clock.advance(2)
    assert await app.arbiter(server=alice, **args) is False  # idle 2 s, but nobody waits
    line.write_text(json.dumps({"waiting": [{"user": "bob"}], "waiting_for": ["GPU-1"]}))
    clock.advance(2)
    assert await app.arbiter(server=alice, **args) is False  # bob waits for another unit
    line.write_text(json.dumps({"waiting": [{"user": "bob"}], "waiting_for": ["GPU-0", "GPU-1"]}))
    clock.advance(2)
    assert await app.arbiter(server=alice, **args) is True


async def test_at_a_windows_start_a_server_the_lab_does_not_serve_is_stopped_and_told_why(tmp_path):
    clock = Clock()
    hours = [
        {
            "name": "ML101 lab",
            "groups": ["ml101"],
            "units": ["GPU-0"],
            "time_zone": "Europe/Berlin",
            "dates": [{"day": "2026-11-27", "start": "10:00", "end": "12:00"}],  # 09:00-11:00 UTC
        }
    ]
    gpus = [{"index": i, "uuid": f"GPU-{i}", "name": "A100", "memory": "80G"} for i in range(2)]
    hub = f"c.GPUSpawner.gpus = {gpus!r}\nc.GPUSpawner.reservations = {hours!r}\n"

    def labelled(user, unit, groups=()):
        record = label.ServerRecord(user, "", "gpu", (unit,), groups=frozenset(groups))
        return {"Id": user * 8, "Labels": label.server_labels(record)}

    containers = [labelled("bob", "GPU-0"), labelled("mia", "GPU-0", ["ml101"]), labelled("eve", "GPU-1")]
    app = culler(tmp_path, containers, {}, Clock(T0 - timedelta(minutes=1)), cull_every=1, hub=hub)
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    assert await app.arbiter(server=hub_server("bob/", T0 - timedelta(hours=1), T0), **args) is False  # 08:59
    app.clock = clock  # 09:00 UTC: the window starts
    assert await app.arbiter(server=hub_server("bob/", T0 - timedelta(hours=1), T0), **args) is True
    assert await app.arbiter(server=hub_server("mia/", T0 - timedelta(hours=1), T0), **args) is False  # served
    assert await app.arbiter(server=hub_server("eve/", T0 - timedelta(hours=1), T0), **args) is False  # not reserved
    (line,) = (tmp_path / "stops.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert (record["user"], record["reason"]) == ("bob", "reservation")
    assert record["message"] == (
        "stopped at 10:00, when ML101 lab started: its GPU is reserved for it until 12:00 (Europe/Berlin)"
    )


async def test_a_server_whose_budget_is_spent_is_stopped_after_the_grace(tmp_path):
    from gpuspawner.usage import UsageBook, UsageStore

    db = tmp_path / "usage.sqlite"
    book = UsageBook(UsageStore(f"sqlite:///{db}"))
    book.assigned("ann/", user="ann", units=["GPU-0"], groups=["ml101"], profile="gpu", at=T0 - timedelta(hours=1))
    budget = {"name": "ML101", "group": "ml101", "gpu_hours": 0.5, "per": "week", "time_zone": "UTC"}
    hub = f"c.GPUSpawner.usage_db_url = 'sqlite:///{db}'\nc.GPUSpawner.gpu_budgets = [{budget!r}]\n"
    record = label.ServerRecord("ann", "", "gpu", ("GPU-0",), groups=frozenset({"ml101"}))
    containers = [{"Id": ME, "Labels": label.server_labels(record)}]
    clock = Clock()
    app = culler(tmp_path, containers, {"GPU-0": BUSY}, clock, cull_every=1, hub=hub)

    async def not_an_admin(name):  # the hub's GET /users/ann, as the culler's token reads it
        return {"kind": "user", "name": name, "admin": False}

    app.hub_user = not_an_admin
    ann = hub_server("ann/", T0 - timedelta(hours=1), T0)
    args = {"inactive": timedelta(0), "inactive_limit": 0}
    assert await app.arbiter(server=ann, **args) is False  # spent: the warning window starts
    clock.advance(599)
    assert await app.arbiter(server=ann, **args) is False
    clock.advance(2)
    assert await app.arbiter(server=ann, **args) is True
    (line,) = (tmp_path / "stops.jsonl").read_text().splitlines()
    stop = json.loads(line)
    assert stop["reason"] == "budget"
    assert stop["message"].startswith("stopped: ML101's budget of 0.5 GPU-hours this week is spent: 1.2 used;")
