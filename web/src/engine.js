// The in-browser engine: one mlcpatch artifact folder running on WebGPU, or on the CPU (its
// wasm32 build) when the browser has no WebGPU, the folder has no WebGPU library, or the page
// asks for it (chooseDevice).
//
// Mirrors mlcpatch/runtime.py verb for verb (embed, prefill, decode, getLastHidden,
// decodeLastHidden, reset, generate) so the latent-loop orchestrator is written once per
// language against the same interface. Results stay on the device as DeviceTensor objects; only
// toArray() (or generate()'s sampler) reads anything back.
//
// The npm packages are UMD bundles: imported for their side effect, they define
// globalThis.tvmjs and globalThis.tokenizers.

import "../node_modules/@mlc-ai/web-runtime/lib/index.js";
import "../node_modules/@mlc-ai/web-tokenizers/lib/index.js";
import { renderChatTemplate } from "./chat_template.js";
import { detectWebGPU, WebGPUUnavailableError } from "./detect.js";
import { chooseDevice, DeviceError, DEVICES, parseDeviceRequest } from "./device.js";
import { makeRng, sampleToken } from "./sampling.js";
import { parseThreads, prepareMemory, startWorkers, threadsAvailable } from "./wasm_threads.js";

export { chooseDevice, DeviceError, DEVICES, detectWebGPU, WebGPUUnavailableError };

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

/** A tensor on the engine's device (GPU, or the wasm heap on the CPU). Call dispose() when
 *  done (neither is garbage-collected). */
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
    if (signal?.aborted) throw err;
    throw new ArtifactError(`cannot fetch ${what} (${url}): ${err}`);
  }
  if (!response.ok) {
    throw new ArtifactError(`cannot fetch ${what} (${url}): HTTP ${response.status}`);
  }
  return response;
}

/**
 * Download with byte progress (the wasm is the one large file fetched outside tvmjs): a
 * Uint8Array over a whole ArrayBuffer. Content-Length only sizes the progress: a compressed
 * response has more bytes than it says.
 */
async function fetchBytes(url, what, onBytes, signal) {
  const response = await fetchOk(url, what, signal);
  const total = Number(response.headers.get("Content-Length")) || 0;
  if (!response.body || !total) return new Uint8Array(await response.arrayBuffer());
  let bytes = new Uint8Array(total);
  const reader = response.body.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > bytes.length) {
      const grown = new Uint8Array(Math.max(2 * bytes.length, loaded + value.length));
      grown.set(bytes.subarray(0, loaded));
      bytes = grown;
    }
    bytes.set(value, loaded);
    loaded += value.length;
    onBytes(loaded, Math.max(total, loaded));
  }
  return loaded === bytes.length ? bytes : bytes.slice(0, loaded);
}

// --- the manifest ---------------------------------------------------------------------------
//
// manifest.json is required and follows mlcpatch/artifact.py: {"format": 1, ..., "files":
// {"<relative posix path>": {"size", "sha256"}}} lists every file but itself. Every file the
// engine opens must be listed and is checked (size, SHA-256) as it arrives, before it is used.
// The hashes catch corruption (a cut download, a disk or cache error), not tampering: whoever
// can write the folder can rewrite its manifest too, and an artifact is trusted content (its
// library is code the page runs).

