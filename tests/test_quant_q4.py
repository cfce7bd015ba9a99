"""4-bit group quantization (q4f32_1 / q4f16_1): the stored format, the model transform, and CPU
builds of tiny random models against transformers running the same (dequantized) weights.

The reference weights are decoded from the artifact's shards by this file's own unpacking
(``decode_q4``), not by mlcpatch/build/quantization/q4_format.py, and checked against the original
checkpoint; so the kernels, the converter and the format are each held to something they did not
compute.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_VARIANTS

from mlcpatch.build.quantization import q4_format
from mlcpatch.build.quantization.q4_format import QuantizeError
from mlcpatch.runtime import Runtime

PROMPT = "What is two plus two? Think step by step."
# A model whose hidden size (48) is not a multiple of the group size: the last group of every
# weight read along the hidden axis is half padding. Tied head: the LM head is the 4-bit table.
LLAMA48 = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_attention_heads": 3,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}
# q4f32_1 against transformers on the same dequantized weights: both sides multiply the same
# float32 values ((code - 7) * scale is exact in float32), so what differs is the summation
# order, as for the q0f32 builds (tests/test_build_parity.py: measured <= 1e-5).
F32_TOL = 1e-4
# q4f16_1: activations, scales and matmul outputs are float16 (the CPU kernels widen them and
# sum in float32, rounding each output once). The bounds of tests/test_build_f16.py (derived
# there: ~a dozen f16 roundings of values up to ~4 per layer; 1.7x the worst measured error)
# apply unchanged; measured here: logits 0.028 with float16 sums, 0.009 with float32 ones.
F16_TOL = 0.08
F16_RELATIVE_TOL = 0.02
# Splitting our fused parameters back into HF's (module suffix -> HF module suffixes).
FUSED = {
    "self_attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


# --- helpers independent of the code under test ---------------------------------------------


def decode_q4(words: np.ndarray, scales: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(W' [n, k], per-element scale [n, k]) from packed words: input 8w+e of a row lives in
    bits 4e..4e+3 of word w; code c means (c - 7) * scale of the input's group of 32."""
    n = words.shape[0]
    codes = np.zeros((n, words.shape[1] * 8), dtype=np.int64)
    for e in range(8):
        codes[:, e::8] = (words.astype(np.int64) >> (4 * e)) & 0xF
    assert codes.max() <= 14, "code 15 is never written by the symmetric scheme"
    scale = np.repeat(scales.astype(np.float32), 32, axis=1)
    return ((codes - 7) * scale)[:, :k].astype(np.float32), scale[:, :k]


def read_shards(folder: pathlib.Path) -> dict[str, np.ndarray]:
    cache = json.loads((folder / "tensor-cache.json").read_text())
    out = {}
    for shard in cache["records"]:
        raw = (folder / shard["dataPath"]).read_bytes()
        for rec in shard["records"]:
            data = raw[rec["byteOffset"] : rec["byteOffset"] + rec["nbytes"]]
            out[rec["name"]] = np.frombuffer(data, dtype=rec["dtype"]).reshape(rec["shape"])
    return out


