"""`nydusify check`: validate a Nydus image in a registry (interfaces.md §1, §2.2).

Three rules, in upstream's order:

* manifest: the target manifest (chosen by platform from an index; with `multi_platform` the
  merged index of `--merge-platform` with a Nydus entry) has the bootstrap layer last with
  `nydus-bootstrap: "true"` and a gzip tar media type, every other layer is a Nydus blob with
  `nydus-blob: "true"`, one config diff id per layer (a blob's diff id is its digest), and the
  image config (`config.config`) equals the source's;
* bootstrap: the bootstrap layer's diff id is right, its `image/image.boot` is a valid RAFS
  bootstrap (`nydus-image check`), and every blob of its blob table is a blob layer of the
  manifest that the registry has;
* filesystem (with a source image): the target mounted by our nydusd straight from the
  registry (registry backend, digest validation on) equals the source image unpacked with its
  whiteouts applied, entry by entry: type, mode, uid, gid, size, rdev, symlink target,
  xattrs and content digest.

What was fetched is written under `<work_dir>/{source,target}/` as upstream does.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from nydus.builder.check import CheckReport, check_bootstrap
from nydus.converter.bootstrap_layer import read_bootstrap_layer
from nydus.converter.convert import file_digest
from nydus.converter.unpack import IterReader, Unpacker, open_layer_stream
from nydus.daemon.process import NydusdCommand, NydusdProcess, StartError, find_nydusd, start_nydusd
from nydus.errors import FormatError, NydusError
from nydus.format.rafs import open_bootstrap
from nydus.kernel.mounts import unmount_all
from nydus.oci import mediatypes as mt
from nydus.oci.auth import load_credentials
from nydus.oci.manifest import (
    Index,
    Manifest,
    Platform,
    host_platform,
    is_nydus_index_entry,
    is_nydus_manifest,
    parse_manifest,
)
from nydus.oci.reference import Reference
from nydus.oci.registry import RegistryClient

__all__ = ["CheckError", "CheckOptions", "CheckResult", "FsReport", "check", "compare_trees"]

log = logging.getLogger("nydus.converter")

MAX_LISTED = 10  # differences named in the error message
IGNORED_XATTRS = frozenset({b"security.selinux"})


class CheckError(NydusError):
    pass


@dataclass
class CheckOptions:
    source: str | None
    target: str
    source_insecure: bool = False
    target_insecure: bool = False
    platform: str | None = None  # os/arch[/variant]; default linux/<host arch>
    work_dir: str = "./output"
    multi_platform: bool = False  # require the merged index of --merge-platform
    nydusd: str | None = None  # default: the nydusd beside this interpreter, then PATH
    mount_timeout: float = 60.0
    # where the blobs live when not in the registry (convert --backend-type): s3, oss, localfs
    target_backend_type: str | None = None
    target_backend_config: dict[str, Any] | None = None


@dataclass
class FsReport:
    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    differences: int = 0
    diffs: list[str] = field(default_factory=list)  # the first ones, readable


@dataclass
class CheckResult:
    manifest_digest: str
    blob_ids: list[str]
    bootstrap_version: int
    fs: FsReport | None = None


@dataclass
class FetchedImage:
    """What was fetched for one reference."""

    ref: Reference
    index: Index | None
    index_data: bytes | None
    manifest: Manifest
    manifest_data: bytes
    manifest_digest: str
    config: dict[str, Any]


def check(o: CheckOptions) -> CheckResult:
    try:
        platform = Platform.parse(o.platform) if o.platform else host_platform()
        tref = Reference.parse(o.target)
        sref = Reference.parse(o.source) if o.source else None
    except NydusError as exc:
        raise CheckError(str(exc)) from None
    work = Path(o.work_dir)
    src_dir, dst_dir, fs_dir = work / "source", work / "target", work / "fs"
    _clean(fs_dir)
    for d in (src_dir, dst_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    tclient = RegistryClient.for_reference(tref, skip_verify=o.target_insecure)
    sclient = None
    try:
        log.info("Parsing image %s", o.target)
        target = fetch_image(tclient, tref, platform, nydus=True, multi=o.multi_platform)
        _dump(dst_dir, "nydus", target)
        source = None
        if sref is not None:
            sclient = (
                tclient
                if sref.host == tref.host and o.source_insecure == o.target_insecure
                else RegistryClient.for_reference(sref, skip_verify=o.source_insecure)
            )
            log.info("Parsing image %s", o.source)
            source = fetch_image(sclient, sref, platform, nydus=False, multi=False)
            _dump(src_dir, "oci", source)
        log.info("Checking Nydus manifest")
        _manifest_rule(target, source)
        log.info("Checking Nydus bootstrap")
        boot_path, report = _bootstrap_rule(tclient, target, dst_dir)
        _external_blobs_rule(o, target, report)
        result = CheckResult(
            target.manifest_digest, [b.blob_id for b in report.blobs], report.version
        )
        if source is not None and sclient is not None:
            log.info("Checking filesystem of %s against %s", o.target, o.source)
            result.fs = _filesystem_rule(o, sclient, source, tclient, target, boot_path, fs_dir)
        else:
            log.info("Skipping filesystem check: no --source given")
    finally:
        if sclient is not None and sclient is not tclient:
            sclient.close()
        tclient.close()
    log.info("Verified Nydus image %s", o.target)
    return result


# -- fetching ---------------------------------------------------------------------------------


def fetch_image(
    client: RegistryClient, ref: Reference, platform: Platform, *, nydus: bool, multi: bool
) -> FetchedImage:
    """The manifest of `ref` for `platform`: the Nydus one (`nydus`) or the OCI one."""
    what = "target" if nydus else "source"
    top = client.get_manifest(ref.repo, ref.ref)
    doc = parse_manifest(top.data, top.media_type)
    if isinstance(doc, Manifest):
        if multi:
            raise CheckError(
                f"{what} image {ref} is a single manifest, not the merged index "
                "--multi-platform requires (convert with --merge-platform)"
            )
        if not nydus and is_nydus_manifest(doc):
            raise CheckError(
                f"source image {ref} is a Nydus image; give the OCI image it was converted from"
            )
        return _with_config(client, ref, None, None, doc, top.data, top.digest)
    candidates = [
        e
        for e in doc.manifests
        if e.platform is not None and platform.matches(e.platform) and mt.is_manifest(e.media_type)
    ]
    have = ", ".join(sorted({str(e.platform) for e in doc.manifests if e.platform})) or "none"
    if not candidates:
        raise CheckError(
            f"{what} index {ref} has no manifest for platform {platform} (platforms: {have})"
        )
    marked = [e for e in candidates if is_nydus_index_entry(e)]
    if multi:
        if not marked:
            raise CheckError(
                f"{what} index {ref} has no Nydus manifest (artifactType "
                f"{mt.NYDUS_MANIFEST_ARTIFACT}) for platform {platform}"
            )
        if len(marked) == len(candidates):
            raise CheckError(
                f"{what} index {ref} has no OCI manifest for platform {platform} "
                "beside the Nydus one"
            )
    ordered = (
        marked + [e for e in candidates if e not in marked]
        if nydus
        else [e for e in candidates if e not in marked]
    )
    for entry in ordered:
        fetched = client.get_manifest(ref.repo, entry.digest)
        manifest = Manifest.from_json(fetched.data)
        if is_nydus_manifest(manifest) == nydus:
            return _with_config(client, ref, doc, top.data, manifest, fetched.data, fetched.digest)
    kind = "Nydus" if nydus else "non-Nydus (OCI)"
    raise CheckError(f"{what} index {ref} has no {kind} manifest for platform {platform}")


def _with_config(
    client: RegistryClient,
    ref: Reference,
    index: Index | None,
    index_data: bytes | None,
    manifest: Manifest,
    data: bytes,
    digest: str,
) -> FetchedImage:
    raw = client.read_blob(ref.repo, manifest.config.digest)
    try:
        config = json.loads(raw)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - caught just below
    except ValueError as exc:
        raise CheckError(f"image config {manifest.config.digest} of {ref}: {exc}") from None
    return FetchedImage(ref, index, index_data, manifest, data, digest, config)


def _dump(directory: Path, kind: str, image: FetchedImage) -> None:
    def write(name: str, data: bytes | dict[str, Any]) -> None:
        obj = json.loads(data) if isinstance(data, bytes) else data
        (directory / name).write_text(json.dumps(obj, indent=2) + "\n")

    log.info(
        "Dumping %s manifest and config to %s",
        kind.upper() if kind == "oci" else "Nydus",
        directory,
    )
    if image.index_data is not None:
        write(f"{kind}_index.json", image.index_data)
    write(f"{kind}_manifest.json", image.manifest_data)
    write(f"{kind}_config.json", image.config)


# -- manifest rule ----------------------------------------------------------------------------


def _manifest_rule(target: FetchedImage, source: FetchedImage | None) -> None:
    m = target.manifest
    problems: list[str] = []
    if not m.layers:
        raise CheckError(f"invalid Nydus manifest {target.manifest_digest}: no layers")
    last = m.layers[-1]
    if not any(
        mt.NYDUS_BOOTSTRAP_ANNOTATION in x.annotations or mt.NYDUS_BLOB_ANNOTATION in x.annotations
        for x in m.layers
    ):
        raise CheckError(
            f"{target.ref} ({target.manifest_digest}) is not a Nydus image: no "
            f"layer has a {mt.NYDUS_BOOTSTRAP_ANNOTATION} or "
            f"{mt.NYDUS_BLOB_ANNOTATION} annotation"
        )
    value = last.annotations.get(mt.NYDUS_BOOTSTRAP_ANNOTATION)
    if value != "true":
        problems.append(
            f"last layer {last.digest} is not a bootstrap layer: annotation "
            f'{mt.NYDUS_BOOTSTRAP_ANNOTATION} is {value!r}, want "true"'
        )
    if last.media_type not in mt.BOOTSTRAP_LAYER_TYPES:
        problems.append(
            f"bootstrap layer {last.digest} has media type {last.media_type!r}, "
            f"want one of {', '.join(sorted(mt.BOOTSTRAP_LAYER_TYPES))}"
        )
    fs_version = last.annotations.get(mt.NYDUS_FS_VERSION_ANNOTATION)
    if fs_version not in (None, "5", "6"):
        problems.append(
            f"bootstrap layer annotation {mt.NYDUS_FS_VERSION_ANNOTATION} is "
            f'{fs_version!r}, want "5" or "6"'
        )
    for i, layer in enumerate(m.layers[:-1]):
        if layer.media_type != mt.NYDUS_BLOB:
            problems.append(
                f"layer {i} ({layer.digest}) has media type {layer.media_type!r}, "
                f"want {mt.NYDUS_BLOB}"
            )
        blob = layer.annotations.get(mt.NYDUS_BLOB_ANNOTATION)
        if blob != "true":
            problems.append(
                f"layer {i} ({layer.digest}): annotation "
                f'{mt.NYDUS_BLOB_ANNOTATION} is {blob!r}, want "true"'
            )
    diff_ids = (target.config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(m.layers):
        problems.append(f"config has {len(diff_ids)} rootfs.diff_ids for {len(m.layers)} layers")
    else:
        for i, (layer, diff_id) in enumerate(zip(m.layers[:-1], diff_ids, strict=False)):
            if mt.NYDUS_REF_ANNOTATION not in layer.annotations and diff_id != layer.digest:
                problems.append(
                    f"layer {i}: diff id {diff_id} is not the blob digest {layer.digest}"
                )
    if source is not None:
        a, b = _runtime_config(source.config), _runtime_config(target.config)
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"image config differs from the source's in {', '.join(keys)}")
    if problems:
        raise CheckError(
            f"invalid Nydus manifest {target.manifest_digest}: "
            + "; ".join(problems[:MAX_LISTED])
            + (f"; ... {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else "")
        )
    log.info(
        "Nydus manifest %s is valid: %d blob layers and a bootstrap layer",
        target.manifest_digest,
        len(m.layers) - 1,
    )


def _runtime_config(config: dict[str, Any]) -> dict[str, Any]:
    body = dict(config.get("config") or {})
    body.pop("ArgsEscaped", None)
    return body


# -- bootstrap rule ---------------------------------------------------------------------------


def _bootstrap_rule(
    client: RegistryClient, target: FetchedImage, out_dir: Path
) -> tuple[Path, CheckReport]:
    m, repo = target.manifest, target.ref.repo
    layer = m.layers[-1]
    log.info("Pulling Nydus bootstrap %s", layer.digest)
    gz = client.read_blob(repo, layer.digest)
    problems: list[str] = []
    try:
        tar = gzip.decompress(gz)
    except (OSError, EOFError, zlib.error) as exc:
        raise CheckError(f"bootstrap layer {layer.digest} is not gzip: {exc}") from None
    diff_ids = (target.config.get("rootfs") or {}).get("diff_ids") or []
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    if diff_ids and diff_ids[-1] != diff_id:
        problems.append(f"bootstrap layer diff id is {diff_id}, the config says {diff_ids[-1]}")
    try:
        boot = read_bootstrap_layer(gz)
    except FormatError as exc:
        raise CheckError(f"bootstrap layer {layer.digest}: {exc}") from None
    boot_path = out_dir / "nydus_bootstrap" / "image" / "image.boot"
    boot_path.parent.mkdir(parents=True, exist_ok=True)
    boot_path.write_bytes(boot)
    try:
        report = check_bootstrap(open_bootstrap(boot))
    except (FormatError, ValueError, IndexError) as exc:
        raise CheckError(
            f"bootstrap {boot_path} (layer {layer.digest}) is invalid: {exc}"
        ) from None
    for line in report.summary_lines():
        log.debug("%s", line.strip())
    version = layer.annotations.get(mt.NYDUS_FS_VERSION_ANNOTATION)
    if version is not None and version != str(report.version):
        problems.append(
            f"bootstrap is RAFS v{report.version} but the layer annotation "
            f"{mt.NYDUS_FS_VERSION_ANNOTATION} says {version!r}"
        )
    blob_layers = m.layers[:-1]
    zran = any(mt.NYDUS_REF_ANNOTATION in x.annotations for x in blob_layers)
    if blob_layers and not zran:
        hexes = {x.digest.split(":", 1)[1] for x in blob_layers}
        for b in report.blobs:
            if b.blob_id not in hexes:
                problems.append(
                    f"blob {b.blob_id} of the bootstrap's blob table is not a blob "
                    "layer of the manifest"
                )
    for x in {x.digest: x for x in blob_layers}.values():
        size = client.stat_blob(repo, x.digest)
        if size is None:
            problems.append(f"blob layer {x.digest} is missing from {target.ref.name}")
        elif size >= 0 and size != x.size:
            problems.append(
                f"blob layer {x.digest} has {size} bytes in the registry, the "
                f"manifest says {x.size}"
            )
    (out_dir / "nydus_output.json").write_text(
        json.dumps(
            {
                "version": report.version,
                "inodes": report.inodes,
                "entries": report.entries,
                "blobs": [b.blob_id for b in report.blobs],
            },
            indent=2,
        )
        + "\n"
    )
    if problems:
        raise CheckError(f"invalid Nydus bootstrap layer {layer.digest}: " + "; ".join(problems))
    log.info(
        "Nydus bootstrap is valid: RAFS v%d, %d inodes, %d blobs",
        report.version,
        report.inodes,
        len(report.blobs),
    )
    return boot_path, report


def _external_blobs_rule(o: CheckOptions, target: FetchedImage, report: CheckReport) -> None:
    """Blobs kept in an external backend (no blob layers): each must be in that backend."""
    if len(target.manifest.layers) > 1 or not report.blobs:
        return
    if not o.target_backend_type:
        if o.source:
            raise CheckError(
                f"{o.target} keeps its blobs outside the registry (its manifest lists only "
                "the bootstrap): give --target-backend-type and --target-backend-config[-file]"
            )
        log.info("Blobs live in an external backend; not checked without --target-backend-type")
        return
    from nydus.config import parse_backend_config
    from nydus.storage import create_backend

    cfg = parse_backend_config(
        o.target_backend_type, o.target_backend_config or {}, "--target-backend-config"
    )
    backend = create_backend(cfg)
    missing = []
    try:
        for b in report.blobs:
            try:
                backend.size(b.blob_id)
            except NydusError as exc:
                missing.append(f"blob {b.blob_id}: {exc}")
    finally:
        backend.close()
    if missing:
        raise CheckError(
            f"blobs of {o.target} missing from the {o.target_backend_type} backend: "
            + "; ".join(missing[:MAX_LISTED])
        )
    log.info("All %d blobs are in the %s backend", len(report.blobs), o.target_backend_type)


# -- filesystem rule --------------------------------------------------------------------------


def _filesystem_rule(
    o: CheckOptions,
    sclient: RegistryClient,
    source: FetchedImage,
    tclient: RegistryClient,
    target: FetchedImage,
    boot_path: Path,
    fs_dir: Path,
) -> FsReport:
    src_root, mnt = fs_dir / "source", fs_dir / "target_mounted"
    mnt.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        unpacker = Unpacker(src_root)
        for layer in source.manifest.layers:
            log.info("Unpacking source layer %s", layer.digest)
            reader = IterReader(sclient.iter_blob(source.ref.repo, layer.digest))
            unpacker.apply_layer(open_layer_stream(reader), f"source layer {layer.digest}")
            reader.drain()  # the digest is verified at the end of the stream
        stats = unpacker.finish()
        log.info(
            "Unpacked %d source layers (%d entries, %d whiteouts) in %.1fs",
            stats.layers,
            stats.entries,
            stats.whiteouts,
            time.monotonic() - t0,
        )
        skipped = {os.fsencode(p.lstrip("/")) for p in stats.skipped_devices}
        log.info("Mounting Nydus image to %s", mnt)
        with _Nydusd(o, tclient, target.ref, boot_path, mnt, fs_dir):
            t0 = time.monotonic()
            report = compare_trees(src_root, mnt, skip_target_only=skipped)
            elapsed = time.monotonic() - t0
    finally:
        shutil.rmtree(src_root, ignore_errors=True)
    summary = (
        f"{report.entries} entries ({report.files} files, {report.dirs} directories, "
        f"{report.symlinks} symlinks, {report.others} other), {report.bytes} bytes of "
        f"file data compared in {elapsed:.1f}s"
    )
    if report.differences:
        raise CheckError(
            f"filesystem of {o.target} differs from {o.source}: "
            f"{report.differences} differences in {summary}; first: "
            + "; ".join(report.diffs[:MAX_LISTED])
        )
    log.info("Verified filesystem: %s", summary)
    return report


def _clean(fs_dir: Path) -> None:
    """Remove what an earlier check left in `fs_dir` (unmounting a stale mount first)."""
    mnt = fs_dir / "target_mounted"
    if not unmount_all(mnt):
        raise CheckError(f"{mnt} is still mounted from an earlier check")
    shutil.rmtree(fs_dir, ignore_errors=True)


def registry_backend(client: RegistryClient, ref: Reference, insecure: bool) -> dict[str, Any]:
    """nydusd's registry backend config for `ref` (scheme as `client` found it, credentials
    from the Docker config)."""
    backend: dict[str, Any] = {
        "scheme": "http" if client.scheme == "http" else "https",
        "host": ref.host,
        "repo": ref.repo,
        "skip_verify": insecure,
        "timeout": 30,
        "connect_timeout": 10,
        "retry_limit": 2,
    }
    creds = load_credentials(ref.host)
    if creds is not None and creds.registry_token:
        backend["registry_token"] = creds.registry_token
    elif creds is not None and creds.has_password:
        backend["auth"] = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    return backend


class _Nydusd:
    """nydusd mounting the target bootstrap over the registry backend; always unmounted."""

    def __init__(
        self,
        o: CheckOptions,
        client: RegistryClient,
        ref: Reference,
        bootstrap: Path,
        mnt: Path,
        fs_dir: Path,
    ) -> None:
        self.o, self.mnt = o, mnt
        self.config = fs_dir / "nydusd-registry.json"
        self.sock = fs_dir / "nydusd.sock"
        self.log_path = fs_dir / "nydusd.log"
        self.bootstrap = bootstrap
        backend = registry_backend(client, ref, o.target_insecure)
        backend_type = "registry"
        if o.target_backend_type:
            backend_type, backend = o.target_backend_type, dict(o.target_backend_config or {})
        self.cfg = {
            "device": {"backend": {"type": backend_type, "config": backend}},
            "mode": "direct",
            "digest_validate": True,
            "enable_xattr": True,
        }
        self.daemon: NydusdProcess | None = None

    def __enter__(self) -> Self:
        try:
            binary = find_nydusd(self.o.nydusd)
        except StartError:
            raise CheckError("nydusd not found (give --nydusd)") from None
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            json.dump(self.cfg, f)
        command = NydusdCommand(
            self.mnt,
            self.bootstrap,
            self.sock,
            config=self.config,
            log_level="warn",
            log_file=self.log_path,  # the same file: errors before --log-file applies too
            binary=binary,
        )
        try:
            self.daemon = start_nydusd(command, self.log_path, timeout=self.o.mount_timeout)
        except StartError as exc:
            self.__exit__()
            raise CheckError(str(exc)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        unmount_all(self.mnt)
        try:
            self.config.unlink()
        except OSError:
            pass
        try:
            self.mnt.rmdir()
        except OSError:
            pass


# -- tree comparison --------------------------------------------------------------------------

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _show(rel: bytes) -> str:
    return "/" + rel.decode("utf-8", "backslashreplace")


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        key = os.fsencode(name)
        if key in IGNORED_XATTRS:
            continue
        try:
            out[key] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            out[key] = f"<error {exc.strerror}>".encode()
    return out


def compare_trees(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    skip_target_only: set[bytes] | frozenset[bytes] = frozenset(),
    keep: int = 100,
    threads: int = 8,
) -> FsReport:
    """Compare every path of two trees (no symlink is followed); `skip_target_only` are
    relative paths allowed to exist only in the target (device nodes the unpack skipped).
    File contents are hashed by `threads` workers (a FUSE mount serves reads in parallel)."""
    report = FsReport()
    sroot, troot = os.fsencode(source), os.fsencode(target)

    def diff(text: str) -> None:
        report.differences += 1
        if len(report.diffs) < keep:
            report.diffs.append(text)

    def entry(rel: bytes) -> None:
        s_path = os.path.join(sroot, rel) if rel else sroot
        t_path = os.path.join(troot, rel) if rel else troot
        try:
            ss = os.lstat(s_path)
            ts = os.lstat(t_path)
        except OSError as exc:
            diff(f"{_show(rel)}: cannot stat: {exc.strerror}")
            return
        report.entries += 1
        kind = stat.S_IFMT(ss.st_mode)
        if kind != stat.S_IFMT(ts.st_mode):
            diff(
                f"{_show(rel)}: type {_KINDS.get(kind, '?')} != "
                f"{_KINDS.get(stat.S_IFMT(ts.st_mode), '?')}"
            )
            return
        checks: list[tuple[str, object, object]] = [
            ("uid", ss.st_uid, ts.st_uid),
            ("gid", ss.st_gid, ts.st_gid),
        ]
        if kind != stat.S_IFLNK:  # Linux creates every symlink 0777
            checks.insert(0, ("mode", oct(stat.S_IMODE(ss.st_mode)), oct(stat.S_IMODE(ts.st_mode))))
        if kind != stat.S_IFDIR:
            checks.append(("size", ss.st_size, ts.st_size))
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            checks.append(
                (
                    "rdev",
                    (os.major(ss.st_rdev), os.minor(ss.st_rdev)),
                    (os.major(ts.st_rdev), os.minor(ts.st_rdev)),
                )
            )
        if kind == stat.S_IFLNK:
            checks.append(("symlink target", os.readlink(s_path), os.readlink(t_path)))
        checks.append(("xattrs", _xattrs(s_path), _xattrs(t_path)))
        for name, a, b in checks:
            if a != b:
                diff(f"{_show(rel)}: {name} {a!r} != {b!r}")
        if kind == stat.S_IFREG:
            report.files += 1
            if ss.st_size == ts.st_size:
                contents.append(
                    (
                        rel,
                        pool.submit(file_digest, os.fsdecode(s_path)),
                        pool.submit(file_digest, os.fsdecode(t_path)),
                    )
                )
        elif kind == stat.S_IFDIR:
            report.dirs += 1
            walk(rel)
        elif kind == stat.S_IFLNK:
            report.symlinks += 1
        else:
            report.others += 1

    def walk(rel: bytes) -> None:
        s_dir = os.path.join(sroot, rel) if rel else sroot
        t_dir = os.path.join(troot, rel) if rel else troot
        try:
            names_s, names_t = set(os.listdir(s_dir)), set(os.listdir(t_dir))
        except OSError as exc:
            diff(f"{_show(rel)}: cannot list: {exc.strerror}")
            return
        for name in sorted(names_s | names_t):
            child = os.path.join(rel, name) if rel else name
            if name not in names_t:
                diff(f"{_show(child)}: only in the source")
            elif name not in names_s:
                if child not in skip_target_only:
                    diff(f"{_show(child)}: only in the target")
            else:
                entry(child)

    contents: list[tuple[bytes, Future[tuple[str, int]], Future[tuple[str, int]]]] = []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        entry(b"")
        for rel, fa, fb in contents:  # in walk order
            try:
                (da, n), (db, _) = fa.result(), fb.result()
            except OSError as exc:
                diff(f"{_show(rel)}: cannot read: {exc.strerror}")
                continue
            report.bytes += n
            if da != db:
                diff(f"{_show(rel)}: content {da} != {db}")
    return report
