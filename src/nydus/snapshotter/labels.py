"""The snapshot labels containerd, CRI, BuildKit and image annotations hand a snapshotter
(interfaces.md §7.2), and small readers over them."""

from __future__ import annotations

from collections.abc import Mapping

# containerd: present on Prepare of image layers; value = the chain id to commit under
TARGET_REF = "containerd.io/snapshot.ref"
# layer annotations of a Nydus image (containerd forwards `containerd.io/snapshot/` labels)
NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
# CRI's per-layer labels
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
# the stargz snapshotter's labels, which `ctr-remote image rpull` sets (fallback image ref)
STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
# credentials handed in by CRI integrations (highest priority)
PULL_USERNAME = "containerd.io/snapshot/pullusername"
PULL_SECRET = "containerd.io/snapshot/pullsecret"
OVERLAY_VOLATILE = "containerd.io/snapshot/overlay.volatile"


def is_true(labels: Mapping[str, str], name: str) -> bool:
    """Annotations are strings; upstream treats presence with value "true" as set."""
    return labels.get(name, "").lower() == "true"


def image_ref(labels: Mapping[str, str]) -> str:
    """The image reference a layer belongs to: CRI's label, else the stargz one."""
    return labels.get(CRI_IMAGE_REF) or labels.get(STARGZ_REFERENCE) or ""


def layer_digest(labels: Mapping[str, str]) -> str:
    return labels.get(CRI_LAYER_DIGEST) or labels.get(STARGZ_DIGEST) or ""
