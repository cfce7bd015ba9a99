"""The build: HF weights + a patched model definition -> weight shards + compiled library.

Stages, one module each: ``recipe`` (per-arch defaults from recipes/<arch>.toml), ``source``
(``--model`` -> a local HF folder; ``tiny`` and ``hf_weights``), ``patch_step`` and
``model_module`` (the patched definition), ``convert`` and ``shards`` (weights), ``compile`` and
``targets`` (libraries), ``quiet`` (TVM's messages kept in a log), ``artifact``, ``staging``,
``step_cache`` and ``hashing`` (the folder, written atomically, and reused steps; the folder's
contract is ``mlcpatch.artifact``), ``errors``, ``pipeline`` (all of them in order) and
``command`` (the CLI). Subpackages:
``quantization`` (4-bit weights and kernels), ``webgpu`` (the .wasm target and its emscripten
toolchain), ``mlc`` (``--backend mlc``: the same folder built by MLC-LLM).
``bench`` prints the backend's costs (``make bench``).

Nothing is imported here, so ``mlcpatch.build.recipe`` stays cheap for the model registry.
"""
