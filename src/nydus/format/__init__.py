"""Pure on-disk records of RAFS v6/v5 bootstraps and Nydus blobs: bytes <-> dataclasses.

No file I/O and no logging here; every parser validates and raises FormatError with a
message naming the record and the offending value.
"""
