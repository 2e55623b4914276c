"""Run a command and measure its peak RSS.

``ru_maxrss`` of a direct child is useless from a big parent: a child forked (or vforked) from
a Python process inherits the parent's RSS high-water mark across ``exec``, so ``true`` run from
a 300 MB pytest process "peaks" at 300 MB.  :func:`run_measured` therefore starts a tiny
``python -S`` wrapper that forks the real command and reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after the command exits; the measurement floor
is then the wrapper's own size (about 7 MB).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Measured", "run_measured"]

_WRAPPER = r"""
import os, sys, resource
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write("exec %s: %s\n" % (argv[0], exc))
    os._exit(127)
_, status = os.waitpid(pid, 0)
with open(report, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
if os.WIFSIGNALED(status):
    os._exit(128 + os.WTERMSIG(status))
os._exit(os.WEXITSTATUS(status))
"""


@dataclass
class Measured:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    maxrss_bytes: int  # peak RSS of the command (and of the descendants it waited for)


def run_measured(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> Measured:
    """Run ``cmd`` to completion; return exit code, output, wall time and peak RSS in bytes.

    On timeout the whole process group is killed and ``subprocess.TimeoutExpired`` raised.
    """
    args = [os.fspath(c) for c in cmd]
    with tempfile.TemporaryDirectory(prefix="measure-") as td:
        report = os.path.join(td, "maxrss")
        out_path, err_path = os.path.join(td, "out"), os.path.join(td, "err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.monotonic()
            p = subprocess.Popen(
                [sys.executable, "-S", "-c", _WRAPPER, report, *args],
                stdout=out,
                stderr=err,
                stdin=stdin,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise
            seconds = time.monotonic() - t0
        try:
            with open(report) as f:
                maxrss = int(f.read()) * 1024
        except (OSError, ValueError):
            maxrss = -1
        with open(out_path, "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        with open(err_path, "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
    return Measured(
        args=args, returncode=rc, stdout=stdout, stderr=stderr, seconds=seconds, maxrss_bytes=maxrss
    )
