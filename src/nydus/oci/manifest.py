"""OCI / Docker-schema2 manifests, indexes, descriptors and platforms as small dataclasses.

`from_json` accepts bytes, text or an already decoded dict, validates what readers rely on and
keeps unknown fields in `extra`; `to_json` writes Go's field order and escaping (what upstream's
`encoding/json` emits), unknown fields last. Digests are computed over the bytes actually pushed,
so any valid JSON interoperates; the Go form only keeps digests stable against upstream's output.
"""

from __future__ import annotations

import json
import platform as _host
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nydus.oci import mediatypes as mt
from nydus.oci.errors import InvalidManifest, InvalidReference, PlatformNotFound
from nydus.oci.reference import check_digest

__all__ = [
    "Descriptor",
    "Index",
    "Manifest",
    "Platform",
    "go_json",
    "host_platform",
    "is_nydus_index_entry",
    "is_nydus_manifest",
    "parse_manifest",
    "select_manifest",
]

JSONDict = dict[str, Any]

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "i386": "386",
    "i686": "386",
    "armhf": "arm",
    "armel": "arm",
}
_ARCH_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}
_ARCH_ALIAS_VARIANT = {"armhf": "v7", "armel": "v6"}


def go_json(obj: Any, indent: int | None = None) -> bytes:
    """JSON as Go's encoding/json writes it: compact or `indent`-space, `<>&` escaped, UTF-8."""
    if indent is None:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=indent, separators=(",", ": "))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()


def _load(data: bytes | str | Mapping[str, Any], what: str) -> JSONDict:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidManifest(f"{what} is not a JSON object")
    return obj


