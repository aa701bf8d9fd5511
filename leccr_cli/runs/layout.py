"""The run folder: its layout, finding and preparing runs, checkpoints, logs and eval files.

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

import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

import yaml

from leccr_cli.config import Recipe, recipe_from_dict, recipe_to_dict, save_recipe
from leccr_cli.errors import RunError
from leccr_cli.utils.fs import atomic_write_text, clear_folder, is_empty_folder, recover, replace_directory, temporary_sibling
from leccr_cli.retrieval.metrics import write_metrics_json
from leccr_cli.model.factory import load_model
from leccr_cli.model.leccr import LeccrModel

RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TRAIN_LOG_FILE = "train_log.jsonl"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
DEFAULT_RUNS_ROOT = Path("runs")


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run folder (it holds a recipe.yaml)."""
    return (Path(path) / RECIPE_FILE).is_file()


def run_of_model(model: LeccrModel) -> Path | None:
    """The run folder a model was loaded from (its `model/` folder's parent), if any."""
    folder = model.source_folder
    if folder is not None and Path(folder).name == MODEL_DIR and is_run(Path(folder).parent):
        return Path(folder).parent
    return None


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
        raise RunError(f"{what} under {runs_root.resolve()}", "train one with `leccr train RECIPE.yaml` or name the run folder")
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
            raise RunError(f"--resume {resume}: not a checkpoint folder (runs/NAME/checkpoints/step_N) nor a run folder")
    found = checkpoint_dirs(run_dir)
    if not found:
        raise RunError(
            f"--resume: {run_dir} has no checkpoint (the run stopped before its first one): there is nothing to resume",
            f"start it again: drop --resume and pass --overwrite (`--output {run_dir} --overwrite`)",
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
            raise RunError(f"--resume: {run_dir} holds no run (no {RECIPE_FILE})")
        before = yaml.safe_load(existing.read_text(encoding="utf-8"))
        changed = _recipe_differences(before, recipe_to_dict(recipe))
        if changed:
            raise RunError(
                f"--resume: the recipe differs from the one {run_dir} was trained with ({', '.join(changed[:5])})",
                "resume with the same recipe and --set overrides, or start a new run",
            )
        return
    if run_dir.exists() and not is_empty_folder(run_dir) and not overwrite:
        if is_run(run_dir) and not checkpoint_dirs(run_dir):
            raise RunError(
                f"{run_dir} holds a run that stopped before its first checkpoint: there is nothing to resume",
                "pass --overwrite to start it again, or --output for a new folder",
            )
        raise RunError(
            f"{run_dir} already holds a run",
            "pass --resume latest to continue it, --overwrite to replace it, or --output for a new folder",
        )


def create_run_dir(recipe: Recipe, run_dir: Path, *, overwrite: bool) -> None:
    """(Main process) make a fresh run folder holding the resolved recipe and an empty metrics log."""
    if run_dir.exists() and overwrite:
        clear_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / RECIPE_FILE)
    (run_dir / METRICS_FILE).write_text("", encoding="utf-8")


# ------------------------------------------------------------------------ reading runs


