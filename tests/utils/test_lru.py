"""`nydus.utils.lru.Lru`: count- and byte-bounded eviction in recency order, loaders, and
sharing between threads."""

from __future__ import annotations

import threading

from nydus.utils.lru import Lru


def test_count_bounded_evicts_least_recently_used():
    lru: Lru[int, str] = Lru(3)
    for k in (1, 2, 3):
        lru.put(k, str(k))
    assert lru.get(1) == "1"  # 1 is now the most recent: 2 goes first
    lru.put(4, "4")
    assert (2 in lru, 1 in lru, 3 in lru, 4 in lru) == (False, True, True, True)
    lru.put(3, "three")  # replacing counts once
    assert (len(lru), lru.used, lru.get(3)) == (3, 3, "three")
    lru.put(5, "5")
    assert 1 not in lru and lru.get(4) == "4"  # 1 was the least recently used


def test_byte_bounded_by_size_function():
    lru: Lru[str, bytes] = Lru(10, size=len)
    lru.put("a", b"x" * 4)
    lru.put("b", b"x" * 4)
    assert lru.used == 8
    lru.put("c", b"x" * 4)  # 12 > 10: "a" goes
    assert ("a" in lru, lru.used) == (False, 8)
    lru.put("b", b"x")  # replacing an entry returns its bytes
    assert lru.used == 5
    lru.put("big", b"x" * 11)  # larger than the whole budget: not stored, nothing evicted
    assert ("big" in lru, len(lru), lru.used) == (False, 2, 5)
    lru.clear()
    assert (len(lru), lru.used, lru.get("c")) == (0, 0, None)


def test_zero_capacity_stores_nothing():
    lru: Lru[int, int] = Lru(0)
    lru.put(1, 1)
    assert (len(lru), lru.get(1)) == (0, None)


def test_get_or_load_loads_once_and_not_on_error():
    lru: Lru[int, int] = Lru(8)
    calls: list[int] = []

    def load(k: int) -> int:
        calls.append(k)
        if k < 0:
            raise ValueError(k)
        return k * 10

    assert lru.get_or_load(2, load) == 20
    assert lru.get_or_load(2, load) == 20
    assert calls == [2]
    for _ in range(2):
        try:
            lru.get_or_load(-1, load)
        except ValueError:
            pass
    assert calls == [2, -1, -1] and -1 not in lru  # failures are not cached


def test_threads_share_one_instance():
    lru: Lru[int, bytes] = Lru(64 * 100, size=len)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(3000):
                k = (seed * 7919 + i) % 300
                got = lru.get_or_load(k, lambda k: bytes([k % 256]) * 64)
                assert got == bytes([k % 256]) * 64
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert lru.used == 64 * len(lru) <= 64 * 100
