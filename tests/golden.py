"""Where the shared interop vectors live (../shared/golden beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.env import missing

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("NYDUS_GOLDEN", REPO.parent / "shared" / "golden"))


def golden_path(*parts: str) -> Path:
    """Path inside the golden set.  When absent: the calling test skips saying why, or fails
    in CI (``CI=true``): a CI run without the golden set must not pass on our own images alone.
    Tests that read the golden set also carry ``@pytest.mark.golden``."""
    p = GOLDEN.joinpath(*parts)
    if not p.exists():
        missing(
            f"golden vector {p} absent (../shared/golden beside the repository, or NYDUS_GOLDEN)"
        )
    return p


V6_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
