"""Training (Hugging Face Accelerate): one process, several GPUs, or CPU processes.

`Trainer` holds one run in the shape of torchtune's recipes: `setup` assembles it from a
recipe (the corpus, `model.factory.build_model_for`, `training.pipeline`: data, optimiser,
schedule; `prepare`), `train` runs the loop in the shape of accelerate's
`complete_nlp_example.py` (`accumulate`, optimiser steps counted on `sync_gradients`),
`validate` keeps the best model, `save_checkpoint`/`load_checkpoint` resume it (no pickles),
`test` evaluates the best model and `close` frees it. `train()` is the one call that chooses
and locks the run folder (`runs/layout.py`) and drives a `Trainer`.

The core prints nothing: progress and the "resuming" line go to the `console` the caller
passes, and every failure is a typed error the caller words (`TrainingDiverged`,
`RunNotSaved`, `TrainingInterrupted`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration
from rich.console import Console
from rich.progress import TextColumn
from safetensors import SafetensorError
from torch.utils.data import DataLoader

from leccr_cli.config import Recipe, recipe_to_dict, resolve_paths
from leccr_cli.corpus.synthetic import ensure_corpus
from leccr_cli.defaults import RUNS_ROOT
from leccr_cli.errors import LeccrError, RunNotSaved, TrainingDiverged, TrainingInterrupted
from leccr_cli.model.factory import build_model_for, load_model
from leccr_cli.retrieval.evaluate import check_eval_languages, eval_options, evaluate_languages
from leccr_cli.runs.checkpoints import (
    check_checkpoint,
    checkpoint_error,
    damaged_file,
    load_rng_state,
    save_rng_state,
    write_loop_state,
)
from leccr_cli.runs.layout import (
    LOGS_DIR,
    METRICS_FILE,
    MODEL_DIR,
    TRAIN_LOG_FILE,
    check_run_dir,
    checkpoint_dirs,
    choose_run_dir,
    create_run_dir,
    find_checkpoint,
    finish_checkpoint,
    partial_checkpoint_dir,
)
from leccr_cli.runs.logs import append_records, drop_records_after, write_eval_json
from leccr_cli.training.pipeline import (
    build_optimizer,
    build_scheduler,
    check_gallery_caches,
    per_device_batch_size,
    training_data,
)
from leccr_cli.utils.console import progress, say
from leccr_cli.utils.devices import is_main_process
from leccr_cli.utils.fs import free_space, is_disk_full, is_empty_folder, writer_lock


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (as JSON: `runs.checkpoints.write_loop_state`)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1


@dataclass
class TrainResult:
    """What a finished run reports: its folder, steps, best validation step and score, and the test metrics."""

    run_dir: Path
    steps: int
    best_step: int
    best_val_sumr: float
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    last_loss: float = float("nan")
    test_split: str = "test"


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


def make_accelerator(recipe: Recipe, run_dir: Path) -> Accelerator:
    """The Accelerator of a run: mixed precision, accumulation and trackers as the recipe says."""
    if recipe.train.log_with == "tensorboard" and not any(
        importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")
    ):
        raise LeccrError(
            "train.log_with: tensorboard is not installed", "pip install tensorboard, or set train.log_with: none"
        )
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


class Trainer:
    """One training run of a recipe in `run_dir`: `setup`, `train`, `validate`, `save_checkpoint` /
    `load_checkpoint`, `test`, `close`.

    `checkpoint` (a checkpoint folder) resumes the run; `overwrite` lets `setup` replace what
    `run_dir` holds. The run folder must have been checked (and locked) by the caller, as
    `train()` does.
    """

    def __init__(
        self, recipe: Recipe, run_dir: Path, accelerator: Accelerator, *, checkpoint: Path | None = None,
        overwrite: bool = False, console: Console | None = None,
    ):  # fmt: skip
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.checkpoint = checkpoint
        self.overwrite = overwrite
        self.console = console
        self.state = TrainState()
        self.eval_langs = recipe.eval.langs or recipe.data.target_langs
        self.started = time.perf_counter()
        self.corpus = self.model = self.optimizer = self.loader = self.scheduler = self.dataset = None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build the corpus, model, data, optimiser and schedule; create the run folder; resume the checkpoint.

        The data is checked before the run folder exists, so a mistake there leaves nothing behind.
        """
        recipe, accelerator = self.recipe, self.accelerator
        world = accelerator.num_processes
        self.per_device = per_device_batch_size(recipe, world)
        self.corpus = ensure_corpus(recipe, accelerator, self.console)
        model = build_model_for(recipe, self.corpus)
        data = training_data(recipe, self.corpus, model, console=self.console)
        for split in (recipe.data.val_split, recipe.data.test_split):
            check_eval_languages(self.corpus, split, self.eval_langs)
        check_gallery_caches(recipe, self.corpus, model, console=self.console)

        # the run folder (decided by the caller, so every process agrees before the main one creates it)
        accelerator.wait_for_everyone()
        if is_main_process() and self.checkpoint is None:
            create_run_dir(recipe, self.run_dir, overwrite=self.overwrite)
        accelerator.wait_for_everyone()

        optim = recipe.optim
        loader = DataLoader(
            data.dataset,
            batch_size=self.per_device,
            shuffle=True,
            drop_last=True,
            collate_fn=data.collate,
            num_workers=recipe.data.num_workers,
            generator=torch.Generator().manual_seed(recipe.seed),
        )
        optimizer = build_optimizer(model, recipe)
        self.steps_per_epoch = len(loader) // optim.gradient_accumulation_steps // world
        self.total_steps = optim.max_steps or optim.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / max(1, self.steps_per_epoch))
        scheduler = build_scheduler(optimizer, recipe, self.total_steps, world)
        self.model, self.optimizer, self.loader, self.scheduler = accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        self.dataset = data.dataset
        if self.checkpoint is not None:
            self.load_checkpoint(self.checkpoint)
        if recipe.train.log_with != "none":
            accelerator.init_trackers(recipe.name, config=_flatten(recipe_to_dict(recipe)))
        self.eval_every = recipe.eval.every_steps or self.steps_per_epoch
        self.checkpoint_every = recipe.train.checkpoint_every_steps or self.eval_every

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model, split: str) -> dict[str, dict[str, float]]:
        """Recall metrics of `model` on `split` for every evaluated language, as the recipe scores them."""
        return evaluate_languages(
            model,
            self.corpus,
            split,
            self.eval_langs,
            accelerator=self.accelerator,
            console=self.console,
            **eval_options(self.recipe),
        )

    def validate(self) -> dict[str, dict[str, float]]:
        """Validation SumR per language into metrics.jsonl; the best mean so far is saved as model/."""
        accelerator, state = self.accelerator, self.state
        unwrapped = accelerator.unwrap_model(self.model)
        results = self.evaluate(unwrapped, self.recipe.data.val_split)
        mean_sumr = sum(r["sumr"] for r in results.values()) / len(results)
        if is_main_process():
            where = {"step": state.global_step, "epoch": state.epoch, "split": self.recipe.data.val_split}
            append_records(self.run_dir / METRICS_FILE, ({**where, "lang": lang, **m} for lang, m in results.items()))
        accelerator.log({f"val/{lang}/sumr": r["sumr"] for lang, r in results.items()}, step=state.global_step)
        if mean_sumr > state.best_score:
            state.best_score, state.best_step = mean_sumr, state.global_step
            if is_main_process():
                unwrapped.save_pretrained(self.run_dir / MODEL_DIR)
        accelerator.wait_for_everyone()
        self.model.train()
        return results

    def test(self) -> dict[str, dict[str, float]]:
        """The best model (model/) on the test split, written to metrics.jsonl and eval/."""
        best = load_model(self.run_dir / MODEL_DIR).to(self.accelerator.device)
        split = self.recipe.data.test_split
        results = self.evaluate(best, split)
        if is_main_process():
            where = {"step": self.state.best_step, "split": split}
            append_records(self.run_dir / METRICS_FILE, ({**where, "lang": lang, **m} for lang, m in results.items()))
            scoring = self.recipe.eval
            for lang, metrics in results.items():
                write_eval_json(
                    self.run_dir, lang, split, metrics, fusion=scoring.fusion, fusion_mode=scoring.fusion_mode,
                    gallery=scoring.gallery, corpus=self.corpus.path,
                )  # fmt: skip
        return results

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_names(self) -> list[str]:
        return [folder.name for folder in checkpoint_dirs(self.run_dir)]

    def save_checkpoint(self) -> None:
        """accelerate's state, the random states and the loop state (no pickles) under a hidden name,
        renamed into place when every process has written."""
        accelerator, step = self.accelerator, self.state.global_step
        partial = partial_checkpoint_dir(self.run_dir, step)
        try:
            accelerator.save_state(str(partial))
            save_rng_state(partial, accelerator.process_index)
            if is_main_process():
                loop_state = {
                    **asdict(self.state),
                    "accelerator_step": accelerator.step,
                    "processes": accelerator.num_processes,
                }
                write_loop_state(partial, loop_state)
        except (OSError, RuntimeError, SafetensorError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            full = is_disk_full(error)
            reason = "disk full" if full else f"{type(error).__name__}: {str(error).strip()[:160]}"
            raise RunNotSaved(
                f"cannot write checkpoint {partial.parent / f'step_{step}'} ({reason}; {free_space(partial)} free "
                f"there)",
                run_dir=self.run_dir,
                checkpoints=self.checkpoint_names(),
                disk_full=False,
                processes=accelerator.num_processes,
            ) from None
        accelerator.wait_for_everyone()
        if is_main_process():
            finish_checkpoint(self.run_dir, step, self.recipe.train.keep_checkpoints)
        accelerator.wait_for_everyone()

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Restore model, optimiser, schedule (accelerate), random states and loop counters (leccr's own files)."""
        accelerator = self.accelerator
        saved = check_checkpoint(checkpoint, accelerator.num_processes, accelerator.scaler is not None)
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # noqa: BLE001 - any failure to read a checkpoint file is named below
            damaged = damaged_file(checkpoint)
            if damaged is None:
                raise
            raise checkpoint_error(
                checkpoint, f"{damaged[0]} is damaged or not a checkpoint file ({damaged[1]})"
            ) from error
        load_rng_state(checkpoint, accelerator.process_index)
        accelerator.step = saved["accelerator_step"]
        for key in asdict(self.state):
            setattr(self.state, key, saved[key])
        if is_main_process():
            # lines logged after this checkpoint by the interrupted run are logged again as it replays
            for log in (METRICS_FILE, TRAIN_LOG_FILE):
                drop_records_after(self.run_dir / log, self.state.global_step, self.recipe.data.test_split)
            say(self.console, f"Resuming {self.run_dir} from {checkpoint.name} (epoch {self.state.epoch + 1})")

    # ------------------------------------------------------------------ the loop

    def log_step(self, loss: float, lr: float, terms: dict[str, float]) -> None:
        step = self.state.global_step
        self.accelerator.log(
            {"train/loss": loss, "train/lr": lr, **{f"train/{k}": v for k, v in terms.items()}}, step=step
        )
        if is_main_process():
            record = {
                "step": step,
                "epoch": self.state.epoch,
                "loss": loss,
                "lr": lr,
                "seconds": round(time.perf_counter() - self.started, 3),
            }
            append_records(self.run_dir / TRAIN_LOG_FILE, [{**record, **terms}])

    def train(self) -> float:
        """The epochs of training, validating every `eval.every_steps` and saving checkpoints; returns the last loss."""
        accelerator, state, optim = self.accelerator, self.state, self.recipe.optim
        model, optimizer, scheduler, loader = self.model, self.optimizer, self.scheduler, self.loader
        total_steps, epochs = self.total_steps, self.epochs
        last_loss = float("nan")
        bar = progress(self.console, TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"))
        model.train()
        with bar:
            task = bar.add_task("training", total=total_steps, completed=state.global_step, loss=float("nan"), lr=0.0)
            while state.global_step < total_steps and state.epoch < epochs:
                loader.set_epoch(state.epoch)
                self.dataset.set_epoch(state.epoch)
                batches = (
                    accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
                )
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
                        raise _oom_error(error, self.per_device) from error
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
                    if state.global_step % self.eval_every == 0 or finished:
                        self.validate()
                    if state.global_step % self.checkpoint_every == 0 or finished:
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
        checkpoints = checkpoint_dirs(self.run_dir)
        raise TrainingDiverged(
            self.state.global_step + 1, output.loss.detach().item(), terms, checkpoints[-1] if checkpoints else None,
            run_dir=self.run_dir, lr=self.recipe.optim.lr, max_grad_norm=self.recipe.optim.max_grad_norm,
            processes=self.accelerator.num_processes,
        )  # fmt: skip

    def close(self) -> None:
        """Free the prepared objects and end the trackers.

        The DDP wrapper is freed while every process still holds the process group: freeing it
        after `end_training` destroyed the group can hang in gloo's teardown once a peer has exited.
        """
        self.accelerator.wait_for_everyone()
        self.model = self.optimizer = self.loader = self.scheduler = None
        self.accelerator.free_memory()
        self.accelerator.end_training()


def _nothing_to_keep(run_dir: Path) -> bool:
    """A run folder without a checkpoint or a model holds nothing worth keeping."""
    return not checkpoint_dirs(run_dir) and not (run_dir / MODEL_DIR).exists()


def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    runs_root: str | Path = RUNS_ROOT,
    console: Console | None = None,
) -> TrainResult:
    """Train LECCR as the recipe says; returns the run folder and its best validation/test numbers.

    The run goes to `output_dir` (default: runs/<recipe name>, -2, -3, ... when taken);
    `resume` is `latest`, a checkpoint folder or a run folder; `overwrite` replaces a run that
    is there. The main process holds the run folder's writer lock (`utils.fs.writer_lock`)
    throughout: a second training run into the same folder is refused. A fresh run that stops
    before its first checkpoint (an error, Ctrl-C) leaves no run folder behind; Ctrl-C raises
    `TrainingInterrupted` (a `KeyboardInterrupt`) saying what is kept. Progress goes to `console`.
    """
    recipe = resolve_paths(recipe)
    # -- where the run goes (every process decides the same before anything is created)
    run_dir = choose_run_dir(recipe, output_dir, resume, Path(runs_root))
    accelerator = make_accelerator(recipe, run_dir)
    accelerator.wait_for_everyone()
    existed = run_dir.exists()
    main = is_main_process()
    with writer_lock(run_dir) if main else contextlib.nullcontext():
        fresh = False
        try:
            check_run_dir(recipe, run_dir, resume=resume is not None, overwrite=overwrite)
            checkpoint = find_checkpoint(resume, run_dir) if resume is not None else None
            fresh = checkpoint is None
            trainer = Trainer(recipe, run_dir, accelerator, checkpoint=checkpoint, overwrite=overwrite, console=console)
            return _run(trainer)
        except BaseException as error:
            present = main and run_dir.is_dir()
            removable = present and (
                (not existed and is_empty_folder(run_dir)) or (fresh and _nothing_to_keep(run_dir))
            )
            checkpoints = [folder.name for folder in checkpoint_dirs(run_dir)] if present else []
            if removable:  # nothing to resume: remove the folder, so that the next try starts clean
                shutil.rmtree(run_dir, ignore_errors=True)
            if present and isinstance(error, KeyboardInterrupt) and not isinstance(error, TrainingInterrupted):
                raise TrainingInterrupted(
                    run_dir, removed=removable, checkpoints=checkpoints, processes=accelerator.num_processes
                ) from None
            raise


def _run(trainer: Trainer) -> TrainResult:
    """Set up, train and test a run; a full disk while writing `model/`, a log or an eval file is a `RunNotSaved`."""
    trainer.setup()
    try:
        last_loss = trainer.train()
        test_results = trainer.test()
    except (OSError, RuntimeError, SafetensorError) as error:  # writing model/, logs or eval files
        if not is_disk_full(error):
            raise
        where = getattr(error, "filename", None) or trainer.run_dir
        raise RunNotSaved(
            f"disk full while writing {where} ({free_space(trainer.run_dir)} free there)",
            run_dir=trainer.run_dir, checkpoints=trainer.checkpoint_names(), disk_full=True,
            processes=trainer.accelerator.num_processes,
        ) from None  # fmt: skip
    trainer.close()
    state = trainer.state
    return TrainResult(
        trainer.run_dir,
        state.global_step,
        state.best_step,
        state.best_score,
        test_results,
        last_loss,
        trainer.recipe.data.test_split,
    )
