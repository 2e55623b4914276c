"""Images for the user-facing benchmark cases (``start_cases.py``): built once, cached, pushed.

* ``debian``: a real Debian bookworm image in four gzip layers, made with ``mmdebstrap`` from the
  Debian mirror this machine uses and PyPI:

  1. ``minbase`` (``mmdebstrap --variant=minbase``);
  2. python3: a second ``mmdebstrap ... --include=python3`` run with the same ``SOURCE_DATE_EPOCH``
     (so both runs are reproducible), the layer being the diff of the two trees, with OCI
     whiteouts for anything the second tree no longer has;
  3. ``/app``: ``pip install --target`` (host pip, ``--platform manylinux2014_x86_64
     --python-version 3.11``) of boto3, sympy, django, jinja2, pyyaml, rich, and numpy, pandas and
     scipy so the image is >= 100 MB compressed and most of it is *not* read by the workload;
  4. a small layer with deletions: whiteouts for ``/usr/share/{doc,man,info}``, an opaque
     ``/var/log`` and two new files.

* ``smallfiles``: >= 30,000 small files: copies of the ``/app`` site-packages tree, one copy per
  layer (so no layer can deduplicate against another).
* ``quick``: a generated tree of a few MB in three layers (the last with whiteouts), no python.

Prepared files live under ``<workdir>/images/<name>/`` with an OCI image layout and an
``image.json`` description; a rerun reuses them.  :class:`Session` starts one local
``docker-registry`` per benchmark run, pushes the images with ``skopeo`` and converts them with
``nydusify convert`` (one target tag per compressor), all on demand.
"""

from __future__ import annotations

import atexit
import filecmp
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
MB = 1_000_000
SUITE = "bookworm"
EPOCH = "1700000000"
PIP_PACKAGES = ["boto3", "sympy", "django", "jinja2", "pyyaml", "rich", "numpy", "pandas", "scipy"]
#: what the start case imports (PYTHONPATH=/app)
PY_WORKLOAD = "import boto3, sympy, django, jinja2, yaml, rich; print(1)"
SMALLFILES_MIN = 30_000

Log = Callable[[str], None]


class NotAvailable(Exception):
    """An image cannot be prepared on this machine (the reason is the message)."""


@dataclass
class Layer:
    file: str  # path of the .tar.gz
    digest: str  # sha256 of the compressed blob
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # compressed bytes
    tar_bytes: int  # uncompressed tar bytes
    entries: int  # tar members (whiteouts included)
    what: str


