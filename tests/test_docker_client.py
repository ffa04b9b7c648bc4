"""LazyClient: a Docker client made on first use, dropped after a failure."""

from __future__ import annotations

import threading

import pytest

from gpuspawner.docker_client import LazyClient


class Maker:
    """Makes numbered clients; ``fail`` makes the next ``make()`` raise."""

    def __init__(self):
        self.made = 0
        self.fail = False

    def __call__(self):
        if self.fail:
            self.fail = False
            raise ConnectionError("no engine")
        self.made += 1
        return f"client-{self.made}"


def test_made_on_first_use_and_kept_while_it_works():
    make = Maker()
    clients = LazyClient(make)
    assert make.made == 0  # nothing made until used
    with clients.use() as first:
        pass
    with clients.use() as second:
        pass
    assert first == second == "client-1" and make.made == 1


def test_dropped_after_a_failure_and_made_anew():
    make = Maker()
    clients = LazyClient(make)
    with pytest.raises(OSError, match="engine restarted"):
        with clients.use():
            raise OSError("engine restarted")
    with clients.use() as client:
        assert client == "client-2"


def test_a_failure_handled_inside_keeps_the_client():
    make = Maker()
    clients = LazyClient(make)
    with clients.use() as client:
        try:
            raise KeyError("not found: an answer, not a failure")
        except KeyError:
            pass
    assert clients.get() == client == "client-1" and make.made == 1


def test_a_failed_make_is_tried_again_next_time():
    make = Maker()
    make.fail = True
    clients = LazyClient(make)
    with pytest.raises(ConnectionError):
        clients.get()
    assert clients.get() == "client-1"


def test_an_old_failure_does_not_drop_a_newer_client():
    make = Maker()
    clients = LazyClient(make)
    old = clients.get()
    clients.drop()
    new = clients.get()
    clients.drop(old)  # a thread that failed with the old client
    assert clients.get() is new == "client-2"


def test_threads_share_one_client():
    make = Maker()
    clients = LazyClient(make)
    seen, start = [], threading.Barrier(8)

    def use():
        start.wait()
        with clients.use() as client:
            seen.append(client)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["client-1"] * 8 and make.made == 1
