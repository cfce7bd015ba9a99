"""The built-in model definitions and their registry (no compilation here)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import mlcpatch.build.recipe as recipe_module
from mlcpatch.build.recipe import load_recipe
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


@pytest.mark.parametrize("arch", ARCHS)
def test_registry_and_recipe_agree(arch: str) -> None:
    recipe = load_recipe(arch)
    assert recipe is not None and recipe.arch == arch
    assert get_arch(arch).recipe == recipe
    assert get_arch(arch).default_conv_template == recipe.conv_template


def test_registry_reads_the_recipe_files_themselves(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One source of per-arch defaults: a changed recipe changes what the registry says (and so
    what a build without --conv-template records), and a missing one is named."""
    (tmp_path / "llama.toml").write_text(
        'arch = "llama"\nmodel = "some/model"\nconv_template = "edited-template"\n'
    )
    monkeypatch.setattr(recipe_module, "recipes_dir", lambda: tmp_path)
    recipe = load_recipe("llama")
    assert recipe is not None and recipe.conv_template == "edited-template"
    assert get_arch("llama").default_conv_template == "edited-template"
    with pytest.raises(FileNotFoundError, match=r"qwen2\.toml: the qwen2 recipe is missing"):
        _ = get_arch("qwen2").default_conv_template


def test_unknown_arch_lists_the_known_ones() -> None:
    with pytest.raises(
        UnknownArchError, match="unknown architecture 'gpt9' .*gemma3, llama, mistral, qwen2, qwen3"
    ):
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


def test_qwen3_config_keeps_an_explicit_head_dim() -> None:
    config_cls, _ = get_arch("qwen3").load_classes()
    config = config_cls.from_dict(tiny_config("qwen3"))
    assert config.head_dim == 32 != config.hidden_size // config.num_attention_heads
    assert config.rope_theta == 1000000.0 and config.tie_word_embeddings
    with pytest.raises(ValueError, match="attention_bias=True is not supported"):
        config_cls.from_dict({**tiny_config("qwen3"), "attention_bias": True})


def test_gemma3_config_reads_both_rope_layouts() -> None:
    """transformers 5 nests RoPE per layer type; older configs use rope_local_base_freq."""
    config_cls, _ = get_arch("gemma3").load_classes()
    base = {k: v for k, v in tiny_config("gemma3").items() if k != "rope_parameters"}
    new = config_cls.from_dict(
        {
            **base,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 5e5},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        }
    )
    old = config_cls.from_dict(
        {
            **base,
            "rope_theta": 5e5,
            "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        }
    )
    for config in (new, old):
        assert config.layer_rope(0) == (1e4, 1.0)  # sliding layer: local base, never scaled
        assert config.layer_rope(2) == (5e5, 8.0)  # global layer: rope_theta, linear factor
    defaults = config_cls.from_dict({**base, "num_hidden_layers": 6, "layer_types": None})
    # Without layer_types every 6th layer is global (sliding_window_pattern), as in HF.
    assert defaults.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert defaults.layer_rope(5) == (1000000.0, 1.0) and defaults.layer_rope(0) == (1e4, 1.0)
    with pytest.raises(ValueError, match="unsupported RoPE scaling type 'yarn' for gemma3"):
        config_cls.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_gemma3_refuses_what_it_cannot_compute() -> None:
    config_cls, _ = get_arch("gemma3").load_classes()
    tiny = tiny_config("gemma3")
    with pytest.raises(ValueError, match="multimodal Gemma 3 checkpoints .* not supported"):
        config_cls.from_dict({"model_type": "gemma3", "text_config": tiny, "vision_config": {}})
    with pytest.raises(ValueError, match="attn_logit_softcapping is not supported"):
        config_cls.from_dict({**tiny, "attn_logit_softcapping": 50.0})
    with pytest.raises(ValueError, match="bidirectional"):
        config_cls.from_dict({**tiny, "use_bidirectional_attention": True})


def test_mistral_window_bounds_the_context() -> None:
    """A context derived from max_position_embeddings is clamped to the window; an explicit
    longer one is refused (this build attends to every cached position)."""
    config_cls, _ = get_arch("mistral").load_classes()
    tiny = {**tiny_config("mistral"), "sliding_window": 128}
    clamped = config_cls.from_dict(tiny)
    assert clamped.context_window_size == 128 and clamped.prefill_chunk_size <= 128
    assert clamped.runtime_limits == {"context_window_size": 128}
    assert config_cls.from_dict({**tiny, "context_window_size": 100}).context_window_size == 100
    with pytest.raises(ValueError, match="window 128 tokens.*context_window_size 256 is longer"):
        config_cls.from_dict({**tiny, "context_window_size": 256})
    no_window = config_cls.from_dict({**tiny, "sliding_window": None})
    assert no_window.context_window_size == 512 and no_window.runtime_limits == {}


def test_gemma3_context_beyond_the_window_uses_window_kernels() -> None:
    """Window kernels are exact for prefill chunks shorter than the window, at any length."""
    config_cls, _ = get_arch("gemma3").load_classes()
    tiny = {**tiny_config("gemma3"), "sliding_window": 16}
    config = config_cls.from_dict(tiny)
    assert config.context_window_size == 512 and config.prefill_chunk_size == 15
    assert config.window_kernels and config.runtime_limits == {"prefill_chunk_size": 15}
    assert config.attn_kinds() == ["mha_sliding", "mha_sliding", "mha"]
    assert config_cls.from_dict({**tiny, "prefill_chunk_size": 8}).prefill_chunk_size == 8
    with pytest.raises(ValueError, match="prefill_chunk_size 16 is not shorter than .* window"):
        config_cls.from_dict({**tiny, "prefill_chunk_size": 16})


def test_gemma3_context_within_the_window_uses_plain_attention() -> None:
    config_cls, _ = get_arch("gemma3").load_classes()
    tiny = tiny_config("gemma3")  # window 512 = context 512
    config = config_cls.from_dict(tiny)
    assert config.attn_kinds() == ["mha"] * 3 and not config.window_kernels
    assert config.prefill_chunk_size == 512
    assert config.runtime_limits == {"context_window_size": 512}
    short = config_cls.from_dict({**tiny, "sliding_window": 16, "context_window_size": 16})
    assert short.attn_kinds() == ["mha"] * 3 and short.runtime_limits == {"context_window_size": 16}
    # No sliding layers, or no window: plain attention, no limits.
    for change in ({"layer_types": ["full_attention"] * 3}, {"sliding_window": None}):
        plain = config_cls.from_dict({**tiny, "sliding_window": 16, **change})
        assert plain.attn_kinds() == ["mha"] * 3 and plain.sliding_window is None
        assert plain.prefill_chunk_size == 512 and plain.runtime_limits == {}


def test_qwen3_window_counts_only_with_use_sliding_window() -> None:
    config_cls, _ = get_arch("qwen3").load_classes()
    tiny = {**tiny_config("qwen3"), "sliding_window": 128}
    assert config_cls.from_dict(tiny).context_window_size == 512
    windowed = config_cls.from_dict({**tiny, "use_sliding_window": True})
    assert windowed.context_window_size == 128
    assert windowed.runtime_limits == {"context_window_size": 128}


def test_mistral_config_accepts_a_null_head_dim() -> None:
    config_cls, _ = get_arch("mistral").load_classes()
    config = config_cls.from_dict({**tiny_config("mistral"), "head_dim": None})
    assert config.head_dim == 16 and config.num_key_value_heads == 1
