"""The KV cache's kernels as exported per target (no compile, no browser: seconds).

TVM's GPU merge kernel races (see mlcpatch/models/kv_cache.py); WebGPU exports must carry ours
instead. test_browser_chunked.py checks the numbers in a browser.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.heavy


def _export(
    arch: str, target: Any, overrides: dict[str, Any] | None = None, dtype: str = "float32"
) -> Any:
    from mlcpatch.build.compile import export_model
    from mlcpatch.build.model_module import import_model_file, instantiate
    from mlcpatch.models.registry import builtin_model_file, get_arch

    info = get_arch(arch)
    module = import_model_file(builtin_model_file(arch))
    model = instantiate(info, module, {**info.tiny_config(), **(overrides or {})}, dtype)[1]
    return export_model(model, target)[0]


def _prim_funcs(mod: Any) -> dict[str, Any]:
    from tvm import tirx

    return {
        str(func.attrs["global_symbol"]): func
        for _, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and func.attrs and "global_symbol" in func.attrs
    }


@pytest.mark.parametrize("heads", [4, 2, 1])  # head_dim 16, 32, 64 at hidden 64
def test_webgpu_export_uses_race_free_merge_kernel(heads: int) -> None:
    from mlcpatch.build.webgpu.target import make_target
    from mlcpatch.models.kv_cache import merge_state_inplace

    mod = _export("qwen2", make_target(), {"num_attention_heads": heads, "num_key_value_heads": 1})
    funcs = _prim_funcs(mod)
    merge = funcs["tir_attention_merge_state"]
    expected = merge_state_inplace("float32", "tir_attention_merge_state")
    assert merge.script() == expected.script()
    # Still what the KV cache is created with (the global var was updated, not replaced).
    assert "tir_attention_merge_state" in mod.script(show_meta=False)


def test_cpu_export_keeps_tvm_cpu_merge_kernel() -> None:
    from tvm.target import Target

    funcs = _prim_funcs(_export("qwen2", Target({"kind": "llvm"})))
    assert "merge_state_inplace_cpu" in funcs
    assert "tir_attention_merge_state" not in funcs


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "gemma3"])
def test_cpu_export_uses_hand_written_attention_kernels(arch: str, dtype: str) -> None:
    """CPU builds carry mlcpatch/build/cpu_attention.py's kernels in place of TVM's scalar
    ones, under TVM's kernels' symbols, float16 models too; sliding-window ones stay TVM's."""
    from tvm import tirx
    from tvm.target import Target

    mod = _export(arch, Target({"kind": "llvm"}), dtype=dtype)
    made = {
        gvar.name_hint: str(func.attrs["mlcpatch.kernel"])
        for gvar, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and func.attrs and "mlcpatch.kernel" in func.attrs
    }
    assert made == {
        "batch_decode_paged_kv_cpu": "paged_decode_attention",
        "batch_prefill_paged_kv_cpu": "paged_prefill_attention",
        "batch_prefill_ragged_kv": "ragged_prefill_attention",
        "fused_rope": "split_rotary",
    }
    if arch == "gemma3":  # its window layers keep TVM's kernel
        assert "batch_decode_paged_kv_cpu_sliding_window" in _prim_funcs(mod)


def test_merge_kernel_gives_each_row_to_one_invocation() -> None:
    """No two invocations touch the same S[n, h]: the row index is the invocation's index."""
    from mlcpatch.models.kv_cache import merge_state_inplace

    script = merge_state_inplace("float16", "m").script()
    assert 'T.thread_binding(64, thread="threadIdx.x")' in script
    assert "row: T.let[T.int32] = vbx * 64 + vtx" in script
    assert "threadIdx.y" not in script
