"""The NVML seam: a stand-in module here; the real driver where there is one."""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml
import pytest

from gpuspawner.gpus.inventory import GPU, Inventory, InventoryError, parse_static_inventory
from gpuspawner.gpus.nvml import (
    NVMLUnavailable,
    UnitUsage,
    discover,
    discover_auto,
    read_gpus,
    read_gpus_as_config,
    read_usage,
)

GiB = 1024**3
MiB = 1024**2


@dataclass
class Dev:
    """One device the stand-in reports: a GPU, or a MIG instance in a GPU's ``slots``."""

    uuid: str | bytes
    name: str | bytes
    memory: int
    mig: str = "disabled"  # "enabled", "pending" (enabled after a reset), "disabled", "unsupported"
    slots: list[Dev | None] = field(default_factory=list)  # MIG instances by index; None: empty
    slices: int = 0  # a MIG instance's GPU-instance slices
    used: int = 0
    utilization: int | None = 0  # None: NOT_SUPPORTED (as on MIG instances)
    temperature: int = 40
    pids: tuple[int, ...] | None = ()  # None: NOT_SUPPORTED
    pid_memory: dict[int, int | None] = field(default_factory=dict)  # usedGpuMemory by pid (default 1 GiB)
    # (pid, smUtil, timestamp in µs) samples; None: NOT_SUPPORTED (as on MIG instances)
    samples: list[tuple[int, int, int]] | None = field(default_factory=list)


