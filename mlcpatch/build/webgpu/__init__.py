"""The WebGPU target: compiling and linking the ``.wasm`` (``target``), accurate f32 math for
its kernels (``accurate_math``) and the emscripten toolchain it links with (``toolchain``, with
``toolchain_headers/``)."""
