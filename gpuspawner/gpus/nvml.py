"""Reading the host's GPUs, MIG instances and their use through NVML (``nvidia-ml-py``).

The one seam to the driver: everything above takes the ``GPU`` and ``Inventory``
values built here. Every function takes ``nvml``, the ``pynvml`` module by
default, so tests pass a stand-in with the same functions and no GPU is needed.

A GPU in MIG mode is listed only as its MIG instances, never whole: CUDA cannot
use a MIG-mode GPU as a whole, and handing it out whole as well as by instance
would give one GPU's memory to two students.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .inventory import GPU, Inventory, check_inventory, sort_units

# The ``pynvml`` module or a stand-in with the same names (tests).
NVML = Any

_GIB = 1024**3

# A MIG device's name is its GPU's name, " MIG " and its profile, e.g.
# "NVIDIA A100-SXM4-40GB MIG 1g.5gb"; a compute instance smaller than its GPU
# instance reads "1c.3g.20gb", and newer drivers add suffixes ("+me", "+gfx", "-me").
_PROFILE_IN_NAME = re.compile(r"\sMIG\s+((?:\d+c\.)?\d+g\.\d+gb\S*)\s*$")


class NVMLUnavailable(RuntimeError):
    """No NVIDIA driver answered (no GPU, no driver, or no libnvidia-ml)."""


@dataclass(frozen=True)
class UnitUsage:
    """What one unit (whole GPU or MIG instance) is doing now.

    ``None`` means NVML cannot say, never "zero": a culler must not take an
    unreadable unit for an idle one.
    """

    utilization_gpu: int | None  # % of the last sample period a kernel ran; None on MIG instances
    memory_used: int  # bytes
    memory_total: int  # bytes
    temperature: int | None  # degrees C of the physical GPU (a MIG instance: its GPU's)
    processes: tuple[int, ...] | None  # host pids (not container pids) with a CUDA context on the unit
    # % of time each pid's kernels ran, over the last few seconds (read_usage(per_process=True));
    # a pid that ran none is left out; None where NVML does not say (MIG instances, or not asked)
    process_utilization: dict[int, int] | None = None
    # GPU memory each pid uses on the unit, bytes; a pid whose NVML cannot say is left out; None with processes
    process_memory: dict[int, int] | None = None


def _load(nvml: NVML | None) -> NVML:
    if nvml is None:
        import pynvml as nvml
    return nvml


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes for strings; newer ones return str.
    return value.decode() if isinstance(value, bytes) else value


def _code(error: BaseException) -> int | None:
    # Compare NVML errors by code, not class: pynvml builds its subclasses at
    # import time, and a stand-in need not have them all.
    return getattr(error, "value", None)


@contextlib.contextmanager
def _session(nvml: NVML) -> Iterator[None]:
    """nvmlInit ... nvmlShutdown, with shutdown also on errors part-way."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise NVMLUnavailable(f"NVML did not initialise: {e}") from None
    try:
        yield
    finally:
        # A failing shutdown must not hide the error that is already on its way out.
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _mig_enabled(nvml: NVML, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError as e:
        # GPUs without MIG say NOT_SUPPORTED; drivers from before MIG lack the function.
        if _code(e) in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
            return False
        raise
    # The current mode is what CUDA sees now; a pending change waits for a GPU reset.
    return current == nvml.NVML_DEVICE_MIG_ENABLE


def _mig_profile(nvml: NVML, mig: Any, memory: int) -> str:
    """The instance's profile, e.g. "1g.5gb": from its name, else from its slices and memory.

    The fallback is approximate: NVIDIA names profiles by rounded-up memory
    (1g.5gb has 4.75 GiB), so this rounds up to whole GiB; it never returns "",
    which would make the instance look like a whole GPU.
    """
    match = _PROFILE_IN_NAME.search(_text(nvml.nvmlDeviceGetName(mig)))
    if match:
        return match.group(1)
    slices = nvml.nvmlDeviceGetAttributes(mig).gpuInstanceSliceCount
    return f"{slices}g.{math.ceil(memory / _GIB)}gb"


def _walk(nvml: NVML) -> Iterator[tuple[GPU, Any, Any]]:
    """Each unit with its NVML handle and its physical GPU's handle; inside a session."""
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        if not _mig_enabled(nvml, handle):
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            yield GPU(index=index, uuid=uuid, name=name, memory=memory), handle, handle
            continue
        # Only the instances: a MIG-mode GPU with none configured gives no unit at all.
        for mig_index in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig_index)
            except nvml.NVMLError as e:
                if _code(e) == nvml.NVML_ERROR_NOT_FOUND:  # an empty slot
                    continue
                raise
            memory = int(nvml.nvmlDeviceGetMemoryInfo(mig).total)
            unit = GPU(
                index=index,
                # "MIG-<uuid>", or "MIG-GPU-<uuid>/<gi>/<ci>" from older drivers:
                # kept as given, since that is the form the container toolkit accepts.
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                name=name,
                memory=memory,
                mig_profile=_mig_profile(nvml, mig, memory),
                parent_uuid=uuid,
                mig_index=mig_index,
            )
            yield unit, mig, handle


