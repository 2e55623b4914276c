"""`nydus-image`: create, merge, check, inspect, unpack, export, stat, optimize, compact,
chunkdict."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from nydus import __version__
from nydus.cli.common import parse_size, run_main, setup_logging
from nydus.errors import BuildError, NydusError

if TYPE_CHECKING:
    from nydus.config import BackendConfig
    from nydus.format.rafs import RafsSuper

log = logging.getLogger("nydus.image")

VERSION_TEXT = (
    f"Version: \tv{__version__}\nGit Commit: \tnone\nBuild Time: \tnone\n"
    f"Profile: \trelease\nRustc: \tnone (nydus-py, Python {sys.version.split()[0]})"
)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 1."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"ERROR - {self.prog}: {message}\n")
        raise SystemExit(1)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="nydus-image", description="Build, merge, check and inspect RAFS images")
    p.add_argument("-V", "--version", action="store_true", help="print version information")
    p.add_argument("-l", "--log-level", default="info")
    p.add_argument("-L", "--log-file")
    sub = p.add_subparsers(dest="cmd", parser_class=Parser)

    c = sub.add_parser(
        "create",
        help="create a RAFS filesystem from a directory or a tar layer",
        description="Create a RAFS v6 bootstrap and a Nydus data blob from a "
        "directory (dir-rafs) or an OCI layer tar (tar-rafs, targz-rafs).",
    )
    c.add_argument("source", nargs="?", help="source directory or tar file (may be a FIFO)")
    c.add_argument(
        "-t",
        "--type",
        "--source-type",
        dest="type",
        default="dir-rafs",
        help="source type: dir-rafs, tar-rafs, targz-rafs",
    )
    c.add_argument("-B", "--bootstrap", help="output bootstrap file")
    c.add_argument("-b", "--blob", help="output data blob file (or FIFO)")
    c.add_argument("-D", "--blob-dir", help="directory to save the blob as <dir>/<blob id>")
    c.add_argument(
        "--blob-inline-meta",
        "--inline-bootstrap",
        action="store_true",
        help="append the bootstrap and blob meta to the blob",
    )
    c.add_argument("--blob-id", help="(accepted for compatibility)")
    c.add_argument("--chunk-size", default="0x100000", help="chunk size (hex 0x... or decimal)")
    c.add_argument("--batch-size", default="0", help="only 0 is supported")
    c.add_argument("--compressor", default="zstd", help="none, lz4_block, zstd")
    c.add_argument("--digester", default="blake3", help="blake3, sha256")
    c.add_argument("-v", "--fs-version", default="6", help="RAFS version (6)")
    c.add_argument("--features", default="", help="comma separated: blob-toc")
    c.add_argument(
        "--chunk-dict", help="bootstrap=PATH: reference chunks of this dictionary, not store them"
    )
    c.add_argument("--parent-bootstrap", help="parent layer bootstrap")
    c.add_argument("--aligned-chunk", action="store_true", help="(v6 always aligns)")
    c.add_argument("--repeatable", action="store_true", help="no explicit uid/gid")
    c.add_argument("--whiteout-spec", default="oci", help="oci, overlayfs, none")
    c.add_argument(
        "--prefetch-policy", default="none", help="fs, blob, none; patterns are read from stdin"
    )
    c.add_argument("-J", "--output-json", help="write a JSON report")
    c.add_argument("-C", "--config", help="(accepted for compatibility)")
    c.add_argument("--backend-type", help="legacy: localfs")
    c.add_argument("--backend-config", help="legacy: '{\"dir\": DIR}' or '{\"blob_file\": F}'")
    c.add_argument("--blob-meta", help="(legacy, ignored)")
    c.add_argument("--disable-check", action="store_true")
    c.add_argument("-l", "--log-level", dest="sub_log_level")
    c.add_argument("-L", "--log-file", dest="sub_log_file")

    m = sub.add_parser("merge", help="merge per-layer bootstraps into one")
    m.add_argument("sources", nargs="+")
    m.add_argument("-B", "--bootstrap", required=True)
    m.add_argument("--parent-bootstrap")
    m.add_argument("--blob-digests")
    m.add_argument("--blob-sizes")
    m.add_argument("--blob-toc-digests")
    m.add_argument("--blob-toc-sizes")
    m.add_argument("--original-blob-ids")
    m.add_argument("--chunk-dict")
    m.add_argument("--prefetch-policy", default="none")
    m.add_argument("-J", "--output-json")
    m.add_argument("-C", "--config")
    m.add_argument("-l", "--log-level", dest="sub_log_level")

    k = sub.add_parser("check", help="validate a bootstrap")
    k.add_argument("bootstrap_pos", nargs="?")
    k.add_argument("-B", "--bootstrap")
    k.add_argument("-D", "--blob-dir")
    k.add_argument("-C", "--config")
    k.add_argument("-v", "--verbose", action="store_true")
    k.add_argument("-J", "--output-json")
    k.add_argument("-l", "--log-level", dest="sub_log_level")

    o = sub.add_parser(
        "optimize",
        help="move the chunks of listed files into a new prefetch blob",
        description="Write one new blob holding the chunks of the files in --prefetch-files "
        "(in list order, deduplicated) and a bootstrap whose chunk indexes point at it and "
        "whose prefetch table lists those files.",
    )
    o.add_argument("-B", "--bootstrap", required=True, help="source bootstrap")
    o.add_argument(
        "-p",
        "--prefetch-files",
        required=True,
        help="absolute paths one per line, or upstream's JSON {version: v1, files: [...]}",
    )
    o.add_argument("-D", "--blob-dir", help="directory holding the source blobs by id")
    o.add_argument("-b", "--blob", help="the source data blob file (single-blob images)")
    o.add_argument("--backend-type", help="read source blobs from a backend: registry, localfs")
    o.add_argument("--backend-config", help="that backend's config JSON")
    o.add_argument("--backend-config-file", help="that backend's config JSON in a file")
    o.add_argument("-O", "--output-bootstrap", default="optimized_bootstrap", help="new bootstrap")
    o.add_argument("--output-blob-dir", required=True, help="directory for the new blob")
    o.add_argument("-J", "--output-json", help="write a JSON report")
    o.add_argument("-C", "--config", help="(accepted for compatibility)")
    o.add_argument("-l", "--log-level", dest="sub_log_level")

    i = sub.add_parser("inspect", help="inspect a bootstrap")
    i.add_argument("bootstrap_pos", nargs="?")
    i.add_argument("-B", "--bootstrap")
    i.add_argument("-D", "--blob-dir")
    i.add_argument("-C", "--config")
    i.add_argument("-R", "--request")
    i.add_argument("-l", "--log-level", dest="sub_log_level")

    u = sub.add_parser("unpack", help="unpack a RAFS filesystem to a tar file")
    u.add_argument("bootstrap_pos", nargs="?", metavar="BOOTSTRAP")
    u.add_argument("-B", "--bootstrap", help="[deprecated] RAFS bootstrap")
    u.add_argument("-b", "--blob", help="the RAFS data blob file")
    u.add_argument("-D", "--blob-dir", help="directory holding the data blobs (localfs)")
    _backend_args(u)
    u.add_argument("--output", required=True, help="path of the output tar file")
    u.add_argument("-l", "--log-level", dest="sub_log_level")

    e = sub.add_parser("export", help="export a RAFS filesystem as a raw EROFS block disk image")
    e.add_argument("--block", action="store_true", required=True, help="raw block disk image")
    e.add_argument("-B", "--bootstrap", help="bootstrap of the filesystem to export")
    e.add_argument(
        "-D", "--localfs-dir", "--blob-dir", dest="blob_dir", help="directory of the blobs"
    )
    e.add_argument("-C", "--config", help="blob cache entry config (JSON, config_v2)")
    e.add_argument("-O", "--output", help="output image (default <dir>/<bootstrap name>.disk)")
    e.add_argument("--threads", default="4", help="worker threads, 1-32")
    e.add_argument("--verity", action="store_true", help="append dm-verity hash data")
    e.add_argument("-l", "--log-level", dest="sub_log_level")

    co = sub.add_parser(
        "compact", help="rewrite small or sparsely used blobs into fewer, denser ones"
    )
    co.add_argument("-B", "--bootstrap", required=True, help="bootstrap to compact")
    co.add_argument(
        "-D", "--blob-dir", required=True, help="the blobs (unless --backend-type) and new blobs"
    )
    _backend_args(co)
    co.add_argument("--min-used-ratio", default="0", help="rebuild blobs used below this %%")
    co.add_argument("--compact-blob-size", default=str(10 << 20), help="merge blobs below")
    co.add_argument("--max-compact-size", default=str(100 << 20), help="merged blob limit")
    co.add_argument("--layers-to-compact", default="0", help="only with at least N blobs")
    co.add_argument("--chunk-dict", help="bootstrap=PATH: dedup against this dictionary")
    co.add_argument("-O", "--output-bootstrap", help="default <bootstrap>.compact")
    co.add_argument("-J", "--output-json", help="write a JSON report")
    co.add_argument("-l", "--log-level", dest="sub_log_level")

    cd = sub.add_parser("chunkdict", help="chunk dictionaries")
    cds = cd.add_subparsers(dest="chunkdict_cmd", parser_class=Parser)
    g = cds.add_parser("generate", help="a chunk dictionary of the chunks images share")
    g.add_argument("sources", nargs="+", metavar="SOURCE", help="bootstraps")
    g.add_argument("-B", "--bootstrap", help="output dictionary bootstrap")
    g.add_argument("-D", "--blob-dir", help="save the dictionary as <dir>/<sha256>")
    g.add_argument(
        "--database", help="(accepted for compatibility: the bootstraps are read directly)"
    )
    g.add_argument(
        "--min-images", default="2", help="keep chunks at least this many sources hold (2)"
    )
    g.add_argument("--prefetch-policy", default="none", help="(accepted for compatibility)")
    g.add_argument("-J", "--output-json", help="write a JSON report")
    g.add_argument("-C", "--config", help="(accepted for compatibility)")
    g.add_argument("-v", "--verbose", action="store_true")
    g.add_argument("-l", "--log-level", dest="sub_log_level")

    st = sub.add_parser("stat", help="deduplication statistics of RAFS filesystems")
    st.add_argument("-B", "--bootstrap", help="one bootstrap")
    st.add_argument("-D", "--blob-dir", help="every bootstrap in this directory")
    st.add_argument("-T", "--target", help="a bootstrap deduplicated against the others")
    st.add_argument("-C", "--config", help="(accepted for compatibility)")
    st.add_argument("--digester", default="blake3", help="blake3, sha256")
    st.add_argument("-J", "--output-json", help="write the statistics as JSON")
    st.add_argument("-l", "--log-level", dest="sub_log_level")
    return p


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend-type", help="registry, oss, s3, http-proxy, localfs, ...")
    p.add_argument("--backend-config", help="backend config (JSON)")
    p.add_argument("--backend-config-file", help="backend config file (JSON)")


def _backend(a: argparse.Namespace) -> BackendConfig | None:
    from nydus.builder.source_image import source_backend

    if a.backend_config and a.backend_config_file:
        raise BuildError("--backend-config and --backend-config-file conflict")
    text = a.backend_config
    if a.backend_config_file:
        try:
            with open(a.backend_config_file) as f:
                text = f.read()
        except OSError as exc:
            raise BuildError(
                f"backend config file {a.backend_config_file}: {exc.strerror}"
            ) from exc
    return source_backend(
        blob_dir=getattr(a, "blob_dir", None),
        blob=getattr(a, "blob", None),
        backend_type=a.backend_type,
        backend_config_text=text,
    )


def _output_json(
    path: str | None, bootstrap: str | None, blobs: list[str], compressor: str = "zstd"
) -> None:
    if not path:
        return
    from nydus.builder.output import write_atomic

    doc: dict[str, object] = {
        "version": f"{__version__}-none",
        "bootstrap": bootstrap,
        "blobs": blobs,
        "external_bootstrap": None,
        "external_blobs": [],
        "trace": {},
        "fs_version": "6",
        "compressor": {"none": "None", "lz4_block": "Lz4Block", "zstd": "Zstd"}.get(
            compressor, compressor
        ),
    }
    write_atomic(path, json.dumps(doc, indent=2).encode())


def _patterns(policy: str) -> list[str] | None:
    if policy not in ("none", "fs", "blob"):
        raise BuildError(f"invalid --prefetch-policy {policy!r} (fs, blob, none)")
    if policy == "none":
        return None
    if sys.stdin is None or sys.stdin.closed:
        return ["/"]
    return [line.strip() for line in sys.stdin if line.strip()]


def cmd_create(a: argparse.Namespace) -> int:
    from nydus.builder.build import CreateOptions, create
    from nydus.builder.chunkdict import parse_arg
    from nydus.utils.compress import Compressor
    from nydus.utils.digest import Digester

    if a.fs_version != "6":
        if a.fs_version == "5":
            raise BuildError(
                "--fs-version 5 is not supported: this nydus-image writes RAFS v6 (it reads v5)"
            )
        raise BuildError(f"invalid --fs-version {a.fs_version!r} (6)")
    if a.source is None:
        raise BuildError("missing SOURCE")
    comp = a.compressor.lower()
    if comp not in ("none", "lz4_block", "zstd"):
        raise BuildError(f"invalid --compressor {a.compressor!r} (none, lz4_block, zstd)")
    if a.digester.lower() not in ("blake3", "sha256"):
        raise BuildError(f"invalid --digester {a.digester!r} (blake3, sha256)")
    if parse_size(a.batch_size) != 0:
        raise BuildError("--batch-size is not supported (only 0)")
    features = {f.strip() for f in a.features.split(",") if f.strip()}
    unknown = features - {"blob-toc"}
    if unknown:
        raise BuildError(f"unknown --features value(s): {', '.join(sorted(unknown))}")
    blob, blob_dir = a.blob, a.blob_dir
    if a.backend_type or a.backend_config:
        if (a.backend_type or "localfs") != "localfs":
            raise BuildError(f"unsupported --backend-type {a.backend_type!r} (localfs)")
        try:
            cfg = json.loads(a.backend_config or "{}")
        except json.JSONDecodeError as exc:
            raise BuildError(f"invalid --backend-config JSON: {exc}") from exc
        if not isinstance(cfg, dict) or not (cfg.get("dir") or cfg.get("blob_file")):
            raise BuildError('--backend-config needs {"dir": DIR} or {"blob_file": FILE}')
        blob_dir = blob_dir or cfg.get("dir") or None
        blob = blob or cfg.get("blob_file") or None
    try:
        chunk_size = parse_size(a.chunk_size)
    except NydusError:
        raise BuildError(f"invalid --chunk-size {a.chunk_size!r}") from None
    opts = CreateOptions(
        source=a.source,
        source_type=a.type,
        bootstrap=a.bootstrap,
        blob=blob,
        blob_dir=blob_dir,
        parent_bootstrap=a.parent_bootstrap,
        compressor=Compressor.from_name(comp),
        digester=Digester.from_name(a.digester),
        chunk_size=chunk_size,
        whiteout_spec=a.whiteout_spec,
        blob_inline_meta=a.blob_inline_meta,
        blob_toc="blob-toc" in features,
        repeatable=a.repeatable,
        prefetch_patterns=_patterns(a.prefetch_policy),
        chunk_dict=parse_arg(a.chunk_dict) if a.chunk_dict else None,
    )
    res = create(opts)
    log.info("successfully built RAFS filesystem: ")
    log.info("meta blob path: %s", res.bootstrap or "<none>")
    log.info("data blob size: 0x%x", res.blob_size)
    log.info("data blobs: %s", json.dumps(res.blob_ids))
    _output_json(a.output_json, res.bootstrap, res.blob_ids, comp)
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from nydus.builder.build import MergeOptions, merge

    digests = a.blob_digests.split(",") if a.blob_digests else None
    sizes = [parse_size(s) for s in a.blob_sizes.split(",")] if a.blob_sizes else None
    res = merge(
        MergeOptions(
            a.sources, a.bootstrap, a.parent_bootstrap, digests, _patterns(a.prefetch_policy), sizes
        )
    )
    log.info(
        "merged %d bootstraps into %s, blobs: %s",
        len(a.sources),
        a.bootstrap,
        json.dumps(res.blob_ids),
    )
    _output_json(a.output_json, res.bootstrap, res.blob_ids)
    return 0


def cmd_optimize(a: argparse.Namespace) -> int:
    from nydus.builder.optimize import blob_dir_reader, optimize, read_prefetch_list

    _text, entries = read_prefetch_list(a.prefetch_files)
    backend = None
    if a.backend_type:
        backend = _optimize_backend(a)
        read = backend.read
    elif a.blob_dir or a.blob:
        read = blob_dir_reader(a.blob_dir, a.blob)
    else:
        raise BuildError("--blob-dir, --blob or --backend-type must be specified")
    try:
        res = optimize(a.bootstrap, entries, read, a.output_bootstrap, a.output_blob_dir)
    finally:
        if backend is not None:
            backend.close()
    log.info(
        "prefetch blob %s: %d chunks of %d listed files (%d skipped)",
        res.blob_id,
        res.chunks,
        len(res.files),
        len(res.skipped),
    )
    log.info("optimized bootstrap: %s", res.bootstrap)
    _output_json(a.output_json, res.bootstrap, res.blob_ids)
    return 0


def _optimize_backend(a: argparse.Namespace) -> Any:
    from nydus.config import from_v1
    from nydus.storage import create_backend

    text = a.backend_config
    if a.backend_config_file:
        try:
            with open(a.backend_config_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise BuildError(
                f"cannot read --backend-config-file {a.backend_config_file}: {exc.strerror}"
            ) from exc
    try:
        conf = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise BuildError(f"invalid --backend-config JSON: {exc}") from exc
    cfg = from_v1(
        {"device": {"backend": {"type": a.backend_type, "config": conf}}, "mode": "direct"}
    )
    cfg.backend.validate("--backend-config")
    return create_backend(cfg.backend)


def _open(a: argparse.Namespace) -> tuple[str, RafsSuper]:
    from nydus.builder.build import load_bootstrap

    path = a.bootstrap or a.bootstrap_pos
    if not path:
        raise BuildError("missing bootstrap (BOOTSTRAP or --bootstrap)")
    return path, load_bootstrap(path)


def cmd_check(a: argparse.Namespace) -> int:
    from nydus.builder.check import check_bootstrap
    from nydus.errors import FormatError

    path, sb = _open(a)
    try:
        report = check_bootstrap(sb)
    except FormatError as exc:
        raise BuildError(f"bootstrap {path} is invalid: {exc}") from exc
    log.info(report.features_line)
    print("\n".join(report.summary_lines()))
    _output_json(a.output_json, path, [b.blob_id for b in report.blobs])
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from nydus.builder.inspect import Inspector

    _path, sb = _open(a)
    insp = Inspector(sb)
    if a.request:
        print(json.dumps(insp.request(a.request)))
        return 0

    def out(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    insp.prompt(sys.stdin, out)
    return 0


def cmd_unpack(a: argparse.Namespace) -> int:
    from nydus.builder.source_image import open_image
    from nydus.builder.unpack import unpack

    if a.bootstrap and a.bootstrap_pos:
        raise BuildError("give the bootstrap once (BOOTSTRAP or --bootstrap)")
    path = a.bootstrap or a.bootstrap_pos
    if not path:
        raise BuildError("missing bootstrap (BOOTSTRAP or --bootstrap)")
    with open_image(path, _backend(a)) as src:
        stats = unpack(src, a.output)
    log.info(
        "unpacked %s to %s: %d entries, %d files (%d bytes), %d hard links",
        path,
        a.output,
        stats.entries,
        stats.files,
        stats.bytes,
        stats.hardlinks,
    )
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from nydus.builder.export import export_block
    from nydus.builder.source_image import open_image

    try:
        threads = int(a.threads)
    except ValueError:
        threads = 0
    if not 1 <= threads <= 32:
        raise BuildError(f"invalid --threads {a.threads!r} (1-32)")
    bootstrap, backend = a.bootstrap, None
    if a.config:
        if a.blob_dir:
            raise BuildError("--config and --localfs-dir conflict")
        bootstrap, backend = _blob_cache_entry(a.config, bootstrap)
    elif a.blob_dir:
        if not bootstrap:
            raise BuildError("--localfs-dir needs --bootstrap")
        from nydus.builder.source_image import source_backend

        backend = source_backend(blob_dir=a.blob_dir)
    else:
        raise BuildError("both option -C/--config and -D/--localfs-dir are missing")
    if not bootstrap:
        raise BuildError("missing --bootstrap")
    output = a.output
    if not output:
        if not a.blob_dir:
            raise BuildError("--output is required with --config")
        output = os.path.join(a.blob_dir, os.path.basename(bootstrap) + ".disk")
    with open_image(bootstrap, backend) as src:
        res = export_block(src, output, verity=a.verity, threads=threads)
    log.info(
        "exported %s to %s: %d blocks%s",
        bootstrap,
        output,
        res.blocks,
        " (blob addresses relaid)" if res.relaid else "",
    )
    if res.verity_options:
        print(f"dm-verity options: {res.verity_options}")
    return 0


def _blob_cache_entry(path: str, bootstrap: str | None) -> tuple[str | None, BackendConfig]:
    """`export -C`: a BlobCacheEntry JSON: `config_v2` (backend) and `metadata_path`."""
    from nydus.config import parse_config
    from nydus.errors import ConfigError

    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as exc:
        raise BuildError(f"config {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise BuildError(f"config {path}: invalid JSON: {exc}") from exc
    cfg = doc.get("config_v2") if isinstance(doc, dict) else None
    if not isinstance(cfg, dict):
        raise BuildError(f"config {path}: no config_v2 object (a blob cache entry)")
    try:
        parsed = parse_config(json.dumps(cfg))
    except ConfigError as exc:
        raise BuildError(f"config {path}: {exc}") from exc
    meta = cfg.get("metadata_path")
    return bootstrap or (meta if isinstance(meta, str) else None), parsed.backend


def cmd_compact(a: argparse.Namespace) -> int:
    from nydus.builder.chunkdict import parse_arg
    from nydus.builder.compact import CompactConfig, compact
    from nydus.builder.source_image import open_image, source_backend

    def num(flag: str, text: str) -> int:
        try:
            return parse_size(text)
        except NydusError:
            raise BuildError(f"invalid --{flag} {text!r}") from None

    cfg = CompactConfig(
        num("min-used-ratio", a.min_used_ratio),
        num("compact-blob-size", a.compact_blob_size),
        num("max-compact-size", a.max_compact_size),
        num("layers-to-compact", a.layers_to_compact),
    )
    if a.backend_type:
        backend = _backend(argparse.Namespace(**{**vars(a), "blob_dir": None}))
    else:
        backend = source_backend(blob_dir=a.blob_dir)
    with open_image(a.bootstrap, backend) as src:
        res = compact(
            src,
            a.blob_dir,
            a.output_bootstrap,
            cfg,
            parse_arg(a.chunk_dict) if a.chunk_dict else None,
        )
    if res is None:
        log.info("no chance to compact data blobs of %s", a.bootstrap)
        return 0
    log.info(
        "compacted %s into %s: blobs %s (new: %s)",
        a.bootstrap,
        res.bootstrap,
        json.dumps(res.blob_ids),
        json.dumps(res.new_blobs),
    )
    _output_json(a.output_json, res.bootstrap, res.blob_ids)
    return 0


def cmd_chunkdict(a: argparse.Namespace) -> int:
    from nydus.builder.chunkdict import generate_chunk_dict

    if a.chunkdict_cmd != "generate":
        raise BuildError("usage: nydus-image chunkdict generate [-B OUT] SOURCE...")
    try:
        min_images = int(a.min_images)
    except ValueError:
        min_images = 0
    if min_images < 1:
        raise BuildError(f"invalid --min-images {a.min_images!r} (1 or more)")
    res = generate_chunk_dict(a.sources, a.bootstrap, a.blob_dir, min_images)
    _output_json(a.output_json, res.bootstrap, res.blob_ids)
    return 0


def cmd_stat(a: argparse.Namespace) -> int:
    from nydus.builder.stat import stat_images

    if a.digester.lower() not in ("blake3", "sha256"):
        raise BuildError(f"invalid --digester {a.digester!r} (blake3, sha256)")
    st = stat_images(a.bootstrap, a.blob_dir, a.target, a.output_json)
    print("\n".join(st.lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    if a.version:
        print(VERSION_TEXT)
        return 0

    def body() -> int:
        setup_logging(
            getattr(a, "sub_log_level", None) or a.log_level,
            _log_stream(getattr(a, "sub_log_file", None) or a.log_file),
        )
        handler = {
            "create": cmd_create,
            "merge": cmd_merge,
            "check": cmd_check,
            "inspect": cmd_inspect,
            "unpack": cmd_unpack,
            "export": cmd_export,
            "stat": cmd_stat,
            "optimize": cmd_optimize,
            "chunkdict": cmd_chunkdict,
            "compact": cmd_compact,
        }.get(a.cmd)
        if handler is None:
            parser.print_help()
            return 1
        return handler(a)

    return run_main(body)


def _log_stream(path: str | None) -> TextIO | None:
    if not path:
        return None
    return open(path, "a")


if __name__ == "__main__":
    sys.exit(main())
