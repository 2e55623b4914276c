"""Fixtures: real registries (plain, htpasswd Basic auth, Bearer token auth) on loopback ports."""

from __future__ import annotations

import shutil
from typing import Iterator

import pytest

from tests.registry_fixture import (
    RunningRegistry,
    TokenServer,
    registry_available,
    start_registry,
    start_token_server,
)

USERS = {"alice": "s3cret-Pa55word"}

needs_registry = pytest.mark.skipif(not registry_available(),
                                    reason="docker-registry or openssl not installed")
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    if not registry_available():
        pytest.skip("docker-registry not installed")
    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    if not registry_available():
        pytest.skip("docker-registry not installed")
    running = start_registry(tmp_path_factory.mktemp("basic-registry"), htpasswd=USERS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    if not registry_available():
        pytest.skip("docker-registry or openssl not installed")
    server = start_token_server(tmp_path_factory.mktemp("token"), USERS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory,
                   token_server: TokenServer) -> Iterator[RunningRegistry]:
    running = start_registry(tmp_path_factory.mktemp("token-registry"), token=token_server)
    yield running
    running.stop()
