"""`mlcpatch publish`: check an artifact folder, then send it to the Hub and/or a GitHub release."""

from __future__ import annotations

import logging
import pathlib
import re

import click

from mlcpatch.publish.artifact import Artifact, validate_artifact
from mlcpatch.publish.console import Console
from mlcpatch.publish.errors import PublishError
from mlcpatch.publish.github import (
    DEFAULT_API_URL,
    GitHubApi,
    ReleasePublisher,
    ReleaseRef,
    wrap_errors,
)
from mlcpatch.publish.hf import DEFAULT_ENDPOINT, HubPublisher
from mlcpatch.publish.links import collect_links
from mlcpatch.publish.model_card import CARD_NAME, render_model_card
from mlcpatch.publish.payload import Payload
from mlcpatch.publish.plan import Plan
from mlcpatch.publish.retry import RetryPolicy
from mlcpatch.publish.tokens import scrub, token_from_env

log = logging.getLogger(__name__)
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LINKS_FOLDER = "links"


def hub_payloads(
    artifact: Artifact, links: list[Payload], repo_id: str, endpoint: str
) -> list[Payload]:
    """The folder as it is, link files under links/, and a model card unless the folder has one."""
    payloads = list(artifact.files)
    payloads += [Payload(f"{LINKS_FOLDER}/{p.name}", p.size, p.sha256, path=p.path) for p in links]
    if all(p.name != CARD_NAME for p in payloads):
        card = render_model_card(artifact, repo_id, endpoint)
        payloads.append(Payload.from_bytes(CARD_NAME, card.encode("utf-8")))
    return payloads


def release_payloads(artifact: Artifact, links: list[Payload]) -> list[Payload]:
    """The browser libraries (WebGPU and wasm CPU; by base name: release assets are flat) and the
    link files."""
    wasm = [
        Payload(pathlib.PurePosixPath(p.name).name, p.size, p.sha256, path=p.path)
        for p in artifact.wasm_files()
    ]
    payloads = wasm + links
    if not payloads:
        raise PublishError(
            f"{artifact.folder} has no .wasm (build with TARGET=llvm,webgpu,wasm) and no --links "
            "were given: nothing to put in a GitHub release"
        )
    names = [p.name for p in payloads]
    if len(set(names)) != len(names):
        raise PublishError(f"two release assets would have the same name: {sorted(names)}")
    return payloads


def _print_dry_run(plans: list[Plan], console: Console) -> None:
    for plan in plans:
        for line in plan.lines(dry_run=True):
            console.say(line)
    console.say("dry run: nothing was written")


def _summary(plan: Plan) -> str:
    sent = len(plan.to_send)
    return f"{plan.destination}: {sent} uploaded and verified, {len(plan.steps) - sent} unchanged"


