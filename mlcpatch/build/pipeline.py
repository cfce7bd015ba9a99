"""The build pipeline: model source -> patched definition -> shards + library -> artifact folder."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

from mlcpatch.artifact import CHAT_CONFIG, TENSOR_CACHE, sha256_file, write_manifest
from mlcpatch.build.artifact import (
    OutputExistsError,
    chat_config,
    copy_tokenizer,
    staging_dir,
    tool_versions,
)
from mlcpatch.build.compile import COMPILE_STEPS, compile_library, export_model
from mlcpatch.build.convert import ParamPlan, exported_names, plan_params, write_params
from mlcpatch.build.errors import BuildError
from mlcpatch.build.hashing import sha256_json
from mlcpatch.build.hf_weights import HFWeights
from mlcpatch.build.model_module import import_model_file, instantiate
from mlcpatch.build.patch_step import patch_builtin
from mlcpatch.build.quantization.modes import Quantization, get_quantization
from mlcpatch.build.quantization.q4_format import QuantizedWeight, QuantizeError
from mlcpatch.build.quiet import messages_to
from mlcpatch.build.source import ResolvedSource, resolve_source
from mlcpatch.build.step_cache import StepCache, cache_root
from mlcpatch.build.targets import TargetSpec, parse_targets
from mlcpatch.models.registry import ArchInfo, get_arch

# Bump when a step's output changes for the same inputs, so stale cache entries stop matching.
CONVERT_VERSION = 2
COMPILE_VERSION = 4


@dataclasses.dataclass
class BuildOptions:
    arch: str
    model: str
    quantization: str = "q0f32"
    targets: str = "llvm"
    out: pathlib.Path | None = None
    name: str | None = None
    context_window_size: int | None = None
    prefill_chunk_size: int | None = None
    conv_template: str | None = None
    overwrite: bool = False
    use_cache: bool = True
    progress: bool = True
    verbose: bool = False  # TVM's own messages on the terminal, not in the build log
    cpu: str | None = None  # --cpu: LLVM -mcpu of the llvm library (None: native; "portable")


@dataclasses.dataclass
class BuildResult:
    out: pathlib.Path
    name: str
    seconds: dict[str, float]
    reused: list[str]  # steps taken from the cache


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - start, 3)


def _bar(opts: BuildOptions, total: int, desc: str, unit: str, terminal: TextIO) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not opts.progress, file=terminal)


def build_log(name: str) -> pathlib.Path:
    """Where a build without --verbose keeps what TVM printed (the last build of ``name``)."""
    return cache_root() / "logs" / f"{name}.log"


def _check_model_type(arch: ArchInfo, hf_config: dict[str, Any]) -> None:
    model_type = hf_config.get("model_type")
    if model_type not in arch.hf_model_types:
        raise BuildError(
            f"the model's config.json says model_type={model_type!r}, which is not the "
            f"{arch.name!r} architecture (expects {', '.join(arch.hf_model_types)})"
        )


def _config_dict(hf_config: dict[str, Any], opts: BuildOptions) -> dict[str, Any]:
    config = dict(hf_config)
    if opts.context_window_size:
        config["context_window_size"] = opts.context_window_size
    if opts.prefill_chunk_size:
        config["prefill_chunk_size"] = opts.prefill_chunk_size
    return config


def _convert(
    opts: BuildOptions,
    source: ResolvedSource,
    plans: list[ParamPlan],
    weights: HFWeights,
    quant: Quantization,
    stage: pathlib.Path,
    reused: list[str],
    terminal: TextIO,
) -> None:
    key = sha256_json(
        {
            "step": "convert",
            "version": CONVERT_VERSION,
            "source_files": source.origin_files,
            "quantization": quant.name,
            "q4_format": quant_code_sha256()["q4_format.py"] if quant.quantized else None,
            "plans": [dataclasses.asdict(p) for p in plans],
        }
    )
    cache = StepCache("convert", enabled=opts.use_cache)
    if cache.restore(key, stage) is not None:
        reused.append("convert")
        return
    with _bar(opts, len(plans), "convert", "tensor", terminal) as bar:
        write_params(plans, weights, stage, progress=lambda _name: bar.update(1))
    shard_files = sorted(stage.glob("params_shard_*.bin")) + [stage / TENSOR_CACHE]
    cache.store(key, {p.name: p for p in shard_files})


def quant_code_sha256() -> dict[str, str]:
    """sha256 of the files that decide 4-bit shards and kernels: a cache key that cannot go
    stale the way a hand-bumped version number can."""
    here = pathlib.Path(__file__).resolve().parent / "quantization"
    return {name: sha256_file(here / name) for name in ("q4_format.py", "group_quant.py")}


def cpu_code_sha256() -> dict[str, str]:
    """sha256 of the files that decide the CPU library's kernels beyond the model: its target,
    the Relax rewrites before the build, the TIR schedules and hand-written kernels, and the KV
    cache that installs the attention ones."""
    here = pathlib.Path(__file__).resolve().parent
    files = [
        here / name
        for name in ("targets.py", "cpu_schedule.py", "cpu_kernels.py", "cpu_attention.py")
    ]
    files.append(here.parent / "models" / "kv_cache.py")
    return {path.name: sha256_file(path) for path in files}


def _quantize(model: Any, quant: Quantization) -> dict[str, QuantizedWeight]:
    """Swap the model's Linear/Embedding layers for 4-bit ones (group quantization); which
    weights became which parameters. Nothing to do for q0 builds."""
    if not quant.quantized:
        return {}
    from mlcpatch.build.quantization.group_quant import quantize_model  # imports tvm

    try:
        return quantize_model(model, quant.scale_dtype)
    except QuantizeError as exc:
        raise BuildError(f"{quant.name}: {exc}") from exc


def _compile(
    opts: BuildOptions,
    model: Any,
    quant: Quantization,
    spec: TargetSpec,
    patch_status: dict[str, Any],
    config: dict[str, Any],
    lib_path: pathlib.Path,
    reused: list[str],
    terminal: TextIO,
) -> None:
    from importlib import metadata

    from tvm import error as tvm_error

    key = sha256_json(
        {
            "step": "compile",
            "version": COMPILE_VERSION,
            "tvm": metadata.version("apache-tvm"),
            "target": spec.name,
            "target_options": str(spec.make_target()),
            "model_file_sha256": patch_status["patched_sha256"],
            "config": config,
            # The config's dtype does not tell q0f32 from q4f32_1: the kernels differ.
            "quantization": quant.name,
            "group_quant": quant_code_sha256() if quant.quantized else None,
            # The CPU kernels' schedules (cpu_schedule.py) decide llvm and wasm libraries' code.
            "cpu_code": cpu_code_sha256() if spec.name in ("llvm", "wasm") else None,
            # Toolchain, shader math and link flags decide a .wasm's bytes beyond TVM's version
            # (the field keeps the name it had when only WebGPU builds linked a .wasm).
            "webgpu": spec.identity(),
        }
    )
    cache = StepCache(f"compile-{spec.name}", enabled=opts.use_cache)
    if cache.restore_file(key, "lib", lib_path):
        reused.append(f"compile-{spec.name}")
        return
    with _bar(opts, COMPILE_STEPS, f"compile {spec.name}", "step", terminal) as bar:
        try:
            compile_library(model, spec, lib_path, on_step=lambda: bar.update(1))
        except tvm_error.InternalError as exc:
            # The one line names what the user can change; TVM's whole message goes above it.
            detail = str(exc).strip()
            raise BuildError(_compile_failure(spec.name, config, exc), detail=detail) from exc
    cache.store(key, {"lib": lib_path})


def _compile_failure(target: str, config: dict[str, Any], exc: BaseException) -> str:
    # TVM's internal checks name a compiler variable, not the model: say which target and
    # attention shape were being compiled, which is what a user can change.
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else type(exc).__name__
    shape = (
        f"head_dim {config.get('head_dim')}, {config.get('num_attention_heads')} query / "
        f"{config.get('num_key_value_heads')} key-value heads"
    )
    hint = ""
    if target != "llvm":
        hint = (
            f"; TVM's {target} attention kernels fail this way for small head_dims with GQA "
            "(seen: head_dim 16 with 3 or 4 query heads per key-value head), while real "
            "models (head_dim >= 64) build; a CPU (llvm) build takes any shape"
        )
    return f"TVM failed compiling the {target} library ({shape}): {detail}{hint}"


def _mcpu(targets: list[TargetSpec]) -> str | None:
    """The CPU the llvm library was compiled for (None: portable, the architecture's baseline)."""
    for spec in targets:
        if spec.name == "llvm":
            mcpu = spec.make_target().attrs.get("mcpu")
            return str(mcpu) if mcpu else None
    return None


def build(opts: BuildOptions) -> BuildResult:
    """Build the artifact folder described by ``opts``; raises BuildError (or a ValueError
    subclass from a step) with a one-line message. Nothing is left at ``out`` on failure."""
    seconds: dict[str, float] = {}
    reused: list[str] = []
    arch = get_arch(opts.arch)
    quant = get_quantization(opts.quantization)
    targets = parse_targets(opts.targets, opts.cpu)
    with _timed(seconds, "source"):
        source = resolve_source(opts.model, arch.name)
        hf_config = source.config()
        _check_model_type(arch, hf_config)
    # The artifact is named after --out when given, so files inside match the folder name.
    name = opts.name or (opts.out.name if opts.out else f"{source.name}-{quant.name}")
    out = opts.out or pathlib.Path("artifacts") / name
    if out.exists() and not opts.overwrite:
        raise OutputExistsError(str(out))
    weights = HFWeights(source.folder)

    log = None if opts.verbose else build_log(name)
    with staging_dir(out, opts.overwrite) as stage, messages_to(log) as terminal:
        with _timed(seconds, "patch"):
            patched, patch_status = patch_builtin(arch, stage / "source")
            module = import_model_file(patched)
        try:
            config, model = instantiate(
                arch, module, _config_dict(hf_config, opts), quant.model_dtype
            )
        except (ValueError, TypeError) as exc:
            raise BuildError(f"config.json does not describe a {arch.name} model: {exc}") from exc
        quantized = _quantize(model, quant)
        model_config = config.asdict()

        with _timed(seconds, "plan"):
            _, expected = export_model(model, targets[0].make_target())
            # Every target exports now, so one whose kernels refuse this model (a head_dim
            # TVM's GPU attention cannot tile, a sliding window WebGPU cannot honour) fails
            # in seconds instead of after converting weights and compiling the other targets.
            for spec in targets[1:]:
                export_model(model, spec.make_target())
            plans = plan_params(arch, expected, weights, config.tie_word_embeddings, quantized)
        with _timed(seconds, "convert"):
            _convert(opts, source, plans, weights, quant, stage, reused, terminal)

        libraries: dict[str, str] = {}
        for spec in targets:
            lib_name = f"{name}{spec.lib_suffix}"
            with _timed(seconds, f"compile-{spec.name}"):
                _compile(
                    opts,
                    model,
                    quant,
                    spec,
                    patch_status,
                    model_config,
                    stage / lib_name,
                    reused,
                    terminal,
                )
            libraries[spec.name] = lib_name

        tokenizer_files = copy_tokenizer(source.folder, stage)
        generation = None
        if (source.folder / "generation_config.json").is_file():
            generation = json.loads((source.folder / "generation_config.json").read_text())
        conv_template = opts.conv_template or arch.default_conv_template
        chat = chat_config(
            model_type=arch.name,
            arch=arch.name,
            quantization=quant.name,
            model_config=model_config,
            hf_config=hf_config,
            conv_template=conv_template,
            tokenizer_files=tokenizer_files,
            libraries=libraries,
            generation_config=generation,
        )
        (stage / CHAT_CONFIG).write_text(json.dumps(chat, indent=2) + "\n")
        write_manifest(
            stage,
            name=name,
            tools=tool_versions(),
            source={"spec": source.spec, "kind": source.kind, "files_sha256": source.origin_files},
            patch=patch_status,
            options={
                "arch": arch.name,
                "quantization": quant.name,
                "targets": [t.name for t in targets],
                "cpu": _mcpu(targets),
                "context_window_size": model_config["context_window_size"],
                "prefill_chunk_size": model_config["prefill_chunk_size"],
                "conv_template": conv_template,
            },
            libraries=libraries,
            param_names=exported_names(plans),
        )
    return BuildResult(out=out, name=name, seconds=seconds, reused=reused)
