"""nydusd's registry backend under a converted image: lazy reads of a >= 100 MB image fetch
only what a read needs; a registry that goes away mid-use gives EIO (after the retries)
without killing the daemon, and reads work again once it is back on the same port."""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest

from nydus.storage.http import BREAKER_COOLDOWN
from tests.converter.conftest import (
    REGISTRY_NEEDS,
    convert,
    read_amount,
    registry_config,
    wait_meta_loaded,
)
from tests.converter.images import Layout, large_layers, make_image, push
from tests.helpers.env import fixture_needs
from tests.helpers.layers import D, F
from tests.registry_fixture import restart_registry, start_registry


@pytest.fixture(scope="module")
def large(registry, tmp_path_factory):
    """A >= 100 MB (compressed) image of incompressible data, converted once."""
    base = tmp_path_factory.mktemp("large")
    layers, smalls = large_layers()
    image = make_image(layers, level=1)
    assert image.compressed_size >= 100_000_000
    expected = {m.name: m.data for m in layers[0] if m.name in set(smalls[:3])}
    layout = Layout(base / "layout")
    layout.add_image("v1", image)
    del layers, layout
    push(Layout(base / "layout"), "v1", f"{registry.host}/large:v1")
    work = base / "w" / "tmp"
    work.parent.mkdir()
    convert(f"{registry.host}/large:v1", f"{registry.host}/large:v1-nydus", work).ok()
    boot = work / registry.host / "large:v1-nydus" / "bootstrap"
    blobs = sorted((work / registry.host / "large:v1-nydus" / "blobs").iterdir())
    return {
        "boot": boot,
        "expected": expected,
        "source_bytes": image.compressed_size,
        "blob_bytes": sum(p.stat().st_size for p in blobs),
    }


def test_reading_one_small_file_fetches_a_tiny_part_of_the_image(large, registry, nydusd):
    assert large["blob_bytes"] >= 100_000_000
    d = nydusd(large["boot"], registry_config(registry.host, "large"))
    wait_meta_loaded(d)
    at_mount = read_amount(d)
    [(name, data)] = list(large["expected"].items())[:1]
    assert (d.mountpoint / name).read_bytes() == data
    after = read_amount(d)
    fetched = after["read_amount_total"]
    assert after["read_errors"] == 0
    # the file's own chunk plus what read amplification (amplify_io, 1 MiB) takes after it
    assert 0 < fetched - at_mount["read_amount_total"] <= (1 << 20) + 64 * 1024
    assert fetched < 0.05 * large["blob_bytes"], (fetched, large["blob_bytes"])
    assert after["read_count"] - at_mount["read_count"] == 1


@pytest.fixture
@fixture_needs(REGISTRY_NEEDS)
def flaky(tmp_path_factory):
    """A registry of its own (stopped and restarted by the test) with a 2-layer image whose
    files live in different blobs."""
    reg = start_registry(tmp_path_factory.mktemp("flaky"))
    holder = {"registry": reg}
    yield holder
    holder["registry"].stop()


@pytest.mark.parametrize("driver", ["fuse", "erofs"])
def test_registry_down_gives_eio_then_recovers(flaky, nydusd, tmp_path, driver):
    reg = flaky["registry"]
    a, b = os.urandom(700_000), os.urandom(900_000)
    layout = Layout(tmp_path / "layout")
    layout.add_image(
        "v1", make_image([[D("data"), F("data/a.bin", a)], [D("data"), F("data/b.bin", b)]])
    )
    push(layout, "v1", f"{reg.host}/flaky:v1")
    work = tmp_path / "tmp"
    convert(f"{reg.host}/flaky:v1", f"{reg.host}/flaky:v1-nydus", work).ok()
    boot = work / reg.host / "flaky:v1-nydus" / "bootstrap"
    extra = (
        ["--fs-driver", "erofs", "--work-dir", str(tmp_path / "work")] if driver == "erofs" else []
    )
    d = nydusd(boot, registry_config(reg.host, "flaky", retry_limit=2), *extra)  # no blob cache
    mnt = d.mountpoint
    assert (mnt / "data/a.bin").read_bytes() == a
    wait_meta_loaded(d)
    before = read_amount(d)

    reg.stop()
    with pytest.raises(OSError) as exc:
        (mnt / "data/b.bin").read_bytes()
    assert exc.value.errno == errno.EIO
    assert d.alive()
    assert d.get("/api/v1/daemon").json()["state"] == "RUNNING"
    failed = read_amount(d)
    assert failed["read_errors"] > before["read_errors"]
    assert failed["read_amount_total"] == before["read_amount_total"]
    assert "retry 2/2" in d.log()

    flaky["registry"] = restart_registry(reg)
    # the backend's circuit breaker may still be failing fast for its cooldown: then a probe
    deadline = time.monotonic() + BREAKER_COOLDOWN + 10
    while True:
        try:
            got = (mnt / "data/b.bin").read_bytes()
            break
        except OSError as exc:
            if exc.errno != errno.EIO or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert hashlib.sha256(got).digest() == hashlib.sha256(b).digest()
    assert read_amount(d)["read_amount_total"] > failed["read_amount_total"]
    assert (mnt / "data/a.bin").read_bytes() == a
