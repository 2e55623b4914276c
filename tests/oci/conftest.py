"""Fixtures: real registries (plain, htpasswd Basic auth, Bearer token auth) on loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.registry_fixture import (
    RunningRegistry,
    TokenServer,
    registry_available,
    start_registry,
    start_token_server,
)

USERS = {"alice": "s3cret-Pa55word"}

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def _registry(
    factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[RunningRegistry]:
    if not registry_available():
        pytest.skip("docker-registry or openssl not installed")
    running = start_registry(factory.mktemp(name), **options)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry without auth."""
    yield from _registry(tmp_path_factory, "registry")


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry with htpasswd Basic auth for USERS."""
    yield from _registry(tmp_path_factory, "basic-registry", htpasswd=USERS)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    if not registry_available():
        pytest.skip("docker-registry or openssl not installed")
    server = start_token_server(tmp_path_factory.mktemp("token"), USERS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[RunningRegistry]:
    """A registry with Bearer token auth, tokens from `token_server` (USERS, no anonymous)."""
    yield from _registry(tmp_path_factory, "token-registry", token=token_server)
