"""OCI distribution: image references, manifest/index models, media types, the registry client."""
