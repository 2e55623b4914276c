"""nydusd configuration: v1 JSON ("RafsConfig") and v2 (JSON or TOML) -> frozen dataclasses.

Parsing (`parse_config`) follows nydusd's order: v2 JSON, v2 TOML, then v1 JSON; it rejects
documents whose *structure* is wrong (missing required objects, wrong value types, integers
out of their on-disk range). `NydusdConfig.validate()` then applies the semantic rules of
interfaces.md §4.2 (registry host/repo, auth format, unknown backend/cache types, limits).
Unknown keys are ignored at every level, as upstream does.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nydus.errors import ConfigError

__all__ = [
    "BACKEND_TYPES",
    "CACHE_TYPES",
    "BackendConfig",
    "CacheConfig",
    "HttpProxyConfig",
    "LocalDiskConfig",
    "LocalFsConfig",
    "NydusdConfig",
    "OssConfig",
    "PrefetchConfig",
    "ProxyConfig",
    "RafsOptions",
    "RegistryConfig",
    "S3Config",
    "backend_config",
    "from_v1",
    "from_v2",
    "load_config",
    "localfs_config",
    "parse_backend_config",
    "parse_config",
]

MIB = 1 << 20
MAX_BATCH_SIZE = 0x1000_0000
U32_MAX = 0xFFFF_FFFF

#: backend types nydusd v1 accepts (v2 adds http-proxy)
BACKEND_TYPES_V1 = ("localfs", "localdisk", "oss", "s3", "registry")
BACKEND_TYPES = (*BACKEND_TYPES_V1, "http-proxy")
#: cache types; "" and "dummycache" mean no cache
CACHE_TYPES = ("blobcache", "filecache", "fscache", "", "dummycache")
FILE_CACHE_TYPES = ("blobcache", "filecache", "fscache")
RAFS_MODES = ("direct", "cached")
FS_DRIVERS = ("fuse", "erofs")
EROFS_MOUNTS = ("auto", "file", "loop")


# --------------------------------------------------------------------------------------
# typed getters


class _Obj:
    """A JSON/TOML object being read, with its dotted path for error messages."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"config: {where or 'top level'} must be an object, got {_kind(data)}"
            )
        self.data = data
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def obj(self, key: str, required: bool = False) -> _Obj | None:
        if not self.has(key):
            if required:
                raise ConfigError(f"config: {self.path(key)} is required")
            return None
        return _Obj(self.data[key], self.path(key))

    def text(self, key: str, default: str = "", required: bool = False) -> str:
        if not self.has(key):
            if required:
                raise ConfigError(f"config: {self.path(key)} is required")
            return default
        v = self.data[key]
        if not isinstance(v, str):
            raise ConfigError(f"config: {self.path(key)} must be a string, got {_kind(v)}")
        return v

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def flag(self, key: str, default: bool = False) -> bool:
        if not self.has(key):
            return default
        v = self.data[key]
        if not isinstance(v, bool):
            raise ConfigError(f"config: {self.path(key)} must be true or false, got {_kind(v)}")
        return v

    def num(
        self, key: str, default: int, lo: int = 0, hi: int = 0xFFFF_FFFF_FFFF_FFFF, what: str = ""
    ) -> int:
        if not self.has(key):
            return default
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"config: {self.path(key)} must be an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise ConfigError(
                f"config: {self.path(key)} = {v} is out of range ({what or f'{lo}..{hi}'})"
            )
        return v

    def text_list(self, key: str) -> tuple[str, ...]:
        if not self.has(key):
            return ()
        v = self.data[key]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ConfigError(f"config: {self.path(key)} must be a list of strings")
        return tuple(v)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