def read_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe a run was trained with."""
    recipe_file = Path(run_dir) / RECIPE_FILE
    if not recipe_file.is_file():
        raise RunError(f"{run_dir} is not a run folder (no {RECIPE_FILE})", "give a folder written by `leccr train`, e.g. runs/demo")
    try:
        raw = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RunError(f"{recipe_file}: not valid YAML ({error})") from None
    return recipe_from_dict(raw, str(recipe_file))


def load_run(run_dir: str | Path) -> tuple[Recipe, LeccrModel]:
    """(recipe, best model) of a run folder; a missing folder or `model/` is a `RunError`."""
    run_dir = Path(run_dir)
    recipe = read_run_recipe(run_dir)
    recover(run_dir / MODEL_DIR)  # training replaces model/ at every better validation
    if not (run_dir / MODEL_DIR / "config.json").is_file():
        raise RunError(
            f"run {run_dir} has no {MODEL_DIR}/ yet",
            "training writes it at its first validation; wait for it, or resume the run with `leccr train ... --resume latest`",
        )
    return recipe, load_model(run_dir / MODEL_DIR)


# ------------------------------------------------------------------------ logs and eval files


def strict_json(record: dict) -> str:
    """One record as strict JSON: NaN and infinite numbers become null."""
    return json.dumps(
        {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}, allow_nan=False
    )


def append_records(path: Path, records: Iterable[dict]) -> None:
    """Append one strict JSON line per record to a run's log (metrics.jsonl, train_log.jsonl)."""
    text = "".join(strict_json(record) + "\n" for record in records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def read_records(path: Path) -> list[dict]:
    """The JSON lines of a run's log; a line cut short by a kill is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def drop_records_after(path: Path, step: int, final_split: str) -> None:
    """Keep the JSON lines of `path` logged up to `step`; the final (test-split) lines go too.

    A resumed run logs again what the interrupted run logged after its checkpoint.
    """
    if not path.is_file():
        return
    kept = [strict_json(r) for r in read_records(path) if r.get("step", 0) <= step and r.get("split") != final_split]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def eval_json_name(
    lang: str,
    split: str,
    fusion: float | None = None,
    translate_test: bool = False,
    fusion_mode: str = "linear",
    gallery: str = "language",
    corpus: str | None = None,
) -> str:
    """eval/<lang>-<split>.json, with -fusion<A> (linear) or -minmax<A>, -translate-test and -gallery-all for
    the other scoring modes, and -on-<corpus> when the queries and gallery come from another corpus than the run's."""
    name = f"{lang}-{split}"
    if fusion is not None:
        name += f"-{'minmax' if fusion_mode == 'minmax' else 'fusion'}{fusion:g}"
    if translate_test:
        name += "-translate-test"
    if gallery != "language":
        name += f"-gallery-{gallery}"
    if corpus is not None:
        name += f"-on-{re.sub(r'[^A-Za-z0-9._-]+', '_', corpus).strip('_') or 'corpus'}"
    return f"{name}.json"


def other_corpus_label(recipe: Recipe, corpus_name: str, corpus_path: Path) -> str | None:
    """None when `corpus_path` is the run's own corpus, else the name its eval files carry.

    That is the corpus's name, with a hash of its path when the run's corpus has the same name.
    """
    own = Path(recipe.data.corpus).expanduser().resolve()
    evaluated = Path(corpus_path).expanduser().resolve()
    if evaluated == own:
        return None
    if corpus_name != _corpus_name(own):
        return corpus_name
    return f"{corpus_name}-{hashlib.sha1(str(evaluated).encode('utf-8')).hexdigest()[:8]}"


def _corpus_name(folder: Path) -> str | None:
    try:
        return json.loads((folder / "corpus.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def write_eval_json(
    run_dir: Path,
    lang: str,
    split: str,
    metrics: dict,
    *,
    fusion: float | None = None,
    translate_test: bool = False,
    fusion_mode: str = "linear",
    gallery: str = "language",
    corpus: Path | None = None,
    corpus_label: str | None = None,
) -> Path:
    """Write the metrics (and how they were scored: fusion and its mode, translate-test, gallery mode and
    size) to eval/<name> in a run folder (see `eval_json_name`).

    `corpus` (the corpus folder evaluated) is recorded; `corpus_label` names another corpus than
    the run's in the file name, so the run's own results are never overwritten by it.
    """
    record = {
        "lang": lang,
        "split": split,
        "fusion": fusion,
        "fusion_mode": fusion_mode if fusion is not None else None,
        "translate_test": translate_test,
        "gallery": gallery,
        "corpus": None if corpus is None else str(corpus),
        **metrics,
    }
    name = eval_json_name(
        lang, split, fusion, translate_test, fusion_mode=fusion_mode, gallery=gallery, corpus=corpus_label
    )
    return write_metrics_json(record, Path(run_dir) / EVAL_DIR / name)
