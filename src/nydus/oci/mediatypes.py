"""Media types, annotation keys and markers of OCI, Docker schema2 and Nydus images.

See spec/interfaces.md §1.1 (media types) and §1.2 (annotations).
"""

from __future__ import annotations

# OCI image-spec
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# Docker image manifest v2, schema 2
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Nydus
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
NYDUS_MANIFEST_ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"
NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"

# Layer annotations
ANNOTATION_PREFIX = "containerd.io/snapshot/"
NYDUS_BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
NYDUS_BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
NYDUS_REF_ANNOTATION = "containerd.io/snapshot/nydus-ref"
NYDUS_EMPTY_LAYER_ANNOTATION = "containerd.io/snapshot/nydus-empty-layer"
UNCOMPRESSED_ANNOTATION = "containerd.io/uncompressed"

# Manifest annotations
NYDUS_SOURCE_DIGEST_ANNOTATION = "containerd.io/snapshot/nydus-source-digest"
NYDUS_SOURCE_REFERENCE_ANNOTATION = "containerd.io/snapshot/nydus-source-reference"
NYDUS_BUILDER_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-builder-version"
#: on the bootstrap layer of `nydusify optimize` output: the id of the prefetch blob
NYDUS_PREFETCH_BLOB_ANNOTATION = "containerd.io/snapshot/nydus-separated-blob-with-prefetch-files"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
BOOTSTRAP_LAYER_TYPES = frozenset({OCI_LAYER_GZIP, DOCKER_LAYER_GZIP})

# What a client asks for when it fetches by tag: every manifest and index type we read.
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)


def is_manifest(media_type: str | None) -> bool:
    return media_type in MANIFEST_TYPES


def is_index(media_type: str | None) -> bool:
    return media_type in INDEX_TYPES


def is_docker(media_type: str | None) -> bool:
    return media_type is not None and media_type.startswith("application/vnd.docker.")
