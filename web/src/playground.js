// The playground page: pick models, pattern and link file, run the loop latent, in text, or
// both side by side, and watch it. The models and the loop run in a Web Worker (loop_host.js);
// this module only drives the form and draws what the worker reports.
//
// URL parameters preset the form: pattern, model (every agent), models (comma-separated, one
// per agent), links (a link file URL), question.

import { renderChart } from "./chart.js";
import { compare } from "./loop.js";
import { loadPatterns } from "./patterns.js";
import { LoopClient } from "./worker_client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MODE_BUTTONS = { "run-latent": ["latent"], "run-text": ["text"], "run-compare": ["text", "latent"] };

// Exposed for the console and the browser tests: the latest results are RunResult JSON, the
// same keys as Python's RunResult.to_json().
const state = {
  client: null,
  where: null,
  patterns: new Map(),
  artifacts: [],
  loaded: {},
  links: null,
  running: false,
  results: {},
  figures: null,
  error: null,
  events: [],
};
window.playground = state;

function setState(name) {
  document.body.dataset.state = name;
}

function showError(err) {
  const message = typeof err === "string" ? err : err.message ?? String(err);
  state.error = { name: err?.name ?? "Error", message };
  $("error").textContent = message;
  $("error").dataset.kind = state.error.name;
  $("error").hidden = false;
}

function clearError() {
  state.error = null;
  $("error").hidden = true;
  $("error").textContent = "";
}

// --- setup --------------------------------------------------------------------------------

async function listArtifacts() {
  const response = await fetch("./artifacts/index.json");
  if (!response.ok) throw new Error(`cannot list the served models: HTTP ${response.status}`);
  return (await response.json()).artifacts ?? [];
}

function artifactLabel(a) {
  const size = a.hidden_size ? `, hidden ${a.hidden_size}` : "";
  return `${a.name} (${a.model_type ?? "?"}, ${a.quantization ?? "?"}${size})`;
}

function modelOptions(select, selected) {
  select.replaceChildren(...state.artifacts.map((a) => new Option(artifactLabel(a), a.name)));
  if (selected && state.artifacts.some((a) => a.name === selected)) select.value = selected;
}

function currentPattern() {
  return state.patterns.get($("pattern").value);
}

function renderAgents(preset = []) {
  const pattern = currentPattern();
  $("pattern-description").textContent = pattern?.description ?? "";
  const body = $("agents").tBodies[0];
  body.replaceChildren();
  for (const [i, agent] of (pattern?.agents ?? []).entries()) {
    const row = body.insertRow();
    row.dataset.agent = agent.name;
    row.insertCell().textContent = agent.name;
    row.insertCell().textContent = agent.receives.join(", ") || "–";
    row.insertCell().textContent = agent.tools.join(", ") || "–";
    const select = document.createElement("select");
    select.className = "agent-model";
    select.dataset.agent = agent.name;
    select.setAttribute("aria-label", `Model for ${agent.name}`);
    modelOptions(select, preset[i] ?? $("model-all").value);
    row.insertCell().append(select);
  }
}

function chosenModels() {
  return [...document.querySelectorAll("select.agent-model")].map((s) => s.value);
}

function readSettings() {
  const number = (id, integer = true) => {
    const raw = $(id).value.trim();
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      throw new Error(`${$(id).closest("label").textContent.trim()}: ${raw || "empty"} is not ${integer ? "a whole number" : "a number"}`);
    }
    return value;
  };
  return {
    rounds: number("rounds"),
    latentSteps: number("latent-steps"),
    maxNewTokens: number("max-new-tokens"),
    textTokens: number("text-tokens"),
    temperature: number("temperature", false),
    topP: number("top-p", false),
    seed: number("seed"),
  };
}

function setBusy(busy) {
  state.running = busy;
  for (const id of Object.keys(MODE_BUTTONS)) $(id).disabled = busy || !state.artifacts.length;
  $("stop").disabled = !busy;
  for (const id of ["pattern", "model-all", "links-file", "links-url", "links-load"]) $(id).disabled = busy;
  for (const s of document.querySelectorAll("select.agent-model")) s.disabled = busy;
}

