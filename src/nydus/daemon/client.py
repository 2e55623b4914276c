"""A synchronous client of a nydusd API socket (ours or upstream's): nydusctl, the
process helper and, later, the snapshotter talk to a daemon through it."""

from __future__ import annotations

import json
import os
from typing import Any, Self

import httpx

from nydus.errors import NydusError

__all__ = ["ApiClient", "http_client"]


def http_client(sock: str | os.PathLike[str], timeout: float = 10.0) -> httpx.Client:
    """An httpx client over the unix socket `sock`; paths are `/api/v1/...`."""
    # no TLS on a unix socket: verify=False spares loading the CA bundle (0.25-0.5 s each)
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=os.fspath(sock), verify=False),
        base_url="http://localhost",
        timeout=timeout,
    )


class ApiClient:
    """JSON in and out; a failed call is one NydusError naming the socket or the answer."""

    def __init__(self, sock: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.sock = os.fspath(sock)
        self.http = http_client(self.sock, timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """`path` below /api/ (e.g. "v1/daemon"); the decoded answer, None for 204."""
        try:
            r = self.http.request(
                method, f"/api/{path}", content=None if body is None else json.dumps(body)
            )
        except httpx.HTTPError as exc:
            raise NydusError(f"cannot reach nydusd at {self.sock}: {exc}") from exc
        if r.status_code == 204:
            return None
        try:
            data = r.json()
        except ValueError:
            data = r.text
        if r.status_code >= 400:
            msg = data.get("message") if isinstance(data, dict) else data
            raise NydusError(f"nydusd answered {r.status_code}: {msg}")
        return data

    def state(self) -> str | None:
        """The daemon's state (INIT, READY, RUNNING...), None while it does not answer."""
        try:
            info = self.call("GET", "v1/daemon")
        except NydusError:
            return None
        return info.get("state") if isinstance(info, dict) else None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
