"""Shared fixtures: tiny random HF models and their artifact folders, each built once a session."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# name -> (arch, config overrides of the registry's tiny config). Together they cover tied and
# untied heads, GQA 2:1 and 4:1, three RoPE thetas, llama3 and linear RoPE scaling, an explicit
# head_dim, q/k norms, Gemma's per-layer-type RoPE bases and sliding windows (prompts outgrow
# a 16-token window), final logit soft-capping.
TINY_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2-untied": ("qwen2", {}),
    "qwen2-tied": (
        "qwen2",
        {"tie_word_embeddings": True, "num_key_value_heads": 1, "rope_theta": 1000000.0},
    ),
    "llama-tied-llama3": (
        "llama",
        {
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "qwen3-tied": ("qwen3", {}),
    "gemma3-softcap-linear": (
        "gemma3",
        {
            "sliding_window": 16,
            "final_logit_softcapping": 30.0,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
    ),
    "mistral-untied": ("mistral", {}),
}
# Variants whose norm weights get noise (HF's constant init would hide a mis-scaled norm).
PERTURBED_NORMS = {"qwen3-tied", "gemma3-softcap-linear", "mistral-untied"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark heavy every test on an artifact built by the `built` fixture (directly or through
    another fixture), so a new test on a TVM build cannot slip into `make test-fast`. Tests that
    build, compile or export with TVM themselves carry the mark explicitly."""
    for item in items:
        if "built" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(scope="session", autouse=True)
def build_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A session-private build cache, so tests never read or fill ~/.cache/mlcpatch."""
    path = tmp_path_factory.mktemp("mlcpatch-cache")
    old = os.environ.get("MLCPATCH_CACHE_DIR")
    os.environ["MLCPATCH_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLCPATCH_CACHE_DIR", None)
    else:
        os.environ["MLCPATCH_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], pathlib.Path]:
    """variant name -> folder holding that tiny random HF model (written once)."""
    from mlcpatch.build.tiny import write_tiny_model

    made: dict[str, pathlib.Path] = {}

    def make(variant: str) -> pathlib.Path:
        if variant not in made:
            arch, overrides = TINY_VARIANTS[variant]
            folder = tmp_path_factory.mktemp(f"hf-{variant}")
            made[variant] = write_tiny_model(
                folder,
                arch,
                seed=1,
                config_overrides=overrides,
                perturb_norms=variant in PERTURBED_NORMS,
            )
        return made[variant]

    return make


@pytest.fixture(scope="session")
def built(
    tiny_hf: Callable[[str], pathlib.Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., pathlib.Path]:
    """(variant, quantization) -> artifact folder built from it (built once per session)."""
    from mlcpatch.build.pipeline import BuildOptions, build

    done: dict[tuple[str, str], pathlib.Path] = {}

    def make(variant: str, quantization: str = "q0f32") -> pathlib.Path:
        key = (variant, quantization)
        if key not in done:
            arch, _ = TINY_VARIANTS[variant]
            out = tmp_path_factory.mktemp("artifacts") / f"{variant}-{quantization}"
            options = BuildOptions(
                arch=arch,
                model=str(tiny_hf(variant)),
                quantization=quantization,
                out=out,
                progress=False,
            )
            done[key] = build(options).out
        return done[key]

    return make


@pytest.fixture(scope="session")
def hf_model() -> Callable[[pathlib.Path], Any]:
    """folder -> the transformers reference model (float32, eval mode), loaded once."""
    from transformers import AutoModelForCausalLM

    loaded: dict[pathlib.Path, Any] = {}

    def load(folder: pathlib.Path) -> Any:
        if folder not in loaded:
            loaded[folder] = AutoModelForCausalLM.from_pretrained(str(folder)).float().eval()
        return loaded[folder]

    return load
