"""Fixtures for the `nydus-image create` evidence tests: running the CLI and shared fixture trees."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.daemon.conftest import nydusd  # noqa: F401  (fixture: our nydusd on FUSE)
from tests.helpers.env import fixture_needs
from tests.helpers.trees import FullTreeInfo, make_full_tree

# 64 KiB chunks: multi-chunk files stay small, so the whole suite stays fast
CS = 0x10000


@dataclass
class Built:
    """Outputs of one successful ``nydus-image create``."""

    bootstrap: Path
    blob: Path | None  # the new blob of this build (None when no blob was written)
    blobs: list[str]  # ids from --output-json, blob-table order
    report: dict
    stdout: str
    stderr: str
    args: list[str] = field(default_factory=list)

    def blob_paths(self, blob_dir: Path) -> list[Path]:
        """Blob files of the whole blob table (``--blob-dir`` builds), in blob-table order."""
        return [blob_dir / b for b in self.blobs]


def run_nydus_image(
    nydus_image: str, args: Sequence[str | os.PathLike[str]], **kw
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nydus_image, *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=kw.pop("timeout", 600),
        **kw,
    )


def image_ok(nydus_image: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run ``nydus-image ARGS...``; fail the test (showing stderr) unless it exits 0."""
    r = run_nydus_image(nydus_image, args)
    assert r.returncode == 0, f"nydus-image {' '.join(os.fspath(a) for a in args)}: {r.stderr}"
    return r


CreateFn = Callable[..., Built]


@pytest.fixture(scope="session")
def create(nydus_image: str) -> CreateFn:
    """``create(source, out_dir, *extra, compressor=, digester=, chunk_size=, blob_dir=False)``.

    Runs ``nydus-image create SOURCE --bootstrap OUT/bootstrap (--blob OUT/blob | --blob-dir
    OUT/blobs) --output-json OUT/output.json ...`` and fails the test (showing stderr) unless it
    exits 0.  ``compressor``/``digester``/``chunk_size`` of ``None`` leave the flag out.
    """

    def _create(
        source: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *extra: str | os.PathLike[str],
        compressor: str | None = "none",
        digester: str | None = None,
        chunk_size: int | None = CS,
        blob_dir: bool | str | os.PathLike[str] = False,
        name: str = "bootstrap",
    ) -> Built:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        boot = out / name
        report_path = out / f"{name}.json"
        args: list[str | os.PathLike[str]] = [
            "create",
            source,
            "--bootstrap",
            boot,
            "--output-json",
            report_path,
        ]
        blob: Path | None
        if blob_dir:
            bdir = Path(blob_dir) if not isinstance(blob_dir, bool) else out / "blobs"
            bdir.mkdir(parents=True, exist_ok=True)
            args += ["--blob-dir", bdir]
            blob = None
        else:
            blob = out / f"{name}.blob"
            args += ["--blob", blob]
        if compressor is not None:
            args += ["--compressor", compressor]
        if digester is not None:
            args += ["--digester", digester]
        if chunk_size is not None:
            args += ["--chunk-size", hex(chunk_size)]
        args += list(extra)
        r = run_nydus_image(nydus_image, args)
        cmd = " ".join(os.fspath(a) for a in ["nydus-image", *args])
        assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\nstderr:\n{r.stderr}"
        assert boot.is_file(), f"{cmd}: no bootstrap written"
        report = json.loads(report_path.read_text())
        if blob_dir:
            bdir = Path(blob_dir) if not isinstance(blob_dir, bool) else out / "blobs"
            new = report["blobs"][-1] if report["blobs"] else None
            blob = bdir / new if new and (bdir / new).exists() else None
        elif blob is not None and not blob.exists():
            blob = None
        return Built(
            bootstrap=boot,
            blob=blob,
            blobs=list(report["blobs"]),
            report=report,
            stdout=r.stdout,
            stderr=r.stderr,
            args=[os.fspath(a) for a in args],
        )

    return _create


@pytest.fixture(scope="session")
@fixture_needs(pytest.mark.root("device nodes, chown, trusted.* xattrs in the source tree"))
def full_tree(tmp_path_factory: pytest.TempPathFactory) -> FullTreeInfo:
    """The every-entry-type fixture tree (64 KiB chunk geometry), made once per session."""
    return make_full_tree(tmp_path_factory.mktemp("full-tree") / "src", chunk_size=CS)


@pytest.fixture(scope="session")
def full_builds(
    full_tree: FullTreeInfo, create: CreateFn, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Built]:
    """``full_builds(compressor, digester)``: the full tree built once per combination."""
    cache: dict[tuple[str, str], Built] = {}
    base = tmp_path_factory.mktemp("full-builds")

    def get(compressor: str, digester: str) -> Built:
        key = (compressor, digester)
        if key not in cache:
            cache[key] = create(
                full_tree.root,
                base / f"{compressor}-{digester}",
                compressor=compressor,
                digester=digester,
            )
        return cache[key]

    return get
