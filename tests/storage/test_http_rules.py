"""The request rules of the HTTP backends (storage/http.py), on the registry backend, through
a fault-injecting proxy in front of a real registry: deadlines, retries, Retry-After, short
and reset bodies, a server ignoring Range, the circuit breaker and close() aborting reads.
Each case ends with the right bytes or a StorageError, in bounded time."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import tracemalloc

import pytest

from nydus.config import RegistryConfig
from nydus.errors import StorageError
from nydus.oci.registry import RegistryClient
from nydus.storage.http import BREAKER_COOLDOWN, BREAKER_THRESHOLD
from nydus.storage.registry import RegistryBackend
from tests.fault_proxy import FaultProxy
from tests.helpers.env import fixture_needs
from tests.registry_fixture import REGISTRY_BIN, start_registry

BLOB = os.urandom(4 << 20)
BLOB_ID = hashlib.sha256(BLOB).hexdigest()
REPO = "rules/blob"


@pytest.fixture(scope="module")
@fixture_needs(pytest.mark.tools(REGISTRY_BIN, "openssl"))
def registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("rules-registry"))
    with RegistryClient(reg.host, insecure=True) as client:
        client.push_blob(REPO, "sha256:" + BLOB_ID, BLOB)
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry):
    p = FaultProxy(registry.host)
    yield p
    p.stop()


def backend(proxy: FaultProxy, **cfg) -> RegistryBackend:
    settings = {"timeout": 5, "connect_timeout": 5, "retry_limit": 2, **cfg}
    return RegistryBackend(RegistryConfig(host=proxy.host, repo=REPO, scheme="http", **settings))


def test_clean_reads_pass_through(proxy):
    b = backend(proxy)
    try:
        assert b.size(BLOB_ID) == len(BLOB)
        assert b.read(BLOB_ID, 12345, 70000) == BLOB[12345:82345]
    finally:
        b.close()


@pytest.mark.parametrize("fault", ["503", "reset", "short", "429:0"])
def test_transient_faults_are_retried(proxy, fault, caplog):
    b = backend(proxy)
    proxy.faults += [fault, fault]
    try:
        with caplog.at_level(logging.WARNING):
            assert b.read(BLOB_ID, 1000, 300_000) == BLOB[1000:301_000]
    finally:
        b.close()
    assert len(proxy.matched()) == 3
    assert "retry 2/2" in caplog.text


def test_short_body_beyond_the_limit_fails_naming_blob_offset_and_cause(proxy, caplog):
    b = backend(proxy, retry_limit=1)
    proxy.sticky = "short"
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(StorageError) as info:
            b.read(BLOB_ID, 4096, 8192)
    finally:
        b.close()
    assert "Content-Length 8191 for a range of 8192 bytes" in str(info.value)
    final = [r for r in caplog.records if "failed after 2 attempts" in r.getMessage()]
    assert len(final) == 1 and final[0].levelno == logging.WARNING
    assert f"blob {BLOB_ID} range [4096, +8192)" in final[0].getMessage()


def test_retry_after_is_honoured(proxy):
    b = backend(proxy, retry_limit=1)
    proxy.faults.append("429:2")
    t0 = time.monotonic()
    try:
        assert b.read(BLOB_ID, 0, 100) == BLOB[:100]
    finally:
        b.close()
    assert time.monotonic() - t0 >= 1.9


def test_retry_after_past_the_deadline_fails_at_once(proxy):
    # 2 attempts x 5 s budget: a server asking for 30 s is not waited for (nor capped)
    b = backend(proxy, retry_limit=1)
    proxy.faults.append("429:30")
    t0 = time.monotonic()
    try:
        with pytest.raises(StorageError, match="retry after 30 s, past the read's deadline"):
            b.read(BLOB_ID, 0, 100)
    finally:
        b.close()
    assert time.monotonic() - t0 < 2


def test_a_dripping_server_is_bounded_by_the_whole_request_deadline(proxy):
    # one byte every 0.2 s: each socket read succeeds, the request as a whole must not
    b = backend(proxy, timeout=1, retry_limit=0)
    proxy.sticky = "drip:0.2"
    t0 = time.monotonic()
    try:
        with pytest.raises(StorageError, match="timed out"):
            b.read(BLOB_ID, 0, 1000)
    finally:
        b.close()
    assert time.monotonic() - t0 < 2.5


def test_a_stalled_server_is_bounded(proxy):
    b = backend(proxy, timeout=1, retry_limit=1)
    proxy.sticky = "stall"
    t0 = time.monotonic()
    try:
        with pytest.raises(StorageError, match="timed out"):
            b.read(BLOB_ID, 0, 1000)
    finally:
        b.close()
    assert time.monotonic() - t0 < 4


def test_a_server_ignoring_range_is_streamed_with_bounded_memory(proxy):
    b = backend(proxy)
    proxy.sticky = "ignore-range"
    spans = [(len(BLOB) - 4096 - i * 8192, 4096) for i in range(8)]
    got: dict[int, bytes] = {}
    tracemalloc.start()
    try:
        threads = [
            threading.Thread(target=lambda o=o, n=n: got.__setitem__(o, b.read(BLOB_ID, o, n)))
            for o, n in spans
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        b.close()
    assert {o: got.get(o) for o, _ in spans} == {o: BLOB[o : o + n] for o, n in spans}
    # 8 reads of 4 MiB bodies: never a whole body in memory (that would be 32 MiB)
    assert peak < 4 << 20, peak


def test_the_circuit_breaker_fails_fast_then_probes(proxy):
    b = backend(proxy, retry_limit=1)
    proxy.sticky = "503"
    try:
        for _ in range((BREAKER_THRESHOLD + 1) // 2):
            with pytest.raises(StorageError, match="HTTP 503"):
                b.read(BLOB_ID, 0, 10)
        asked = len(proxy.matched())
        assert asked >= BREAKER_THRESHOLD
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="failing fast"):
            b.read(BLOB_ID, 0, 10)
        assert time.monotonic() - t0 < 0.5
        assert len(proxy.matched()) == asked  # nothing sent while open
        proxy.clear()
        time.sleep(BREAKER_COOLDOWN + 0.2)
        assert b.read(BLOB_ID, 0, 10) == BLOB[:10]  # the probe closes it
        assert not b.breaker.is_open
        assert b.read(BLOB_ID, 10, 10) == BLOB[10:20]
    finally:
        b.close()


def test_close_aborts_a_read_in_flight_promptly(proxy):
    b = backend(proxy, timeout=60, retry_limit=5)
    proxy.sticky = "stall"
    result: list[BaseException | bytes] = []

    def read() -> None:
        try:
            result.append(b.read(BLOB_ID, 0, 100))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=read)
    t.start()
    assert _wait(lambda: len(proxy.matched()) >= 1)
    time.sleep(0.3)
    t0 = time.monotonic()
    b.close()
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 2
    assert isinstance(result[0], StorageError), result
    assert len(proxy.matched()) == 1  # no retries after close


def _wait(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False
