"""When a GPU server is stopped: the culling rules, with no I/O and no clock of their own.

The culler reads, at every round, what each server's GPU units are doing
(:class:`UnitReading`, by unit id) and whose processes are on them (already
mapped from host pids to container ids), and asks :meth:`IdleClocks.judge`
whether a server should stop, and why. Time is passed in, so every rule is
tested without waiting and without a GPU.

What counts as using a GPU (``busy_threshold`` is a percentage of time a
kernel ran, NVML's own measure):

- the server's own processes ran kernels at least ``busy_threshold`` % of the
  time, where NVML reports utilisation per process;
- else, the unit ran at least ``busy_threshold`` % and some of the server's own
  processes are on it, or no process is visible on it at all (a process the
  culler cannot see is given the benefit of the doubt);
- else, on a MIG instance (NVML measures no utilisation there): one of the
  server's own processes is on it.

A process of another container or of the host never counts as the server's
use, so it neither keeps a server alive nor makes it look busy. A unit that
cannot be read counts as busy: not knowing is never idleness.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..gpus.allocation import holder_key
from ..quantities import format_duration

GPU_IDLE = "gpu_idle"
MAX_RUNTIME = "max_runtime"
RESERVATION = "reservation"  # its units are reserved now for lab hours that do not serve it
BUDGET = "budget"  # its GPU-hour budget is spent (after the hub's budget_grace)


@dataclass(frozen=True)
class CullRules:
    """One server's rules, in seconds; 0 switches a rule off."""

    gpu_idle_timeout: float = 0.0
    max_runtime: float = 0.0
    jupyter_activity_grace: float = 0.0
    #: While someone waits in line for one of its units: stop after this long without GPU use (0: as always).
    gpu_idle_timeout_when_waiting: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.gpu_idle_timeout or self.max_runtime or self.gpu_idle_timeout_when_waiting)

    def idle_limit(self, wanted: bool) -> float:
        """How long its GPUs may stay idle (0: forever); ``wanted``: someone waits for one of its units."""
        sooner = self.gpu_idle_timeout_when_waiting if wanted else 0.0
        if sooner and self.gpu_idle_timeout:
            return min(sooner, self.gpu_idle_timeout)
        return sooner or self.gpu_idle_timeout

    def describe(self) -> str:
        """For the spawn page: 'Stops after 30 minutes without GPU use; runs 4 hours at most.'"""
        parts = []
        if self.gpu_idle_timeout:
            parts.append(f"Stops after {format_duration(self.gpu_idle_timeout)} without GPU use")
        if self.max_runtime:
            parts.append(f"{'runs' if parts else 'Runs'} {format_duration(self.max_runtime)} at most")
        return "; ".join(parts) + "." if parts else ""


@dataclass(frozen=True)
class UnitReading:
    """One unit now. ``processes`` maps each host pid with a CUDA context on it to
    its container id ('' for the host or an unknown container), and
    ``process_utilization`` each pid to its kernels' share of time in %, and
    ``process_memory`` each pid to the GPU memory it uses (bytes; a pid left out: NVML
    cannot say), where NVML reports them. None: NVML could not say."""

    utilization: int | None
    processes: Mapping[int, str] | None
    process_utilization: Mapping[int, int] | None = None
    process_memory: Mapping[int, int] | None = None


@dataclass(frozen=True)
class GPUServer:
    """A running server that holds GPU units."""

    user: str
    server: str  # '' for the default server
    container: str  # its container id
    units: tuple[str, ...]
    rules: CullRules
    started: datetime | None  # when the hub started it
    profile: str = ""
    groups: frozenset[str] = frozenset()  # its user's groups when it started (lab hours serve groups)

    @property
    def key(self) -> str:
        return holder_key(self.user, self.server)


@dataclass(frozen=True)
class Verdict:
    stop: bool
    reason: str = ""  # GPU_IDLE or MAX_RUNTIME when stopping
    message: str = ""  # what the student is told
    idle_for: float | None = None  # seconds the GPUs have been idle; None: in use or unknown


KEEP = Verdict(False)


def unit_in_use(reading: UnitReading | None, container: str, busy_threshold: int) -> bool:
    """Is ``container`` using this unit, as far as the reading shows?"""
    if reading is None:
        return True  # unreadable: never taken for idle
    own = [pid for pid, owner in (reading.processes or {}).items() if owner == container]
    per_process = reading.process_utilization
    if own and per_process is not None:  # a pid with no sample ran no kernel
        return sum(per_process.get(pid, 0) for pid in own) >= busy_threshold
    if reading.utilization is not None:
        nobody_visible = reading.processes is None or not reading.processes
        return reading.utilization >= busy_threshold and (bool(own) or nobody_visible)
    if reading.processes is None:
        return True  # neither utilisation nor processes: unknown
    return bool(own)


@dataclass
class IdleClocks:
    """Since when each server's GPUs have been idle, across rounds of the culler.

    A clock starts at the first round that finds a server idle, so a culler that
    restarts only ever waits longer, never stops a server early.
    """

    busy_threshold: int = 5
    idle_since: dict[str, datetime] = field(default_factory=dict)

    def judge(
        self,
        server: GPUServer,
        readings: Mapping[str, UnitReading | None],
        now: datetime,
        last_activity: datetime | None = None,
        wanted: bool = False,
    ) -> Verdict:
        """Should ``server`` stop now? Updates its idle clock. ``wanted``: someone waits in line for one of
        its units (``gpu_idle_timeout_when_waiting`` applies)."""
        rules = server.rules
        idle = not any(unit_in_use(readings.get(u), server.container, self.busy_threshold) for u in server.units)
        key = f"{server.key}@{server.container}"
        if idle:
            since = self.idle_since.setdefault(key, now)
            idle_for = (now - since).total_seconds()
        else:
            self.idle_since.pop(key, None)
            idle_for = None

        if rules.max_runtime and server.started is not None:
            ran = (now - server.started).total_seconds()
            if ran >= rules.max_runtime:
                limit = format_duration(rules.max_runtime)
                return Verdict(True, MAX_RUNTIME, f"stopped after {limit}, the time limit of GPU servers", idle_for)
        limit = rules.idle_limit(wanted)
        if limit and idle_for is not None and idle_for >= limit:
            if (
                rules.jupyter_activity_grace
                and last_activity is not None
                and (now - last_activity).total_seconds() < rules.jupyter_activity_grace
            ):
                return Verdict(False, idle_for=idle_for)  # active in Jupyter just now: spared
            message = f"stopped after {format_duration(limit)} without GPU use"
            if limit != rules.gpu_idle_timeout:
                message += ", while others waited in line for its GPU"
            return Verdict(True, GPU_IDLE, message, idle_for)
        return Verdict(False, idle_for=idle_for)

    def forget_others(self, running: Iterable[GPUServer]) -> None:
        """Drop the clocks of servers that are gone."""
        keep = {f"{s.key}@{s.container}" for s in running}
        for key in list(self.idle_since):
            if key not in keep:
                del self.idle_since[key]
