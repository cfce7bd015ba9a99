"""Mapping HF checkpoint tensors onto our parameters and streaming them into shards."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from mlcpatch.build.hf_weights import HFWeights
from mlcpatch.build.quantization import q4_format
from mlcpatch.build.quantization.q4_format import QuantizedWeight
from mlcpatch.build.shards import TensorCacheWriter
from mlcpatch.errors import MlcpatchError
from mlcpatch.models.registry import ArchInfo


class WeightMismatchError(MlcpatchError, ValueError):
    """The checkpoint does not fit the model the config describes."""


@dataclasses.dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple[int, ...]
    dtype: str
    sources: tuple[str, ...]  # HF tensors concatenated along axis 0 (one = plain copy)
    # Set for a weight the model holds 4-bit: it is written as quant.q_weight + quant.q_scale.
    quant: QuantizedWeight | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The parameter(s) of the exported model this plan writes, in export order."""
        return (self.quant.q_weight, self.quant.q_scale) if self.quant else (self.name,)


Expected = list[tuple[str, tuple[int, ...], str]]


def _unquantized_view(
    expected: Expected, quantized: Mapping[str, QuantizedWeight]
) -> list[tuple[str, tuple[int, ...], str, QuantizedWeight | None]]:
    """The exported parameters with each (q_weight, q_scale) pair folded back into the weight
    it stands for, so checkpoint tensors are matched against the unquantized shapes."""
    by_q_weight = {q.q_weight: q for q in quantized.values()}
    by_q_scale = {q.q_scale: q for q in quantized.values()}
    exported = {name: (tuple(shape), dtype) for name, shape, dtype in expected}
    view: list[tuple[str, tuple[int, ...], str, QuantizedWeight | None]] = []
    for q in quantized.values():
        q_shape, s_shape = q4_format.quantized_shapes(q.shape)
        want = {q.q_weight: (q_shape, "uint32"), q.q_scale: (s_shape, q.scale_dtype)}
        for name, spec in want.items():
            if exported.get(name) != spec:
                raise WeightMismatchError(
                    f"the quantized model exports {name} as {exported.get(name)}, "
                    f"expected {spec} for a {list(q.shape)} weight"
                )
    for name, shape, dtype in expected:
        if name in by_q_scale:
            continue  # written together with its q_weight
        q = by_q_weight.get(name)
        if q is None:
            view.append((name, tuple(shape), dtype, None))
        else:
            view.append((q.weight, q.shape, q.scale_dtype, q))
    return view


def _sources_for(arch: ArchInfo, name: str) -> tuple[str, ...]:
    for fused in arch.fused_weights:
        if name.endswith("." + fused.target):
            prefix = name[: -len(fused.target)]
            return tuple(prefix + s for s in fused.sources)
    return (name,)


def plan_params(
    arch: ArchInfo,
    expected: Expected,
    weights: HFWeights,
    tie_word_embeddings: bool,
    quantized: Mapping[str, QuantizedWeight] | None = None,
) -> list[ParamPlan]:
    """Match every parameter of the exported model to checkpoint tensors, checking shapes.

    Fails on missing tensors, on shapes that disagree with the config, and on checkpoint tensors
    nothing uses (a config with fewer layers than the weights would otherwise build silently).
    ``quantized`` (from group_quant.quantize_model) names the weights the model holds 4-bit.
    """
    plans: list[ParamPlan] = []
    used: set[str] = set()
    missing: list[str] = []
    for name, shape, dtype, quant in _unquantized_view(expected, quantized or {}):
        sources = _sources_for(arch, name)
        absent = [s for s in sources if s not in weights]
        if absent:
            missing.extend(absent)
            continue
        shapes = [weights.shape(s) for s in sources]
        combined = (sum(s[0] for s in shapes), *shapes[0][1:]) if shapes[0] else ()
        if any(s[1:] != shapes[0][1:] for s in shapes) or tuple(combined) != tuple(shape):
            raise WeightMismatchError(
                f"config and weights disagree: {name} should be {list(shape)} but the checkpoint "
                f"gives {' + '.join(str(list(s)) for s in shapes)} ({', '.join(sources)})"
            )
        used.update(sources)
        plans.append(ParamPlan(name, tuple(shape), dtype, sources, quant))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise WeightMismatchError(
            f"checkpoint lacks tensor(s) the model needs: {', '.join(missing[:5])}{more}"
        )
    ignored = tuple(arch.ignored_weight_suffixes)
    unused = [
        n
        for n in weights.names()
        if n not in used
        and not n.endswith(ignored)
        and not (tie_word_embeddings and n == "lm_head.weight")
    ]
    if unused:
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        raise WeightMismatchError(
            f"config and weights disagree: checkpoint tensor(s) unused by the model: "
            f"{', '.join(unused[:5])}{more}"
        )
    # The shards' order is the export order; a quantized pair out of place would shift them.
    if exported_names(plans) != [name for name, _, _ in expected]:
        raise WeightMismatchError("quantized parameters are not exported as q_weight, q_scale")
    return plans


def iter_converted(
    plans: list[ParamPlan], weights: HFWeights
) -> Iterator[tuple[ParamPlan, list[tuple[str, np.ndarray]]]]:
    """Yield each plan with its (our name, array) outputs, reading one plan's sources at a time.

    Plain weights come out in the model dtype; quantized ones are quantized from float32 (not
    from the model dtype, which for q4f16_1 would round every weight twice).
    """
    for plan in plans:
        dtype = np.float32 if plan.quant else plan.dtype
        parts = [weights.read(s).astype(dtype, copy=False) for s in plan.sources]
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if not np.isfinite(array).all():
            raise WeightMismatchError(f"{plan.name}: non-finite values after conversion")
        if plan.quant is None:
            yield plan, [(plan.name, array)]
            continue
        try:
            q_weight, q_scale = q4_format.quantize(array, plan.quant.scale_dtype)
        except q4_format.QuantizeError as exc:
            raise WeightMismatchError(f"{plan.name}: {exc}") from exc
        yield plan, [(plan.quant.q_weight, q_weight), (plan.quant.q_scale, q_scale)]


def write_params(
    plans: list[ParamPlan],
    weights: HFWeights,
    out_dir: pathlib.Path,
    progress: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Convert and shard every parameter into ``out_dir``; returns the tensor-cache.json path.

    One plan in memory at a time: a quantized weight is quantized as soon as it is read.
    """
    writer = TensorCacheWriter(out_dir)
    for plan, outputs in iter_converted(plans, weights):
        for name, array in outputs:
            writer.add(name, array)
        if progress is not None:
            progress(plan.name)
    # Record order is the exported parameter order, which the packed-params functions expect.
    return writer.finish({"param_names": exported_names(plans)})


def exported_names(plans: list[ParamPlan]) -> list[str]:
    """The exported model's parameter names, in its order."""
    return [name for plan in plans for name in plan.outputs]
