"""`mlcpatch train` and `mlcpatch links ...`: the trainer and link-file tools on the command line.

Several GPUs or nodes: `accelerate launch -m mlcpatch.training train ...` (mlcpatch/training/
__main__.py has examples); one process per GPU, each with its slice of every global batch.
"""

from __future__ import annotations

import pathlib
from typing import Any

import click

from mlcpatch.errors import Group, MlcpatchError
from mlcpatch.links.spec import VARIANTS


@click.command("train")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="TOML or JSON file with any of the options below (keys use _ or -).",
)
@click.option(
    "--tiny",
    is_flag=True,
    help="Built-in tiny random pair (Qwen2 h=32, Llama h=48) + sample data, ~1 min.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="HF folder or hub id, once per agent in order (or tiny:qwen2 / tiny:llama).",
)
@click.option(
    "--pattern",
    help="The loop's pattern to train for: a built-in name (sequential, mixture, distillation, "
    "deliberation) or a pattern .toml, as for `mlcpatch run`; --model once for all agents or "
    "once per agent. Without it: a chain planner -> [critic] -> solver, one agent per --model.",
)
@click.option(
    "--data",
    help="JSONL with question/answer, or a built-in question set (arithmetic, legs, gsm, "
    "choice: its train split, never the eval split).",
)
@click.option("--data-size", type=int, help="Questions drawn from a built-in set (default 2000).")
@click.option(
    "--target",
    type=click.Choice(["solution", "answer"]),
    help="What the last agent learns to write: each item's worked solution where the data has "
    "one (default; built-in sets do, JSONL files may give a 'solution' field), or the bare answer.",
)
@click.option("--max-new-tokens", type=int, help="Answer budget when validating (default 12).")
@click.option("--rounds", type=int, help="Rounds R of the whole pattern (default 2).")
@click.option("--latent-steps", type=int, help="Latent steps m per agent turn (default 4).")
@click.option("--variant", type=click.Choice(VARIANTS))
@click.option("--bottleneck", type=int, help="Width of the W1/W2 layer (default per variant).")
@click.option("--stage", type=click.Choice(["inner", "outer", "both"]))
@click.option("--inner-steps", type=int, help="Stage 1 optimiser steps (default 100).")
@click.option("--steps", type=int, help="Stage 2 optimiser steps (default 300).")
@click.option("--batch-size", type=int, help="Examples per step and process (default 8).")
@click.option("--grad-accum", type=int, help="Micro-batches per optimiser step.")
@click.option("--lr", type=float, help="Stage 2 peak learning rate.")
@click.option("--inner-lr", type=float, help="Stage 1 peak learning rate.")
@click.option("--init", help="closed-form (default), random, or a link file to start from.")
@click.option(
    "--train-inner-in-outer/--freeze-inner-in-outer",
    default=None,
    help="Whether stage 2 also updates inner links (default: frozen).",
)
@click.option(
    "--keep-best/--keep-last",
    "keep_best",
    default=None,
    help="End each stage with the links that validated best, the start included (default), "
    "or with the last step's.",
)
@click.option("--precision", type=click.Choice(["auto", "no", "bf16", "fp16"]))
@click.option("--base-dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option(
    "--grad-checkpointing/--no-grad-checkpointing",
    default=None,
    help="Recompute each agent turn in backward to save memory.",
)
@click.option("--eval-every", type=int, help="Validate every N steps (0: only at stage ends).")
@click.option("--save-every", type=int, help="Checkpoint every N steps (0: only at stage ends).")
@click.option(
    "--snapshots/--no-snapshots",
    default=None,
    help="Also write the links at every stage-2 validation to OUT/snapshots/step-N "
    "(a curve of held-out accuracy against steps: `mlcpatch eval --links` per snapshot).",
)
@click.option("--seed", type=int)
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (links-out).")
@click.option("--resume", is_flag=True, default=None, help="Continue from OUT/checkpoint.")
@click.option("--export-dtype", type=click.Choice(["f32", "f16"]))
@click.option(
    "--json/--no-json",
    "export_json",
    default=None,
    help="Also write recursivelink.json (default on).",
)
@click.option("--progress/--no-progress", default=None)
def train_command(
    config_file: pathlib.Path | None,
    tiny: bool,
    models: tuple[str, ...],
    pattern: str | None,
    **options: Any,
) -> None:
    """Train RecursiveLinks: stage 1 (inner warm-up) then stage 2 (the unrolled latent loop).

    Writes OUT/links.safetensors + OUT/links.json (and OUT/recursivelink.json), checkpoints in
    OUT/checkpoint, and a log in OUT/train_log.jsonl. Backbone weights stay frozen.
    """
    from mlcpatch.training.config import build_config, read_config_file, tiny_overrides
    from mlcpatch.training.trainer import train

    layers: list[dict[str, Any]] = []
    if config_file is not None:
        layers.append(read_config_file(config_file))
    if tiny:
        layers.append(tiny_overrides())
    cli = dict(options)
    if models:
        cli.update(models=list(models), agents=[])
    if pattern:
        cli["loop_pattern"] = pattern
    layers.append(cli)
    config = build_config(*layers)
    result = train(config, log=click.echo)
    losses = result.outer_losses or result.inner_losses
    if losses:
        window = max(1, len(losses) // 4)
        head = sum(losses[:window]) / window
        tail = sum(losses[-window:]) / window
        click.echo(f"loss {head:.4f} -> {tail:.4f} in {result.seconds:.1f}s")


@click.group("links", cls=Group)
def links_command() -> None:
    """Link files: convert between recursivelink.json and links.safetensors + links.json."""


@links_command.command("convert")
@click.argument("source", type=click.Path(exists=True, path_type=pathlib.Path))
@click.argument("target", type=click.Path(path_type=pathlib.Path))
@click.option(
    "--to",
    "fmt",
    type=click.Choice(["json", "binary"]),
    help="Output format (default: binary for folders/.safetensors/links.json, "
    "json for other .json names).",
)
@click.option(
    "--dtype",
    type=click.Choice(["f32", "f16"]),
    default="f32",
    show_default=True,
    help="Tensor type of binary output.",
)
def links_convert_command(
    source: pathlib.Path, target: pathlib.Path, fmt: str | None, dtype: str
) -> None:
    """Convert SOURCE to TARGET, validating every name and shape on the way."""
    from mlcpatch.links.files import convert_links

    try:
        written = convert_links(source, target, fmt=fmt, dtype=dtype)
    except OSError as err:
        # Readers report their own files; what is left is the target that cannot be written.
        raise MlcpatchError(f"{err.filename or target}: {err.strerror or err}") from err
    click.echo(f"wrote {written}")


@links_command.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=pathlib.Path))
def links_inspect_command(path: pathlib.Path) -> None:
    """Validate a link file and list its links."""
    from mlcpatch.links.files import load_links

    link_file = load_links(path)
    for agent in link_file.agents:
        click.echo(f"agent {agent.name}: hidden {agent.hidden_size} {agent.model}".rstrip())
    for spec in link_file.links:
        click.echo(
            f"{spec.name}: {spec.kind} {spec.source}->{spec.target} {spec.variant} "
            f"{spec.in_dim}->{spec.out_dim} hidden {spec.hidden} {spec.activation} "
            f"({spec.num_params():,} parameters)"
        )


@links_command.command("import-reference")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.argument("target", type=click.Path(path_type=pathlib.Path))
@click.option(
    "--from", "source_agent", default="agent", show_default=True, help="Agent the link reads from."
)
@click.option("--to", "target_agent", help="Receiving agent (outer links).")
@click.option("--adapter-type", help="Reference adapter type when the shapes cannot tell.")
@click.option("--dtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True)
def links_import_command(
    checkpoint: pathlib.Path,
    target: pathlib.Path,
    source_agent: str,
    target_agent: str | None,
    adapter_type: str | None,
    dtype: str,
) -> None:
    """Import a reference RecursiveMAS adapter state dict (.pt) as a link file."""
    from mlcpatch.links.files import output_format, save_links
    from mlcpatch.training.reference_import import import_reference

    link_file = import_reference(checkpoint, source_agent, target_agent, adapter_type)
    fmt = output_format(target)
    written = save_links(link_file, target, fmt=fmt, dtype=dtype if fmt == "binary" else "f32")
    click.echo(f"wrote {written}")
