"""What each gpuspawner service (dashboard, culler, SSH gateway) does as a process the hub manages.

- It stops when the hub asks: SIGINT, then SIGTERM 30 s later. Both are answered, even where
  SIGINT was inherited as ignored (a hub started as a shell's background job).
- It stops when the hub is gone. A hub killed outright (SIGKILL, the kernel's OOM killer)
  leaves its managed services running; the restarted hub then starts them again, and the new
  ones cannot take their ports, while the old ones go on with a token the hub no longer knows.
  The service watches its parent, and stops once it is no longer the process that started it.
- It exits at once when done, without the interpreter's teardown, which the hub's shutdown
  would wait for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

#: How often a service looks whether the hub that started it still runs (seconds).
PARENT_CHECK_INTERVAL = 2.0


def stop_with_the_hub(
    loop: asyncio.AbstractEventLoop,
    stop: Callable[[], None],
    log: logging.Logger | logging.LoggerAdapter,
    interval: float = PARENT_CHECK_INTERVAL,
) -> None:
    """Call ``stop`` on ``loop`` when the hub asks (SIGINT, SIGTERM) or when the hub is gone."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    parent = os.getppid()
    if parent <= 1:
        return  # started by init or a container's entry point: nothing to outlive

    def look() -> None:
        if os.getppid() != parent:
            log.warning("The hub that started this service (pid %d) is gone: stopping", parent)
            stop()
        else:
            loop.call_later(interval, look)

    loop.call_later(interval, look)


def exit_at_once(status: int = 0) -> None:
    """End the process now, without the interpreter's teardown (a full garbage collection of every
    module, joining idle threads: a second or more on a busy host), which the hub's shutdown waits
    for. Each service has written what it keeps by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
