"""Accuracy of the WebGPU math lowerings, measured on the WGSL that TVM actually emits.

Each f32 intrinsic is compiled by TVM for WebGPU (with our lowerings registered), and the
generated compute shader runs in headless Chromium's WebGPU (SwiftShader) through the plain
WebGPU API: no wasm link needed, so this runs in seconds. Errors are in ulps against float64.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from browser_support import chromium

from mlcpatch.serve import WEB_DIR, running_server

N = 1 << 14
# name -> (TIR builder, float64 reference, input range, max ulps)
CASES: dict[str, tuple[Callable[[Any], Any], Callable[[np.ndarray], np.ndarray], tuple, float]] = {}


def _cases() -> None:
    from tvm import te, tirx

    CASES.update(
        {
            "sin": (te.sin, np.sin, (-60.0, 60.0), 2.0),
            "cos": (te.cos, np.cos, (-60.0, 60.0), 2.0),
            # RoPE's angles: position * frequency, up to a few thousand radians.
            "sin_large": (te.sin, np.sin, (-4000.0, 4000.0), 2.0),
            "exp": (te.exp, np.exp, (-20.0, 5.0), 1.5),
            "exp2": (tirx.exp2, np.exp2, (-30.0, 5.0), 1.5),
            "sigmoid": (te.sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-15.0, 15.0), 2.5),
            # RoPE's inverse frequencies: theta ** (2i / d).
            "pow": (
                lambda x: tirx.power(tirx.const(10000.0, "float32"), x),
                lambda x: 10000.0**x,
                (0.0, 1.0),
                2.5,
            ),
        }
    )


def _wgsl(builder: Callable[[Any], Any]) -> str:
    import tvm
    from tvm import te
    from tvm.s_tir import dlight as dl

    from mlcpatch.build.webgpu.target import make_target

    target = make_target()
    x = te.placeholder((N,), "float32", name="A")
    y = te.compute((N,), lambda i: builder(x[i]), name="B")
    mod = tvm.IRModule({"main": te.create_prim_func([x, y])})
    with target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)
    executable = tvm.compile(mod, target=target)
    (device,) = [m for m in executable.mod.imports if m.kind == "webgpu"]
    return device.inspect_source()


# Runs TVM's kernel: bindings 0 (input), 1 (output), 2 (uniform podArgs.packGridDimX).
RUN_SHADER_JS = """async ([code, xs, workgroups]) => {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter.requestDevice();
  const module = device.createShaderModule({code});
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === 'error').map((m) => m.message);
  if (errors.length) return {errors};
  const pipeline = device.createComputePipeline({layout: 'auto',
    compute: {module, entryPoint: 'main_kernel'}});
  const n = xs.length;
  const usage = GPUBufferUsage;
  const input = device.createBuffer({size: n * 4, usage: usage.STORAGE | usage.COPY_DST});
  device.queue.writeBuffer(input, 0, Float32Array.from(xs));
  const output = device.createBuffer({size: n * 4, usage: usage.STORAGE | usage.COPY_SRC});
  const pod = device.createBuffer({size: 16, usage: usage.UNIFORM | usage.COPY_DST});
  device.queue.writeBuffer(pod, 0, Uint32Array.from([workgroups - 1, 0, 0, 0]));
  const read = device.createBuffer({size: n * 4, usage: usage.MAP_READ | usage.COPY_DST});
  const group = device.createBindGroup({layout: pipeline.getBindGroupLayout(0), entries: [
    {binding: 0, resource: {buffer: input}}, {binding: 1, resource: {buffer: output}},
    {binding: 2, resource: {buffer: pod}}]});
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline); pass.setBindGroup(0, group); pass.dispatchWorkgroups(workgroups);
  pass.end();
  encoder.copyBufferToBuffer(output, 0, read, 0, n * 4);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  return {out: Array.from(new Float32Array(read.getMappedRange()))};
}"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with running_server(WEB_DIR, WEB_DIR / "no-artifacts") as server:
        with chromium(webgpu=True) as session:
            yield session.new_page(server.url + "index.html")


def _ulps(got: np.ndarray, truth: np.ndarray) -> float:
    ulp = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - truth) / ulp))


@pytest.mark.heavy
def test_generated_wgsl_avoids_inaccurate_builtins() -> None:
    from tvm import te

    source = _wgsl(lambda v: te.sin(v) + te.cos(v) + te.exp(v))
    body = source[source.index("fn main_kernel") :]
    assert not re.search(r"\b(sin|cos|exp)\(", body)
    assert "bitcast<f32>" in body  # constants as exact bit patterns
    assert "inf" not in body  # WGSL rejects infinite constants


@pytest.mark.browser
@pytest.mark.parametrize("name", ["sin", "cos", "sin_large", "exp", "exp2", "sigmoid", "pow"])
def test_intrinsic_accuracy_in_browser(page: Any, name: str) -> None:
    if not CASES:
        _cases()
    builder, reference, (low, high), max_ulps = CASES[name]
    xs = np.random.default_rng(7).uniform(low, high, N).astype(np.float32)
    result = page.evaluate(RUN_SHADER_JS, [_wgsl(builder), xs.tolist(), math.ceil(N / 256)])
    assert "errors" not in result, result.get("errors")
    got = np.asarray(result["out"], np.float32)
    ulps = _ulps(got, reference(xs.astype(np.float64)))
    print(f"{name}: max {ulps:.2f} ulp")
    assert ulps <= max_ulps
