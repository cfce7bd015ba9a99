// The page's side of the loop host: requests as promises, progress as callbacks.
//
// The host runs in a module Web Worker when that worker can get WebGPU; otherwise (a browser
// without WebGPU in workers) it runs on the main thread with the same protocol, and `where`
// says so. Both paths run the same code (loop_host.js), so results do not depend on it.

import { detectWebGPU } from "./detect.js";

export class LoopClient {
  constructor(send, where, gpu) {
    this.send = send; // (message, transfer) -> void
    this.where = where;
    this.gpu = gpu; // detectWebGPU()'s answer where the host runs
    this.pending = new Map();
    this.nextId = 1;
  }

  /** A client with its host in a worker if possible, else on the main thread. */
  static async create({ worker = true } = {}) {
    if (worker && typeof Worker !== "undefined") {
      try {
        const client = await LoopClient.#inWorker();
        if (client.gpu.ok) return client;
        const local = await detectWebGPU();
        if (!local.ok) return client; // no WebGPU anywhere: report the worker's reason
        client.terminate();
      } catch {
        // fall through to the main thread
      }
    }
    return LoopClient.#inPage();
  }

  static async #inWorker() {
    const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    const client = new LoopClient((m, t) => worker.postMessage(m, t ?? []), "worker", null);
    client.worker = worker;
    worker.onmessage = (e) => client.#receive(e.data);
    const failed = new Promise((_, reject) => {
      worker.onerror = (e) => {
        reject(new Error(`the worker failed to start: ${e.message ?? e}`));
        client.#failAll(new Error(`the worker stopped: ${e.message ?? e}`));
      };
    });
    client.gpu = await Promise.race([client.request("init"), failed]);
    return client;
  }

  static async #inPage() {
    const { LoopHost } = await import("./loop_host.js");
    const host = new LoopHost("main thread");
    const client = new LoopClient(
      (m) => host.handle(structuredClone(m), (reply) => queueMicrotask(() => client.#receive(reply))),
      "main thread",
      null,
    );
    client.gpu = await client.request("init");
    return client;
  }

  /** Send {type, ...payload}; resolves with the host's value; onEvent(event) for progress. */
  request(type, payload = {}, { onEvent, transfer } = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onEvent });
      this.send({ id, type, ...payload }, transfer);
    });
  }

  stop() {
    return this.request("stop");
  }

  terminate() {
    this.worker?.terminate();
    this.#failAll(new Error("the loop host was shut down"));
  }

  #receive(message) {
    const entry = this.pending.get(message.id);
    if (!entry) return;
    if (message.type === "event") {
      entry.onEvent?.(message.event);
      return;
    }
    this.pending.delete(message.id);
    if (message.type === "done") {
      entry.resolve(message.value);
    } else {
      const err = new Error(message.error.message);
      err.name = message.error.name;
      entry.reject(err);
    }
  }

  #failAll(err) {
    for (const entry of this.pending.values()) entry.reject(err);
    this.pending.clear();
  }
}
