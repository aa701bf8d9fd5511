"""`build_index` (`leccr index`): embed a corpus split once with a run's best model into an index folder
(`format.py`), which search and the app query.

The gallery is embedded by `retrieval.encode.gallery_batches`, the code evaluation runs, so
an index holds what evaluation scores against. Building holds the index folder's writer lock
(`utils.fs.writer_lock`, `INDEX/.leccr.lock`) and is resumable: every batch is written as a
shard (`prep/shards.py`) of the hidden parts folder (`INDEX/.parts/`) as it comes; a rerun
embeds only what is missing (images new in the corpus, or whose description changed) and
reuses the rest. The finished index is written into a temporary folder that replaces INDEX
(`utils.fs.atomic_directory`, journaled), so INDEX never looks finished half-written. The rows
of an index are the split's images in gallery order, so an index updated after images were
added equals one built from scratch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from datasets import Dataset, Features, Value
from datasets.utils.logging import disable_progress_bar
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

from leccr_cli.config import uses_slot_embeddings
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.defaults import INDEX_DTYPE, INDEX_SPLIT
from leccr_cli.errors import CorpusError, IndexFolderError, ModelError, Param, Step, parts
from leccr_cli.model.leccr import LeccrModel
from leccr_cli.prep.shards import ShardStore
from leccr_cli.retrieval.encode import gallery_batches
from leccr_cli.retrieval.index.format import (
    CODES_ALIGN,
    CODES_FILE,
    EMBEDDINGS_FILE,
    INDEX_FILE,
    INDEX_FORMAT,
    ITEM_COLUMNS,
    ITEMS_DIR,
    PARTS_DIR,
    IndexInfo,
    ModelIdentity,
)
from leccr_cli.retrieval.index.reader import Index
from leccr_cli.retrieval.prefilter import padded_width, quantize
from leccr_cli.runs.layout import load_run
from leccr_cli.utils.devices import TORCH_DTYPES, parse_dtype, select_device
from leccr_cli.utils.fs import LOCK_FILE, atomic_directory, disk_full_reported, is_empty_folder, writer_lock
from leccr_cli.utils.safetensors_io import STORAGE_CODES, StreamingSafetensors, memory_map, tensor_bytes
from leccr_cli.utils.text import first_few

QUANTIZE_ROWS = 16384  # rows quantized at a time while writing the codes


def write_codes(path: Path, embeddings: Path, image_ids: list[str]) -> None:
    """Write `codes.safetensors` for the rows of an embeddings file (quantized a block of rows at a time).

    An embedding that is not finite is refused, naming its images: the model that made it is broken.
    """
    tensors = memory_map(embeddings).tensors
    count, dim = tensors["global"].shape
    width = padded_width(dim)
    parts = {"global": tensors["global"]}
    if "slots" in tensors:
        parts["slots"] = tensors["slots"]
    layout = {f"{part}_codes": ("I8", [*rows.shape[:-1], width], 1) for part, rows in parts.items()}
    layout.update({f"{part}_bounds": ("F64", [2], 8) for part in parts})
    layout.update({f"{part}_scales": ("BF16", list(rows.shape[:-1]), 2) for part, rows in parts.items()})
    out = StreamingSafetensors(path, layout, {"format": INDEX_FORMAT}, align=CODES_ALIGN)
    try:
        for part, rows in parts.items():
            per_image = math.prod(rows.shape[1:-1])  # code rows per image: 1, or its slots
            norm = residual = 0.0
            for start in range(0, count, QUANTIZE_ROWS):
                block = rows[start : start + QUANTIZE_ROWS].reshape(-1, dim)
                finite = torch.isfinite(block).reshape(-1, per_image * dim).all(dim=1)
                if not bool(finite.all()):
                    broken = [image_ids[start + i] for i in (~finite).nonzero().flatten().tolist()]
                    raise ModelError(
                        f"the model gave non-finite embeddings (images: {first_few(broken)})",
                        "its weights are broken (check the run's training log); retrain or use another run",
                    )
                quantized = quantize(block)
                out.write(f"{part}_codes", start * per_image * width, tensor_bytes(quantized.codes))
                out.write(f"{part}_scales", start * per_image * 2, tensor_bytes(quantized.scales))
                norm, residual = max(norm, quantized.max_norm), max(residual, quantized.max_residual)
            out.write(f"{part}_bounds", 0, tensor_bytes(torch.tensor([norm, residual], dtype=torch.float64)))
    finally:
        out.close()


@dataclass
class IndexReport:
    """What `build_index` did."""

    folder: Path
    count: int  # rows of the index
    embedded: int  # images embedded by this run
    resumed: int  # images an interrupted run had embedded (its parts), used now
    reused: int  # rows kept from the existing index
    dropped: int  # rows of the existing index whose image left the split
    dtype: str
    status: str  # built | updated | up to date


@dataclass
class _Plan:
    image_ids: list[str]
    paths: list[str]
    descriptions: list[str]
    slot_width: int | None  # K
    padded: bool


def _storage_dtype(name: str) -> str:
    canonical = parse_dtype(name)
    return INDEX_DTYPE if canonical == "auto" else canonical


def _default_split(corpus: Corpus) -> str:
    if len(corpus.splits) == 1:
        return corpus.splits[0]
    if INDEX_SPLIT in corpus.splits:
        return INDEX_SPLIT
    raise CorpusError(
        f"corpus {corpus.path} has the splits {', '.join(corpus.splits)}",
        parts("choose the one to index with ", Param("split")),
    )


def _gallery_descriptions(
    model: LeccrModel, corpus: Corpus, split: str, image_ids: list[str], source: str | None
) -> list[str]:
    """The description of every image (required when the model reads them; else shown when the corpus has them)."""
    if source is None:
        return [""] * len(image_ids)
    if not model.reads_descriptions and source not in corpus.description_sources():
        return [""] * len(image_ids)
    if source not in corpus.description_sources():
        known = ", ".join(corpus.description_sources()) or "none"
        raise CorpusError(
            f"this model reads image descriptions, and corpus {corpus.path} has none from {source!r} "
            f"(present: {known})",
            parts(
                "write them with ",
                Step(
                    "caption",
                    corpus.path,
                    source=source,
                    python=f"caption_corpus(corpus, describer, source={source!r})",
                ),
                " (or choose a source with ",
                Param("descriptions"),
                ")",
            ),
        )
    found = corpus.descriptions(source)
    missing = [image_id for image_id in image_ids if not found.get(image_id, "").strip()]
    if missing and model.reads_descriptions:
        raise CorpusError(
            f"{len(missing)} of {len(image_ids)} images of split {split!r} have no description in "
            f"descriptions/{source}/ of {corpus.path} (first: {first_few(missing)}); this model reads descriptions",
            parts(
                "describe them with ",
                Step(
                    "caption",
                    corpus.path,
                    source=source,
                    splits=split,
                    python=f"caption_corpus(corpus, describer, source={source!r}, splits=[{split!r}])",
                ),
            ),
        )
    return [found.get(image_id, "") for image_id in image_ids]


def _done(store: ShardStore, wanted: dict[str, str]) -> dict[str, tuple[Path, int]]:
    """image id -> (shard file, row) of every image a finished batch embedded with the description `wanted` gives it."""
    found = {}
    for path in store.tensor_shards():
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        for row, (image_id, text) in enumerate(zip(json.loads(meta["image_ids"]), json.loads(meta["descriptions"]))):
            if wanted.get(image_id) == text:
                found.setdefault(image_id, (path, row))
    return found


def _write_batch(
    store: ShardStore, image_ids: list[str], descriptions: list[str], tensors: dict[str, torch.Tensor]
) -> None:
    metadata = {
        "image_ids": json.dumps(image_ids, ensure_ascii=False),
        "descriptions": json.dumps(descriptions, ensure_ascii=False),
    }
    store.write_tensors(uuid.uuid4().hex, tensors, metadata)


def _batch_tensors(embeds, plan: _Plan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = {"global": embeds.global_embeds.to("cpu", dtype)}
    if plan.slot_width is not None:
        slots = embeds.slot_embeds.to("cpu", dtype)
        extra = plan.slot_width - slots.shape[1]
        tensors["slots"] = torch.nn.functional.pad(slots, (0, 0, 0, extra))
        if plan.padded:
            mask = (
                embeds.slot_mask.cpu()
                if embeds.slot_mask is not None
                else torch.ones(slots.shape[:2], dtype=torch.bool)
            )
            tensors["slot_mask"] = torch.nn.functional.pad(mask, (0, extra), value=False)
    return tensors


class _RowSource:
    """Reads rows of the existing index and of part files, keeping one part open at a time."""

    def __init__(self, existing: Index | None):
        self.existing = existing
        self.current: tuple[Path | None, dict[str, torch.Tensor]] = (None, {})

    def tensors(self, source: Path | None) -> dict[str, torch.Tensor]:
        if source is None:
            index = self.existing
            found = {"global": index.global_embeds}
            if index.slot_embeds is not None:
                found["slots"] = index.slot_embeds
            if index.slot_mask is not None:
                found["slot_mask"] = index.slot_mask
            return found
        if self.current[0] != source:
            self.current = (source, load_file(str(source)))
        return self.current[1]


def _write_embeddings(
    path: Path, plan: _Plan, dim: int, dtype: str, rows: list[tuple[Path | None, int]], existing: Index | None
) -> None:
    """Stream the final embeddings file: row i comes from `rows[i]`, (shard file, row) or (None, row of the existing
    index)."""
    code, itemsize = STORAGE_CODES[dtype], TORCH_DTYPES[dtype].itemsize
    count = len(rows)
    layout = {"global": (code, [count, dim], itemsize)}
    row_bytes = {"global": dim * itemsize}
    if plan.slot_width is not None:
        layout["slots"] = (code, [count, plan.slot_width, dim], itemsize)
        row_bytes["slots"] = plan.slot_width * dim * itemsize
        if plan.padded:
            layout["slot_mask"] = ("BOOL", [count, plan.slot_width], 1)
            row_bytes["slot_mask"] = plan.slot_width
    reader = _RowSource(existing)
    out = StreamingSafetensors(path, layout, {"format": INDEX_FORMAT})
    try:
        start = 0
        while start < count:  # copy runs of consecutive rows of one source at once
            source, first = rows[start]
            stop = start + 1
            while stop < count and rows[stop] == (source, first + stop - start):
                stop += 1
            tensors = reader.tensors(source)
            for name in layout:
                out.write(name, start * row_bytes[name], tensor_bytes(tensors[name][first : first + stop - start]))
            start = stop
    finally:
        out.close()


def _write_items(folder: Path, plan: _Plan) -> None:
    disable_progress_bar()
    features = Features({column: Value("string") for column in ITEM_COLUMNS})
    table = {"image_id": plan.image_ids, "path": plan.paths, "description": plan.descriptions}
    Dataset.from_dict(table, features=features).save_to_disk(str(folder), num_shards=1 if not plan.image_ids else None)


def _existing_index(out: Path, overwrite: bool) -> Index | None:
    if not out.exists():
        return None
    if not out.is_dir():
        raise IndexFolderError(
            parts(Param("out", out), " exists and is not a folder"), parts("choose another ", Param("out"))
        )
    if overwrite or not any(entry.name not in (LOCK_FILE, PARTS_DIR) for entry in out.iterdir()):
        return None
    if not (out / INDEX_FILE).is_file():
        raise IndexFolderError(
            parts(Param("out", out), " is not empty and not an index"),
            parts("choose another ", Param("out"), ", or pass ", Param("overwrite", True), " to replace it"),
        )
    return Index.open(out)


def build_index(
    run: str | Path,
    corpus_path: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    descriptions: str | None = None,
    dtype: str = INDEX_DTYPE,
    batch_size: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    on_batch: Callable[[int], None] | None = None,
    console: Console | None = None,
) -> IndexReport:
    """Embed the images of a corpus split with a run's best model into the index folder `out`.

    `split` defaults to the corpus's only split (or `gallery`); `descriptions` to the run's
    `data.descriptions`; `dtype` is the storage dtype (fp16, bf16, fp32; auto = fp16);
    `batch_size` to the run's `eval.batch_size`; `device` to the GPU when there is one;
    `overrides` (`a.b=value`) change the run's recipe. An existing index of the same model,
    corpus, split, source and dtype is updated (only new or re-described images are embedded);
    one made otherwise is refused unless `overwrite`. `on_batch(rows)` is called after every
    embedded batch; progress goes to `console`.
    """
    run_dir, out = Path(run).resolve(), Path(out)
    storage = _storage_dtype(dtype)
    recipe, model = load_run(run_dir, list(overrides))
    identity = ModelIdentity.of_run(run_dir)
    corpus = Corpus.open(corpus_path)
    if corpus.modality != model.modality:
        raise CorpusError(
            f"corpus {corpus.path} is a {corpus.modality} corpus; this run's model embeds {model.modality}s"
        )
    split = corpus.check_split(split) if split is not None else _default_split(corpus)
    source = descriptions or recipe.data.descriptions
    image_ids = corpus.image_ids(split)
    paths = corpus.image_paths(split)
    texts = _gallery_descriptions(model, corpus, split, image_ids, source)
    config = model.config
    slot_width = None
    if uses_slot_embeddings(config):
        slot_width = config.num_slots if config.slots else config.text.description_max_tokens
    plan = _Plan(
        image_ids,
        [os.path.abspath(paths[i]) for i in image_ids],
        texts,
        slot_width,
        slot_width is not None and not config.slots,
    )
    info = IndexInfo(
        model=identity,
        corpus=str(corpus.path.resolve()),
        split=split,
        descriptions=source if model.reads_descriptions else None,
        count=len(image_ids),
        dim=config.joint_dim,
        slots=slot_width,
        slot_mask=plan.padded,
        dtype=storage,
    )

    _existing_index(out, overwrite)  # refuse a folder that is not an index before anything is written there
    created = not out.exists()
    try:
        with writer_lock(out):
            kept_where = f"finished batches are kept in {out / PARTS_DIR}; rerun the same command once there is room"
            gallery = {
                "descriptions": source,
                "video_features": recipe.data.video_features,
                "batch_size": batch_size or recipe.eval.batch_size,
            }
            with disk_full_reported(out, kept_where):
                return _build(model, corpus, split, plan, info, out, overwrite, device, gallery, on_batch, console)
    except BaseException:
        if created and out.is_dir() and is_empty_folder(out):
            shutil.rmtree(out, ignore_errors=True)  # nothing written: leave no folder behind
        raise


def _build(
    model, corpus, split, plan: _Plan, info: IndexInfo, out: Path, overwrite, device, gallery: dict, on_batch, console
) -> IndexReport:
    """`build_index` under the index folder's writer lock."""
    image_ids, texts, storage = plan.image_ids, plan.descriptions, info.dtype
    existing = _existing_index(out, overwrite)
    if existing is not None:
        _check_same_settings(existing, info, out)
    settings = {key: value for key, value in json.loads(info.to_json()).items() if key != "count"}
    settings["model"] = {"run": info.model.run, "weights": info.model.weights}
    store = ShardStore(out / PARTS_DIR, settings)
    store.check(overwrite)
    store.start()

    # each row comes from the existing index (same description), a part of an earlier run, or is embedded now
    wanted = dict(zip(image_ids, texts))
    kept = {}
    if existing is not None:
        kept = {
            i: row
            for row, (i, text) in enumerate(zip(existing.image_ids, existing.descriptions))
            if wanted.get(i) == text
        }
    done = _done(store, wanted)
    todo = [i for i in image_ids if i not in kept and i not in done]
    resumed = sum(i in done and i not in kept for i in image_ids)

    embedded = 0
    if todo:
        target = select_device(device)
        model.to(target)
        torch_dtype = TORCH_DTYPES[storage]
        for batch_ids, embeds in gallery_batches(model, corpus, split, image_ids=todo, console=console, **gallery):
            _write_batch(store, batch_ids, [wanted[i] for i in batch_ids], _batch_tensors(embeds, plan, torch_dtype))
            embedded += len(batch_ids)
            if on_batch is not None:
                on_batch(len(batch_ids))
        done = _done(store, wanted)

    rows = [done[i] if i in done else (None, kept[i]) for i in image_ids]
    reused = sum(origin is None for origin, _ in rows)
    dropped = 0 if existing is None else len(set(existing.image_ids) - set(image_ids))
    if (
        existing is not None
        and reused == len(image_ids)
        and (existing.image_ids, existing.paths) == (image_ids, plan.paths)
    ):
        store.remove()
        return IndexReport(out, len(image_ids), 0, 0, reused, 0, storage, "up to date")
    # the new folder replaces INDEX (its parts with it) in one journaled step
    with atomic_directory(out, overwrite=True) as temporary:
        _write_embeddings(temporary / EMBEDDINGS_FILE, plan, info.dim, storage, rows, existing)
        write_codes(temporary / CODES_FILE, temporary / EMBEDDINGS_FILE, image_ids)
        _write_items(temporary / ITEMS_DIR, plan)
        (temporary / INDEX_FILE).write_text(info.to_json(), encoding="utf-8")
    status = "built" if existing is None else "updated"
    return IndexReport(out, len(image_ids), embedded, resumed, reused, dropped, storage, status)


def _check_same_settings(existing: Index, wanted: IndexInfo, out: Path) -> None:
    """An index is updated only by the model, corpus, split, description source and dtype that built it."""
    have = existing.info
    differing = []
    if not have.model.same_weights(wanted.model) or have.model.run != wanted.model.run:
        differing.append(
            f"the model (index: run {have.model.run}, weights {have.model.weights[:12]}; now: run {wanted.model.run}, "
            f"weights {wanted.model.weights[:12]})"
        )
    for key in ("corpus", "split", "descriptions", "dtype", "dim", "slots", "slot_mask"):
        if getattr(have, key) != getattr(wanted, key):
            differing.append(f"{key} (index: {getattr(have, key)}, now: {getattr(wanted, key)})")
    if differing:
        raise IndexFolderError(
            f"index {out} was built otherwise: {'; '.join(differing)}",
            parts("pass ", Param("overwrite", True), " to rebuild it, or choose another ", Param("out")),
        )
