// The in-browser engine: one mlcpatch artifact folder running on WebGPU.
//
// Mirrors mlcpatch/runtime.py verb for verb (embed, prefill, decode, getLastHidden,
// decodeLastHidden, reset, generate) so the latent-loop orchestrator is written once per
// language against the same interface. Results stay on the GPU as DeviceTensor objects; only
// toArray() (or generate()'s sampler) reads anything back.
//
// The npm packages are UMD bundles: imported for their side effect, they define
// globalThis.tvmjs and globalThis.tokenizers.

import "../node_modules/@mlc-ai/web-runtime/lib/index.js";
import "../node_modules/@mlc-ai/web-tokenizers/lib/index.js";
import { renderChatTemplate } from "./chat_template.js";
import { detectWebGPU, WebGPUUnavailableError } from "./detect.js";
import { makeRng, sampleToken } from "./sampling.js";

export { detectWebGPU, WebGPUUnavailableError };

const tvmjs = globalThis.tvmjs;
const { Tokenizer } = globalThis.tokenizers;

const PAGE_SIZE = 16;
const SEQ_ID = 0;
const FUNCTIONS = [
  "embed",
  "prefill",
  "decode",
  "get_last_hidden",
  "decode_last_hidden",
  "create_paged_kv_cache",
];
// Share of the load progress bar per stage, roughly proportional to their time on a real GPU.
const STAGES = { config: 0.02, wasm: 0.13, weights: 0.45, tokenizer: 0.05, pipelines: 0.35 };

/** Thrown for a broken or incompatible artifact folder (missing files, wrong lib). */
export class ArtifactError extends Error {
  constructor(message) {
    super(message);
    this.name = "ArtifactError";
  }
}

/** A tensor on the engine's GPU. Call dispose() when done (GPU memory is not GC'd). */
export class DeviceTensor {
  constructor(engine, tensor, shape) {
    this.engine = engine;
    this.tensor = tensor;
    this.shape = shape; // the logical shape (leading batch axes dropped)
    this.dtype = tensor.dtype;
  }

  get size() {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Copy to the CPU: a Float32Array (or Int32Array) in row-major order. */
  async toArray() {
    this.#check();
    return this.engine._readBack(this.tensor);
  }

  dispose() {
    if (this.tensor) {
      this.tensor.dispose();
      this.tensor = null;
    }
  }

  #check() {
    if (!this.tensor) throw new Error("DeviceTensor used after dispose()");
  }
}

async function fetchOk(url, what, signal) {
  let response;
  try {
    response = await fetch(url, { signal });
  } catch (err) {
    throw new ArtifactError(`cannot fetch ${what} (${url}): ${err}`);
  }
  if (!response.ok) {
    throw new ArtifactError(`cannot fetch ${what} (${url}): HTTP ${response.status}`);
  }
  return response;
}

/** Download with byte progress (the wasm is the one large file fetched outside tvmjs). */
async function fetchBytes(url, what, onBytes, signal) {
  const response = await fetchOk(url, what, signal);
  const total = Number(response.headers.get("Content-Length")) || 0;
  if (!response.body || !total) return new Uint8Array(await response.arrayBuffer());
  const bytes = new Uint8Array(total);
  const reader = response.body.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes.set(value, loaded);
    loaded += value.length;
    onBytes(loaded, total);
  }
  return loaded === total ? bytes : bytes.slice(0, loaded);
}

function specialTokens(tokenizerJson) {
  const special = new Map();
  for (const token of tokenizerJson.added_tokens ?? []) {
    if (token.special) special.set(token.content, token.id);
  }
  return special;
}

function tokenContent(value) {
  if (value == null) return null;
  return typeof value === "string" ? value : value.content ?? null;
}

