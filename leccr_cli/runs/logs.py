"""A run's logs and evaluation files: strict JSON lines (`metrics.jsonl`, `train_log.jsonl`) and `eval/<name>.json`.

Logs and eval files are strict JSON: NaN and infinite numbers are written as null. A log line
cut short by a kill is skipped when read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable

from leccr_cli.config import Recipe
from leccr_cli.errors import EvaluationError, InvalidArgument, Param, parts
from leccr_cli.runs.layout import EVAL_DIR
from leccr_cli.utils.fs import atomic_write_text


def _finite_or_null(value):
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def check_json_path(path: str | Path, name: str = "json_path") -> Path:
    """Refuse a JSON output path (parameter `name`) that is a folder or cannot be written, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise InvalidArgument(
            name,
            path,
            "is a folder",
            f"give a file name, e.g. {path / 'metrics.json'}",
            message=parts(Param(name, path), " is a folder"),
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InvalidArgument(name, path, f"{folder} is not a folder", "give a path inside a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidArgument(name, path, "cannot write there (permission denied)", "give a path you can write to")
    return path


def write_json(record: dict, path: str | Path) -> Path:
    """Write `record` as strict JSON (NaN and infinities as null) to `path` atomically."""
    text = json.dumps(_finite_or_null(record), indent=2, allow_nan=False) + "\n"
    try:
        return atomic_write_text(path, text)
    except OSError as error:
        raise EvaluationError(
            f"cannot write {path} ({error.strerror or error})", "give a path you can write to"
        ) from None


def strict_json(record: dict) -> str:
    """One record as strict JSON on one line: NaN and infinite numbers become null."""
    return json.dumps(_finite_or_null(record), allow_nan=False)


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
    return write_json(record, Path(run_dir) / EVAL_DIR / name)
