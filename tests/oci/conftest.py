"""Fixtures: real registries (plain, htpasswd Basic auth, Bearer token auth) on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.env import fixture_needs
from tests.registry_fixture import (
    REGISTRY_BIN,
    RunningRegistry,
    TokenServer,
    start_registry,
    start_token_server,
)

USERS = {"alice": "s3cret-Pa55word"}

needs_skopeo = pytest.mark.tools("skopeo")
REGISTRY_NEEDS = pytest.mark.tools(REGISTRY_BIN, "openssl")


def _registry(
    factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[RunningRegistry]:
    running = start_registry(factory.mktemp(name), **options)
    yield running
    running.stop()


@pytest.fixture(scope="module")
@fixture_needs(REGISTRY_NEEDS)
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry without auth."""
    yield from _registry(tmp_path_factory, "registry")


@pytest.fixture(scope="module")
@fixture_needs(REGISTRY_NEEDS)
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry with htpasswd Basic auth for USERS."""
    yield from _registry(tmp_path_factory, "basic-registry", htpasswd=USERS)


@pytest.fixture(scope="module")
@fixture_needs(REGISTRY_NEEDS)
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = start_token_server(tmp_path_factory.mktemp("token"), USERS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[RunningRegistry]:
    """A registry with Bearer token auth, tokens from `token_server` (USERS, no anonymous)."""
    yield from _registry(tmp_path_factory, "token-registry", token=token_server)