def dequantized_hf_weights(
    folder: pathlib.Path, hf_state: dict[str, torch.Tensor]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """HF weight name -> (dequantized weight, per-element scale), from the artifact's shards."""
    records = read_shards(folder)
    out = {}
    for name, words in records.items():
        if not name.endswith(".q_weight"):
            continue
        module = name.removesuffix(".q_weight")
        scales = records[module + ".q_scale"]
        parts = [module]
        for fused, hf_parts in FUSED.items():
            if module.endswith(fused):
                parts = [module.removesuffix(fused) + p for p in hf_parts]
        shapes = [hf_state[p + ".weight"].shape for p in parts]
        deq, scale = decode_q4(words, scales, shapes[0][1])
        assert deq.shape[0] == sum(s[0] for s in shapes), name
        start = 0
        for part, shape in zip(parts, shapes, strict=True):
            rows = slice(start, start + shape[0])
            out[part + ".weight"] = (deq[rows], scale[rows])
            start += shape[0]
    return out


def reference_model(hf_folder: pathlib.Path, artifact: pathlib.Path) -> Any:
    """transformers' model (float32) with every 2-D weight replaced by the artifact's 4-bit one;
    checks on the way that each lies within half a group scale of the checkpoint's."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_folder)).float().eval()
    state = dict(model.named_parameters())  # tied weights appear once
    deq = dequantized_hf_weights(artifact, {k: v.detach() for k, v in state.items()})
    matrices = {n for n, p in state.items() if p.ndim == 2}
    assert set(deq) == matrices, "every Linear and Embedding weight, nothing else, is 4-bit"
    with torch.no_grad():
        for name in matrices:
            weight, scale = deq[name]
            original = state[name].numpy()
            assert np.all(np.abs(weight - original) <= scale / 2 * (1 + 1e-6)), name
            state[name].copy_(torch.from_numpy(weight))
    return model


def forward(model: Any, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0].numpy(), out.logits[0].numpy()


def greedy(model: Any, ids: list[int], steps: int) -> list[int]:
    tokens = list(ids)
    for _ in range(steps):
        tokens.append(int(np.argmax(forward(model, tokens)[1][-1])))
    return tokens[len(ids) :]


# --- (a) the format ------------------------------------------------------------------------


def _group_scales(weight: np.ndarray) -> np.ndarray:
    """max |w| / 7 per group of 32 (zero-padded), float64, [n, ceil(k / 32)]."""
    n, k = weight.shape
    padded = np.zeros((n, -(-k // 32) * 32))
    padded[:, :k] = np.abs(weight)
    return padded.reshape(n, -1, 32).max(axis=2) / 7


def _round_trip(weight: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    q_weight, q_scale = q4_format.quantize(weight, scale_dtype)
    n, k = weight.shape
    assert q_weight.dtype == np.uint32 and q_weight.shape == (n, -(-k // 32) * 4)
    assert q_scale.dtype == np.dtype(scale_dtype) and q_scale.shape == (n, -(-k // 32))
    deq, scale = decode_q4(q_weight, q_scale, k)
    # The module's own dequantize must agree with the independent decoding.
    np.testing.assert_array_equal(q4_format.dequantize(q_weight, q_scale, k), deq)
    return deq, scale


SHAPES = [(8, 64), (5, 96), (3, 33), (4, 70), (2, 1), (1, 31), (600, 48), (1100, 40)]


@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("spread", [1e-3, 1.0, 300.0])
def test_round_trip_error_is_at_most_half_a_scale(
    scale_dtype: str, shape: tuple[int, int], spread: float
) -> None:
    """Rounding to the nearest of the 15 levels (-7..7) * scale is off by at most scale / 2, as
    long as no value is clipped, which a scale of max|w| / 7 or more guarantees."""
    rng = np.random.default_rng(sum(shape))
    weight = (rng.standard_normal(shape) * spread).astype(np.float32)
    deq, scale = _round_trip(weight, scale_dtype)
    assert np.all(np.abs(deq - weight) <= scale / 2 * (1 + 1e-6))
    # The scale is the group's max|w| / 7 rounded up to the scale dtype, not a looser one.
    want = np.repeat(_group_scales(weight), 32, axis=1)[:, : shape[1]]
    rel = (2.0**-10 if scale_dtype == "float16" else 0.0) + 1e-7
    assert np.all(scale >= want * (1 - 1e-7)) and np.all(scale <= want * (1 + rel))
    # Well-spread random groups use the full code range: the quantization is not degenerate.
    if shape[1] >= 32 and shape[0] >= 8:
        assert np.unique(np.rint(deq / np.where(scale > 0, scale, 1))).size == 15


@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
def test_zeros_and_zero_groups_are_exact(scale_dtype: str) -> None:
    weight = np.zeros((4, 96), np.float32)
    weight[1, 40:50] = np.linspace(-1, 1, 10)  # row 1: group 1 nonzero, groups 0 and 2 zero
    deq, scale = _round_trip(weight, scale_dtype)
    assert np.all(deq[0] == 0) and np.all(scale[0] == 0)
    assert np.all(deq[1, :32] == 0) and np.all(deq[1, 64:] == 0)
    assert np.all(np.abs(deq[1] - weight[1]) <= scale[1] / 2 * (1 + 1e-6))


@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
@pytest.mark.parametrize("value", [0.37, -5.0, 1e-3, 1000.0])
def test_constant_groups_come_back_almost_exactly(scale_dtype: str, value: float) -> None:
    """A constant group is all at the extreme level, 7 * scale = |value| up to the scale's
    rounding (one unit in the last place of the scale dtype)."""
    weight = np.full((3, 64), value, np.float32)
    deq, _ = _round_trip(weight, scale_dtype)
    rel = 2.0**-9 if scale_dtype == "float16" else 2.0**-21
    np.testing.assert_allclose(deq, weight, rtol=rel)


def test_an_outlier_only_coarsens_its_own_group() -> None:
    rng = np.random.default_rng(7)
    weight = rng.uniform(-0.1, 0.1, (2, 128)).astype(np.float32)
    weight[0, 70] = 500.0
    deq, scale = _round_trip(weight, "float32")
    assert deq[0, 70] == pytest.approx(500.0, rel=1e-6)
    np.testing.assert_allclose(scale[0, 64:96], 500.0 / 7, rtol=1e-6)
    # Its neighbours in the group round to zero (|w| < scale / 2) ...
    others = np.r_[64:70, 71:96]
    assert np.all(deq[0, others] == 0)
    # ... while the other groups of the row, and the other row, keep their fine scales.
    for cols in (slice(0, 64), slice(96, 128)):
        assert np.all(scale[0, cols] <= 0.1 / 7 * (1 + 1e-6))
        assert np.all(np.abs(deq[0, cols] - weight[0, cols]) <= 0.1 / 14 * (1 + 1e-6))
    assert np.all(np.abs(deq[1] - weight[1]) <= 0.1 / 14 * (1 + 1e-6))


def test_float16_subnormal_scales_still_bound_the_error() -> None:
    """max|w| / 7 below float16's normal range: the scale is rounded up to a subnormal, never
    down (which would clip the group's largest values)."""
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((4, 64)) * 1e-6).astype(np.float32)
    deq, scale = _round_trip(weight, "float16")
    assert np.all(scale > 0) and np.all(scale < 6.2e-5)  # all subnormal
    assert np.all(np.abs(deq - weight) <= scale / 2 * (1 + 1e-6))


def test_padding_past_k_holds_code_7() -> None:
    weight = np.ones((2, 40), np.float32)
    q_weight, _ = q4_format.quantize(weight, "float32")
    codes = np.stack([(q_weight >> (4 * e)) & 0xF for e in range(8)], axis=-1).reshape(2, -1)
    assert codes.shape == (2, 64)
    assert np.all(codes[:, :40] == 14) and np.all(codes[:, 40:] == 7)


def test_pack_layout_and_round_trip() -> None:
    codes = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 0, 0, 0, 0, 0, 9]], np.uint8)
    words = q4_format.pack(codes)
    assert words.dtype == np.uint32
    assert words.tolist() == [[0x87654321, 0x9000000F]]
    rng = np.random.default_rng(0)
    many = rng.integers(0, 16, (37, 96)).astype(np.uint8)
    np.testing.assert_array_equal(q4_format.unpack(q4_format.pack(many)), many)


