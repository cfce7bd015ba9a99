// What the playground asks of the models: load artifact folders, read a link file, run the loop,
// stop it. Lives in the Web Worker (worker.js) so the page stays responsive; the same class runs
// on the main thread when a worker cannot get WebGPU (worker_client.js decides).
//
// Protocol: requests {id, type, ...}; replies {id, type: "done", value},
// {id, type: "error", error: {name, message}} or {id, type: "event", event} (progress).
// "stop" is answered at once, even while a run is in flight: the run checks the flag between
// model calls and ends with a StopError.

import { detectWebGPU, Engine } from "./engine.js";
import { LinkError, linksFromBinary, linksFromJson, loadLinks } from "./links.js";
import { run, Settings, StopError } from "./loop.js";
import { loadDocuments } from "./tools.js";

export class LoopHost {
  constructor(where) {
    this.where = where; // "worker" or "main thread", reported to the page
    this.engines = new Map(); // artifact name -> {url, engine}
    this.links = null;
    this.linksSource = null;
    this.documents = null;
    this.running = false;
    this.stopRequested = false;
  }

  /** Handle one request; `post(message, transfer?)` sends replies and events. */
  async handle(message, post) {
    const { id, type } = message;
    if (type === "stop") {
      this.stopRequested = this.running;
      post({ id, type: "done", value: { stopping: this.running } });
      return;
    }
    const emit = (event) => post({ id, type: "event", event });
    try {
      const method = HANDLERS[type];
      if (!method) throw new Error(`unknown request ${type}`);
      const value = await method.call(this, message, emit);
      post({ id, type: "done", value });
    } catch (err) {
      post({ id, type: "error", error: { name: err?.name ?? "Error", message: err?.message ?? String(err) } });
    }
  }

  async init() {
    const gpu = await detectWebGPU();
    // GPUAdapterInfo cannot cross postMessage: copy its fields.
    const info = gpu.adapterInfo ?? {};
    const adapterInfo = {
      vendor: info.vendor,
      architecture: info.architecture,
      device: info.device,
      description: info.description,
      isFallbackAdapter: info.isFallbackAdapter, // a software adapter (the page warns)
    };
    return { ok: gpu.ok, reason: gpu.reason, adapterInfo, where: this.where };
  }

  /** Load the artifact folders in `models` ([{name, url}]); then free the others. */
  async load({ models, device = "auto", threads = "auto" }, emit) {
    for (const { name, url } of models) {
      const had = this.engines.get(name);
      if (had?.url === url && had.requested === device && had.threads === threads) continue;
      let engine;
      try {
        engine = await Engine.load(url, {
          device,
          threads,
          onProgress: (p) => emit({ kind: "load", model: name, progress: p.progress, text: p.text }),
        });
      } catch (err) {
        throw renamed(err, `Could not load model ${name}: ${err?.message ?? err}`);
      }
      this.engines.get(name)?.engine.dispose();
      this.engines.set(name, { url, engine, requested: device, threads });
    }
    // Only after every load succeeded: a failed load leaves the loaded models usable.
    const wanted = new Set(models.map((m) => m.name));
    for (const [name, entry] of this.engines) {
      if (!wanted.has(name)) {
        entry.engine.dispose();
        this.engines.delete(name);
      }
    }
    return Object.fromEntries(
      [...this.engines].map(([name, { engine }]) => [
        name,
        {
          hiddenSize: engine.hiddenSize,
          vocabSize: engine.vocabSize,
          loadTimings: engine.loadTimings,
          device: { device: engine.deviceKind, label: engine.deviceLabel, reason: engine.deviceReason },
        },
      ]),
    );
  }

