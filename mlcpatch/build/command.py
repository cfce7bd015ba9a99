"""`mlcpatch build`, `mlcpatch generate` and `mlcpatch hidden`."""

from __future__ import annotations

import json
import pathlib

import click

from mlcpatch.errors import MlcpatchError
from mlcpatch.models.registry import BUILTIN_ARCHS


@click.command("build")
@click.option(
    "--arch",
    required=True,
    help=f"Architecture of the model ({', '.join(sorted(BUILTIN_ARCHS))}).",
)
@click.option(
    "--model",
    "model",
    default=None,
    help="HF model folder, GGUF file, hub id, or 'tiny-random' (a tiny random model made "
    "locally). Default: the arch recipe's model.",
)
@click.option(
    "--quant",
    "quantization",
    default=None,
    help="q0f32, q0f16, or 4-bit q4f32_1 / q4f16_1 (default: recipe's).",
)
@click.option(
    "--target",
    "targets",
    default=None,
    help="Comma-separated compile targets: llvm (native CPU), webgpu (browser GPU), wasm "
    "(browser CPU: what the browser runs without WebGPU) (default: the recipe's).",
)
@click.option(
    "--out",
    type=click.Path(path_type=pathlib.Path),
    default=None,
    help="Artifact folder to create (default: artifacts/<name>).",
)
@click.option(
    "--name",
    default=None,
    help="Artifact name (default: the --out folder name, else <model>-<quant>).",
)
@click.option("--context-window", "context_window_size", type=int, default=None)
@click.option("--prefill-chunk", "prefill_chunk_size", type=int, default=None)
@click.option(
    "--conv-template",
    default=None,
    help="Conversation template name (recorded; --backend mlc passes it to gen_config).",
)
@click.option(
    "--overwrite",
    "--force",
    "overwrite",
    is_flag=True,
    help="Replace an existing --out folder (it is only replaced once the new build succeeds).",
)
@click.option(
    "--cpu",
    default=None,
    metavar="NAME",
    help="The CPU the CPU (llvm) library is compiled for. Default 'native': this machine's "
    "(its own model when it has every instruction LLVM credits it with, else the best of "
    "x86-64-v4/v3/v2 it has): the fastest kernels, but other CPUs may lack its instructions "
    "(the runtime then refuses it). 'portable': the architecture's baseline (SSE2 on x86-64), "
    "for a library to share. Or an LLVM CPU name such as x86-64-v3 (AVX2 + FMA) or znver3.",
)
@click.option("--no-cache", is_flag=True, help="Redo every step instead of reusing cached ones.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Show TVM's own messages (C++ warnings, Python warnings) as it exports and compiles; "
    "without it they go to logs/<name>.log in the build cache and are shown only when the "
    "compile fails.",
)
@click.option(
    "--backend",
    type=click.Choice(["builtin", "mlc"]),
    default="builtin",
    show_default=True,
    help="builtin: our model definitions compiled with apache-tvm. mlc: an installed MLC-LLM "
    "(its model file patched, then `mlc_llm convert_weight/gen_config/compile`); targets "
    "llvm and webgpu; --arch is then an MLC-LLM model name.",
)
@click.option(
    "--keep-patch",
    is_flag=True,
    help="With --backend mlc: leave MLC-LLM's model file patched afterwards (default: revert it).",
)
def build_command(
    arch: str,
    model: str | None,
    quantization: str | None,
    targets: str | None,
    out: pathlib.Path | None,
    name: str | None,
    context_window_size: int | None,
    prefill_chunk_size: int | None,
    conv_template: str | None,
    overwrite: bool,
    cpu: str | None,
    no_cache: bool,
    quiet: bool,
    verbose: bool,
    backend: str,
    keep_patch: bool,
) -> None:
    """Build an artifact folder: patched model library + weight shards + tokenizer + manifest.

    \b
    The built-in definition of ARCH is copied into the build, patched (get_last_hidden,
    decode_last_hidden), compiled, and the weights converted into tensor-cache shards.
    Finished steps are cached by the sha256 of their inputs ($MLCPATCH_CACHE_DIR,
    default ~/.cache/mlcpatch). Example, with no download:
      mlcpatch build --arch qwen2 --model tiny-random --out artifacts/tiny-qwen2

    \b
    With --backend mlc, MLC-LLM's own definition of ARCH is patched in place (as by
    `mlcpatch patch ARCH --source mlc`), `mlc_llm convert_weight`, `gen_config` and `compile`
    (the `mlc_llm` command on PATH, else `python -m mlc_llm`) build the same artifact layout,
    and the patch is reverted afterwards, also on failure, unless --keep-patch:
      mlcpatch build --backend mlc --arch qwen2 --model DIR --quant q4f16_1 --target webgpu
    """
    from mlcpatch.build.errors import BuildOptionError
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.recipe import load_recipe
    from mlcpatch.models.registry import get_arch

    if keep_patch and backend != "mlc":
        raise click.UsageError("--keep-patch only applies to --backend mlc")
    if cpu is not None and backend == "mlc":
        raise click.UsageError("--cpu applies to --backend builtin (MLC-LLM picks its own target)")
    if backend == "builtin":
        get_arch(arch)
    recipe = load_recipe(arch)
    model = model or (recipe.model if recipe else None)
    if model is None:
        raise BuildOptionError(f"no --model given and no recipe for {arch!r} names a default")
    options = BuildOptions(
        arch=arch,
        model=model,
        quantization=quantization or (recipe.quantization if recipe else "q0f32"),
        targets=targets or (recipe.targets if recipe else "llvm"),
        out=out,
        name=name,
        context_window_size=context_window_size or (recipe.context_window_size if recipe else None),
        prefill_chunk_size=prefill_chunk_size or (recipe.prefill_chunk_size if recipe else None),
        conv_template=conv_template or (recipe.conv_template if recipe else None),
        overwrite=overwrite,
        use_cache=not no_cache,
        progress=not quiet,
        verbose=verbose,
        cpu=cpu,
    )
    if backend == "mlc":
        from mlcpatch.build.mlc.pipeline import build_mlc, mlc_options

        result = build_mlc(mlc_options(options, keep_patch=keep_patch))
    else:
        result = build(options)
    reused = f" (reused: {', '.join(result.reused)})" if result.reused else ""
    total = sum(result.seconds.values())
    click.echo(f"built {result.out} in {total:.1f}s{reused}")