# --------------------------------------------------------------------------------------
# records


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """P2P / Dragonfly forward proxy of HTTP backends; an empty `url` means no proxy."""

    url: str = ""
    ping_url: str = ""
    fallback: bool = True
    check_interval: int = 5
    check_pause_elapsed: int = 300
    use_http: bool = False
    dragonfly_scheduler_endpoint: str = ""

    @classmethod
    def parse(cls, o: _Obj | None) -> ProxyConfig:
        if o is None:
            return cls()
        return cls(
            o.text("url"),
            o.text("ping_url"),
            o.flag("fallback", True),
            o.num("check_interval", 5, hi=U32_MAX),
            o.num("check_pause_elapsed", 300, hi=U32_MAX),
            o.flag("use_http"),
            o.text("dragonfly_scheduler_endpoint"),
        )


def _http_fields(o: _Obj) -> dict[str, Any]:
    """Fields every HTTP-based backend shares (TLS, timeouts, retries, proxy)."""
    return {
        "skip_verify": o.flag("skip_verify"),
        "ca_cert_files": o.text_list("ca_cert_files"),
        "timeout": o.num("timeout", 5, hi=U32_MAX),
        "connect_timeout": o.num("connect_timeout", 5, hi=U32_MAX),
        "retry_limit": o.num("retry_limit", 0, hi=255, what="an 8-bit unsigned value, 0..255"),
        "proxy": ProxyConfig.parse(o.obj("proxy")),
    }


@dataclass(frozen=True, slots=True)
class HttpCommon:
    """Settings every HTTP-based backend shares: TLS, timeouts, retries, proxy."""

    skip_verify: bool = False
    ca_cert_files: tuple[str, ...] = ()
    timeout: int = 5
    connect_timeout: int = 5
    retry_limit: int = 0
    proxy: ProxyConfig = field(default_factory=ProxyConfig)


@dataclass(frozen=True, slots=True)
class RegistryConfig(HttpCommon):
    host: str = ""
    repo: str = ""
    scheme: str = "https"
    auth: str | None = None
    registry_token: str | None = None
    blob_url_scheme: str = ""
    blob_redirected_host: str = ""

    @classmethod
    def parse(cls, o: _Obj) -> RegistryConfig:
        return cls(
            host=o.text("host"),
            repo=o.text("repo"),
            scheme=o.text("scheme", "https"),
            auth=o.opt_text("auth"),
            registry_token=o.opt_text("registry_token"),
            blob_url_scheme=o.text("blob_url_scheme"),
            blob_redirected_host=o.text("blob_redirected_host"),
            **_http_fields(o),
        )

    @property
    def use_http(self) -> bool:
        """Only the exact scheme `http` means plain HTTP; anything else is HTTPS."""
        return self.scheme == "http"

    def credentials(self) -> tuple[str, str] | None:
        """(user, password) decoded from `auth`, None without auth; ConfigError if malformed."""
        if not self.auth:
            return None
        try:
            raw = base64.b64decode(self.auth, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ConfigError(
                "config: registry auth is not valid base64 of 'user:password'"
            ) from None
        user, sep, password = raw.partition(":")
        if not sep:
            raise ConfigError(
                "config: registry auth does not decode to 'user:password' (no ':' found)"
            )
        return user, password

    def validate(self, where: str) -> None:
        if not self.host:
            raise ConfigError(f"config: {where}.host of the registry backend must not be empty")
        if "://" in self.host or "/" in self.host:
            raise ConfigError(
                f"config: {where}.host {self.host!r} must be hostname[:port] "
                "without a scheme or path"
            )
        if not self.repo:
            raise ConfigError(f"config: {where}.repo of the registry backend must not be empty")
        self.credentials()


@dataclass(frozen=True, slots=True)
class LocalFsConfig:
    blob_file: str = ""
    dir: str = ""
    alt_dirs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, o: _Obj) -> LocalFsConfig:
        return cls(o.text("blob_file"), o.text("dir"), o.text_list("alt_dirs"))

    def validate(self, where: str) -> None:
        if not self.blob_file and not self.dir:
            raise ConfigError(f"config: {where}: the localfs backend needs `dir` or `blob_file`")