def _get(
    d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, required: bool = False
) -> Any:
    value = d.get(key)
    if value is None:
        if required:
            raise InvalidManifest(f"{what}: missing {key!r}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidManifest(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _str_map(d: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = _get(d, key, dict, what) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidManifest(f"{what}: {key!r} must map strings to strings")
    return dict(value)


def _extra(d: Mapping[str, Any], known: Iterable[str]) -> JSONDict:
    names = set(known)
    return {k: v for k, v in d.items() if k not in names}


def _put(out: JSONDict, key: str, value: Any) -> None:
    """Go's `omitempty`: skip None, empty strings, lists and maps."""
    if value is not None and value != "" and value != [] and value != {}:
        out[key] = value


@dataclass(frozen=True, slots=True)
class Platform:
    """`os/architecture[/variant]`, as in index entries and image configs."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    _KEYS = ("architecture", "os", "os.version", "os.features", "variant")

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64`, `linux/arm64/v8`; architecture aliases (x86_64, aarch64) are accepted."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidReference(f"invalid platform {text!r}: expected os/arch[/variant]")
        variant = parts[2].lower() if len(parts) == 3 else None
        return cls(parts[0].lower(), parts[1].lower(), variant)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], what: str = "platform") -> Platform:
        features = _get(d, "os.features", list, what) or []
        return cls(
            os=_get(d, "os", str, what) or "",
            architecture=_get(d, "architecture", str, what) or "",
            variant=_get(d, "variant", str, what) or None,
            os_version=_get(d, "os.version", str, what) or None,
            os_features=tuple(str(f) for f in features),
            extra=_extra(d, cls._KEYS),
        )

    def to_json(self) -> JSONDict:
        # Go: architecture and os are always written, the rest only when set.
        out: JSONDict = {"architecture": self.architecture, "os": self.os}
        _put(out, "os.version", self.os_version)
        _put(out, "os.features", list(self.os_features))
        _put(out, "variant", self.variant)
        out.update(self.extra)
        return out

    def normalized(self) -> Platform:
        """containerd's normalisation: amd64/arm64 names, arm64 → variant v8, arm → v7."""
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = self.variant or _ARCH_ALIAS_VARIANT.get(self.architecture.lower())
        if variant and variant[0].isdigit():
            variant = "v" + variant
        variant = variant or _ARCH_DEFAULT_VARIANT.get(arch)
        if arch == "amd64" and variant == "v1":
            variant = None
        return Platform(
            self.os.lower(), arch, variant, self.os_version, self.os_features, self.extra
        )

    def matches(self, other: Platform) -> bool:
        """Whether `other` (an index entry's platform) satisfies this wanted platform.

        A wanted platform without a variant accepts any variant of its architecture.
        """
        want, have = self.normalized(), other.normalized()
        if (want.os, want.architecture) != (have.os, have.architecture):
            return False
        return self.variant is None or want.variant == have.variant

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def host_platform() -> Platform:
    """`linux/<this machine's architecture>`, the default of `--platform`."""
    return Platform("linux", _host.machine() or "amd64").normalized()


@dataclass(slots=True)
class Descriptor:
    """A content descriptor (config, layer, index entry, subject)."""

    media_type: str
    digest: str
    size: int
    urls: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    data: str | None = None  # base64 of embedded content
    platform: Platform | None = None
    artifact_type: str | None = None
    extra: JSONDict = field(default_factory=dict)

    _KEYS = (
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "data",
        "platform",
        "artifactType",
    )

    @classmethod
    def from_json(cls, d: Mapping[str, Any], what: str = "descriptor") -> Descriptor:
        if not isinstance(d, Mapping):
            raise InvalidManifest(f"{what} is not a JSON object")
        digest = _get(d, "digest", str, what, required=True)
        try:
            check_digest(digest, f"{what} digest")
        except InvalidReference as exc:
            raise InvalidManifest(str(exc)) from None
        size = _get(d, "size", int, what, required=True)
        if size < 0:
            raise InvalidManifest(f"{what}: negative size {size}")
        platform = _get(d, "platform", dict, what)
        return cls(
            media_type=_get(d, "mediaType", str, what) or "",
            digest=digest,
            size=size,
            urls=[str(u) for u in _get(d, "urls", list, what) or []],
            annotations=_str_map(d, "annotations", what),
            data=_get(d, "data", str, what),
            platform=Platform.from_json(platform, f"{what} platform") if platform else None,
            artifact_type=_get(d, "artifactType", str, what),
            extra=_extra(d, cls._KEYS),
        )

    def to_json(self) -> JSONDict:
        out: JSONDict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        _put(out, "urls", self.urls)
        _put(out, "annotations", dict(sorted(self.annotations.items())))  # Go sorts map keys
        _put(out, "data", self.data)
        _put(out, "platform", self.platform.to_json() if self.platform else None)
        _put(out, "artifactType", self.artifact_type)
        out.update(self.extra)
        return out


_DOC_KEYS = ("schemaVersion", "mediaType", "artifactType", "subject", "annotations")


def _doc_fields(
    d: JSONDict, what: str, allowed: frozenset[str], body_keys: tuple[str, ...]
) -> dict[str, Any]:
    """The fields manifests and indexes share, validated, as constructor arguments."""
    if d.get("schemaVersion") != 2:
        raise InvalidManifest(f"{what}: schemaVersion {d.get('schemaVersion')!r}, expected 2")
    media_type = _get(d, "mediaType", str, what)
    if media_type is not None and media_type not in allowed:
        raise InvalidManifest(f"{what}: unexpected mediaType {media_type!r}")
    if body_keys[-1] not in d:
        raise InvalidManifest(f"{what}: missing {body_keys[-1]!r}")
    subject = _get(d, "subject", dict, what)
    return {
        "media_type": media_type,
        "artifact_type": _get(d, "artifactType", str, what),
        "subject": Descriptor.from_json(subject, f"{what} subject") if subject else None,
        "annotations": _str_map(d, "annotations", what),
        "extra": _extra(d, _DOC_KEYS + body_keys),
    }


@dataclass(slots=True, kw_only=True)
class _Document:
    """Fields and serialisation shared by Manifest and Index (keyword-only), in Go's order."""

    media_type: str | None = None
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    schema_version: int = 2
    extra: JSONDict = field(default_factory=dict)

    def _body(self) -> JSONDict:
        raise NotImplementedError

    def to_dict(self) -> JSONDict:
        out: JSONDict = {"schemaVersion": self.schema_version}
        _put(out, "mediaType", self.media_type)
        _put(out, "artifactType", self.artifact_type)
        out.update(self._body())
        _put(out, "subject", self.subject.to_json() if self.subject else None)
        _put(out, "annotations", dict(sorted(self.annotations.items())))  # Go sorts map keys
        out.update(self.extra)
        return out

    def to_json(self, indent: int | None = None) -> bytes:
        return go_json(self.to_dict(), indent)


@dataclass(slots=True)
class Manifest(_Document):
    """An image manifest (OCI or Docker schema2: same shape, different media types)."""

    config: Descriptor
    layers: list[Descriptor]
    media_type: str | None = field(default=mt.OCI_MANIFEST, kw_only=True)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Manifest:
        d = _load(data, "manifest")
        common = _doc_fields(d, "manifest", mt.MANIFEST_TYPES, ("config", "layers"))
        layers = _get(d, "layers", list, "manifest") or []
        return cls(
            config=Descriptor.from_json(
                _get(d, "config", dict, "manifest", required=True), "manifest config"
            ),
            layers=[Descriptor.from_json(x, f"manifest layer {i}") for i, x in enumerate(layers)],
            **common,
        )

    def _body(self) -> JSONDict:
        return {"config": self.config.to_json(), "layers": [x.to_json() for x in self.layers]}


@dataclass(slots=True)
class Index(_Document):
    """An image index / Docker manifest list."""

    manifests: list[Descriptor]
    media_type: str | None = field(default=mt.OCI_INDEX, kw_only=True)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Index:
        d = _load(data, "index")
        common = _doc_fields(d, "index", mt.INDEX_TYPES, ("manifests",))
        entries = _get(d, "manifests", list, "index") or []
        return cls(
            manifests=[Descriptor.from_json(x, f"index entry {i}") for i, x in enumerate(entries)],
            **common,
        )

    def _body(self) -> JSONDict:
        return {"manifests": [entry.to_json() for entry in self.manifests]}


def parse_manifest(
    data: bytes | str | Mapping[str, Any], media_type: str | None = None
) -> Manifest | Index:
    """Parse a manifest or an index, choosing by `media_type` (e.g. the Content-Type) or content."""
    d = _load(data, "manifest")
    kind = media_type if media_type in mt.MANIFEST_TYPES | mt.INDEX_TYPES else d.get("mediaType")
    if mt.is_index(kind) or (kind is None and "manifests" in d):
        return Index.from_json(d)
    return Manifest.from_json(d)


def is_nydus_manifest(manifest: Manifest, strict: bool = False) -> bool:
    """Whether the last layer is a Nydus bootstrap layer.

    Default: nydus-snapshotter's rule (annotation key present). `strict`: nydusify's parser rule
    (value exactly "true" and a gzip tar media type).
    """
    if not manifest.layers:
        return False
    last = manifest.layers[-1]
    if not strict:
        return mt.NYDUS_BOOTSTRAP_ANNOTATION in last.annotations
    return (
        last.annotations.get(mt.NYDUS_BOOTSTRAP_ANNOTATION) == "true"
        and last.media_type in mt.BOOTSTRAP_LAYER_TYPES
    )


def is_nydus_index_entry(entry: Descriptor) -> bool:
    """Whether an index entry is marked as a Nydus manifest (artifactType or legacy os.feature)."""
    if entry.artifact_type == mt.NYDUS_MANIFEST_ARTIFACT:
        return True
    return entry.platform is not None and mt.NYDUS_OS_FEATURE in entry.platform.os_features


def select_manifest(
    index: Index, platform: Platform | str, *, nydus: bool | None = None
) -> Descriptor:
    """The first entry of `index` for `platform`.

    `nydus=True` considers only entries marked as Nydus manifests, `False` only unmarked ones,
    `None` any entry.
    """
    want = Platform.parse(platform) if isinstance(platform, str) else platform
    for entry in index.manifests:
        if entry.platform is None or not want.matches(entry.platform):
            continue
        if nydus is None or nydus == is_nydus_index_entry(entry):
            return entry
    have = ", ".join(sorted({str(e.platform) for e in index.manifests if e.platform})) or "none"
    kind = {True: "Nydus manifest", False: "non-Nydus manifest", None: "manifest"}[nydus]
    raise PlatformNotFound(f"no {kind} for platform {want} in index (platforms: {have})")
