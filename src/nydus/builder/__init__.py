"""nydus-image: build RAFS v6 bootstraps and native Nydus blobs from directories and
OCI layer tars, stack layers with whiteouts, merge per-layer bootstraps."""
