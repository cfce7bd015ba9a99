// The chat page: pick an artifact folder served by `mlcpatch serve`, load it, chat with it.
// `?model=NAME` loads NAME at once; a name the server does not offer is reported, and no other
// model is picked in its place. Stop ends an answer early (the partial answer stays, marked);
// the page shows how much the browser's cache holds and can clear it. Models run on WebGPU when
// the browser has it and the folder has a WebGPU library, else on the CPU (the folder's wasm
// library); `?device=cpu` (or `webgpu`) forces one, and the page says which runs.

import { detectWebGPU } from "./detect.js";
import { canRun, chooseDevice, DEVICES, parseDeviceRequest } from "./device.js";
import { setMarkdown } from "./markdown.js";
import {
  cacheUsage,
  copyButton,
  formatBytes,
  setRichText,
  softwareAdapterWarning,
  webgpuAdvice,
} from "./ui.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  engine: null,
  messages: [],
  busy: false, // an answer is being generated
  loading: false,
  abort: null, // the AbortController of the answer being generated
  artifacts: [],
  persisted: null, // navigator.storage.persist()'s answer, asked once after the first load
  requested: "auto", // the device asked for (?device=): "auto", "webgpu" or "cpu"
  gpu: null, // detectWebGPU()'s answer (null when the CPU is forced: WebGPU is not consulted)
};
// Exposed for debugging in the console and for the browser tests.
window.mlcpatch = state;

function showError(element, message) {
  setRichText(element, message);
  element.hidden = false;
}

