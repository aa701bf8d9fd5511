"""The training loop (Hugging Face Accelerate): one process, several GPUs, or CPU processes.

The shape follows accelerate's `complete_nlp_example.py`: `Accelerator(...)`, `prepare`,
`accumulate`, optimiser steps counted on `sync_gradients`, `save_state`/`load_state` for
resume, `gather_for_metrics` in validation.

A run folder (DESIGN section 3):

```
runs/<name>/
  recipe.yaml                 the resolved recipe (overrides applied, paths absolute)
  checkpoints/step_<n>/       accelerate save_state, the last `train.keep_checkpoints`
  model/                      the best model on validation (mean SumR over target languages)
  metrics.jsonl               one line per evaluation and language
  train_log.jsonl             loss, lr, loss terms and seconds since the loop started, every
                              `train.log_every_steps` optimiser steps
  eval/<lang>-<split>.json    test metrics of the best model
```
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from leccr_cli.config import Recipe, recipe_to_dict, save_recipe
from leccr_cli.errors import LeccrError, RunError

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    best_step: int
    best_val_sumr: float
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    last_loss: float = float("nan")


# ------------------------------------------------------------------------ run folders


def resolve_recipe_paths(recipe: Recipe) -> Recipe:
    """The recipe with `data.corpus` made absolute (a run must not depend on the working directory)."""
    corpus = str(Path(recipe.data.corpus).expanduser().resolve())
    return replace(recipe, data=replace(recipe.data, corpus=corpus))


def default_run_dir(recipe: Recipe, runs_root: Path = Path("runs")) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when taken."""
    candidate = runs_root / recipe.name
    number = 1
    while candidate.exists() and any(candidate.iterdir()):
        number += 1
        candidate = runs_root / f"{recipe.name}-{number}"
    return candidate


