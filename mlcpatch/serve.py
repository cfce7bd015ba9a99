"""`mlcpatch serve`: a static HTTP server for the web page and the artifact folders.

Serves ``web/`` at ``/`` (its ``node_modules/`` included, so the page can import the pinned npm
packages without a bundler) and every artifact folder under ``--artifacts`` at
``/artifacts/<name>/``, listed as JSON at ``/artifacts/index.json``. Responses carry the headers a
WebGPU page wants (``application/wasm``, cross-origin isolation) and honour single HTTP byte
ranges, so large weight shards can be fetched in parts. Paths are checked before anything is
opened: no ``..``, no encoded separators or dots, no hidden (dot) files or folders, and no symlink
that leads out of its root (an artifact folder's real path must stay under ``--artifacts``).

Hardening: a request whose ``Host`` is not a localhost name or the listening address is refused
(421), so a DNS-rebinding page cannot read what is served; GET/HEAD with a body get 400 and the
connection is closed (the body is never parsed as a request); idle or half-sent connections are
closed after ``request_timeout`` seconds, and at most ``max_connections`` are served at once (more
get 503).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import json
import os
import pathlib
import re
import socket
import sys
import threading
import urllib.parse
import webbrowser
from collections.abc import Iterator
from typing import Any, BinaryIO

import click

from mlcpatch.artifact import CHAT_CONFIG, ArtifactError, is_artifact_folder, read_manifest
from mlcpatch.errors import MlcpatchError
from mlcpatch.resources import web_dir

WEB_DIR = web_dir()
ARTIFACTS_PREFIX = "/artifacts/"
INDEX_PATH = "/artifacts/index.json"
_CHUNK = 1 << 20
REQUEST_TIMEOUT = 30.0  # seconds a connection may sit idle or half-sent (also bounds each send)
MAX_CONNECTIONS = 256  # connections served at once; more are answered 503 and closed
_DRAIN = 64 * 1024  # a refused request body up to this size is read first, so the 400 arrives
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_HOST_PORT = re.compile(r"^(?::\d{1,5})?$")

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".model": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".jinja": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Cross-origin isolation lets pages use SharedArrayBuffer and precise timers; with it, every
# resource must opt in to being embedded, which CORP does for our same-origin files.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class PathRefused(Exception):
    """A request path that must not reach the file system. Not a user error: the request
    handler answers it with 404 and it never leaves the server."""


def safe_relative_path(url_path: str) -> list[str]:
    """The URL path's segments, or PathRefused for anything that could escape a root.

    Percent-decoding happens once, here; a segment that starts with ``.`` (``..``, ``.env``,
    ``.git``) or contains a separator, a NUL or a backslash is refused (browsers normalise plain
    ``..`` themselves, so one arriving encoded is an attack, not a link).
    """
    if "\\" in url_path or "\0" in url_path:
        raise PathRefused(url_path)
    segments = []
    for raw in url_path.split("/"):
        if raw == "":
            continue
        part = urllib.parse.unquote(raw, errors="strict")
        if part.startswith(".") or any(c in part for c in "/\\\0"):
            raise PathRefused(url_path)
        segments.append(part)
    return segments


def is_inside(root: pathlib.Path, target: pathlib.Path) -> bool:
    """Whether resolved ``target`` is resolved ``root`` or under it, through no hidden entry."""
    if target != root and root not in target.parents:
        return False
    return not any(part.startswith(".") for part in target.relative_to(root).parts)


def resolve_inside(root: pathlib.Path, segments: list[str]) -> pathlib.Path:
    """``root/segments`` with symlinks resolved; PathRefused if that leaves ``root``.

    A symlink inside ``root`` that lands on a hidden file or folder is refused too.
    """
    root = root.resolve()
    target = root.joinpath(*segments).resolve()
    if not is_inside(root, target):
        raise PathRefused("/".join(segments))
    return target


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header, lower case, IPv6 without brackets; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket:
            return None
    else:
        host, colon, port = value.partition(":")
        port = colon + port
    if not host or not _HOST_PORT.match(port):
        return None
    return host


def find_artifacts(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Artifact folders (``mlcpatch.artifact.is_artifact_folder``) in ``folder``, by URL name.

    ``folder`` may itself be one artifact folder.
    """
    if not folder.is_dir():
        return {}
    if is_artifact_folder(folder.resolve()):
        return {folder.resolve().name: folder}
    return {child.name: child for child in sorted(folder.iterdir()) if is_artifact_folder(child)}