export class Engine {
  /**
   * Load an artifact folder (URL of the folder, e.g. "/artifacts/tiny-qwen2/").
   *
   * options: onProgress({stage, progress, text}), contextWindowSize, prefillChunkSize,
   * cacheScope (Cache Storage name for the weights; default keyed by their hash),
   * device (a GPUDevice to share), logger(msg), signal (AbortSignal).
   */
  static async load(url, options = {}) {
    const base = new URL(url, globalThis.location?.href).href.replace(/\/?$/, "/");
    const onProgress = options.onProgress ?? (() => {});
    const started = performance.now();
    let done = 0;
    const report = (stage, fraction, text) => {
      const progress = Math.min(1, done + STAGES[stage] * fraction);
      onProgress({ stage, progress, text, elapsedMs: performance.now() - started });
    };
    const finish = (stage) => {
      done += STAGES[stage];
    };
    const timings = {};
    const timed = async (name, fn) => {
      const t0 = performance.now();
      const out = await fn();
      timings[name] = performance.now() - t0;
      return out;
    };

    report("config", 0, "Reading the model's configuration");
    const config = await (await fetchOk(base + "mlc-chat-config.json", "config")).json();
    const manifest = await fetch(base + "manifest.json")
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null);
    checkRuntimeLimits(base, config, options);
    const wasmName = config.model_lib?.webgpu;
    if (!wasmName) {
      throw new ArtifactError(
        `${base}: no WebGPU library in this artifact (model_lib has ` +
          `${Object.keys(config.model_lib ?? {}).join(", ") || "nothing"}); rebuild it with ` +
          "`mlcpatch build ... --target llvm,webgpu`",
      );
    }
    let device = options.device;
    if (!device) {
      const gpu = await detectWebGPU();
      if (!gpu.ok) throw new WebGPUUnavailableError(gpu.reason);
      const detected = await tvmjs.detectGPUDevice();
      if (!detected) throw new WebGPUUnavailableError("No WebGPU device could be created.");
      device = detected.device;
    }
    finish("config");

    const wasm = await timed("fetchWasmMs", () =>
      fetchBytes(
        base + wasmName,
        "the WebGPU library",
        (loaded, total) =>
          report("wasm", loaded / total, `Downloading ${wasmName} (${mb(loaded)}/${mb(total)} MB)`),
        options.signal,
      ),
    );
    const logger = options.logger ?? (() => {});
    // Chrome refuses to compile a large wasm synchronously: instantiate() is the async path.
    const tvm = await timed("instantiateMs", () =>
      tvmjs.instantiate(wasm.buffer, tvmjs.createPolyfillWASI(), logger),
    );
    tvm.initWebGPU(device);
    finish("wasm");

    tvm.registerInitProgressCallback((r) => {
      if (r.text?.startsWith("Loading GPU shader")) {
        report("pipelines", r.progress, "Compiling GPU kernels: " + r.text);
      } else {
        report("weights", r.progress, "Weights: " + r.text);
      }
    });
    const dev = tvm.webgpu();
    const cacheScope = options.cacheScope ?? weightsCacheScope(manifest);
    report("weights", 0, "Downloading weights");
    await timed("fetchWeightsMs", () =>
      tvm.fetchTensorCache(base, dev, { cacheScope, signal: options.signal }),
    );
    finish("weights");

    report("tokenizer", 0, "Loading the tokenizer");
    const tokenizer = await timed("tokenizerMs", () => loadTokenizer(base, config));
    finish("tokenizer");