@click.command("publish")
@click.argument("artifacts", type=click.Path(path_type=pathlib.Path))
@click.option("--hf-repo", metavar="ORG/NAME", help="Hugging Face model repo (created if needed).")
@click.option(
    "--github-release",
    metavar="OWNER/REPO@TAG",
    help="GitHub release for the .wasm and link files (created if needed).",
)
@click.option(
    "--links",
    "link_files",
    multiple=True,
    type=click.Path(path_type=pathlib.Path, dir_okay=False),
    metavar="FILE",
    help="A link file (links.safetensors, links.json, ...) to publish too; repeat for several.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would be uploaded where; write nothing anywhere."
)
@click.option(
    "--hf-endpoint",
    envvar="HF_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="Hub URL (env HF_ENDPOINT).",
)
@click.option(
    "--hf-private", is_flag=True, help="Create the Hub repo private if it does not exist."
)
@click.option(
    "--github-api-url",
    envvar="GITHUB_API_URL",
    default=DEFAULT_API_URL,
    show_default=True,
    help="GitHub REST API URL (env GITHUB_API_URL; set by GitHub Actions).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds to wait on a connection or a read before retrying.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Retries after a server error (5xx, 429), a dropped connection or a timeout.",
)
@click.option(
    "--retry-wait",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds before the first retry; doubles after each (at most 30).",
)
def publish_command(
    artifacts: pathlib.Path,
    hf_repo: str | None,
    github_release: str | None,
    link_files: tuple[pathlib.Path, ...],
    dry_run: bool,
    hf_endpoint: str,
    hf_private: bool,
    github_api_url: str,
    timeout: float,
    retries: int,
    retry_wait: float,
) -> None:
    """Publish the artifact folder ARTIFACTS to a Hugging Face repo and/or a GitHub release.

    \b
    The folder must match its manifest.json exactly (every file listed, with its size and
    sha256, and nothing else); otherwise nothing is sent. Files already published with the same
    sha256 are skipped, changed ones replaced, and every upload is checked afterwards.
    Tokens are read from HF_TOKEN and GITHUB_TOKEN only.

    \b
      Hugging Face: the whole folder, --links under links/, and a generated README.md
      GitHub release: the folder's .wasm files and the --links files
    """
    if not hf_repo and not github_release:
        raise click.UsageError("nothing to do: pass --hf-repo and/or --github-release")
    if hf_repo and not _HF_REPO.match(hf_repo):
        raise click.BadParameter(f"{hf_repo!r} is not ORG/NAME", param_hint="--hf-repo")
    try:
        release = ReleaseRef.parse(github_release) if github_release else None
    except PublishError as exc:
        raise click.BadParameter(exc.message, param_hint="--github-release") from None

    # Everything local is checked before any token is read or any connection is made.
    artifact = validate_artifact(artifacts)
    cpu = (artifact.manifest.options or {}).get("cpu")
    if hf_repo and cpu:
        click.echo(
            f"note: its CPU library was compiled for {cpu!r} (mlcpatch build --cpu): CPUs "
            "without that CPU's instructions will refuse it; build with --cpu portable to "
            "publish one that every CPU of the architecture runs",
            err=True,
        )
    links = collect_links(list(link_files))
    hub_files = hub_payloads(artifact, links, hf_repo, hf_endpoint) if hf_repo else []
    release_files = release_payloads(artifact, links) if release else []

    hf_token = token_from_env("HF_TOKEN", required=not dry_run) if hf_repo else None
    gh_token = token_from_env("GITHUB_TOKEN", required=not dry_run) if release else None
    console = Console((hf_token, gh_token))
    policy = RetryPolicy(retries=retries, first_wait=retry_wait, timeout=timeout)
    hub = None
    if hf_repo:
        hub = HubPublisher(
            hf_repo,
            endpoint=hf_endpoint,
            token=hf_token,
            policy=policy,
            console=console,
            private=hf_private,
        )
    github = None
    if release:
        github = ReleasePublisher(release, GitHubApi(github_api_url, gh_token, policy, console))
    try:
        _run(
            (hub, hub_files),
            (github, release_files),
            title=artifact.name,
            dry_run=dry_run,
            console=console,
        )
    except PublishError as exc:
        # Messages may quote server answers: scrub them like everything else we print.
        exc.message = scrub(exc.message, hf_token, gh_token)
        raise
    except Exception as exc:  # requests' errors; the Hub side converts its own
        log.debug("publish failed", exc_info=True)
        error = wrap_errors(exc, github_api_url, retries)
        error.message = scrub(error.message, hf_token, gh_token)
        raise error from None


def _run(
    hub: tuple[HubPublisher | None, list[Payload]],
    github: tuple[ReleasePublisher | None, list[Payload]],
    *,
    title: str,
    dry_run: bool,
    console: Console,
) -> None:
    (hub_publisher, hub_files), (release_publisher, release_files) = hub, github
    if dry_run:
        plans = []
        if hub_publisher:
            plans.append(hub_publisher.plan(hub_files))
        if release_publisher:
            plans.append(release_publisher.plan(release_files))
        _print_dry_run(plans, console)
        return
    if hub_publisher:
        console.say(_summary(hub_publisher.publish(hub_files, title)))
    if release_publisher:
        console.say(_summary(release_publisher.publish(release_files)))
