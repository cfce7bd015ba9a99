"""Stage 1 (inner warm-up) and stage 2 (unrolled outer loop) on top of accelerate.

Accelerate owns devices, processes and mixed precision; this module owns the schedule: batches,
steps, evaluation, checkpoints and the guarantee that backbone weights never change.
"""

from __future__ import annotations

import json
import pathlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mlcpatch.eval.grading import grade, infer_grader
from mlcpatch.links.binary import WEIGHTS_NAME
from mlcpatch.links.files import save_links
from mlcpatch.links.recursivelink import FILE_NAME as JSON_NAME
from mlcpatch.links.spec import LinkSpec
from mlcpatch.training.backbones import BackbonePool, fingerprint
from mlcpatch.training.batches import BatchSchedule
from mlcpatch.training.checkpoint import TrainingState, load_state, save_state
from mlcpatch.training.config import TrainConfig
from mlcpatch.training.data import DataError, Example, load_builtin, load_jsonl, split_examples
from mlcpatch.training.init_links import initial_links
from mlcpatch.training.prompts import training_text
from mlcpatch.training.unroll import Agent, LatentSystem


class BaseWeightsChanged(RuntimeError):
    """A backbone parameter became trainable, received a gradient, or changed value. Not a user
    error: the trainer's own invariant failed, a bug that keeps its traceback."""


@dataclass
class TrainResult:
    out: pathlib.Path
    inner_losses: list[float] = field(default_factory=list)
    outer_losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    files: list[pathlib.Path] = field(default_factory=list)
    seconds: float = 0.0


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # CPU autocast to bf16 is slower than f32 on most CPUs and loses precision


