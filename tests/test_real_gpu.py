"""Tests on a real NVIDIA GPU, marked ``gpu``: skipped where no driver answers NVML (or PyTorch is missing).

This module imports only what a GPU machine with nvidia-ml-py, PyTorch and pytest has: the NVML seam
and the culler's rules, never the spawner, JupyterHub or Docker (``gpuspawner`` imports them lazily).
Run it there with ``python -m pytest -m gpu tests/test_real_gpu.py tests/test_nvml.py``.
"""

from __future__ import annotations

import pytest

from gpuspawner.culler.policy import unit_in_use

ME = "a" * 64  # a container id that holds no process here


def _real_gpu_with_torch() -> bool:
    import importlib.util

    from gpuspawner.gpus.nvml import discover_auto

    return discover_auto().source == "nvml" and importlib.util.find_spec("torch") is not None


LOAD = """
import sys, time, torch
x = torch.randn(4096, 4096, device="cuda")
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    y = x @ x
    torch.cuda.synchronize()
"""


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu_with_torch(), reason="needs an NVIDIA driver that answers NVML, and PyTorch")
def test_real_gpu_a_busy_process_is_use_and_an_idle_context_is_not(tmp_path):
    """The culler's own reading of a real GPU: a process running matmuls is in use (through NVML's
    utilisation and its per-process figures), the same process idle with its CUDA context is not."""
    import subprocess
    import sys as _sys
    import time as _time

    from gpuspawner.culler.usage import NVMLUsage

    script = tmp_path / "load.py"
    script.write_text(LOAD + "\ntime.sleep(float(sys.argv[2]))\n")  # then idle, context still held
    child = subprocess.Popen([_sys.executable, str(script), "12", "60"], stdout=subprocess.PIPE, text=True)

    def reading_of_child(in_use: bool, timeout: float):
        """The child's unit once NVML's reading of it says ``in_use`` (its samples lag the load)."""
        deadline = _time.monotonic() + timeout
        while True:
            assert child.poll() is None, "the load process ended early"
            found = [(u, r) for u, r in source.read().items() if r.processes and child.pid in r.processes]
            if found and unit_in_use(found[0][1], "", busy_threshold=5) is in_use:
                return found[0]
            assert _time.monotonic() < deadline, f"no {'busy' if in_use else 'idle'} reading in {timeout} s: {found}"
            _time.sleep(0.5)

    try:
        assert child.stdout.readline().strip() == "ready"
        source = NVMLUsage()
        unit, reading = reading_of_child(in_use=True, timeout=30)
        print("busy:", unit, reading)
        assert reading.processes[child.pid] == ""  # a host process: no container
        assert reading.utilization is None or reading.utilization >= 50
        if reading.process_utilization is not None:
            assert reading.process_utilization.get(child.pid, 0) >= 5
        assert unit_in_use(reading, "", busy_threshold=5)
        assert not unit_in_use(reading, ME, busy_threshold=5)  # not a container's use
        # The load ends after 12 s and the 10 s per-process window passes; the context stays.
        idle_unit, idle = reading_of_child(in_use=False, timeout=45)
        print("idle:", idle_unit, idle)
        assert idle_unit == unit and child.pid in (idle.processes or {})
        assert not unit_in_use(idle, "", busy_threshold=5)
    finally:
        child.kill()
        child.wait()


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu_with_torch(), reason="needs an NVIDIA driver that answers NVML, and PyTorch")
def test_real_gpu_a_servers_own_utilisation_and_peak_memory_as_its_usage_record_keeps_them(tmp_path):
    """The culler's figures for a usage record on a real GPU: a process placed in a container (its
    cgroup, as Docker writes it) runs matmuls holding about 1 GiB; its container's sample has a
    utilisation above 0 and at least that memory, and another container's sample is 0 and 0."""
    import subprocess
    import sys as _sys
    import time as _time
    from datetime import datetime, timedelta, timezone

    from gpuspawner.culler.figures import FigureBook, OpenRecord, sample
    from gpuspawner.culler.usage import NVMLUsage

    script = tmp_path / "load.py"
    script.write_text(LOAD.replace("4096, 4096", "16384, 16384") + "\ntime.sleep(float(sys.argv[2]))\n")  # 1 GiB
    child = subprocess.Popen([_sys.executable, str(script), "20", "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        proc = tmp_path / "proc" / str(child.pid)
        proc.mkdir(parents=True)
        (proc / "cgroup").write_text(f"0::/docker/{ME}\n")  # the child, as if in the server's container
        source = NVMLUsage(proc=str(tmp_path / "proc"))
        book, started = FigureBook(interval=2), datetime.now(timezone.utc)
        record = OpenRecord(1, "ann/", started)
        deadline, figures = _time.monotonic() + 30, {}
        while _time.monotonic() < deadline:
            readings = source.read()
            units = [u for u, r in readings.items() if r.processes and child.pid in r.processes]
            assert units, f"NVML lists no unit with the load process {child.pid}: {readings}"
            taken = sample(ME, units, readings)
            print("sample:", units, taken)
            other = sample("b" * 64, units, readings)  # a container with no process here: 0, not unknown
            assert other.memory == 0 and other.utilisation in (0, None), other
            figures = book.round(datetime.now(timezone.utc) + timedelta(seconds=1), {"ann/": record}, {"ann/": taken})
            if taken.utilisation and taken.utilisation >= 5 and taken.memory and taken.memory >= 2**30:
                break
            _time.sleep(1)
        assert taken.memory is not None and taken.memory >= 2**30, taken
        if taken.utilisation is not None:  # None on a MIG instance
            assert taken.utilisation >= 5, taken
        print("kept on the record:", figures)
    finally:
        child.kill()
        child.wait()
