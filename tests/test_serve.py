"""`mlcpatch serve` over real HTTP: MIME types, headers, ranges, traversal, parallel load."""

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
        conn.putrequest(method, path, skip_accept_encoding=True)
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
