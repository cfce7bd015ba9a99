"""The WebGPU toolchain: clear errors when it is missing, and our TVM support headers.

The headers are compiled natively with the host C++ compiler (seconds, no emscripten) and
checked against numpy and against bytes written by TVM's own serializer (libtvm).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest

from mlcpatch.build.webgpu import toolchain
from mlcpatch.build.webgpu.toolchain import HEADERS_DIR, ToolchainError

CXX = shutil.which("g++") or shutil.which("clang++")

EXPECTED_HEADERS = {
    "3rdparty/compiler-rt/builtin_fp16.h",
    "include/tvm/support/io.h",
    "include/tvm/support/serializer.h",
    "include/tvm/support/cuda/nvtx.h",
    "src/support/bytes_io.h",
    "src/support/arena.h",
    "src/support/base64.h",
    "src/support/ring_buffer.h",
    "src/support/utils.h",
}


def test_all_nine_missing_headers_are_provided() -> None:
    found = {p.relative_to(HEADERS_DIR).as_posix() for p in HEADERS_DIR.rglob("*.h")}
    assert found == EXPECTED_HEADERS


def test_missing_emcc_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLCPATCH_EMCC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        ToolchainError, match="apt-get install -y --no-install-recommends emscripten"
    ):
        toolchain.find_emcc()
    assert toolchain.main(["--check"]) == 2


def test_broken_emcc_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    fake = tmp_path / "emcc"
    fake.write_text("#!/bin/sh\necho 'emcc: broken install' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MLCPATCH_EMCC", str(fake))
    with pytest.raises(ToolchainError, match="broken install"):
        toolchain.find_emcc()


def test_unbuilt_and_stale_runtime_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    assert shutil.which("emcc"), "needs emcc on PATH: apt-get install -y emscripten"
    monkeypatch.setenv("MLCPATCH_TOOLCHAIN_DIR", str(tmp_path / "tc"))
    with pytest.raises(ToolchainError, match="make toolchain"):
        toolchain.find_toolchain()
    (tmp_path / "tc").mkdir()
    for name in toolchain.RUNTIME_BITCODE:
        (tmp_path / "tc" / f"{name}.bc").write_bytes(b"BC")
    (tmp_path / "tc" / toolchain.THREADS_OBJECT).write_bytes(b"\0asm")
    (tmp_path / "tc" / toolchain.STAMP).write_text(json.dumps({"key": "from another tvm"}))
    with pytest.raises(ToolchainError, match="another TVM, emscripten or header set"):
        toolchain.find_toolchain()


CPP_TEST = r"""
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>
#include <tvm/support/cuda/nvtx.h>
#include <builtin_fp16.h>
#include "src/support/arena.h"
#include "src/support/base64.h"
#include "src/support/bytes_io.h"
#include "src/support/ring_buffer.h"
#include "src/support/utils.h"

#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <random>

using namespace tvm::support;
#define CHECK(c) \
  do { \
    if (!(c)) { std::cerr << "FAILED line " << __LINE__ << ": " #c "\n"; return 1; } \
  } while (0)

static std::string Hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) { out += d[c >> 4]; out += d[c & 15]; }
  return out;
}