@dataclass
class Image:
    name: str
    description: str
    layout: str  # OCI image layout directory (tag "latest")
    layers: list[Layer]
    files: int  # regular files in the final rootfs
    has_python: bool
    workload_files: list[str] = field(default_factory=list)  # quick: files the host-side run reads

    @property
    def compressed(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def uncompressed(self) -> int:
        return sum(layer.tar_bytes for layer in self.layers)

    def summary(self) -> str:
        return (
            f"{self.name}: {self.description}; {len(self.layers)} layers, "
            f"{self.compressed / MB:.1f} MB gzip, {self.uncompressed / MB:.1f} MB tar, "
            f"{self.files} files"
        )


# -- layer writing ---------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file object that hashes and counts what passes to ``out``."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.n += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


#: (arcname, source path | file content | None for an empty file such as a whiteout,
#:  TarInfo template (used when the source is not a path) or None)
Entry = tuple[str, "Path | bytes | None", "tarfile.TarInfo | None"]


def write_layer(entries: Iterable[Entry], out: Path, what: str) -> Layer:
    """Write entries as a tar through ``gzip -6 -n`` into ``out`` (temporary name, then rename)."""
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as raw:
        gz = subprocess.Popen(["gzip", "-6", "-n"], stdin=subprocess.PIPE, stdout=raw)
        assert gz.stdin is not None
        hw = _HashingWriter(gz.stdin)
        count = 0
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for arcname, src, info in entries:
                count += 1
                if src is None or isinstance(src, bytes):
                    ti = info or tarfile.TarInfo(arcname)
                    ti.name = arcname
                    if isinstance(src, bytes):
                        ti.size = len(src)
                        tar.addfile(ti, io.BytesIO(src))
                    else:
                        tar.addfile(ti)
                    continue
                ti = tar.gettarinfo(str(src), arcname)
                ti.uname = ti.gname = ""
                if ti.isreg():
                    with open(src, "rb") as f:
                        tar.addfile(ti, f)
                else:
                    tar.addfile(ti)
        gz.stdin.close()
        if gz.wait() != 0:
            raise RuntimeError(f"gzip failed writing {out}")
    data = hashlib.sha256()
    with open(tmp, "rb") as f:
        while block := f.read(1 << 20):
            data.update(block)
    os.replace(tmp, out)
    return Layer(
        str(out),
        "sha256:" + data.hexdigest(),
        "sha256:" + hw.sha.hexdigest(),
        out.stat().st_size,
        hw.n,
        count,
        what,
    )


def walk_entries(root: Path, prefix: str = "") -> Iterator[Entry]:
    """Every path under root (root itself excluded), sorted, as layer entries."""
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            arc = os.path.normpath(os.path.join(prefix, rel, name))
            yield arc, p, None
        # symlinks to directories are listed in dirs by os.walk but not followed: fine


def _whiteout(arcname: str) -> Entry:
    parent, _, name = arcname.rpartition("/")
    wh = f"{parent}/.wh.{name}" if parent else f".wh.{name}"
    ti = tarfile.TarInfo(wh)
    ti.mtime = int(EPOCH)
    return wh, None, ti


def _same(a: Path, b: Path, sa: os.stat_result, sb: os.stat_result) -> bool:
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or sa.st_mode != sb.st_mode:
        return False
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISREG(sa.st_mode):
        return sa.st_size == sb.st_size and filecmp.cmp(a, b, shallow=False)
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev == sb.st_rdev
    return True  # directories, fifos: same type and mode


def diff_entries(old: Path, new: Path) -> tuple[list[Entry], int, int]:
    """Layer entries turning tree ``old`` into tree ``new``: changed/added paths (with their
    parent directories) and whiteouts for removed ones. Returns (entries, changed, removed)."""
    changed: set[str] = set()
    removed: list[str] = []
    for dirpath, dirs, files in os.walk(new):
        rel = os.path.relpath(dirpath, new)
        for name in dirs + files:
            r = os.path.normpath(os.path.join(rel, name))
            n, o = new / r, old / r
            sn = n.lstat()
            try:
                so = o.lstat()
            except FileNotFoundError:
                changed.add(r)
                continue
            if stat.S_ISDIR(sn.st_mode) and stat.S_ISDIR(so.st_mode):
                if sn.st_mode != so.st_mode or (sn.st_uid, sn.st_gid) != (so.st_uid, so.st_gid):
                    changed.add(r)
                continue
            if not _same(o, n, so, sn):
                changed.add(r)
    for dirpath, dirs, files in os.walk(old):
        rel = os.path.relpath(dirpath, old)
        keep = []
        for name in dirs + files:
            r = os.path.normpath(os.path.join(rel, name))
            if not os.path.lexists(new / r):
                removed.append(r)
            elif name in dirs:
                keep.append(name)
        dirs[:] = keep  # no need to descend into removed directories
    # a directory that changed type (dir -> other or back) is in `changed`; its old children
    # vanish with it, a new directory's children are all new, so no opaque markers are needed
    wanted = set(changed)
    for r in list(changed):
        parent = os.path.dirname(r)
        while parent:
            wanted.add(parent)
            parent = os.path.dirname(parent)
    for r in removed:
        parent = os.path.dirname(r)
        while parent:
            wanted.add(parent)
            parent = os.path.dirname(parent)
    entries: list[Entry] = [(r, new / r, None) for r in sorted(wanted)]
    entries += [_whiteout(r) for r in sorted(removed)]
    entries.sort(key=lambda e: e[0])
    return entries, len(changed), len(removed)


def write_layout(layers: list[Layer], layout: Path, cmd: list[str]) -> None:
    """An OCI image layout (tag "latest") whose blobs are hard links to the layer files."""
    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for layer in layers:
        target = blobs / layer.digest.split(":", 1)[1]
        if not target.exists():
            os.link(layer.file, target)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Cmd": cmd,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            },
            "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
            "history": [{"created_by": x.what} for x in layers],
        }
    ).encode()
    cdig = hashlib.sha256(config).hexdigest()
    (blobs / cdig).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + cdig,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": x.digest,
                    "size": x.size,
                }
                for x in layers
            ],
        }
    ).encode()
    mdig = hashlib.sha256(manifest).hexdigest()
    (blobs / mdig).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + mdig,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    }
                ],
            }
        )
    )


def _count_files(*roots: Path) -> int:
    n = 0
    for root in roots:
        for _dirpath, _dirs, files in os.walk(root):
            n += sum(1 for f in files if not f.startswith(".wh."))
    return n


