"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a moto server.

Workers (separate processes) point ``AWS_ENDPOINT_URL`` at the proxy. For a chosen share of
requests it answers as a throttled or failing AWS would, instead of forwarding:

* ``slowdown``: S3 ``503 SlowDown`` (XML), or KMS ``400 ThrottlingException`` (JSON);
* ``error500``: S3 ``500 InternalError`` / KMS ``500 KMSInternalException``;
* ``reset``: the connection is closed without an answer;
* ``slow``: forwarded after a delay.

It can also enforce what moto ignores (docs: moto-fidelity): ``x-amz-copy-source-if-match`` on
CopyObject is checked against the source's current ETag, answering 412 like S3.
Every decision is counted in ``stats``. With ``log_requests`` on, every request is recorded in
``requests`` (method, path, query, Range, whether it went to KMS): readers' requests per read
are counted from it. ``response_filter`` may rewrite the headers of a forwarded answer (for
example drop what S3 shows only to a role with more permissions).
"""
from __future__ import annotations

import http.client
import random
import socket
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

S3_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
S3_INTERNAL = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>'
S3_ACCESS_DENIED = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
S3_PRECONDITION = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code>'
    b"<Message>At least one of the pre-conditions you specified did not hold</Message></Error>"
)
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client killed mid-request (the crash suites do it on purpose) resets its connection:
        nothing to report."""


@dataclass(frozen=True)
class Request:
    """One request the proxy received: ``path`` unquoted, without the query."""

    method: str
    path: str
    query: str
    range: str | None
    kms: bool
    operation: str = ""  # the API operation, as S3 and KMS name it (``operation_of``)


# S3 sub-resources named by a query parameter, for the GET/PUT/DELETE of a bucket or object.
_SUBRESOURCES = {
    "acl": "ObjectAcl", "tagging": "ObjectTagging", "retention": "ObjectRetention", "legal-hold": "ObjectLegalHold",
    "object-lock": "ObjectLockConfiguration", "ownershipControls": "BucketOwnershipControls", "uploads": "MultipartUpload",
}


def operation_of(method: str, query: str, headers) -> str:
    """The S3 or KMS operation of a request, roughly as the SDKs name it (enough to count)."""
    target = headers.get("X-Amz-Target") or ""
    if target.startswith("TrentService."):
        return target.split(".", 1)[1]
    names = {part.split("=", 1)[0] for part in query.split("&") if part}
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "POST": "Post", "HEAD": "Head"}.get(method, method)
    if "list-type" in names:
        return "ListObjectsV2"
    for name, resource in _SUBRESOURCES.items():
        if name in names:
            return verb + resource
    if method == "PUT" and headers.get("x-amz-copy-source"):
        return "UploadPartCopy" if "partNumber" in names else "CopyObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}.get(method, method)


class _IncompleteBody(Exception):
    """The connection ended before the request body its Content-Length announced."""


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 1234):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.fault_rate = 0.0
        self.faults: tuple[str, ...] = ("slowdown",)
        self.slow_seconds = 0.2
        self.enforce_copy_source_if_match = False
        # Optional hook: (method, path, headers, body) -> fault name or None, before the random
        # draw. Besides the faults above it may answer "kms-access-denied".
        self.rule: Callable[..., str | None] | None = None
        # Optional: (method, path, [(header, value)]) -> the headers to send back instead.
        self.response_filter: Callable[[str, str, list], list] | None = None
        self.log_requests = False
        self.requests: list[Request] = []
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def configure(self, rate: float, faults=("slowdown",), seed: int | None = None) -> None:
        with self.lock:
            self.fault_rate = rate
            self.faults = tuple(faults)
            if seed is not None:
                self.rng.seed(seed)

    def _draw(self, method: str, path: str, headers: dict, body: bytes = b"") -> str | None:
        if self.rule:
            chosen = self.rule(method, path, headers, body)
            if chosen:
                return chosen
        with self.lock:
            if self.fault_rate and self.rng.random() < self.fault_rate:
                return self.rng.choice(self.faults)
        return None

    def _count(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1

    def _handler(proxy):  # noqa: N805 - closure over the proxy
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                """The whole request body, or _IncompleteBody when the client went away first
                (killed between its headers and its body, or during it): S3 never stores the
                part of a body that arrived, and neither may the proxy forward it."""
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        line = self.rfile.readline()
                        if not line.endswith(b"\n"):
                            raise _IncompleteBody
                        size = int(line.strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        chunk = self.rfile.read(size)
                        if len(chunk) < size:
                            raise _IncompleteBody
                        data += chunk
                        self.rfile.readline()
                data = self.rfile.read(length) if length else b""
                if len(data) < length:
                    raise _IncompleteBody
                return data

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _is_kms(self) -> bool:
                return (self.headers.get("X-Amz-Target") or "").startswith("TrentService.")

            def _fault(self, name: str) -> None:
                proxy._count(name)
                kms = self._is_kms()
                if name == "reset":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if name == "slowdown":
                    if kms:
                        self._reply(400, b'{"__type":"ThrottlingException","message":"Rate exceeded"}', "application/x-amz-json-1.1")
                    else:
                        self._reply(503, S3_SLOWDOWN, "application/xml")
                elif name == "error500":
                    if kms:
                        self._reply(500, b'{"__type":"KMSInternalException","message":"internal"}', "application/x-amz-json-1.1")
                    else:
                        self._reply(500, S3_INTERNAL, "application/xml")
                elif name == "s3-access-denied":
                    self._reply(403, S3_ACCESS_DENIED, "application/xml")
                elif name == "precondition":
                    self._reply(412, S3_PRECONDITION, "application/xml")
                elif name == "kms-access-denied":
                    self._reply(400, b'{"__type":"AccessDeniedException","message":"not authorized"}', "application/x-amz-json-1.1")

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS and k.lower() != "expect"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                headers = response.getheaders()
                if proxy.response_filter:
                    headers = proxy.response_filter(self.command, self.path, headers)
                for k, v in headers:
                    if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD answer carries the length of the body it does not send.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _copy_source_stale(self) -> bool:
                expected = self.headers.get("x-amz-copy-source-if-match")
                source = self.headers.get("x-amz-copy-source")
                if not (proxy.enforce_copy_source_if_match and expected and source):
                    return False
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                path = "/" + urllib.parse.quote(urllib.parse.unquote(source.split("?")[0].lstrip("/")), safe="/~")
                head_headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "x-amz-date", "host")}
                conn.request("HEAD", path, headers=head_headers)
                response = conn.getresponse()
                response.read()
                conn.close()
                current = response.getheader("ETag")
                return response.status == 200 and current is not None and current.strip('"') != expected.strip('"')

            def handle_one(self) -> None:
                try:
                    body = self._body()
                except _IncompleteBody:
                    proxy._count("incomplete-body")
                    self.close_connection = True
                    return
                if proxy.log_requests:
                    path, _, query = self.path.partition("?")
                    request = Request(
                        self.command, urllib.parse.unquote(path), query, self.headers.get("Range"), self._is_kms(),
                        operation_of(self.command, query, self.headers),
                    )
                    with proxy.lock:
                        proxy.requests.append(request)
                fault = proxy._draw(self.command, self.path, dict(self.headers), body)
                if fault == "slow":
                    proxy._count("slow")
                    time.sleep(proxy.slow_seconds)
                    fault = None
                if fault:
                    self._fault(fault)
                    return
                if self.command == "PUT" and self._copy_source_stale():
                    proxy._count("copy-source-if-match-412")
                    self._reply(412, S3_PRECONDITION, "application/xml")
                    return
                proxy._count("forwarded")
                self._forward(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        return Handler