@dataclass(frozen=True, slots=True)
class OssConfig(HttpCommon):
    endpoint: str = ""
    bucket_name: str = ""
    scheme: str = "https"
    object_prefix: str = ""
    access_key_id: str = ""
    access_key_secret: str = ""

    @classmethod
    def parse(cls, o: _Obj) -> OssConfig:
        return cls(
            endpoint=o.text("endpoint"),
            bucket_name=o.text("bucket_name"),
            scheme=o.text("scheme", "https"),
            object_prefix=o.text("object_prefix"),
            access_key_id=o.text("access_key_id"),
            access_key_secret=o.text("access_key_secret"),
            **_http_fields(o),
        )

    def validate(self, where: str) -> None:
        if not self.endpoint or not self.bucket_name:
            raise ConfigError(
                f"config: {where}: the oss backend needs `endpoint` and `bucket_name`"
            )


@dataclass(frozen=True, slots=True)
class S3Config(HttpCommon):
    region: str = ""
    bucket_name: str = ""
    endpoint: str = ""
    scheme: str = "https"
    object_prefix: str = ""
    access_key_id: str = ""
    access_key_secret: str = ""

    @classmethod
    def parse(cls, o: _Obj) -> S3Config:
        return cls(
            region=o.text("region"),
            bucket_name=o.text("bucket_name"),
            endpoint=o.text("endpoint"),
            scheme=o.text("scheme", "https"),
            object_prefix=o.text("object_prefix"),
            access_key_id=o.text("access_key_id"),
            access_key_secret=o.text("access_key_secret"),
            **_http_fields(o),
        )

    def validate(self, where: str) -> None:
        if not self.region or not self.bucket_name:
            raise ConfigError(f"config: {where}: the s3 backend needs `region` and `bucket_name`")


@dataclass(frozen=True, slots=True)
class HttpProxyConfig(HttpCommon):
    addr: str = ""
    path: str = ""

    @classmethod
    def parse(cls, o: _Obj) -> HttpProxyConfig:
        return cls(addr=o.text("addr"), path=o.text("path"), **_http_fields(o))

    def validate(self, where: str) -> None:
        a = self.addr
        if not (a.startswith(("http://", "https://", "/"))):
            raise ConfigError(
                f"config: {where}.addr {a!r} must be an http(s):// URL or an "
                "absolute unix socket path"
            )


@dataclass(frozen=True, slots=True)
class LocalDiskConfig:
    device_path: str = ""
    disable_gpt: bool = False

    @classmethod
    def parse(cls, o: _Obj) -> LocalDiskConfig:
        return cls(o.text("device_path"), o.flag("disable_gpt"))

    def validate(self, where: str) -> None:
        if not self.device_path:
            raise ConfigError(f"config: {where}: the localdisk backend needs `device_path`")


_BACKEND_CLASSES: dict[str, Any] = {
    "localfs": LocalFsConfig,
    "registry": RegistryConfig,
    "oss": OssConfig,
    "s3": S3Config,
    "http-proxy": HttpProxyConfig,
    "localdisk": LocalDiskConfig,
}


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """`type` plus the settings of that backend (`settings` is None for unknown types)."""

    type: str
    settings: Any = None

    @property
    def localfs(self) -> LocalFsConfig | None:
        return self.settings if isinstance(self.settings, LocalFsConfig) else None

    @property
    def registry(self) -> RegistryConfig | None:
        return self.settings if isinstance(self.settings, RegistryConfig) else None

    def validate(self, where: str, allowed: tuple[str, ...] = BACKEND_TYPES) -> None:
        if self.type not in allowed:
            raise ConfigError(
                f"config: unknown backend type {self.type!r} (expected one of {', '.join(allowed)})"
            )
        self.settings.validate(where)