def _runtime(artifacts: pathlib.Path) -> object:
    from mlcpatch.runtime import Runtime

    return Runtime(artifacts)


@click.command("generate")
@click.argument("artifacts", type=click.Path(path_type=pathlib.Path))
@click.option("--prompt", required=True, help="User message (the chat template is applied).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--greedy", is_flag=True, help="Always take the most likely token.")
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--json", "as_json", is_flag=True, help="Print prompt_ids, output_ids and text.")
def generate_command(
    artifacts: pathlib.Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    seed: int | None,
    as_json: bool,
) -> None:
    """Generate a reply to PROMPT with the artifact folder ARTIFACTS on the CPU."""
    runtime = _runtime(artifacts)
    result = runtime.generate(  # type: ignore[attr-defined]
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        seed=seed,
    )
    if as_json:
        payload = {
            "prompt_ids": result.prompt_ids,
            "output_ids": result.output_ids,
            "text": result.text,
        }
        click.echo(json.dumps(payload))
    else:
        click.echo(result.text)


@click.command("hidden")
@click.argument("artifacts", type=click.Path(path_type=pathlib.Path))
@click.option("--prompt", required=True, help="User message (the chat template is applied).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    required=True,
    help="Where to write the [seq_len, hidden] float32 array (.npy).",
)
def hidden_command(artifacts: pathlib.Path, prompt: str, out: pathlib.Path) -> None:
    """Save the last hidden states (after the final norm) of PROMPT's positions as .npy."""
    import numpy as np

    runtime = _runtime(artifacts)
    ids = runtime.encode_chat(prompt)  # type: ignore[attr-defined]
    hidden = runtime.get_last_hidden(runtime.embed(ids))  # type: ignore[attr-defined]
    try:
        np.save(out, hidden.astype(np.float32))
    except OSError as err:
        raise MlcpatchError(f"{out}: {err.strerror or err}") from err
    click.echo(f"wrote {out} {list(hidden.shape)}")
