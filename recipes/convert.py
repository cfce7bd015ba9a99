"""Mapping HF checkpoint tensors onto our parameters and streaming them into shards."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from mlcpatch.models.registry import ArchInfo
from mlcpatch.recipes.hf_weights import HFWeights
from mlcpatch.recipes.shards import TensorCacheWriter


class WeightMismatchError(ValueError):
    """The checkpoint does not fit the model the config describes."""


@dataclasses.dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple[int, ...]
    dtype: str
    sources: tuple[str, ...]  # HF tensors concatenated along axis 0 (one = plain copy)


def _sources_for(arch: ArchInfo, name: str) -> tuple[str, ...]:
    for fused in arch.fused_weights:
        if name.endswith("." + fused.target):
            prefix = name[: -len(fused.target)]
            return tuple(prefix + s for s in fused.sources)
    return (name,)


def plan_params(
    arch: ArchInfo,
    expected: list[tuple[str, tuple[int, ...], str]],
    weights: HFWeights,
    tie_word_embeddings: bool,
) -> list[ParamPlan]:
    """Match every parameter of the exported model to checkpoint tensors, checking shapes.

    Fails on missing tensors, on shapes that disagree with the config, and on checkpoint tensors
    nothing uses (a config with fewer layers than the weights would otherwise build silently).
    """
    plans: list[ParamPlan] = []
    used: set[str] = set()
    missing: list[str] = []
    for name, shape, dtype in expected:
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
        plans.append(ParamPlan(name, tuple(shape), dtype, sources))
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
    return plans


def iter_converted(plans: list[ParamPlan], weights: HFWeights) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (our name, array in the model dtype), reading one parameter's sources at a time."""
    for plan in plans:
        parts = [weights.read(s).astype(plan.dtype, copy=False) for s in plan.sources]
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if not np.isfinite(array).all():
            raise WeightMismatchError(f"{plan.name}: non-finite values after conversion")
        yield plan.name, array


def write_params(
    plans: list[ParamPlan],
    weights: HFWeights,
    out_dir: pathlib.Path,
    progress: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Convert and shard every parameter into ``out_dir``; returns the tensor-cache.json path."""
    writer = TensorCacheWriter(out_dir)
    for name, array in iter_converted(plans, weights):
        writer.add(name, array)
        if progress is not None:
            progress(name)
    # Record order is the exported parameter order, which the packed-params functions expect.
    return writer.finish({"param_names": [p.name for p in plans]})