@dataclass(frozen=True, slots=True)
class PrefetchConfig:
    enable: bool = False
    threads: int = 8
    batch_size: int = MIB
    bandwidth_limit: int = 0
    prefetch_all: bool = False
    stream_prefetch: bool = False

    def validate(self, where: str) -> None:
        if not self.enable:
            return
        if not 1 <= self.threads <= 1024:
            raise ConfigError(f"config: {where} threads {self.threads} must be 1..1024")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(
                f"config: {where} merging/batch size {self.batch_size} exceeds 0x{MAX_BATCH_SIZE:x}"
            )


@dataclass(frozen=True, slots=True)
class CacheConfig:
    type: str = ""
    compressed: bool = False
    validate: bool = False
    work_dir: str = "."
    has_config: bool = True
    disable_indexed_map: bool = False
    enable_encryption: bool = False
    enable_convergent_encryption: bool = False
    encryption_key: str = ""
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)

    @property
    def enabled(self) -> bool:
        """True for the cache types that keep local cache files."""
        return self.type in FILE_CACHE_TYPES

    def check(self, where: str) -> None:
        if self.type not in CACHE_TYPES:
            raise ConfigError(
                f"config: unknown cache type {self.type!r} (expected blobcache, "
                'filecache, fscache, dummycache or "")'
            )
        if self.enabled:
            if not self.has_config:
                raise ConfigError(
                    f"config: {where}: cache type {self.type} needs a `config` "
                    "object (use {} for the defaults)"
                )
            if self.work_dir == "":
                raise ConfigError(f"config: {where}: cache work_dir must not be empty")
        if self.encryption_key:
            try:
                ok = len(self.encryption_key) == 64 and bytes.fromhex(self.encryption_key)
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"config: {where}: encryption_key must be 64 hex characters")
        self.prefetch.validate(f"{where} prefetch")


@dataclass(frozen=True, slots=True)
class RafsOptions:
    mode: str = "direct"
    batch_size: int = MIB
    validate: bool = False
    enable_xattr: bool = False
    iostats_files: bool = False
    access_pattern: bool = False
    latest_read_files: bool = False
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)


