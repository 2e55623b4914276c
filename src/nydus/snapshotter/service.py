"""containerd's Snapshots gRPC service (`containerd.services.snapshots.v1.Snapshots`) over a
`Snapshotter`: protobuf messages in and out, domain errors mapped to gRPC status codes (which
containerd's proxy client maps back to NotFound, AlreadyExists, FailedPrecondition...).

Method handlers are registered by hand with grpcio's generic handler (no generated `_pb2_grpc`
module): the method paths are `/containerd.services.snapshots.v1.Snapshots/<Method>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from nydus.errors import NydusError
from nydus.snapshotter.api import mount_pb2
from nydus.snapshotter.api import snapshots_pb2 as pb
from nydus.snapshotter.errors import (
    DaemonFailure,
    SnapshotExists,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotPrecondition,
)
from nydus.snapshotter.snapshotter import Mount, Snapshotter
from nydus.snapshotter.store import Info, Kind

__all__ = ["SERVICE_NAME", "add_snapshots_service"]

SERVICE_NAME = "containerd.services.snapshots.v1.Snapshots"
LIST_BATCH = 100  # infos per streamed ListSnapshotsResponse

log = logging.getLogger(__name__)

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (SnapshotNotFound, grpc.StatusCode.NOT_FOUND),
    (SnapshotExists, grpc.StatusCode.ALREADY_EXISTS),
    (SnapshotPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (SnapshotInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (DaemonFailure, grpc.StatusCode.UNAVAILABLE),
    (NydusError, grpc.StatusCode.FAILED_PRECONDITION),
]

R = TypeVar("R")


def _mounts_pb(mounts: list[Mount]) -> list[Any]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def _info_pb(info: Info) -> Any:
    out = pb.Info(name=info.name, parent=info.parent, kind=info.kind.name, labels=info.labels)
    out.created_at.FromNanoseconds(info.created_ns)
    out.updated_at.FromNanoseconds(info.updated_ns)
    return out


def _info_from_pb(msg: Any) -> Info:
    return Info(msg.name, msg.parent, Kind(msg.kind), 0, 0, dict(msg.labels))


class _Servicer:
    def __init__(self, sn: Snapshotter) -> None:
        self.sn = sn

    def _call(self, what: str, context: grpc.ServicerContext, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except (NydusError, OSError) as exc:
            code = grpc.StatusCode.INTERNAL
            for cls, c in _CODES:
                if isinstance(exc, cls):
                    code = c
                    break
            msg = str(exc) if isinstance(exc, NydusError) else f"{what}: {exc}"
            level = logging.DEBUG if code == grpc.StatusCode.ALREADY_EXISTS else logging.WARNING
            log.log(level, "%s: %s", what, msg)
            context.abort(code, msg)
        except Exception as exc:  # a bug: report it, never kill the server thread
            log.exception("%s failed", what)
            context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    def Prepare(self, req: Any, context: grpc.ServicerContext) -> Any:
        what = f"prepare {req.key}"
        m = self._call(what, context, lambda: self.sn.prepare(req.key, req.parent, req.labels))
        return pb.PrepareSnapshotResponse(mounts=_mounts_pb(m))

    def View(self, req: Any, context: grpc.ServicerContext) -> Any:
        what = f"view {req.key}"
        m = self._call(what, context, lambda: self.sn.view(req.key, req.parent, req.labels))
        return pb.ViewSnapshotResponse(mounts=_mounts_pb(m))

    def Mounts(self, req: Any, context: grpc.ServicerContext) -> Any:
        m = self._call(f"mounts {req.key}", context, lambda: self.sn.mounts(req.key))
        return pb.MountsResponse(mounts=_mounts_pb(m))

    def Commit(self, req: Any, context: grpc.ServicerContext) -> Any:
        what = f"commit {req.key} as {req.name}"
        self._call(what, context, lambda: self.sn.commit(req.name, req.key, req.labels))
        return empty_pb2.Empty()

    def Remove(self, req: Any, context: grpc.ServicerContext) -> Any:
        self._call(f"remove {req.key}", context, lambda: self.sn.remove(req.key))
        return empty_pb2.Empty()

    def Stat(self, req: Any, context: grpc.ServicerContext) -> Any:
        info = self._call(f"stat {req.key}", context, lambda: self.sn.stat(req.key))
        return pb.StatSnapshotResponse(info=_info_pb(info))

    def Update(self, req: Any, context: grpc.ServicerContext) -> Any:
        paths = list(req.update_mask.paths) if req.HasField("update_mask") else []
        info = self._call(
            f"update {req.info.name}",
            context,
            lambda: self.sn.update(_info_from_pb(req.info), paths),
        )
        return pb.UpdateSnapshotResponse(info=_info_pb(info))

    def List(self, req: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        infos = self._call("list", context, lambda: self.sn.walk(list(req.filters)))
        for i in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=[_info_pb(x) for x in infos[i : i + LIST_BATCH]])

    def Usage(self, req: Any, context: grpc.ServicerContext) -> Any:
        u = self._call(f"usage {req.key}", context, lambda: self.sn.usage(req.key))
        return pb.UsageResponse(size=u.size, inodes=u.inodes)

    def Cleanup(self, req: Any, context: grpc.ServicerContext) -> Any:
        removed = self._call("cleanup", context, self.sn.cleanup)
        for path in removed:
            log.info("cleanup removed %s", path)
        return empty_pb2.Empty()


_METHODS: list[tuple[str, Any, bool]] = [
    ("Prepare", pb.PrepareSnapshotRequest, False),
    ("View", pb.ViewSnapshotRequest, False),
    ("Mounts", pb.MountsRequest, False),
    ("Commit", pb.CommitSnapshotRequest, False),
    ("Remove", pb.RemoveSnapshotRequest, False),
    ("Stat", pb.StatSnapshotRequest, False),
    ("Update", pb.UpdateSnapshotRequest, False),
    ("List", pb.ListSnapshotsRequest, True),
    ("Usage", pb.UsageRequest, False),
    ("Cleanup", pb.CleanupRequest, False),
]


def add_snapshots_service(server: grpc.Server, sn: Snapshotter) -> None:
    servicer = _Servicer(sn)
    handlers = {}
    for name, request_type, streaming in _METHODS:
        make = (
            grpc.unary_stream_rpc_method_handler
            if streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[name] = make(
            getattr(servicer, name),
            request_deserializer=request_type.FromString,
            response_serializer=lambda msg: msg.SerializeToString(),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
