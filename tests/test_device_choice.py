"""web/src/device.js: which device the browser engine runs an artifact on, in Node.

The rule (web/API.md, "Devices"): "auto" takes WebGPU when the browser has it and the folder has
a WebGPU library, else the wasm CPU library; "cpu" / "webgpu" force one; a device the folder has
no library for is a DeviceError, WebGPU asked for where there is none a WebGPUUnavailableError.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE_JS = ROOT / "web" / "src" / "device.js"

DRIVER = """
import { chooseDevice, canRun } from "%s";
const cases = JSON.parse(process.argv[2]);
const out = cases.map(([libs, requested, gpu]) => {
  const runs = canRun(libs, requested, gpu);
  try {
    const c = chooseDevice(libs, requested, gpu);
    return { device: c.device, label: c.label, reason: c.reason, canRun: runs };
  } catch (err) {
    return { error: err.name, message: err.message, canRun: runs };
  }
});
console.log(JSON.stringify(out));
"""

BOTH = {"llvm": "m-cpu.so", "webgpu": "m-webgpu.wasm", "wasm": "m-cpu.wasm"}
GPU_ONLY = {"llvm": "m-cpu.so", "webgpu": "m-webgpu.wasm"}
CPU_ONLY = {"llvm": "m-cpu.so", "wasm": "m-cpu.wasm"}
NATIVE = {"llvm": "m-cpu.so"}
HAS_GPU = {"ok": True, "adapterInfo": {}}
NO_GPU = {"ok": False, "reason": "no adapter here"}


def _choose(cases: list[tuple[Any, str, Any]], tmp_path: pathlib.Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: apt-get install -y nodejs")
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER % DEVICE_JS.as_uri())
    proc = subprocess.run(
        [node, str(driver), json.dumps(cases)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def test_auto_prefers_webgpu_then_the_cpu_library(tmp_path: pathlib.Path) -> None:
    got = _choose(
        [
            (BOTH, "auto", HAS_GPU),
            (BOTH, "auto", NO_GPU),
            (CPU_ONLY, "auto", HAS_GPU),
            (CPU_ONLY, "auto", None),
            (GPU_ONLY, "auto", NO_GPU),
            (NATIVE, "auto", HAS_GPU),
        ],
        tmp_path,
    )
    assert got[0]["device"] == "webgpu" and got[0]["label"] == "WebGPU (GPU)"
    assert got[1]["device"] == "cpu" and got[1]["label"] == "CPU (WebAssembly)"
    assert "no adapter here" in got[1]["reason"]
    assert got[2]["device"] == "cpu" and got[2]["reason"] == "this artifact has no WebGPU library"
    assert got[3]["device"] == "cpu"
    # Nothing to fall back to: the browser's reason, and how to build a CPU library.
    assert got[4]["error"] == "WebGPUUnavailableError"
    assert (
        "no adapter here" in got[4]["message"] and "--target llvm,webgpu,wasm" in got[4]["message"]
    )
    assert got[5]["error"] == "DeviceError" and "model_lib has llvm" in got[5]["message"]
    assert [g["canRun"] for g in got] == [True, True, True, True, False, False]


def test_forced_devices(tmp_path: pathlib.Path) -> None:
    got = _choose(
        [
            (BOTH, "cpu", HAS_GPU),
            (BOTH, "CPU", None),
            (BOTH, "webgpu", HAS_GPU),
            (BOTH, "webgpu", NO_GPU),
            (GPU_ONLY, "cpu", HAS_GPU),
            (CPU_ONLY, "webgpu", HAS_GPU),
            (BOTH, "gpu", HAS_GPU),
            (BOTH, None, HAS_GPU),
        ],
        tmp_path,
    )
    assert got[0]["device"] == "cpu" and got[0]["reason"] == "asked for with device=cpu"
    assert got[1]["device"] == "cpu"
    assert got[2]["device"] == "webgpu" and got[2]["reason"] == "asked for with device=webgpu"
    assert got[3]["error"] == "WebGPUUnavailableError" and got[3]["message"] == "no adapter here"
    assert got[4]["error"] == "DeviceError"
    assert (
        "no wasm library" in got[4]["message"] and "model_lib has llvm, webgpu" in got[4]["message"]
    )
    assert got[5]["error"] == "DeviceError" and "no webgpu library" in got[5]["message"]
    assert got[6]["error"] == "DeviceError" and 'unknown device "gpu"' in got[6]["message"]
    assert got[7]["device"] == "webgpu"  # no request: auto
