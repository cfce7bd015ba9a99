"""A real HTTP server on 127.0.0.1 for tests: routes, a request log, and injectable faults.

Subclasses implement the endpoints of one service. Faults make the next N matching requests answer
with an error status, or stall past the client's timeout and drop the connection. By default the
request then has no effect (the server failed before doing the work); with ``after=True`` the work
is done and only the answer is lost, which is what makes retries of writes dangerous.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    faulted: bool = False

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(
            status,
            json.dumps(value).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )


@dataclasses.dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    remaining: int
    status: int | None  # None: stall
    stall: float = 0.0
    after: bool = False  # do the work, then fail


Handler = Callable[[Request, dict[str, str]], Response]


class FakeServer:
    """Start with ``with Sub(...) as server:``; ``server.url`` is its base URL."""

    def __init__(self) -> None:
        self.log: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._httpd: ThreadingHTTPServer | None = None

    # --- set-up -----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    def fail(
        self, method: str, pattern: str, status: int = 500, times: int = 1, after: bool = False
    ) -> None:
        self.faults.append(Fault(method, re.compile(pattern), times, status, after=after))

    def stall(
        self, method: str, pattern: str, seconds: float, times: int = 1, after: bool = False
    ) -> None:
        self.faults.append(Fault(method, re.compile(pattern), times, None, seconds, after))

    # --- what happened ----------------------------------------------------------------------
    def is_write(self, request: Request) -> bool:
        return request.method not in ("GET", "HEAD")

    @property
    def writes(self) -> list[Request]:
        return [r for r in self.log if self.is_write(r)]

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        regex = re.compile(pattern)
        return [r for r in self.log if r.method == method and regex.search(r.path)]

    # --- serving ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeServer:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the request log is the record; stderr stays quiet

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self._body(),
                )
                fault = server._take_fault(request)
                if fault is not None:
                    request.faulted = True
                    with server._lock:
                        server.log.append(request)
                        if fault.after:
                            server._dispatch(request)
                    if fault.status is None:
                        time.sleep(fault.stall)
                        self.close_connection = True
                        return
                    response = Response.json(fault.status, {"error": "injected fault"})
                else:
                    with server._lock:
                        server.log.append(request)
                        response = server._dispatch(request)
                self.send_response(response.status)
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, once per test.
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def _take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (
                    fault.remaining > 0
                    and fault.method == request.method
                    and fault.path.search(request.path)
                ):
                    fault.remaining -= 1
                    return fault
        return None

    def _dispatch(self, request: Request) -> Response:
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if method == request.method and match:
                return handler(request, match.groupdict())
        return Response.json(404, {"error": f"no route for {request.method} {request.path}"})
