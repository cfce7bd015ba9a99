// The chat page: pick an artifact folder served by `mlcpatch serve`, load it, chat with it.

import { detectWebGPU } from "./detect.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { engine: null, messages: [], busy: false };
// Exposed for debugging in the console and for the browser tests.
window.mlcpatch = state;

function showError(element, message) {
  element.textContent = message;
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
  div.textContent = text;
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function load(entry) {
  $("load-button").disabled = true;
  $("load-error").hidden = true;
  $("progress").hidden = false;
  state.engine?.dispose();
  state.engine = null;
  try {
    const { Engine } = await import("./engine.js");
    state.engine = await Engine.load(entry.url, {
      onProgress: ({ progress, text }) => {
        $("progress-bar").value = progress;
        $("progress-text").textContent = `${Math.round(progress * 100)}% ${text}`;
      },
    });
    state.messages = [];
    $("messages").replaceChildren();
    $("chat").hidden = false;
    const t = state.engine.loadTimings;
    $("stats").textContent = `${entry.name} loaded in ${(t.totalMs / 1000).toFixed(1)} s`;
    document.body.dataset.state = "ready";
  } catch (err) {
    showError($("load-error"), `Could not load ${entry.name}: ${err.message ?? err}`);
    document.body.dataset.state = "load-error";
  } finally {
    $("load-button").disabled = false;
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy || !state.engine) return;
  state.busy = true;
  $("send").disabled = true;
  $("prompt").value = "";
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  try {
    let streamed = "";
    const result = await state.engine.generate(
      { messages: state.messages },
      {
        maxNewTokens: Number($("max-tokens").value),
        temperature: Number($("temperature").value),
        topP: Number($("top-p").value),
        greedy: $("greedy").checked,
        onToken: (_id, piece) => {
          streamed += piece;
          bubble.textContent = streamed;
        },
      },
    );
    // Per-token pieces can split multi-byte characters; the final decode is exact.
    bubble.textContent = result.text;
    state.messages.push({ role: "assistant", content: result.text });
    const t = result.timings;
    $("stats").textContent =
      `${result.outputIds.length} tokens; prefill ${t.prefillMs.toFixed(0)} ms, ` +
      `decode ${t.decodeMsPerToken.toFixed(1)} ms/token (${result.stoppedBy})`;
  } catch (err) {
    bubble.classList.add("error");
    bubble.textContent = `Error: ${err.message ?? err}`;
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

async function main() {
  const gpu = await detectWebGPU();
  if (!gpu.ok) {
    $("gpu-status").textContent = "WebGPU unavailable";
    $("no-webgpu-reason").textContent = gpu.reason;
    $("no-webgpu").hidden = false;
    document.body.dataset.state = "no-webgpu";
    return;
  }
  const info = gpu.adapterInfo;
  $("gpu-status").textContent = `WebGPU: ${info.vendor || "?"} ${info.architecture || ""}`.trim();
  $("app").hidden = false;
  let artifacts = [];
  try {
    artifacts = (await listArtifacts()).filter((a) => a.webgpu);
  } catch (err) {
    showError($("load-error"), `Cannot list models: ${err.message}`);
  }
  if (artifacts.length === 0) {
    showError(
      $("load-error"),
      "No artifact folder with a WebGPU build is served. Build one with " +
        "`mlcpatch build --arch qwen2 --model tiny-random --target llvm,webgpu` and restart " +
        "`mlcpatch serve`.",
    );
    $("load-button").disabled = true;
  }
  for (const a of artifacts) {
    const option = new Option(`${a.name} (${a.model_type}, ${a.quantization})`, a.name);
    $("model-select").append(option);
  }
  const find = () => artifacts.find((a) => a.name === $("model-select").value);
  $("load-button").addEventListener("click", () => load(find()));
  $("chat-form").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) $("chat-form").requestSubmit();
  });
  $("reset").addEventListener("click", () => {
    state.messages = [];
    $("messages").replaceChildren();
  });
  document.body.dataset.state = "idle";
  const wanted = params.get("model");
  if (wanted && artifacts.some((a) => a.name === wanted)) {
    $("model-select").value = wanted;
    await load(find());
  }
}

main().catch((err) => {
  document.body.dataset.state = "error";
  const p = document.createElement("p");
  p.className = "notice error";
  p.textContent = `The page failed to start: ${err.message ?? err}`;
  document.body.append(p);
});