@dataclass(frozen=True, slots=True)
class NydusdConfig:
    """A parsed nydusd configuration in v2 shape (`source_version` says what was read)."""

    backend: BackendConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    rafs: RafsOptions = field(default_factory=RafsOptions)
    id: str = ""
    source_version: int = 2
    external_backends: tuple[Mapping[str, Any], ...] = ()
    #: how the image reaches the kernel: "fuse" (our FUSE server answers everything) or
    #: "erofs" (the kernel's EROFS mounts the bootstrap; we serve the blobs)
    fs_driver: str = "fuse"
    #: erofs driver: "auto" (file-backed where the kernel can, else loop), "file" or "loop"
    erofs_mount: str = "auto"

    def validate(self) -> NydusdConfig:
        """Apply nydusd's rules; return self, or raise ConfigError naming the problem."""
        where = (
            "device.backend.config" if self.source_version == 1 else f"backend.{self.backend.type}"
        )
        allowed = BACKEND_TYPES_V1 if self.source_version == 1 else BACKEND_TYPES
        self.backend.validate(where, allowed)
        self.cache.check("device.cache" if self.source_version == 1 else "cache")
        if self.rafs.mode not in RAFS_MODES:
            raise ConfigError(f"config: mode {self.rafs.mode!r} must be direct or cached")
        if self.rafs.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(
                f"config: amplify_io/batch_size {self.rafs.batch_size} exceeds 0x{MAX_BATCH_SIZE:x}"
            )
        self.rafs.prefetch.validate("fs_prefetch" if self.source_version == 1 else "rafs.prefetch")
        if self.fs_driver not in FS_DRIVERS:
            raise ConfigError(f"config: fs_driver {self.fs_driver!r} must be fuse or erofs")
        if self.erofs_mount not in EROFS_MOUNTS:
            raise ConfigError(
                f"config: erofs_mount {self.erofs_mount!r} must be auto, file or loop"
            )
        return self

    def redacted(self) -> NydusdConfig:
        """A copy with registry credentials, cloud keys and cache keys blanked."""
        s = self.backend.settings
        if isinstance(s, RegistryConfig):
            s = replace(
                s,
                auth="" if s.auth is not None else None,
                registry_token="" if s.registry_token is not None else None,
            )
        elif isinstance(s, (OssConfig, S3Config)):
            s = replace(s, access_key_id="", access_key_secret="")
        cache = replace(self.cache, encryption_key="") if self.cache.encryption_key else self.cache
        return replace(self, backend=replace(self.backend, settings=s), cache=cache)

    def with_registry_auth(self, auth: str) -> NydusdConfig:
        s = self.backend.settings
        if not isinstance(s, RegistryConfig):
            return self
        return replace(self, backend=replace(self.backend, settings=replace(s, auth=auth)))

    def to_v2_dict(self) -> dict[str, Any]:
        """The configuration in nydusd's v2 JSON shape (what the daemon API reports)."""
        backend: dict[str, Any] = {"type": self.backend.type}
        if self.backend.settings is not None:
            backend[self.backend.type] = _plain(self.backend.settings)
        cache: dict[str, Any] = {
            "type": self.cache.type,
            "compressed": self.cache.compressed,
            "validate": self.cache.validate,
            "prefetch": _plain(self.cache.prefetch),
        }
        if self.cache.type in ("blobcache", "filecache"):
            cache["filecache"] = {
                "work_dir": self.cache.work_dir,
                "disable_indexed_map": self.cache.disable_indexed_map,
                "enable_encryption": self.cache.enable_encryption,
                "enable_convergent_encryption": self.cache.enable_convergent_encryption,
                "encryption_key": self.cache.encryption_key,
            }
        elif self.cache.type == "fscache":
            cache["fscache"] = {"work_dir": self.cache.work_dir}
        return {
            "version": 2,
            "id": self.id,
            "backend": backend,
            "external_backends": [dict(e) for e in self.external_backends],
            "cache": cache,
            "rafs": _plain(self.rafs),
            "fs_driver": self.fs_driver,
        }

    def describe_backend(self) -> str:
        """One-line summary for the `backend config:` log line (secrets redacted)."""
        s = self.redacted().backend.settings
        fields = ", ".join(f"{k}: {v!r}" for k, v in _plain(s).items()) if s is not None else ""
        return f"{self.backend.type} {{ {fields} }}"


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# parsers


def _backend_settings(btype: str, o: _Obj | None) -> Any:
    cls = _BACKEND_CLASSES.get(btype)
    if cls is None:
        return None
    return cls.parse(o if o is not None else _Obj({}, ""))


def parse_backend_config(btype: str, doc: Any, where: str = "backend config") -> BackendConfig:
    """A validated backend config from a type name and its JSON object (nydusify's
    `--backend-type` / `--backend-config`)."""
    if btype not in _BACKEND_CLASSES:
        raise ConfigError(
            f"{where}: unknown backend type {btype!r} (expected one of "
            f"{', '.join(sorted(_BACKEND_CLASSES))})"
        )
    cfg = BackendConfig(btype, _backend_settings(btype, _Obj(doc, where)))
    cfg.validate(where, tuple(_BACKEND_CLASSES))
    return cfg


def _prefetch_v1(o: _Obj | None) -> PrefetchConfig:
    if o is None:  # absent object: prefetch off, all fields zero
        return PrefetchConfig(False, 0, 0, 0, False, False)
    return PrefetchConfig(
        enable=o.flag("enable"),
        threads=o.num("threads_count", 8, hi=U32_MAX),
        batch_size=o.num("merging_size", MIB),
        bandwidth_limit=o.num("bandwidth_rate", 0, hi=U32_MAX),
        prefetch_all=o.flag("prefetch_all", True),
        stream_prefetch=o.flag("stream_prefetch"),
    )