    const engine = new Engine(tvm, dev, device, config, manifest, tokenizer, options);
    report("pipelines", 0, "Compiling GPU kernels");
    await timed("pipelinesMs", () => tvm.asyncLoadWebGPUPipelines(engine.vm.getInternalModule()));
    finish("pipelines");
    engine.loadTimings = { ...timings, totalMs: performance.now() - started };
    onProgress({ stage: "ready", progress: 1, text: "Ready", elapsedMs: engine.loadTimings.totalMs });
    return engine;
  }

  constructor(tvm, dev, gpuDevice, config, manifest, tokenizer, options) {
    this.tvm = tvm;
    this.device = dev;
    this.gpuDevice = gpuDevice;
    this.config = config;
    this.manifest = manifest;
    this.tokenizer = tokenizer.tokenizer;
    this.chatTemplate = tokenizer.chatTemplate;
    this.specialTokens = tokenizer.special;
    this.eosTokenIds = tokenizer.eosIds;
    const model = config.model_config ?? {};
    this.hiddenSize = Number(config.hidden_size ?? model.hidden_size);
    this.vocabSize = Number(config.vocab_size ?? model.vocab_size);
    this.dtype = model.dtype ?? "float32";
    this.contextWindowSize = Number(options.contextWindowSize ?? config.context_window_size);
    this.prefillChunkSize = Number(options.prefillChunkSize ?? config.prefill_chunk_size);
    this.position = 0;
    this.#busy = Promise.resolve();

    tvm.beginScope();
    const vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(dev));
    this.vm = vm;
    this.fn = {};
    for (const name of FUNCTIONS) {
      this.fn[name] = tvm.detachFromCurrentScope(vm.getFunction(name));
    }
    const paramNames = manifest?.param_names ?? tvm.cacheMetadata?.param_names;
    if (!paramNames) throw new ArtifactError("manifest.json lists no param_names");
    this.params = tvm.detachFromCurrentScope(tvm.getParamsFromCacheByName(paramNames));
    const global = (name) => tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
    this.kvAdd = global("vm.builtin.kv_state_add_sequence");
    this.kvClear = global("vm.builtin.kv_state_clear");
    this.kvBegin = global("vm.builtin.kv_state_begin_forward");
    this.kvEnd = global("vm.builtin.kv_state_end_forward");
    this.kv = tvm.detachFromCurrentScope(
      this.fn.create_paged_kv_cache(
        tvm.makeShapeTuple([1]),
        tvm.makeShapeTuple([this.contextWindowSize]),
        tvm.makeShapeTuple([this.prefillChunkSize]),
        tvm.makeShapeTuple([PAGE_SIZE]),
        tvm.makeShapeTuple([0]),
      ),
    );
    this.kvAdd(this.kv, new tvmjs.Scalar(SEQ_ID, "int64"));
    tvm.endScope();
  }

  #busy;

  // --- sequence state ---------------------------------------------------------------------

  /** Drop the live sequence and start an empty one. */
  reset() {
    this.tvm.withNewScope(() => {
      this.kvClear(this.kv);
      this.kvAdd(this.kv, new tvmjs.Scalar(SEQ_ID, "int64"));
    });
    this.position = 0;
  }

  // --- the verbs --------------------------------------------------------------------------

  /** Token ids -> input embeddings, a DeviceTensor [n, hidden]. */
  embed(ids) {
    const arr = Int32Array.from(ids);
    if (arr.length === 0 || arr.some((t) => t < 0 || t >= this.vocabSize)) {
      throw new RangeError(`token ids must be non-empty and in [0, ${this.vocabSize})`);
    }
    return this.#scoped(() => {
      const input = this.tvm.empty([arr.length], "int32", this.device).copyFrom(arr);
      const out = this.fn.embed(input, this.params);
      return [out, [arr.length, this.hiddenSize]];
    });
  }

  /** Append positions; logits [vocab] of the last one (a DeviceTensor). */
  prefill(embeds) {
    const chunks = this.#chunks(embeds, false);
    let logits = null;
    for (const chunk of chunks) {
      logits?.dispose();
      logits = this.#run("prefill", chunk, [this.vocabSize]);
    }
    return logits;
  }

  /** Append one position; its logits [vocab]. */
  decode(embed) {
    const [chunk] = this.#chunks(embed, true);
    return this.#run("decode", chunk, [this.vocabSize]);
  }

  /** Append positions (writes the KV cache like prefill); final-norm hidden [n, hidden]. */
  getLastHidden(embeds) {
    const chunks = this.#chunks(embeds, false);
    const parts = chunks.map((chunk) =>
      this.#run("get_last_hidden", chunk, [chunk.rows, this.hiddenSize]),
    );
    if (parts.length === 1) return parts[0];
    const joined = this.#scoped(() => {
      const flat = parts.map((p) => p.tensor.view([p.shape[0], this.hiddenSize]));
      const out = this.tvm.concatEmbeddings(flat);
      const rows = parts.reduce((n, p) => n + p.shape[0], 0);
      return [out, [rows, this.hiddenSize]];
    });
    parts.forEach((p) => p.dispose());
    return joined;
  }

  /** Append one position; its final-norm hidden state [hidden]. */
  decodeLastHidden(embed) {
    const [chunk] = this.#chunks(embed, true);
    return this.#run("decode_last_hidden", chunk, [this.hiddenSize]);
  }

  // --- text -------------------------------------------------------------------------------

  /** Text -> token ids (no special tokens added; special-token text maps to its id). */
  encode(text) {
    return Array.from(this.tokenizer.encode(text));
  }

  /** Token ids -> text; skipSpecialTokens drops ids the tokenizer marks special. */
  decodeTokens(ids, { skipSpecialTokens = false } = {}) {
    let list = Array.from(ids);
    if (skipSpecialTokens) {
      const special = new Set(this.specialTokens.values());
      list = list.filter((id) => !special.has(id));
    }
    return this.tokenizer.decode(Int32Array.from(list));
  }

  /** The chat template applied to `messages` ([{role, content}]) with the assistant turn open. */
  applyChatTemplate(messages, { addGenerationPrompt = true } = {}) {
    if (!this.chatTemplate) {
      return messages.map((m) => m.content).join("\n");
    }
    return renderChatTemplate(this.chatTemplate.source, {
      messages,
      add_generation_prompt: addGenerationPrompt,
      bos_token: this.chatTemplate.bosToken ?? "",
      eos_token: this.chatTemplate.eosToken ?? "",
    });
  }

  /** Token ids of `prompt` as one user turn (or of `messages`), assistant turn opened. */
  encodeChat(promptOrMessages) {
    const messages =
      typeof promptOrMessages === "string"
        ? [{ role: "user", content: promptOrMessages }]
        : promptOrMessages;
    return this.encode(this.applyChatTemplate(messages));
  }

  /**
   * Chat-templated generation from a fresh sequence.
   *
   * input: a prompt string, {messages}, or {promptIds} (skips the template).
   * options: maxNewTokens (64), temperature (1), topP (1), greedy (false), seed,
   * stopTokenIds (default: the model's EOS ids; [] never stops early), onToken(id, text).
   * Returns {promptIds, outputIds, text, stoppedBy, timings}.
   */
  async generate(input, options = {}) {
    const run = this.#busy.then(() => this.#generate(input, options));
    this.#busy = run.catch(() => {});
    return run;
  }

  async #generate(input, options) {
    const {
      maxNewTokens = 64,
      temperature = 1.0,
      topP = 1.0,
      greedy = false,
      seed = undefined,
      onToken = undefined,
    } = options;
    const promptIds =
      input?.promptIds != null
        ? Array.from(input.promptIds)
        : this.encodeChat(typeof input === "string" ? input : input.messages);
    const stops = new Set(options.stopTokenIds ?? this.eosTokenIds);
    const rng = makeRng(seed);
    this.reset();
    const t0 = performance.now();
    let logits = this.#withEmbeds(promptIds, (e) => this.prefill(e));
    let values = await logits.toArray();
    logits.dispose();
    const prefillMs = performance.now() - t0;
    const output = [];
    let stoppedBy = "maxNewTokens";
    const t1 = performance.now();
    for (let step = 0; step < maxNewTokens; step++) {
      const token = sampleToken(values, { temperature, topP, greedy, rng });
      output.push(token);
      if (onToken) onToken(token, this.decodeTokens([token], { skipSpecialTokens: true }));
      if (stops.has(token)) {
        stoppedBy = "stopToken";
        break;
      }
      if (step + 1 < maxNewTokens) {
        logits = this.#withEmbeds([token], (e) => this.decode(e));
        values = await logits.toArray();
        logits.dispose();
      }
    }
    const decodeMs = performance.now() - t1;
    const textIds = output.filter((t) => !stops.has(t));
    return {
      promptIds,
      outputIds: output,
      text: this.decodeTokens(textIds, { skipSpecialTokens: true }),
      stoppedBy,
      timings: {
        prefillMs,
        decodeMs,
        decodeSteps: Math.max(0, output.length - 1),
        decodeMsPerToken: output.length > 1 ? decodeMs / (output.length - 1) : 0,
      },
    };
  }

  /** Free the GPU buffers, the VM and the tokenizer. The engine is unusable afterwards. */
  dispose() {
    for (const obj of [this.kv, this.params, ...Object.values(this.fn), this.vm]) obj?.dispose();
    for (const f of [this.kvAdd, this.kvClear, this.kvBegin, this.kvEnd]) f?.dispose();
    this.tokenizer?.dispose();
    this.tvm.dispose();
  }

  // --- internals --------------------------------------------------------------------------

  _readBack(tensor) {
    return this.#readBack(tensor);
  }

  async #readBack(tensor) {
    const cpu = this.tvm.withNewScope(() =>
      this.tvm.detachFromCurrentScope(this.tvm.empty(tensor.shape, tensor.dtype, this.tvm.cpu())),
    );
    try {
      cpu.copyFrom(tensor);
      await this.device.sync();
      return cpu.toArray().slice();
    } finally {
      cpu.dispose();
    }
  }

  #withEmbeds(ids, fn) {
    const embeds = this.embed(ids);
    try {
      return fn(embeds);
    } finally {
      embeds.dispose();
    }
  }

  // Runs fn inside a TVM scope; fn returns [tensor, shape]; the tensor outlives the scope.
  #scoped(fn) {
    this.tvm.beginScope();
    try {
      const [tensor, shape] = fn();
      return new DeviceTensor(this, this.tvm.detachFromCurrentScope(tensor), shape);
    } finally {
      this.tvm.endScope();
    }
  }

  // Input embeddings as GPU tensors of at most prefillChunkSize rows, each [1, rows, hidden].
  #chunks(embeds, single) {
    const hidden = this.hiddenSize;
    let rows;
    let host = null;
    if (embeds instanceof DeviceTensor) {
      if (embeds.size % hidden !== 0) throw new RangeError(`expected [n, ${hidden}] embeddings`);
      rows = embeds.size / hidden;
    } else {
      host = embeds instanceof Float32Array ? embeds : Float32Array.from(embeds.flat?.() ?? embeds);
      if (host.length === 0 || host.length % hidden !== 0) {
        throw new RangeError(`expected [n, ${hidden}] embeddings, got ${host.length} values`);
      }
      rows = host.length / hidden;
    }
    if (rows === 0 || (single && rows !== 1)) {
      throw new RangeError(`expected ${single ? "one embedding" : "embeddings"}, got ${rows} rows`);
    }
    if (this.position + rows > this.contextWindowSize) {
      throw new RangeError(
        `sequence would reach ${this.position + rows} positions, beyond the context window ` +
          `(${this.contextWindowSize}); call reset()`,
      );
    }
    if (host === null && rows <= this.prefillChunkSize) {
      return [{ rows, tensor: embeds.tensor, owned: false }];
    }
    const out = [];
    if (host === null) {
      // Kernels bind whole buffers, so each chunk of a long GPU input is copied (on the GPU)
      // out of a view at its byte offset.
      const bytesPerRow = hidden * (embeds.tensor.dtype === "float16" ? 2 : 4);
      for (let start = 0; start < rows; start += this.prefillChunkSize) {
        const n = Math.min(this.prefillChunkSize, rows - start);
        const tensor = this.tvm.withNewScope(() => {
          const createView = this.tvm.getGlobalFunc("runtime.TVMTensorCreateView");
          const view = createView(
            embeds.tensor,
            this.tvm.makeShapeTuple([1, n, hidden]),
            embeds.tensor.dtype,
            new tvmjs.Scalar(start * bytesPerRow, "int"),
          );
          const copy = this.tvm.empty([1, n, hidden], embeds.tensor.dtype, this.device);
          copy.copyFrom(view);
          return this.tvm.detachFromCurrentScope(copy);
        });
        out.push({ rows: n, tensor, owned: true });
      }
      return out;
    }
    for (let start = 0; start < rows; start += this.prefillChunkSize) {
      const n = Math.min(this.prefillChunkSize, rows - start);
      const data = host.subarray(start * hidden, (start + n) * hidden);
      const tensor = this.tvm.withNewScope(() =>
        this.tvm.detachFromCurrentScope(
          this.tvm.empty([1, n, hidden], this.dtype, this.device).copyFrom(data),
        ),
      );
      out.push({ rows: n, tensor, owned: true });
    }
    return out;
  }

  // One forward call over a chunk; returns the DeviceTensor of output 0 with `shape`.
  #run(name, chunk, shape) {
    const tvm = this.tvm;
    try {
      return this.#scoped(() => {
        const input = chunk.tensor.view([1, chunk.rows, this.hiddenSize]);
        this.kvBegin(this.kv, tvm.makeShapeTuple([SEQ_ID]), tvm.makeShapeTuple([chunk.rows]));
        const result = this.fn[name](input, this.kv, this.params);
        this.kvEnd(this.kv);
        this.position += chunk.rows;
        return [result.get(0), shape];
      });
    } finally {
      if (chunk.owned) chunk.tensor.dispose();
    }
  }
}

