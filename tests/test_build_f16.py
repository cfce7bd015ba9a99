"""q0f16 builds: half-size float16 shards and outputs close to transformers' float32 ones.

Tolerance: float16 keeps 11 significant bits, so a value of magnitude 2..4 (the range of these
tiny models' final-norm hidden states) is rounded to steps of 2**-9 ~= 2e-3. Every matmul
output, residual add, norm and attention result is rounded like that, about a dozen times per
layer. Measured on the three tiny variants of conftest.py when matmuls also summed in float16:
hidden max-abs error 0.015-0.048 (about 1% of the largest |hidden|), logits 0.029-0.047 (with
AVX2 + FMA the CPU kernels now sum in float32: smaller errors, q4f16_1's logits 0.028 ->
0.009). The bounds below are 1.7x the worst measured value, and far below what a wrong weight
mapping or RoPE gives (errors > 1).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import numpy as np
import pytest
import torch

from mlcpatch.runtime import Runtime

pytestmark = pytest.mark.heavy

F16_HIDDEN_TOL = 0.08
F16_LOGITS_TOL = 0.08
F16_RELATIVE_TOL = 0.02  # Frobenius norm of the error over that of the reference


def test_q0f16_matches_transformers_within_f16_tolerance(
    built: Callable[..., pathlib.Path], tiny_hf: Callable, hf_model: Callable
) -> None:
    rt = Runtime(built("qwen2-untied", "q0f16"))
    assert rt.dtype == "float16"
    ids = rt.encode_chat("What is two plus two? Think step by step.")
    hidden = rt.get_last_hidden(rt.embed(ids))
    rt.reset()
    logits = rt.prefill(rt.embed(ids))
    with torch.no_grad():
        out = hf_model(tiny_hf("qwen2-untied"))(torch.tensor([ids]), output_hidden_states=True)
    ref_hidden = out.hidden_states[-1][0].numpy()
    ref_logits = out.logits[0, -1].numpy()
    assert hidden.dtype == np.float32 and hidden.shape == ref_hidden.shape
    assert np.abs(hidden - ref_hidden).max() < F16_HIDDEN_TOL
    assert np.linalg.norm(hidden - ref_hidden) / np.linalg.norm(ref_hidden) < F16_RELATIVE_TOL
    assert np.abs(logits - ref_logits).max() < F16_LOGITS_TOL


def test_q0f16_shards_are_float16(built: Callable[..., pathlib.Path]) -> None:
    f16 = json.loads((built("qwen2-untied", "q0f16") / "tensor-cache.json").read_text())
    f32 = json.loads((built("qwen2-untied", "q0f32") / "tensor-cache.json").read_text())
    dtypes = {r["dtype"] for shard in f16["records"] for r in shard["records"]}
    assert dtypes == {"float16"}
    assert f16["metadata"]["ParamBytes"] * 2 == f32["metadata"]["ParamBytes"]
    assert f16["metadata"]["ParamSize"] == f32["metadata"]["ParamSize"]
