"""`mlcpatch patch` and `mlcpatch archs`."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from mlcpatch.patcher.core import CANNOT_PATCH, check_file, patch_file, revert_file
from mlcpatch.patcher.errors import PatchError
from mlcpatch.patcher.resolve import known_archs, resolve
from mlcpatch.patcher.verify import builtin_verifier

SOURCES = click.Choice(["auto", "mlc", "builtin"])


@click.command("patch")
@click.argument("target")
@click.option(
    "--check",
    "mode",
    flag_value="check",
    help="Report patch status; change nothing. "
    "Exit 0: patched, 1: not patched, 2: cannot be patched.",
)
@click.option(
    "--revert",
    "mode",
    flag_value="revert",
    help="Remove the patch, restoring the original file byte for byte.",
)
@click.option(
    "--diff",
    "show_diff",
    is_flag=True,
    help="Print the unified diff that patching (or --revert) would make; change nothing.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --revert: remove the marked blocks even if the file was edited since.",
)
@click.option(
    "--class", "class_name", metavar="NAME", help="Model class to patch when a file holds several."
)
@click.option(
    "--source",
    type=SOURCES,
    default="auto",
    show_default=True,
    help="Where an arch name is looked up: the installed MLC-LLM package, the built-in "
    "definitions, or auto (MLC-LLM when installed, else built-in).",
)
def patch_command(
    target: str,
    mode: str | None,
    show_diff: bool,
    force: bool,
    class_name: str | None,
    source: str,
) -> None:
    """Add get_last_hidden / decode_last_hidden to an MLC-style model definition.

    TARGET is a model file (e.g. .../mlc_llm/model/qwen2/qwen2_model.py) or an arch name
    (qwen2, llama, gemma2, ...; see `mlcpatch archs`). Arch names resolve to the installed
    MLC-LLM package's file (found without importing mlc_llm) or to the built-in definitions.

    \b
    The patch reads the code with `ast`: it finds the class whose get_default_spec() lists
    prefill/decode (following imports to a parent class in another module if needed), sees how
    prefill/decode run the decoder stack, and inserts two methods plus their spec entries as
    marked blocks. Every other line stays byte-identical. Patching twice is a no-op.

    \b
    Writing: a new file is written next to FILE and renamed over it (then the folder is
    fsynced). It keeps FILE's permission bits and, when run as root, its owner and group (a
    note says when the owner could not be kept). Other hard links to FILE keep the old
    content (a note says so). The previous content is kept as FILE.mlcpatch-bak, with the
    same permission bits. Files with a UTF-8 BOM keep it; files with lone-CR (old Mac) line
    endings or over 2 MiB are refused.

    \b
    Examples:
      mlcpatch patch qwen2 --diff
      mlcpatch patch path/to/llama_model.py
      mlcpatch patch qwen2 --check; echo $?
      mlcpatch patch qwen2 --revert
    """
    if force and mode != "revert":
        raise click.UsageError("--force only applies to --revert")
    found = resolve(target, source)
    path = found.path
    name = class_name or found.class_name
    if mode == "check":
        if show_diff:
            raise click.UsageError("--check and --diff cannot be combined")
        try:
            result = check_file(path, class_name=name)
        except Exception:  # a bug: its traceback, and never exit 1, which reads "not patched"
            traceback.print_exc()
            sys.exit(CANNOT_PATCH)
        click.echo(result.message, err=result.code == CANNOT_PATCH)
        sys.exit(result.code)
    try:
        if mode == "revert":
            outcome = revert_file(path, force=force, dry_run=show_diff)
        else:
            verifier = builtin_verifier(found.arch) if found.origin == "built-in" else None
            outcome = patch_file(path, class_name=name, dry_run=show_diff, verifier=verifier)
    except OSError as err:
        raise PatchError(f"{path}: {err.strerror or err}") from err
    if show_diff:
        click.echo(outcome.diff(), nl=False)
        return
    detail = f" ({outcome.class_name}, {outcome.mode})" if outcome.class_name else ""
    click.echo(f"{outcome.action}: {path}{detail}")
    if outcome.backup is not None:
        click.echo(f"backup: {outcome.backup}")
    for note in outcome.notes:
        click.echo(f"note: {note}")


@click.command("archs")
@click.option(
    "--source", type=SOURCES, default="auto", show_default=True, help="Which definitions to list."
)
@click.option("--status", is_flag=True, help="Also show whether each file is patched.")
def archs_command(source: str, status: bool) -> None:
    """List the architectures `mlcpatch patch ARCH` understands, with their files."""
    archs = known_archs(source)
    if not archs:
        click.echo("no architectures found")
        return
    width = max(len(name) for name in archs)
    for name in sorted(archs):
        info = archs[name]
        line = f"{name:<{width}}  {info.origin:<8}  {info.path}"
        if status:
            code = check_file(Path(info.path), class_name=info.class_name).code
            line += "  " + {0: "patched", 1: "not patched", 2: "cannot patch"}[code]
        click.echo(line)