def _prefetch_v2(o: _Obj | None) -> PrefetchConfig:
    if o is None:
        return PrefetchConfig()
    return PrefetchConfig(
        enable=o.flag("enable"),
        threads=o.num("threads", 8, hi=U32_MAX),
        batch_size=o.num("batch_size", MIB),
        bandwidth_limit=o.num("bandwidth_limit", 0, hi=U32_MAX),
        prefetch_all=o.flag("prefetch_all", False),
        stream_prefetch=o.flag("stream_prefetch"),
    )


def _external(o: _Obj, key: str) -> tuple[Mapping[str, Any], ...]:
    if not o.has(key):
        return ()
    v = o.data[key]
    if not isinstance(v, list) or not all(isinstance(e, Mapping) for e in v):
        raise ConfigError(f"config: {o.path(key)} must be a list of objects")
    return tuple(v)


def from_v1(doc: Any) -> NydusdConfig:
    """Build the configuration from a parsed v1 JSON document (structure checks only)."""
    top = _Obj(doc, "")
    device = top.obj("device", required=True)
    assert device is not None
    backend = device.obj("backend", required=True)
    assert backend is not None
    btype = backend.text("type", required=True)
    bconf = backend.obj("config", required=True)
    settings = _backend_settings(btype, bconf)
    fs_prefetch = _prefetch_v1(top.obj("fs_prefetch"))
    cache = CacheConfig()
    c = device.obj("cache")
    if c is not None:
        ctype = c.text("type")
        cconf = c.obj("config")
        if ctype in FILE_CACHE_TYPES and cconf is None:
            raise ConfigError(
                f"config: device.cache.config is required for cache type "
                f"{ctype!r} (use {{}} for the defaults)"
            )
        cc = cconf if cconf is not None else _Obj({}, "device.cache.config")
        cache = CacheConfig(
            type=ctype,
            compressed=c.flag("compressed"),
            validate=c.flag("validate"),
            work_dir=cc.text("work_dir", "."),
            has_config=cconf is not None or ctype not in FILE_CACHE_TYPES,
            disable_indexed_map=cc.flag("disable_indexed_map"),
            enable_encryption=cc.flag("enable_encryption"),
            enable_convergent_encryption=cc.flag("enable_convergent_encryption"),
            encryption_key=cc.text("encryption_key"),
            prefetch=fs_prefetch,
        )
    rafs = RafsOptions(
        mode=top.text("mode", required=True),
        batch_size=top.num("amplify_io", MIB),
        validate=top.flag("digest_validate"),
        enable_xattr=top.flag("enable_xattr"),
        iostats_files=top.flag("iostats_files"),
        access_pattern=top.flag("access_pattern"),
        latest_read_files=top.flag("latest_read_files"),
        prefetch=fs_prefetch,
    )
    return NydusdConfig(
        backend=BackendConfig(btype, settings),
        cache=cache,
        rafs=rafs,
        id=device.text("id"),
        source_version=1,
        external_backends=_external(device, "external_backends"),
        fs_driver=top.text("fs_driver", "fuse"),
        erofs_mount=top.text("erofs_mount", "auto"),
    )


