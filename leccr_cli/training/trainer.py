"""The training loop (Hugging Face Accelerate): one process, several GPUs, or CPU processes.

`train` assembles the run from `leccr_cli.training.pipeline` (corpus, model, data, optimiser) and
`leccr_cli.runs.layout` (the run folder), then runs the loop in the shape of accelerate's
`complete_nlp_example.py`: `prepare`, `accumulate`, optimiser steps counted on
`sync_gradients`, `save_state`/`load_state` for resume, `gather_for_metrics` in validation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration
from rich.progress import TextColumn
from safetensors import SafetensorError
from torch.utils.data import DataLoader

from leccr_cli.runs.checkpoints import (
    check_checkpoint,
    checkpoint_error,
    damaged_file,
    load_rng_state,
    save_rng_state,
    write_loop_state,
)
from leccr_cli.config import Recipe, recipe_to_dict
from leccr_cli.utils.console import console, err_console, progress
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.errors import LeccrError, RunError
from leccr_cli.retrieval.evaluate import check_eval_languages, evaluate_languages
from leccr_cli.utils.fs import free_space, is_disk_full, is_empty_folder, writer_lock
from leccr_cli.retrieval.metrics import metrics_table
from leccr_cli.model.factory import load_model
from leccr_cli.training.pipeline import (
    build_model_for,
    build_optimizer,
    build_scheduler,
    check_gallery_caches,
    ensure_corpus,
    per_device_batch_size,
    resolve_paths,
    training_data,
)
from leccr_cli.runs.layout import (
    LOGS_DIR,
    METRICS_FILE,
    MODEL_DIR,
    TRAIN_LOG_FILE,
    append_records,
    check_run_dir,
    checkpoint_dirs,
    choose_run_dir,
    create_run_dir,
    drop_records_after,
    find_checkpoint,
    finish_checkpoint,
    partial_checkpoint_dir,
    write_eval_json,
)


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (as JSON: `leccr_cli.runs.checkpoints.write_loop_state`)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    best_step: int
    best_val_sumr: float
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    last_loss: float = float("nan")


def _oom_error(error: Exception, per_device: int) -> LeccrError:
    return LeccrError(
        f"out of memory at a per-device batch of {per_device} ({error.__class__.__name__})",
        "lower optim.batch_size, raise optim.gradient_accumulation_steps, or set optim.mixed_precision: bf16",
    )


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _make_accelerator(recipe: Recipe, run_dir: Path) -> Accelerator:
    if recipe.train.log_with == "tensorboard" and not any(
        importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")
    ):
        raise LeccrError("train.log_with: tensorboard is not installed", "pip install tensorboard, or set train.log_with: none")
    # under torchrun without CUDA, accelerate only joins the processes (gloo) when told to use the CPU
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=multi_cpu,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / LOGS_DIR)),
        mixed_precision=recipe.optim.mixed_precision,
        gradient_accumulation_steps=recipe.optim.gradient_accumulation_steps,
        log_with=None if recipe.train.log_with == "none" else recipe.train.log_with,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


class _Loop:
    """The prepared objects of one run and what the loop does between optimiser steps."""

    def __init__(
        self, recipe: Recipe, run_dir: Path, corpus: Corpus, accelerator: Accelerator, rebuild_from: str, commands: "_Commands"
    ):
        self.recipe = recipe
        self.run_dir = run_dir
        self.corpus = corpus
        self.accelerator = accelerator
        self.rebuild_from = rebuild_from
        self.commands = commands
        self.state = TrainState()
        self.eval_langs = recipe.eval.langs or recipe.data.target_langs
        self.started = time.perf_counter()

    def evaluate(self, model, split: str) -> dict[str, dict[str, float]]:
        return evaluate_languages(
            model,
            self.corpus,
            split,
            self.eval_langs,
            self.recipe,
            accelerator=self.accelerator,
            fusion=self.recipe.eval.fusion,
            fusion_mode=self.recipe.eval.fusion_mode,
            rebuild_from=self.rebuild_from,
            gallery=self.recipe.eval.gallery,
        )

    def validate(self, model) -> None:
        """Validation SumR per language into metrics.jsonl; the best mean so far is saved as model/."""
        accelerator, state = self.accelerator, self.state
        unwrapped = accelerator.unwrap_model(model)
        results = self.evaluate(unwrapped, self.recipe.data.val_split)
        mean_sumr = sum(r["sumr"] for r in results.values()) / len(results)
        if accelerator.is_main_process:
            where = {"step": state.global_step, "epoch": state.epoch, "split": self.recipe.data.val_split}
            append_records(self.run_dir / METRICS_FILE, ({**where, "lang": lang, **m} for lang, m in results.items()))
        accelerator.log({f"val/{lang}/sumr": r["sumr"] for lang, r in results.items()}, step=state.global_step)
        if mean_sumr > state.best_score:
            state.best_score, state.best_step = mean_sumr, state.global_step
            if accelerator.is_main_process:
                unwrapped.save_pretrained(self.run_dir / MODEL_DIR)
        accelerator.wait_for_everyone()
        model.train()

    def save_checkpoint(self) -> None:
        """accelerate's state, the random states and the loop state (no pickles) under a hidden name,
        renamed into place when every process has written."""
        accelerator, step = self.accelerator, self.state.global_step
        partial = partial_checkpoint_dir(self.run_dir, step)
        try:
            accelerator.save_state(str(partial))
            save_rng_state(partial, accelerator.process_index)
            if accelerator.is_main_process:
                loop_state = {**asdict(self.state), "accelerator_step": accelerator.step, "processes": accelerator.num_processes}
                write_loop_state(partial, loop_state)
        except (OSError, RuntimeError, SafetensorError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            full = "disk full" if is_disk_full(error) else f"{type(error).__name__}: {str(error).strip()[:160]}"
            raise RunError(
                f"cannot write checkpoint {partial.parent / f'step_{step}'} ({full}; {free_space(partial)} free there); "
                + self.commands.kept(),
                "free some space (or fix the folder), then " + self.commands.resume_hint(),
            ) from None
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            finish_checkpoint(self.run_dir, step, self.recipe.train.keep_checkpoints)
        accelerator.wait_for_everyone()

    def log_step(self, loss: float, lr: float, terms: dict[str, float]) -> None:
        step = self.state.global_step
        self.accelerator.log(
            {"train/loss": loss, "train/lr": lr, **{f"train/{k}": v for k, v in terms.items()}}, step=step
        )
        if self.accelerator.is_main_process:
            record = {
                "step": step,
                "epoch": self.state.epoch,
                "loss": loss,
                "lr": lr,
                "seconds": round(time.perf_counter() - self.started, 3),
            }
            append_records(self.run_dir / TRAIN_LOG_FILE, [{**record, **terms}])

    def resume(self, checkpoint: Path) -> None:
        """Restore model, optimiser, schedule (accelerate), random states and loop counters (leccr's own files)."""
        accelerator = self.accelerator
        saved = check_checkpoint(checkpoint, accelerator.num_processes, accelerator.scaler is not None)
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # noqa: BLE001 - any failure to read a checkpoint file is named below
            damaged = damaged_file(checkpoint)
            if damaged is None:
                raise
            raise checkpoint_error(checkpoint, f"{damaged[0]} is damaged or not a checkpoint file ({damaged[1]})") from error
        load_rng_state(checkpoint, accelerator.process_index)
        accelerator.step = saved["accelerator_step"]
        for key in asdict(self.state):
            setattr(self.state, key, saved[key])
        if self.accelerator.is_main_process:
            # lines logged after this checkpoint by the interrupted run are logged again as it replays
            for log in (METRICS_FILE, TRAIN_LOG_FILE):
                drop_records_after(self.run_dir / log, self.state.global_step, self.recipe.data.test_split)
            err_console.print(f"Resuming {self.run_dir} from {checkpoint.name} (epoch {self.state.epoch + 1})")

    def run(self, model, optimizer, scheduler, loader, dataset, *, total_steps: int, epochs: int, per_device: int,
            eval_every: int, checkpoint_every: int) -> float:
        """The epochs of training; returns the last loss."""
        accelerator, state, optim = self.accelerator, self.state, self.recipe.optim
        last_loss = float("nan")
        bar = progress(TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"))
        model.train()
        with bar:
            task = bar.add_task("training", total=total_steps, completed=state.global_step, loss=float("nan"), lr=0.0)
            while state.global_step < total_steps and state.epoch < epochs:
                loader.set_epoch(state.epoch)
                dataset.set_epoch(state.epoch)
                batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
                for batch in batches:
                    try:
                        with accelerator.accumulate(model):
                            output = model(batch, self.recipe.loss)
                            self.check_finite(output)
                            accelerator.backward(output.loss)
                            if accelerator.sync_gradients and optim.max_grad_norm:
                                accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                            optimizer.step()
                            scheduler.step()
                            optimizer.zero_grad()
                    except torch.cuda.OutOfMemoryError as error:
                        raise _oom_error(error, per_device) from error
                    state.batches_in_epoch += 1
                    if not accelerator.sync_gradients:
                        continue
                    state.global_step += 1
                    last_loss = output.loss.item()
                    lr = scheduler.get_last_lr()[-1]
                    bar.update(task, completed=state.global_step, loss=last_loss, lr=lr)
                    if state.global_step % self.recipe.train.log_every_steps == 0:
                        self.log_step(last_loss, lr, {k: v.item() for k, v in output.terms.items()})
                    finished = state.global_step >= total_steps
                    if state.global_step % eval_every == 0 or finished:
                        self.validate(model)
                    if state.global_step % checkpoint_every == 0 or finished:
                        self.save_checkpoint()
                    if finished:
                        return last_loss
                state.epoch += 1
                state.batches_in_epoch = 0
        return last_loss

    def check_finite(self, output) -> None:
        """Stop at once, before the optimiser step, when the loss of a batch is not finite (on any process)."""
        bad = not bool(torch.isfinite(output.loss.detach()))
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(bad)], device=self.accelerator.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        if not bad:
            return
        terms = [name for name, value in output.terms.items() if not bool(torch.isfinite(value))]
        value = output.loss.detach().item()
        what = f"non-finite terms: {', '.join(terms)}" if terms else "every term is finite, their weighted sum is not"
        checkpoints = checkpoint_dirs(self.run_dir)
        last = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
        optim = self.recipe.optim
        raise RunError(
            f"training diverged at step {self.state.global_step + 1}: the loss is {value} ({what}); {last}",
            f"lower optim.lr (now {optim.lr:g}) or set optim.max_grad_norm (now {optim.max_grad_norm}, e.g. 1.0), "
            f"then start again: {self.commands.restart()}",
        )

    def test_best(self) -> dict[str, dict[str, float]]:
        """The best model (model/) on the test split, written to metrics.jsonl and eval/ and printed."""
        best = load_model(self.run_dir / MODEL_DIR).to(self.accelerator.device)
        split = self.recipe.data.test_split
        results = self.evaluate(best, split)
        if self.accelerator.is_main_process:
            where = {"step": self.state.best_step, "split": split}
            append_records(self.run_dir / METRICS_FILE, ({**where, "lang": lang, **m} for lang, m in results.items()))
            for lang, metrics in results.items():
                write_eval_json(
                    self.run_dir, lang, split, metrics, fusion=self.recipe.eval.fusion,
                    fusion_mode=self.recipe.eval.fusion_mode, gallery=self.recipe.eval.gallery, corpus=self.corpus.path,
                )
            title = f"{self.run_dir.name}: best model (step {self.state.best_step}) on {split}"
            console.print(metrics_table(results, title=title))
        return results


class _Commands:
    """The commands that continue or restart a run, and what it keeps, for messages."""

    def __init__(self, recipe_file, overrides: Sequence[str], run_dir: Path, processes: int):
        self.base = ["leccr", "train", str(recipe_file or "RECIPE.yaml"), "--output", str(run_dir)]
        for override in overrides:
            self.base += ["--set", override]
        self.run_dir = run_dir
        self.launcher = " (with the same launcher and number of processes)" if processes > 1 else ""

    def resume(self) -> str:
        return f"`{shlex.join(self.base + ['--resume', 'latest'])}`{self.launcher}"

    def restart(self) -> str:
        return f"`{shlex.join(self.base + ['--overwrite'])}`{self.launcher}"

    def kept(self) -> str:
        found = checkpoint_dirs(self.run_dir)
        if not found:
            return f"{self.run_dir} has no checkpoint yet"
        return f"{self.run_dir} keeps {', '.join(p.name for p in found)} and its logs"

    def resume_hint(self) -> str:
        return f"continue with {self.resume()}" if checkpoint_dirs(self.run_dir) else f"start again with {self.restart()}"


def _nothing_to_keep(run_dir: Path) -> bool:
    """A run folder without a checkpoint or a model holds nothing worth keeping."""
    return not checkpoint_dirs(run_dir) and not (run_dir / MODEL_DIR).exists()


def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    recipe_file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> TrainResult:
    """Train LECCR as the recipe says; returns the run folder and its best validation/test numbers.

    `recipe_file` (the recipe's path, when it came from one) and `overrides` (its `--set`
    values) only name it in hints. The main process holds the run folder's writer lock
    (`leccr_cli.utils.fs.writer_lock`) throughout: a second `leccr train` into the same folder is
    refused. A fresh run that stops before its first checkpoint (an error, Ctrl-C) leaves no
    run folder behind.
    """
    recipe = resolve_paths(recipe)
    rebuild_from = str(recipe_file) if recipe_file is not None else "RECIPE"
    # -- where the run goes (every process decides the same before anything is created)
    run_dir = choose_run_dir(recipe, output_dir, resume, Path(runs_root))
    accelerator = _make_accelerator(recipe, run_dir)
    commands = _Commands(recipe_file, overrides, run_dir, accelerator.num_processes)
    accelerator.wait_for_everyone()
    existed = run_dir.exists()
    main = accelerator.is_main_process
    with writer_lock(run_dir) if main else contextlib.nullcontext():
        fresh = False
        try:
            check_run_dir(recipe, run_dir, resume=resume is not None, overwrite=overwrite)
            checkpoint = find_checkpoint(resume, run_dir) if resume is not None else None
            fresh = checkpoint is None
            return _train_locked(recipe, run_dir, checkpoint, overwrite, accelerator, rebuild_from, commands)
        except BaseException as error:
            if main and run_dir.is_dir():
                # nothing to resume: remove the folder, so that the next try starts clean
                removable = (not existed and is_empty_folder(run_dir)) or (fresh and _nothing_to_keep(run_dir))
                if isinstance(error, KeyboardInterrupt):
                    if removable:
                        message = (
                            f"stopped before the first checkpoint: nothing to resume, so {run_dir} is removed; "
                            f"start again with `{shlex.join(commands.base)}`"
                        )
                    else:
                        message = f"{commands.kept()}; continue with {commands.resume()}"
                    err_console.print(f"[yellow]interrupted:[/] {message}", soft_wrap=True, highlight=False)
                if removable:
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _train_locked(
    recipe: Recipe,
    run_dir: Path,
    checkpoint: Path | None,
    overwrite: bool,
    accelerator: Accelerator,
    rebuild_from: str,
    commands: _Commands,
) -> TrainResult:
    """`train` once the run folder is chosen, checked and locked."""
    world = accelerator.num_processes
    per_device = per_device_batch_size(recipe, world)

    # -- the data first: a mistake there must not leave a run folder behind
    corpus = ensure_corpus(recipe, accelerator)
    model = build_model_for(recipe, corpus)
    data = training_data(recipe, corpus, model, rebuild_from=rebuild_from)
    for split in (recipe.data.val_split, recipe.data.test_split):
        check_eval_languages(corpus, split, recipe.eval.langs or recipe.data.target_langs)
    check_gallery_caches(recipe, corpus, model, rebuild_from=rebuild_from)

    # -- the run folder (decided above, so every process agrees before the main one creates it)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and checkpoint is None:
        create_run_dir(recipe, run_dir, overwrite=overwrite)
    accelerator.wait_for_everyone()

    optim = recipe.optim
    loader = DataLoader(
        data.dataset,
        batch_size=per_device,
        shuffle=True,
        drop_last=True,
        collate_fn=data.collate,
        num_workers=recipe.data.num_workers,
        generator=torch.Generator().manual_seed(recipe.seed),
    )
    optimizer = build_optimizer(model, recipe)
    steps_per_epoch = len(loader) // optim.gradient_accumulation_steps // world
    total_steps = optim.max_steps or optim.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / max(1, steps_per_epoch))
    scheduler = build_scheduler(optimizer, recipe, total_steps, world)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    loop = _Loop(recipe, run_dir, corpus, accelerator, rebuild_from, commands)
    if checkpoint is not None:
        loop.resume(checkpoint)
    if recipe.train.log_with != "none":
        accelerator.init_trackers(recipe.name, config=_flatten(recipe_to_dict(recipe)))
    eval_every = recipe.eval.every_steps or steps_per_epoch
    try:
        last_loss = loop.run(
            model,
            optimizer,
            scheduler,
            loader,
            data.dataset,
            total_steps=total_steps,
            epochs=epochs,
            per_device=per_device,
            eval_every=eval_every,
            checkpoint_every=recipe.train.checkpoint_every_steps or eval_every,
        )
        test_results = loop.test_best()
    except (OSError, RuntimeError, SafetensorError) as error:  # writing model/, logs or eval files
        if not is_disk_full(error):
            raise
        where = getattr(error, "filename", None) or run_dir
        raise RunError(
            f"disk full while writing {where} ({free_space(run_dir)} free there); {commands.kept()}",
            "free some space, then " + commands.resume_hint(),
        ) from None
    # Free the DDP wrapper while every process still holds the process group: freeing it after
    # `end_training` destroyed the group can hang in gloo's teardown once a peer has exited.
    accelerator.wait_for_everyone()
    del model, optimizer, loader, scheduler
    accelerator.free_memory()
    accelerator.end_training()
    state = loop.state
    return TrainResult(run_dir, state.global_step, state.best_step, state.best_score, test_results, last_loss)
