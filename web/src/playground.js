// The playground page: pick models, pattern and link file, run the loop latent, in text, or
// both side by side, and watch it. The models and the loop run in a Web Worker (loop_host.js);
// this module only drives the form and draws what the worker reports.
//
// URL parameters preset the form: pattern, model (every agent), models (comma-separated, one
// per agent), links (a link file URL), question. A model the server does not offer is reported
// and left unpicked (never replaced by another silently). device (auto, webgpu, cpu) picks where
// the models run: by default WebGPU when the browser has it and a folder has a WebGPU library,
// else the CPU (the folder's wasm library); the page says which.

import { renderChart } from "./chart.js";
import { canRun, chooseDevice, DEVICES, parseDeviceRequest } from "./device.js";
import { compare } from "./loop.js";
import { setMarkdown } from "./markdown.js";
import { handoffs, loadPatterns } from "./patterns.js";
import { copyButton, formatBytes, setRichText, softwareAdapterWarning, webgpuAdvice } from "./ui.js";
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
  linkProblem: null, // why the link file does not fit the chosen models, or null
  linkReads: 0, // link files read so far (read or failed): the tests wait on it
  running: false,
  results: {},
  figures: null,
  error: null, // the latest error shown, {name, message}
  errors: [], // every error shown, [{key, name, message}]
  events: [],
  final: false, // whether the agent now running writes the answer
  requested: "auto", // the device asked for (?device=): "auto", "webgpu" or "cpu"
  gpu: null, // WebGPU where the models run (null when the CPU is forced)
  devices: {}, // model name -> {device, label, reason} of the loaded engines
};
window.playground = state;

function setState(name) {
  document.body.dataset.state = name;
}

// Errors are kept by what they are about ("start", "models", "links", "run"), and all of them
// stay visible together: a later error never hides an earlier one that still holds.
const errors = new Map();

function showError(err, key = "run") {
  const message = typeof err === "string" ? err : err.message ?? String(err);
  const name = (typeof err === "string" ? null : err?.name) ?? "Error";
  errors.delete(key); // re-added last: the newest error is listed last
  errors.set(key, { name, message });
  state.error = { name, message };
  renderErrors();
}

function clearError(key) {
  if (key === undefined) errors.clear();
  else errors.delete(key);
  renderErrors();
}

function renderErrors() {
  const box = $("error");
  const list = [...errors].map(([key, e]) => ({ key, ...e }));
  state.errors = list;
  state.error = list.length ? { name: list.at(-1).name, message: list.at(-1).message } : null;
  box.replaceChildren(
    ...list.map((e) => {
      const p = document.createElement("p");
      p.dataset.key = e.key;
      p.dataset.kind = e.name;
      setRichText(p, e.message);
      return p;
    }),
  );
  box.dataset.kind = list.at(-1)?.name ?? "";
  box.hidden = !list.length;
}

// --- setup --------------------------------------------------------------------------------

async function listArtifacts() {
  const response = await fetch("./artifacts/index.json");
  if (!response.ok) throw new Error(`cannot list the served models: HTTP ${response.status}`);
  return (await response.json()).artifacts ?? [];
}

function artifactLabel(a) {
  const hidden = a.hidden_size ? `, hidden ${a.hidden_size}` : "";
  const size = a.size_bytes != null ? `, ${formatBytes(a.size_bytes)}` : "";
  let on = "";
  try {
    on = chooseDevice(a.libraries, state.requested, state.gpu).device === "cpu" ? ", on the CPU" : "";
  } catch {
    // not offered anyway
  }
  return `${a.name} (${a.model_type ?? "?"}, ${a.quantization ?? "?"}${hidden}${size}${on})`;
}

function served(name) {
  return state.artifacts.find((a) => a.name === name);
}

/** Fill a model <select>; a `selected` name that is not served leaves it on "choose a model". */
function modelOptions(select, selected) {
  const options = state.artifacts.map((a) => new Option(artifactLabel(a), a.name));
  if (selected && !served(selected)) {
    const none = new Option(`choose a model (${selected} is not served)`, "");
    none.dataset.placeholder = "yes";
    options.unshift(none);
  }
  select.replaceChildren(...options);
  if (selected !== undefined && selected !== null) select.value = served(selected) ? selected : "";
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
    modelOptions(select, preset[i] ?? modelAllChoice());
    select.addEventListener("change", onModelsChanged);
    row.insertCell().append(select);
  }
}

