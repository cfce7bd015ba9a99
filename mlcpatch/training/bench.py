"""`python -m mlcpatch.training.bench`: link size relative to the backbones, peak memory, and
training steps per second for each stage (the built-in tiny pair on CPU by default)."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import click
import torch

from mlcpatch.links.spec import VARIANTS
from mlcpatch.training.config import build_config, tiny_overrides
from mlcpatch.training.trainer import Trainer


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _steps_per_second(trainer: Trainer, module: Any, stage: str, steps: int) -> float:
    params = trainer._trainable(module, stage)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = trainer.train_set[: trainer.config.batch_size]
    questions, answers = [e.question for e in batch], [e.answer for e in batch]

    def step() -> None:
        loss = module(stage, questions, answers)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # first step pays for allocations and lazy initialisation
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def benchmark(overrides: dict[str, Any], steps: int = 10) -> dict[str, Any]:
    config = build_config(tiny_overrides(), {"progress": False, **overrides})
    trainer = Trainer(config, log=lambda _: None)
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads or previous)
    try:
        module = trainer._build_module(None).to(trainer.accelerator.device)
        link_params = sum(p.numel() for p in module.links.parameters())
        base_params = trainer.pool.num_parameters()
        report: dict[str, Any] = {
            "device": str(trainer.accelerator.device),
            "threads": torch.get_num_threads(),
            "agents": {n: a.backbone.key for n, a in trainer.agents.items()},
            "hidden_sizes": {n: a.backbone.hidden_size for n, a in trainer.agents.items()},
            "rounds": config.rounds,
            "latent_steps": config.latent_steps,
            "variant": config.variant,
            "batch_size": config.batch_size,
            "backbone_params": base_params,
            "link_params": link_params,
            "link_percent_of_backbones": 100.0 * link_params / base_params,
            "links": {name: spec.num_params() for name, spec in module.links.specs.items()},
        }
        for stage in ("inner", "outer"):
            report[f"{stage}_steps_per_second"] = _steps_per_second(trainer, module, stage, steps)
        report["peak_rss_mib"] = _peak_rss_mib()
        if torch.cuda.is_available():
            report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return report
    finally:
        torch.set_num_threads(previous)


@click.command()
@click.option("--model", "models", multiple=True, help="Backbones (default: the tiny pair).")
@click.option("--variant", type=click.Choice(VARIANTS), default="residual")
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--latent-steps", type=int, default=4, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--bottleneck", type=int)
@click.option("--steps", type=int, default=10, show_default=True, help="Timed steps per stage.")
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default).")
@click.option("--grad-checkpointing", is_flag=True)
def main(
    models: tuple[str, ...],
    variant: str,
    rounds: int,
    latent_steps: int,
    batch_size: int,
    bottleneck: int | None,
    steps: int,
    threads: int,
    grad_checkpointing: bool,
) -> None:
    overrides: dict[str, Any] = {
        "variant": variant,
        "rounds": rounds,
        "latent_steps": latent_steps,
        "batch_size": batch_size,
        "bottleneck": bottleneck,
        "threads": threads,
        "grad_checkpointing": grad_checkpointing,
        "out": "bench-out-unused",
    }
    if models:
        overrides.update(models=list(models), agents=[])
    report = benchmark(overrides, steps)
    click.echo(f"device {report['device']} ({report['threads']} threads)")
    click.echo(f"agents {report['agents']} hidden {report['hidden_sizes']}")
    click.echo(
        f"rounds {report['rounds']}  latent steps {report['latent_steps']}  "
        f"variant {report['variant']}  batch {report['batch_size']}"
    )
    click.echo(
        f"link parameters {report['link_params']:,} = "
        f"{report['link_percent_of_backbones']:.2f}% of backbones ({report['backbone_params']:,})"
    )
    for name, count in report["links"].items():
        click.echo(f"  {name}: {count:,}")
    click.echo(f"stage 1 (inner) {report['inner_steps_per_second']:.2f} steps/s")
    click.echo(f"stage 2 (outer) {report['outer_steps_per_second']:.2f} steps/s")
    click.echo(f"peak memory {report['peak_rss_mib']:.0f} MiB RSS")
    if "peak_cuda_mib" in report:
        click.echo(f"peak CUDA memory {report['peak_cuda_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