class FakeNVML:
    """A stand-in for the ``pynvml`` module, modelled on nvidia-ml-py 12/13."""

    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        # Like pynvml's: the code in .value, its text as str().
        _text = {
            2: "Invalid Argument",
            3: "Not Supported",
            6: "Not Found",
            9: "Driver Not Loaded",
            13: "Function Not Found",
            15: "GPU is lost",
        }

        def __init__(self, value):
            super().__init__(value)
            self.value = value

        def __str__(self):
            return self._text.get(self.value, f"NVML Error with code {self.value}")

    class NVMLError_NotSupported(NVMLError):
        def __init__(self):
            super().__init__(3)

    class NVMLError_NotFound(NVMLError):
        def __init__(self):
            super().__init__(6)

    def __init__(self, devices=(), *, fail_init=None, cuda=12040, driver=b"550.54.15", fail=None):
        self.devices = list(devices)
        self.fail_init = fail_init  # an NVML error code nvmlInit raises
        self.cuda = cuda
        self.driver = driver
        self.fail = fail  # the name of a function that raises GPU_IS_LOST
        self.inits = 0
        self.shutdowns = 0
        self.called: set[str] = set()

    def __getattribute__(self, name):
        # Record every NVML name the code under test touches (see test_names_exist_in_pynvml).
        if name.startswith(("nvml", "NVML")):
            object.__getattribute__(self, "called").add(name)
            if name == object.__getattribute__(self, "fail"):

                def lost(*args):
                    raise FakeNVML.NVMLError(FakeNVML.NVML_ERROR_GPU_IS_LOST)

                return lost
        return object.__getattribute__(self, name)

    def nvmlInit(self):
        if self.fail_init is not None:
            raise self.NVMLError(self.fail_init)
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle):
        return handle.uuid

    def nvmlDeviceGetName(self, handle):
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle.memory, used=handle.used, free=handle.memory - handle.used)

    def nvmlDeviceGetMigMode(self, handle):
        if handle.mig == "unsupported":
            raise self.NVMLError_NotSupported()
        current = {"enabled": 1, "pending": 0, "disabled": 0}[handle.mig]
        pending = {"enabled": 1, "pending": 1, "disabled": 0}[handle.mig]
        return [current, pending]  # pynvml returns a list

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        if handle.mig == "unsupported":
            raise self.NVMLError_NotSupported()
        return len(handle.slots) or 7  # what the GPU could hold, also with MIG mode off

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        if handle.mig != "enabled":
            raise self.NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        mig = handle.slots[index] if index < len(handle.slots) else None
        if mig is None:
            # The base class with a code, as pynvml's NVMLError(6) would be without its subclass map.
            raise self.NVMLError(self.NVML_ERROR_NOT_FOUND)
        return mig

    def nvmlDeviceGetAttributes(self, mig):
        return SimpleNamespace(gpuInstanceSliceCount=mig.slices, memorySizeMB=mig.memory // MiB)

    def nvmlDeviceGetUtilizationRates(self, handle):
        if handle.utilization is None:
            raise self.NVMLError_NotSupported()
        return SimpleNamespace(gpu=handle.utilization, memory=0)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle.temperature

    def nvmlDeviceGetProcessUtilization(self, handle, lastSeenTimeStamp):
        if handle.samples is None:
            raise self.NVMLError_NotSupported()
        found = [
            SimpleNamespace(pid=pid, smUtil=sm, memUtil=0, encUtil=0, decUtil=0, timeStamp=ts)
            for pid, sm, ts in handle.samples
            if ts > lastSeenTimeStamp
        ]
        if not found:
            raise self.NVMLError_NotFound()  # as NVML does when no sample is newer
        return found

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if handle.pids is None:
            raise self.NVMLError_NotSupported()
        # nvidia-ml-py gives usedGpuMemory None where the driver says NVML_VALUE_NOT_AVAILABLE
        return [SimpleNamespace(pid=pid, usedGpuMemory=handle.pid_memory.get(pid, GiB)) for pid in handle.pids]


A100 = "NVIDIA A100-SXM4-40GB"
MIG_A = Dev(
    "MIG-aaaa0000-0000-0000-0000-000000000001",
    A100 + " MIG 1g.5gb",
    4864 * MiB,
    slices=1,
    utilization=None,
    used=GiB,
    pids=(4242,),
)
MIG_B = Dev("MIG-aaaa0000-0000-0000-0000-000000000002", A100 + " MIG 1g.5gb", 4864 * MiB, slices=1, utilization=None)
MIG_C = Dev(
    b"MIG-aaaa0000-0000-0000-0000-000000000003",
    (A100 + " MIG 3g.20gb").encode(),
    19968 * MiB,
    slices=3,
    utilization=None,
)


def mig_gpu(*instances: Dev, uuid: str = "GPU-2222") -> Dev:
    """A 40 GiB A100 in MIG mode with these ``instances`` in its first slots."""
    return Dev(uuid, A100, 40 * GiB, mig="enabled", slots=list(instances))


def host() -> FakeNVML:
    """Two whole GPUs, a GPU in MIG mode (3 instances among empty slots), a GPU without MIG."""
    return FakeNVML(
        [
            # MIG-capable, MIG mode waiting for a reset: whole until then.
            Dev(
                "GPU-0000",
                A100,
                40 * GiB,
                mig="pending",
                utilization=37,
                used=3 * GiB,
                temperature=51,
                pids=(1001, 1002),
            ),
            Dev(b"GPU-1111", A100.encode(), 40 * GiB),  # an older nvidia-ml-py: bytes
            Dev(
                "GPU-2222",
                A100,
                40 * GiB,
                mig="enabled",
                temperature=63,
                slots=[MIG_A, None, MIG_B, None, MIG_C, None, None],
            ),
            Dev("GPU-3333", "NVIDIA GeForce RTX 4090", 24 * GiB, mig="unsupported", pids=None),
        ]
    )


def test_discover_lists_whole_gpus_and_only_the_instances_of_a_mig_gpu():
    fake = host()
    inventory = discover(fake)
    assert inventory == Inventory(
        units=(
            GPU(0, "GPU-0000", A100, 40 * GiB),
            GPU(1, "GPU-1111", A100, 40 * GiB),
            GPU(2, MIG_A.uuid, A100, 4864 * MiB, "1g.5gb", "GPU-2222", 0),
            GPU(2, MIG_B.uuid, A100, 4864 * MiB, "1g.5gb", "GPU-2222", 2),
            GPU(2, MIG_C.uuid.decode(), A100, 19968 * MiB, "3g.20gb", "GPU-2222", 4),
            GPU(3, "GPU-3333", "NVIDIA GeForce RTX 4090", 24 * GiB),
        ),
        source="nvml",
        driver_version="550.54.15",
        cuda_version="12.4",
    )
    assert all(isinstance(v, str) for g in inventory.units for v in (g.uuid, g.name, g.mig_profile))
    assert (fake.inits, fake.shutdowns) == (1, 1)


def test_a_mig_mode_gpu_never_appears_whole():
    fake = host()
    units = discover(fake).units
    assert "GPU-2222" not in {g.uuid for g in units}
    assert all(g.is_mig for g in units if g.index == 2)
    # ... not even when MIG mode is on and no instance is configured yet.
    fake.devices[2].slots = [None] * 7
    assert [g.index for g in discover(fake).units] == [0, 1, 3]


def test_old_drivers_mig_uuid_form_is_kept_and_round_trips_through_config():
    old = "MIG-GPU-2222/1/0"
    fake = FakeNVML([mig_gpu(Dev(old.encode(), A100 + " MIG 1g.5gb", 4864 * MiB, slices=1))])
    (unit,) = read_gpus(fake)
    assert (unit.uuid, unit.id, unit.gpu_uuid) == (old, old, "GPU-2222")
    assert parse_static_inventory(read_gpus_as_config(fake)) == (unit,)


def test_mig_profile_from_slices_and_memory_when_the_name_lacks_it():
    fake = FakeNVML(
        [
            mig_gpu(
                Dev("MIG-1", A100, 4864 * MiB, slices=1),  # 4.75 GiB: NVIDIA calls it 1g.5gb
                Dev("MIG-2", "NVIDIA A100-SXM4-40GB MIG", 19968 * MiB, slices=3),
                Dev("MIG-3", A100, 40192 * MiB, slices=7),  # 39.25 GiB: 7g.40gb
                Dev("MIG-4", A100 + " MIG 1c.3g.20gb", 19968 * MiB, slices=3),  # a compute instance: as named
            )
        ]
    )
    assert [g.mig_profile for g in read_gpus(fake)] == ["1g.5gb", "3g.20gb", "7g.40gb", "1c.3g.20gb"]


def test_as_config_has_mig_fields_only_for_mig_units_and_round_trips():
    fake = host()
    config = read_gpus_as_config(fake)
    assert config[0] == {"index": 0, "uuid": "GPU-0000", "name": A100, "memory": 40 * GiB}
    assert config[2] == {
        "index": 2,
        "uuid": MIG_A.uuid,
        "name": A100,
        "memory": 4864 * MiB,
        "mig_profile": "1g.5gb",
        "parent_uuid": "GPU-2222",
        "mig_index": 0,
    }
    assert parse_static_inventory(config) == read_gpus(fake)


def test_a_driver_reporting_one_uuid_twice_is_refused():
    fake = FakeNVML([Dev("GPU-0000", A100, 40 * GiB), Dev("GPU-0000", A100, 40 * GiB)])
    with pytest.raises(InventoryError, match="share uuid"):
        discover(fake)
    assert fake.shutdowns == 1


@pytest.mark.parametrize("raw, version", [(12040, "12.4"), (11080, "11.8"), (12080, "12.8"), (13000, "13.0")])
def test_cuda_version(raw, version):
    assert discover(FakeNVML(cuda=raw)).cuda_version == version


def test_cuda_version_unknown_is_empty_not_fatal():
    fake = FakeNVML(host().devices, fail="nvmlSystemGetCudaDriverVersion")
    inventory = discover(fake)
    assert inventory.cuda_version == "" and len(inventory.units) == 6


def test_no_driver_is_a_clear_error_and_auto_gives_an_empty_inventory():
    fake = FakeNVML(fail_init=FakeNVML.NVML_ERROR_DRIVER_NOT_LOADED)
    for read in (discover, read_gpus, read_gpus_as_config, read_usage):
        with pytest.raises(NVMLUnavailable, match="NVML did not initialise: Driver Not Loaded"):
            read(fake)
    assert discover_auto(fake) == Inventory(source="none", note="NVML did not initialise: Driver Not Loaded")
    assert fake.shutdowns == 0  # nothing to shut down after a failed init
    assert discover_auto(host()).source == "nvml"


_PART_WAY = [
    "nvmlDeviceGetCount",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMigMode",  # an error other than NOT_SUPPORTED: not taken for "no MIG"
    "nvmlDeviceGetMigDeviceHandleByIndex",  # an error other than NOT_FOUND: not an empty slot
]


@pytest.mark.parametrize(
    "read, broken",
    [(discover, name) for name in [*_PART_WAY, "nvmlSystemGetDriverVersion"]]
    + [
        (read_usage, name)
        for name in [*_PART_WAY, "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetComputeRunningProcesses"]
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_errors_part_way_propagate_after_shutdown(read, broken):
    fake = FakeNVML(host().devices, fail=broken)
    with pytest.raises(FakeNVML.NVMLError, match="GPU is lost"):
        read(fake)
    assert (fake.inits, fake.shutdowns) == (1, 1)


def test_a_failing_shutdown_does_not_hide_the_error():
    fake = FakeNVML(host().devices, fail="nvmlDeviceGetUUID")

    def shutdown():
        raise FakeNVML.NVMLError(FakeNVML.NVML_ERROR_GPU_IS_LOST + 1)

    fake.nvmlShutdown = shutdown
    with pytest.raises(FakeNVML.NVMLError, match="GPU is lost"):
        discover(fake)


def test_read_usage_per_unit():
    fake = host()
    usage = read_usage(fake)
    assert list(usage) == [g.uuid for g in read_gpus(fake)]
    assert usage["GPU-0000"] == UnitUsage(
        utilization_gpu=37,
        memory_used=3 * GiB,
        memory_total=40 * GiB,
        temperature=51,
        processes=(1001, 1002),
        process_memory={1001: GiB, 1002: GiB},
    )
    # A MIG instance: no utilisation from NVML; its GPU's temperature; its own processes and their memory.
    assert usage[MIG_A.uuid] == UnitUsage(
        utilization_gpu=None,
        memory_used=GiB,
        memory_total=4864 * MiB,
        temperature=63,
        processes=(4242,),
        process_memory={4242: GiB},
    )
    assert usage[MIG_B.uuid].processes == ()
    # Processes NVML cannot list are unknown (None), not "none running".
    assert usage["GPU-3333"].processes is None and usage["GPU-3333"].process_memory is None
    assert (fake.inits, fake.shutdowns) == (2, 2)


def test_read_usage_per_process_keeps_each_pids_highest_recent_share():
    now_us = int(time.time() * 1_000_000)
    fake = FakeNVML(
        [
            Dev(
                "GPU-0000",
                A100,
                40 * GiB,
                utilization=80,
                pids=(1001, 1002),
                samples=[
                    (1001, 10, now_us - 2_000_000),
                    (1001, 70, now_us - 1_000_000),
                    (1002, 90, now_us - 60_000_000),
                ],
            ),  # 1002's only sample is a minute old
            Dev("GPU-1111", A100, 40 * GiB, pids=(), samples=[]),
            mig_gpu(Dev("MIG-4", A100 + " MIG 1g.5gb", GiB, slices=1, utilization=None, samples=None, pids=(7,))),
        ]
    )
    usage = read_usage(fake, per_process=True, window=10)
    assert usage["GPU-0000"].process_utilization == {1001: 70}
    assert usage["GPU-1111"].process_utilization == {}  # NOT_FOUND: nothing ran
    assert usage["MIG-4"].process_utilization is None  # NOT_SUPPORTED: unknown
    assert read_usage(fake)["GPU-0000"].process_utilization is None  # not asked


def test_read_usage_gives_each_processs_memory_and_leaves_out_what_nvml_cannot_say():
    fake = FakeNVML([Dev("GPU-0000", A100, 40 * GiB, pids=(1001, 1002, 1003), pid_memory={1001: 5 * GiB, 1002: None})])
    assert read_usage(fake)["GPU-0000"].process_memory == {1001: 5 * GiB, 1003: GiB}  # 1002: unknown, not 0


def test_names_exist_in_pynvml():
    """Every NVML name the code touches exists in the real module, with the same arity.

    The stand-in records what is called, so a misspelt function fails here, without a GPU.
    """
    fake = host()
    fake.devices.append(mig_gpu(Dev("MIG-4", A100, GiB, slices=1), uuid="GPU-4444"))
    discover(fake)
    read_usage(fake, per_process=True)
    discover_auto(FakeNVML(fail_init=FakeNVML.NVML_ERROR_DRIVER_NOT_LOADED))
    missing = sorted(name for name in fake.called if not hasattr(pynvml, name))
    assert not missing, f"not in pynvml: {missing}"
    assert {"nvmlDeviceGetMigMode", "nvmlDeviceGetAttributes", "nvmlDeviceGetComputeRunningProcesses"} <= fake.called
    # The stand-in's own names too, and they take what pynvml's take.
    for name in dir(FakeNVML):
        if not name.startswith(("nvml", "NVML")):
            continue
        assert hasattr(pynvml, name), name
        if name.startswith("nvml"):
            real = inspect.signature(getattr(pynvml, name)).parameters.values()
            required = [p for p in real if p.default is inspect.Parameter.empty]
            assert len(required) == len(inspect.signature(getattr(fake, name)).parameters), name
        elif isinstance(getattr(FakeNVML, name), int):
            assert getattr(pynvml, name) == getattr(FakeNVML, name), name


# --- The real driver -------------------------------------------------------------


def _nvml_answers() -> bool:
    return discover_auto().source == "nvml"


@pytest.mark.gpu
@pytest.mark.skipif(not _nvml_answers(), reason="no NVIDIA driver answers NVML on this machine")
def test_real_driver_inventory_and_usage():
    inventory = discover()
    assert inventory.units, "NVML initialised but reported no GPU"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", inventory.driver_version), inventory.driver_version
    major, _, _ = inventory.cuda_version.partition(".")
    assert re.fullmatch(r"\d+\.\d", inventory.cuda_version) and int(major) >= 11, inventory.cuda_version
    for unit in inventory.units:
        assert unit.name and unit.memory > 0, unit
        if unit.is_mig:
            assert unit.uuid.startswith("MIG-") and unit.parent_uuid.startswith("GPU-"), unit
            assert re.fullmatch(r"(\d+c\.)?\d+g\.\d+gb\S*", unit.mig_profile), unit
        else:
            assert unit.uuid.startswith("GPU-"), unit
    # Asked of NVML directly: a GPU in MIG mode is not among the whole units.
    whole = {unit.uuid for unit in inventory.units if not unit.is_mig}
    pynvml.nvmlInit()
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                mig_on = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError_NotSupported:
                mig_on = False
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            assert (uuid in whole) != mig_on, (index, uuid, mig_on)
    finally:
        pynvml.nvmlShutdown()

    usage = read_usage()
    assert set(usage) == {unit.uuid for unit in inventory.units}
    for unit in inventory.units:
        u = usage[unit.uuid]
        assert 0 < u.memory_total and 0 <= u.memory_used <= u.memory_total, (unit, u)
        assert u.utilization_gpu is None or 0 <= u.utilization_gpu <= 100, (unit, u)
        assert u.processes is None or all(pid > 0 for pid in u.processes), (unit, u)
