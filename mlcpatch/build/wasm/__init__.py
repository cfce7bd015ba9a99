"""The wasm CPU target: the model's host and kernels compiled to wasm32 (SIMD) and linked with
emscripten into one ``.wasm`` the browser runs on the CPU when it has no WebGPU (``target``)."""