// Models with sliding-window attention are exact only within limits their build records in
// model_config.runtime_limits (a context within the window, or prefill chunks shorter than it);
// like the Python runtime, refuse settings beyond them, the build's own defaults included.
const LIMITED_SETTINGS = {
  context_window_size: ["contextWindowSize", "context_window_size"],
  prefill_chunk_size: ["prefillChunkSize", "prefill_chunk_size"],
};

function checkRuntimeLimits(base, config, options) {
  const limits = config.model_config?.runtime_limits ?? {};
  for (const [key, limit] of Object.entries(limits)) {
    const names = LIMITED_SETTINGS[key];
    if (!names) continue;
    const [option, configKey] = names;
    const value = Number(options[option] ?? config[configKey]);
    if (value > Number(limit)) {
      const source = options[option] != null ? option : `the config's ${configKey}`;
      throw new ArtifactError(
        `${base}: ${source} ${value} is above this model's limit of ${limit} ` +
          `(model_config.runtime_limits.${key}: sliding-window attention is exact only ` +
          `within it); pass ${option} <= ${limit}`,
      );
    }
  }
}

function mb(bytes) {
  return (bytes / (1024 * 1024)).toFixed(1);
}

// A content-keyed Cache Storage name, so a rebuilt artifact at the same URL is not served
// stale weights from the browser's cache.
function weightsCacheScope(manifest) {
  const sha = manifest?.files?.["tensor-cache.json"]?.sha256;
  return sha ? `mlcpatch-${sha.slice(0, 16)}` : "mlcpatch";
}