int main(int argc, char** argv) {
  // 1. Byte layout of the serializer.
  std::string buf;
  BytesOutStream out(&buf);
  out.Write(std::string("ab"));
  out.Write(std::vector<std::string>{"x", "yz"});
  out.Write(std::map<std::string, int32_t>{{"k", 7}});
  out.Write(std::make_pair(int32_t(1), double(2.5)));
  out.Write(std::vector<int64_t>{-1, 2});
  out.Write(tvm::ffi::String("s"));
  out.Write(tvm::ffi::Array<tvm::ffi::String>{"p", "q"});
  tvm::ffi::Map<tvm::ffi::String, tvm::ffi::String> m;
  m.Set("key", "val");
  out.Write(m);
  std::cout << "{\"layout\": \"" << Hex(buf) << "\"";

  // ...and reading it back.
  BytesInStream in(buf);
  std::string s; std::vector<std::string> v; std::map<std::string, int32_t> mp;
  std::pair<int32_t, double> pr; std::vector<int64_t> vi; tvm::ffi::String fs;
  tvm::ffi::Array<tvm::ffi::String> fa; tvm::ffi::Map<tvm::ffi::String, tvm::ffi::String> fm;
  CHECK(in.Read(&s) && s == "ab");
  CHECK(in.Read(&v) && v.size() == 2 && v[1] == "yz");
  CHECK(in.Read(&mp) && mp.at("k") == 7);
  CHECK(in.Read(&pr) && pr.first == 1 && pr.second == 2.5);
  CHECK(in.Read(&vi) && vi[0] == -1 && vi[1] == 2);
  CHECK(in.Read(&fs) && fs == "s");
  CHECK(in.Read(&fa) && fa.size() == 2 && fa[1] == "q");
  CHECK(in.Read(&fm) && fm.at("key") == "val");
  uint8_t extra;
  CHECK(!in.Read(&extra));  // the end of the data is reported

  // 2. A parameter blob written by TVM itself: header, names, then tensors.
  std::ifstream f(argv[1], std::ios::binary);
  std::string blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  BytesInStream pin(blob);
  uint64_t magic, reserved, count;
  std::vector<std::string> names;
  CHECK(pin.Read(&magic) && pin.Read(&reserved) && pin.Read(&names) && pin.Read(&count));
  CHECK(count == names.size());
  std::cout << ", \"param_names\": [";
  for (size_t i = 0; i < names.size(); ++i) {
    std::cout << (i ? ", " : "") << "\"" << names[i] << "\"";
  }
  uint64_t tmagic, treserved; int32_t dev[2]; int32_t ndim; DLDataType dtype;
  CHECK(pin.Read(&tmagic) && pin.Read(&treserved) && pin.Read(&dev) && pin.Read(&ndim));
  CHECK(pin.Read(&dtype));
  std::vector<int64_t> shape(ndim);
  CHECK(pin.ReadArray(shape.data(), ndim));
  int64_t nbytes;
  CHECK(pin.Read(&nbytes));
  std::vector<float> data(nbytes / 4);
  CHECK(pin.ReadArray(data.data(), data.size()));
  std::cout << "], \"first_shape\": [";
  for (int i = 0; i < ndim; ++i) std::cout << (i ? ", " : "") << shape[i];
  std::cout << "], \"first_sum\": ";
  double sum = 0; for (float x : data) sum += x;
  std::printf("%.6f", sum);

  // 3. Base64 streams round trip (and what they write).
  std::string b64;
  {
    BytesOutStream sink(&b64);
    Base64OutStream enc(&sink);
    enc.Write(std::string("hi!"));
    enc.Finish();
  }
  BytesInStream b64in(b64); Base64InStream dec(&b64in); dec.InitPosition();
  std::string back; CHECK(dec.Read(&back) && back == "hi!");
  std::cout << ", \"base64\": \"" << b64 << "\"";

  // 4. Ring buffer against a deque, through growth and wrap-around.
  std::mt19937 rng(3);
  RingBuffer ring; std::deque<char> ref;
  for (int step = 0; step < 20000; ++step) {
    if (rng() % 3 != 0) {
      size_t n = rng() % 700; std::string chunk(n, 0);
      for (auto& c : chunk) c = char(rng());
      if (step % 2) ring.Write(chunk.data(), n);
      else ring.WriteWithCallback([&](void* p, size_t room) {
        size_t k = std::min(room, n);
        std::memcpy(p, chunk.data(), k);
        chunk.resize(k);
        return k; }, n);
      ref.insert(ref.end(), chunk.begin(), chunk.end());
    } else {
      size_t n = rng() % (ring.bytes_available() + 1); std::string got(n, 0);
      if (step % 2) ring.Read(got.data(), n);
      else { size_t k = ring.ReadWithCallback([&](const void* p, size_t avail) {
        std::memcpy(got.data(), p, avail); return avail; }, n); got.resize(k); n = k; }
      for (size_t i = 0; i < n; ++i) { CHECK(got[i] == ref.front()); ref.pop_front(); }
    }
    CHECK(ring.bytes_available() == ref.size());
  }

  // 5. Arena: aligned, non-overlapping, reusable after RecycleAll.
  Arena arena;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::pair<double*, int>> blocks;
    for (int i = 1; i < 300; ++i) {
      double* p = arena.allocate_<double>(i * 7 % 97 + 1);
      CHECK(reinterpret_cast<uintptr_t>(p) % alignof(double) == 0);
      for (int j = 0; j < i * 7 % 97 + 1; ++j) p[j] = i;
      blocks.emplace_back(p, i);
    }
    for (auto& [p, i] : blocks) for (int j = 0; j < i * 7 % 97 + 1; ++j) CHECK(p[j] == i);
    arena.RecycleAll();
  }

  // 6. Small helpers.
  CHECK(StartsWith(tvm::ffi::String("RPCSessionTimeoutError: x"), "RPCSessionTimeoutError: "));
  CHECK(EndsWith("abc.wasm", ".wasm") && Split("a,b,,c", ',').size() == 4);
  { NVTXScopedRange range("nothing"); }

  // 7. Every half -> float, and a sweep of float -> half, for numpy to check.
  std::ofstream h2f(argv[2], std::ios::binary), f2h(argv[3], std::ios::binary);
  for (uint32_t i = 0; i < 65536; ++i) {
    float x = __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(uint16_t(i));
    h2f.write(reinterpret_cast<char*>(&x), 4);
  }
  for (uint32_t i = 0; i < (1u << 20); ++i) {
    uint32_t bits = i << 12 | (i & 0xfff);
    float x; std::memcpy(&x, &bits, 4);
    uint16_t h = __truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(x);
    f2h.write(reinterpret_cast<char*>(&h), 2);
  }
  std::cout << "}\n";
  return 0;
}
"""


@pytest.fixture(scope="module")
def header_test(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    assert CXX, "needs a host C++ compiler: apt-get install -y g++ (make test installs it)"
    import tvm
    import tvm_ffi

    work = tmp_path_factory.mktemp("headers")
    ffi = pathlib.Path(tvm_ffi.__file__).parent
    source = work / "headers_test.cc"
    source.write_text(CPP_TEST)
    exe = work / "headers_test"
    cmd = [CXX, "-std=c++17", "-O1", "-w", str(source), "-o", str(exe)]
    cmd += [
        f"-I{HEADERS_DIR}",
        f"-I{HEADERS_DIR / 'include'}",
        f"-I{HEADERS_DIR / '3rdparty/compiler-rt'}",
    ]
    cmd += [f"-I{ffi / 'include'}", f"-I{ffi / '3rdparty' / 'dlpack' / 'include'}"]
    cmd += [f"-L{ffi / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi / 'lib'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]

    params = {
        "w": tvm.runtime.tensor(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "bias": tvm.runtime.tensor(np.ones((4,), np.float32)),
    }
    (work / "params.bin").write_bytes(bytes(tvm.runtime.save_param_dict(params)))
    run = subprocess.run(
        [str(exe), str(work / "params.bin"), str(work / "h2f.bin"), str(work / "f2h.bin")],
        capture_output=True,
        text=True,
        env={**os.environ, "LD_LIBRARY_PATH": str(ffi / "lib")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return {"report": json.loads(run.stdout), "work": work}


def _counted(*items: bytes) -> bytes:
    return struct.pack("<Q", len(items)) + b"".join(items)


def _string(s: str) -> bytes:
    return struct.pack("<Q", len(s)) + s.encode()


def test_serializer_byte_layout(header_test: dict) -> None:
    expected = b"".join(
        [
            _string("ab"),
            _counted(_string("x"), _string("yz")),
            _counted(_string("k") + struct.pack("<i", 7)),
            struct.pack("<id", 1, 2.5),
            _counted(struct.pack("<q", -1), struct.pack("<q", 2)),
            _string("s"),
            _counted(_string("p"), _string("q")),
            _counted(_string("key") + _string("val")),
        ]
    )
    assert bytes.fromhex(header_test["report"]["layout"]) == expected


def test_reads_parameter_blob_written_by_tvm(header_test: dict) -> None:
    report = header_test["report"]
    assert sorted(report["param_names"]) == ["bias", "w"]
    first = report["param_names"][0]
    assert report["first_shape"] == ([2, 3] if first == "w" else [4])
    assert report["first_sum"] == pytest.approx(15.0 if first == "w" else 4.0)


def test_base64_stream(header_test: dict) -> None:
    import base64

    assert (
        header_test["report"]["base64"] == base64.b64encode(b"\x03" + b"\0" * 7 + b"hi!").decode()
    )


def test_fp16_conversions_match_numpy(header_test: dict) -> None:
    work = header_test["work"]
    h2f = np.fromfile(work / "h2f.bin", np.float32)
    ref = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    same = (h2f.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(h2f) & np.isnan(ref))
    assert same.all()
    i = np.arange(1 << 20, dtype=np.uint32)
    floats = ((i << 12) | (i & 0xFFF)).view(np.float32)
    f2h = np.fromfile(work / "f2h.bin", np.uint16)
    with np.errstate(over="ignore"):
        expected = floats.astype(np.float16).view(np.uint16)
    nan = np.isnan(floats)
    assert (f2h[~nan] == expected[~nan]).all()
    assert np.isnan(f2h[nan].view(np.float16)).all()