@pytest.mark.parametrize(
    ("weight", "scale_dtype", "message"),
    [
        (np.ones(64, np.float32), "float32", "needs a 2-D weight"),
        (np.ones((2, 3, 32), np.float32), "float32", "needs a 2-D weight"),
        (np.array([[1.0, np.nan]], np.float32), "float32", "non-finite"),
        (np.array([[1.0, np.inf]], np.float32), "float16", "non-finite"),
        (np.full((1, 32), 1e6, np.float32), "float16", "overflows float16"),
        (np.ones((1, 32), np.float32), "bfloat16", "scale dtype"),
    ],
)
def test_unrepresentable_weights_are_refused(
    weight: np.ndarray, scale_dtype: str, message: str
) -> None:
    with pytest.raises(QuantizeError, match=message):
        q4_format.quantize(weight, scale_dtype)


# --- the model transform --------------------------------------------------------------------


def _tiny_model(arch: str, dtype: str = "float32") -> Any:
    from mlcpatch.build.model_module import import_model_file, instantiate
    from mlcpatch.models.registry import builtin_model_file, get_arch

    info = get_arch(arch)
    module = import_model_file(builtin_model_file(arch))
    return instantiate(info, module, info.tiny_config(), dtype)[1]


@pytest.mark.heavy
@pytest.mark.parametrize("quant", ["q4f32_1", "q4f16_1"])
def test_transform_quantizes_linears_and_embedding_only(quant: str) -> None:
    from tvm.target import Target

    from mlcpatch.build.compile import export_model
    from mlcpatch.build.quantization.group_quant import quantize_model
    from mlcpatch.build.quantization.modes import get_quantization

    q = get_quantization(quant)
    model = _tiny_model("qwen2", q.model_dtype)
    weights = quantize_model(model, q.scale_dtype)
    _, params = export_model(model, Target({"kind": "llvm"}))
    dtypes = {name: dtype for name, _, dtype in params}
    layer = "model.layers.0."
    assert set(weights) == {
        "model.embed_tokens.weight",
        "lm_head.weight",
        *(
            f"model.layers.{i}.{m}.weight"
            for i in (0, 1)
            for m in ("self_attn.c_attn", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
        ),
    }
    assert not any(name.endswith(".weight") and "norm" not in name for name in dtypes)
    assert dtypes[layer + "mlp.down_proj.q_weight"] == "uint32"
    assert dtypes[layer + "mlp.down_proj.q_scale"] == q.model_dtype
    assert dtypes[layer + "self_attn.c_attn.bias"] == q.model_dtype
    assert dtypes[layer + "input_layernorm.weight"] == q.model_dtype
    shapes = {name: shape for name, shape, _ in params}
    assert shapes[layer + "mlp.down_proj.q_weight"] == (64, 128 // 8)  # [out, in / 8]
    assert shapes[layer + "mlp.down_proj.q_scale"] == (64, 128 // 32)


def test_transform_refuses_layers_it_cannot_reproduce() -> None:
    from tvm.relax.frontend import nn

    from mlcpatch.build.quantization.group_quant import quantize_model

    class ScaledLinear(nn.Linear):
        def scaled(self, x: Any) -> Any:
            return self(x) * 2

    class ScaledEmbedding(nn.Embedding):
        def forward(self, x: Any) -> Any:
            return super().forward(x) * 8.0

    model = _tiny_model("llama")
    model.model.layers[1].mlp.down_proj = ScaledLinear(160, 64, bias=False)
    with pytest.raises(QuantizeError, match=r"model.layers.1.mlp.down_proj: ScaledLinear .*scaled"):
        quantize_model(model, "float32")
    model = _tiny_model("llama")
    model.model.embed_tokens = ScaledEmbedding(512, 64)
    with pytest.raises(QuantizeError, match=r"model.embed_tokens: ScaledEmbedding defines forward"):
        quantize_model(model, "float32")
    # Marked no_quantization, a layer stays as it is (and keeps its float weight).
    model.model.embed_tokens.no_quantization = True
    assert "model.embed_tokens.weight" not in quantize_model(model, "float32")


# --- (b, c) CPU builds ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def q4_artifact(
    built: Callable[..., pathlib.Path],
    tiny_hf: Callable[[str], pathlib.Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], tuple[pathlib.Path, pathlib.Path]]:
    """(variant, quantization) -> (HF folder, artifact folder). Variants: conftest's, plus
    llama48 (hidden 48: padded groups, tied 4-bit head)."""
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.tiny import write_tiny_model

    extra: dict[tuple[str, str], tuple[pathlib.Path, pathlib.Path]] = {}

    def get(variant: str, quant: str) -> tuple[pathlib.Path, pathlib.Path]:
        if variant in TINY_VARIANTS:
            return tiny_hf(variant), built(variant, quant)
        if (variant, quant) not in extra:
            hf = tmp_path_factory.mktemp("hf-llama48")
            write_tiny_model(hf, "llama", seed=5, config_overrides=LLAMA48)
            out = tmp_path_factory.mktemp("q4") / f"{variant}-{quant}"
            opts = BuildOptions("llama", str(hf), quant, out=out, progress=False)
            extra[(variant, quant)] = (hf, build(opts).out)
        return extra[(variant, quant)]

    return get


Q4_VARIANTS = ["qwen2-untied", "llama-tied-llama3", "llama48"]


@pytest.mark.parametrize("variant", Q4_VARIANTS)
def test_q4f32_1_matches_transformers_on_dequantized_weights(
    variant: str, q4_artifact: Callable[[str, str], tuple[pathlib.Path, pathlib.Path]]
) -> None:
    hf, artifact = q4_artifact(variant, "q4f32_1")
    rt = Runtime(artifact)
    ids = rt.encode_chat(PROMPT)
    hidden = rt.get_last_hidden(rt.embed(ids))
    rt.reset()
    prefill = rt.prefill(rt.embed(ids))
    decode = rt.decode(rt.embed([11]))
    ref_hidden, ref_logits = forward(reference_model(hf, artifact), ids + [11])
    errors = {
        "hidden": np.abs(hidden - ref_hidden[: len(ids)]).max(),
        "prefill": np.abs(prefill - ref_logits[len(ids) - 1]).max(),
        "decode": np.abs(decode - ref_logits[len(ids)]).max(),
    }
    print(f"{variant}: max |q4f32_1 - reference| = {errors}")
    assert max(errors.values()) < F32_TOL, errors


@pytest.mark.parametrize("variant", Q4_VARIANTS)
def test_q4f32_1_sixteen_greedy_tokens_identical(
    variant: str, q4_artifact: Callable[[str, str], tuple[pathlib.Path, pathlib.Path]]
) -> None:
    hf, artifact = q4_artifact(variant, "q4f32_1")
    rt = Runtime(artifact)
    ids = rt.encode_chat(PROMPT)
    result = rt.generate(prompt_ids=ids, max_new_tokens=16, greedy=True, stop_token_ids=[])
    assert result.output_ids == greedy(reference_model(hf, artifact), ids, 16)


def test_q4f32_1_portable_library_matches_reference_too(
    q4_artifact: Callable[[str, str], tuple[pathlib.Path, pathlib.Path]],
    tmp_path: pathlib.Path,
) -> None:
    # Builds default to this machine's CPU (AVX2 + FMA here); --cpu portable compiles the same
    # kernels for SSE2, where LLVM emits other code: held to the same reference.
    from mlcpatch.build.pipeline import BuildOptions, build

    hf, native = q4_artifact("qwen2-untied", "q4f32_1")
    out = tmp_path / "portable"
    build(BuildOptions("qwen2", str(hf), "q4f32_1", cpu="portable", out=out, progress=False))
    assert json.loads((out / "manifest.json").read_text())["options"]["cpu"] is None
    rt = Runtime(out)
    ids = rt.encode_chat(PROMPT)
    prefill = rt.prefill(rt.embed(ids))
    decode = rt.decode(rt.embed([11]))
    _, ref_logits = forward(reference_model(hf, native), ids + [11])
    errors = {
        "prefill": np.abs(prefill - ref_logits[len(ids) - 1]).max(),
        "decode": np.abs(decode - ref_logits[len(ids)]).max(),
    }
    assert max(errors.values()) < F32_TOL, errors
    result = rt.generate(prompt_ids=ids, max_new_tokens=16, greedy=True, stop_token_ids=[])
    assert result.output_ids == greedy(reference_model(hf, native), ids, 16)


def test_q4f16_1_near_dequantized_reference(
    q4_artifact: Callable[[str, str], tuple[pathlib.Path, pathlib.Path]],
) -> None:
    hf, artifact = q4_artifact("qwen2-untied", "q4f16_1")
    rt = Runtime(artifact)
    assert rt.dtype == "float16"
    ids = rt.encode_chat(PROMPT)
    hidden = rt.get_last_hidden(rt.embed(ids))
    rt.reset()
    logits = rt.prefill(rt.embed(ids))
    ref_hidden, ref_logits = forward(reference_model(hf, artifact), ids)
    errors = (np.abs(hidden - ref_hidden).max(), np.abs(logits - ref_logits[-1]).max())
    print(f"q4f16_1: max |error| hidden {errors[0]}, logits {errors[1]}")
    assert np.abs(hidden - ref_hidden).max() < F16_TOL
    assert np.linalg.norm(hidden - ref_hidden) / np.linalg.norm(ref_hidden) < F16_RELATIVE_TOL
    assert np.abs(logits - ref_logits[-1]).max() < F16_TOL


@pytest.mark.parametrize("quant", ["q4f32_1", "q4f16_1"])
def test_shards_hold_only_packed_matrices(
    quant: str,
    q4_artifact: Callable[[str, str], tuple[pathlib.Path, pathlib.Path]],
    built: Callable[..., pathlib.Path],
) -> None:
    _, artifact = q4_artifact("qwen2-untied", quant)
    records = read_shards(artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    cache = json.loads((artifact / "tensor-cache.json").read_text())
    order = [r["name"] for shard in cache["records"] for r in shard["records"]]
    assert order == manifest["param_names"] == cache["metadata"]["param_names"]
    scale_dtype = "float32" if quant == "q4f32_1" else "float16"
    for name, array in records.items():
        if name.endswith(".q_weight"):
            assert array.dtype == np.uint32
        elif name.endswith(".q_scale"):
            assert array.dtype == np.dtype(scale_dtype)
        else:  # norms and biases stay in the model dtype, and are vectors
            assert array.ndim == 1 and array.dtype == np.dtype(scale_dtype), name
    # Every matrix costs 4 bits per weight plus one scale per 32 (this model's inputs are
    # multiples of 32): 5 bits with float32 scales, 4.5 with float16 ones.
    bits = 4 + (32 if quant == "q4f32_1" else 16) / 32
    for name, words in records.items():
        if name.endswith(".q_weight"):
            scales = records[name.removesuffix("q_weight") + "q_scale"]
            n, k = words.shape[0], scales.shape[1] * 32
            assert (words.nbytes + scales.nbytes) * 8 == bits * n * k, name
    # Against q0f32 (32 bits a weight), the whole artifact's weights shrink to ~5/32 or ~4.5/32
    # (the norm and bias vectors are ~0.4% of this tiny model's parameters).
    q0 = json.loads((built("qwen2-untied", "q0f32") / "tensor-cache.json").read_text())
    ratio = cache["metadata"]["ParamBytes"] / q0["metadata"]["ParamBytes"]
    assert ratio < bits / 32 * 1.05, ratio


@pytest.mark.heavy
def test_cli_builds_q4f32_1(tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path) -> None:
    from mlcpatch.cli import main

    out = tmp_path / "cli-q4"
    args = ["build", "--arch", "qwen2", "--model", str(tiny_hf("qwen2-untied"))]
    result = CliRunner().invoke(main, [*args, "--quant", "q4f32_1", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    rt = Runtime(out)
    assert rt.config["quantization"] == "q4f32_1"
    assert rt.manifest.options["quantization"] == "q4f32_1"
    assert len(rt.generate(prompt_ids=[1, 2, 3], max_new_tokens=4, greedy=True).output_ids) >= 1


@pytest.mark.heavy
def test_bench_compare_reports_each_folder_at_the_asked_context(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path, capsys: Any
) -> None:
    """`python -m mlcpatch.build.quantization.bench --compare`: both folders measured, with the
    context and prompt length asked for; the first folder is the ratios' base."""
    from mlcpatch.build.quantization import bench

    q0, q4 = built("qwen2-untied", "q0f32"), built("qwen2-untied", "q4f32_1")
    out = tmp_path / "compare.json"
    bench.main(
        ["--compare", f"f32={q0}", f"q4={q4}", "--rounds", "1", "--steps", "2"]
        + ["--context", "40", "--prefill-tokens", "9", "--json", str(out)]
    )
    report = json.loads(out.read_text())
    assert (report["decode_context"], report["prefill_tokens"], report["rounds"]) == (40, 9, 1)
    assert set(report["folders"]) == {"f32", "q4"}
    assert report["folders"]["f32"]["decode_vs_f32"] == 1.0
    for item in report["folders"].values():
        assert item["decode_tokens_per_s"] > 0 and item["prefill_tokens_per_s"] > 0
    assert "after 40 positions" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--compare", f"f32={q0}", "--context", "0"])