/** What "Model for every agent" asks for: a served name, or the unserved name it stands for. */
function modelAllChoice() {
  const select = $("model-all");
  if (select.value) return select.value;
  return state.unservedAll ?? undefined;
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
  $("stop").disabled = !busy;
  for (const id of ["pattern", "model-all", "links-file", "links-url", "links-load"]) $(id).disabled = busy;
  for (const s of document.querySelectorAll("select.agent-model")) s.disabled = busy;
  updateControls();
}

/**
 * Enable the run buttons that can run now: every agent needs a served model, and latent runs
 * (Run latent, Compare) need a link file that fits the chosen models. #run-note says why not.
 */
function updateControls() {
  const models = chosenModels();
  const modelsOk = models.length > 0 && models.every((m) => served(m));
  checkLinkFit();
  const latentOk = modelsOk && state.links != null && state.linkProblem == null;
  $("run-text").disabled = state.running || !modelsOk;
  $("run-latent").disabled = state.running || !latentOk;
  $("run-compare").disabled = state.running || !latentOk;
  let note = "";
  if (!state.artifacts.length) note = "";
  else if (!currentPattern()) note = "Pick a pattern to run.";
  else if (!modelsOk) note = "Pick a served model for every agent to run.";
  else if (state.links == null) {
    note = "Run latent and Compare need a link file: write one with `mlcpatch run … --save-links DIR` and pick it above.";
  } else if (state.linkProblem) {
    note = "Run latent and Compare need a link file that fits the chosen models.";
  }
  setRichText($("run-note"), note);
  updateDownloadNote(models);
}

function updateDownloadNote(models) {
  const distinct = [...new Set(models)].map(served).filter(Boolean);
  if (!distinct.length) {
    $("download-note").textContent = "";
    return;
  }
  const loaded = distinct.every((a) => a.name in state.loaded);
  const sizes = distinct.map((a) => a.size_bytes);
  const total = sizes.every((b) => b != null) ? formatBytes(sizes.reduce((n, b) => n + b, 0)) : "an unknown size";
  $("download-note").textContent = loaded
    ? `Chosen models loaded (${total}).`
    : `Download for the chosen models: about ${total}.`;
}

function onModelsChanged() {
  // The user has picked: an unknown model named in the URL is no longer the question.
  if (chosenModels().every((m) => served(m))) clearError("models");
  updateControls();
}

// --- link files ---------------------------------------------------------------------------

const NO_LINKS = "No link file: latent mode needs one (`mlcpatch run … --save-links DIR`).";

function describeLinks(info) {
  const agents = info.agents.map((a) => `${a.name} (${a.hiddenSize})`).join(", ");
  const names = info.links.map((l) => `${l.name} ${l.inDim}→${l.outDim}`).join(", ");
  return `${info.source}: ${info.links.length} links (${names})${agents ? `; agents ${agents}` : ""}`;
}

/**
 * Why the link file does not fit the pattern and the chosen models, or null. The checks of
 * LinkSet.check and loop.js's checkSystem, on the hidden sizes /artifacts/index.json lists,
 * so a file of the wrong width is refused before any model is downloaded.
 */
function linkFitProblem(info, pattern, models) {
  if (!info || !pattern) return null;
  const sizes = {};
  const modelOf = {};
  for (const [i, agent] of pattern.agents.entries()) {
    modelOf[agent.name] = models[i];
    sizes[agent.name] = served(models[i])?.hidden_size ?? null; // unknown: checked at run time
  }
  const agentList = pattern.agents.map((a) => a.name).join(", ");
  for (const link of info.links) {
    for (const [role, agent, dim, side] of [
      ["from", link.from, link.inDim, "in_dim"],
      ["to", link.to, link.outDim, "out_dim"],
    ]) {
      if (!(agent in sizes)) {
        return `link '${link.name}' ${role} agent '${agent}' is not in the ${pattern.name} pattern (agents: ${agentList})`;
      }
      if (sizes[agent] != null && sizes[agent] !== dim) {
        return `link '${link.name}' has ${side}=${dim} but agent '${agent}'s model ${modelOf[agent]} has hidden size ${sizes[agent]}`;
      }
    }
  }
  const names = new Set(info.links.map((l) => l.name));
  for (const agent of pattern.agents) {
    if (!names.has(`inner_${agent.name}`)) return `no inner link for agent ${agent.name}`;
  }
  for (const [sender, receiver] of handoffs(pattern)) {
    if (!names.has(`outer_${sender}_to_${receiver}`)) return `no outer link for ${sender} -> ${receiver}`;
  }
  return null;
}

