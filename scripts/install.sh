#!/usr/bin/env bash
# Install everything nydus-py needs on a fresh Debian 12 machine (run as root):
# system packages with apt-get, then a virtualenv at .venv with the package and test deps.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-dev gcc fuse3 \
  erofs-utils docker-registry skopeo umoci apache2-utils attr acl zstd util-linux \
  mmdebstrap cryptsetup-bin containerd runc stargz-snapshotter busybox-static >/dev/null
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]'
# byte-compile the sources once: an editable install never does, and nydusd's start pays for it
.venv/bin/python -m compileall -q src >/dev/null