async function loadTokenizer(base, config) {
  const files = new Set(config.tokenizer_files ?? []);
  if (!files.has("tokenizer.json")) {
    throw new ArtifactError(`${base}: the engine needs tokenizer.json (has ${[...files]})`);
  }
  const raw = await (await fetchOk(base + "tokenizer.json", "tokenizer.json")).arrayBuffer();
  const tokenizer = await Tokenizer.fromJSON(raw);
  const special = specialTokens(JSON.parse(new TextDecoder().decode(raw)));
  let tokConfig = {};
  if (files.has("tokenizer_config.json")) {
    tokConfig = await (await fetchOk(base + "tokenizer_config.json", "tokenizer config")).json();
  }
  let source = typeof tokConfig.chat_template === "string" ? tokConfig.chat_template : null;
  if (files.has("chat_template.jinja")) {
    source = await (await fetchOk(base + "chat_template.jinja", "chat template")).text();
  }
  const eosToken = tokenContent(tokConfig.eos_token);
  const eosIds = new Set(config.eos_token_id ?? []);
  if (eosToken && special.has(eosToken)) eosIds.add(special.get(eosToken));
  return {
    tokenizer,
    special,
    eosIds: [...eosIds].sort((a, b) => a - b),
    chatTemplate: source
      ? { source, bosToken: tokenContent(tokConfig.bos_token), eosToken }
      : null,
  };
}