/** Check the link file against the pattern and models now chosen; show the outcome. */
function checkLinkFit() {
  const status = $("links-status");
  if (status.dataset.reading === "yes") return;
  const problem = linkFitProblem(state.links, currentPattern(), chosenModels());
  state.linkProblem = problem;
  if (!state.links) {
    if (status.dataset.failed !== "yes") {
      setRichText(status, NO_LINKS);
      status.dataset.ok = "no";
    }
    if (errors.has("link-fit")) clearError("link-fit");
    return;
  }
  if (problem) {
    status.textContent = `${describeLinks(state.links)}. Refused for the chosen models: ${problem}.`;
    status.dataset.ok = "no";
    const message =
      `Link file ${state.links.source} does not fit the chosen models: ${problem}. Pick a link file ` +
      "fitted for these models (`mlcpatch run --model … --pattern … --save-links DIR`), or the models it was fitted for.";
    if (errors.get("link-fit")?.message !== message) showError({ name: "LinkError", message }, "link-fit");
  } else {
    status.textContent = describeLinks(state.links);
    status.dataset.ok = "yes";
    if (errors.has("link-fit")) clearError("link-fit");
  }
}

async function readLinks(payload, transfer) {
  errors.delete("link-fit");
  clearError("links");
  const status = $("links-status");
  status.textContent = "Reading the link file…";
  status.dataset.reading = "yes";
  delete status.dataset.failed;
  state.links = null;
  updateControls();
  try {
    state.links = await state.client.request("links", payload, { transfer });
    if (!state.links) status.textContent = "No link file.";
  } catch (err) {
    state.links = null;
    status.textContent = "The link file could not be read.";
    status.dataset.failed = "yes";
    status.dataset.ok = "no";
    showError({ name: err?.name ?? "Error", message: `The link file could not be read: ${err?.message ?? err}` }, "links");
  } finally {
    delete status.dataset.reading;
    updateControls();
    state.linkReads++;
  }
}

async function onLinkFiles() {
  $("links-status").textContent = "Reading the link file…";
  const files = [...$("links-file").files];
  const read = await Promise.all(files.map(async (f) => ({ name: f.name, bytes: await f.arrayBuffer() })));
  await readLinks({ files: read }, read.map((f) => f.bytes));
}

// --- the live view --------------------------------------------------------------------------

// --- the live view --------------------------------------------------------------------------

function startLive(pattern) {
  $("live").hidden = false;
  $("live-status").textContent = "";
  $("live-ticks").replaceChildren();
  $("live-text").textContent = "";
  $("live-text").hidden = true;
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
    state.final = Boolean(event.final);
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
    $("live-text").textContent = "";
    $("live-text").hidden = true;
    $("live-status").textContent = event.final ? `${where} · writing the answer` : where;
    if (event.final) {
      // The answer streams into its column as it is generated.
      const answer = column(event.mode).querySelector(".answer");
      setMarkdown(answer, "");
      answer.classList.add("streaming");
      refreshResults();
    }
  } else if (event.event === "latent") {
    $("live-ticks").children[event.step - 1]?.classList.add("done");
    $("live-status").textContent = `${where} · latent step ${event.step}/${event.of}`;
  } else if (event.event === "token") {
    $("live-status").textContent = `${where} · token ${event.count}/${event.of}`;
    if (typeof event.text === "string") {
      if (state.final) {
        setMarkdown(column(event.mode).querySelector(".answer"), event.text);
      } else {
        $("live-text").textContent = event.text;
        $("live-text").hidden = !event.text;
      }
    }
  } else if (event.event === "step") {
    appendTurn(column(event.mode), event.mode, event.step);
  }
}