def _cuda_version(nvml: NVML) -> str:
    """The highest CUDA the driver supports, 12040 -> "12.4"; "" when it cannot say."""
    try:
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
    except nvml.NVMLError:
        # Only informational (image compatibility): not worth losing the GPUs over.
        return ""
    return f"{version // 1000}.{version % 1000 // 10}"


def discover(nvml: NVML | None = None) -> Inventory:
    """All units of this host: whole GPUs, and MIG instances of GPUs in MIG mode.

    Raises ``NVMLUnavailable`` when no driver answers; other NVML errors (a GPU
    fallen off the bus) propagate, so a broken host is loud, not silently smaller.
    """
    nvml = _load(nvml)
    with _session(nvml):
        units = sort_units(unit for unit, _, _ in _walk(nvml))
        driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        cuda_version = _cuda_version(nvml)
    check_inventory(units)
    return Inventory(units=units, source="nvml", driver_version=driver_version, cuda_version=cuda_version)


def discover_auto(nvml: NVML | None = None) -> Inventory:
    """``discover()``, or an empty inventory (source "none") where no driver answers.

    For ``c.GPUSpawner.gpus = "auto"``: a hub without GPUs still serves CPU profiles.
    """
    try:
        return discover(nvml)
    except NVMLUnavailable as e:
        return Inventory(source="none", note=str(e))


def read_gpus(nvml: NVML | None = None) -> tuple[GPU, ...]:
    """The host's units (see ``discover``); raises ``NVMLUnavailable``."""
    return discover(nvml).units


def read_gpus_as_config(nvml: NVML | None = None) -> list[dict]:
    """``read_gpus`` in the shape of ``c.GPUSpawner.gpus`` (MIG fields only for MIG instances)."""
    entries = []
    for unit in read_gpus(nvml):
        entry: dict = {"index": unit.index, "uuid": unit.uuid, "name": unit.name, "memory": unit.memory}
        if unit.is_mig:
            entry.update(mig_profile=unit.mig_profile, parent_uuid=unit.parent_uuid, mig_index=unit.mig_index)
        entries.append(entry)
    return entries


def _unless_unsupported(nvml: NVML, function, *args):
    """``function(*args)``, or None where NVML does not support it for this unit."""
    try:
        return function(*args)
    except nvml.NVMLError as e:
        if _code(e) == nvml.NVML_ERROR_NOT_SUPPORTED:
            return None
        raise


def _process_utilization(nvml: NVML, handle: Any, window: float) -> dict[int, int] | None:
    """{pid: the highest % of time its kernels ran} over the last ``window`` seconds."""
    since = int((time.time() - window) * 1_000_000)  # NVML's sample clock: microseconds
    try:
        samples = nvml.nvmlDeviceGetProcessUtilization(handle, since)
    except nvml.NVMLError as e:
        if _code(e) == nvml.NVML_ERROR_NOT_FOUND:
            return {}  # no sample in the window: no process ran a kernel
        if _code(e) == nvml.NVML_ERROR_NOT_SUPPORTED:
            return None
        raise
    busy: dict[int, int] = {}
    for sample in samples:
        busy[int(sample.pid)] = max(busy.get(int(sample.pid), 0), int(sample.smUtil))
    return busy


def _process_memory(processes) -> dict[int, int]:
    """{pid: bytes of GPU memory it uses}; nvidia-ml-py gives None where the driver cannot say (some
    drivers, inside some containers, under WSL), and such a pid is left out: unknown, not 0."""
    return {int(p.pid): int(p.usedGpuMemory) for p in processes if getattr(p, "usedGpuMemory", None) is not None}


def read_usage(nvml: NVML | None = None, per_process: bool = False, window: float = 10.0) -> dict[str, UnitUsage]:
    """What each unit is doing now, keyed by its uuid; raises ``NVMLUnavailable``.

    NVML does not measure utilisation per MIG instance (NOT_SUPPORTED): it is None there.
    ``per_process`` also reads each process's share over the last ``window`` seconds.
    """
    nvml = _load(nvml)
    usage: dict[str, UnitUsage] = {}
    with _session(nvml):
        for unit, handle, gpu_handle in _walk(nvml):
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = _unless_unsupported(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
            temperature = _unless_unsupported(
                nvml, nvml.nvmlDeviceGetTemperature, gpu_handle, nvml.NVML_TEMPERATURE_GPU
            )
            processes = _unless_unsupported(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle)
            usage[unit.uuid] = UnitUsage(
                utilization_gpu=None if rates is None else int(rates.gpu),
                memory_used=int(memory.used),
                memory_total=int(memory.total),
                temperature=None if temperature is None else int(temperature),
                processes=None if processes is None else tuple(int(p.pid) for p in processes),
                process_utilization=_process_utilization(nvml, handle, window) if per_process else None,
                process_memory=None if processes is None else _process_memory(processes),
            )
    return usage
