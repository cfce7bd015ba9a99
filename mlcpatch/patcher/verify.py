"""The strongest check: import the patched definition and export it with TVM.

Only possible where the file's imports resolve, i.e. for the built-in definitions; MLC-LLM's own
files import mlc_llm, which needs its native library.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import uuid
from pathlib import Path

from mlcpatch.patcher.analyze import NEW_DECODE, NEW_PREFILL
from mlcpatch.patcher.core import Verifier
from mlcpatch.patcher.errors import PatchError


def exported_functions(path: Path, class_name: str, config: dict) -> list[str]:
    """Import `path` as a fresh module, build its model from `config`, export it with TVM, and
    return the names of the functions the IRModule holds."""
    module_name = f"_mlcpatch_verify_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PatchError(f"{path}: cannot be imported for verification")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        model_cls = getattr(module, class_name)
        config_cls = type(None)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and hasattr(value, "from_dict")
                and value.__name__.endswith("Config")
                and value.__module__ == module_name
            ):
                config_cls = value
        model = model_cls(config_cls.from_dict(config))  # type: ignore[attr-defined]
        model.to("float32")
        import tvm

        # The KV cache picks its kernels by target; any target will do for listing functions.
        with tvm.target.Target({"kind": "llvm"}):
            ir_module, _ = model.export_tvm(spec=model.get_default_spec())
        return sorted(gv.name_hint for gv in ir_module.get_global_vars())
    finally:
        sys.modules.pop(module_name, None)


def builtin_verifier(arch: str) -> Verifier:
    """A verifier for a built-in arch: the patched text must export both new functions."""

    def verify(path: Path, text: str, class_name: str) -> list[str]:
        from mlcpatch.models.registry import BUILTIN_ARCHS

        config = BUILTIN_ARCHS[arch].tiny_config()
        with tempfile.TemporaryDirectory(prefix="mlcpatch-verify-") as tmp:
            copy = Path(tmp) / path.name
            copy.write_text(text, encoding="utf-8")
            try:
                names = exported_functions(copy, class_name, config)
            except PatchError:
                raise
            except Exception as err:  # any failure here means the patched model is unusable
                raise PatchError(f"{path}: patched model does not export with TVM: {err}") from err
        missing = [n for n in (NEW_PREFILL, NEW_DECODE) if n not in names]
        if missing:
            raise PatchError(f"{path}: exported module lacks {', '.join(missing)}")
        return [n for n in names if n in (NEW_PREFILL, NEW_DECODE, "prefill", "decode")]

    return verify
