// Small helpers shared by the chat page and the playground: sizes, the WebGPU advice for the
// browser at hand, the software-adapter warning, copy buttons, messages with `code`, and the
// storage this origin uses.

import { renderInline } from "./markdown.js";

/** 6202870 -> "5.9 MiB" (binary units, as download sizes are usually given). */
export function formatBytes(bytes) {
  const n = Number(bytes);
  if (!Number.isFinite(n) || n < 0) return "?";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** What the browser is, from its user agent: {engine, os}, enough to give the right advice. */
export function browserKind(userAgent = navigator.userAgent) {
  const ua = String(userAgent);
  const os = /Android/.test(ua)
    ? "android"
    : /iPhone|iPad|iPod/.test(ua)
      ? "ios"
      : /CrOS/.test(ua)
        ? "chromeos"
        : /Windows/.test(ua)
          ? "windows"
          : /Mac OS X|Macintosh/.test(ua)
            ? "mac"
            : /Linux|X11/.test(ua)
              ? "linux"
              : "other";
  let engine = "other";
  if (/Firefox\/|FxiOS\//.test(ua)) engine = "firefox";
  else if (/Edg(e|A|iOS)?\//.test(ua)) engine = "edge";
  else if (/Chrome\/|Chromium\/|CriOS\//.test(ua)) engine = "chrome";
  else if (/AppleWebKit\//.test(ua) && /Safari\//.test(ua)) engine = "safari";
  return { engine, os };
}

/** A sentence or two on how to get WebGPU in this browser (flags named where they apply). */
export function webgpuAdvice(userAgent = navigator.userAgent) {
  const { engine, os } = browserKind(userAgent);
  const flags = engine === "edge" ? "edge://flags" : "chrome://flags";
  if (engine === "chrome" || engine === "edge") {
    if (os === "linux") {
      return (
        `On Linux, Chrome, Chromium and Edge do not turn WebGPU on by default yet: start the ` +
        `browser with \`--enable-unsafe-webgpu --enable-features=Vulkan\`, or turn on ` +
        `\`${flags}/#enable-unsafe-webgpu\` and restart it. \`${engine === "edge" ? "edge" : "chrome"}://gpu\` ` +
        `shows whether WebGPU is enabled.`
      );
    }
    if (os === "android") {
      return (
        "Chrome on Android has WebGPU from version 121 on Android 12 or later with a recent GPU: " +
        `update Chrome, or turn on \`${flags}/#enable-unsafe-webgpu\`.`
      );
    }
    return (
      "Chrome and Edge have WebGPU on by default since version 113: update the browser, check " +
      "that hardware acceleration is on (Settings › System), and see whether " +
      `\`${engine === "edge" ? "edge" : "chrome"}://gpu\` lists WebGPU as enabled (a blocklisted driver ` +
      `can be overridden with \`${flags}/#enable-unsafe-webgpu\`).`
    );
  }
  if (engine === "firefox") {
    return (
      "Firefox has WebGPU on by default on Windows (version 141 or later); elsewhere set " +
      "`dom.webgpu.enabled` to true in `about:config` and restart, or use Firefox Nightly."
    );
  }
  if (engine === "safari") {
    return (
      "Safari has WebGPU from Safari 26. On an older Safari, turn it on under Develop › Feature " +
      "Flags › WebGPU (on iPhone and iPad: Settings › Apps › Safari › Advanced › Feature Flags)."
    );
  }
  return "Use a browser with WebGPU: Chrome or Edge 113 or later, Safari 26 or later, or Firefox with WebGPU enabled.";
}

const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|software|basic render|\bwarp\b/i;

/** Whether the WebGPU adapter renders on the CPU (SwiftShader, llvmpipe, WARP, …). */
export function isSoftwareAdapter(info = {}) {
  if (info.isFallbackAdapter === true) return true;
  return [info.vendor, info.architecture, info.device, info.description].some((v) => v && SOFTWARE.test(v));
}

/** "google swiftshader" from an adapter's info. */
export function adapterName(info = {}) {
  return [info.vendor, info.architecture, info.device].filter(Boolean).join(" ").trim() || "unknown adapter";
}

/** The warning shown for a software adapter (null for a real GPU). */
export function softwareAdapterWarning(info, userAgent = navigator.userAgent) {
  if (!isSoftwareAdapter(info)) return null;
  const { engine, os } = browserKind(userAgent);
  const fix =
    (engine === "chrome" || engine === "edge") && os === "linux"
      ? " To use the GPU, start the browser with `--enable-features=Vulkan` and check `chrome://gpu`."
      : " Turn on hardware acceleration in the browser's settings, or use a machine with a GPU.";
  return (
    `WebGPU runs on a software adapter here (${adapterName(info)}): the GPU work is emulated on ` +
    `the CPU, fine for tiny test models but far too slow for a real model (minutes per answer).` +
    fix
  );
}

/** Put `text` in `element`, with `code` spans shown as code (no raw backticks, no HTML). */
export function setRichText(element, text) {
  element.replaceChildren(renderInline(text, element.ownerDocument));
}

async function writeClipboard(text) {
  if (navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall back below (no permission, or not a secure context)
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** A "Copy" button that copies getText() (the raw answer) to the clipboard. */
export function copyButton(getText, what = "answer") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", `Copy the ${what}`);
  button.addEventListener("click", async () => {
    const ok = await writeClipboard(getText());
    button.textContent = ok ? "Copied" : "Copy failed";
    button.dataset.copied = ok ? "yes" : "no";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  });
  return button;
}

/**
 * Bytes this origin keeps in Cache Storage (weights and libraries), from
 * navigator.storage.estimate(): its per-kind usageDetails where the browser gives them (Chromium),
 * else the origin's whole usage. null where the browser gives no estimate.
 */
export async function cacheUsage() {
  if (!navigator.storage?.estimate) return null;
  try {
    const estimate = await navigator.storage.estimate();
    const details = estimate.usageDetails;
    const bytes = details ? (details.caches ?? 0) : estimate.usage;
    return { bytes: Number(bytes) || 0, quota: estimate.quota ?? null, whole: !details };
  } catch {
    return null;
  }
}
