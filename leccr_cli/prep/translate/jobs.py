"""Translating a corpus, resumably: `translate_corpus` (`leccr translate`) and its jobs.

`translate_corpus` turns the human English captions of a corpus (or its MLLM descriptions)
into `origin: mt` captions (and `origin: back` back-translations) with an engine of
`engines.py`. Work in progress lives in
`CORPUS/.translate-partial/<engine-model>/<job>/shard-NNNNN/` (shards of `prep/shards.py`,
never mistaken for a finished artifact); a rerun after an interruption reuses the finished
shards and gives exactly the uninterrupted result. Shards left with other settings are
refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import ProgressColumn
from rich.text import Text

from leccr_cli.corpus.corpus import Caption, Corpus, translated_cap_id
from leccr_cli.defaults import SOURCE_LANG, TRANSLATE_SHARD_SIZE
from leccr_cli.errors import CorpusError, LeccrError, Param, Step, at_least, parts
from leccr_cli.prep.shards import ShardStore
from leccr_cli.prep.translate.engines import Seq2SeqEngine, TranslationStats
from leccr_cli.utils.console import progress
from leccr_cli.utils.devices import dtype_name, is_main_process
from leccr_cli.utils.fs import disk_full_reported

PARTIAL_FOLDER = ".translate-partial"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-96:] or "model"


@dataclass
class JobReport:
    """One translated set: a split and language pair of captions, or a description source."""

    kind: str  # "mt", "back" or "descriptions"
    split: str
    src: str
    tgt: str
    model: str  # what the rows record: <engine>:<model id>
    output: str  # "captions" or "descriptions/<name>"
    sources: int = 0  # source rows considered
    already_done: int = 0  # skipped: their translation was already there
    empty_sources: int = 0  # empty or whitespace-only sources, kept out of the batches
    duplicates: int = 0  # sources whose text another source has: translated once
    translated: int = 0  # distinct texts translated in this run
    resumed: int = 0  # distinct texts taken from the shards of an interrupted run
    truncated: int = 0  # distinct texts cut at max_tokens
    empty_outputs: int = 0  # translations that came out empty (not written)
    written: int = 0
    removed: int = 0  # earlier rows dropped (overwrite, and back-translations of replaced captions)
    seconds: float = 0.0

    @property
    def sentences_per_second(self) -> float:
        return self.translated / self.seconds if self.seconds else 0.0


def _job_store(corpus: Corpus, engine: Seq2SeqEngine, name: str, src: str, tgt: str, shard_size: int) -> ShardStore:
    """The shard store of one job: finished (text, translation) shards and the settings they were made with."""
    settings = {
        "engine": engine.name,
        "model": engine.model_id(src, tgt),
        "src": src,
        "tgt": tgt,
        "max_tokens": engine.options.max_tokens,
        "num_beams": engine.options.num_beams,
        "dtype": dtype_name(engine.torch_dtype()),
        "shard_size": shard_size,
    }
    folder = corpus.path / PARTIAL_FOLDER / _slug(f"{engine.name}-{engine.model_id(src, tgt)}") / name
    return ShardStore(folder, settings, ("text", "translation"))


class SentencesPerSecond(ProgressColumn):
    """Sentences per second of a progress task."""

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} sent/s", style="progress.data.speed")


def _translate_resumable(
    engine: Seq2SeqEngine,
    job: ShardStore,
    label: str,
    texts: list[str],
    src: str,
    tgt: str,
    report: JobReport,
    overwrite: bool,
    on_shard: Callable[[int], None] | None,
    console: Console | None,
) -> dict[str, str]:
    """text -> translation for every distinct non-empty text of `texts`, shard by shard.

    Shards already finished by an interrupted run with the same settings are reused (shards
    made with other settings are refused unless `overwrite` discards them); the rest is cut
    into shards in the same order an uninterrupted run would have used.
    """
    state = engine.state
    shard_size = job.settings["shard_size"]
    filled = [text for text in texts if text.strip()]
    unique = list(dict.fromkeys(filled))
    report.empty_sources = len(texts) - len(filled)
    report.duplicates = len(filled) - len(unique)
    job.check(overwrite)
    state.wait_for_everyone()
    if is_main_process():
        job.start()
    state.wait_for_everyone()
    done = {row["text"]: row["translation"] for row in job.rows()}
    report.resumed = sum(1 for text in unique if text in done)
    remaining = [text for text in unique if text not in done]
    first_shard = job.count()
    state.wait_for_everyone()

    stats = TranslationStats()
    if not remaining:
        return done
    engine.load(src, tgt)  # a model that cannot load fails before the progress bar starts
    with progress(console, SentencesPerSecond()) as bar:
        task = bar.add_task(label, total=len(remaining))
        for number, start in enumerate(range(0, len(remaining), shard_size)):
            chunk = remaining[start : start + shard_size]
            end = start + len(chunk)

            def advance(count: int, end: int = end) -> None:
                # the other processes translate as much meanwhile; exact again after each shard
                completed = bar.tasks[0].completed + count * state.num_processes
                bar.update(task, completed=min(completed, end))

            translations = engine.translate(chunk, src, tgt, stats=stats, on_batch=advance)
            if is_main_process():
                rows = [{"text": text, "translation": translation} for text, translation in zip(chunk, translations)]
                job.write(f"{first_shard + number:05d}", rows)
            bar.update(task, completed=end)
            done.update(zip(chunk, translations))
            if on_shard is not None:
                on_shard(first_shard + number)
    report.translated, report.truncated, report.seconds = stats.unique, stats.truncated, stats.seconds
    return done


def _finish(engine: Seq2SeqEngine, corpus: Corpus, job: ShardStore) -> None:
    if is_main_process():
        job.remove(prune_up_to=corpus.path / PARTIAL_FOLDER)
    engine.state.wait_for_everyone()


def _caption_job(
    corpus_path: Path,
    engine: Seq2SeqEngine,
    split: str,
    src: str,
    tgt: str,
    origin: str,
    overwrite: bool,
    shard_size: int,
    on_shard: Callable[[int], None] | None,
    console: Console | None,
) -> JobReport:
    """Translate the `src` captions of a split into `tgt` rows of `origin` (mt: from human, back: from mt)."""
    corpus = Corpus.open(corpus_path)
    captions = corpus.captions()
    source_origin = "human" if origin == "mt" else "mt"
    sources = [c for c in captions if c.split == split and c.lang == src and c.origin == source_origin]
    source_ids = {c.cap_id for c in sources}
    if origin == "mt":
        earlier = [c for c in captions if c.split == split and c.lang == tgt and c.origin == "mt"]
    else:
        earlier = [c for c in captions if c.split == split and c.origin == "back" and c.source in source_ids]
    new_id = {c.cap_id: translated_cap_id(c.cap_id, tgt) for c in sources}
    report = JobReport(origin, split, src, tgt, engine.describe(src, tgt), "captions", sources=len(sources))
    removed: set[str] = set()
    if overwrite:
        removed = {c.cap_id for c in earlier}
        if origin == "mt":  # back-translations of replaced captions no longer match them
            removed |= {c.cap_id for c in captions if c.origin == "back" and c.source in removed}
        todo = sources
    else:
        present = {c.cap_id for c in captions}
        todo = [c for c in sources if new_id[c.cap_id] not in present]
    report.already_done = len(sources) - len(todo)
    report.removed = len(removed)

    job = _job_store(corpus, engine, f"{split}-{src}2{tgt}-{origin}", src, tgt, shard_size)
    label = f"{split} {src}->{tgt}" + (" (back)" if origin == "back" else "")
    translations = _translate_resumable(
        engine, job, label, [c.text for c in todo], src, tgt, report, overwrite, on_shard, console
    )
    rows = []
    for caption in todo:
        text = translations.get(caption.text, "")
        if not text:
            report.empty_outputs += bool(caption.text.strip())
            continue
        rows.append(
            Caption(new_id[caption.cap_id], caption.image_id, split, tgt, origin, text, caption.cap_id, report.model)
        )
    report.written = len(rows)
    if is_main_process() and (rows or removed):
        corpus.add_captions(rows, replace=True, remove=removed)
    _finish(engine, corpus, job)
    return report


def _description_job(
    corpus_path: Path,
    engine: Seq2SeqEngine,
    source: str,
    splits: list[str],
    src: str,
    tgt: str,
    overwrite: bool,
    shard_size: int,
    on_shard: Callable[[int], None] | None,
    console: Console | None,
) -> JobReport:
    """Translate descriptions/<source>/ (images of `splits`) into descriptions/<source>-<tgt>/."""
    corpus = Corpus.open(corpus_path)
    rows = corpus.description_rows(source)
    wanted = {image_id for split in splits for image_id in corpus.image_ids(split)}
    sources = [row for row in rows if row["image_id"] in wanted]
    if not sources:
        raise CorpusError(
            f"corpus {corpus.path}: descriptions/{source} describes no image of split {', '.join(splits)}",
            parts(
                "write them with ",
                Step("caption", python="caption_corpus"),
                ", or choose ",
                Param("splits"),
                f" among {', '.join(corpus.splits)}",
            ),
        )
    output = f"{source}-{tgt}"
    existing = corpus.description_rows(output) if output in corpus.description_sources() else []
    report = JobReport("descriptions", ",".join(splits), src, tgt, engine.describe(src, tgt), f"descriptions/{output}")
    report.sources = len(sources)
    if overwrite:
        replaced = {row["image_id"] for row in sources}
        kept = [row for row in existing if row["image_id"] not in replaced]
        todo = sources
    else:
        kept = existing
        have = {row["image_id"] for row in existing}
        todo = [row for row in sources if row["image_id"] not in have]
    report.already_done = len(sources) - len(todo)
    report.removed = len(existing) - len(kept)

    job = _job_store(corpus, engine, f"descriptions-{_slug(source)}-{src}2{tgt}", src, tgt, shard_size)
    translations = _translate_resumable(
        engine,
        job,
        f"{source} {src}->{tgt}",
        [row["text"] for row in todo],
        src,
        tgt,
        report,
        overwrite,
        on_shard,
        console,
    )
    new_rows = []
    for row in todo:
        text = translations.get(row["text"], "")
        if not text:
            report.empty_outputs += bool(row["text"].strip())
            continue
        new_rows.append({"image_id": row["image_id"], "text": text, "model": report.model, "prompt": row["prompt"]})
    report.written = len(new_rows)
    if is_main_process() and (new_rows or report.removed):
        corpus.write_descriptions(output, kept + new_rows)
    _finish(engine, corpus, job)
    return report


def translate_corpus(
    corpus_path: str | Path,
    targets: list[str],
    engine: Seq2SeqEngine,
    *,
    source_lang: str = SOURCE_LANG,
    splits: list[str] | None = None,
    back: bool = False,
    descriptions: str | None = None,
    overwrite: bool = False,
    shard_size: int = TRANSLATE_SHARD_SIZE,
    on_shard: Callable[[int], None] | None = None,
    console: Console | None = None,
) -> list[JobReport]:
    """Translate a corpus's human `source_lang` captions (or its descriptions) into `targets`.

    Captions: for each split (default `train`) and target, one `origin: mt` row per human
    caption (cap id `translated_cap_id(source, tgt)`, `source` = the English cap id, `model` =
    `<engine>:<model>`); with `back`, the mt rows are translated back (`origin: back`).
    `descriptions`: translate descriptions/<name>/ of the images of `splits` (default all)
    into descriptions/<name>-<tgt>/. Without `overwrite` only what is missing is translated;
    with it, earlier translations of the same split, target and origin are replaced.
    `on_shard(index)` runs after each finished shard (tests use it to interrupt a run); progress
    goes to `console`.
    """
    corpus = Corpus.open(corpus_path)
    if not targets:
        raise LeccrError(
            "no target language given", parts("pass ", Param("targets"), ", e.g. ", Param("targets", "de,fr,cs"))
        )
    if back and descriptions is not None:
        raise LeccrError(
            parts(Param("back"), " applies to captions, not to ", Param("descriptions")), parts("drop ", Param("back"))
        )
    at_least("shard_size", shard_size)
    pairs = [(source_lang, tgt) for tgt in targets] + ([(tgt, source_lang) for tgt in targets] if back else [])
    engine.check_pairs(pairs)
    engine.check_position_limits(pairs)
    if splits is None:
        splits = list(corpus.splits) if descriptions is not None else ["train"]
    for split in splits:
        corpus.check_split(split)
    common = {"shard_size": shard_size, "on_shard": on_shard, "console": console}
    on_full = f"finished shards are kept in {corpus.path / PARTIAL_FOLDER}; rerun the same command to go on"
    lock = corpus.writing() if is_main_process() else contextlib.nullcontext()
    with lock, disk_full_reported(corpus.path, on_full):
        return _translate_jobs(corpus, targets, engine, source_lang, splits, back, descriptions, overwrite, common)


def _translate_jobs(
    corpus: Corpus, targets, engine, source_lang, splits, back, descriptions, overwrite, common
) -> list[JobReport]:
    """The jobs of `translate_corpus`, under the corpus's writer lock."""
    reports: list[JobReport] = []
    if descriptions is not None:
        corpus.description_rows(descriptions)  # a missing source fails here, before any model loads
        for tgt in targets:
            reports.append(
                _description_job(corpus.path, engine, descriptions, splits, source_lang, tgt, overwrite, **common)
            )
        return reports

    captions = corpus.captions()
    for split in splits:
        if not any(c.split == split and c.lang == source_lang and c.origin == "human" for c in captions):
            present = sorted({f"{c.lang}/{c.origin}" for c in captions if c.split == split})
            raise CorpusError(
                f"corpus {corpus.path} has no human {source_lang!r} captions in split {split!r}",
                parts(
                    f"this split has {', '.join(present) or 'no captions'}; choose ",
                    Param("splits"),
                    " or ",
                    Param("source_lang"),
                ),
            )
    for split in splits:
        for tgt in targets:
            reports.append(_caption_job(corpus.path, engine, split, source_lang, tgt, "mt", overwrite, **common))
            if back:
                reports.append(_caption_job(corpus.path, engine, split, tgt, source_lang, "back", overwrite, **common))
    return reports