def _load(base: Path) -> Image | None:
    meta = base / "image.json"
    if not meta.exists():
        return None
    doc = json.loads(meta.read_text())
    doc["layers"] = [Layer(**x) for x in doc["layers"]]
    img = Image(**doc)
    if all(Path(x.file).exists() for x in img.layers) and Path(img.layout, "index.json").exists():
        return img
    return None


def _save(base: Path, img: Image) -> Image:
    (base / "image.json").write_text(json.dumps(asdict(img), indent=1))
    return img


def _run(
    cmd: list[str], log: Log, what: str, logfile: Path, env: dict[str, str] | None = None
) -> None:
    t0 = time.monotonic()
    with open(logfile, "wb") as out:
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
        raise NotAvailable(f"{what} failed (exit {r.returncode}): {' | '.join(tail)}")
    log(f"  {what}: {time.monotonic() - t0:.1f} s")


# -- the Debian image --------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    paths = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for p in paths:
        try:
            text = p.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "debian" in line and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "/debian" in line and "security" not in line:
                parts = [x for x in line.split() if x.startswith("http")]
                if parts:
                    return parts[0]
    return "http://deb.debian.org/debian"


def _fresh(target: Path, log: Log) -> Path | None:
    """None when `target` was built before (its `.done` marker exists); else a clean
    temporary path to build it in."""
    if target.is_dir() and (target.parent / (target.name + ".done")).exists():
        log(f"  using cached {target}")
        return None
    tmp = target.with_name(target.name + ".tmp")
    for p in (tmp, target):
        if p.exists():
            shutil.rmtree(p)
    return tmp


def _mmdebstrap(target: Path, include: list[str], log: Log) -> None:
    tmp = _fresh(target, log)
    if tmp is None:
        return
    cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet"]
    if include:
        cmd.append("--include=" + ",".join(include))
    cmd += [SUITE, str(tmp), f"deb {debian_mirror()} {SUITE} main"]
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    _run(
        cmd,
        log,
        f"mmdebstrap {SUITE} minbase{' + ' + ','.join(include) if include else ''}",
        target.parent / f"{target.name}.log",
        env,
    )
    tmp.rename(target)
    (target.parent / (target.name + ".done")).write_text("ok\n")


def _pip_target(target: Path, packages: list[str], log: Log) -> None:
    tmp = _fresh(target, log)
    if tmp is None:
        return
    cmd = [
        shutil.which("pip3") or "pip3",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(tmp),
        "--platform",
        "manylinux2014_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--only-binary=:all:",
        *packages,
    ]
    _run(
        cmd,
        log,
        f"pip install --target ({', '.join(packages)})",
        target.parent / f"{target.name}.log",
    )
    shutil.rmtree(tmp / "bin", ignore_errors=True)  # console scripts point at the host python
    tmp.rename(target)
    (target.parent / (target.name + ".done")).write_text("ok\n")


def prepare_debian(workdir: Path, log: Log) -> Image:
    base = workdir / "images" / "debian"
    img = _load(base)
    if img is not None:
        log(f"using cached image {img.summary()}")
        return img
    if shutil.which("mmdebstrap") is None:
        raise NotAvailable("mmdebstrap is not installed")
    if os.geteuid() != 0:
        raise NotAvailable("mmdebstrap --mode=root needs root")
    if shutil.which("pip3") is None:
        raise NotAvailable("no host pip3 for the /app layer")
    base.mkdir(parents=True, exist_ok=True)
    log(f"preparing the Debian {SUITE} image under {base} (mirror {debian_mirror()}) ...")
    minbase, py, app = base / "minbase", base / "python", base / "app"
    _mmdebstrap(minbase, [], log)
    _mmdebstrap(py, ["python3"], log)
    _pip_target(app, PIP_PACKAGES, log)
    layers_dir = base / "layers"
    layers_dir.mkdir(exist_ok=True)
    t0 = time.monotonic()
    l1 = write_layer(
        walk_entries(minbase),
        layers_dir / "1-minbase.tar.gz",
        f"mmdebstrap --variant=minbase {SUITE}",
    )
    entries, changed, removed = diff_entries(minbase, py)
    log(f"  layer 2 = diff minbase -> +python3: {changed} changed/added, {removed} removed")
    l2 = write_layer(
        entries,
        layers_dir / "2-python3.tar.gz",
        f"mmdebstrap --variant=minbase --include=python3 {SUITE} (diff)",
    )
    app_dir = tarfile.TarInfo("app")
    app_dir.type, app_dir.mode, app_dir.mtime = tarfile.DIRTYPE, 0o755, int(EPOCH)
    l3 = write_layer(
        [("app", None, app_dir), *walk_entries(app, "app")],
        layers_dir / "3-app.tar.gz",
        "pip install --target /app " + " ".join(PIP_PACKAGES),
    )
    l4 = write_layer(
        _deletions_layer(py),
        layers_dir / "4-deletions.tar.gz",
        "rm -rf /usr/share/{doc,man,info} /var/log/*; add /etc/motd, /app/BENCHMARK",
    )
    log(f"  wrote 4 layers in {time.monotonic() - t0:.1f} s")
    layers = [l1, l2, l3, l4]
    write_layout(layers, base / "oci", ["/usr/bin/python3"])
    files = _count_files(py, app)
    img = Image(
        "debian",
        f"Debian {SUITE} minbase + python3 + /app ({', '.join(PIP_PACKAGES)})",
        str(base / "oci"),
        layers,
        files,
        has_python=True,
    )
    log(f"  {img.summary()}")
    return _save(base, img)