// --- link files ---------------------------------------------------------------------------

function describeLinks(info) {
  const agents = info.agents.map((a) => `${a.name} (${a.hiddenSize})`).join(", ");
  const names = info.links.map((l) => `${l.name} ${l.inDim}→${l.outDim}`).join(", ");
  return `${info.source}: ${info.links.length} links (${names})${agents ? `; agents ${agents}` : ""}`;
}

async function readLinks(payload, transfer) {
  clearError();
  $("links-status").textContent = "Reading the link file…";
  try {
    state.links = await state.client.request("links", payload, { transfer });
    $("links-status").textContent = state.links ? describeLinks(state.links) : "No link file.";
    $("links-status").dataset.ok = state.links ? "yes" : "no";
  } catch (err) {
    state.links = null;
    $("links-status").textContent = "The link file could not be read.";
    $("links-status").dataset.ok = "no";
    showError(err);
  }
}

async function onLinkFiles() {
  const files = [...$("links-file").files];
  const read = await Promise.all(files.map(async (f) => ({ name: f.name, bytes: await f.arrayBuffer() })));
  await readLinks({ files: read }, read.map((f) => f.bytes));
}

// --- the live view --------------------------------------------------------------------------

function startLive(pattern) {
  $("live").hidden = false;
  $("live-status").textContent = "";
  $("live-ticks").replaceChildren();
  $("live-agents").replaceChildren(
    ...pattern.agents.map((a) => {
      const li = document.createElement("li");
      li.textContent = a.name;
      li.dataset.agent = a.name;
      return li;
    }),
  );
}

function onEvent(event, settings) {
  state.events.push(event);
  if (event.kind === "load") {
    $("load-progress").hidden = false;
    $("load-bar").value = event.progress;
    $("load-text").textContent = `${event.model}: ${Math.round(event.progress * 100)}% ${event.text}`;
    return;
  }
  const where = `${event.mode} · round ${event.round}/${settings.rounds} · ${event.agent}`;
  if (event.event === "agent") {
    for (const li of $("live-agents").children) li.classList.toggle("active", li.dataset.agent === event.agent);
    const ticks = event.mode === "latent" && !event.final ? settings.latentSteps : 0;
    $("live-ticks").replaceChildren(
      ...Array.from({ length: ticks }, (_, i) => {
        const tick = document.createElement("span");
        tick.className = "tick";
        tick.title = `latent step ${i + 1}`;
        return tick;
      }),
    );
    $("live-status").textContent = event.final ? `${where} · writing the answer` : where;
  } else if (event.event === "latent") {
    $("live-ticks").children[event.step - 1]?.classList.add("done");
    $("live-status").textContent = `${where} · latent step ${event.step}/${event.of}`;
  } else if (event.event === "token") {
    $("live-status").textContent = `${where} · token ${event.count}/${event.of}`;
  } else if (event.event === "step") {
    appendTurn($(`result-${event.mode}`), event.mode, event.step);
  }
}

// --- results --------------------------------------------------------------------------------

const METRIC_COLUMNS = [
  ["round", "Round"],
  ["agent", "Agent"],
  ["input_positions", "Input positions"],
  ["latent_steps", "Latent steps"],
  ["tokens_generated", "Tokens generated"],
  ["positions_processed", "Positions processed"],
  ["bytes_handed", "Bytes handed"],
  ["seconds", "Seconds"],
];

function cell(row, key, value) {
  const td = row.insertCell();
  td.dataset.key = key;
  td.textContent = key === "seconds" ? Number(value).toFixed(3) : String(value);
}

