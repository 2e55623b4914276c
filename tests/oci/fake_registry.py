"""A tiny in-process distribution API server for faults a real registry cannot be made to show.

Scripted faults per (method, path prefix): an HTTP status (429 carries `Retry-After: 0`),
"reset" (drop the connection without a reply) or "truncate" (announce the whole body, send half,
drop the connection). Blobs support Range; with `redirect_to` set, blob GETs answer 307 to a
second server playing blob storage (sharing the first one's state), whose URLs carry a signature
that `expire()` invalidates.
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class State:
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> content (may be wrong)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # ref -> (data, type)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    faults: list[tuple[str, str, object]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    signature: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, method: str, path: str) -> object | None:
        with self.lock:
            for i, (m, prefix, action) in enumerate(self.faults):
                if m == method and path.startswith(prefix):
                    del self.faults[i]
                    return action
        return None


class FakeServer:
    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()
        self.redirect_to: FakeServer | None = None
        self.ignore_range = False  # answer 200 with the whole blob, like some blob stores
        self.redirect_host = "127.0.0.1"  # host named in redirect Locations
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, method: str, prefix: str, *actions: object) -> None:
        self.state.faults.extend((method, prefix, a) for a in actions)

    def add_blob(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        self.state.blobs[digest] = data
        return digest

    def expire(self) -> None:
        self.state.signature += 1

    def seen(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.state.seen if method is None or s.method == method]


def _make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    state = server.state

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def reply(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_one(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.seen.append(
                Seen(
                    self.command,
                    url.path,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                )
            )
            action = state.take_fault(self.command, url.path)
            if action == "reset":
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                return
            if isinstance(action, int):
                extra = {"Retry-After": "0"} if action == 429 else {}
                return self.reply(
                    action,
                    b'{"errors":[{"code":"UNAVAILABLE","message":"x"}]}',
                    {"Content-Type": "application/json", **extra},
                )
            if url.path.startswith("/storage/"):
                return self.storage(url.path, parse_qs(url.query), action)
            match = re.fullmatch(r"/v2/(.+)/(blobs|manifests)/(.+)", url.path)
            if self.command == "POST" and url.path.endswith("/blobs/uploads/"):
                upload = uuid.uuid4().hex
                state.uploads[upload] = bytearray()
                return self.reply(202, headers={"Location": f"{url.path}{upload}?_state=s"})
            upload_url = re.fullmatch(r"/v2/(.+)/blobs/uploads/([0-9a-f]+)", url.path)
            if upload_url:
                return self.upload(upload_url.group(2), body, parse_qs(url.query))
            if match and match.group(2) == "manifests":
                found = state.manifests.get(match.group(3))
                if found is None:
                    return self.reply(404)
                return self.reply(200, found[0], {"Content-Type": found[1]})
            if match and match.group(3) in state.blobs:
                if server.redirect_to is not None and self.command == "GET":
                    hexd = match.group(3).split(":")[1]
                    port = server.redirect_to.httpd.server_address[1]
                    location = (
                        f"http://{server.redirect_host}:{port}/storage/{hexd}?sig={state.signature}"
                    )
                    return self.reply(307, headers={"Location": location})
                return self.send_blob(state.blobs[match.group(3)], action)
            return self.reply(404)

        def storage(self, path: str, query: dict[str, list[str]], action: object) -> None:
            digest = "sha256:" + path.rsplit("/", 1)[1]
            if query.get("sig") != [str(state.signature)] or self.headers.get("Authorization"):
                return self.reply(403, b"expired or unexpected credentials")
            return self.send_blob(state.blobs[digest], action)

        def send_blob(self, data: bytes, action: object) -> None:
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            rng = None if server.ignore_range else rng
            status, start, end = 200, 0, len(data) - 1
            if rng:
                start = int(rng.group(1))
                end = int(rng.group(2)) if rng.group(2) else len(data) - 1
                status = 206
            part = data[start : end + 1]
            headers = {"Content-Type": "application/octet-stream"}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            if action == "truncate":
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.reply(status, part, headers)

        def upload(self, upload: str, body: bytes, query: dict[str, list[str]]) -> None:
            buf = state.uploads.get(upload)
            if buf is None:
                return self.reply(404)
            buf.extend(body)
            if self.command == "PATCH":
                return self.reply(
                    202, headers={"Location": self.path, "Range": f"0-{len(buf) - 1}"}
                )
            digest = query["digest"][0]
            if "sha256:" + hashlib.sha256(buf).hexdigest() != digest:
                return self.reply(400, b'{"errors":[{"code":"DIGEST_INVALID","message":"x"}]}')
            state.blobs[digest] = bytes(buf)
            self.reply(201, headers={"Docker-Content-Digest": digest})

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = handle_one

    return Handler
