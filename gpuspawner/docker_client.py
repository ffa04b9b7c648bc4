"""A Docker client made on first use, and dropped after a failure so that the next use makes a new one.

For the long-lived readers of the engine (the dashboard, the GPU culler, the image
puller): an engine that restarted, or was not up yet when they started, is
reached again on the next call instead of through a client that no longer works.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Client = TypeVar("Client")


class LazyClient(Generic[Client]):
    """The client ``make()`` returns, made on the first ``use()`` and kept while it works.

    An exception that leaves ``use()`` drops the client (and goes on up): the next
    ``use()`` makes a new one. Exceptions handled inside the block keep it. Safe to
    use from several threads: they share one client.
    """

    def __init__(self, make: Callable[[], Client], lock: threading.Lock | None = None):
        self._make = make
        self._client: Client | None = None
        self._lock = lock or threading.Lock()  # an owner's own lock, to order its work around the client

    def get(self) -> Client:
        """The current client, made now if there is none."""
        with self._lock:
            if self._client is None:
                self._client = self._make()
            return self._client

    def drop(self, client: Client | None = None) -> None:
        """Forget the client (only if it is still ``client``, when given): the next use makes a new one."""
        with self._lock:
            if client is None or self._client is client:
                self._client = None

    @contextmanager
    def use(self) -> Iterator[Client]:
        """``with clients.use() as client: ...``: the client, dropped if the block fails."""
        client = self.get()
        try:
            yield client
        except Exception:
            self.drop(client)  # not one made since by another thread
            raise


__all__ = ["LazyClient"]
