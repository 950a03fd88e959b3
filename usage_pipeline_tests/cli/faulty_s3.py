"""A fault-injecting HTTP proxy in front of a test S3 server: some LIST and GET requests fail on purpose.

    with faulty_s3_proxy(s3_endpoint, fail_rate=0.3, seed=1) as proxy:
        client = s3_client(proxy.url, max_attempts=20)
        ...
        assert proxy.faults["cut_off"] > 0

GET requests (ListObjectsV2, ListBuckets, GetObject) fail with probability `fail_rate`, each fault drawn
from `kinds` with a seeded generator (the same sequence of requests meets the same faults):

- "internal_error": 500 InternalError (S3 XML error body)
- "slowdown": 503 SlowDown (S3 XML error body)
- "reset": the connection is reset before any response
- "cut_off": the real response, its Content-Length kept, but only half of the body sent, then closed

Every other request (PUT, HEAD, POST, DELETE) passes through untouched. The proxy listens on 127.0.0.1 and
stops when the `with` block ends.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_KINDS: tuple[str, ...] = ("internal_error", "slowdown", "reset", "cut_off")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}
_ERRORS = {
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
UPSTREAM_TIMEOUT_S = 60.0


@dataclass
class FaultyS3Proxy:
    """The running proxy: its URL, what it injects (changeable while it runs) and what it did."""

    url: str
    upstream: str
    fail_rate: float
    kinds: tuple[str, ...]
    seed: int
    faults: Counter[str] = field(default_factory=Counter)  # injected faults by kind
    requests: Counter[str] = field(default_factory=Counter)  # requests seen by HTTP method
    _random: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {FAULT_KINDS}, got {self.kinds}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be in [0, 1], got {self.fail_rate}")
        self._random = random.Random(self.seed)

    def __str__(self) -> str:
        return self.url

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def draw(self, method: str) -> str | None:
        """The fault for this request, if any; counts it."""
        with self._lock:
            self.requests[method] += 1
            if method != "GET" or self._random.random() >= self.fail_rate:
                return None
            kind = self._random.choice(self.kinds)
            self.faults[kind] += 1
            return kind


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultyS3Proxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as with a real S3 endpoint
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = urlsplit(self.server.proxy.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=UPSTREAM_TIMEOUT_S)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if "Transfer-Encoding" in self.headers:
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body if body else None, headers=headers)
            response = conn.getresponse()
            data = b"" if self.command == "HEAD" else response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def _reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) before any byte of a response."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _send_error_xml(self, kind: str) -> None:
        status, code, message = _ERRORS[kind]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>faulty-s3-proxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _relay(self, status: int, headers: list[tuple[str, str]], data: bytes, cut_off: bool) -> None:
        self.send_response_only(status)
        length = None
        for name, value in headers:
            if name.lower() == "content-length":
                length = value
            elif name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", length or "0")
        else:
            # A cut-off body still announces at least one byte more than it sends.
            self.send_header("Content-Length", str(max(len(data), 1) if cut_off else len(data)))
        if cut_off:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data[: len(data) // 2] if cut_off else data)

    def _handle(self) -> None:
        body = self._request_body()
        fault = self.server.proxy.draw(self.command)
        if fault == "reset":
            self._reset()
            return
        if fault in _ERRORS:
            self._send_error_xml(fault)
            return
        try:
            status, headers, data = self._forward(body)
        except OSError:
            self.send_error(502, "upstream S3 server unreachable")
            return
        self._relay(status, headers, data, cut_off=fault == "cut_off")

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@contextmanager
def faulty_s3_proxy(
    upstream_url: str, fail_rate: float = 0.3, seed: int = 0, kinds: Sequence[str] = FAULT_KINDS
) -> Iterator[FaultyS3Proxy]:
    """Run the proxy on a free port of 127.0.0.1 in front of `upstream_url`; stopped when the block ends."""
    server = _ProxyServer(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    proxy = FaultyS3Proxy(
        url=f"http://{host}:{port}",
        upstream=upstream_url,
        fail_rate=fail_rate,
        kinds=tuple(kinds),
        seed=seed,
    )
    server.proxy = proxy
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
