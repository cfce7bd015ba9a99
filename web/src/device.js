// Which device an artifact runs on in this browser: WebGPU (the GPU) or the CPU (the folder's
// wasm32 CPU library). Apart from engine.js, like detect.js, so a page can decide what to offer
// before it loads the runtime.

import { WebGPUUnavailableError } from "./detect.js";

/** The devices, with the model_lib key (= build target) of the library each one loads. */
export const DEVICES = Object.freeze({
  webgpu: Object.freeze({ library: "webgpu", label: "WebGPU (GPU)" }),
  cpu: Object.freeze({ library: "wasm", label: "CPU (WebAssembly)" }),
});

/** What a page or Engine.load may ask for ("auto" picks; see chooseDevice). */
export const DEVICE_REQUESTS = Object.freeze(["auto", ...Object.keys(DEVICES)]);

/** A device that is not one of DEVICE_REQUESTS, or that the artifact has no library for. */
export class DeviceError extends Error {
  constructor(message) {
    super(message);
    this.name = "DeviceError";
  }
}

const REBUILD = "rebuild it with `mlcpatch build ... --target llvm,webgpu,wasm`";

/** "auto", "webgpu" or "cpu" from user text (a URL parameter); DeviceError for anything else. */
export function parseDeviceRequest(text) {
  const want = String(text ?? "auto").trim().toLowerCase() || "auto";
  if (!DEVICE_REQUESTS.includes(want)) {
    throw new DeviceError(
      `unknown device ${JSON.stringify(String(text))} (use one of ${DEVICE_REQUESTS.join(", ")})`,
    );
  }
  return want;
}

/**
 * Which device runs an artifact: `{ device: "webgpu" | "cpu", label, reason }`.
 *
 * libraries: the config's model_lib ({"webgpu": "x-webgpu.wasm", "wasm": "x-cpu.wasm", ...}).
 * requested: "auto" (default), "webgpu" or "cpu". gpu: detectWebGPU()'s answer, or null when it
 * was not asked (it matters only where WebGPU is a candidate). "auto" takes WebGPU when the
 * browser has it and the folder has a WebGPU library, else the CPU library. Asking for a device
 * the folder has no library for is a DeviceError; asking for WebGPU where the browser has none
 * is a WebGPUUnavailableError. `reason` says why, in words, for the page.
 */
export function chooseDevice(libraries, requested = "auto", gpu = null) {
  const want = parseDeviceRequest(requested);
  const libs = typeof libraries === "object" && libraries !== null ? libraries : {};
  const has = (device) => typeof libs[DEVICES[device].library] === "string";
  const present = Object.keys(libs).join(", ") || "nothing";
  const pick = (device, reason) => ({ device, label: DEVICES[device].label, reason });
  if (want !== "auto") {
    if (!has(want)) {
      throw new DeviceError(
        `the ${DEVICES[want].label} device was asked for (device=${want}), but this artifact ` +
          `has no ${DEVICES[want].library} library (model_lib has ${present}); ${REBUILD}`,
      );
    }
    if (want === "webgpu" && gpu && !gpu.ok) throw new WebGPUUnavailableError(gpu.reason);
    return pick(want, `asked for with device=${want}`);
  }
  if (has("webgpu") && gpu?.ok) return pick("webgpu", "this browser has WebGPU");
  if (has("cpu")) {
    const why = has("webgpu")
      ? `this browser has no usable WebGPU (${gpu?.reason ?? "not detected"})`
      : "this artifact has no WebGPU library";
    return pick("cpu", why);
  }
  if (has("webgpu")) {
    throw new WebGPUUnavailableError(
      `${gpu?.reason ?? "WebGPU was not detected."} This artifact has no CPU (wasm) library to ` +
        `fall back to; ${REBUILD}.`,
    );
  }
  throw new DeviceError(`no browser library in this artifact (model_lib has ${present}); ${REBUILD}`);
}

/** Whether chooseDevice would give the artifact a device (for the pages' model lists). */
export function canRun(libraries, requested, gpu) {
  try {
    chooseDevice(libraries, requested, gpu);
    return true;
  } catch {
    return false;
  }
}
