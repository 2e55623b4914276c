"""Where the shared interop vectors live (../shared/golden beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("NYDUS_GOLDEN", REPO.parent / "shared" / "golden"))


def golden_path(*parts: str) -> Path:
    """Path inside the golden set; skips the calling test (saying why) when absent."""
    p = GOLDEN.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"golden vector {p} absent (shared/golden is not beside the repository)")
    return p


V6_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