def latest_run(runs_root: Path = Path("runs"), name: str | None = None) -> Path:
    """The most recently modified run folder (optionally of one recipe name)."""
    runs = [
        p
        for p in runs_root.glob("*")
        if (p / "recipe.yaml").is_file() and (name is None or p.name == name or p.name.startswith(f"{name}-"))
    ]
    if not runs:
        what = f"no run of recipe {name!r}" if name else "no runs"
        raise RunError(f"{what} under {runs_root.resolve()}", "train one with `leccr train RECIPE.yaml` or name the run folder")
    return max(runs, key=lambda p: (p / "recipe.yaml").stat().st_mtime)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = run_dir / CHECKPOINTS
    found = [p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(resume: str, run_dir: Path) -> Path:
    """`latest` -> the newest checkpoint of `run_dir`; a checkpoint folder; or a run folder (its newest)."""
    if resume != "latest":
        path = Path(resume)
        if (path / CHECKPOINTS).is_dir():
            run_dir, resume = path, "latest"
        elif path.is_dir() and path.parent.name == CHECKPOINTS:
            return path
        else:
            raise RunError(f"--resume {resume}: not a checkpoint folder (runs/NAME/checkpoints/step_N) nor a run folder")
    found = checkpoint_dirs(run_dir)
    if not found:
        raise RunError(f"--resume latest: {run_dir} has no checkpoints", "start a fresh run instead (drop --resume)")
    return found[-1]


def _recipe_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _recipe_differences(a[key], b[key], dotted + ".")
        elif a.get(key) != b.get(key):
            keys.append(dotted)
    return keys


def prepare_run_dir(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that `run_dir` may hold this run; refuse a folder that holds another one."""
    import yaml

    existing = run_dir / "recipe.yaml"
    if resume:
        if not existing.is_file():
            raise RunError(f"--resume: {run_dir} holds no run (no recipe.yaml)")
        before = yaml.safe_load(existing.read_text(encoding="utf-8"))
        changed = _recipe_differences(before, recipe_to_dict(recipe))
        if changed:
            raise RunError(
                f"--resume: the recipe differs from the one {run_dir} was trained with ({', '.join(changed[:5])})",
                "resume with the same recipe and --set overrides, or start a new run",
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(
                f"{run_dir} already holds a run",
                "pass --resume latest to continue it, --overwrite to replace it, or --output for a new folder",
            )


# ------------------------------------------------------------------------------ corpus


def ensure_corpus(recipe: Recipe, accelerator) -> "object":
    """Open the recipe's corpus, building the synthetic one first when the recipe says how."""
    from leccr_cli.data.corpus import Corpus
    from leccr_cli.errors import CorpusError

    path = Path(recipe.data.corpus)
    if not path.exists():
        synth = recipe.data.synth
        if synth is None:
            raise CorpusError(
                f"data.corpus {path}: no such folder",
                "build it with `leccr data synth`, `leccr data import-multi30k` or `leccr data import-nrccr`",
            )
        if accelerator.is_main_process:
            from leccr_cli.console import err_console
            from leccr_cli.data.synth import build_synthetic

            with err_console.status(f"Building the synthetic corpus in {path} ..."):
                build_synthetic(path, images=synth.images, langs=synth.langs, seed=synth.seed, image_size=synth.image_size)
        accelerator.wait_for_everyone()
    return Corpus.open(path)


def tokenizer_texts(corpus, recipe: Recipe) -> list[str]:
    """Texts a from-scratch tokenizer is trained on: training captions and descriptions."""
    split = recipe.data.train_split
    langs = {recipe.data.source_lang, *recipe.data.target_langs}
    texts = [c.text for c in corpus.captions(split) if c.lang in langs]
    if recipe.model.variant == "leccr" and recipe.data.descriptions in corpus.description_sources():
        train_ids = set(corpus.image_ids(split))
        texts += [text for image_id, text in corpus.descriptions(recipe.data.descriptions).items() if image_id in train_ids]
    return texts


def build_recipe_model(recipe: Recipe, corpus):
    """The model exactly as `train` builds it from a recipe: the same seed, the same tokenizer texts.

    build-slots relies on this: a from-scratch frozen description encoder is a random init.
    """
    from accelerate.utils import set_seed

    from leccr_cli.data.loading import VisualSource
    from leccr_cli.model.encoders import build_model

    set_seed(recipe.seed)
    visual = VisualSource(corpus, recipe.data.train_split, None, recipe.data.video_features)
    return build_model(
        recipe.model,
        modality=corpus.modality,
        frame_dim=visual.frame_dim,
        tokenizer_texts=tokenizer_texts(corpus, recipe) if recipe.model.text.config is not None else None,
    )


# -------------------------------------------------------------------------------- loop


def _build_optimizer(model, recipe: Recipe):
    import torch

    optim = recipe.optim
    groups = []
    for params, lr in ((model.pretrained_parameters(), optim.lr), (model.new_parameters(), optim.lr * optim.new_layer_lr_scale)):
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": optim.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def _oom_error(error: Exception, per_device: int) -> LeccrError:
    return LeccrError(
        f"out of memory at a per-device batch of {per_device} ({error.__class__.__name__})",
        "lower optim.batch_size, raise optim.gradient_accumulation_steps, or set optim.mixed_precision: bf16",
    )


def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
) -> TrainResult:
    """Train LECCR as the recipe says; returns the run folder and its best validation/test numbers."""
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration
    from rich.progress import TextColumn
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from leccr_cli.console import console, err_console, progress
    from leccr_cli.data.loading import (
        Collator,
        ImageTransform,
        TextCleaning,
        TrainingSet,
        VisualSource,
        check_descriptions,
        training_examples,
    )
    from leccr_cli.evaluate import evaluate_languages, metrics_table, write_eval_json
    from leccr_cli.model.leccr import LeccrModel

    recipe = resolve_recipe_paths(recipe)
    optim = recipe.optim
    # -- where the run goes (nothing is created before the data has been checked)
    runs_root = Path(runs_root)
    if output_dir is not None:
        run_dir = Path(output_dir)
    elif resume is not None and resume != "latest":
        candidate = Path(resume)
        run_dir = candidate if (candidate / CHECKPOINTS).is_dir() else candidate.parent.parent
    elif resume == "latest":
        run_dir = latest_run(runs_root, recipe.name)
    else:
        run_dir = default_run_dir(recipe, runs_root)
    prepare_run_dir(recipe, run_dir, resume=resume is not None, overwrite=overwrite)
    checkpoint = find_checkpoint(resume, run_dir) if resume is not None else None
    if recipe.train.log_with == "tensorboard" and not any(
        importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")
    ):
        raise LeccrError("train.log_with: tensorboard is not installed", "pip install tensorboard, or set train.log_with: none")
    # under torchrun without CUDA, accelerate only joins the processes (gloo) when told to use the CPU
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        mixed_precision=optim.mixed_precision,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        log_with=None if recipe.train.log_with == "none" else recipe.train.log_with,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    world = accelerator.num_processes
    per_device, remainder = divmod(optim.batch_size, world * optim.gradient_accumulation_steps)
    if remainder or per_device == 0:
        raise LeccrError(
            f"optim.batch_size {optim.batch_size} does not split into {world} processes x "
            f"{optim.gradient_accumulation_steps} accumulation steps",
            "choose a global batch size divisible by processes x accumulation steps",
        )

    # -- the data first: a mistake there must not leave a run folder behind
    corpus = ensure_corpus(recipe, accelerator)
    data = recipe.data
    split = corpus.check_split(data.train_split)
    examples = training_examples(corpus, split, data.source_lang, data.target_langs)
    if len(examples) < optim.batch_size:
        raise LeccrError(
            f"the training split has {len(examples)} examples, fewer than one global batch ({optim.batch_size})",
            "lower optim.batch_size",
        )
    uses_descriptions = recipe.model.variant == "leccr"
    descriptions = (
        check_descriptions(corpus, data.descriptions, corpus.image_ids(split)) if uses_descriptions else None
    )

    model = build_recipe_model(recipe, corpus)
    visual = VisualSource(corpus, split, None, data.video_features)
    features = None  # frozen description features from a slot cache (leccr build-slots), else encoded live
    if descriptions is not None:  # a missing or stale cache (cache mode) is refused before the run folder is made
        from leccr_cli.slots import open_slot_cache

        features = open_slot_cache(model, corpus, split, recipe, descriptions=descriptions, rebuild_from="RECIPE")
        for gallery_split in (data.val_split, data.test_split):
            open_slot_cache(model, corpus, gallery_split, recipe, rebuild_from="RECIPE")

    # -- the run folder (decided above, so every process agrees before the main one creates it)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and checkpoint is None:
        if run_dir.exists() and overwrite:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "recipe.yaml")
        (run_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    accelerator.wait_for_everyone()

    if corpus.modality == "image":
        visual.transform = ImageTransform(
            model.image_size,
            model.image_mean,
            model.image_std,
            train=data.train_transform == "random_resized_crop",
            crop_scale_min=data.crop_scale_min,
        )
    cleaning = TextCleaning.from_recipe(data)
    dataset = TrainingSet(
        examples, visual, descriptions if features is None else None, cleaning, recipe.seed, description_features=features
    )
    collate = Collator.for_model(model, recipe, visual)
    loader = DataLoader(
        dataset,
        batch_size=per_device,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(recipe.seed),
    )
    optimizer = _build_optimizer(model, recipe)
    # counted in per-process batches of one process, as accelerate's prepared scheduler expects
    steps_per_epoch = len(loader) // optim.gradient_accumulation_steps // world
    total_steps = optim.max_steps or optim.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / max(1, steps_per_epoch))
    scheduler = get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(optim.warmup_ratio * total_steps) * world,
        num_training_steps=total_steps * world,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        if accelerator.is_main_process:
            # lines logged after this checkpoint by the interrupted run are logged again as it replays
            for log in ("metrics.jsonl", "train_log.jsonl"):
                _drop_lines_after(run_dir / log, state.global_step, data.test_split)
            err_console.print(f"Resuming {run_dir} from {checkpoint.name} (epoch {state.epoch + 1})")
    if recipe.train.log_with != "none":
        accelerator.init_trackers(recipe.name, config=_flatten(recipe_to_dict(recipe)))

    eval_every = recipe.eval.every_steps or steps_per_epoch
    checkpoint_every = recipe.train.checkpoint_every_steps or eval_every
    eval_langs = recipe.eval.langs or data.target_langs
    best_dir = run_dir / "model"
    last_loss = float("nan")

    def validate() -> None:
        unwrapped: LeccrModel = accelerator.unwrap_model(model)
        results = evaluate_languages(
            unwrapped,
            corpus,
            data.val_split,
            eval_langs,
            recipe,
            accelerator=accelerator,
            fusion=recipe.eval.fusion,
        )
        mean_sumr = sum(r["sumr"] for r in results.values()) / len(results)
        if accelerator.is_main_process:
            with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                for lang, metrics in results.items():
                    record = {"step": state.global_step, "epoch": state.epoch, "split": data.val_split, "lang": lang}
                    handle.write(json.dumps({**record, **metrics}) + "\n")
        accelerator.log({f"val/{lang}/sumr": r["sumr"] for lang, r in results.items()}, step=state.global_step)
        if mean_sumr > state.best_score:
            state.best_score, state.best_step = mean_sumr, state.global_step
            if accelerator.is_main_process:
                _save_model_atomically(unwrapped, best_dir)
        accelerator.wait_for_everyone()
        model.train()

    def save_checkpoint() -> None:
        # written under a hidden name and renamed: a killed run never leaves a checkpoint that looks finished
        target = run_dir / CHECKPOINTS / f"step_{state.global_step}"
        partial = run_dir / CHECKPOINTS / f".step_{state.global_step}.partial"
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
            for old in checkpoint_dirs(run_dir)[: -recipe.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    bar = progress(TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"))
    started = time.perf_counter()
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
                        output = model(batch, recipe.loss)
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
                if state.global_step % recipe.train.log_every_steps == 0:
                    terms = {k: v.item() for k, v in output.terms.items()}
                    accelerator.log(
                        {"train/loss": last_loss, "train/lr": lr, **{f"train/{k}": v for k, v in terms.items()}},
                        step=state.global_step,
                    )
                    if accelerator.is_main_process:
                        with (run_dir / "train_log.jsonl").open("a", encoding="utf-8") as handle:
                            record = {
                                "step": state.global_step,
                                "epoch": state.epoch,
                                "loss": last_loss,
                                "lr": lr,
                                "seconds": round(time.perf_counter() - started, 3),
                            }
                            handle.write(json.dumps({**record, **terms}) + "\n")
                finished = state.global_step >= total_steps
                if state.global_step % eval_every == 0 or finished:
                    validate()
                if state.global_step % checkpoint_every == 0 or finished:
                    save_checkpoint()
                if finished:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
                continue
            break

    # -- the best model on the test split
    best = LeccrModel.from_pretrained(best_dir)
    best.to(accelerator.device)
    test_results = evaluate_languages(
        best, corpus, data.test_split, eval_langs, recipe, accelerator=accelerator, fusion=recipe.eval.fusion
    )
    if accelerator.is_main_process:
        with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            for lang, metrics in test_results.items():
                record = {"step": state.best_step, "split": data.test_split, "lang": lang}
                handle.write(json.dumps({**record, **metrics}) + "\n")
                write_eval_json(run_dir, lang, data.test_split, metrics, fusion=recipe.eval.fusion)
        console.print(metrics_table(test_results, title=f"{run_dir.name}: best model (step {state.best_step}) on {data.test_split}"))
    accelerator.end_training()
    return TrainResult(run_dir, state.global_step, state.best_step, state.best_score, test_results, last_loss)


def _drop_lines_after(path: Path, step: int, final_split: str) -> None:
    """Keep the JSON lines of `path` logged up to `step`; the final (test-split) lines go too."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    kept = [json.dumps(r) for r in records if r.get("step", 0) <= step and r.get("split") != final_split]
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(temporary, path)


def _save_model_atomically(model, folder: Path) -> None:
    from leccr_cli.data.corpus import atomic_directory

    with atomic_directory(folder, overwrite=True) as temporary:
        model.save_pretrained(temporary)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
