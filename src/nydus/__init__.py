"""A Python implementation of Nydus (RAFS v6 images, nydusd, nydusify)."""

__version__ = "0.1.0"
