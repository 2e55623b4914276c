"""`Lru`: a small thread-safe least-recently-used map.

Bounded by its number of entries, or, given a `size` function, by the sum of `size(value)`
over its entries (e.g. `size=len` for a byte budget). Every method takes one lock, so any
number of threads may share an instance; `get_or_load` runs the loader outside the lock (two
threads missing the same key at once may both load it; the last one stored wins).

The map holds only what is put into it: an object that owns an `Lru` (a bootstrap reader's
record cache, say) is freed by reference counting as soon as it is dropped, unlike a
`functools.lru_cache` on a method, which is shared by every instance and keeps them all alive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Lru"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least-recently-used map of at most `capacity` entries (or `capacity` units of `size`).

    Values are never None (`get` answers None for an absent key). A value larger than the
    whole capacity is not stored; a capacity of 0 stores nothing.
    """

    __slots__ = ("_bytes", "_d", "_lock", "_size", "capacity")

    def __init__(self, capacity: int, size: Callable[[V], int] | None = None) -> None:
        self.capacity = capacity
        self._size = size
        self._bytes = 0  # sum of size(value) when there is a size function
        self._d: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Entries stored, or the sum of `size(value)` over them."""
        return len(self._d) if self._size is None else self._bytes

    def get(self, key: K) -> V | None:
        """The value stored for `key` (now the most recently used), or None."""
        with self._lock:
            value = self._d.get(key)
            if value is not None:
                self._d.move_to_end(key)
            return value

    def get_or_load(self, key: K, load: Callable[[K], V]) -> V:
        """The value stored for `key`, else `load(key)`, stored before it is returned."""
        with self._lock:
            value = self._d.get(key)
            if value is not None:
                self._d.move_to_end(key)
                return value
        value = load(key)
        self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        """Store `value` for `key`, evicting the least recently used entries over capacity."""
        size = self._size
        if size is None:  # bounded by count
            if self.capacity <= 0:
                return
            with self._lock:
                d = self._d
                d[key] = value
                d.move_to_end(key)
                if len(d) > self.capacity:
                    d.popitem(last=False)
            return
        cost = size(value)
        if cost > self.capacity:
            return
        with self._lock:
            d = self._d
            old = d.pop(key, None)
            if old is not None:
                self._bytes -= size(old)
            d[key] = value
            self._bytes += cost
            while self._bytes > self.capacity:
                _, evicted = d.popitem(last=False)
                self._bytes -= size(evicted)

    def __contains__(self, key: object) -> bool:
        """Whether `key` is stored (without making it the most recently used)."""
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0