def _base_dtype(config: TrainConfig) -> torch.dtype:
    if config.base_dtype != "auto":
        return getattr(torch, config.base_dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def scale_lr(lr: float, hidden_size: int) -> float:
    """The configured rate is for hidden size LR_REFERENCE_HIDDEN; wider models get less."""
    return lr * min(1.0, (LR_REFERENCE_HIDDEN / hidden_size) ** 0.5)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Below this many backbone parameters, CPU matmuls are so small that thread hand-offs cost more
# than they save (measured: 8x slower with 2 threads on a busy 2-core machine).
_SMALL_BACKBONES = 20_000_000
# Learning rates in the config are for this hidden size; wider models get rate·sqrt(64/d)
# (SmolLM2-135M's stage 1 diverged at 9e-4 unscaled: loss 0.06 at step 1, 87.7 at step 2).
LR_REFERENCE_HIDDEN = 64


def _choose_threads(threads: int, backbone_params: int, device: torch.device) -> int:
    if threads > 0:
        return threads
    if device.type == "cpu" and backbone_params < _SMALL_BACKBONES:
        return 1
    return torch.get_num_threads()


def _load_examples(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """Training and validation examples: both from the train split of a question set, never
    from its eval split, so `mlcpatch eval` measures on questions training never saw."""
    from mlcpatch.eval.questions import BUILTIN_SETS, QuestionSetError, builtin_questions

    if config.data in BUILTIN_SETS:
        try:
            questions = builtin_questions(config.data, "train", config.data_size, config.seed)
        except QuestionSetError as err:
            raise DataError(str(err)) from None
        examples = [Example(q.prompt(), q.answer, q.solution) for q in questions]
    else:
        examples = load_jsonl(config.data) if config.data else load_builtin()
    return split_examples(examples, config.validation_fraction, config.seed)


class Trainer:
    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        self.out = pathlib.Path(config.out)
        # Each stage trains a subset of the links, so some parameters see no gradient.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.accelerator = Accelerator(
            mixed_precision=_precision(config),
            gradient_accumulation_steps=config.grad_accum,
            kwargs_handlers=[ddp],
        )
        self._log = log
        self.result = TrainResult(self.out)
        self._best: tuple[tuple[float, ...], int, dict[str, torch.Tensor]] | None = None
        self._started = time.perf_counter()
        _seed_everything(config.seed)
        self.system = config.system()
        self.system.validate()
        self.pool = BackbonePool(_base_dtype(config), config.seed)
        loop = self.system.loop_pattern()
        self.agents = {
            a.name: Agent(a.name, self.pool.get(a.model), loop.agent(a.name))
            for a in self.system.agents
        }
        self.pool.to(self.accelerator.device)
        self.train_set, self.valid_set = _load_examples(config)
        dims = {name: agent.backbone.hidden_size for name, agent in self.agents.items()}
        self.specs: list[LinkSpec] = self.system.link_specs(dims)
        self.base_params = self.pool.parameters()
        self._check_frozen()
        self._fingerprint = fingerprint(self.base_params)

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            self._log(message)

    def _record(self, entry: dict[str, Any]) -> None:
        # Seconds since the run (or this resumed part of it) began: the log then says how long
        # training took to reach each validation, which is what a time target is measured on.
        entry = {**entry, "elapsed": round(time.perf_counter() - self._started, 2)}
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "train_log.jsonl").open("a") as handle:
                handle.write(json.dumps(entry) + "\n")

    # -- invariants ----------------------------------------------------------------------------

    def _check_frozen(self) -> None:
        for param in self.base_params:
            if param.requires_grad or param.grad is not None:
                raise BaseWeightsChanged("a backbone parameter is trainable or has a gradient")

    def _check_unchanged(self) -> None:
        if fingerprint(self.base_params) != self._fingerprint:
            raise BaseWeightsChanged("backbone weights changed during training")

    # -- setup ---------------------------------------------------------------------------------

    def _texts_by_agent(self) -> dict[str, list[str]]:
        return {
            name: [
                training_text(
                    agent.backbone.tokenizer, agent.role, e.question, e.target(self.config.target)
                )
                for e in self.train_set
            ]
            for name, agent in self.agents.items()
        }

    def _build_module(self, state: TrainingState | None) -> LatentSystem:
        init = "random" if state is not None else self.config.init
        links = initial_links(init, self.specs, self.agents, self._texts_by_agent())
        if state is not None:
            links.load_state_dict(state.links)
        return LatentSystem(
            self.system,
            self.agents,
            links,
            checkpointing=self.config.grad_checkpointing,
            max_length=self.config.max_length,
            mse_weight=self.config.mse_weight,
        )

    def _trainable(self, module: LatentSystem, stage: str) -> list[torch.nn.Parameter]:
        kinds = {"inner"} if stage == "inner" else {"outer"}
        if stage == "outer" and self.config.train_inner_in_outer:
            kinds.add("inner")
        chosen = []
        for name, spec in module.links.specs.items():
            train = spec.kind in kinds
            for param in module.links[name].parameters():
                param.requires_grad_(train)
                if train:
                    chosen.append(param)
        return chosen

    # -- evaluation ----------------------------------------------------------------------------

    def _eval_examples(self) -> tuple[str, list[Example]]:
        if self.valid_set:
            return "validation", self.valid_set[: self.config.eval_examples]
        return "train", self.train_set[: self.config.eval_examples]

    def evaluate(self, module: LatentSystem, stage: str, step: int) -> dict[str, Any]:
        split, examples = self._eval_examples()
        questions = [e.question for e in examples]
        answers = [e.target(self.config.target) for e in examples]
        entry: dict[str, Any] = {"eval": stage, "step": step, "split": split}
        with torch.no_grad(), self.accelerator.autocast():
            if stage == "inner":
                for name in dict.fromkeys(self.system.pattern):
                    texts = module.inner_texts(name, questions, answers)
                    entry[f"cosine_{name}"] = round(module.inner_cosine(name, texts), 5)
            else:
                with self.accelerator.split_between_processes(list(examples)) as part:
                    outputs = module.generate(
                        [e.question for e in part], self.config.max_new_tokens
                    )
                    correct = [
                        grade(infer_grader(e.answer, None), o, e.answer)
                        for o, e in zip(outputs, part, strict=True)
                    ]
                from accelerate.utils import gather_object

                correct = gather_object(correct)
                entry["accuracy"] = round(sum(correct) / max(len(correct), 1), 4)
                entry["examples"] = len(correct)
                entry["loss"] = round(float(module("outer", questions, answers)), 5)
        self.result.evaluations.append(entry)
        self._record(entry)
        if stage == "outer" and self.config.snapshots:
            self._snapshot(module, step)
        self.log("eval " + " ".join(f"{k}={v}" for k, v in entry.items() if k != "eval"))
        return entry

    def _snapshot(self, module: LatentSystem, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        folder = self.out / "snapshots" / f"step-{step:05d}"
        save_links(module.links.to_file(), folder, fmt="binary", dtype=self.config.export_dtype)
        self._record({"snapshot": str(folder.relative_to(self.out)), "step": step})

    # -- keep-best -----------------------------------------------------------------------------

    @staticmethod
    def score(entry: dict[str, Any], stage: str) -> tuple[float, ...]:
        """Higher is better: mean inner cosine (stage 1); accuracy, then lower loss (stage 2)."""
        if stage == "inner":
            cosines = [v for k, v in entry.items() if k.startswith("cosine_")]
            return (sum(cosines) / max(len(cosines), 1),)
        return (entry["accuracy"], -entry["loss"])

    def _remember_if_best(self, module: LatentSystem, stage: str, entry: dict[str, Any]) -> None:
        score = self.score(entry, stage)
        if self._best is None or score > self._best[0]:
            state = {k: v.detach().clone() for k, v in module.links.state_dict().items()}
            self._best = (score, entry["step"], state)

    def _restore_best(self, module: LatentSystem, stage: str, last: dict[str, Any]) -> None:
        """Training never silently leaves links worse than the best it saw, the start included."""
        if not self.config.keep_best or self._best is None:
            return
        score, step, state = self._best
        if step == last["step"]:
            return
        module.links.load_state_dict(state)
        note = {"keep_best": stage, "step": step, "score": list(score), "last_step": last["step"]}
        self._record(note)
        what = "the start" if step == 0 else f"step {step}"
        self.log(
            f"{stage} links: kept {what} (validation {self.score(last, stage)} at the last step "
            f"was worse than {score})"
        )

    def scaled_lr(self, stage: str) -> float:
        lr = self.config.inner_lr if stage == "inner" else self.config.lr
        if not self.config.scale_lr:
            return lr
        return scale_lr(lr, max(agent.backbone.hidden_size for agent in self.agents.values()))

    # -- one stage -----------------------------------------------------------------------------

    def run_stage(
        self, stage: str, prepared: Any, module: LatentSystem, state: TrainingState
    ) -> None:
        from transformers import get_cosine_schedule_with_warmup

        config = self.config
        steps = config.inner_steps if stage == "inner" else config.steps
        lr = self.scaled_lr(stage)
        params = self._trainable(module, stage)
        self._best = None
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        # Stepped by hand once per optimiser step: accelerate's wrapper would step it once per
        # process, but every process here consumes a slice of one global batch.
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, min(config.warmup_steps, max(steps // 10, 0)), max(steps, 1)
        )
        start = 0
        if state.stage == stage:
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            start = state.stage_step
            if state.best:
                best = state.best
                self._best = (tuple(best["score"]), best["step"], dict(best["links"]))
        optimizer = self.accelerator.prepare(optimizer)
        world = self.accelerator.num_processes
        schedule = BatchSchedule(len(self.train_set), config.batch_size * world, config.seed)
        losses = self.result.inner_losses if stage == "inner" else self.result.outer_losses
        if start == 0:
            self._remember_if_best(module, stage, self.evaluate(module, stage, 0))
        bar = tqdm(
            total=steps,
            initial=start,
            desc=f"{stage} links",
            disable=not (config.progress and self.accelerator.is_local_main_process),
            dynamic_ncols=True,
        )
        for step in range(start, steps):
            step_loss = 0.0
            for micro in range(config.grad_accum):
                indices = schedule.indices(step * config.grad_accum + micro)
                with self.accelerator.split_between_processes(indices) as mine:
                    batch = [self.train_set[i] for i in mine]
                with self.accelerator.accumulate(prepared):
                    with self.accelerator.autocast():
                        loss = prepared(
                            stage,
                            [e.question for e in batch],
                            [e.target(config.target) for e in batch],
                        )
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and config.grad_clip > 0:
                        self.accelerator.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                gathered = self.accelerator.gather(loss.detach()[None])
                step_loss += float(gathered.mean()) / config.grad_accum
            scheduler.step()
            self._check_frozen()
            losses.append(step_loss)
            self._record(
                {
                    "stage": stage,
                    "step": step + 1,
                    "loss": round(step_loss, 6),
                    "lr": scheduler.get_last_lr()[0],
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            done = step + 1
            if config.eval_every and done % config.eval_every == 0 and done < steps:
                self._remember_if_best(module, stage, self.evaluate(module, stage, done))
            if config.save_every and done % config.save_every == 0 and done < steps:
                self._save(state, stage, done, module, optimizer, scheduler)
        bar.close()
        last = self.evaluate(module, stage, steps)
        self._remember_if_best(module, stage, last)
        self._restore_best(module, stage, last)
        state.completed.append(stage)
        self._save(state, "", 0, module, None, None)

    def _save(
        self,
        state: TrainingState,
        stage: str,
        step: int,
        module: LatentSystem,
        optimizer: Any,
        scheduler: Any,
    ) -> None:
        self.accelerator.wait_for_everyone()
        state.stage, state.stage_step = stage, step
        state.links = {k: v.detach().cpu().clone() for k, v in module.links.state_dict().items()}
        state.optimizer = optimizer.state_dict() if optimizer is not None else {}
        state.scheduler = scheduler.state_dict() if scheduler is not None else {}
        state.history = list(self.result.evaluations)
        state.best = {}
        if stage and self._best is not None:
            score, best_step, links = self._best
            state.best = {"score": list(score), "step": best_step, "links": links}
        if self.accelerator.is_main_process:
            save_state(state, self.out)

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        previous = torch.get_num_threads()
        wanted = _choose_threads(
            self.config.threads, self.pool.num_parameters(), self.accelerator.device
        )
        torch.set_num_threads(wanted)
        try:
            return self._run()
        finally:
            torch.set_num_threads(previous)  # a library call must not leave the process changed

    def _run(self) -> TrainResult:
        started = self._started = time.perf_counter()
        config = self.config
        config_json = config.to_json()
        state = load_state(self.out, config_json) if config.resume else None
        if state is not None:
            self.log(
                f"resuming: completed {state.completed or 'nothing'}, "
                f"{state.stage or 'next stage'} at step {state.stage_step}"
            )
            self.result.evaluations = list(state.history)
        module = self._build_module(state)
        state = state or TrainingState(config=config_json)
        state.config = config_json
        module.to(self.accelerator.device)
        prepared = self.accelerator.prepare(module)
        stages = ["inner", "outer"] if config.stage == "both" else [config.stage]
        for stage in stages:
            if stage in state.completed:
                continue
            steps = config.inner_steps if stage == "inner" else config.steps
            if steps == 0:
                continue
            self.run_stage(stage, prepared, module, state)
        self._check_frozen()
        self._check_unchanged()
        self.result.files = self._export(module)
        self.result.seconds = time.perf_counter() - started
        return self.result

    def _export(self, module: LatentSystem) -> list[pathlib.Path]:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return []
        link_file = module.links.to_file()
        files = [save_links(link_file, self.out, fmt="binary", dtype=self.config.export_dtype)]
        files.append(self.out / WEIGHTS_NAME)
        if self.config.export_json:
            files.append(save_links(link_file, self.out / JSON_NAME, fmt="json"))
        (self.out / "train_config.json").write_text(json.dumps(self.config.to_json(), indent=2))
        for path in files:
            self.log(f"wrote {path}")
        return files


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    return Trainer(config, log).run()
