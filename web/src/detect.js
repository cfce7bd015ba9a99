// WebGPU detection, kept apart from engine.js so a page can check for WebGPU (and explain
// its absence) without loading the multi-megabyte runtime first.

/** Thrown when the page cannot get a WebGPU device; `reason` is a sentence for the user. */
export class WebGPUUnavailableError extends Error {
  constructor(reason) {
    super(reason);
    this.name = "WebGPUUnavailableError";
    this.reason = reason;
  }
}

/**
 * Whether WebGPU can run here: `{ ok: true, adapterInfo }` or `{ ok: false, reason }`.
 * Never throws, so a page can show the reason instead of a blank screen.
 */
export async function detectWebGPU() {
  if (typeof navigator === "undefined" || !navigator.gpu) {
    return {
      ok: false,
      reason:
        "This browser does not support WebGPU (navigator.gpu is missing). Use a recent " +
        "Chrome, Edge or Safari, or enable WebGPU in the browser's settings or flags.",
    };
  }
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) {
      return {
        ok: false,
        reason:
          "WebGPU is present but no GPU adapter is available (blocklisted driver, or " +
          "hardware acceleration turned off).",
      };
    }
    return { ok: true, adapterInfo: adapter.info ?? {} };
  } catch (err) {
    return { ok: false, reason: `WebGPU adapter request failed: ${err}` };
  }
}