def from_v2(doc: Any) -> NydusdConfig:
    """Build the configuration from a parsed v2 document (JSON or TOML)."""
    top = _Obj(doc, "")
    version = top.num("version", 0)
    if version != 2:
        raise ConfigError(f"config: version must be 2, got {version}")
    backend = top.obj("backend", required=True)
    assert backend is not None
    btype = backend.text("type", required=True)
    sub = backend.obj(btype)
    if sub is None and btype == "http-proxy":
        sub = backend.obj("http_proxy")
    if sub is None and btype in _BACKEND_CLASSES:
        raise ConfigError(f"config: backend.{btype} is required for backend type {btype!r}")
    settings = _backend_settings(btype, sub)
    cache = CacheConfig()
    c = top.obj("cache")
    if c is not None:
        ctype = c.text("type")
        section = "fscache" if ctype == "fscache" else "filecache"
        cc = c.obj(section)
        cache = CacheConfig(
            type=ctype,
            compressed=c.flag("compressed"),
            validate=c.flag("validate"),
            work_dir=cc.text("work_dir", ".") if cc else ".",
            has_config=cc is not None or ctype not in FILE_CACHE_TYPES,
            disable_indexed_map=cc.flag("disable_indexed_map") if cc else False,
            enable_encryption=cc.flag("enable_encryption") if cc else False,
            enable_convergent_encryption=cc.flag("enable_convergent_encryption") if cc else False,
            encryption_key=cc.text("encryption_key") if cc else "",
            prefetch=_prefetch_v2(c.obj("prefetch")),
        )
    rafs = RafsOptions()
    r = top.obj("rafs")
    if r is not None:
        rafs = RafsOptions(
            mode=r.text("mode", "direct"),
            batch_size=r.num("batch_size", MIB),
            validate=r.flag("validate"),
            enable_xattr=r.flag("enable_xattr"),
            iostats_files=r.flag("iostats_files"),
            access_pattern=r.flag("access_pattern"),
            latest_read_files=r.flag("latest_read_files"),
            prefetch=_prefetch_v2(r.obj("prefetch")),
        )
    return NydusdConfig(
        backend=BackendConfig(btype, settings),
        cache=cache,
        rafs=rafs,
        id=top.text("id"),
        source_version=2,
        external_backends=_external(top, "external_backends"),
        fs_driver=top.text("fs_driver", "fuse"),
        erofs_mount=top.text("erofs_mount", "auto"),
    )


def parse_config(text: str | bytes) -> NydusdConfig:
    """Parse config text as nydusd does: v2 JSON, then v2 TOML, then v1 JSON.

    Only structure is checked here; call `.validate()` for the semantic rules.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("config: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        json_error = exc
    else:
        if not isinstance(doc, dict):
            raise ConfigError(f"config: top level must be an object, got {_kind(doc)}")
        if "version" in doc:
            return from_v2(doc)
        return from_v1(doc)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        if text.lstrip().startswith("{"):
            raise ConfigError(
                f"config: invalid JSON: {json_error.msg} at line "
                f"{json_error.lineno} column {json_error.colno}"
            ) from None
        raise ConfigError(
            f"config: neither JSON ({json_error.msg} at line "
            f"{json_error.lineno} column {json_error.colno}) nor TOML ({exc})"
        ) from None
    if "version" not in doc:
        raise ConfigError("config: a TOML config must be v2 (`version = 2`)")
    return from_v2(doc)


def load_config(path: str | Path) -> NydusdConfig:
    """Read and parse a config file (not validated)."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return parse_config(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def backend_config(btype: str, doc: Any, where: str = "backend config") -> BackendConfig:
    """A validated backend config from a type and its settings object (a parsed JSON object
    or its text), as `nydus-image --backend-type T --backend-config S` give them."""
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: {where} is not valid JSON: {exc}") from None
    cfg = BackendConfig(btype, _backend_settings(btype, _Obj(doc, where)))
    if cfg.settings is None:
        raise ConfigError(
            f"config: unknown backend type {btype!r} (expected one of {', '.join(BACKEND_TYPES)})"
        )
    cfg.validate(where)
    return cfg


def localfs_config(blob_dir: str, cache_dir: str | None = None) -> NydusdConfig:
    """What `nydusd -D DIR` means: localfs backend in DIR, blob cache in the same DIR."""
    return NydusdConfig(
        backend=BackendConfig("localfs", LocalFsConfig(dir=blob_dir)),
        cache=CacheConfig(type="blobcache", work_dir=cache_dir or blob_dir),
        source_version=1,
    )
