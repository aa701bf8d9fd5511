"""The run folder: its layout, finding, preparing and reading runs (logs and eval files: `runs/logs.py`).

```
runs/<name>/
  recipe.yaml                 the resolved recipe (overrides applied, paths absolute)
  checkpoints/step_<n>/       accelerate save_state, the last `train.keep_checkpoints`
  model/                      the best model on validation (mean SumR over the evaluated languages)
  metrics.jsonl               one line per evaluation and language
  train_log.jsonl             loss, lr, loss terms and seconds, every `train.log_every_steps` steps
  logs/                       tracker logs (TensorBoard) when `train.log_with` says so
  eval/<lang>-<split>.json    test metrics of the best model, and what `leccr evaluate` writes
                              (-gallery-all, -fusion<A>, -translate-test for the other modes)
```
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from leccr_cli.config import RECIPE_FILE, Recipe, recipe_to_dict, recipe_with_overrides, save_recipe
from leccr_cli.defaults import RUNS_ROOT
from leccr_cli.errors import Param, RecipeError, RunError, Step, parts
from leccr_cli.model.factory import load_model
from leccr_cli.model.leccr import LeccrModel
from leccr_cli.utils.fs import clear_folder, is_empty_folder, recover, replace_directory, temporary_sibling

MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAIN_LOG_FILE = "train_log.jsonl"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
DEFAULT_RUNS_ROOT = Path(RUNS_ROOT)


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run folder (it holds a recipe.yaml)."""
    return (Path(path) / RECIPE_FILE).is_file()


# ------------------------------------------------------------------------ finding runs


