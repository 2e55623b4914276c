"""nydusd reading a converted image through a fault-injecting proxy in front of the real
registry (digest validation on, no blob cache): every fault either heals within the retry
budget (every file reads back byte for byte) or gives EIO in bounded time; the daemon stays
up and reads work again once the fault is gone."""

from __future__ import annotations

import errno
import random
import time

import pytest

from nydus.storage.http import BREAKER_COOLDOWN
from tests.converter.conftest import convert, read_amount, registry_config
from tests.converter.images import Layout, make_image, push
from tests.fault_proxy import FaultProxy
from tests.helpers.layers import D, F

rng = random.Random(11)
FILES = {
    "data/big.bin": rng.randbytes(3_000_000),
    "data/mid.bin": rng.randbytes(300_000),
    **{f"etc/small{i}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(12)},
}


@pytest.fixture(scope="module")
def image(registry, tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    layers = [
        [D("etc"), *(F(k, v) for k, v in FILES.items() if k.startswith("etc/"))],
        [D("data"), *(F(k, v) for k, v in FILES.items() if k.startswith("data/"))],
    ]
    layout = Layout(base / "layout")
    layout.add_image("v1", make_image(layers))
    push(layout, "v1", f"{registry.host}/faulty:v1")
    work = base / "w" / "tmp"
    work.parent.mkdir()
    convert(f"{registry.host}/faulty:v1", f"{registry.host}/faulty:nydus", work).ok()
    return work / registry.host / "faulty:nydus" / "bootstrap"


@pytest.fixture
def proxy(registry):
    p = FaultProxy(registry.host)
    yield p
    p.stop()


def _mount(nydusd, image, proxy, **cfg):
    config = registry_config(proxy.host, "faulty", retry_limit=2, amplify_io=0)
    config["device"]["backend"]["config"].update({"timeout": 2, "connect_timeout": 2, **cfg})
    return nydusd(image, config)


def _read_all(mnt) -> dict[str, bytes]:
    return {k: (mnt / k).read_bytes() for k in FILES}


@pytest.mark.parametrize(
    "faults",
    [
        ["429:1", "503", "reset", "short", "flip", "reset", "short", "flip"],
        ["flip", "flip"],  # a chunk failing its digest twice is fetched a third time
    ],
    ids=["mixed", "flip-twice"],
)
def test_faults_within_the_retry_budget_heal(image, proxy, nydusd, faults):
    d = _mount(nydusd, image, proxy)
    proxy.faults += faults
    t0 = time.monotonic()
    assert _read_all(d.mountpoint) == FILES  # 0 wrong bytes
    assert time.monotonic() - t0 < 60
    assert not proxy.faults, "every fault was met"
    assert d.alive()
    if "flip" in faults:
        assert "digest mismatch" in d.log() and "fetching it again" in d.log()


def test_a_server_ignoring_range_still_serves_exact_bytes(image, proxy, nydusd):
    d = _mount(nydusd, image, proxy)
    proxy.sticky = "ignore-range"
    assert _read_all(d.mountpoint) == FILES
    assert "ignores Range" in d.log()


def test_persistent_faults_give_eio_in_bounded_time_then_recover(image, proxy, nydusd):
    d = _mount(nydusd, image, proxy, timeout=1, connect_timeout=1)
    mnt = d.mountpoint
    for fault in ("flip", "stall", "503"):
        proxy.sticky = fault
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            (mnt / "data/mid.bin").read_bytes()
        assert info.value.errno == errno.EIO, fault
        assert time.monotonic() - t0 < 20, fault
        assert d.alive() and d.get("/api/v1/daemon").json()["state"] == "RUNNING"
    log = d.log()
    assert "read fails with EIO" in log  # the final digest failure, at WARN
    assert "WARN" in log and "failed after" in log  # the final HTTP failure, at WARN
    assert read_amount(d)["read_errors"] > 0
    proxy.clear()
    deadline = time.monotonic() + BREAKER_COOLDOWN + 10
    while True:
        try:
            assert _read_all(mnt) == FILES
            break
        except OSError as exc:
            assert exc.errno == errno.EIO
            assert time.monotonic() < deadline, "no recovery after the fault was cleared"
            time.sleep(0.5)
