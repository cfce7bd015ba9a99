"""The built-in model definitions and their registry (no compilation here)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from mlcpatch.models.registry import (
    BUILTIN_ARCHS,
    UnknownArchError,
    arch_for_model_type,
    builtin_model_file,
    get_arch,
    tiny_config,
)

ARCHS = sorted(BUILTIN_ARCHS)
REQUIRED_METHODS = (
    "embed",
    "prefill",
    "decode",
    "batch_prefill",
    "batch_decode",
    "create_paged_kv_cache",
    "get_default_spec",
)


def test_registry_imports_neither_tvm_nor_torch() -> None:
    code = (
        "import sys; import mlcpatch.models.registry as r; r.builtin_model_file('qwen2'); "
        "print(sorted(m for m in ('tvm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_arch_lists_the_known_ones() -> None:
    with pytest.raises(UnknownArchError, match="unknown architecture 'gpt9' .*llama, qwen2"):
        get_arch("gpt9")


@pytest.mark.parametrize("arch", ARCHS)
def test_builtin_definition_is_unpatched_and_standalone(arch: str) -> None:
    path = builtin_model_file(arch)
    text = path.read_text()
    assert "get_last_hidden" not in text and "decode_last_hidden" not in text
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import breaks the standalone copy"
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    head = classes[get_arch(arch).model_class]
    methods = {n.name for n in head.body if isinstance(n, ast.FunctionDef)}
    assert set(REQUIRED_METHODS) <= methods


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_and_decode_run_the_decoder_as_their_own_statement(arch: str) -> None:
    """The patcher recognises `hidden_states = self.model(input_embed, paged_kv_cache)`."""
    tree = ast.parse(builtin_model_file(arch).read_text())
    head = next(n for n in tree.body if getattr(n, "name", "") == get_arch(arch).model_class)
    for name in ("prefill", "decode"):
        fn = next(n for n in head.body if getattr(n, "name", "") == name)
        first = ast.unparse(fn.body[0])
        assert first == "hidden_states = self.model(input_embed, paged_kv_cache)"


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_config_instantiates_and_gives_a_spec(arch: str) -> None:
    config_cls, model_cls = get_arch(arch).load_classes()
    config = config_cls.from_dict(tiny_config(arch))
    spec = model_cls(config).get_default_spec()
    names = list(spec.method_names)
    for fn in ("embed", "prefill", "decode", "create_paged_kv_cache"):
        assert fn in names
    assert arch_for_model_type(tiny_config(arch)["model_type"]) is get_arch(arch)


def test_qwen2_config_reads_both_transformers_generations() -> None:
    config_cls, _ = get_arch("qwen2").load_classes()
    base = tiny_config("qwen2")
    base.pop("rope_theta")
    old = config_cls.from_dict({**base, "rope_theta": 1234.0})
    new = config_cls.from_dict(
        {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 99.0}}
    )
    assert old.rope_theta == 1234.0 and new.rope_theta == 99.0
    assert old.head_dim == 16 and old.context_window_size == 512
    assert old.dtype == "float32"  # never taken from HF's "dtype"
    assert config_cls.from_dict({**base, "dtype": "bfloat16"}).dtype == "float32"


def test_llama_config_rope_scaling() -> None:
    config_cls, _ = get_arch("llama").load_classes()
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    old = config_cls.from_dict(
        {**tiny_config("llama"), "rope_scaling": {"type": "llama3", **scaling}}
    )
    new = config_cls.from_dict(
        {
            **tiny_config("llama"),
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **scaling},
        }
    )
    assert old.rope_scaling == new.rope_scaling == {"rope_type": "llama3", **scaling}
    assert new.rope_theta == 500000.0
    with pytest.raises(ValueError, match="unsupported RoPE scaling type 'yarn'"):
        config_cls.from_dict({**tiny_config("llama"), "rope_scaling": {"rope_type": "yarn"}})


def test_config_errors_are_clear() -> None:
    config_cls, _ = get_arch("llama").load_classes()
    broken = tiny_config("llama")
    del broken["hidden_size"]
    with pytest.raises(ValueError, match="lacks required field.*hidden_size"):
        config_cls.from_dict(broken)
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads"):
        config_cls.from_dict({**tiny_config("llama"), "num_key_value_heads": 3})