  /**
   * Read a link file: {url} (links.json, .safetensors or recursivelink.json) or {files:
   * [{name, bytes}]} as picked in the page (links.json + links.safetensors, one .safetensors
   * with its manifest inside, or one recursivelink.json).
   */
  async setLinks({ url, files }) {
    this.links = null;
    this.linksSource = null;
    if (url) {
      this.links = await loadLinks(url);
      this.linksSource = url;
    } else if (files?.length) {
      this.links = linksFromFiles(files);
      this.linksSource = files.map((f) => f.name).join(" + ");
    } else {
      return null;
    }
    return {
      source: this.linksSource,
      agents: this.links.agents,
      links: [...this.links.links.values()].map(({ spec }) => ({
        name: spec.name,
        kind: spec.kind,
        from: spec.from,
        to: spec.to,
        inDim: spec.inDim,
        outDim: spec.outDim,
        variant: spec.variant,
      })),
    };
  }

  /**
   * One run: {mode, pattern, models: [artifact name per agent], question, settings}; the
   * result is RunResult.toJSON() (the Python run's JSON, same keys).
   */
  async run({ mode, pattern, models, question, settings }, emit) {
    if (this.running) throw new Error("a run is already in progress");
    const agents = pattern.agents.map((role, i) => {
      const entry = this.engines.get(models[i]);
      if (!entry) throw new Error(`model ${models[i]} for agent ${role.name} is not loaded`);
      return { role, engine: entry.engine };
    });
    const options = new Settings(settings);
    let links = null;
    if (mode === "latent") {
      if (!this.links) {
        throw new LinkError(
          "latent mode needs a link file: write one with `mlcpatch run … --save-links DIR` " +
            "and pick it here",
        );
      }
      // What Python's Links.from_file checks first: each link's agents and sizes vs the models.
      const sizes = Object.fromEntries(agents.map((a) => [a.role.name, a.engine.hiddenSize]));
      this.links.check(sizes, `link file ${this.linksSource}`);
      links = this.links;
    }
    this.documents ??= await loadDocuments();
    this.running = true;
    this.stopRequested = false;
    try {
      const result = await run(mode, pattern, agents, question, options, links, {
        documents: this.documents,
        shouldStop: () => this.stopRequested,
        progress: (event, round, agent, detail) => {
          const { step, ...rest } = detail ?? {};
          const payload = { kind: "loop", mode, event, round, agent, ...rest };
          if (event === "step") payload.step = step.toJSON();
          emit(payload);
        },
      });
      return result.toJSON();
    } finally {
      this.running = false;
      this.stopRequested = false;
    }
  }
}

const HANDLERS = {
  init: LoopHost.prototype.init,
  load: LoopHost.prototype.load,
  links: LoopHost.prototype.setLinks,
  run: LoopHost.prototype.run,
};

function linksFromFiles(files) {
  const byExt = (ext) => files.filter((f) => f.name.toLowerCase().endsWith(ext));
  const weights = byExt(".safetensors");
  const jsons = byExt(".json");
  if (files.length > 2 || weights.length > 1 || jsons.length > 1 || weights.length + jsons.length !== files.length) {
    throw new LinkError(
      "pick one link file: links.json together with links.safetensors, one .safetensors file, " +
        `or one recursivelink.json (got ${files.map((f) => f.name).join(", ")})`,
    );
  }
  const manifest = jsons.length ? parseJson(jsons[0]) : null;
  if (weights.length) return linksFromBinary(manifest, new Uint8Array(weights[0].bytes), jsons[0]?.name ?? weights[0].name);
  if (manifest && typeof manifest === "object" && "format" in manifest) {
    throw new LinkError(`${jsons[0].name} is a links.json manifest: pick its links.safetensors too`);
  }
  return linksFromJson(manifest, jsons[0].name);
}

// Errors from the runtime can have read-only messages: wrap them, keeping the kind.
function renamed(err, message) {
  const wrapped = new Error(message, { cause: err });
  wrapped.name = err?.name ?? "Error";
  return wrapped;
}

function parseJson(file) {
  try {
    return JSON.parse(new TextDecoder().decode(file.bytes));
  } catch (err) {
    throw new LinkError(`${file.name}: not valid JSON (${err.message})`);
  }
}

export { StopError };
