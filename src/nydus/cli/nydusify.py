"""`nydusify`: convert OCI images to Nydus images in a registry, check, copy, mount and
optimize them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from nydus.cli.common import LogrusFormatter, parse_size, run_main, setup_logging
from nydus.cli.image import Parser
from nydus.errors import NydusError


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _flag(name: str) -> bool:
    return (os.environ.get(name) or "").lower() in ("1", "true", "yes")


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="nydusify", description="Convert OCI images to Nydus images")
    p.add_argument("-D", "--debug", action="store_true", default=_flag("DEBUG_LOG_LEVEL"))
    p.add_argument("-l", "--log-level", default=_env("LOG_LEVEL", "info"))
    p.add_argument("--log-file", default=_env("LOG_FILE"))
    sub = p.add_subparsers(dest="cmd", parser_class=Parser)
    c = sub.add_parser("convert", help="convert an OCI image to a Nydus image")
    c.add_argument("--source", default=_env("SOURCE"))
    c.add_argument("--target", default=_env("TARGET"))
    c.add_argument("--target-suffix", default=_env("TARGET_SUFFIX"))
    c.add_argument("--source-insecure", action="store_true", default=_flag("SOURCE_INSECURE"))
    c.add_argument("--target-insecure", action="store_true", default=_flag("TARGET_INSECURE"))
    c.add_argument("--plain-http", action="store_true")
    c.add_argument("--work-dir", default=_env("WORK_DIR", "./tmp"))
    c.add_argument(
        "--nydus-image", default=_env("NYDUS_IMAGE"), help="accepted; the builder runs in-process"
    )
    c.add_argument("--fs-version", default=_env("FS_VERSION", "6"))
    c.add_argument("--compressor", default=_env("COMPRESSOR", "zstd"))
    c.add_argument(
        "--fs-chunk-size",
        "--chunk-size",
        dest="chunk_size",
        default=_env("FS_CHUNK_SIZE", "0x100000"),
    )
    c.add_argument("--platform", default=None)
    c.add_argument("--all-platforms", action="store_true")
    c.add_argument(
        "--merge-platform", "--multi-platform", action="store_true", default=_flag("MERGE_PLATFORM")
    )
    c.add_argument("--prefetch-patterns", action="store_true", default=_flag("PREFETCH_PATTERNS"))
    c.add_argument("--prefetch-dir", default=_env("PREFETCH_DIR"))
    c.add_argument("--oci", action="store_true", default=_flag("OCI"))
    c.add_argument("--docker-v2-format", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--backend-type", default=_env("BACKEND_TYPE"))
    c.add_argument("--backend-config", default=_env("BACKEND_CONFIG"))
    c.add_argument("--backend-config-file", default=_env("BACKEND_CONFIG_FILE"))
    c.add_argument("--backend-force-push", action="store_true", default=_flag("BACKEND_FORCE_PUSH"))
    c.add_argument("--output-json", default=_env("OUTPUT_JSON"))
    c.add_argument(
        "--chunk-dict",
        default=_env("CHUNK_DICT"),
        help="bootstrap:registry:REF: reference chunks of this Nydus image, not store them",
    )
    c.add_argument("--chunk-dict-insecure", action="store_true")
    c.add_argument("--batch-size", default="0")
    c.add_argument("--push-retry-count", default="3")
    c.add_argument("--push-retry-delay", default="5s")
    k = sub.add_parser("check", help="check a converted Nydus image")
    k.add_argument("--source")
    k.add_argument("--target", required=True)
    k.add_argument("--source-insecure", action="store_true")
    k.add_argument("--target-insecure", action="store_true")
    k.add_argument("--platform")
    k.add_argument("--work-dir", default="./output")
    k.add_argument("--nydus-image")
    k.add_argument("--nydusd")
    k.add_argument("--multi-platform", action="store_true")
    k.add_argument("--target-backend-type")
    k.add_argument("--target-backend-config")
    k.add_argument("--target-backend-config-file")

    cp = sub.add_parser("copy", help="copy an image (with all its blobs) between registries")
    cp.add_argument("--source", required=True, help="source image reference")
    cp.add_argument("--target", required=True, help="target image reference")
    cp.add_argument("--source-insecure", action="store_true")
    cp.add_argument("--target-insecure", action="store_true")
    cp.add_argument("--all-platforms", action="store_true", help="copy every platform")
    cp.add_argument("--platform", help="platforms to copy (comma list), default the host's")
    cp.add_argument("--push-chunk-size", default="0MB", help="upload in chunks of this size")
    cp.add_argument("--work-dir", default="./tmp")
    cp.add_argument("--nydus-image", help="(accepted for compatibility)")
    cp.add_argument("--source-backend-type", help="(not supported)")
    cp.add_argument("--source-backend-config", help="(not supported)")
    cp.add_argument("--source-backend-config-file", help="(not supported)")

    cd = sub.add_parser("chunkdict", help="chunk dictionary images")
    cds = cd.add_subparsers(dest="chunkdict_cmd", parser_class=Parser)
    g = cds.add_parser("generate", help="a chunk dictionary from several Nydus images")
    g.add_argument("--sources", required=True, help="Nydus image references, comma separated")
    g.add_argument("--target", help="push the dictionary as this Nydus image")
    g.add_argument("--source-insecure", action="store_true")
    g.add_argument("--target-insecure", action="store_true")
    g.add_argument("--work-dir", default="./output")
    g.add_argument("--platform", help="platform of the images (default the host's)")
    g.add_argument("--all-platforms", action="store_true", help="(not supported)")
    g.add_argument("--nydus-image", help="(accepted for compatibility)")
    g.add_argument("--backend-type", help="(not supported)")
    g.add_argument("--backend-config", help="(not supported)")
    g.add_argument("--backend-config-file", help="(not supported)")

    mo = sub.add_parser("mount", aliases=["view"], help="mount a Nydus image from a registry")
    mo.add_argument("--target", required=True, help="Nydus image reference")
    mo.add_argument("--target-insecure", action="store_true")
    mo.add_argument("--mount-path", default="./image-fs")
    mo.add_argument("--platform", help="platform of the image (default the host's)")
    mo.add_argument("--work-dir", default="./tmp")
    mo.add_argument("--nydusd", help="nydusd binary (default: ours)")
    mo.add_argument("--prefetch", action="store_true", help="prefetch the whole image")
    mo.add_argument("--backend-type", help="read blobs from this backend, not the registry")
    mo.add_argument("--backend-config", help="backend config (JSON)")
    mo.add_argument("--backend-config-file", help="backend config file (JSON)")
    o = sub.add_parser(
        "optimize",
        help="put the files a workload reads first into a separate prefetch blob",
        description="Rebuild a Nydus image so that the listed files (--prefetch-files) or "
        "the files a command reads (--workload, run in a chroot of the lazily mounted "
        "image) live in one added prefetch blob, in first-access order.",
    )
    o.add_argument("--source", required=True, help="the Nydus image to optimize")
    o.add_argument("--target", required=True, help="where to push the optimized image")
    o.add_argument("--source-insecure", action="store_true")
    o.add_argument("--target-insecure", action="store_true")
    o.add_argument(
        "--policy",
        default="separated-blob-with-prefetch-files",
        help="separated-blob-with-prefetch-files",
    )
    o.add_argument(
        "--prefetch-files", help="absolute paths one per line, or upstream's prefetch JSON"
    )
    o.add_argument("--workload", help="record the list by running this command in the image")
    o.add_argument(
        "--workload-timeout",
        type=float,
        default=300.0,
        help="stop the workload after this many seconds (default 300)",
    )
    o.add_argument("--platform")
    o.add_argument("--work-dir", default="./tmp")
    o.add_argument("--nydusd", help="nydusd for --workload (default: beside nydusify)")
    o.add_argument("--nydus-image", help="accepted; the builder runs in-process")
    o.add_argument("--push-chunk-size", help="accepted; pushes are chunked already")
    return p


def _json_arg(text: str | None, path: str | None, what: str) -> dict[str, Any] | None:
    """A JSON object given inline or as a file (at most one of them)."""
    if text and path:
        raise NydusError(f"{what} and {what}-file conflict")
    if not text and not path:
        return None
    try:
        if path:
            with open(path) as f:
                text = f.read()
        doc = json.loads(text or "")
    except OSError as exc:
        raise NydusError(f"{what}-file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise NydusError(f"invalid {what} JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise NydusError(f"{what} must be a JSON object")
    return doc


def _human_size(text: str) -> int:
    """Sizes as nydusify takes them: `0MB`, `16MiB`, `4096`, `0x1000`."""
    t = text.strip().lower().replace(" ", "")
    units = {
        "kib": 1 << 10,
        "mib": 1 << 20,
        "gib": 1 << 30,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "k": 1 << 10,
        "m": 1 << 20,
        "g": 1 << 30,
        "b": 1,
    }
    for suffix, mult in units.items():
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(suffix)]) * mult)
    return parse_size(t)


def cmd_convert(a: argparse.Namespace) -> int:
    from nydus.converter.convert import ConvertOptions, convert

    if not a.source:
        raise NydusError("--source is required")
    target = a.target
    if not target:
        if not a.target_suffix:
            raise NydusError("one of --target or --target-suffix is required")
        if "@" in a.source:
            raise NydusError("--target-suffix cannot be used with a digested source")
        target = (
            a.source + a.target_suffix
            if ":" in a.source.rsplit("/", 1)[-1]
            else a.source + ":latest" + a.target_suffix
        )
    if a.fs_version == "5":
        raise NydusError("--fs-version 5 is not supported: nydusify here converts to RAFS v6")
    if a.fs_version != "6":
        raise NydusError(f"invalid --fs-version {a.fs_version!r} (6)")
    if a.compressor not in ("none", "lz4_block", "zstd"):
        raise NydusError(f"invalid --compressor {a.compressor!r} (none, lz4_block, zstd)")
    if parse_size(a.batch_size) != 0:
        raise NydusError("--batch-size is not supported (only 0)")
    if a.platform and a.all_platforms:
        raise NydusError("--platform and --all-platforms conflict")
    if a.prefetch_patterns and a.prefetch_dir:
        raise NydusError("--prefetch-patterns and --prefetch-dir conflict")
    patterns = None
    if a.prefetch_patterns:
        patterns = [ln.strip() for ln in sys.stdin if ln.strip()] or ["/"]
    elif a.prefetch_dir:
        patterns = [a.prefetch_dir]
    backend_type, backend_config = _backend_args(a, "")
    chunk_size = parse_size(a.chunk_size)
    import time

    t0 = time.monotonic()
    results = convert(
        ConvertOptions(
            source=a.source,
            target=target,
            work_dir=a.work_dir,
            source_insecure=a.source_insecure or a.plain_http,
            target_insecure=a.target_insecure or a.plain_http,
            compressor=a.compressor,
            chunk_size=chunk_size,
            platforms=a.platform.split(",") if a.platform else [],
            all_platforms=a.all_platforms,
            merge_platform=a.merge_platform,
            oci=a.oci,
            prefetch_patterns=patterns,
            backend_type=backend_type,
            backend_config=backend_config,
            backend_force_push=a.backend_force_push,
            chunk_dict=a.chunk_dict or None,
            chunk_dict_insecure=a.chunk_dict_insecure,
        )
    )
    if a.output_json:
        with open(a.output_json, "w") as f:
            json.dump(
                {
                    "ConversionElapsed": int((time.monotonic() - t0) * 1e9),
                    "Manifests": [r.digest for r in results],
                },
                f,
            )
    return 0


def _backend_args(a: argparse.Namespace, prefix: str) -> tuple[str | None, dict[str, Any] | None]:
    """(`--<prefix>backend-type`, its parsed JSON config): exactly one of
    `--<prefix>backend-config` / `--<prefix>backend-config-file` goes with a type."""
    flag = prefix.replace("_", "-")
    btype = getattr(a, f"{prefix}backend_type")
    text = getattr(a, f"{prefix}backend_config")
    path = getattr(a, f"{prefix}backend_config_file")
    if not btype:
        if text or path:
            raise NydusError(f"backend type is empty, please specify option '--{flag}backend-type'")
        return None, None
    from nydus.converter.blob_target import BLOB_BACKEND_TYPES

    if btype not in BLOB_BACKEND_TYPES:
        raise NydusError(f"--{flag}backend-type should be one of {list(BLOB_BACKEND_TYPES)}")
    if not text and not path:
        raise NydusError(
            f"--{flag}backend-type needs --{flag}backend-config or --{flag}backend-config-file"
        )
    doc = _json_arg(text, path, f"--{flag}backend-config")
    return btype, doc


def cmd_check(a: argparse.Namespace) -> int:
    from nydus.converter.check import CheckOptions, check

    backend_type, backend_config = _backend_args(a, "target_")
    check(
        CheckOptions(
            source=a.source,
            target=a.target,
            source_insecure=a.source_insecure,
            target_insecure=a.target_insecure,
            platform=a.platform,
            work_dir=a.work_dir,
            multi_platform=a.multi_platform,
            nydusd=a.nydusd or None,
            target_backend_type=backend_type,
            target_backend_config=backend_config,
        )
    )
    return 0


def cmd_copy(a: argparse.Namespace) -> int:
    from nydus.converter.copy import CopyOptions, copy_image

    if a.source_backend_type or a.source_backend_config or a.source_backend_config_file:
        raise NydusError("--source-backend-type is not supported by this nydusify copy")
    copy_image(
        CopyOptions(
            source=a.source,
            target=a.target,
            source_insecure=a.source_insecure,
            target_insecure=a.target_insecure,
            all_platforms=a.all_platforms,
            platforms=a.platform.split(",") if a.platform else [],
            work_dir=a.work_dir,
            push_chunk_size=_human_size(a.push_chunk_size),
        )
    )
    return 0


def cmd_chunkdict(a: argparse.Namespace) -> int:
    from nydus.converter.chunkdict import ChunkDictOptions, generate

    if a.chunkdict_cmd != "generate":
        raise NydusError("usage: nydusify chunkdict generate --sources A,B [--target T]")
    if a.all_platforms or a.backend_type or a.backend_config or a.backend_config_file:
        raise NydusError("--all-platforms and --backend-type are not supported here")
    generate(
        ChunkDictOptions(
            sources=[s for s in a.sources.split(",") if s],
            target=a.target,
            source_insecure=a.source_insecure,
            target_insecure=a.target_insecure,
            work_dir=a.work_dir,
            platform=a.platform,
        )
    )
    return 0


def cmd_mount(a: argparse.Namespace) -> int:
    from nydus.converter.mount import MountOptions, mount_image

    backend_type, config = _backend_args(a, "")
    return mount_image(
        MountOptions(
            target=a.target,
            mount_path=a.mount_path,
            target_insecure=a.target_insecure,
            platform=a.platform,
            work_dir=a.work_dir,
            nydusd=a.nydusd,
            prefetch=a.prefetch,
            backend_type=backend_type,
            backend_config=config,
        )
    )


def cmd_optimize(a: argparse.Namespace) -> int:
    from nydus.converter.optimize import OptimizeOptions, optimize_image

    if a.workload_timeout <= 0:
        raise NydusError("--workload-timeout must be positive")
    res = optimize_image(
        OptimizeOptions(
            source=a.source,
            target=a.target,
            source_insecure=a.source_insecure,
            target_insecure=a.target_insecure,
            prefetch_files=a.prefetch_files,
            workload=a.workload,
            workload_timeout=a.workload_timeout,
            policy=a.policy,
            platform=a.platform,
            work_dir=a.work_dir,
            nydusd=a.nydusd,
        )
    )
    print(
        json.dumps(
            {
                "manifest": res.manifest_digest,
                "prefetch_blob": res.prefetch_blob,
                "prefetch_blob_size": res.prefetch_blob_size,
                "files": len(res.files),
                "chunks": res.chunks,
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)

    def body() -> int:
        lvl = setup_logging("debug" if a.debug else a.log_level, formatter=LogrusFormatter())
        # the builder's own INFO lines are noise inside a conversion; so are httpx's
        logging.getLogger("nydus.builder").setLevel(max(lvl, logging.WARNING))
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        handler = {
            "convert": cmd_convert,
            "check": cmd_check,
            "copy": cmd_copy,
            "mount": cmd_mount,
            "view": cmd_mount,
            "optimize": cmd_optimize,
            "chunkdict": cmd_chunkdict,
        }.get(a.cmd)
        if handler is None:
            parser.print_help()
            return 1
        return handler(a)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
