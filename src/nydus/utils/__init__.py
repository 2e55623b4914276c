"""Small helpers shared by every layer: digests, compressors."""