function metricsTable(result) {
  const table = document.createElement("table");
  table.className = "metrics-table";
  const head = table.createTHead().insertRow();
  for (const [, label] of METRIC_COLUMNS) head.append(Object.assign(document.createElement("th"), { textContent: label }));
  const body = table.createTBody();
  for (const step of result.steps) {
    const row = body.insertRow();
    row.dataset.round = step.round;
    row.dataset.agent = step.agent;
    for (const [key] of METRIC_COLUMNS) cell(row, key, step[key]);
  }
  const total = table.createTFoot().insertRow();
  total.dataset.total = "yes";
  for (const [key] of METRIC_COLUMNS) {
    if (key === "round") cell(total, key, "total");
    else if (key === "agent") cell(total, key, "");
    else if (key === "input_positions") cell(total, key, result.steps.reduce((n, s) => n + s.input_positions, 0));
    else cell(total, key, result[key]);
  }
  return table;
}

function appendTurn(column, mode, step) {
  const turn = document.createElement("div");
  turn.className = "turn";
  turn.dataset.round = step.round;
  turn.dataset.agent = step.agent;
  const head = document.createElement("div");
  head.className = "turn-head";
  head.textContent = `Round ${step.round} · ${step.agent}`;
  turn.append(head);
  for (const line of step.tool_results) {
    turn.append(Object.assign(document.createElement("div"), { className: "tool", textContent: line }));
  }
  const body = document.createElement("div");
  body.className = "turn-text";
  if (step.latent_steps) {
    body.textContent = `${step.latent_steps} latent thoughts, ${step.bytes_handed} bytes handed over`;
    body.classList.add("latent");
  } else {
    body.textContent = step.text || "(no text)";
  }
  turn.append(body);
  column.querySelector(".transcript").append(turn);
  column.hidden = false;
  $("results").hidden = false;
}

function showResult(mode, result) {
  const column = $(`result-${mode}`);
  column.hidden = false;
  column.querySelector(".answer").textContent = result.answer || "(empty answer)";
  column.querySelector(".metrics").replaceChildren(metricsTable(result));
  const figures = [
    `${result.tokens_generated} tokens generated`,
    `${result.positions_processed} positions processed`,
    `${result.seconds.toFixed(2)} s`,
  ];
  column.querySelector("h2").textContent = `${mode === "latent" ? "Latent" : "Text"} mode: ${figures.join(", ")}`;
}

function resetResults(modes) {
  state.results = {};
  state.figures = null;
  $("compare-summary").textContent = "";
  $("chart").replaceChildren();
  for (const mode of ["latent", "text"]) {
    const column = $(`result-${mode}`);
    column.hidden = !modes.includes(mode);
    column.querySelector(".answer").textContent = "";
    column.querySelector(".metrics").replaceChildren();
    column.querySelector(".transcript").replaceChildren();
    column.querySelector("h2").textContent = mode === "latent" ? "Latent mode" : "Text mode";
  }
  $("results").hidden = false;
}

// --- running --------------------------------------------------------------------------------

async function runModes(modes) {
  if (state.running) return;
  clearError();
  let settings;
  try {
    settings = readSettings();
  } catch (err) {
    showError(err);
    return;
  }
  const pattern = currentPattern();
  const models = chosenModels();
  setBusy(true);
  state.events = [];
  setState("loading");
  resetResults(modes);
  startLive(pattern);
  try {
    const distinct = [...new Set(models)];
    const wanted = distinct.map((name) => {
      const entry = state.artifacts.find((a) => a.name === name);
      if (!entry) throw new Error(`no served artifact named ${name}`);
      return { name, url: entry.url };
    });
    state.loaded = await state.client.request("load", { models: wanted }, { onEvent: (e) => onEvent(e, settings) });
    $("load-progress").hidden = true;
    setState("running");
    for (const mode of modes) {
      const question = $("question").value;
      const result = await state.client.request(
        "run",
        { mode, pattern, models, question, settings },
        { onEvent: (e) => onEvent(e, settings) },
      );
      state.results[mode] = result;
      showResult(mode, result);
    }
    if (state.results.latent && state.results.text) {
      const f = compare(state.results.latent, state.results.text);
      state.figures = f;
      $("compare-summary").textContent =
        `Latent vs text: ${f.speedup.toFixed(2)}x faster, ${Math.round(f.token_reduction * 100)}% fewer ` +
        `generated tokens (${f.latent_tokens} vs ${f.text_tokens}).`;
    }
    renderChart($("chart"), state.results);
    $("live-status").textContent = "Done.";
    setState("done");
  } catch (err) {
    $("load-progress").hidden = true;
    if (err.name === "StopError") {
      $("live-status").textContent = "Stopped. The models stay loaded; run again when ready.";
      setState("stopped");
    } else {
      showError(err);
      setState("error");
    }
    if (Object.keys(state.results).length) renderChart($("chart"), state.results);
  } finally {
    for (const li of $("live-agents").children) li.classList.remove("active");
    setBusy(false);
  }
}

