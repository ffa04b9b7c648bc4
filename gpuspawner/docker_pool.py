"""Docker calls of all servers on a bounded pool of threads, each server's in order.

DockerSpawner sends every Docker call of every user through one class-level
``ThreadPoolExecutor(1)``: at 9:00, when a class presses "Start" together, each
student's create, start and inspect waits behind everyone else's, and behind
any slow call (a pull under ``pull_policy="always"``, a ``stop`` that waits for
a server to exit). ``DockerCalls`` runs them on ``threads`` threads instead:

- at most ``threads`` calls are in flight at once, so the engine is not flooded
  (dockerd serialises much of create and start internally anyway; more
  threads than that only queue there, holding connections and memory);
- the calls of one server (one ``order``) never overlap and run in the order
  they were made, as they did on the single thread: an ``inspect`` never
  overtakes the ``create`` before it, a ``remove`` never races a ``stop``.

The seam is docker-py's ``APIClient`` (any object with its methods): the
unit tests pass a fake, the spawner DockerSpawner's shared client.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import requests.adapters

#: The default bound: enough that a class's creates and starts do not queue
#: behind each other or behind a slow call, few enough that a small host's
#: dockerd is not asked for dozens of container starts at once.
DEFAULT_THREADS = 8


def size_connection_pool(client, connections: int) -> None:
    """Let ``client`` keep ``connections`` open connections to the engine.

    docker-py keeps 10 per engine (``DEFAULT_MAX_POOL_SIZE``); with more threads
    than that, urllib3 opens extra connections and drops them afterwards, with a
    "Connection pool is full" warning each time. A client without docker-py's
    adapters (a test's fake) is left alone.
    """
    get_adapter = getattr(client, "get_adapter", None)
    base_url = getattr(client, "base_url", None)
    if get_adapter is None or not base_url:
        return
    adapter = get_adapter(base_url)
    if hasattr(adapter, "max_pool_size"):  # docker-py's unix, npipe and ssh adapters
        if adapter.max_pool_size < connections:
            adapter.max_pool_size = connections  # read when a connection pool is made
            adapter.pools.clear()
    elif isinstance(adapter, requests.adapters.HTTPAdapter):  # tcp, tls
        if adapter._pool_maxsize < connections:
            adapter.init_poolmanager(adapter._pool_connections, connections, block=adapter._pool_block)


class DockerCalls:
    """A bounded pool of threads for Docker calls, shared by all servers of a hub."""

    def __init__(self, threads: int = DEFAULT_THREADS):
        if threads < 1:
            raise ValueError(f"DockerCalls needs at least one thread, got {threads}")
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="gpuspawner-docker")
        self._sized: set[int] = set()  # ids of the clients whose connection pool fits the threads
        self._sizing = threading.Lock()

    async def call(self, order: asyncio.Lock, client, method: str, *args, **kwargs):
        """``client.<method>(*args, **kwargs)`` on a pool thread, after the calls made before it under ``order``.

        ``order`` is one server's lock. It is released only when the call has
        really finished in its thread: a cancelled caller (a hub timing out a
        spawn) does not let that server's next call overlap this one.
        """
        if id(client) not in self._sized:
            with self._sizing:
                size_connection_pool(client, self.threads)
                self._sized.add(id(client))
        call = functools.partial(getattr(client, method), *args, **kwargs)
        loop = asyncio.get_running_loop()
        await order.acquire()
        try:
            running = self._executor.submit(call)
        except BaseException:
            order.release()
            raise
        running.add_done_callback(lambda _: _release_soon(loop, order))
        return await asyncio.wrap_future(running)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _release_soon(loop: asyncio.AbstractEventLoop, order: asyncio.Lock) -> None:
    """Release ``order`` on its loop (called from the pool thread that ran the call)."""
    try:
        loop.call_soon_threadsafe(order.release)
    except RuntimeError:  # the loop is closed: nobody is left waiting on the lock
        pass


__all__ = ["DEFAULT_THREADS", "DockerCalls", "size_connection_pool"]
