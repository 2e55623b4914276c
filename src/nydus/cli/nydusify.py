"""`nydusify`: not implemented yet (see the project's issues)."""

from __future__ import annotations

import sys


def main() -> int:
    print("nydusify: not yet implemented in this version of nydus-py", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
