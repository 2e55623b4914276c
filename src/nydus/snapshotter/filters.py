"""containerd's filter syntax, as the Snapshots List call receives it.

A request carries several filters; a snapshot matches when it matches any of them. One filter
is selectors joined by `,` (all must match); a selector is a field path with an optional
operator and value: `name==x`, `parent!="a,b"`, `kind==committed`,
`labels."containerd.io/snapshot.ref"==sha256:...`, `labels.foo` (presence), `name~=^sha`.
Field path parts and values may be double-quoted (Go escapes); unquoted values end at `,`.
containerd itself sends `labels."containerd.io/snapshot.ref"==<target>,parent=="<parent>"`
when a remote snapshotter answers a Prepare with AlreadyExists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nydus.snapshotter.errors import SnapshotInvalid
from nydus.snapshotter.store import Info

__all__ = ["compile_filters"]

Matcher = Callable[[Info], bool]

_FIELD = re.compile(r"[A-Za-z0-9_]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "/": "/", "'": "'"}


@dataclass(frozen=True, slots=True)
class _Selector:
    path: tuple[str, ...]
    op: str  # "", "==", "!=", "~="
    value: str


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> SnapshotInvalid:
        return SnapshotInvalid(f"bad filter {self.text!r} at {self.pos}: {why}")

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while not self.done():
            c = self.text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\" and not self.done():
                e = self.text[self.pos]
                self.pos += 1
                out.append(_ESCAPES.get(e, "\\" + e))
            else:
                out.append(c)
        raise self.fail("unterminated quoted string")

    def field(self) -> str:
        if self.peek('"'):
            return self.quoted()
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return m.group()

    def value(self) -> str:
        if self.peek('"') or self.peek("/"):
            return self.quoted()
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        v = self.text[self.pos : end].strip()
        self.pos = end
        if not v:
            raise self.fail("expected a value")
        return v


def _parse(text: str) -> list[_Selector]:
    sc = _Scanner(text.strip())
    out: list[_Selector] = []
    while True:
        path = [sc.field()]
        while sc.peek("."):
            sc.pos += 1
            path.append(sc.field())
        op, value = "", ""
        for cand in ("==", "!=", "~="):
            if sc.peek(cand):
                op = cand
                sc.pos += 2
                value = sc.value()
                break
        out.append(_Selector(tuple(path), op, value))
        if sc.done():
            return out
        if not sc.peek(","):
            raise sc.fail("expected `,`, `==`, `!=` or `~=`")
        sc.pos += 1


def _field(info: Info, path: tuple[str, ...]) -> str | None:
    head = path[0]
    if head == "labels":
        if len(path) < 2:
            return None
        return info.labels.get(".".join(path[1:]))
    if len(path) != 1:
        return None
    if head == "name":
        return info.name
    if head == "parent":
        return info.parent
    if head == "kind":
        return info.kind.name.lower()
    return None


def _matcher(sel: _Selector) -> Matcher:
    if sel.op == "~=":
        try:
            rx = re.compile(sel.value)
        except re.error as exc:
            raise SnapshotInvalid(f"bad filter regular expression {sel.value!r}: {exc}") from exc

    def match(info: Info) -> bool:
        v = _field(info, sel.path)
        if sel.op == "":
            return v is not None
        if sel.op == "==":
            return v == sel.value
        if sel.op == "!=":
            return v != sel.value
        return v is not None and rx.search(v) is not None

    return match


def compile_filters(filters: Sequence[str]) -> Matcher:
    """One predicate for a List request: any filter matches; within one, all selectors."""
    groups = [[_matcher(s) for s in _parse(f)] for f in filters if f.strip()]
    if not groups:
        return lambda info: True
    return lambda info: any(all(m(info) for m in g) for g in groups)