def _deletions_layer(py: Path) -> list[Entry]:
    def d(name: str) -> Entry:
        src = py / name
        return name, src, None

    out: list[Entry] = [d("etc")]
    motd = tarfile.TarInfo("etc/motd")
    body = b"nydus benchmark image\n"
    motd.size, motd.mode, motd.mtime = len(body), 0o644, int(EPOCH)
    out.append(("etc/motd", body, motd))
    out += [d("usr"), d("usr/share")]
    for name in ("doc", "man", "info"):
        if (py / "usr/share" / name).exists():
            out.append(_whiteout(f"usr/share/{name}"))
    out += [d("var"), d("var/log")]
    opq = tarfile.TarInfo("var/log/.wh..wh..opq")
    opq.mtime = int(EPOCH)
    out.append(("var/log/.wh..wh..opq", None, opq))
    app = tarfile.TarInfo("app")
    app.type, app.mode, app.mtime = tarfile.DIRTYPE, 0o755, int(EPOCH)
    out.append(("app", None, app))
    mark = tarfile.TarInfo("app/BENCHMARK")
    mark.size, mark.mode, mark.mtime = len(body), 0o644, int(EPOCH)
    out.append(("app/BENCHMARK", body, mark))
    return out


# -- many small files --------------------------------------------------------------------------------


