"""DockerCalls: the bound on calls in flight, and each server's calls in order (fakes, no engine)."""

from __future__ import annotations

import asyncio
import threading
import time

import docker
import pytest

from gpuspawner import GPUSpawner
from gpuspawner.docker_pool import DEFAULT_THREADS, DockerCalls, size_connection_pool

from .fakes import FakeDocker, make_spawner


class SlowClient:
    """An APIClient stand-in whose calls sleep, recording who ran when and how many ran at once."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.running: dict[str, int] = {}  # server -> its calls in flight now
        self.overlaps: list[str] = []  # servers that had two calls in flight at once
        self.order: dict[str, list[int]] = {}  # server -> call numbers, in the order they ran
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a call has begun in a pool thread

    def inspect(self, server: str, n: int, seconds: float | None = None) -> tuple[str, int]:
        self.entered.set()
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.running[server] = self.running.get(server, 0) + 1
            if self.running[server] > 1:
                self.overlaps.append(server)
            self.order.setdefault(server, []).append(n)
        try:
            time.sleep(self.seconds if seconds is None else seconds)
            return server, n
        finally:
            with self.lock:
                self.in_flight -= 1
                self.running[server] -= 1

    def blocked(self, server: str) -> str:
        """A call that waits until the test opens the gate: a 10 GB pull, say."""
        self.entered.set()
        self.gate.wait(10)
        return server


async def running(client: SlowClient) -> None:
    """Wait (without blocking the loop) until a call of ``client`` has begun in a pool thread."""
    assert await asyncio.to_thread(client.entered.wait, 5), "no call began"


@pytest.fixture
def pool():
    p = DockerCalls(3)
    yield p
    p.close()


async def test_at_most_the_bound_in_flight_and_each_servers_calls_in_order(pool):
    client = SlowClient()
    servers = {f"s{i}": asyncio.Lock() for i in range(6)}
    calls = [pool.call(lock, client, "inspect", name, n) for n in range(4) for name, lock in servers.items()]
    results = await asyncio.gather(*calls)
    assert len(results) == 24
    assert client.most_in_flight == 3  # the bound is reached and never passed
    assert client.overlaps == []  # one server's calls never overlap
    assert all(order == [0, 1, 2, 3] for order in client.order.values()), client.order


async def test_one_servers_slow_call_holds_up_no_other_server(pool):
    client = SlowClient()
    client.gate.clear()
    slow_lock = asyncio.Lock()
    slow = asyncio.ensure_future(pool.call(slow_lock, client, "blocked", "puller"))
    await running(client)
    others = [pool.call(asyncio.Lock(), client, "inspect", f"s{i}", 0, 0.01) for i in range(10)]
    done = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert len(done) == 10 and not slow.done()
    # ...while the slow server's own next call waits for it.
    after = asyncio.ensure_future(pool.call(slow_lock, client, "inspect", "puller", 1, 0))
    # A call another server makes later, on the same pool, runs and ends: "after" had its chance.
    assert await asyncio.wait_for(pool.call(asyncio.Lock(), client, "inspect", "later", 0, 0), 5) == ("later", 0)
    assert not after.done()
    client.gate.set()
    assert await slow == "puller" and await after == ("puller", 1)


async def test_a_cancelled_call_keeps_its_servers_order(pool):
    """A hub that gives up waiting must not let the server's next call overlap the running one."""
    client = SlowClient(seconds=0.3)
    lock = asyncio.Lock()
    first = asyncio.ensure_future(pool.call(lock, client, "inspect", "s", 0))
    await running(client)
    first.cancel()
    second = await pool.call(lock, client, "inspect", "s", 1, 0)
    assert second == ("s", 1)
    assert client.overlaps == [] and client.order["s"] == [0, 1]


async def test_errors_reach_the_caller_and_release_the_order(pool):
    lock = asyncio.Lock()
    with pytest.raises(AttributeError):
        await pool.call(lock, SlowClient(), "no_such_method")
    assert not lock.locked()
    assert await pool.call(lock, SlowClient(), "inspect", "s", 0, 0) == ("s", 0)


def test_the_connection_pool_fits_the_threads():
    client = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    adapter = client.get_adapter(client.base_url)
    assert adapter.max_pool_size == 10  # docker-py's default
    size_connection_pool(client, 32)
    assert adapter.max_pool_size == 32
    size_connection_pool(client, 4)  # never shrunk
    assert adapter.max_pool_size == 32
    tcp = docker.APIClient(base_url="tcp://127.0.0.1:1", version="1.41")
    size_connection_pool(tcp, 16)
    assert tcp.get_adapter(tcp.base_url)._pool_maxsize == 16
    size_connection_pool(FakeDocker(), 16)  # no adapters: left alone


def test_at_least_one_thread():
    with pytest.raises(ValueError):
        DockerCalls(0)


async def test_spawners_share_one_pool_sized_by_config():
    fake = FakeDocker()
    a = make_spawner(GPUSpawner, fake, user="alice", docker_threads=5, denials_file="")
    b = make_spawner(GPUSpawner, fake, user="bob", docker_threads=5, denials_file="")
    assert a.docker_threads == 5 and GPUSpawner.docker_threads.default_value == DEFAULT_THREADS
    inspected = await a.docker("inspect_image", "lab:1")
    assert inspected["Config"]["User"] == "jovyan"
    await b.docker("inspect_image", "lab:1")
    assert a.shared.docker_calls is b.shared.docker_calls and a.shared.docker_calls.threads == 5
    assert a._docker_order is not b._docker_order  # each server its own order