async function listArtifacts() {
  const response = await fetch("./artifacts/index.json");
  if (!response.ok) throw new Error(`artifact list: HTTP ${response.status}`);
  return (await response.json()).artifacts ?? [];
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.dataset.who = role === "user" ? "You" : "Model";
  div.textContent = text;
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

/** An assistant message: the answer (Markdown, rendered safely) and a copy button. */
function addAnswer() {
  const div = addMessage("assistant", "");
  const body = document.createElement("div");
  body.className = "body markdown";
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(copyButton(() => body.dataset.markdown ?? body.textContent, "answer"));
  actions.hidden = true;
  div.append(body, actions);
  return { div, body, actions };
}

function sizeText(entry) {
  return entry?.size_bytes != null ? formatBytes(entry.size_bytes) : null;
}

function selected() {
  return state.artifacts.find((a) => a.name === $("model-select").value);
}

function onSelect() {
  const entry = selected();
  const size = sizeText(entry);
  $("model-size").textContent = size ? `about ${size} to download` : "";
  updateButtons();
}

/** Load and Send while nothing runs, Stop while an answer is generated. */
function updateButtons() {
  $("load-button").disabled = !selected() || state.busy || state.loading;
  $("clear-cache").disabled = state.loading;
  $("send").disabled = state.busy || state.loading;
  $("stop").hidden = !state.busy;
  $("stop").disabled = !state.busy || state.abort?.signal.aborted === true;
}

// --- the browser's cache -------------------------------------------------------------------

async function showCacheUsage() {
  if (typeof caches === "undefined") return; // no Cache Storage here: nothing to show
  const usage = await cacheUsage();
  $("storage").hidden = false;
  const text = usage ? `Cache: ${formatBytes(usage.bytes)}` : "Cache: size unknown";
  $("cache-usage").textContent = text;
  $("cache-usage").title = usage
    ? `${usage.whole ? "All storage of this site" : "Cache Storage of this site"}` +
      (usage.quota ? ` (the browser allows up to ${formatBytes(usage.quota)})` : "")
    : "";
}

async function clearCacheClicked() {
  $("clear-cache").disabled = true;
  $("cache-note").textContent = "";
  try {
    const { clearCache } = await import("./engine.js");
    const names = await clearCache();
    $("cache-note").textContent = names.length
      ? "Cache cleared: the next load downloads the model again."
      : "The cache was already empty.";
  } catch (err) {
    showError($("load-error"), `Could not clear the cache: ${err.message ?? err}`);
  } finally {
    await showCacheUsage();
    updateButtons();
  }
}

/** Ask once for persistent storage (so the browser keeps the cache when space runs low). */
async function requestPersistence() {
  if (state.persisted !== null || !navigator.storage?.persist) return;
  try {
    state.persisted = await navigator.storage.persist();
  } catch {
    state.persisted = false;
  }
  $("persist-status").textContent = state.persisted
    ? "Persistent storage granted: the browser keeps the cache."
    : "Persistent storage not granted: the browser may evict the cache when space runs low.";
}

async function load(entry) {
  if (!entry || state.busy) return;
  state.loading = true;
  document.body.dataset.state = "loading";
  updateButtons();
  $("load-error").hidden = true;
  $("progress").hidden = false;
  state.engine?.dispose();
  state.engine = null;
  $("device-status").hidden = true;
  try {
    const { Engine } = await import("./engine.js");
    state.engine = await Engine.load(entry.url, {
      device: state.requested,
      threads: params.get("threads") ?? "auto", // CPU threads (?threads=N); a bad value is reported
      onProgress: ({ progress, text }) => {
        $("progress-bar").value = progress;
        $("progress-text").textContent = `${Math.round(progress * 100)}% ${text}`;
      },
    });
    state.messages = [];
    $("messages").replaceChildren();
    $("chat").hidden = false;
    const t = state.engine.loadTimings;
    const from = state.engine.wasmSource === "cache" ? " (library from the browser's cache)" : "";
    $("stats").textContent = `${entry.name} loaded in ${(t.totalMs / 1000).toFixed(1)} s${from}`;
    $("device-status").textContent =
      `Running on ${state.engine.deviceLabel}: ${state.engine.deviceReason}.`;
    $("device-status").hidden = false;
    await requestPersistence();
    document.body.dataset.state = "ready";
  } catch (err) {
    showError($("load-error"), `Could not load ${entry.name}: ${err.message ?? err}`);
    document.body.dataset.state = "load-error";
  } finally {
    state.loading = false;
    onSelect();
    await showCacheUsage();
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy || state.loading || !state.engine) return;
  const controller = new AbortController();
  state.busy = true;
  state.abort = controller;
  document.body.dataset.state = "generating";
  updateButtons();
  $("prompt").value = "";
  const conversation = state.messages; // "New chat" starts another one meanwhile
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const answer = addAnswer();
  answer.div.classList.add("streaming");
  try {
    let streamed = "";
    const result = await state.engine.generate(
      { messages: conversation },
      {
        maxNewTokens: Number($("max-tokens").value),
        temperature: Number($("temperature").value),
        topP: Number($("top-p").value),
        greedy: $("greedy").checked,
        signal: controller.signal,
        onToken: (_id, piece) => {
          streamed += piece;
          setMarkdown(answer.body, streamed);
        },
      },
    );
    // Per-token pieces can split multi-byte characters; the final decode is exact.
    setMarkdown(answer.body, result.text);
    answer.actions.hidden = false;
    if (result.stopped) markStopped(answer, result);
    // A stopped answer stays in the conversation as far as it got.
    conversation.push({ role: "assistant", content: result.text });
    const t = result.timings;
    const why = result.stopped ? "stopped" : result.stoppedBy;
    $("stats").textContent =
      `${result.outputIds.length} tokens; prefill ${t.prefillMs.toFixed(0)} ms, ` +
      `decode ${t.decodeMsPerToken.toFixed(1)} ms/token (${why})`;
  } catch (err) {
    answer.div.classList.add("error");
    answer.body.textContent = `Error: ${err.message ?? err}`;
  } finally {
    answer.div.classList.remove("streaming");
    state.busy = false;
    state.abort = null;
    document.body.dataset.state = "ready";
    updateButtons();
  }
}

/** Mark an answer cut short by Stop: it keeps its text, says so, and can still be copied. */
function markStopped(answer, result) {
  answer.div.classList.add("stopped");
  answer.div.dataset.who = "Model (stopped)";
  const note = document.createElement("span");
  note.className = "stopped-note";
  const n = result.outputIds.length;
  note.textContent = n
    ? `Stopped after ${n} token${n === 1 ? "" : "s"}`
    : "Stopped before the first token";
  answer.actions.append(note);
}

function stop() {
  if (!state.abort) return;
  state.abort.abort();
  updateButtons(); // Stop is disabled until the engine has stopped (after at most one step)
}

function showNoWebGPU(reason, cpuNote) {
  $("gpu-status").textContent = "WebGPU unavailable";
  $("no-webgpu-reason").textContent = reason;
  setRichText($("no-webgpu-cpu"), cpuNote);
  setRichText($("no-webgpu-help"), webgpuAdvice());
  $("no-webgpu").hidden = false;
  document.body.dataset.state = "no-webgpu";
}

/** The device a served artifact would run on here, for its label ("" when none). */
function deviceOf(artifact) {
  try {
    return chooseDevice(artifact.libraries, state.requested, state.gpu).device;
  } catch {
    return "";
  }
}

async function main() {
  state.requested = parseDeviceRequest(params.get("device")); // a bad value: the page says so
  const gpu = state.requested === "cpu" ? null : await detectWebGPU();
  state.gpu = gpu;
  let all = [];
  let listError = null;
  try {
    all = await listArtifacts();
  } catch (err) {
    listError = err;
  }
  const artifacts = all.filter((a) => canRun(a.libraries, state.requested, gpu));
  const cpuBuilds = all.filter((a) => a.libraries?.[DEVICES.cpu.library]);
  if (gpu && !gpu.ok && (state.requested === "webgpu" || (!listError && !artifacts.length))) {
    showNoWebGPU(
      gpu.reason,
      state.requested === "webgpu"
        ? "This page was asked for WebGPU (device=webgpu)."
        : "Without WebGPU, a model runs on the CPU when its folder has a CPU (wasm) library; " +
            `none of the served ones has (${cpuBuilds.length} of ${all.length}): build one with ` +
            "`mlcpatch build … --target llvm,webgpu,wasm`.",
    );
    return;
  }
  if (!gpu) {
    $("gpu-status").textContent = `Models run on the ${DEVICES.cpu.label}: asked for with device=cpu`;
  } else if (!gpu.ok) {
    $("gpu-status").textContent = `WebGPU unavailable: models run on the ${DEVICES.cpu.label}`;
  } else {
    const info = gpu.adapterInfo;
    $("gpu-status").textContent = `WebGPU: ${info.vendor || "?"} ${info.architecture || ""}`.trim();
    const warning = softwareAdapterWarning(info);
    if (warning) {
      setRichText($("adapter-warning"), warning);
      $("adapter-warning").hidden = false;
    }
  }
  $("app").hidden = false;
  if (listError) showError($("load-error"), `Cannot list models: ${listError.message}`);
  state.artifacts = artifacts;
  if (artifacts.length === 0 && !listError) {
    const need = state.requested === "cpu" ? "a CPU (wasm)" : "a WebGPU or CPU (wasm)";
    showError(
      $("load-error"),
      `No artifact folder with ${need} library is served. Build one with ` +
        "`mlcpatch build --arch qwen2 --model tiny-random --target llvm,webgpu,wasm` and " +
        "restart `mlcpatch serve`.",
    );
  }
  const wanted = params.get("model");
  const known = wanted ? artifacts.some((a) => a.name === wanted) : false;
  if (wanted && !known) {
    // Never pick another model silently: the select waits for a choice.
    $("model-select").append(new Option(`choose a model (${wanted} is not served)`, ""));
    if (artifacts.length) {
      showError(
        $("load-error"),
        `No served model named ${wanted} (served: ${artifacts.map((a) => a.name).join(", ")}). ` +
          "Pick one and press Load, or build it with `mlcpatch build … --target llvm,webgpu,wasm`.",
      );
    }
  }
  for (const a of artifacts) {
    const size = sizeText(a);
    const on = deviceOf(a) === "cpu" ? ", on the CPU" : "";
    const label = `${a.name} (${a.model_type}, ${a.quantization}${size ? `, ${size}` : ""}${on})`;
    $("model-select").append(new Option(label, a.name));
  }
  if (known) $("model-select").value = wanted;
  onSelect();
  $("model-select").addEventListener("change", onSelect);
  $("load-button").addEventListener("click", () => load(selected()));
  $("chat-form").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("clear-cache").addEventListener("click", clearCacheClicked);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault(); // no stray newline left in the box
      $("chat-form").requestSubmit();
    }
  });
  $("reset").addEventListener("click", () => {
    stop(); // a new chat ends the answer being generated
    state.messages = [];
    $("messages").replaceChildren();
  });
  await showCacheUsage();
  document.body.dataset.state = "idle";
  if (known) await load(selected());
}

main().catch((err) => {
  document.body.dataset.state = "error";
  const p = document.createElement("p");
  p.className = "notice error";
  p.textContent = `The page failed to start: ${err.message ?? err}`;
  document.body.append(p);
});