def default_run_dir(recipe: Recipe, runs_root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when taken."""
    candidate = runs_root / recipe.name
    number = 1
    while candidate.exists() and not is_empty_folder(candidate):
        number += 1
        candidate = runs_root / f"{recipe.name}-{number}"
    return candidate


def latest_run(runs_root: Path = DEFAULT_RUNS_ROOT, name: str | None = None) -> Path:
    """The most recently modified run folder (optionally of one recipe name)."""
    runs = [
        p
        for p in runs_root.glob("*")
        if is_run(p) and (name is None or p.name == name or p.name.startswith(f"{name}-"))
    ]
    if not runs:
        what = f"no run of recipe {name!r}" if name else "no runs"
        train_one = Step("train", Param("recipe", metavar="RECIPE.yaml"), python="train(load_recipe(RECIPE.yaml))")
        raise RunError(
            f"{what} under {runs_root.resolve()}", parts("train one with ", train_one, " or name the run folder")
        )
    return max(runs, key=lambda p: (p / RECIPE_FILE).stat().st_mtime)


def choose_run_dir(recipe: Recipe, output_dir: str | Path | None, resume: str | None, runs_root: Path) -> Path:
    """Where a `leccr train` run goes: `--output`, the run `--resume` names, or a fresh runs/<name>."""
    if output_dir is not None:
        return Path(output_dir)
    if resume is not None and resume != "latest":
        candidate = Path(resume)
        return candidate if (candidate / CHECKPOINTS_DIR).is_dir() else candidate.parent.parent
    if resume == "latest":
        return latest_run(runs_root, recipe.name)
    return default_run_dir(recipe, runs_root)


# ------------------------------------------------------------------------ checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = run_dir / CHECKPOINTS_DIR
    found = [p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(resume: str, run_dir: Path) -> Path:
    """`latest` -> the newest checkpoint of `run_dir`; a checkpoint folder; or a run folder (its newest)."""
    if resume != "latest":
        path = Path(resume)
        if (path / CHECKPOINTS_DIR).is_dir():
            run_dir, resume = path, "latest"
        elif path.is_dir() and path.parent.name == CHECKPOINTS_DIR:
            return path
        else:
            raise RunError(
                parts(
                    Param("resume", resume), ": not a checkpoint folder (runs/NAME/checkpoints/step_N) nor a run folder"
                )
            )
    found = checkpoint_dirs(run_dir)
    if not found:
        raise RunError(
            parts(
                Param("resume"),
                f": {run_dir} has no checkpoint (the run stopped before its first one): there is nothing to resume",
            ),
            parts(
                "start it again: drop ",
                Param("resume"),
                " and pass ",
                Param("overwrite", True),
                " (`",
                Param("output_dir", str(run_dir)),
                " ",
                Param("overwrite", True),
                "`)",
            ),
        )
    return found[-1]


def partial_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    return run_dir / CHECKPOINTS_DIR / f".step_{step}.partial"


def finish_checkpoint(run_dir: Path, step: int, keep: int) -> Path:
    """Rename the written checkpoint of `step` into place and drop all but the newest `keep`.

    A killed run therefore never leaves a checkpoint that looks finished.
    """
    target = run_dir / CHECKPOINTS_DIR / f"step_{step}"
    replace_directory(partial_checkpoint_dir(run_dir, step), target)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        remove_checkpoint(old)
    return target


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint; it is renamed aside first, so a kill never leaves half of one that looks finished."""
    aside = temporary_sibling(folder, "old")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


# ------------------------------------------------------------------------ preparing runs


def _recipe_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _recipe_differences(a[key], b[key], dotted + ".")
        elif a.get(key) != b.get(key):
            keys.append(dotted)
    return keys


def check_run_dir(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that `run_dir` may hold this run (creates nothing); refuse a folder that holds another one."""
    existing = run_dir / RECIPE_FILE
    if resume:
        if not existing.is_file():
            raise RunError(parts(Param("resume"), f": {run_dir} holds no run (no {RECIPE_FILE})"))
        before = yaml.safe_load(existing.read_text(encoding="utf-8"))
        changed = _recipe_differences(before, recipe_to_dict(recipe))
        if changed:
            raise RunError(
                parts(
                    Param("resume"),
                    f": the recipe differs from the one {run_dir} was trained with ({', '.join(changed[:5])})",
                ),
                parts("resume with the same recipe and ", Param("overrides"), " overrides, or start a new run"),
            )
        return
    if run_dir.exists() and not is_empty_folder(run_dir) and not overwrite:
        if is_run(run_dir) and not checkpoint_dirs(run_dir):
            raise RunError(
                f"{run_dir} holds a run that stopped before its first checkpoint: there is nothing to resume",
                parts(
                    "pass ",
                    Param("overwrite", True),
                    " to start it again, or ",
                    Param("output_dir"),
                    " for a new folder",
                ),
            )
        raise RunError(
            f"{run_dir} already holds a run",
            parts(
                "pass ",
                Param("resume", "latest"),
                " to continue it, ",
                Param("overwrite", True),
                " to replace it, or ",
                Param("output_dir"),
                " for a new folder",
            ),
        )


def create_run_dir(recipe: Recipe, run_dir: Path, *, overwrite: bool) -> None:
    """(Main process) make a fresh run folder holding the resolved recipe and an empty metrics log."""
    if run_dir.exists() and overwrite:
        clear_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / RECIPE_FILE)
    (run_dir / METRICS_FILE).write_text("", encoding="utf-8")


# ------------------------------------------------------------------------ reading runs


def read_run_recipe(run_dir: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The resolved recipe a run was trained with, with `overrides` (`a.b=value`) applied to its data, eval and train
    keys.

    The `model` block describes the trained model and cannot be overridden.
    """
    recipe_file = Path(run_dir) / RECIPE_FILE
    if not recipe_file.is_file():
        raise RunError(
            f"{run_dir} is not a run folder (no {RECIPE_FILE})",
            parts("give a folder written by ", Step("train", python="train"), ", e.g. runs/demo"),
        )
    try:
        raw = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RunError(f"{recipe_file}: not valid YAML ({error})") from None
    for text in overrides or ():
        if text.strip().startswith("model."):
            raise RecipeError(
                parts(
                    Param("overrides", text, quote=True),
                    f": {run_dir} holds a trained model; its model keys cannot change",
                )
            )
    return recipe_with_overrides(raw, str(recipe_file), list(overrides or ()))


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, LeccrModel]:
    """(recipe, best model) of a run folder; a missing folder or `model/` is a `RunError`.

    `overrides` change the recipe's data, eval and train keys (see `read_run_recipe`).
    """
    run_dir = Path(run_dir)
    recipe = read_run_recipe(run_dir, overrides)
    recover(run_dir / MODEL_DIR)  # training replaces model/ at every better validation
    if not (run_dir / MODEL_DIR / "config.json").is_file():
        resume = Step("train", "...", resume="latest", python="train(recipe, run_dir, resume='latest')")
        raise RunError(
            f"run {run_dir} has no {MODEL_DIR}/ yet",
            parts("training writes it at its first validation; wait for it, or resume the run with ", resume),
        )
    return recipe, load_model(run_dir / MODEL_DIR)