def describe_artifact(name: str, folder: pathlib.Path) -> dict[str, Any]:
    """What the page needs to offer an artifact folder, from its config and manifest."""
    entry: dict[str, Any] = {"name": name, "url": ARTIFACTS_PREFIX + urllib.parse.quote(name) + "/"}
    try:
        config = json.loads((folder / CHAT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {**entry, "error": f"unreadable {CHAT_CONFIG}: {exc}"}
    libraries = config.get("model_lib") or {}
    entry.update(
        model_type=config.get("model_type"),
        quantization=config.get("quantization"),
        hidden_size=config.get("hidden_size"),
        vocab_size=config.get("vocab_size"),
        context_window_size=config.get("context_window_size"),
        libraries=libraries,
        webgpu=libraries.get("webgpu"),
    )
    try:
        manifest = read_manifest(folder)
    except ArtifactError as exc:
        return {**entry, "error": str(exc)}
    entry["size_bytes"] = sum(f.size for f in manifest.files.values())
    entry["source"] = manifest.source.get("spec")
    return entry


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single satisfiable ``bytes=`` range.

    None means "serve the whole file" (no header, or one we do not handle, such as several
    ranges: RFC 9110 lets a server ignore Range). ValueError means unsatisfiable (416).
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise ValueError(header)
        return max(0, size - length), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise ValueError(header)
    return start, end


class Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD for files under the web root and the artifact folders; nothing else."""

    server_version = "mlcpatch-serve"
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if not self.server.quiet:
            super().log_message(format, *args)

    # --- routing --------------------------------------------------------------------------
    def _respond(self, send_body: bool) -> None:
        if self._refused_body() or self._refused_host():
            return
        url_path = urllib.parse.urlsplit(self.path).path
        if url_path in (INDEX_PATH, ARTIFACTS_PREFIX.rstrip("/"), ARTIFACTS_PREFIX):
            self._send_json(self._artifact_index(), send_body)
            return
        try:
            path = self._locate(url_path)
            if path is not None and not path.is_file():
                path = None
        except (PathRefused, UnicodeDecodeError, OSError):  # OSError: a name too long, …
            path = None
        if path is None:
            self._send_error(404, "not found")
            return
        self._send_file(path, send_body)

    def _refused_body(self) -> bool:
        """400 and close for a GET/HEAD with a body, which would otherwise be read as a request."""
        lengths = [_length(v) for v in self.headers.get_all("Content-Length") or []]
        chunked = self.headers.get("Transfer-Encoding") is not None
        if not chunked and all(n == 0 for n in lengths):
            return False
        declared = lengths[0] if len(lengths) == 1 and not chunked else None
        if declared is not None and declared <= _DRAIN:
            with contextlib.suppress(OSError):
                self.rfile.read(declared)  # so the client reads the 400, not a reset
        self._send_error(400, f"{self.command} requests must not have a body", _CLOSE)
        return True

    def _refused_host(self) -> bool:
        """400 without one Host header; 421 for a host this server was not asked to answer to."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            self._send_error(400, "a request needs exactly one Host header", _CLOSE)
            return True
        if host_name(hosts[0]) in self.server.allowed_hosts:
            return False
        message = (
            f"Host {hosts[0]!r} is not served here: open {self.server.url} instead. "
            "mlcpatch serve answers only to localhost names and the address it listens on "
            "(against DNS rebinding); `--allow-host NAME` adds a name"
        )
        self._send_error(421, message, _CLOSE)
        return True

    def _locate(self, url_path: str) -> pathlib.Path | None:
        segments = safe_relative_path(url_path)
        if segments[:1] == ["artifacts"]:
            if len(segments) < 2:
                return None
            folder = self.server.artifact_folders().get(segments[1])
            if folder is None:
                return None
            return resolve_inside(folder, segments[2:])
        path = resolve_inside(self.server.web_root, segments)
        if path.is_dir():
            path = path / "index.html"
        return path

    def _artifact_index(self) -> dict[str, Any]:
        found = self.server.artifact_folders()
        return {"artifacts": [describe_artifact(n, p) for n, p in found.items()]}

    # --- responses ------------------------------------------------------------------------
    def _common_headers(self, content_type: str, length: int) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-cache")
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)

    def _send_json(self, payload: Any, send_body: bool) -> None:
        body = json.dumps(payload, indent=2).encode()
        self.send_response(200)
        self._common_headers("application/json", len(body))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_error(self, code: int, message: str, extra: dict[str, str] | None = None) -> None:
        body = f"{code} {message}\n".encode()
        self.send_response(code)
        self._common_headers("text/plain; charset=utf-8", len(body))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path: pathlib.Path, send_body: bool) -> None:
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below, after streaming)
        except OSError:
            self._send_error(404, "not found")
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            try:
                span = parse_range(self.headers.get("Range"), size)
            except ValueError:
                self._send_error(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
                return
            start, end = span if span is not None else (0, size - 1)
            length = end - start + 1 if size else 0
            self.send_response(206 if span is not None else 200)
            content_type = MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")
            self._common_headers(content_type, length)
            self.send_header("Accept-Ranges", "bytes")
            mtime = os.fstat(f.fileno()).st_mtime
            self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
            if span is not None:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if send_body and length:
                f.seek(start)
                _copy(f, self.wfile, length)


_CLOSE = {"Connection": "close"}  # send_header also sets close_connection for this one


def _length(value: str) -> int | None:
    """A Content-Length value, None if it is not plain ASCII digits."""
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _copy(src: BinaryIO, dst: Any, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = src.read(min(_CHUNK, remaining))
        if not chunk:
            break
        dst.write(chunk)
        remaining -= len(chunk)


class Server(http.server.ThreadingHTTPServer):
    """The HTTP server; ``request_timeout``/``max_connections`` bound what idle clients can hold."""

    daemon_threads = True
    # The default backlog (5) drops connections when a page fetches many shards at once.
    request_queue_size = 512

    def __init__(
        self,
        address: tuple[str, int],
        web_root: pathlib.Path,
        artifacts: pathlib.Path,
        quiet: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.web_root = web_root.resolve()
        self.artifacts = artifacts
        self.quiet = quiet
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        bound = (address[0], str(self.server_address[0]), *allowed_hosts)
        names = (host_name(f"[{h}]" if ":" in h else h) for h in bound if h)
        self.allowed_hosts = frozenset(LOCAL_HOSTS) | {n for n in names if n}

    def artifact_folders(self) -> dict[str, pathlib.Path]:
        """``find_artifacts``, less folders whose real path leaves ``artifacts`` (symlinks)."""
        base = self.artifacts.resolve()
        found = find_artifacts(self.artifacts)
        return {name: path for name, path in found.items() if is_inside(base, path.resolve())}

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that cancels a download closes the socket mid-response: not worth a trace.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


def _refuse_busy(sock: socket.socket) -> None:
    """A short 503 on a connection over ``max_connections`` (sent from the accept loop)."""
    body = b"503 too many connections: retry shortly\n"
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(head.encode() + body)
        sock.setblocking(False)
        sock.recv(_DRAIN)  # what already arrived, so closing sends FIN rather than a reset


@contextlib.contextmanager
def running_server(
    web_root: pathlib.Path = WEB_DIR,
    artifacts: pathlib.Path = pathlib.Path("artifacts"),
    host: str = "127.0.0.1",
    port: int = 0,
    quiet: bool = True,
    **options: Any,
) -> Iterator[Server]:
    """A server on a background thread for the duration of the block (port 0: any free one).

    ``options`` go to Server: ``request_timeout``, ``max_connections``, ``allowed_hosts``.
    """
    server = Server((host, port), web_root, artifacts, quiet=quiet, **options)
    thread = threading.Thread(target=server.serve_forever, name="mlcpatch-serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def check_web_root(web_root: pathlib.Path) -> list[str]:
    """Problems that would leave the page blank (missing files or npm packages)."""
    problems = []
    if not (web_root / "index.html").is_file():
        problems.append(f"{web_root}/index.html is missing")
    for package in ("@mlc-ai/web-runtime", "@mlc-ai/web-tokenizers"):
        if not (web_root / "node_modules" / package / "package.json").is_file():
            problems.append(f"npm package {package} is missing: run `npm ci` in {web_root}")
    return problems


@click.command("serve")
@click.option(
    "--artifacts",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=pathlib.Path("artifacts"),
    show_default=True,
    help="Folder of artifact folders (or one artifact folder) to offer to the page.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.option(
    "--web",
    "web_root",
    type=click.Path(file_okay=False, exists=True, path_type=pathlib.Path),
    default=WEB_DIR,
    show_default=True,
    help="The web page's folder.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host is NAME (besides localhost names and --host); "
    "repeatable. Others get 421, against DNS rebinding.",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not log each request.")
def serve_command(
    artifacts: pathlib.Path,
    host: str,
    port: int,
    open_browser: bool,
    web_root: pathlib.Path,
    allow_hosts: tuple[str, ...],
    quiet: bool,
) -> None:
    """Serve the in-browser engine's page and the artifact folders over HTTP.

    \b
    The page (web/index.html) lists the artifact folders, loads one with WebGPU and chats
    with it. Listens on localhost only unless --host says otherwise.
    """
    for problem in check_web_root(web_root):
        click.echo(f"warning: {problem}", err=True)
    try:
        server = Server((host, port), web_root, artifacts, quiet=quiet, allowed_hosts=allow_hosts)
    except OSError as exc:
        raise MlcpatchError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    count = len(server.artifact_folders())
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: other machines can reach this server", err=True)
    click.echo(
        f"Serving {web_root} and {count} artifact folder(s) from {artifacts} "
        f"at {server.url} (Ctrl-C to stop)",
        err=False,
    )
    sys.stdout.flush()
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    serve_command()