// --- results --------------------------------------------------------------------------------

// [key, header, what it counts]: short headers so both columns' tables fit side by side.
const METRIC_COLUMNS = [
  ["round", "Round", "Round"],
  ["agent", "Agent", "Agent"],
  ["input_positions", "Input", "Input positions: prompt tokens plus handed-over vectors"],
  ["latent_steps", "Latent steps", "Latent steps (thoughts)"],
  ["tokens_generated", "Tokens", "Tokens generated"],
  ["positions_processed", "Positions", "Positions processed by the model"],
  ["bytes_handed", "Bytes handed", "Bytes handed over to the receiving agents"],
  ["seconds", "Seconds", "Seconds"],
];

function column(mode) {
  return $(`result-${mode}`);
}

function cell(row, key, value) {
  const td = row.insertCell();
  td.dataset.key = key;
  td.textContent = key === "seconds" ? Number(value).toFixed(3) : String(value);
}

function metricsTable(result) {
  const table = document.createElement("table");
  table.className = "metrics-table";
  const head = table.createTHead().insertRow();
  for (const [key, label, title] of METRIC_COLUMNS) {
    const th = Object.assign(document.createElement("th"), { textContent: label, scope: "col" });
    th.dataset.key = key;
    if (title !== label) th.title = title;
    head.append(th);
  }
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

function appendTurn(col, mode, step) {
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
  col.querySelector(".transcript").append(turn);
  refreshResults();
}

/** Show only what has content: no empty answer box, table or chart, no bare heading. */
function refreshResults() {
  let shown = false;
  for (const mode of ["latent", "text"]) {
    const col = column(mode);
    const answer = col.querySelector(".answer");
    const parts = [
      [".answer-block", answer.hasChildNodes() || answer.classList.contains("streaming")],
      [".metrics-block", col.querySelector(".metrics").hasChildNodes()],
      [".transcript-block", col.querySelector(".transcript").hasChildNodes()],
    ];
    let any = false;
    for (const [selector, on] of parts) {
      col.querySelector(selector).hidden = !on;
      any ||= on;
    }
    col.hidden = !any;
    shown ||= any;
  }
  const chart = $("chart").hasChildNodes();
  $("per-round").hidden = !chart;
  const summary = $("compare-summary").textContent !== "";
  $("compare-summary").hidden = !summary;
  $("results").hidden = !(shown || chart || summary);
}

function showResult(mode, result) {
  const col = column(mode);
  const answer = col.querySelector(".answer");
  answer.classList.remove("streaming");
  if (result.answer) {
    setMarkdown(answer, result.answer);
  } else {
    answer.textContent = "(empty answer)";
    answer.dataset.markdown = "";
  }
  col.querySelector(".metrics").replaceChildren(metricsTable(result));
  const figures = [
    `${result.tokens_generated} tokens generated`,
    `${result.positions_processed} positions processed`,
    `${result.seconds.toFixed(2)} s`,
  ];
  col.querySelector("h2").textContent = `${mode === "latent" ? "Latent" : "Text"} mode: ${figures.join(", ")}`;
  refreshResults();
}

function resetResults() {
  state.results = {};
  state.figures = null;
  $("compare-summary").textContent = "";
  $("chart").replaceChildren();
  for (const mode of ["latent", "text"]) {
    const col = column(mode);
    const answer = col.querySelector(".answer");
    answer.replaceChildren();
    answer.classList.remove("streaming");
    delete answer.dataset.markdown;
    col.querySelector(".metrics").replaceChildren();
    col.querySelector(".transcript").replaceChildren();
    col.querySelector("h2").textContent = mode === "latent" ? "Latent mode" : "Text mode";
  }
  refreshResults();
}

/** After Stop or an error: say which column stopped; drop what never got content. */
function endUnfinished(how) {
  for (const mode of ["latent", "text"]) {
    const col = column(mode);
    const answer = col.querySelector(".answer");
    const streaming = answer.classList.contains("streaming");
    answer.classList.remove("streaming");
    if (!(mode in state.results) && (streaming || col.querySelector(".transcript").hasChildNodes())) {
      col.querySelector("h2").textContent = `${mode === "latent" ? "Latent" : "Text"} mode: ${how}`;
    }
  }
  refreshResults();
}

// --- running --------------------------------------------------------------------------------

async function runModes(modes) {
  if (state.running) return;
  clearError("run");
  let settings;
  try {
    settings = readSettings();
  } catch (err) {
    showError(err);
    return;
  }
  const pattern = currentPattern();
  const models = chosenModels();
  if (!pattern || !models.length || !models.every((m) => served(m))) {
    showError("Pick a pattern and a served model for every agent first.");
    return;
  }
  if (modes.includes("latent") && (state.links == null || state.linkProblem)) {
    showError(state.linkProblem ? `The link file does not fit: ${state.linkProblem}` : NO_LINKS);
    return;
  }
  setBusy(true);
  state.events = [];
  setState("loading");
  resetResults();
  startLive(pattern);
  try {
    const wanted = [...new Set(models)].map((name) => ({ name, url: served(name).url }));
    state.loaded = await state.client.request(
      "load",
      { models: wanted, device: state.requested, threads: params.get("threads") ?? "auto" },
      { onEvent: (e) => onEvent(e, settings) },
    );
    $("load-progress").hidden = true;
    showDevices(state.loaded);
    updateControls();
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
    refreshResults();
    $("live-status").textContent = "Done.";
    setState("done");
  } catch (err) {
    $("load-progress").hidden = true;
    if (err.name === "StopError") {
      $("live-status").textContent = "Stopped. The models stay loaded; run again when ready.";
      endUnfinished("stopped");
      setState("stopped");
    } else {
      showError(err);
      endUnfinished("failed");
      setState("error");
    }
    if (Object.keys(state.results).length) renderChart($("chart"), state.results);
    refreshResults();
  } finally {
    for (const li of $("live-agents").children) li.classList.remove("active");
    $("live-text").hidden = true;
    setBusy(false);
  }
}

async function stop() {
  $("stop").disabled = true;
  $("live-status").textContent = "Stopping…";
  await state.client.stop();
}

// --- start ----------------------------------------------------------------------------------

/** Say which device runs each loaded model (and why), in #device-status. */
function showDevices(loaded) {
  state.devices = Object.fromEntries(Object.entries(loaded).map(([name, m]) => [name, m.device]));
  const byDevice = new Map();
  for (const [name, d] of Object.entries(state.devices)) {
    const key = `${d.label}: ${d.reason}`;
    byDevice.set(key, [...(byDevice.get(key) ?? []), name]);
  }
  $("device-status").textContent = [...byDevice]
    .map(([what, names]) => `${names.join(", ")} on ${what}.`)
    .join(" ");
  $("device-status").hidden = byDevice.size === 0;
}

async function main() {
  state.requested = parseDeviceRequest(params.get("device")); // a bad value: the page says so
  state.client = await LoopClient.create();
  state.where = state.client.where;
  const gpu = state.requested === "cpu" ? null : state.client.gpu;
  state.gpu = gpu;
  const all = await listArtifacts();
  state.artifacts = all.filter((a) => canRun(a.libraries, state.requested, gpu));
  if (gpu && !gpu.ok && (state.requested === "webgpu" || !state.artifacts.length)) {
    const cpuBuilds = all.filter((a) => a.libraries?.[DEVICES.cpu.library]).length;
    $("gpu-status").textContent = "WebGPU unavailable";
    $("no-webgpu-reason").textContent = gpu.reason;
    setRichText(
      $("no-webgpu-cpu"),
      state.requested === "webgpu"
        ? "This page was asked for WebGPU (device=webgpu)."
        : "Without WebGPU, a model runs on the CPU when its folder has a CPU (wasm) library; " +
            `none of the served ones has (${cpuBuilds} of ${all.length}): build one with ` +
            "`mlcpatch build … --target llvm,webgpu,wasm`.",
    );
    setRichText($("no-webgpu-help"), webgpuAdvice());
    $("no-webgpu").hidden = false;
    setState("no-webgpu");
    return;
  }
  if (!gpu) {
    $("gpu-status").textContent =
      `Models run on the ${DEVICES.cpu.label} (asked for with device=cpu) in the ${state.where}`;
  } else if (!gpu.ok) {
    $("gpu-status").textContent =
      `WebGPU unavailable: models run on the ${DEVICES.cpu.label} in the ${state.where}`;
  } else {
    const info = gpu.adapterInfo ?? {};
    $("gpu-status").textContent =
      `WebGPU: ${info.vendor || "?"} ${info.architecture || ""}`.trim() + ` · models run in the ${state.where}`;
    const warning = softwareAdapterWarning(info);
    if (warning) {
      setRichText($("adapter-warning"), warning);
      $("adapter-warning").hidden = false;
    }
  }
  $("app").hidden = false;
  for (const mode of ["latent", "text"]) {
    const col = column(mode);
    col.querySelector(".block-head").append(copyButton(() => col.querySelector(".answer").dataset.markdown ?? "", `${mode} answer`));
  }
  state.patterns = await loadPatterns();
  const patternNames = [...state.patterns.keys()];
  $("pattern").replaceChildren(...patternNames.map((n) => new Option(n, n)));
  const wantedPattern = params.get("pattern");
  if (wantedPattern && !state.patterns.has(wantedPattern)) {
    $("pattern").prepend(new Option(`choose a pattern (${wantedPattern} is not built in)`, ""));
    $("pattern").value = "";
    showError(`No built-in pattern named ${wantedPattern} (built in: ${patternNames.join(", ")}).`, "pattern");
  } else {
    $("pattern").value = wantedPattern ?? (state.patterns.has("sequential") ? "sequential" : patternNames[0]);
  }
  const unusable = all.filter((a) => !a.error && !served(a.name)).map((a) => a.name);
  const builds = state.requested === "cpu" ? "CPU (wasm)" : gpu.ok ? "WebGPU or CPU (wasm)" : "CPU (wasm)";
  const note = unusable.length
    ? `Not offered (no ${builds} build; rebuild with --target llvm,webgpu,wasm): ${unusable.join(", ")}.`
    : "";
  $("artifact-note").textContent = note;
  const wantedAll = params.get("model");
  state.unservedAll = wantedAll && !served(wantedAll) ? wantedAll : null;
  modelOptions($("model-all"), wantedAll);
  const preset = params.get("models")?.split(",").map((n) => n.trim()) ?? [];
  renderAgents(preset);
  $("pattern").addEventListener("change", () => {
    if ($("pattern").value) clearError("pattern");
    renderAgents();
    updateControls();
  });
  $("model-all").addEventListener("change", () => {
    if (!$("model-all").value) return;
    state.unservedAll = null;
    for (const s of document.querySelectorAll("select.agent-model")) s.value = $("model-all").value;
    onModelsChanged();
  });
  for (const [id, modes] of Object.entries(MODE_BUTTONS)) $(id).addEventListener("click", () => runModes(modes));
  $("stop").addEventListener("click", stop);
  $("links-file").addEventListener("change", onLinkFiles);
  $("links-load").addEventListener("click", () => readLinks({ url: $("links-url").value.trim() }));
  if (params.has("question")) $("question").value = params.get("question");
  setBusy(false);
  const wanted = [wantedAll, ...preset].filter(Boolean);
  const unknown = [...new Set(wanted.filter((n) => !served(n)))];
  if (!state.artifacts.length) {
    showError(
      `No artifact folder with a ${builds} build is served. Build one with \`mlcpatch build --arch ` +
        "qwen2 --model tiny-random --target llvm,webgpu,wasm --out artifacts/tiny-qwen2` and restart " +
        "`mlcpatch serve`." + (note ? ` ${note}` : ""),
      "start",
    );
  } else if (unknown.length) {
    showError(
      `No served artifact named ${unknown.join(", ")} (served: ${state.artifacts.map((a) => a.name).join(", ")}). ` +
        "Pick one of the served models, or build it with `mlcpatch build … --target llvm,webgpu,wasm`.",
      "models",
    );
  }
  if (params.get("links")) {
    $("links-url").value = params.get("links");
    await readLinks({ url: params.get("links") });
  }
  setState("idle");
}

main().catch((err) => {
  showError(`The page failed to start: ${err.message ?? err}`, "start");
  $("app").hidden = false;
  setState("error");
});