async function stop() {
  $("stop").disabled = true;
  $("live-status").textContent = "Stopping…";
  await state.client.stop();
}

// --- start ----------------------------------------------------------------------------------

async function main() {
  state.client = await LoopClient.create();
  state.where = state.client.where;
  const gpu = state.client.gpu;
  if (!gpu.ok) {
    $("gpu-status").textContent = "WebGPU unavailable";
    $("no-webgpu-reason").textContent = gpu.reason;
    $("no-webgpu").hidden = false;
    setState("no-webgpu");
    return;
  }
  const info = gpu.adapterInfo ?? {};
  $("gpu-status").textContent =
    `WebGPU: ${info.vendor || "?"} ${info.architecture || ""}`.trim() + ` · models run in the ${state.where}`;
  $("app").hidden = false;
  state.patterns = await loadPatterns();
  $("pattern").replaceChildren(...[...state.patterns.keys()].map((n) => new Option(n, n)));
  $("pattern").value = params.get("pattern") ?? (state.patterns.has("sequential") ? "sequential" : $("pattern").value);
  const all = await listArtifacts();
  state.artifacts = all.filter((a) => a.webgpu);
  const cpuOnly = all.filter((a) => !a.webgpu && !a.error).map((a) => a.name);
  const note = cpuOnly.length ? `Not offered (no WebGPU build; rebuild with --target llvm,webgpu): ${cpuOnly.join(", ")}.` : "";
  $("artifact-note").textContent = note;
  modelOptions($("model-all"), params.get("model"));
  const preset = params.get("models")?.split(",") ?? [];
  renderAgents(preset);
  $("pattern").addEventListener("change", () => renderAgents());
  $("model-all").addEventListener("change", () => {
    for (const s of document.querySelectorAll("select.agent-model")) s.value = $("model-all").value;
  });
  for (const [id, modes] of Object.entries(MODE_BUTTONS)) $(id).addEventListener("click", () => runModes(modes));
  $("stop").addEventListener("click", stop);
  $("links-file").addEventListener("change", onLinkFiles);
  $("links-load").addEventListener("click", () => readLinks({ url: $("links-url").value.trim() }));
  if (params.has("question")) $("question").value = params.get("question");
  setBusy(false);
  const wanted = [params.get("model"), ...preset].filter(Boolean);
  const unknown = wanted.filter((n) => !state.artifacts.some((a) => a.name === n));
  if (!state.artifacts.length) {
    showError(
      "No artifact folder with a WebGPU build is served. Build one with `mlcpatch build --arch " +
        "qwen2 --model tiny-random --target llvm,webgpu --out artifacts/tiny-qwen2` and restart " +
        "`mlcpatch serve`." + (note ? ` ${note}` : ""),
    );
  } else if (unknown.length) {
    showError(
      `No served artifact named ${unknown.join(", ")} (served: ${state.artifacts.map((a) => a.name).join(", ")}). ` +
        "Check the folder name, or build it with `mlcpatch build … --target llvm,webgpu`.",
    );
  }
  if (params.get("links")) {
    $("links-url").value = params.get("links");
    await readLinks({ url: params.get("links") });
  }
  setState("idle");
}

main().catch((err) => {
  showError(`The page failed to start: ${err.message ?? err}`);
  $("app").hidden = false;
  setState("error");
});
