"""Image references (`ubuntu`, `localhost:5000/ubuntu:16.04`, `host/repo@sha256:...`) and digests.

The grammar is the one of docker/distribution's `reference` package, including Docker Hub's
normalisation: no host means `docker.io`, a single-component name on Docker Hub gets
`library/`, and a reference with neither tag nor digest means tag `latest`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from nydus.oci.errors import InvalidReference

__all__ = [
    "DEFAULT_TAG",
    "DOCKER_HUB",
    "DOCKER_HUB_API",
    "Reference",
    "api_host",
    "check_digest",
    "sha256_digest",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_NAME_MAX = 255


def check_digest(digest: str, what: str = "digest") -> str:
    """Return `digest` if it is `algorithm:hex` (sha256 etc.: exact lowercase hex), else raise."""
    problem = _digest_problem(digest)
    if problem:
        raise InvalidReference(f"invalid {what} {digest!r}: {problem}")
    return digest


def _digest_problem(digest: str) -> str | None:
    if not _DIGEST_RE.fullmatch(digest):
        return "expected algorithm:hex"
    algorithm, encoded = digest.split(":", 1)
    length = _HEX_LENGTHS.get(algorithm)
    if length is not None and not re.fullmatch(rf"[0-9a-f]{{{length}}}", encoded):
        return f"{algorithm} needs {length} lowercase hex digits"
    return None


def sha256_digest(data: bytes | memoryview) -> str:
    """`sha256:<hex>` of `data`, the digest form registries use."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def api_host(host: str) -> str:
    """The host that serves the distribution API for a reference host (`docker.io` differs)."""
    return DOCKER_HUB_API if host == DOCKER_HUB else host


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised image reference."""

    host: str  # registry host[:port] as users write it; `docker.io` for Docker Hub
    repo: str  # repository path, e.g. `library/ubuntu`
    tag: str | None = None  # None only when a digest is given without a tag
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse `text`; a reference without tag or digest gets tag `latest`."""
        if not text or text != text.strip():
            raise InvalidReference(f"invalid image reference {text!r}: empty or padded with spaces")
        name, digest = text, None
        if "@" in name:
            name, digest = name.split("@", 1)
            problem = _digest_problem(digest)
            if problem:
                raise InvalidReference(
                    f"invalid image reference {text!r}: bad digest {digest!r}: {problem}"
                )
        tag = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            if not _TAG_RE.fullmatch(tag):
                raise InvalidReference(f"invalid image reference {text!r}: bad tag {tag!r}")
        host, repo = _split_host(name, text)
        if not _PATH_RE.fullmatch(repo):
            raise InvalidReference(
                f"invalid image reference {text!r}: repository {repo!r} must be lowercase "
                "letters, digits and separators"
            )
        if len(host) + 1 + len(repo) > _NAME_MAX:
            raise InvalidReference(f"invalid image reference {text!r}: name longer than 255")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(host, repo, tag, digest)

    @property
    def api_host(self) -> str:
        return api_host(self.host)

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """`host/repo` without tag or digest."""
        return f"{self.host}/{self.repo}"

    def normalized(self) -> str:
        """Fully-qualified form, e.g. `docker.io/library/nginx:latest`."""
        text = self.name
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r} for {self.name}")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=check_digest(digest))

    def __str__(self) -> str:
        return self.normalized()


def _split_host(name: str, text: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    is_host = sep and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_host:
        host, repo = DOCKER_HUB, name
    else:
        if not _HOST_RE.fullmatch(first):
            raise InvalidReference(f"invalid image reference {text!r}: bad registry host {first!r}")
        host, repo = first, rest
        if host in _HUB_ALIASES:
            host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    return host, repo
