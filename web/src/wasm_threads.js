// Threads for the wasm CPU library: the page half of mlcpatch/build/wasm/threads.c.
//
// The library imports one memory, declared shared. On a cross-origin isolated page (what
// `mlcpatch serve` makes) the engine creates that memory shared and starts threads - 1 Web
// Workers (wasm_worker.js) that instantiate the same compiled module on it; TVM's parallel loops
// then split their work over the engine's thread and the workers. Elsewhere shared memory does
// not exist, so the engine clears the import's shared flag before compiling the library and
// every loop runs on its one thread, as in the stock runtime.

const WORKER_URL = new URL("./wasm_worker.js", import.meta.url);
// Each worker's own stack (kernels keep small tiles there; the engine's thread has 5 MiB).
export const WORKER_STACK_BYTES = 1 << 21;
const READY_TIMEOUT_MS = 60_000;
const SHARED_FLAG = 0x02;

export class ThreadsError extends Error {
  constructor(message) {
    super(message);
    this.name = "ThreadsError";
  }
}

/** Whether this page may share memory with workers (cross-origin isolated, with workers). */
export function threadsAvailable() {
  return (
    globalThis.crossOriginIsolated === true &&
    typeof SharedArrayBuffer === "function" &&
    typeof Worker === "function"
  );
}

/** The default thread count: one per physical core (half the logical CPUs the browser reports,
 *  which count SMT siblings), at most 8; parallel loops gain little beyond that on a 135M model. */
export function defaultThreads() {
  const logical = Number(globalThis.navigator?.hardwareConcurrency) || 1;
  return Math.max(1, Math.min(8, Math.floor(logical / 2)));
}

/** `threads` option -> a count: "auto"/undefined -> defaultThreads(); else an integer >= 1. */
export function parseThreads(value) {
  if (value === undefined || value === null || value === "auto") return defaultThreads();
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) {
    throw new ThreadsError(`threads must be "auto" or an integer from 1 to 64, not ${value}`);
  }
  return n;
}

function readLeb(bytes, pos) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[pos++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) return [value, pos];
  }
}

function skipName(bytes, pos) {
  const [length, start] = readLeb(bytes, pos);
  return start + length;
}

/** The library's imported memory: {flagsOffset, flags, initial, maximum} (pages), or null when
 *  it defines its own (a WebGPU library, or a CPU library built before threads). */
export function memoryImport(bytes) {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61) {
    throw new ThreadsError("the library is not a WebAssembly module");
  }
  let pos = 8;
  while (pos < bytes.length) {
    const id = bytes[pos];
    const [size, body] = readLeb(bytes, pos + 1);
    if (id === 2) {
      let [count, at] = readLeb(bytes, body);
      for (; count > 0; count--) {
        at = skipName(bytes, skipName(bytes, at));
        const kind = bytes[at++];
        if (kind === 0) {
          at = readLeb(bytes, at)[1];
        } else if (kind === 1) {
          at += 1; // reference type, then limits
          const flags = bytes[at++];
          at = readLeb(bytes, at)[1];
          if (flags & 1) at = readLeb(bytes, at)[1];
        } else if (kind === 2) {
          const flagsOffset = at;
          const flags = bytes[at++];
          const [initial, next] = readLeb(bytes, at);
          const maximum = flags & 1 ? readLeb(bytes, next)[0] : undefined;
          return { flagsOffset, flags, initial, maximum };
        } else if (kind === 3) {
          at += 2; // value type, mutability
        } else {
          throw new ThreadsError(`unknown import kind ${kind} in the library`);
        }
      }
      return null;
    }
    pos = body + size;
  }
  return null;
}

/**
 * The library's bytes and memory for `threads` threads: {bytes, memory, shared}. memory is
 * null for a library that defines its own; shared says whether workers can join it.
 */
export function prepareMemory(bytes, threads) {
  const decl = memoryImport(bytes);
  if (!decl) return { bytes, memory: null, shared: false };
  const declaredShared = (decl.flags & SHARED_FLAG) !== 0;
  const shared = declaredShared && threads > 1 && threadsAvailable();
  let out = bytes;
  if (declaredShared && !shared) {
    out = bytes.slice(); // the caller's copy (maybe cached) stays as downloaded
    out[decl.flagsOffset] = decl.flags & ~SHARED_FLAG;
  }
  const memory = new WebAssembly.Memory({
    initial: decl.initial,
    ...(decl.maximum !== undefined ? { maximum: decl.maximum } : {}),
    shared,
  });
  return { bytes: out, memory, shared };
}

/**
 * Start threads - 1 workers on the instantiated library `exports` (its memory shared); resolves
 * to a handle {threads, terminate()} once every worker waits for work and the library's
 * parallel loops use them.
 */
export async function startWorkers(exports, bytes, memory, threads) {
  const count = threads - 1;
  if (count < 1) return { threads: 1, terminate() {} };
  if (typeof exports.mlcpatch_threads_enable !== "function") {
    throw new ThreadsError("the library has no thread pool (build it again with this version)");
  }
  const module = await WebAssembly.compile(bytes);
  const base = exports.mlcpatch_threads_alloc_stacks(count, WORKER_STACK_BYTES);
  if (!base) throw new ThreadsError(`no memory for ${count} worker stacks`);
  const workers = [];
  const terminate = () => workers.forEach((w) => w.terminate());
  try {
    await new Promise((resolve, reject) => {
      const deadline = performance.now() + READY_TIMEOUT_MS;
      for (let index = 0; index < count; index++) {
        const worker = new Worker(WORKER_URL, { type: "module", name: `wasm-thread-${index + 1}` });
        worker.onerror = (event) =>
          reject(new ThreadsError(`wasm worker ${index + 1} failed: ${event.message ?? event}`));
        worker.onmessage = ({ data }) => {
          if (data?.error) reject(new ThreadsError(`wasm worker ${index + 1}: ${data.error}`));
        };
        const stackTop = base + (index + 1) * WORKER_STACK_BYTES;
        worker.postMessage({ module, memory, index, stackTop });
        workers.push(worker);
      }
      const poll = () => {
        if (exports.mlcpatch_threads_ready() >= count) return resolve();
        if (performance.now() > deadline) {
          return reject(new ThreadsError(`wasm workers not ready after ${READY_TIMEOUT_MS} ms`));
        }
        setTimeout(poll, 2);
      };
      poll();
    });
  } catch (err) {
    terminate();
    throw err;
  }
  // A worker's thread may block on the memory; a page's main thread may not (it spins).
  const mayBlock = typeof globalThis.WorkerGlobalScope === "function" ? 1 : 0;
  exports.mlcpatch_threads_enable(count, mayBlock);
  return { threads: exports.mlcpatch_threads_count(), terminate };
}
