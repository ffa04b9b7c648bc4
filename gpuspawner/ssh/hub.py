"""The hub's REST API as the SSH gateway uses it, with its own token's three scopes
(``read:servers``, ``start:servers``, ``users:activity``) and, to check a password,
the user's own token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .policy import parse_events


class HubError(Exception):
    """The hub did not answer as expected; the message says what it said."""


class NotPending(HubError):
    """The progress of a server that is not starting (yet)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class HubAPI:
    def __init__(self, api_url: str, token: str, timeout: float = 30):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = AsyncHTTPClient(force_instance=True)

    def _url(self, path: str) -> str:
        return self.api_url + path

    async def _fetch(self, method: str, path: str, *, token: str = "", body: dict | None = None, **kwargs):
        request = HTTPRequest(
            self._url(path),
            method=method,
            headers={"Authorization": f"token {token or self.token}", "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else (b"" if method in ("POST", "PUT", "PATCH") else None),
            request_timeout=kwargs.pop("request_timeout", self.timeout),
            **kwargs,
        )
        return await self.http.fetch(request, raise_error=False)

    async def token_owner(self, token: str) -> dict | None:
        """The model of whoever owns ``token`` (its ``scopes`` included); None for no valid token."""
        if not token or len(token) > 512 or any(c.isspace() for c in token):
            return None
        response = await self._fetch("GET", "/user", token=token)
        if response.code in (401, 403):
            return None
        if response.code != 200:
            raise HubError(f"the hub answered {response.code} to GET /user")
        return json.loads(response.body)

    async def user(self, name: str) -> dict | None:
        """``name``'s model with their servers; None when the hub has no such user."""
        response = await self._fetch("GET", f"/users/{quote(name, safe='')}")
        if response.code == 404:
            return None
        if response.code != 200:
            raise HubError(f"the hub answered {response.code} to GET /users/{name}")
        return json.loads(response.body)

    async def start_server(self, name: str, profile: str = "") -> tuple[int, str]:
        """Ask for ``name``'s default server (with ``profile``); the hub's status and body.

        201: running; 202: starting; 400 "already running": so much the better; any other
        4xx or 5xx is the hub's (or the spawner's) refusal, its message the spawn page's.
        """
        body = {"user_options": {"profile": profile}} if profile else {}
        response = await self._fetch(
            "POST", f"/users/{quote(name, safe='')}/server", body=body, request_timeout=max(self.timeout, 120)
        )
        return response.code, (response.body or b"").decode(errors="replace")

    async def progress(self, name: str) -> AsyncIterator[dict]:
        """The events of ``name``'s server's spawn, as they come, until it is ready or failed.

        Raises ``NotPending`` when the server is neither starting nor ready.
        """
        queue: asyncio.Queue = asyncio.Queue()
        partial = [""]

        def take(chunk: bytes) -> None:
            text = partial[0] + chunk.decode(errors="replace")
            *complete, partial[0] = text.split("\n")
            for event in parse_events(complete):
                queue.put_nowait(event)

        request = HTTPRequest(
            self._url(f"/users/{quote(name, safe='')}/server/progress"),
            headers={"Authorization": f"token {self.token}", "Accept": "text/event-stream"},
            streaming_callback=take,
            request_timeout=3600,
        )
        fetch = asyncio.ensure_future(self.http.fetch(request, raise_error=False))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, fetch}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    if queue.empty():  # the stream ended with nothing more to say
                        response = fetch.result()
                        if response.code == 400:
                            raise NotPending(f"{name}'s server is not starting")
                        if response.code != 200:
                            raise HubError(f"the hub answered {response.code} to the progress of {name}'s server")
                        return
                    getter = None
                event = getter.result() if getter is not None else queue.get_nowait()
                yield event
                if event.get("ready") or event.get("failed"):
                    return
        finally:
            if not fetch.done():
                fetch.cancel()

    async def activity(self, name: str) -> None:
        """Tell the hub that ``name`` is using their default server now (an open SSH session)."""
        now = _now()
        response = await self._fetch(
            "POST",
            f"/users/{quote(name, safe='')}/activity",
            body={"last_activity": now, "servers": {"": {"last_activity": now}}},
        )
        if response.code >= 400:
            raise HubError(f"the hub answered {response.code} to the activity of {name}")

    def close(self) -> None:
        self.http.close()


__all__ = ["HTTPClientError", "HubAPI", "HubError", "NotPending"]
