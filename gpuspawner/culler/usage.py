"""What the culler reads: GPU usage (NVML, or a file a test or a simulation writes)
and which container each GPU process belongs to (from its cgroup).

NVML reports host process ids. A process belongs to a container when its
cgroup path names the container's id, as Docker writes it for both cgroup
drivers and both cgroup versions (``/docker/<id>``,
``/system.slice/docker-<id>.scope``, ``/<cgroup-parent>/<id>``). The culler
must therefore run in the host's pid namespace, as a hub-managed service on
the host does (a hub in a container needs ``pid: host``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from ..gpus.nvml import read_usage
from .policy import UnitReading

_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")


def container_of(pid: int, proc: str = "/proc") -> str:
    """The id of the container running host process ``pid``; '' for the host, a
    process that is gone, or one this reader cannot place."""
    try:
        with open(f"{proc}/{int(pid)}/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        path = line.split(":", 2)[-1].rstrip("/")
        for part in reversed(path.split("/")):
            match = _CONTAINER_ID.search("/" + part)
            if match:
                return match.group(1)
    return ""


def _readings(raw: Mapping[str, tuple], proc: str) -> dict[str, UnitReading]:
    """{unit: UnitReading} from {unit: (utilization, pids or None, {pid: %} or None, {pid: bytes} or None)}."""
    owners: dict[int, str] = {}
    readings = {}
    for unit, (utilization, pids, per_process, memory) in raw.items():
        processes = None
        if pids is not None:
            processes = {}
            for pid in pids:
                if pid not in owners:
                    owners[pid] = container_of(pid, proc)
                processes[pid] = owners[pid]
        readings[unit] = UnitReading(utilization, processes, per_process, memory)
    return readings


class NVMLUsage:
    """The GPUs' usage now, from NVML, with every process placed in its container."""

    def __init__(self, proc: str = "/proc", window: float = 10.0, nvml=None):
        self.proc = proc
        self.window = window
        self.nvml = nvml  # the pynvml module (None: imported at the first read), or a stand-in

    def read(self) -> dict[str, UnitReading]:
        usage = read_usage(self.nvml, per_process=True, window=self.window)
        return _readings(
            {u: (x.utilization_gpu, x.processes, x.process_utilization, x.process_memory) for u, x in usage.items()},
            self.proc,
        )


class FileUsage:
    """Usage written to a JSON file by a test or a simulation, in NVML's terms::

        {"GPU-...": {"utilization": 0, "processes": [4242], "process_utilization": {"4242": 35},
                     "process_memory": {"4242": 2147483648}}}

    Processes are host pids and are placed in containers as NVML's are. A unit the
    file leaves out, or a file that cannot be read, is unknown (never idle).
    """

    def __init__(self, path: str, proc: str = "/proc"):
        self.path = path
        self.proc = proc

    def read(self) -> dict[str, UnitReading]:
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        raw = {}
        for unit, entry in data.items():
            pids = entry.get("processes")
            per_process = entry.get("process_utilization")
            memory = entry.get("process_memory")
            raw[unit] = (
                entry.get("utilization"),
                None if pids is None else [int(p) for p in pids],
                None if per_process is None else {int(p): int(v) for p, v in per_process.items()},
                None if memory is None else {int(p): int(v) for p, v in memory.items()},
            )
        return _readings(raw, self.proc)