def prepare_smallfiles(workdir: Path, log: Log) -> Image:
    base = workdir / "images" / "smallfiles"
    img = _load(base)
    if img is not None:
        log(f"using cached image {img.summary()}")
        return img
    deb = workdir / "images" / "debian"
    app = deb / "app"
    if not (deb / "app.done").exists():
        base.mkdir(parents=True, exist_ok=True)
        _pip_target(app, PIP_PACKAGES, log)
    per_copy = _count_files(app)
    copies = max(1, -(-SMALLFILES_MIN // per_copy))
    log(f"preparing the small-files image: {copies} copies of a {per_copy}-file site-packages tree")
    base.mkdir(parents=True, exist_ok=True)
    (base / "layers").mkdir(exist_ok=True)
    layers = []
    for i in range(copies):
        sp = tarfile.TarInfo("site")
        sp.type, sp.mode, sp.mtime = tarfile.DIRTYPE, 0o755, int(EPOCH)
        top = tarfile.TarInfo(f"site/copy{i}")
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, int(EPOCH)
        layers.append(
            write_layer(
                [
                    ("site", None, sp),
                    (f"site/copy{i}", None, top),
                    *walk_entries(app, f"site/copy{i}"),
                ],
                base / "layers" / f"copy{i}.tar.gz",
                f"copy {i} of site-packages",
            )
        )
    write_layout(layers, base / "oci", ["/bin/sh"])
    img = Image(
        "smallfiles",
        f"{copies} x site-packages ({', '.join(PIP_PACKAGES)})",
        str(base / "oci"),
        layers,
        per_copy * copies,
        has_python=False,
    )
    log(f"  {img.summary()}")
    return _save(base, img)


# -- the quick (generated) image ----------------------------------------------------------------------


def prepare_quick(workdir: Path, log: Log) -> Image:
    """A few MB in three layers: 'lib' files, an 'app' with modules, an update with whiteouts."""
    base = workdir / "images" / "quick"
    img = _load(base)
    if img is not None:
        log(f"using cached image {img.summary()}")
        return img
    log(f"generating the quick image under {base} ...")
    if base.exists():
        shutil.rmtree(base)
    src = base / "src"
    rng = random.Random(5)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(500)
    ]

    def text(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        return bytes(out[:n])

    l1, l2, l3 = src / "l1", src / "l2", src / "l3"
    for i in range(40):
        p = l1 / "usr" / "lib" / f"lib{i}.so"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text(rng.randint(20_000, 120_000)) if i % 2 else os.urandom(60_000))
    (l1 / "etc").mkdir()
    (l1 / "etc" / "hostname").write_text("quick\n")
    (l1 / "etc" / "old.conf").write_text("old\n")
    (l1 / "bin").symlink_to("usr/bin")
    (l1 / "usr" / "bin").mkdir()
    workload = []
    for pkg in range(12):
        for mod in range(15):
            p = l2 / "app" / f"pkg{pkg}" / f"mod{mod}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(text(rng.randint(500, 12_000)))
            if pkg % 2 == 0 and mod < 5:
                workload.append(f"app/pkg{pkg}/mod{mod}.py")
    workload += ["usr/lib/lib1.so", "usr/lib/lib2.so", "etc/hostname"]
    (l3 / "etc").mkdir(parents=True)
    (l3 / "etc" / ".wh.old.conf").write_bytes(b"")
    (l3 / "etc" / "motd").write_text("quick benchmark image\n")
    (l3 / "app" / "pkg11").mkdir(parents=True)
    (l3 / "app" / "pkg11" / ".wh..wh..opq").write_bytes(b"")
    (l3 / "app" / "pkg11" / "new.py").write_text("print('new')\n")
    (base / "layers").mkdir()
    layers = [
        write_layer(walk_entries(d), base / "layers" / f"{d.name}.tar.gz", f"generated {d.name}")
        for d in (l1, l2, l3)
    ]
    write_layout(layers, base / "oci", ["/bin/sh"])
    img = Image(
        "quick",
        "generated tree (no python)",
        str(base / "oci"),
        layers,
        _count_files(l1, l2, l3),
        has_python=False,
        workload_files=workload,
    )
    log(f"  {img.summary()}")
    return _save(base, img)


def prepare(name: str, workdir: Path, log: Log) -> Image:
    return {"debian": prepare_debian, "smallfiles": prepare_smallfiles, "quick": prepare_quick}[
        name
    ](workdir, log)


# -- registry session ---------------------------------------------------------------------------------


@dataclass
class Converted:
    ref: str  # host/repo:tag
    repo: str
    tag: str
    bootstrap_layer: dict[str, Any]  # descriptor of the bootstrap layer
    blobs: list[dict[str, Any]]  # descriptors of the data blob layers
    seconds: float  # wall time of the nydusify convert that made it
    bootstrap_file: Path  # nydusify's local bootstrap (for chunk accounting only)

    @property
    def size(self) -> int:
        return self.bootstrap_layer["size"] + sum(b["size"] for b in self.blobs)


class Session:
    """One local registry per benchmark run; images pushed and converted on demand."""

    def __init__(self, workdir: Path, log: Log) -> None:
        from tests.registry_fixture import registry_available, start_registry

        if not registry_available():
            raise NotAvailable("docker-registry (Debian) is not installed")
        if shutil.which("skopeo") is None:
            raise NotAvailable("skopeo is not installed")
        self.workdir = workdir
        self.log = log
        self.dir = workdir / f"session-{os.getpid()}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.reg = start_registry(self.dir / "registry")
        self.host = self.reg.host
        log(f"local registry (docker-registry) at {self.host}")
        self.images: dict[str, Image] = {}
        self.pushed: set[str] = set()
        self.converted: dict[tuple[str, str], Converted] = {}
        atexit.register(self.close)

    def close(self) -> None:
        self.reg.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def image(self, name: str) -> Image:
        if name not in self.images:
            self.images[name] = prepare(name, self.workdir, self.log)
        return self.images[name]

    def push(self, name: str) -> str:
        """Push an image as <host>/<name>:latest with skopeo; return the reference."""
        ref = f"{self.host}/{name}:latest"
        if name in self.pushed:
            return ref
        img = self.image(name)
        t0 = time.monotonic()
        r = subprocess.run(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{img.layout}:latest",
                f"docker://{ref}",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"skopeo copy to {ref} failed: {r.stderr.strip()}")
        self.log(
            f"pushed {ref} with skopeo ({img.compressed / MB:.1f} MB) in {time.monotonic() - t0:.1f} s"
        )
        self.pushed.add(name)
        return ref

    def convert(self, name: str, compressor: str = "zstd", tag: str | None = None) -> Converted:
        """``nydusify convert`` <name>:latest -> <name>:<tag>; cached per (name, tag)."""
        tag = tag or f"nydus-{compressor}"
        key = (name, tag)
        if key in self.converted:
            return self.converted[key]
        source = self.push(name)
        target = f"{self.host}/{name}:{tag}"
        work = self.dir / "convert" / f"{name}-{tag}"
        if work.exists():
            shutil.rmtree(work)
        t0 = time.monotonic()
        r = subprocess.run(
            [
                str(BIN / "nydusify"),
                "convert",
                "--source",
                source,
                "--target",
                target,
                "--source-insecure",
                "--target-insecure",
                "--compressor",
                compressor,
                "--work-dir",
                str(work),
            ],
            capture_output=True,
            text=True,
        )
        secs = time.monotonic() - t0
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            raise RuntimeError(f"nydusify convert {source} -> {target} failed: {tail}")
        conv = self._describe(name, tag, secs, work)
        self.log(
            f"converted {source} -> {target} ({compressor}) in {secs:.1f} s: "
            f"{conv.size / MB:.1f} MB (bootstrap {conv.bootstrap_layer['size'] / MB:.2f} MB)"
        )
        self.converted[key] = conv
        return conv

    def optimize(
        self, name: str, workload: list[str] | None, files: list[str] | None = None
    ) -> Converted:
        """``nydusify optimize`` of the zstd conversion of <name> with ``--workload`` (a
        command run in the image) or, without one, ``--prefetch-files`` listing ``files``;
        cached per name. The result keeps the conversion's bootstrap for chunk accounting."""
        key = (name, "nydus-optimized")
        if key in self.converted:
            return self.converted[key]
        conv = self.convert(name, "zstd")
        target = f"{self.host}/{name}:nydus-optimized"
        work = self.dir / "optimize" / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        args = [
            str(BIN / "nydusify"),
            "optimize",
            "--source",
            conv.ref,
            "--target",
            target,
            "--source-insecure",
            "--target-insecure",
            "--work-dir",
            str(work),
        ]
        if workload is not None:
            args += ["--workload", shlex.join(workload), "--workload-timeout", "600"]
        else:
            listing = work / "prefetch.files"
            listing.write_text("".join(f"{f}\n" for f in files or []))
            args += ["--prefetch-files", str(listing)]
        t0 = time.monotonic()
        r = subprocess.run(args, capture_output=True, text=True)
        secs = time.monotonic() - t0
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            raise RuntimeError(f"nydusify optimize {conv.ref} -> {target} failed: {tail}")
        out = json.loads(r.stdout)
        opt = self._describe(name, "nydus-optimized", secs, work)
        opt.bootstrap_file = conv.bootstrap_file
        self.log(
            f"optimized {conv.ref} -> {target} in {secs:.1f} s: prefetch blob of "
            f"{out['files']} files, {out['chunks']} chunks, {out['prefetch_blob_size'] / MB:.1f} MB"
        )
        self.converted[key] = opt
        return opt

    def _describe(self, name: str, tag: str, secs: float, work: Path) -> Converted:
        from nydus.oci.registry import RegistryClient

        with RegistryClient(self.host, insecure=True) as client:
            m = json.loads(client.get_manifest(name, tag).data)
            if "manifests" in m:  # an index: take the linux/amd64 manifest
                d = m["manifests"][0]
                m = json.loads(client.get_manifest(name, d["digest"]).data)
        boot = [
            x
            for x in m["layers"]
            if x.get("annotations", {}).get("containerd.io/snapshot/nydus-bootstrap") == "true"
        ]
        if not boot:
            raise RuntimeError(f"{name}:{tag}: no bootstrap layer in the manifest")
        blobs = [x for x in m["layers"] if x not in boot]
        files = list(work.rglob("bootstrap"))
        return Converted(
            f"{self.host}/{name}:{tag}",
            name,
            tag,
            boot[0],
            blobs,
            secs,
            files[0] if files else Path(),
        )


if __name__ == "__main__":  # prepare the images ahead of a run: python benchmarks/images.py [DIR]
    wd = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/var/tmp/nydus-bench/full")
    for n in ("debian", "smallfiles"):
        try:
            print(prepare(n, wd, print).summary())
        except NotAvailable as exc:
            print(f"{n}: not available: {exc}")
