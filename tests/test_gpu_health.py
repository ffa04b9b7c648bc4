"""GPUs that fail: the device's errors, quarantine after failures in a row, placement that skips,
the quarantine file, NVML that does not answer (check_config, the retry)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest
from jupyterhub.spawner import SpawnException
from traitlets.config import Config

from gpuspawner import GPUSpawner, check_config
from gpuspawner.checks import ConfigInvalid
from gpuspawner.gpus import GPU, GPURequest, Inventory, Ledger, NoCapacity, Policy, Requester, decide
from gpuspawner.gpus.health import FailureCount, Quarantined, device_failure, short_reason
from gpuspawner.gpus.nvml import NVMLUnavailable
from gpuspawner.quarantine import QuarantineFile, put_back, quarantine, read_quarantine
from gpuspawner.spawner import apply_profile_choice

from .fakes import FakeDocker, make_spawner

HOOK = (
    "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process:"
    " error during container init: error running hook #0: error running hook: exit status 1, stdout: , stderr:"
    " nvidia-container-cli: device error: {unit}: unknown device: unknown"
)
GPUS = [
    {"index": 0, "uuid": "GPU-0000", "name": "T4", "memory": "16G"},
    {"index": 1, "uuid": "GPU-1111", "name": "T4", "memory": "16G"},
]
PROFILES = [{"slug": "gpu", "display_name": "GPU", "image": "lab:1", "gpus": 1}]
UNITS = tuple(GPU(i, f"GPU-{i}", "T4", 16 << 30) for i in range(3))


# --- the pure core


@pytest.mark.parametrize(
    "message, units, blamed",
    [
        (HOOK.format(unit="GPU-b"), ("GPU-a", "GPU-b"), ("GPU-b",)),  # the hook names its device
        ("error running hook #0: exit status 1", ("GPU-a", "GPU-b"), ("GPU-a", "GPU-b")),  # each may be it
        ("nvidia-container-cli: initialization error: nvml error: driver not loaded", ("GPU-a",), ("GPU-a",)),
        ("OCI runtime create failed: GPU is lost", ("GPU-a",), ("GPU-a",)),
        ("no space left on device", ("GPU-a",), ()),  # the host's, not the device's
        ('exec: "jupyterhub-singleuser": executable file not found in $PATH', ("GPU-a",), ()),
        (HOOK.format(unit="GPU-a"), (), ()),  # a server without a unit blames none
    ],
    ids=["names-one", "names-none", "nvml", "lost", "disk", "image", "no-units"],
)
def test_which_errors_are_the_devices(message, units, blamed):
    assert device_failure(message, units) == blamed


def test_the_reason_is_the_hooks_own_words():
    assert (
        short_reason(HOOK.format(unit="GPU-b")) == "nvidia-container-cli: device error: GPU-b: unknown device: unknown"
    )
    assert len(short_reason("x" * 1000)) == 300


def test_only_failures_in_a_row_reach_the_threshold():
    count = FailureCount(2)
    assert count.failed(["GPU-a"]) == {}
    count.started(["GPU-a"])  # a start in between: it works
    assert count.failed(["GPU-a"]) == {}
    assert count.failed(["GPU-a", "GPU-b"]) == {"GPU-a": 2}
    assert count.failures("GPU-b") == 1 and count.failures("GPU-a") == 0
    assert FailureCount(0).failed(["GPU-a"] * 5) == {}  # 0: never


def test_placement_skips_quarantined_units_and_says_so():
    ledger = Ledger(UNITS)
    ledger.quarantined = frozenset({"GPU-0"})
    one = GPURequest(count=1)
    ana = Requester("ana")
    assert ledger.assign("ana/", one, ana).ids == ("GPU-1",)
    assert ledger.availability(one) == (1, 3)
    assert ledger.assign("bo/", one, Requester("bo")).ids == ("GPU-2",)
    refusal = ledger.can_fit(one, Requester("cy"))
    assert isinstance(refusal, NoCapacity)
    assert "1 of them is set aside after failed starts (quarantined)" in refusal.message
    assert refusal.free == ()  # a quarantined unit is not free to take
    ledger.quarantined = frozenset()  # put back
    assert ledger.assign("cy/", one, Requester("cy")).ids == ("GPU-0",)
    shared = GPURequest(count=1, shared=True)
    assert decide(UNITS, (), shared, ana, Policy(), "ana/", quarantined={"GPU-0", "GPU-1"})[0].id == "GPU-2"


def test_a_quarantined_unit_still_held_stays_held():
    ledger = Ledger(UNITS)
    ledger.adopt("ana/", ["GPU-0"])
    ledger.quarantined = frozenset({"GPU-0"})
    assert [a.holder for a in ledger.holders_of("GPU-0")] == ["ana/"]


# --- the quarantine file


def test_the_file_keeps_units_across_readers_and_tolerates_damage(tmp_path, caplog):
    path = str(tmp_path / "q.json")
    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    assert read_quarantine(path) == {}
    quarantine(path, [Quarantined("GPU-a", now, "device error", 2, "ana/")])
    quarantine(path, [Quarantined("GPU-b", now, "lost", 3)])
    watch = QuarantineFile(path)
    assert set(watch.current()) == {"GPU-a", "GPU-b"}
    assert watch.current()["GPU-a"] == Quarantined("GPU-a", now, "device error", 2, "ana/")
    assert put_back(path, ["GPU-a", "GPU-x"]) == ["GPU-a"]
    assert set(watch.current()) == {"GPU-b"}  # read again: it changed
    (tmp_path / "q.json").write_text("{not json")
    assert watch.current() == {} and "not JSON" in caplog.text
    (tmp_path / "q.json").write_text(json.dumps({"units": {"GPU-c": {"since": "2026-12-01T10:00:00"}, "x": 1}}))
    (only,) = watch.current().values()
    assert only.unit == "GPU-c" and only.since.tzinfo is not None  # a naive time is taken as UTC


# --- the spawner


@pytest.fixture
def engine():
    return FakeDocker()


def spawner(engine, user, tmp_path, **config):
    s = make_spawner(
        GPUSpawner,
        engine,
        user=user,
        profiles=PROFILES,
        gpus=GPUS,
        denials_file="",
        quarantine_file=str(tmp_path / "quarantine.json"),
        **config,
    )
    s.user_options = {"profile": "gpu"}
    apply_profile_choice(s, s.user_options)
    return s


async def test_a_unit_that_fails_twice_is_quarantined_and_the_next_spawn_gets_another(engine, tmp_path):
    engine.fail_start = HOOK.format(unit="GPU-0000")
    for attempt in (1, 2):
        s = spawner(engine, "ana", tmp_path)
        with pytest.raises(SpawnException) as refused:
            await s.start()
        assert "its GPU (GPU 0 (T4, 16 GiB)) failed to set up" in refused.value.message
        assert ("set aside until an admin checks it" in refused.value.message) == (attempt == 2)
        assert engine.containers_by_id == {} and s.shared.ledger.assignments() == ()
    (record,) = read_quarantine(str(tmp_path / "quarantine.json")).values()
    assert (record.unit, record.failures, record.holder) == ("GPU-0000", 2, "ana/")
    assert "nvidia-container-cli: device error: GPU-0000" in record.reason
    engine.fail_start = False
    s = spawner(engine, "ana", tmp_path)
    await s.start()
    assert s.gpu_ids == ("GPU-1111",)


async def test_other_start_errors_never_quarantine(engine, tmp_path):
    engine.fail_start = "no space left on device"
    for _ in range(3):
        with pytest.raises(Exception, match="no space left"):
            await spawner(engine, "ana", tmp_path).start()
    assert not (tmp_path / "quarantine.json").exists()


async def test_a_restarted_hub_skips_the_unit_until_it_is_put_back(engine, tmp_path):
    path = str(tmp_path / "quarantine.json")
    quarantine(path, [Quarantined("GPU-0000", datetime.now(timezone.utc), "device error", 2)])
    s = spawner(engine, "ana", tmp_path)
    await s.start()
    assert s.gpu_ids == ("GPU-1111",)
    await s.stop()
    put_back(path, ["GPU-0000"])  # the admin, from the command or the dashboard
    s = spawner(engine, "ana", tmp_path)
    await s.start()
    assert s.gpu_ids == ("GPU-0000",)


def test_check_config_stops_the_hub_when_nvml_does_not_answer(monkeypatch):
    c = Config()
    c.GPUSpawner.network_name = "host"
    c.GPUSpawner.gpus = "nvml"

    def no_driver(nvml=None):
        raise NVMLUnavailable("NVML did not initialise: Driver Not Loaded")

    monkeypatch.setattr("gpuspawner.checks.discover", no_driver)
    with pytest.raises(ConfigInvalid, match='gpus = "nvml", but NVML does not answer: .*Driver Not Loaded.*nvidia-smi'):
        check_config(c, prepull=False)
    c.GPUSpawner.gpus = "auto"  # starts without GPUs
    check_config(c, prepull=False)


async def test_auto_asks_nvml_again_until_it_answers(engine, tmp_path, monkeypatch):
    answers = []

    def discover_auto():
        if not answers:
            return Inventory(source="none", note="NVML did not initialise: Driver Not Loaded")
        return Inventory(units=UNITS[:1], source="nvml")

    monkeypatch.setattr("gpuspawner.spawner.discover_auto", discover_auto)
    s = make_spawner(GPUSpawner, engine, profiles=PROFILES, gpus="auto", nvml_retry_interval=0.05, denials_file="")
    ledger = await s.ledger()
    assert ledger.inventory == () and s.shared.inventory.source == "none"
    answers.append(True)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if ledger.inventory:
            break
    assert [u.id for u in ledger.inventory] == ["GPU-0"] and s.shared.inventory.source == "nvml"


def test_the_command_lists_and_puts_back(tmp_path, capsys, monkeypatch):
    from gpuspawner.cli import main

    (tmp_path / "jupyterhub_config.py").write_text(
        f'c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\nc.GPUSpawner.gpus = {GPUS!r}\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["quarantine"]) == 0 and "No unit is quarantined" in capsys.readouterr().out
    quarantine(
        str(tmp_path / "gpuspawner-quarantine.json"), [Quarantined("GPU-1111", datetime.now(timezone.utc), "lost", 2)]
    )
    assert main(["quarantine", "list"]) == 0
    out = capsys.readouterr().out
    assert "GPU 1 (T4, 16 GiB)" in out and "GPU-1111" in out and "lost" in out
    assert main(["quarantine", "put-back", "GPU-1111"]) == 0
    assert "put back: GPU 1 (T4, 16 GiB) (GPU-1111)" in capsys.readouterr().out
    assert read_quarantine(str(tmp_path / "gpuspawner-quarantine.json")) == {}
    assert main(["quarantine", "put-back", "GPU-0000"]) == 1  # not quarantined
    assert main(["quarantine", "put-back"]) == 2
