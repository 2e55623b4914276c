"""A bounded bootstrap fuzzer: mutants of a few bootstraps, each opened by the reader (every
call nydusd makes through `fs.RafsFs`, plus `rafs.walk`) and by `nydus-image check`'s
`check_bootstrap`, in a pool of worker processes with a time and an address-space limit per
case. `python -m tests.format.bootstrap_fuzz BOOTSTRAP... --cases N` runs it by hand.

A case's outcome for each side is one of: `ok`, `refused` (a `NydusError`), `crash` (any
other exception: a defect), `hang` (over the time limit), `memory` (over the memory limit).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import sys
import traceback
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from nydus.errors import NydusError
from nydus.format.rafs import RafsSuper, inode_range_error, open_bootstrap, walk

CASE_SECONDS = 2.0  # per case and side; a clean walk of these small images takes milliseconds
MEMORY_LIMIT = 1 << 30  # address space of a worker beyond what it held when it started
MAX_ENTRIES = 100_000  # more names than any of the small sources can hold without a loop


class _Hang(BaseException):
    """Raised by the case timer; a BaseException so that no `except Exception` eats it."""


@dataclass(frozen=True)
class Outcome:
    reader: str  # ok | refused | crash | hang | memory
    check: str
    detail: str = ""  # the exception of a crash (type, message, innermost frame)


def mutate(src: bytes, seed: int) -> bytes:
    """A deterministic mutant of `src`: 1 to 4 edits, mostly at or near non-zero bytes (where
    the records are), each a bit flip, a random byte, or a 1/2/4/8-byte field set to an
    extreme (0, 1, all ones, the sign bit, random)."""
    rng = random.Random(seed)
    b = bytearray(src)
    hot = [i for i in range(len(b)) if b[i]] or [0]
    for _ in range(rng.randint(1, 4)):
        width = rng.choice((1, 2, 4, 8))
        off = rng.choice(hot) if rng.random() < 0.8 else rng.randrange(len(b))
        off -= off % width
        kind = rng.random()
        if kind < 0.35:
            b[off] ^= 1 << rng.randrange(8)
        elif kind < 0.5:
            b[off] = rng.randrange(256)
        else:
            bits = 8 * width
            value = rng.choice((0, 1, (1 << bits) - 1, 1 << (bits - 1), rng.getrandbits(bits)))
            b[off : off + width] = value.to_bytes(width, "little")[: len(b) - off]
    return bytes(b)


def exercise_reader(buf: bytes) -> None:
    """Everything nydusd asks of a bootstrap: open, then for every entry getattr (whose
    values the FUSE layer must be able to send), lookup of each name, readdir with `.` and
    `..`, readlink, xattrs, chunk lists; statfs, the chunk and prefetch tables."""
    from nydus.fs.core import FsOptions, RafsFs

    sb = open_bootstrap(buf)
    fs = RafsFs(sb, None, FsOptions(enable_xattr=True))
    for entries, (_path, ino) in enumerate(walk(sb), 1):
        if entries > MAX_ENTRIES:
            raise AssertionError(f"walk yielded over {MAX_ENTRIES} entries (no loop detection?)")
        a = fs.getattr(ino)
        why = inode_range_error(a.uid, a.gid, a.mtime, a.mtime_nsec, a.size)
        if why is not None:
            raise AssertionError(f"reader served inode {ino} with {why}")
        for name in fs.listxattr(ino):
            fs.getxattr(ino, name)
        if a.is_dir:
            for item in fs.iter_dir(ino):
                fs.lookup(ino, item.name)
        elif a.is_symlink:
            fs.readlink(ino)
        elif a.is_reg:
            fs.chunks(ino)
    fs.statfs()
    sb.chunk_table()
    for ino in sb.prefetch_inos():
        fs.getattr(ino)


def run_check(buf: bytes) -> None:
    from nydus.builder.check import check_bootstrap

    sb: RafsSuper = open_bootstrap(buf)
    check_bootstrap(sb)


def _side(fn: object, buf: bytes) -> tuple[str, str]:
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        fn(buf)  # type: ignore[operator]
        return "ok", ""
    except NydusError:
        return "refused", ""
    except _Hang:
        return "hang", ""
    except MemoryError:
        return "memory", ""
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        return "crash", f"{type(exc).__name__} at {where}: {str(exc)[:160]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


_SOURCES: list[bytes] = []


def _init(sources: list[bytes]) -> None:
    _SOURCES[:] = sources

    def on_alarm(_sig: int, _frame: object) -> None:
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    with open("/proc/self/statm") as f:
        vm_now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm_now + MEMORY_LIMIT, resource.RLIM_INFINITY))


def _run_cases(cases: Sequence[tuple[int, int]]) -> list[tuple[int, int, Outcome]]:
    out = []
    for src, seed in cases:
        buf = mutate(_SOURCES[src], seed)
        reader, rdetail = _side(exercise_reader, buf)
        check, cdetail = _side(run_check, buf)
        out.append((src, seed, Outcome(reader, check, rdetail or cdetail)))
    return out


def fuzz(
    sources: Sequence[bytes], cases_per_source: int, *, workers: int = 2, batch: int = 100
) -> list[tuple[int, int, Outcome]]:
    """Run `cases_per_source` mutants of every source (seeds 0..n-1) in `workers` processes;
    returns (source index, seed, outcome) for every case."""
    cases = [(s, seed) for s in range(len(sources)) for seed in range(cases_per_source)]
    batches = [cases[i : i + batch] for i in range(0, len(cases), batch)]
    results: list[tuple[int, int, Outcome]] = []
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(list(sources),)) as pool:
        # a case stuck in C (no signal delivered) would stop its batch: bound the wait
        limit = batch * 2 * CASE_SECONDS + 30
        for fut in [pool.submit(_run_cases, b) for b in batches]:
            results.extend(fut.result(timeout=limit))
    return results


def disagreements(results: Sequence[tuple[int, int, Outcome]]) -> list[str]:
    """Every case that is a defect: a crash, hang or memory blow-up on either side, or a
    bootstrap the reader refuses that check passes."""
    bad = []
    for src, seed, o in results:
        if o.reader not in ("ok", "refused") or o.check not in ("ok", "refused"):
            bad.append(f"source {src} seed {seed}: reader {o.reader}, check {o.check} {o.detail}")
        elif o.reader == "refused" and o.check == "ok":
            bad.append(f"source {src} seed {seed}: the reader refuses it, check passes it")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bootstraps", nargs="+")
    p.add_argument("--cases", type=int, default=1000, help="mutants per bootstrap")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    a = p.parse_args(argv)
    sources = []
    for path in a.bootstraps:
        with open(path, "rb") as f:
            sources.append(f.read())
    results = fuzz(sources, a.cases, workers=a.workers)
    print(Counter(f"reader {o.reader} / check {o.check}" for _s, _d, o in results))
    bad = disagreements(results)
    print("\n".join(bad[:50]) or "no defects")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
