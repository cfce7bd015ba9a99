"""Exporting a model definition to Relax and compiling it for one target."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from mlcpatch.build.targets import TargetSpec

COMPILE_STEPS = 3  # export, build, write: what on_step is called for


def export_model(model: Any, target: Any) -> tuple[Any, list[tuple[str, tuple[int, ...], str]]]:
    """(IRModule, [(param name, shape, dtype)]) of ``model``.

    Export runs inside ``with target`` because our PagedKVCache.create_generic resolves the
    target's attention kernels at export time.
    """
    with target:
        mod, named_params = model.export_tvm(spec=model.get_default_spec())
    params = [(name, tuple(int(d) for d in p.shape), str(p.dtype)) for name, p in named_params]
    return mod, params


def compile_library(
    model: Any,
    spec: TargetSpec,
    out_path: pathlib.Path,
    on_step: Callable[[], None] = lambda: None,
) -> None:
    """Export ``model``, compile it for ``spec`` and write the library to ``out_path``."""
    from tvm import relax

    target = spec.make_target()
    mod, _ = export_model(model, target)
    on_step()
    with target:  # legalization in prepare may ask the target
        prepared = spec.prepare(mod)
    executable = relax.build(prepared, target=target)
    on_step()
    spec.export(executable, out_path)
    on_step()
