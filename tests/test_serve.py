"""`mlcpatch serve` over real HTTP: MIME types, headers, ranges, traversal, parallel load, and
the hardening (long names, timeouts, connection cap, bodies on GET, Host check, dotfiles,
symlinked artifact folders)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest

from mlcpatch.artifact import write_manifest
from mlcpatch.serve import find_artifacts, parse_range, running_server, safe_relative_path


@pytest.fixture()
def tree(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """A web root and an artifacts folder with one artifact, plus files outside both."""
    web = tmp_path / "web"
    (web / "src").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>t</title>")
    (web / "src" / "engine.js").write_text("export const x = 1;\n")
    (web / "node_modules" / "pkg" / "lib").mkdir(parents=True)
    (web / "node_modules" / "pkg" / "lib" / "index.js").write_text("var y = 2;\n")
    arts = tmp_path / "artifacts"
    art = arts / "tiny"
    art.mkdir(parents=True)
    config = {
        "model_type": "qwen2",
        "quantization": "q0f32",
        "hidden_size": 64,
        "vocab_size": 512,
        "context_window_size": 128,
        "model_lib": {"llvm": "tiny-cpu.so", "webgpu": "tiny-webgpu.wasm"},
    }
    (art / "mlc-chat-config.json").write_text(json.dumps(config))
    (art / "tiny-webgpu.wasm").write_bytes(b"\0asm" + bytes(range(256)) * 40)
    (art / "params_shard_0.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (art / "tensor-cache.json").write_text("{}")
    (art / "tokenizer.model").write_bytes(b"sp")
    write_manifest(
        art,
        name="tiny",
        tools={},
        source={"spec": "tiny-random", "kind": "tiny"},
        patch={},
        options={},
        libraries=config["model_lib"],
        param_names=["w"],
    )
    (arts / "config-only").mkdir()  # no manifest: not an artifact folder
    (arts / "config-only" / "mlc-chat-config.json").write_text(json.dumps(config))
    (arts / ".tiny.building-x").mkdir()  # a staging folder: never listed
    (arts / ".tiny.building-x" / "mlc-chat-config.json").write_text("{}")
    (arts / "not-an-artifact").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (web / "escape").symlink_to(tmp_path)  # a symlink out of the web root
    (art / "escape.txt").symlink_to(secret)  # and out of an artifact folder
    (web / "inside.js").symlink_to(web / "src" / "engine.js")  # stays inside: allowed
    return {"web": web, "artifacts": arts, "art": art, "secret": secret}


def request(
    server_url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request; the path goes out exactly as given (no client normalisation)."""
    parts = urllib.parse.urlsplit(server_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        own_host = any(k.lower() == "host" for k in headers or {})
        conn.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_mime_types_and_isolation_headers(tree: dict[str, pathlib.Path]) -> None:
    expected = {
        "/": "text/html",
        "/index.html": "text/html",
        "/src/engine.js": "text/javascript",
        "/node_modules/pkg/lib/index.js": "text/javascript",
        "/artifacts/tiny/tiny-webgpu.wasm": "application/wasm",
        "/artifacts/tiny/params_shard_0.bin": "application/octet-stream",
        "/artifacts/tiny/tensor-cache.json": "application/json",
        "/artifacts/tiny/tokenizer.model": "application/octet-stream",
        "/artifacts/index.json": "application/json",
    }
    with running_server(tree["web"], tree["artifacts"]) as server:
        for path, mime in expected.items():
            status, headers, _ = request(server.url, path)
            assert status == 200, path
            assert headers["content-type"].split(";")[0] == mime, path
            assert headers["cross-origin-opener-policy"] == "same-origin"
            assert headers["cross-origin-embedder-policy"] == "require-corp"
            assert headers["cross-origin-resource-policy"] == "same-origin"
        status, headers, body = request(server.url, "/artifacts/tiny/tiny-webgpu.wasm", "HEAD")
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == (tree["art"] / "tiny-webgpu.wasm").stat().st_size
        assert headers["accept-ranges"] == "bytes"


def test_artifact_index_lists_only_artifact_folders(tree: dict[str, pathlib.Path]) -> None:
    with running_server(tree["web"], tree["artifacts"]) as server:
        status, _, body = request(server.url, "/artifacts/index.json")
    listing = json.loads(body)["artifacts"]
    assert status == 200
    assert [a["name"] for a in listing] == ["tiny"]
    assert listing[0]["url"] == "/artifacts/tiny/"
    assert listing[0]["webgpu"] == "tiny-webgpu.wasm"
    assert listing[0]["model_type"] == "qwen2"
    assert listing[0]["source"] == "tiny-random" and "error" not in listing[0]
    listed = [p for p in tree["art"].iterdir() if not p.is_symlink() and p.name != "manifest.json"]
    assert listing[0]["size_bytes"] == sum(p.stat().st_size for p in listed)


def test_a_broken_manifest_is_listed_with_its_error(tree: dict[str, pathlib.Path]) -> None:
    (tree["art"] / "manifest.json").write_text('{"format": 7}')
    with running_server(tree["web"], tree["artifacts"]) as server:
        _, _, body = request(server.url, "/artifacts/index.json")
    (entry,) = json.loads(body)["artifacts"]
    assert "unknown manifest format 7" in entry["error"] and entry["webgpu"] == "tiny-webgpu.wasm"


def test_single_artifact_folder_as_root(tree: dict[str, pathlib.Path]) -> None:
    assert list(find_artifacts(tree["art"])) == ["tiny"]
    with running_server(tree["web"], tree["art"]) as server:
        status, _, body = request(server.url, "/artifacts/tiny/tensor-cache.json")
    assert status == 200 and body == b"{}"


def test_range_requests(tree: dict[str, pathlib.Path]) -> None:
    data = (tree["art"] / "params_shard_0.bin").read_bytes()
    size = len(data)
    path = "/artifacts/tiny/params_shard_0.bin"
    with running_server(tree["web"], tree["artifacts"]) as server:
        cases = {
            "bytes=0-99": (0, 99),
            "bytes=100-": (100, size - 1),
            "bytes=-500": (size - 500, size - 1),
            f"bytes=1000-{size + 50}": (1000, size - 1),  # end clamped to the file
            f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
        }
        for header, (start, end) in cases.items():
            status, headers, body = request(server.url, path, headers={"Range": header})
            assert status == 206, header
            assert headers["content-range"] == f"bytes {start}-{end}/{size}"
            assert int(headers["content-length"]) == end - start + 1
            assert body == data[start : end + 1], header
        for header in (f"bytes={size}-", "bytes=50-10", "bytes=-0"):
            status, headers, _ = request(server.url, path, headers={"Range": header})
            assert status == 416, header
            assert headers["content-range"] == f"bytes */{size}"
        # Several ranges or other units: the server may ignore Range and send everything.
        for header in ("bytes=0-1,5-6", "items=0-1", "bytes=abc"):
            status, _, body = request(server.url, path, headers={"Range": header})
            assert status == 200 and body == data, header


def test_traversal_attempts_are_refused(tree: dict[str, pathlib.Path]) -> None:
    attempts = [
        "/../secret.txt",
        "/src/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/secret.txt",
        "/src/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/src/..\\..\\secret.txt",
        "/escape/secret.txt",  # symlink out of the web root
        "/artifacts/tiny/escape.txt",  # symlink out of an artifact folder
        "/artifacts/../secret.txt",
        "/artifacts/%2e%2e/secret.txt",
        "/artifacts/tiny/%2e%2e/%2e%2e/secret.txt",
        "/artifacts/.tiny.building-x/mlc-chat-config.json",
        "/artifacts/not-an-artifact/",
        "/%00/secret.txt",
        "/src/engine.js%00.html",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/artifacts/tiny/%ff%fe",
    ]
    with running_server(tree["web"], tree["artifacts"]) as server:
        for path in attempts:
            status, _, body = request(server.url, path)
            assert status in (400, 403, 404), path
            assert b"do not serve" not in body, path
        status, _, body = request(server.url, "/inside.js")  # symlink within the root
        assert status == 200 and body == b"export const x = 1;\n"


def test_unsafe_segments_rejected_by_the_path_check() -> None:
    for path in ("/a/%2e%2e/b", "/a/%2E/b", "/a%2fb", "/a%5cb", "/a/..", "/a%00"):
        with pytest.raises(Exception):  # noqa: B017 (PathRefused or a decode error)
            safe_relative_path(path)
    assert safe_relative_path("/a/b%20c.js") == ["a", "b c.js"]


def test_parse_range_edge_cases() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    with pytest.raises(ValueError):
        parse_range("bytes=0-", 0)


def test_200_parallel_requests_all_answered(tree: dict[str, pathlib.Path]) -> None:
    shard = (tree["art"] / "params_shard_0.bin").read_bytes()
    wasm = (tree["art"] / "tiny-webgpu.wasm").read_bytes()
    jobs: list[tuple[str, dict[str, str], bytes]] = []
    for i in range(200):
        if i % 4 == 0:
            jobs.append(("/artifacts/tiny/params_shard_0.bin", {}, shard))
        elif i % 4 == 1:
            start = (i * 7919) % (len(shard) - 4096)
            rng = {"Range": f"bytes={start}-{start + 4095}"}
            jobs.append(("/artifacts/tiny/params_shard_0.bin", rng, shard[start : start + 4096]))
        elif i % 4 == 2:
            jobs.append(("/artifacts/tiny/tiny-webgpu.wasm", {}, wasm))
        else:
            jobs.append(("/src/engine.js", {}, b"export const x = 1;\n"))
    with running_server(tree["web"], tree["artifacts"]) as server:
        with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
            futures = [pool.submit(request, server.url, p, "GET", h) for p, h, _ in jobs]
            results = [f.result(timeout=120) for f in futures]
    for (path, headers, expected), (status, _, body) in zip(jobs, results, strict=True):
        assert status == (206 if headers else 200), path
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest(), path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_logs_url_and_serves_localhost(tree: dict[str, pathlib.Path]) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "mlcpatch.serve", "--artifacts", str(tree["artifacts"])]
    cmd += ["--web", str(tree["web"]), "--port", str(port), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        assert "1 artifact folder(s)" in line
        deadline = time.time() + 10
        while True:
            try:
                status, _, _ = request(f"http://127.0.0.1:{port}/", "/index.html")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _address(server_url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(server_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a client timeout means it never closed."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_overlong_names_are_404_and_the_connection_lives_on(
    tree: dict[str, pathlib.Path],
) -> None:
    paths = [
        "/" + "a" * 300,  # one segment over NAME_MAX (255 bytes)
        "/src/" + "b" * 300 + ".js",
        "/" + "/".join(["c" * 200] * 25),  # short segments, path over PATH_MAX (4096)
        "/artifacts/tiny/" + "d" * 300,
        "/artifacts/tiny/" + "/".join(["e" * 200] * 25),
    ]
    with running_server(tree["web"], tree["artifacts"]) as server:
        conn = http.client.HTTPConnection(*_address(server.url), timeout=30)
        try:
            for path in paths:  # one keep-alive connection: each answer must come back on it
                conn.request("GET", path)
                resp = conn.getresponse()
                assert resp.status == 404, path[:40]
                resp.read()
            conn.request("GET", "/src/engine.js")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"export const x = 1;\n"
        finally:
            conn.close()


def test_idle_and_half_sent_connections_are_closed_after_the_timeout(
    tree: dict[str, pathlib.Path],
) -> None:
    with running_server(tree["web"], tree["artifacts"], request_timeout=0.5) as server:
        host, port = _address(server.url)
        half = socket.create_connection((host, port), timeout=20)
        idle = socket.create_connection((host, port), timeout=20)
        with half, idle:
            half.sendall(f"GET /index.html HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
            assert _read_until_closed(half) == b""  # headers never ended: closed, no answer
            assert _read_until_closed(idle) == b""
        status, _, _ = request(server.url, "/index.html")
        assert status == 200


def test_connections_over_the_cap_get_503_until_one_frees(
    tree: dict[str, pathlib.Path],
) -> None:
    with running_server(tree["web"], tree["artifacts"], max_connections=2) as server:
        address = _address(server.url)
        held = [socket.create_connection(address, timeout=20) for _ in range(2)]
        try:
            with socket.create_connection(address, timeout=20) as extra:
                answer = _read_until_closed(extra)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
            assert b"too many connections" in answer
        finally:
            for sock in held:
                sock.close()
        deadline = time.time() + 20
        while (status := request(server.url, "/index.html")[0]) == 503 and time.time() < deadline:
            time.sleep(0.05)  # the held connections' threads notice the close
        assert status == 200


def test_get_with_a_body_is_refused_and_the_body_never_answered(
    tree: dict[str, pathlib.Path],
) -> None:
    with running_server(tree["web"], tree["artifacts"]) as server:
        host, port = _address(server.url)
        smuggled = f"GET /src/engine.js HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        heads = [
            f"Content-Length: {len(smuggled)}\r\n",
            "Transfer-Encoding: chunked\r\n",
            f"Content-Length: 0\r\nContent-Length: {len(smuggled)}\r\n",
            "Content-Length: \u00b2\r\n",  # a digit to str.isdigit, not to int()
        ]
        for method in ("GET", "HEAD"):
            for head in heads:
                raw = f"{method} /index.html HTTP/1.1\r\nHost: {host}:{port}\r\n{head}\r\n"
                with socket.create_connection((host, port), timeout=10) as sock:
                    sock.sendall((raw + smuggled).encode("latin-1"))
                    answer = _read_until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 400 "), (method, head, answer[:80])
                assert answer.count(b"HTTP/1.1 ") == 1, (method, head)
                assert b"export const x" not in answer
        # An empty body is no body: still served, and the connection is kept.
        status, _, body = request(server.url, "/src/engine.js", headers={"Content-Length": "0"})
        assert status == 200 and body == b"export const x = 1;\n"


def test_host_header_must_name_this_server(tree: dict[str, pathlib.Path]) -> None:
    with running_server(tree["web"], tree["artifacts"], allowed_hosts=("lab-box",)) as server:
        host, port = _address(server.url)
        for value in (
            f"evil.example:{port}",
            "evil.example",
            f"127.0.0.1.nip.io:{port}",
            f"localhost.evil.example:{port}",
            "localhost:80x",
            "[::1",
            "",
        ):
            for path in ("/index.html", "/artifacts/index.json", "/artifacts/tiny/tokenizer.model"):
                status, headers, body = request(server.url, path, headers={"Host": value})
                assert status in (400, 421), (value, path)
                assert b"sp" != body and b"<title>" not in body and b"qwen2" not in body
                assert headers.get("connection") == "close"
        _, _, body = request(server.url, "/", headers={"Host": "evil.example"})
        assert b"not served here" in body and server.url.encode() in body
        for value in (
            f"127.0.0.1:{port}",
            "127.0.0.1",
            f"localhost:{port}",
            "LocalHost",
            f"[::1]:{port}",
            "[::1]",
            "lab-box:8080",
        ):
            status, _, body = request(server.url, "/index.html", headers={"Host": value})
            assert status == 200 and b"<title>" in body, value
        with socket.create_connection((host, port), timeout=10) as sock:  # no Host at all
            sock.sendall(b"GET /index.html HTTP/1.1\r\n\r\n")
            assert _read_until_closed(sock).startswith(b"HTTP/1.1 400 ")


def test_dotfiles_are_not_served(tree: dict[str, pathlib.Path]) -> None:
    web, art = tree["web"], tree["art"]
    (web / ".env").write_text("TOKEN=do not serve")
    (web / "src" / ".hidden.js").write_text("do not serve")
    (web / ".git").mkdir()
    (web / ".git" / "config").write_text("do not serve")
    (art / ".env").write_text("do not serve")
    (web / "env.txt").symlink_to(web / ".env")  # a visible name leading to a hidden file
    with running_server(web, tree["artifacts"]) as server:
        for path in (
            "/.env",
            "/%2eenv",
            "/src/.hidden.js",
            "/.git/config",
            "/.git/",
            "/artifacts/tiny/.env",
            "/env.txt",
        ):
            for method in ("GET", "HEAD"):
                status, _, body = request(server.url, path, method)
                assert status == 404, (method, path)
                assert b"do not serve" not in body


def test_symlinked_artifact_folder_must_stay_inside(
    tree: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    outside = tmp_path / "elsewhere" / "stray"
    outside.mkdir(parents=True)
    (outside / "mlc-chat-config.json").write_text(json.dumps({"model_type": "stray"}))
    (outside / "weights.bin").write_text("do not serve")
    arts = tree["artifacts"]
    (arts / "linked").symlink_to(outside)  # leaves the artifacts root: refused
    (arts / "alias").symlink_to(arts / "tiny")  # stays inside: served, as before
    (arts / "staged").symlink_to(arts / ".tiny.building-x")  # a hidden folder: refused
    with running_server(tree["web"], arts) as server:
        for path in (
            "/artifacts/linked/weights.bin",
            "/artifacts/linked/mlc-chat-config.json",
            "/artifacts/staged/mlc-chat-config.json",
        ):
            status, _, body = request(server.url, path)
            assert status == 404, path
            assert b"do not serve" not in body and b"stray" not in body
        status, _, body = request(server.url, "/artifacts/alias/tokenizer.model")
        assert status == 200 and body == b"sp"
        _, _, body = request(server.url, "/artifacts/index.json")
    assert sorted(a["name"] for a in json.loads(body)["artifacts"]) == ["alias", "tiny"]
