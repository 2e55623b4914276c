"""Registry credentials and authentication: Docker config lookup, challenges, bearer tokens.

Secrets (passwords, tokens, Authorization headers) never reach a log line or an error message;
`redact()` scrubs text that might hold one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nydus.oci.errors import AuthError, RegistryError
from nydus.oci.reference import DOCKER_HUB, DOCKER_HUB_API

__all__ = [
    "Authenticator",
    "Challenge",
    "Credentials",
    "docker_config_path",
    "load_credentials",
    "merge_scopes",
    "parse_www_authenticate",
    "redact",
    "redact_url",
    "registry_reason",
    "repo_scope",
]

log = logging.getLogger(__name__)

CLIENT_ID = "nydus-py"
TOKEN_TTL_DEFAULT = 60.0  # seconds, when the token server gives no expires_in
TOKEN_TTL_MIN = 60.0
TOKEN_TTL_MAX = 600.0
TOKEN_REFRESH_MARGIN = 10.0  # refresh this long before a token expires
_HUB_KEYS = {DOCKER_HUB, "index.docker.io", DOCKER_HUB_API, "registry.hub.docker.com"}
_HUB_SERVER_URL = "https://index.docker.io/v1/"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a user authenticates with; `repr` never shows the secrets."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token
    registry_token: str | None = field(default=None, repr=False)  # static bearer (nydusd)

    @classmethod
    def from_auth(cls, auth: str, what: str = "auth") -> Credentials:
        """Decode the base64 `user:password` form of Docker's `auth` and nydusd's `auth`."""
        try:
            text = base64.b64decode(auth.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise AuthError(f"{what}: not valid base64") from None
        username, sep, password = text.partition(":")
        if not sep:
            raise AuthError(f"{what}: decoded value has no ':' between user and password")
        return cls(username, password)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    @property
    def has_password(self) -> bool:
        return bool(self.username or self.password)


# -- Docker config -------------------------------------------------------------------------


def docker_config_path() -> Path:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _host_key(server: str) -> str:
    """Normalise an `auths` key or a host: no scheme, no path, lowercase, Docker Hub unified."""
    text = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", server.strip()).split("/", 1)[0].lower()
    return DOCKER_HUB if text in _HUB_KEYS else text


def load_credentials(
    host: str, config_path: str | os.PathLike[str] | None = None
) -> Credentials | None:
    """Credentials for `host` from a Docker config file, or None.

    Order as in the Docker CLI: `credHelpers[host]`, then an `auths` entry (`auth` base64 or
    `username`/`password`, `identitytoken`), then the `credsStore` helper.
    """
    path = Path(config_path) if config_path is not None else docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable Docker config %s: %s", path, exc)
        return None
    if not isinstance(config, dict):
        log.warning("ignoring Docker config %s: not a JSON object", path)
        return None
    key = _host_key(host)
    helpers = config.get("credHelpers") or {}
    for server, helper in helpers.items():
        if _host_key(server) == key:
            return _from_helper(helper, server)
    for server, entry in (config.get("auths") or {}).items():
        if _host_key(server) == key and isinstance(entry, dict):
            creds = _from_auths_entry(entry, f"{path} auths[{server!r}]")
            if creds is not None:
                return creds
    store = config.get("credsStore")
    if store:
        return _from_helper(store, _HUB_SERVER_URL if key == DOCKER_HUB else host)
    return None


def _from_auths_entry(entry: Mapping[str, Any], what: str) -> Credentials | None:
    identity = entry.get("identitytoken") or None
    if entry.get("auth"):
        creds = Credentials.from_auth(entry["auth"], what)
        return Credentials(creds.username, creds.password, identity)
    if entry.get("username") or entry.get("password"):
        return Credentials(entry.get("username", ""), entry.get("password", ""), identity)
    if identity:
        return Credentials(identity_token=identity)
    return None


def _from_helper(helper: str, server: str) -> Credentials | None:
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        log.warning("Docker credential helper docker-credential-%s not found", helper)
        return None
    try:
        done = subprocess.run(
            [program, "get"], input=server.encode(), capture_output=True, timeout=30, check=False
        )
        reply = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        log.warning("docker-credential-%s failed for %s: %s", helper, server, type(exc).__name__)
        return None
    if not isinstance(reply, dict):
        log.debug("docker-credential-%s has no credentials for %s", helper, server)
        return None
    username, secret = str(reply.get("Username", "")), str(reply.get("Secret", ""))
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


# -- challenges ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header; `scheme` is lowercase."""

    scheme: str
    params: Mapping[str, str]


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CHALLENGE_RE = re.compile(
    rf"\s*(?:(?P<key>{_TOKEN})\s*=\s*(?:\"(?P<quoted>(?:[^\"\\]|\\.)*)\"|(?P<value>[^\s,]*))"
    rf"|(?P<scheme>{_TOKEN})(?:\s+(?P<token68>[A-Za-z0-9._~+/-]+=*)(?=\s*(?:,|$)))?)\s*,?"
)


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse `Bearer realm="...",service="...",scope="a,b"` and `Basic realm=...` challenges."""
    parsed: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(header):
        match = _CHALLENGE_RE.match(header, pos)
        if match is None or match.end() == pos:
            break
        pos = match.end()
        if match.group("scheme"):
            parsed.append((match.group("scheme").lower(), {}))
        elif parsed:
            value = match.group("quoted")
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group("value")
            parsed[-1][1][match.group("key").lower()] = value
    return [Challenge(scheme, params) for scheme, params in parsed]


def repo_scope(repo: str, push: bool = False) -> str:
    return f"repository:{repo}:{'pull,push' if push else 'pull'}"


def merge_scopes(*scopes: str) -> str:
    """Space-separated scopes with the actions of each resource united, in first-seen order:
    `repository:a:pull,push` + `repository:a:pull repository:b:pull` ->
    `repository:a:pull,push repository:b:pull`."""
    merged: dict[str, dict[str, None]] = {}
    for item in " ".join(scopes).split():
        resource, _, actions = item.rpartition(":")
        if not resource:
            resource, actions = item, ""
        merged.setdefault(resource, {}).update(dict.fromkeys(a for a in actions.split(",") if a))
    return " ".join(f"{r}:{','.join(a)}" if a else r for r, a in merged.items())


# -- redaction -----------------------------------------------------------------------------

_SECRET_PATTERNS = [
    re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)[^\r\n]*"),
    re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)([\"']?\b(?:password|passwd|secret|token|access_token|refresh_token|"
        r"identitytoken|registry_token|auth)[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,;}]+"
    ),
]


def redact(text: str) -> str:
    """`text` with Authorization headers, Basic/Bearer values and password/token fields hidden."""
    text = _SECRET_PATTERNS[0].sub(r"\1***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1 ***", text)
    return _SECRET_PATTERNS[2].sub(r"\1***", text)


def redact_url(url: httpx.URL | str) -> str:
    """A URL fit for logs: no user info and no query (pre-signed URLs carry secrets there)."""
    parsed = httpx.URL(str(url))
    text = str(parsed.copy_with(query=None, fragment=None, userinfo=b""))
    return text + "?…" if parsed.query else text


# -- tokens --------------------------------------------------------------------------------

Send = Callable[[httpx.Request], httpx.Response]


class Authenticator:
    """Authorization headers for one registry host: Basic, or Bearer tokens cached per scope.

    The registry client asks `header(scope)` before a request; on a 401 it calls
    `on_unauthorized()`, which returns a fresh header to retry with once, or raises AuthError
    when nothing better can be tried (no credentials, credentials already refused).
    """

    def __init__(self, host: str, credentials: Credentials | None, send: Send) -> None:
        self.host = host
        self.credentials = credentials
        self._send = send
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)
        self._fetching: dict[str, threading.Lock] = {}  # scope -> held while fetching
        self._get_only: bool = False  # token server refused the OAuth2 POST

    def header(self, scope: str) -> str | None:
        """The header to send first: a cached or refreshed token, Basic, or None if unknown yet."""
        creds = self.credentials
        if creds is not None and creds.registry_token:
            return "Bearer " + creds.registry_token
        with self._lock:
            challenge = self._challenge
            fetching = self._fetching.setdefault(scope, threading.Lock())
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return creds.basic() if creds is not None and creds.has_password else None
        with fetching:  # one fetch per scope; threads arriving meanwhile reuse its token
            token = self._valid_token(scope)
            if token is None:
                log.debug("token for %s on %s missing or expiring, fetching", scope, self.host)
                token = self._fetch_token(challenge, scope, self.host)
        return "Bearer " + token

    def _valid_token(self, scope: str) -> str | None:
        with self._lock:
            cached = self._tokens.get(scope)
        if cached is not None and time.monotonic() < cached[1] - TOKEN_REFRESH_MARGIN:
            return cached[0]
        return None

    def on_unauthorized(
        self, response: httpx.Response, scope: str, sent: str | None, target: str
    ) -> str:
        """A fresh Authorization header after `response` (a 401) or AuthError."""
        challenges = parse_www_authenticate(response.headers.get("www-authenticate", ""))
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        creds = self.credentials
        reason = registry_reason(response)
        if challenge is None:
            raise AuthError(f"authentication failed for {target}: {reason}", status=401)
        with self._lock:
            self._challenge = challenge
            self._tokens.pop(scope, None)
        if creds is not None and creds.registry_token:
            raise self.refused(response, sent, target)
        if challenge.scheme == "basic":
            if creds is None or not creds.has_password:
                raise AuthError(
                    f"authentication failed for {target}: registry requires "
                    f"credentials and none are configured ({reason})",
                    status=401,
                )
            if creds.basic() == sent:
                raise self.refused(response, sent, target)
            return creds.basic()
        if "realm" not in challenge.params:
            raise AuthError(
                f"authentication failed for {target}: Bearer challenge without realm", status=401
            )
        wanted = merge_scopes(scope, challenge.params.get("scope", ""))
        return "Bearer " + self._fetch_token(challenge, wanted, target, cache_key=scope)

    def refused(self, response: httpx.Response, sent: str | None, target: str) -> AuthError:
        """The error for a 401 that answered freshly obtained credentials or token."""
        creds = self.credentials
        if creds is not None and creds.registry_token:
            what = "registry token refused"
        elif sent and sent.startswith("Basic "):
            what = f"credentials of user {creds.username if creds else ''!r} refused"
        elif sent:
            who = f"user {creds.username!r}" if creds and creds.has_password else "anonymous"
            what = f"fresh token for {who} refused"
        else:
            what = "no credentials sent"
        return AuthError(
            f"authentication failed for {target}: {what} ({registry_reason(response)})",
            status=response.status_code,
        )

    def _fetch_token(
        self, challenge: Challenge, scope: str, target: str, cache_key: str | None = None
    ) -> str:
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        creds = self.credentials
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        response: httpx.Response | None = None
        refresh = creds.identity_token if creds is not None else None
        if creds is not None and (refresh or creds.has_password) and not self._get_only:
            form = {
                "grant_type": "refresh_token" if refresh else "password",
                "client_id": CLIENT_ID,
                "access_type": "online",
                **query,
            }
            if refresh:
                form["refresh_token"] = refresh
            else:
                form.update(username=creds.username, password=creds.password)
            response = self._token_request(httpx.Request("POST", realm, data=form), target)
            if response.status_code in (400, 401, 404, 405) and not refresh:
                log.debug(
                    "token server %s refused POST (%d), trying GET",
                    redact_url(realm),
                    response.status_code,
                )
                with self._lock:
                    self._get_only = True
                response = None
        if response is None:
            headers = {"Authorization": creds.basic()} if creds and creds.has_password else {}
            response = self._token_request(
                httpx.Request("GET", realm, params=query, headers=headers), target
            )
        if response.status_code in (401, 403):
            who = f"user {creds.username!r}" if creds and creds.has_password else "anonymous"
            raise AuthError(
                f"authentication failed for {target}: token server refused {who} "
                f"for scope {scope!r} ({registry_reason(response)})",
                status=response.status_code,
            )
        if response.status_code != 200:
            raise RegistryError(
                f"token request for {target} failed: {registry_reason(response)}",
                status=response.status_code,
            )
        token, ttl = _parse_token(response, target)
        with self._lock:
            self._tokens[cache_key or scope] = (token, time.monotonic() + ttl)
        log.debug("got token for %s on %s, valid %.0fs", scope, self.host, ttl)
        return token

    def _token_request(self, request: httpx.Request, target: str) -> httpx.Response:
        try:
            return self._send(request)
        except RegistryError as exc:
            raise type(exc)(f"token request for {target} failed: {exc}", status=exc.status) from exc


def _parse_token(response: httpx.Response, target: str) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token server's JSON reply."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthError(
            f"authentication failed for {target}: token server answered without a token",
            status=response.status_code,
        )
    ttl = body.get("expires_in")
    ttl = float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else TOKEN_TTL_DEFAULT
    return token, min(max(ttl, TOKEN_TTL_MIN), TOKEN_TTL_MAX)


def registry_reason(response: httpx.Response) -> str:
    """One line from a registry error reply: `HTTP 401 UNAUTHORIZED: authentication required`."""
    text = f"HTTP {response.status_code}"
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        errors = None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        text += f" {first.get('code', '')}: {first.get('message', '')}".rstrip(": ")
    elif response.reason_phrase:
        text += " " + response.reason_phrase
    return redact(text)
