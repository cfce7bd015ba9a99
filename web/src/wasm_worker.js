// One thread of the wasm CPU library's pool (wasm_threads.js starts it). It instantiates the
// engine's compiled library on the engine's shared memory, moves its stack pointer to its own
// block, and enters mlcpatch_worker_main, which never returns: it sleeps until a parallel loop
// has a task for it. It never calls the runtime, so every other import is a function that fails
// loudly if it is ever reached.

self.onmessage = async ({ data }) => {
  const { module, memory, index, stackTop } = data;
  let instance = null;
  try {
    const imports = {};
    for (const item of WebAssembly.Module.imports(module)) {
      const scope = (imports[item.module] ??= {});
      if (item.kind === "memory") {
        scope[item.name] = memory;
      } else if (item.name === "emscripten_notify_memory_growth") {
        scope[item.name] = () => {}; // the heap grew (a workspace allocation): nothing to do
      } else if (item.kind === "function") {
        scope[item.name] = () => {
          throw new Error(`${item.module}.${item.name} called on wasm thread ${index + 1}`);
        };
      } else {
        throw new Error(`cannot provide the ${item.kind} import ${item.module}.${item.name}`);
      }
    }
    // Instantiating runs only the memory initialiser, which a shared memory runs once.
    instance = await WebAssembly.instantiate(module, imports);
    instance.exports.stackRestore(stackTop);
    instance.exports.mlcpatch_worker_main(index);
  } catch (err) {
    // Tell the library first: the engine's thread may be waiting for this worker's task.
    instance?.exports.mlcpatch_worker_failed(index);
    console.error(`wasm thread ${index + 1} failed:`, err);
    self.postMessage({ error: String(err?.message ?? err) });
  }
};
