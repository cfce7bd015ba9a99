"""`mlcpatch eval`: accuracy of single, text and latent modes on a question set."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import click
from tqdm.auto import tqdm

from mlcpatch.artifact import sha256_file
from mlcpatch.eval.questions import BUILTIN_SETS, SPLITS, load_questions
from mlcpatch.eval.report import chart, summarize, table
from mlcpatch.eval.runner import (
    RESULTS,
    RUN_INFO,
    Mode,
    Solver,
    check_run,
    evaluate,
    read_results,
    timed,
    write_json,
)
from mlcpatch.links.binary import MANIFEST_NAME
from mlcpatch.links.files import FILE_NAMES
from mlcpatch.links.spec import VARIANTS
from mlcpatch.loop.calibrate import fitted_links
from mlcpatch.loop.command import _agents, models_option, pattern_option
from mlcpatch.loop.orchestrator import Agent, Links, Settings, run_batch, run_single_batch
from mlcpatch.loop.patterns import Pattern

BASE_MODES = ("single", "text", "latent")


def _file_digest(path: Path) -> str:
    """A short hash of a link file's contents (a folder: its link files only, not checkpoints
    or logs), so a resumed run notices when a label now names other links."""
    folder = path if path.is_dir() else path.parent
    if path.is_dir() or path.name == MANIFEST_NAME:
        files = [folder / n for n in FILE_NAMES if (folder / n).is_file()]
    else:
        files = [path]
    digest = hashlib.sha256()
    for item in files:
        digest.update(item.name.encode() + b"\0")
        sha256_file(item, digest)
    return digest.hexdigest()[:16]


def links_label(path: Path, taken: set[str]) -> str:
    """`latent:<name>`: the folder's name for a folder or links.json, else the file's stem."""
    name = path.parent.name if path.name == MANIFEST_NAME else path.stem
    if path.is_dir():
        name = path.name
    label = f"latent:{name or 'links'}"
    suffix = 2
    while label in taken:
        label = f"latent:{name}-{suffix}"
        suffix += 1
    return label


@click.command("eval")
@models_option
@pattern_option
@click.option(
    "--questions",
    "source",
    default="arithmetic",
    show_default=True,
    metavar="SET|FILE.jsonl",
    help=f"A built-in set ({', '.join(BUILTIN_SETS)}) or a JSONL file with question, answer "
    "and optional choices (a list), id and grader (numeric, choice, exact).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="eval",
    show_default=True,
    help="Split of a built-in set; train and eval never share a question. Files are used whole.",
)
@click.option(
    "--size",
    type=click.IntRange(min=0),
    default=0,
    help="Questions to ask: built-in sets default to 200; for a file, its first N (0: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which sample of a set.")
@click.option(
    "--modes",
    default=",".join(BASE_MODES),
    show_default=True,
    help="Comma-separated: single (the final agent's model alone), text, latent (closed-form "
    "links). Every --links file adds a latent mode of its own.",
)
@click.option(
    "--links",
    "link_files",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A trained link file (folder, links.json, .safetensors or recursivelink.json); "
    "repeat to compare several in one run.",
)
@click.option(
    "--link-form",
    type=click.Choice(VARIANTS),
    default="residual",
    show_default=True,
    help="Form of the closed-form links of the `latent` mode.",
)
@click.option("--rounds", type=int, default=2, show_default=True, help="Rounds R.")
@click.option("--latent-steps", type=int, default=8, show_default=True, help="Latent steps m.")
@click.option(
    "--max-new-tokens",
    type=int,
    default=32,
    show_default=True,
    help="Answer budget of the final agent (and of single mode).",
)
@click.option(
    "--text-tokens",
    type=int,
    default=48,
    show_default=True,
    help="Budget of each intermediate agent in text mode.",
)
@click.option(
    "--share-prefix/--no-share-prefix",
    default=True,
    show_default=True,
    help="Keep each agent's prompt before the {latent} slot between rounds instead of running "
    "it again (same answers, fewer positions processed).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Questions each mode answers at once (batched forwards; the same answers). Seconds "
    "per question are then each one's share of its batch's time.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval-out"),
    show_default=True,
    help="Folder for results.jsonl, run.json, summary.json and eval.png.",
)
@click.option("--overwrite", is_flag=True, help="Start over instead of resuming a run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_command(
    models: tuple[str, ...],
    pattern: str,
    source: str,
    split: str,
    size: int,
    seed: int,
    modes: str,
    link_files: tuple[Path, ...],
    link_form: str,
    rounds: int,
    latent_steps: int,
    max_new_tokens: int,
    text_tokens: int,
    share_prefix: bool,
    batch: int,
    out: Path,
    overwrite: bool,
    as_json: bool,
    progress: bool,
) -> None:
    """Measure how often each mode answers right, and at what cost.

    \b
    Every question goes through every mode, one after the other on this machine, greedy, with
    the same prompts and budgets:
      single         the final agent's model alone, with the final agent's role
      text           the pattern's agents talking in text
      latent         the latent loop with closed-form links (fitted on generic text)
      latent:NAME    the latent loop with the link file NAME (--links, repeatable)

    \b
    Writes OUT/results.jsonl (one line per question and mode, written as it goes: run the same
    command again to continue a stopped run), OUT/run.json (settings and one-time costs such as
    loading models and fitting links, kept apart from per-question seconds), OUT/summary.json
    and OUT/eval.png, and prints a table: accuracy with a 95% Wilson interval, mean generated
    tokens and seconds per question, speed against text, cost against single, and the paired
    accuracy difference against text with its 95% interval.

    \b
    Example:
      mlcpatch eval --model artifacts/smollm2-135m --questions arithmetic --size 200
    """
    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in BASE_MODES]
    if unknown or not (wanted or link_files):
        raise click.UsageError(f"--modes takes {', '.join(BASE_MODES)}; got {modes!r}")
    settings = Settings(
        rounds, latent_steps, max_new_tokens, text_tokens, share_prefix=share_prefix
    )
    questions = load_questions(source, split, size, seed)
    labels = list(wanted)
    link_labels: list[tuple[str, Path]] = []
    for path in link_files:
        label = links_label(path, set(labels))
        labels.append(label)
        link_labels.append((label, path))
    identity = {
        "models": list(models),
        "pattern": pattern,
        "questions": source,
        "split": None if source.endswith(".jsonl") or Path(source).is_file() else split,
        "size": len(questions),
        "seed": seed,
        "settings": vars(settings),
    }
    mode_ids = {label: "" for label in wanted}
    mode_ids.update({label: _file_digest(path) for label, path in link_labels})
    if "latent" in mode_ids:
        mode_ids["latent"] = f"closed-form {link_form}"
    out.mkdir(parents=True, exist_ok=True)
    info = check_run(out, identity, mode_ids, overwrite)
    previous = read_results(out / RESULTS)
    ids = {q.id for q in questions}
    done = {(r["id"], r["mode"]) for r in previous if r["id"] in ids}
    remaining = len(questions) * len(labels) - len(done)
    setup = info["setup"]
    system, agents = timed("open models", setup, lambda: _agents(pattern, models))
    solvers: list[Mode] = []
    for label in labels:
        if label == "single":
            solve = _single(system, agents, settings)
        elif label == "text":
            solve = _looped("text", system, agents, settings, None)
        elif label == "latent":
            links = timed(
                "fit closed-form links",
                setup,
                lambda: fitted_links(system, agents, link_form),
            )
            solve = _looped("latent", system, agents, settings, links)
        else:
            path = dict(link_labels)[label]
            links = timed(f"load {path}", setup, lambda p=path: Links.load(p, system, agents))
            solve = _looped("latent", system, agents, settings, links)
        solvers.append(Mode(label, solve))
    write_json(out / RUN_INFO, info)
    if remaining < len(questions) * len(labels):
        click.echo(f"resuming: {len(done)} answers already in {out / RESULTS}", err=True)
    bar = tqdm(total=remaining, desc="eval", unit="answer", disable=not progress, leave=False)
    began = time.perf_counter()
    try:
        answered = evaluate(
            questions, solvers, out, lambda i, n: bar.update(i - bar.n), done, batch
        )
    finally:
        bar.close()
        write_json(out / RUN_INFO, info)
    elapsed = time.perf_counter() - began
    rows = [r for r in read_results(out / RESULTS) if r["id"] in ids]
    summary = summarize(rows, labels)
    report = {
        "pattern": system.name,
        "models": list(models),
        "questions": source,
        "split": identity["split"],
        "size": len(questions),
        "settings": vars(settings),
        "setup": setup,
        "modes": summary,
        "this_session": {
            "batch": batch,
            "answers": len(answered),
            "seconds": round(elapsed, 3),
            "answers_per_second": round(len(answered) / elapsed, 4) if answered else None,
        },
    }
    write_json(out / "summary.json", report)
    chart(summary, out / "eval.png", f"{system.name} on {source} ({len(questions)} questions)")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(table(summary))
    if answered:
        click.echo(
            f"this session: {len(answered)} answers in {elapsed:.1f} s with --batch {batch} "
            f"({len(answered) / elapsed:.3f} answers/s)"
        )
    one_time = ", ".join(f"{s['what']} {s['seconds']:.1f} s" for s in setup)
    click.echo(f"one-time costs (not in seconds per question): {one_time}")
    click.echo(f"wrote {out / 'summary.json'} and {out / 'eval.png'}")


def _single(system: Pattern, agents: list[Agent], settings: Settings) -> Solver:
    return lambda questions: run_single_batch(system, agents, questions, settings)


def _looped(
    mode: str, system: Pattern, agents: list[Agent], settings: Settings, links: Links | None
) -> Solver:
    return lambda questions: run_batch(mode, system, agents, questions, settings, links)
