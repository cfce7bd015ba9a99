"""Building model config dataclasses from a HF ``config.json`` dict (no tvm import)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from mlcpatch.errors import MlcpatchError

T = TypeVar("T", bound="ConfigBase")


class ModelConfigError(MlcpatchError, ValueError):
    """A model's config.json (or a build setting for it) that this build cannot honour."""


@dataclasses.dataclass
class ConfigBase:
    """Base of the model configs: known fields are set, the rest is kept in ``kwargs``."""

    @classmethod
    def from_dict(cls: type[T], source: dict[str, Any]) -> T:
        # HF's own "dtype"/"torch_dtype" is the checkpoint's storage type; ours comes from the
        # quantization mode, so it is never read from config.json.
        field_names = {f.name for f in dataclasses.fields(cls)} - {"kwargs", "dtype"}
        known = {k: v for k, v in source.items() if k in field_names}
        extra = {k: v for k, v in source.items() if k not in field_names}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in known
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ModelConfigError(f"config.json lacks required field(s): {', '.join(missing)}")
        return cls(**known, kwargs=extra)  # type: ignore[call-arg]

    def asdict(self) -> dict[str, Any]:
        """The config as a flat JSON-able dict (``kwargs`` dropped)."""
        out = dataclasses.asdict(self)
        out.pop("kwargs", None)
        return out


def context_within_window(
    context_window_size: int, explicit: bool, sliding_window: int | None, arch: str
) -> int:
    """The context window for a model whose attention window our build does not run.

    Models that apply RoPE inside the KV cache (Mistral, Qwen3) do not use TVM's window kernels:
    with any windowed layer the cache switches to inline RoPE, with a fixed base of 10000 on the
    windowed layers (paged_kv_cache.cc). So these builds attend to every cached position and keep
    the context within the window, where HF's window (keys with ``q - k < window``) excludes
    nothing and plain causal attention is exact. A derived context (from
    ``max_position_embeddings``) is clamped to the window; an explicit longer one is refused.
    """
    if sliding_window is None or sliding_window <= 0 or context_window_size <= sliding_window:
        return context_window_size
    if not explicit:
        return int(sliding_window)
    raise ModelConfigError(
        f"this {arch} model uses sliding-window attention (window {sliding_window} tokens) and "
        f"context_window_size {context_window_size} is longer: its build attends to every "
        f"cached position, so contexts beyond the window are not supported; use "
        f"--context-window-size {sliding_window} or less"
    )


def chunk_within_window(
    prefill_chunk_size: int, explicit: bool, sliding_window: int, arch: str
) -> int:
    """The prefill chunk size for a model run with TVM's per-layer window kernels (Gemma 3).

    Those kernels match transformers at any context length only when every prefill chunk is
    shorter than the window (measured: a chunk of the window's length or more gives NaN or wrong
    values after the window). A derived chunk size is lowered to window - 1; an explicit larger
    one is refused.
    """
    if sliding_window < 2:
        raise ModelConfigError(
            f"this {arch} model's sliding window ({sliding_window}) is too short"
        )
    if prefill_chunk_size < sliding_window:
        return prefill_chunk_size
    if not explicit:
        return sliding_window - 1
    raise ModelConfigError(
        f"prefill_chunk_size {prefill_chunk_size} is not shorter than this {arch} model's "
        f"sliding window ({sliding_window} tokens): the KV cache's window kernels are exact only "
        f"for shorter prefill chunks; use --prefill-chunk-size {sliding_window - 1} or less"
    )
