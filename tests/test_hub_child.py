"""A service stops when the hub that started it is killed outright, and when the hub asks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from .realhub import wait_for

# The service: stop_with_the_hub on its loop, a line when it stops.
SERVICE = textwrap.dedent(
    """
    import asyncio, logging
    from gpuspawner.hub_child import stop_with_the_hub

    async def main():
        stopped = asyncio.Event()
        stop_with_the_hub(asyncio.get_running_loop(), stopped.set, logging.getLogger(), interval=0.1)
        print("serving", flush=True)
        await stopped.wait()
        print("stopped", flush=True)

    asyncio.run(main())
    """
)
# The hub: starts the service, says its pid, and waits to be killed.
HUB = textwrap.dedent(
    """
    import subprocess, sys, time
    service = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=open(sys.argv[2], "w"))
    print(service.pid, flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"  # a zombie has ended (init reaps it)


def test_a_service_stops_when_its_hub_is_killed(tmp_path):
    out = tmp_path / "service.out"
    hub = subprocess.Popen([sys.executable, "-c", HUB, SERVICE, str(out)], stdout=subprocess.PIPE, text=True)
    service = int(hub.stdout.readline())
    try:
        wait_for(lambda: "serving" in out.read_text(), 30, "the service serving")
        time.sleep(0.3)
        assert _alive(service)  # its hub still runs: it goes on
        hub.kill()  # SIGKILL: the hub cannot stop its services
        hub.wait()
        wait_for(lambda: not _alive(service), 10, "the service stopped after its hub", every=0.1)
        assert out.read_text().split() == ["serving", "stopped"]
    finally:
        if _alive(service):
            os.kill(service, signal.SIGKILL)


def test_a_service_stops_when_the_hub_asks(tmp_path):
    service = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True)
    assert service.stdout.readline().strip() == "serving"
    service.send_signal(signal.SIGINT)
    assert service.wait(timeout=10) == 0 and service.stdout.read().strip() == "stopped"