const MANIFEST = "manifest.json";
const CHAT_CONFIG = "mlc-chat-config.json";
const TENSOR_CACHE = "tensor-cache.json";
const KNOWN_FORMATS = [1];
const SHA256 = /^[0-9a-f]{64}$/;
const CORRUPTED = "the artifact (or its download) is corrupted: rebuild it";

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A plain relative posix path: no leading '/', no '\', no '', '.' or '..' part. */
function safeRelative(name) {
  if (typeof name !== "string" || !name || name.includes("\\") || name.includes("\0")) {
    return false;
  }
  return !name.startsWith("/") && name.split("/").every((p) => p !== "" && p !== "." && p !== "..");
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new ArtifactError(
      "cannot check the artifact's files: crypto.subtle is unavailable (the page needs a " +
        "secure context: https, or http on localhost)",
    );
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An artifact folder's manifest: which names may be fetched, and their sizes and hashes. */
class ArtifactFiles {
  constructor(base, manifest) {
    this.base = base;
    this.manifest = manifest;
    this.files = manifest.files;
  }

  /** Fetch and check manifest.json (the rules of mlcpatch/artifact.py's Manifest.from_json). */
  static async open(base, signal) {
    const url = base + MANIFEST;
    let response;
    try {
      response = await fetch(url, { signal });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ArtifactError(`cannot fetch ${MANIFEST} (${url}): ${err}`);
    }
    if (response.status === 404) {
      throw new ArtifactError(`${base}: no ${MANIFEST} (is this an artifact folder?)`);
    }
    if (!response.ok) {
      throw new ArtifactError(`cannot fetch ${MANIFEST} (${url}): HTTP ${response.status}`);
    }
    let manifest;
    try {
      manifest = JSON.parse(await response.text());
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ArtifactError(`${url}: not valid JSON (${err.message ?? err})`);
    }
    if (!isObject(manifest)) throw new ArtifactError(`${url}: expected a JSON object`);
    if (!KNOWN_FORMATS.includes(manifest.format)) {
      throw new ArtifactError(
        `${url}: unknown manifest format ${JSON.stringify(manifest.format)} ` +
          `(this engine reads ${KNOWN_FORMATS.join(", ")})`,
      );
    }
    const files = manifest.files;
    if (!isObject(files) || Object.keys(files).length === 0) {
      throw new ArtifactError(`${url}: no "files" table (a non-empty object of name -> entry)`);
    }
    for (const [name, entry] of Object.entries(files)) {
      if (!safeRelative(name) || name === MANIFEST) {
        throw new ArtifactError(
          `${url}: ${JSON.stringify(name)} is not a valid file name in an artifact`,
        );
      }
      if (
        !isObject(entry) ||
        !Number.isSafeInteger(entry.size) ||
        entry.size < 0 ||
        typeof entry.sha256 !== "string" ||
        !SHA256.test(entry.sha256)
      ) {
        throw new ArtifactError(
          `${url}: entry ${JSON.stringify(name)} needs an integer size and a sha256`,
        );
      }
    }
    return new ArtifactFiles(base, manifest);
  }

  listed(name) {
    return Object.hasOwn(this.files, name);
  }

  /**
   * A name the folder's own files give (library, shard): refused unless a safe relative path
   * that, resolved as a URL against the folder's (as tvmjs does), names the same file.
   */
  requireInside(name, what) {
    if (!safeRelative(name) || this.nameOf(new URL(name, this.base).href) !== name) {
      throw new ArtifactError(
        `${this.base}: ${what} ${JSON.stringify(name)} is not a relative path inside the folder`,
      );
    }
  }

  /** Files the engine will open must be listed, so a hash covers each of them. */
  requireListed(names) {
    const missing = names.filter((n) => !this.listed(n));
    if (missing.length) {
      throw new ArtifactError(
        `${this.base}${MANIFEST} does not list ${missing.slice(0, 3).join(", ")}` +
          (missing.length > 3 ? ` and ${missing.length - 3} more` : "") +
          ": the artifact is incomplete or was not built by mlcpatch",
      );
    }
  }

  urlOf(name) {
    return this.base + name.split("/").map(encodeURIComponent).join("/");
  }

  /** The file name a URL inside the folder stands for; null for any other URL. */
  nameOf(url) {
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      return null;
    }
    if (parsed.search || parsed.hash) return null;
    const plain = parsed.origin + parsed.pathname;
    if (!plain.startsWith(this.base)) return null;
    try {
      const name = plain.slice(this.base.length).split("/").map(decodeURIComponent).join("/");
      return safeRelative(name) ? name : null;
    } catch {
      return null;
    }
  }

  /** Throws an ArtifactError naming the file unless `bytes` match its manifest entry. */
  async verify(name, bytes) {
    if (!this.listed(name)) this.requireListed([name]);
    const entry = this.files[name];
    const where = this.base + name;
    if (bytes.byteLength !== entry.size) {
      throw new ArtifactError(
        `${where}: ${bytes.byteLength} bytes, ${MANIFEST} says ${entry.size}; ${CORRUPTED}`,
      );
    }
    const actual = await sha256Hex(bytes);
    if (actual !== entry.sha256) {
      throw new ArtifactError(
        `${where}: sha256 mismatch (${actual.slice(0, 12)}…, ${MANIFEST} says ` +
          `${entry.sha256.slice(0, 12)}…); ${CORRUPTED}`,
      );
    }
  }

  /** A listed file's bytes (a Uint8Array over a whole ArrayBuffer), checked. */
  async fetch(name, what, signal, onBytes = () => {}) {
    this.requireListed([name]);
    const bytes = await fetchBytes(this.urlOf(name), what, onBytes, signal);
    await this.verify(name, bytes);
    return bytes;
  }

  parseJson(name, bytes) {
    try {
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (err) {
      throw new ArtifactError(`${this.base}${name}: not valid JSON (${err.message ?? err})`);
    }
  }

  /** tensor-cache.json's shards: each dataPath a listed name inside the folder. */
  checkTensorCache(cache) {
    const records = isObject(cache) ? cache.records : undefined;
    if (!Array.isArray(records) || !records.every(isObject)) {
      throw new ArtifactError(`${this.base}${TENSOR_CACHE}: no list of shard records`);
    }
    for (const shard of records) this.requireInside(shard.dataPath, "weight shard");
    this.requireListed(records.map((shard) => shard.dataPath));
  }
}

/**
 * The Cache Storage cache tvmjs loads tensor-cache.json and the weight shards through, with
 * each file checked against the manifest as it comes out: a bad one is dropped from the cache
 * (the next load downloads it again) and the load fails naming it.
 */
class VerifyingCache {
  constructor(inner, files) {
    this.inner = inner;
    this.files = files;
  }

  #name(url) {
    const name = this.files.nameOf(url);
    if (name === null) {
      throw new ArtifactError(`${url}: not a file of the artifact folder ${this.files.base}`);
    }
    this.files.requireListed([name]);
    return name;
  }

  async fetchWithCache(url, storetype, signal) {
    const name = this.#name(url);
    let buffer;
    try {
      buffer = await this.inner.fetchWithCache(url, "arraybuffer", signal);
    } catch (err) {
      if (signal?.aborted || err instanceof ArtifactError) throw err;
      throw new ArtifactError(`cannot fetch ${name} (${url}): ${err}`);
    }
    const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
    try {
      await this.files.verify(name, bytes);
    } catch (err) {
      await Promise.resolve(this.inner.deleteInCache(url)).catch(() => {});
      throw err;
    }
    const kind = storetype?.toLowerCase();
    if (kind === "json") {
      const value = this.files.parseJson(name, bytes);
      if (name === TENSOR_CACHE) this.files.checkTensorCache(value);
      return value;
    }
    if (kind === "arraybuffer") return buffer;
    return new Response(bytes);
  }

  async addToCache(url, storetype, signal) {
    const name = this.#name(url);
    try {
      return await this.inner.addToCache(url, storetype, signal);
    } catch (err) {
      if (signal?.aborted || err instanceof ArtifactError) throw err;
      throw new ArtifactError(`cannot fetch ${name} (${url}): ${err}`);
    }
  }

  hasAllKeys(keys) {
    return this.inner.hasAllKeys(keys);
  }

  deleteInCache(url) {
    return this.inner.deleteInCache(url);
  }
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
   * cacheWasm (keep the library in Cache Storage; default true),
   * device: "auto" (default: WebGPU when the browser has it and the folder has a WebGPU
   * library, else the wasm CPU library), "webgpu", "cpu", or a GPUDevice to share (WebGPU);
   * threads (CPU only: "auto" (default: one per physical core, at most 8) or a count; more
   * than one needs a cross-origin isolated page, which `mlcpatch serve` makes),
   * logger(msg), signal (AbortSignal).
   * engine.deviceKind says which device runs it ("webgpu" or "cpu"), engine.deviceLabel and
   * engine.deviceReason say it in words (the CPU label with its thread count);
   * engine.threads is the number of threads the CPU kernels run on (1 on WebGPU), and
   * engine.workerTasks() how many parallel-loop tasks its worker threads have run;
   * engine.wasmSource says where the library came from: "cache" or "network".
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
    const files = await ArtifactFiles.open(base, options.signal);
    const config = files.parseJson(
      CHAT_CONFIG,
      await files.fetch(CHAT_CONFIG, "the config", options.signal),
    );
    if (!isObject(config)) throw new ArtifactError(`${base}${CHAT_CONFIG}: expected a JSON object`);
    const manifest = files.manifest;
    checkRuntimeLimits(base, config, options);
    const threadsWanted = parseThreads(options.threads);
    const sharedGpu = isObject(options.device) ? options.device : null;
    const requested = sharedGpu ? "webgpu" : parseDeviceRequest(options.device);
    // WebGPU is detected only when it is a candidate: a forced CPU load never touches it.
    const wantsGpu = requested !== "cpu" && typeof config.model_lib?.webgpu === "string";
    const gpu = sharedGpu ? { ok: true } : wantsGpu ? await detectWebGPU() : null;
    const choice = chooseDevice(config.model_lib, requested, gpu);
    const wasmName = config.model_lib[DEVICES[choice.device].library];
    // Everything fetched below is named by the folder's own files: keep each inside it, and
    // listed, so a hash covers all of it (the shards are checked when tensor-cache.json comes).
    files.requireInside(wasmName, "library");
    files.requireListed([CHAT_CONFIG, TENSOR_CACHE, wasmName, ...tokenizerFiles(base, config)]);
    if (!Array.isArray(manifest.param_names) || manifest.param_names.length === 0) {
      throw new ArtifactError(`${base}${MANIFEST}: no param_names list`);
    }
    let gpuDevice = sharedGpu;
    if (choice.device === "webgpu" && !gpuDevice) {
      const detected = await tvmjs.detectGPUDevice();
      if (!detected) throw new WebGPUUnavailableError("No WebGPU device could be created.");
      gpuDevice = detected.device;
    }
    finish("config");

    // The library comes from Cache Storage when an earlier load kept it (keyed by its URL and
    // its manifest sha256, and checked again like a download); else it is downloaded, checked,
    // and kept for the next load.
    const cacheWasm = options.cacheWasm ?? true;
    let wasmSource = "network";
    const wasm = await timed("fetchWasmMs", async () => {
      const cached = cacheWasm ? await readCachedWasm(files, wasmName) : null;
      if (cached) {
        wasmSource = "cache";
        report("wasm", 0.5, `${wasmName} from the browser's cache`);
        return cached;
      }
      const bytes = await files.fetch(
        wasmName,
        `the ${DEVICES[choice.device].library} library`,
        options.signal,
        (loaded, total) =>
          report("wasm", loaded / total, `Downloading ${wasmName} (${mb(loaded)}/${mb(total)} MB)`),
      );
      if (cacheWasm) await storeWasm(files, wasmName, bytes);
      return bytes;
    });
    const logger = options.logger ?? (() => {});
    // A CPU library imports its memory: shared (for worker threads) where the page allows it.
    const lib = prepareMemory(wasm, choice.device === "cpu" ? threadsWanted : 1);
    const wasi = tvmjs.createPolyfillWASI();
    if (lib.memory) wasi.imports.env = { ...wasi.imports.env, memory: lib.memory };
    // Chrome refuses to compile a large wasm synchronously: instantiate() is the async path.
    const tvm = await timed("instantiateMs", () => tvmjs.instantiate(lib.bytes.buffer, wasi, logger));
    if (gpuDevice) tvm.initWebGPU(gpuDevice);
    let pool = { threads: 1, terminate() {} };
    if (lib.shared) {
      try {
        pool = await timed("threadsMs", () =>
          startWorkers(tvm.exports, lib.bytes, lib.memory, threadsWanted),
        );
      } catch (err) {
        tvm.dispose();
        throw err;
      }
    }
    finish("wasm");

    tvm.registerInitProgressCallback((r) => {
      if (r.text?.startsWith("Loading GPU shader")) {
        report("pipelines", r.progress, "Compiling GPU kernels: " + r.text);
      } else {
        report("weights", r.progress, "Weights: " + r.text);
      }
    });
    const dev = choice.device === "webgpu" ? tvm.webgpu() : tvm.cpu();
    const cacheScope = options.cacheScope ?? weightsCacheScope(manifest);
    report("weights", 0, "Downloading weights");
    // tvmjs fetches tensor-cache.json and the shards through this cache (Cache Storage): each
    // is checked against the manifest as it comes out of it, the shards' names before any of
    // them is fetched.
    const artifactCache = new VerifyingCache(tvmjs.createArtifactCache(cacheScope), files);
    await timed("fetchWeightsMs", () =>
      tvm.fetchTensorCache(base, dev, { cacheScope, artifactCache, signal: options.signal }),
    );
    finish("weights");

    report("tokenizer", 0, "Loading the tokenizer");
    const tokenizer = await timed("tokenizerMs", () =>
      loadTokenizer(base, config, files, options.signal),
    );
    finish("tokenizer");

    const engine = new Engine(tvm, dev, gpuDevice, config, manifest, tokenizer, options);
    if (choice.device === "webgpu") {
      report("pipelines", 0, "Compiling GPU kernels");
      await timed("pipelinesMs", () => tvm.asyncLoadWebGPUPipelines(engine.vm.getInternalModule()));
    }
    finish("pipelines"); // the CPU library has no kernels to compile at load
    engine.loadTimings = { ...timings, totalMs: performance.now() - started };
    engine.wasmSource = wasmSource;
    engine.deviceKind = choice.device;
    engine.threadPool = pool;
    engine.deviceLabel =
      choice.device === "cpu"
        ? `${choice.label}, ${pool.threads} thread${pool.threads === 1 ? "" : "s"}`
        : choice.label;
    engine.deviceReason =
      choice.device === "cpu" && threadsWanted > 1 && pool.threads === 1
        ? `${choice.reason}; one thread: ${threadsAvailable() ? "the library has no thread pool" : "the page is not cross-origin isolated"}`
        : choice.reason;
    engine.libraryName = wasmName;
    onProgress({ stage: "ready", progress: 1, text: "Ready", elapsedMs: engine.loadTimings.totalMs });
    return engine;
  }

  constructor(tvm, dev, gpuDevice, config, manifest, tokenizer, options) {
    this.tvm = tvm;
    this.device = dev; // tvm.webgpu() or tvm.cpu(): where tensors live
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
    const paramNames = manifest.param_names;
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
   * stopTokenIds (default: the model's EOS ids; [] never stops early), onToken(id, text),
   * signal (an AbortSignal, checked between decode steps: once aborted, generation stops and
   * the promise resolves with what was generated so far, stoppedBy "aborted", stopped true).
   * Returns {promptIds, outputIds, text, stoppedBy, stopped, timings}.
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
      signal = undefined,
    } = options;
    const aborted = () => signal?.aborted === true;
    const promptIds =
      input?.promptIds != null
        ? Array.from(input.promptIds)
        : this.encodeChat(typeof input === "string" ? input : input.messages);
    const stops = new Set(options.stopTokenIds ?? this.eosTokenIds);
    const rng = makeRng(seed);
    this.reset();
    const output = [];
    let stoppedBy = "maxNewTokens";
    let prefillMs = 0;
    let decodeMs = 0;
    if (aborted()) {
      stoppedBy = "aborted"; // aborted before it started (or while queued): nothing runs
    } else {
      const t0 = performance.now();
      let logits = this.#withEmbeds(promptIds, (e) => this.prefill(e));
      let values = await logits.toArray();
      logits.dispose();
      prefillMs = performance.now() - t0;
      const t1 = performance.now();
      for (let step = 0; step < maxNewTokens; step++) {
        // Each read-back above awaits the GPU, so an abort from the page lands in between.
        if (aborted()) {
          stoppedBy = "aborted";
          break;
        }
        const token = sampleToken(values, { temperature, topP, greedy, rng });
        output.push(token);
        if (onToken) onToken(token, this.decodeTokens([token], { skipSpecialTokens: true }));
        if (stops.has(token)) {
          stoppedBy = "stopToken";
          break;
        }
        if (step + 1 < maxNewTokens) {
          if (aborted()) {
            stoppedBy = "aborted"; // (by onToken, say): no decode step is wasted
            break;
          }
          logits = this.#withEmbeds([token], (e) => this.decode(e));
          values = await logits.toArray();
          logits.dispose();
        }
      }
      decodeMs = performance.now() - t1;
    }
    const textIds = output.filter((t) => !stops.has(t));
    return {
      promptIds,
      outputIds: output,
      text: this.decodeTokens(textIds, { skipSpecialTokens: true }),
      stoppedBy,
      stopped: stoppedBy === "aborted",
      timings: {
        prefillMs,
        decodeMs,
        decodeSteps: Math.max(0, output.length - 1),
        decodeMsPerToken: output.length > 1 ? decodeMs / (output.length - 1) : 0,
      },
    };
  }

  /** Threads the CPU kernels run on (1 on WebGPU and on pages without worker threads). */
  get threads() {
    return this.threadPool?.threads ?? 1;
  }

  /** Parallel-loop tasks the CPU library's worker threads have run (0: all on this thread). */
  workerTasks() {
    return this.tvm.exports.mlcpatch_threads_worker_tasks?.() ?? 0;
  }

  /** Free the GPU buffers, the VM and the tokenizer. The engine is unusable afterwards. */
  dispose() {
    for (const obj of [this.kv, this.params, ...Object.values(this.fn), this.vm]) obj?.dispose();
    for (const f of [this.kvAdd, this.kvClear, this.kvBegin, this.kvEnd]) f?.dispose();
    this.tokenizer?.dispose();
    this.tvm.dispose();
    this.threadPool?.terminate();
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

// --- Cache Storage ---------------------------------------------------------------------------
//
// Every cache this engine fills is named "mlcpatch" or "mlcpatch-…": the weights under a name
// keyed by their hash, the WebGPU libraries in WASM_CACHE. clearCache() deletes them all.

export const CACHE_PREFIX = "mlcpatch";
const WASM_CACHE = `${CACHE_PREFIX}-wasm`;

/** Names of this app's Cache Storage caches (weights and libraries). */
export async function cacheNames() {
  if (typeof caches === "undefined") return [];
  const names = await caches.keys();
  return names.filter((n) => n === CACHE_PREFIX || n.startsWith(`${CACHE_PREFIX}-`));
}

/**
 * Delete this app's Cache Storage caches (weights and libraries; a custom `cacheScope` given
 * to Engine.load is not among them): the next load downloads everything again. Returns the
 * names deleted. Loaded engines keep working (their data is on the GPU already).
 */
export async function clearCache() {
  const names = await cacheNames();
  await Promise.all(names.map((n) => caches.delete(n)));
  return names;
}

// A content-keyed Cache Storage name, so a rebuilt artifact at the same URL is not served
// stale weights from the browser's cache.
function weightsCacheScope(manifest) {
  const sha = manifest?.files?.[TENSOR_CACHE]?.sha256;
  return sha ? `${CACHE_PREFIX}-${sha.slice(0, 16)}` : CACHE_PREFIX;
}

async function openCache(name) {
  if (typeof caches === "undefined") return null; // no Cache Storage (an insecure context)
  try {
    return await caches.open(name);
  } catch {
    return null; // storage turned off, or a private window that refuses it
  }
}

// The library's cache key: its URL and its manifest sha256, so a rebuilt library (a new
// hash) is downloaded again, and a copy of another folder is never taken for it.
function wasmKey(files, name) {
  return `${files.urlOf(name)}?sha256=${files.files[name].sha256}`;
}

/** The cached library, checked against the manifest like a download; null when there is none
 *  (or its copy is bad: then it is dropped, and the caller downloads it again). */
async function readCachedWasm(files, name) {
  const cache = await openCache(WASM_CACHE);
  if (!cache) return null;
  const key = wasmKey(files, name);
  let bytes;
  try {
    const response = await cache.match(key);
    if (!response) return null;
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch {
    return null;
  }
  try {
    await files.verify(name, bytes);
  } catch (err) {
    if (!(err instanceof ArtifactError)) throw err;
    await cache.delete(key).catch(() => {});
    return null;
  }
  return bytes;
}

/** Keep a checked library for the next load, replacing older copies from the same URL. A full
 *  or disabled storage only costs the next load a download. */
async function storeWasm(files, name, bytes) {
  const cache = await openCache(WASM_CACHE);
  if (!cache) return false;
  const url = files.urlOf(name);
  const key = wasmKey(files, name);
  try {
    for (const old of await cache.keys()) {
      const oldUrl = new URL(old.url);
      if (old.url !== key && oldUrl.origin + oldUrl.pathname === url) await cache.delete(old);
    }
    const headers = { "Content-Type": "application/wasm" };
    await cache.put(key, new Response(bytes, { headers }));
    return true;
  } catch {
    return false;
  }
}

// The tokenizer files loadTokenizer fetches, from the config's tokenizer_files.
function tokenizerFiles(base, config) {
  const files = new Set(config.tokenizer_files ?? []);
  if (!files.has("tokenizer.json")) {
    throw new ArtifactError(`${base}: the engine needs tokenizer.json (has ${[...files]})`);
  }
  return ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"].filter((n) =>
    files.has(n),
  );
}

async function loadTokenizer(base, config, artifact, signal) {
  const files = new Set(tokenizerFiles(base, config));
  const raw = await artifact.fetch("tokenizer.json", "tokenizer.json", signal);
  const tokenizer = await Tokenizer.fromJSON(raw.buffer);
  const special = specialTokens(artifact.parseJson("tokenizer.json", raw));
  let tokConfig = {};
  if (files.has("tokenizer_config.json")) {
    const bytes = await artifact.fetch("tokenizer_config.json", "tokenizer config", signal);
    tokConfig = artifact.parseJson("tokenizer_config.json", bytes) ?? {};
  }
  let source = typeof tokConfig.chat_template === "string" ? tokConfig.chat_template : null;
  if (files.has("chat_template.jinja")) {
    const bytes = await artifact.fetch("chat_template.jinja", "chat template", signal);
    source = new TextDecoder().decode(bytes);
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
