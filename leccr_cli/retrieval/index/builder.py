"""`leccr index`: embed a corpus split once with a run's best model into an index folder, which
`leccr search` and `leccr app` query.

```
INDEX/
  index.json               the model (run folder, hash of its model.safetensors), corpus, split,
                           description source, count, dims, storage dtype
  embeddings.safetensors   global [N, D]; slots [N, K, D] (and slot_mask [N, K]) when the model has
                           slot embeddings; fp16 by default
  codes.safetensors        the same rows as int8 codes with a scale each (`prefilter`): search's
                           first pass reads these, then scores the rows that can still win from
                           embeddings.safetensors
  items/                   HF dataset: image_id, path, description (the row order of the embeddings)
```

The gallery is embedded by `evaluate.gallery_batches`, the code `leccr evaluate` runs, so an
index holds what evaluation scores against. Building holds the index folder's writer lock
(`fs.writer_lock`, `INDEX/.leccr.lock`) and is resumable: every batch is written to a hidden
parts folder (`INDEX/.parts/`) as it comes; a rerun embeds only what is missing (images new
in the corpus, or whose description changed) and reuses the rest. The finished index is
written into a temporary folder that replaces INDEX (`fs.atomic_directory`, journaled), so
INDEX never looks finished half-written. The rows of an index are the split's images in
gallery order, so an index updated after images were added equals one built from scratch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, Features, Value, load_from_disk
from datasets.utils.logging import disable_progress_bar
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.importers.common import first_few
from leccr_cli.prep.features.cache import STORAGE_CODES, StreamingSafetensors, tensor_bytes
from leccr_cli.utils.devices import TORCH_DTYPES, parse_dtype, select_device
from leccr_cli.errors import CorpusError, LeccrError, ModelError
from leccr_cli.retrieval.evaluate import gallery_batches
from leccr_cli.utils.fs import (
    LOCK_FILE,
    atomic_directory,
    atomic_file,
    atomic_write_text,
    disk_full_reported,
    is_empty_folder,
    recover,
    writer_lock,
)
from leccr_cli.model.leccr import LeccrModel, uses_slot_embeddings
from leccr_cli.retrieval.prefilter import CODE_ALIGN, Quantized, padded_width, quantize
from leccr_cli.runs.layout import MODEL_DIR, load_run

INDEX_FORMAT = "leccr-index"
INDEX_VERSION = 2  # 2: codes.safetensors
INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
CODES_FILE = "codes.safetensors"
CODES_ALIGN = 64  # where the data of codes.safetensors starts (the int8 kernel loads codes 16-byte aligned)
QUANTIZE_ROWS = 16384  # rows quantized at a time while writing the codes
ITEMS_DIR = "items"
ITEM_COLUMNS = ("image_id", "path", "description")
PARTS_DIR = ".parts"  # INDEX/.parts/: the finished batches of an unfinished build
DEFAULT_INDEX_DTYPE = "fp16"
DEFAULT_SPLIT = "gallery"
WEIGHTS_FILE = "model.safetensors"
_NUMPY_TYPES = {"F16": np.float16, "BF16": np.int16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_, "I8": np.int8}


class IndexFolderError(LeccrError):
    """An index folder is missing, unfinished, damaged or stale."""


# ------------------------------------------------------------------------------ identity


def file_digest(path: Path) -> str:
    """A hash (blake2b, 128 bits) of a file's bytes, read in 4 MiB pieces."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 22):
            digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Which model an index was built by: the run folder and a hash of its model weights.

    `size` and `mtime_ns` of the weights file let a check skip hashing when the file is untouched.
    """

    run: str
    weights: str
    size: int
    mtime_ns: int

    @classmethod
    def of_run(cls, run_dir: str | Path) -> "ModelIdentity":
        weights = Path(run_dir).resolve() / MODEL_DIR / WEIGHTS_FILE
        try:
            stat = weights.stat()
        except OSError:
            raise ModelError(f"run {run_dir} has no {MODEL_DIR}/{WEIGHTS_FILE}", "give a run folder written by `leccr train`") from None
        return cls(str(weights.parent.parent), file_digest(weights), stat.st_size, stat.st_mtime_ns)

    def same_weights(self, other: "ModelIdentity") -> bool:
        return self.weights == other.weights


def current_weights_digest(run: str | Path, known: ModelIdentity | None = None) -> str | None:
    """The hash of a run's model weights now (None when the file is gone); reuses `known` when size and mtime match."""
    weights = Path(run) / MODEL_DIR / WEIGHTS_FILE
    try:
        stat = weights.stat()
    except OSError:
        return None
    if known is not None and (stat.st_size, stat.st_mtime_ns) == (known.size, known.mtime_ns):
        return known.weights
    return file_digest(weights)


# ------------------------------------------------------------------------------ index.json


@dataclass(frozen=True)
class IndexInfo:
    """The contents of index.json."""

    model: ModelIdentity
    corpus: str
    split: str
    descriptions: str | None  # the description source the gallery was embedded with (None: the model reads none)
    count: int
    dim: int
    slots: int | None  # slot embeddings per image (None: the model has none)
    slot_mask: bool  # whether the slots are padded description tokens with a mask
    dtype: str

    def to_json(self) -> str:
        record = {"format": INDEX_FORMAT, "version": INDEX_VERSION, **asdict(self)}
        return json.dumps(record, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, folder: Path) -> "IndexInfo":
        path = folder / INDEX_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise IndexFolderError(f"index {folder}: {INDEX_FILE} is unreadable ({error})", _REBUILD_ANY) from None
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            raise IndexFolderError(f"index {folder}: {INDEX_FILE} is not a leccr index", _REBUILD_ANY)
        try:
            fields = {key: raw[key] for key in cls.__dataclass_fields__}
            fields["model"] = ModelIdentity(**fields["model"])
            info = cls(**fields)
        except (KeyError, TypeError) as error:
            info, lacking = None, error
        if raw.get("version") != INDEX_VERSION:
            rebuild = _REBUILD_ANY if info is None else f"rebuild it with `{info.rebuild_command(folder)}`"
            raise IndexFolderError(f"index {folder}: version {raw.get('version')} is not supported (this leccr reads {INDEX_VERSION})", rebuild)
        if info is None:
            raise IndexFolderError(f"index {folder}: {INDEX_FILE} lacks {lacking}", _REBUILD_ANY)
        return info

    def rebuild_command(self, folder: Path) -> str:
        descriptions = f" --descriptions {self.descriptions}" if self.descriptions else ""
        return f"leccr index {self.model.run} {self.corpus} --split {self.split}{descriptions} --out {folder} --overwrite"


_REBUILD_ANY = "rebuild it with `leccr index RUN CORPUS --out INDEX --overwrite`"


# ------------------------------------------------------------------------------ reading


def _memory_map(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a read-only view of its memory-mapped bytes (nothing is read yet)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    start = 8 + size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _NUMPY_TYPES:
            raise IndexFolderError(f"{path}: tensor {name} has dtype {code}, which an index never holds", _REBUILD_ANY)
        count = int(np.prod(shape)) if shape else 1
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=torch.float16 if code == "F16" else torch.float32)
            continue
        # copy-on-write mapping: torch wants a writable array; nothing is ever written
        array = np.memmap(path, dtype=_NUMPY_TYPES[code], mode="c", offset=start + begin, shape=tuple(shape))
        tensor = torch.from_numpy(array)
        tensors[name] = tensor.view(torch.bfloat16) if code == "BF16" else tensor
        if (end - begin) != count * tensor.element_size():
            raise IndexFolderError(f"{path}: tensor {name} has {end - begin} bytes for shape {shape}", _REBUILD_ANY)
    return tensors


class Index:
    """An opened index: its info, its items (a memory-mapped Arrow table) and memory-mapped embeddings.

    Nothing is read up front: a search touches the embedding rows it scores and the items of its hits.
    """

    def __init__(
        self,
        folder: Path,
        info: IndexInfo,
        items: pa.Table,
        global_embeds: torch.Tensor,
        slot_embeds: torch.Tensor | None,
        slot_mask: torch.Tensor | None,
        codes: "IndexCodes",
    ):
        self.folder = folder
        self.info = info
        self.items = items  # image_id, path, description per row
        self.global_embeds = global_embeds  # [N, D]
        self.slot_embeds = slot_embeds  # [N, K, D]
        self.slot_mask = slot_mask  # [N, K] bool
        self.codes = codes  # the same rows as int8 codes, for search's first pass
        self._columns: dict[str, list[str]] = {}

    @classmethod
    def open(cls, folder: str | Path) -> "Index":
        """Open INDEX/; a folder that is not a finished index (or is damaged) is refused with one line."""
        folder = Path(folder)
        recover(folder)  # finish a replacement of the folder cut short by a kill
        if not (folder / INDEX_FILE).is_file():
            parts = _parts_folder(folder)
            if parts.is_dir():
                raise IndexFolderError(
                    f"index {folder} is unfinished (an interrupted `leccr index` left {parts})",
                    "rerun the same `leccr index` command to finish it",
                )
            if not folder.is_dir():
                raise IndexFolderError(f"index {folder}: no such folder", "build one with `leccr index RUN CORPUS --out INDEX`")
            raise IndexFolderError(f"{folder} is not an index (no {INDEX_FILE})", "build one with `leccr index RUN CORPUS --out INDEX`")
        info = IndexInfo.read(folder)
        rebuild = f"rebuild it with `{info.rebuild_command(folder)}`"
        try:
            tensors = _memory_map(folder / EMBEDDINGS_FILE)
        except (OSError, ValueError, KeyError) as error:
            raise IndexFolderError(f"index {folder}: {EMBEDDINGS_FILE} is missing or damaged ({error})", rebuild) from None
        items = _read_items(folder / ITEMS_DIR, rebuild)
        global_embeds = tensors.get("global")
        shape_ok = global_embeds is not None and tuple(global_embeds.shape) == (info.count, info.dim)
        slots_ok = (info.slots is None) == ("slots" not in tensors) and (info.slot_mask == ("slot_mask" in tensors))
        if not shape_ok or not slots_ok or items.num_rows != info.count:
            found = "none" if global_embeds is None else "x".join(map(str, global_embeds.shape))
            raise IndexFolderError(
                f"index {folder} is inconsistent ({INDEX_FILE}: {info.count} x {info.dim}; embeddings: {found}; "
                f"items: {items.num_rows})",
                rebuild,
            )
        codes = IndexCodes.open(folder / CODES_FILE, info, rebuild)
        return cls(folder, info, items, global_embeds, tensors.get("slots"), tensors.get("slot_mask"), codes)

    def column(self, name: str) -> list[str]:
        """A whole item column as a list (read once)."""
        if name not in self._columns:
            self._columns[name] = self.items.column(name).to_pylist()
        return self._columns[name]

    @property
    def image_ids(self) -> list[str]:
        return self.column("image_id")

    @property
    def paths(self) -> list[str]:
        return self.column("path")

    @property
    def descriptions(self) -> list[str]:
        return self.column("description")

    def item(self, row: int) -> tuple[str, str, str]:
        """(image id, path, description) of one row."""
        return tuple(self.items.column(name)[row].as_py() for name in ITEM_COLUMNS)

    def __len__(self) -> int:
        return self.info.count

    def select(self, rows: list[int]) -> "Index":
        """An in-memory index of some of the rows, in the order given (e.g. one language's gallery)."""
        picked = torch.tensor(rows, dtype=torch.long)

        def take(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[picked]

        info = replace(self.info, count=len(rows))
        items = self.items.take(pa.array(rows, type=pa.int64()))
        codes = self.codes.select(picked)
        return Index(self.folder, info, items, take(self.global_embeds), take(self.slot_embeds), take(self.slot_mask), codes)

    def rebuild_command(self) -> str:
        return self.info.rebuild_command(self.folder)

    def check_model(self) -> None:
        """Refuse an index whose run is gone or whose model changed since it was built (stale)."""
        model = self.info.model
        now = current_weights_digest(model.run, model)
        if now is None:
            raise IndexFolderError(
                f"index {self.folder} was built from run {model.run}, which has no {MODEL_DIR}/{WEIGHTS_FILE} any more",
                "rebuild the index with `leccr index RUN CORPUS --out INDEX --overwrite` from a run that exists",
            )
        if now != model.weights:
            raise IndexFolderError(
                f"index {self.folder} is stale: the model of run {model.run} changed since the index was built",
                f"rebuild it with `{self.rebuild_command()}`",
            )


@dataclass
class IndexCodes:
    """An index's rows as int8 codes (`prefilter`): global [N, W] and, with slots, [N, K, W], scales alike."""

    global_rows: Quantized
    slot_rows: Quantized | None  # codes [N, K, W], scales [N, K]

    @property
    def width(self) -> int:
        return self.global_rows.codes.shape[1]

    def select(self, picked: torch.Tensor) -> "IndexCodes":
        """The rows `picked` (a 1-D long tensor), in that order."""

        def take(rows: Quantized | None) -> Quantized | None:
            if rows is None:
                return None
            return replace(rows, codes=rows.codes[picked], scales=rows.scales[picked])

        return IndexCodes(take(self.global_rows), take(self.slot_rows))

    @classmethod
    def of_embeddings(cls, global_embeds: torch.Tensor, slot_embeds: torch.Tensor | None = None) -> "IndexCodes":
        """The codes of embeddings held in memory ([N, D] and [N, K, D])."""
        slot_rows = None
        if slot_embeds is not None:
            count, per_image = slot_embeds.shape[:2]
            flat = quantize(slot_embeds.reshape(count * per_image, -1))
            slot_rows = replace(flat, codes=flat.codes.view(count, per_image, -1), scales=flat.scales.view(count, per_image))
        return cls(quantize(global_embeds), slot_rows)

    @classmethod
    def open(cls, path: Path, info: IndexInfo, rebuild: str) -> "IndexCodes":
        try:
            tensors = _memory_map(path)
        except (OSError, ValueError, KeyError) as error:
            raise IndexFolderError(f"index {path.parent}: {CODES_FILE} is missing or damaged ({error})", rebuild) from None
        width = padded_width(info.dim)
        shapes = {"global": (info.count, width)}
        if info.slots is not None:
            shapes["slots"] = (info.count, info.slots, width)
        found = {}
        for part, shape in shapes.items():
            codes, scales, bounds = (tensors.get(f"{part}_{name}") for name in ("codes", "scales", "bounds"))
            fits = codes is not None and tuple(codes.shape) == shape and scales is not None and tuple(scales.shape) == shape[:-1]
            if not fits or bounds is None or tuple(bounds.shape) != (2,):
                raise IndexFolderError(f"index {path.parent}: {CODES_FILE} does not fit {INDEX_FILE}", rebuild)
            if codes.numel() and codes.data_ptr() % CODE_ALIGN:  # every row starts at a multiple of 16 bytes
                raise IndexFolderError(f"index {path.parent}: {CODES_FILE} holds misaligned codes", rebuild)
            found[part] = Quantized(codes, scales, *bounds.tolist())
        return cls(found["global"], found.get("slots"))


def write_codes(path: Path, embeddings: Path, image_ids: list[str]) -> None:
    """Write `codes.safetensors` for the rows of an embeddings file (quantized a block of rows at a time).

    An embedding that is not finite is refused, naming its images: the model that made it is broken.
    """
    tensors = _memory_map(embeddings)
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


def _read_items(folder: Path, rebuild: str) -> pa.Table:
    disable_progress_bar()
    try:
        table = load_from_disk(str(folder)).data.table
    except (FileNotFoundError, OSError, ValueError) as error:
        raise IndexFolderError(f"index {folder.parent}: {ITEMS_DIR}/ is missing or damaged ({error})", rebuild) from None
    missing = [column for column in ITEM_COLUMNS if column not in table.column_names]
    if missing:
        raise IndexFolderError(f"index {folder.parent}: {ITEMS_DIR}/ lacks the columns {', '.join(missing)}", rebuild)
    return table.select(list(ITEM_COLUMNS))


# ------------------------------------------------------------------------------ building


def _parts_folder(out: Path) -> Path:
    """Where the finished batches of an unfinished build wait: `INDEX/.parts/`."""
    return out / PARTS_DIR


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
    return DEFAULT_INDEX_DTYPE if canonical == "auto" else canonical


def _default_split(corpus: Corpus) -> str:
    if len(corpus.splits) == 1:
        return corpus.splits[0]
    if DEFAULT_SPLIT in corpus.splits:
        return DEFAULT_SPLIT
    raise CorpusError(
        f"corpus {corpus.path} has the splits {', '.join(corpus.splits)}", "choose the one to index with --split"
    )


def _gallery_descriptions(model: LeccrModel, corpus: Corpus, split: str, image_ids: list[str], source: str | None) -> list[str]:
    """The description of every image (required when the model reads them; else shown when the corpus has them)."""
    if source is None:
        return [""] * len(image_ids)
    if not model.reads_descriptions and source not in corpus.description_sources():
        return [""] * len(image_ids)
    if source not in corpus.description_sources():
        known = ", ".join(corpus.description_sources()) or "none"
        raise CorpusError(
            f"this model reads image descriptions, and corpus {corpus.path} has none from {source!r} (present: {known})",
            f"write them with `leccr caption {corpus.path} --name {source}` (or choose a source with --descriptions)",
        )
    found = corpus.descriptions(source)
    missing = [image_id for image_id in image_ids if not found.get(image_id, "").strip()]
    if missing and model.reads_descriptions:
        raise CorpusError(
            f"{len(missing)} of {len(image_ids)} images of split {split!r} have no description in "
            f"descriptions/{source}/ of {corpus.path} (first: {first_few(missing)}); this model reads descriptions",
            f"describe them with `leccr caption {corpus.path} --name {source} --split {split}`",
        )
    return [found.get(image_id, "") for image_id in image_ids]


class _Parts:
    """The finished batches of an unfinished build: safetensors files plus the settings that made them."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = folder
        self.settings = settings

    def recorded(self) -> dict | None:
        try:
            return json.loads((self.folder / "settings.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.safetensors")) if self.folder.is_dir() else []

    def start(self, overwrite: bool) -> None:
        """Keep parts made with these settings; discard others (with `overwrite`) or refuse them."""
        recorded = self.recorded()
        if self.folder.is_dir() and recorded != self.settings:
            if not overwrite and self.files():
                differing = sorted(k for k in self.settings if (recorded or {}).get(k) != self.settings[k])
                raise IndexFolderError(
                    f"{self.folder} holds unfinished work made with other settings ({', '.join(differing) or 'unreadable'} differ)",
                    "rerun with the same settings to finish it, or pass --overwrite to discard it",
                )
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*"):  # a part whose write was interrupted
            leftover.unlink(missing_ok=True)
        atomic_write_text(self.folder / "settings.json", json.dumps(self.settings, indent=2) + "\n")

    def done(self, wanted: dict[str, str]) -> dict[str, tuple[Path, int]]:
        """image id -> (part file, row) of every image embedded with the description `wanted` gives it."""
        found = {}
        for path in self.files():
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata()
            for row, (image_id, text) in enumerate(zip(json.loads(meta["image_ids"]), json.loads(meta["descriptions"]))):
                if wanted.get(image_id) == text:
                    found.setdefault(image_id, (path, row))
        return found

    def write(self, image_ids: list[str], descriptions: list[str], tensors: dict[str, torch.Tensor]) -> None:
        metadata = {"image_ids": json.dumps(image_ids, ensure_ascii=False), "descriptions": json.dumps(descriptions, ensure_ascii=False)}
        with atomic_file(self.folder / f"part-{uuid.uuid4().hex}.safetensors") as temporary:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)


def _batch_tensors(embeds, plan: _Plan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = {"global": embeds.global_embeds.to("cpu", dtype)}
    if plan.slot_width is not None:
        slots = embeds.slot_embeds.to("cpu", dtype)
        extra = plan.slot_width - slots.shape[1]
        tensors["slots"] = torch.nn.functional.pad(slots, (0, 0, 0, extra))
        if plan.padded:
            mask = embeds.slot_mask.cpu() if embeds.slot_mask is not None else torch.ones(slots.shape[:2], dtype=torch.bool)
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


def _write_embeddings(path: Path, plan: _Plan, dim: int, dtype: str, rows: list[tuple[Path | None, int]], existing: Index | None) -> None:
    """Stream the final embeddings file: row i comes from `rows[i]` = (part file, row) or (None, row of the existing index)."""
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
        raise IndexFolderError(f"--out {out} exists and is not a folder", "choose another --out")
    if overwrite or not any(entry.name not in (LOCK_FILE, PARTS_DIR) for entry in out.iterdir()):
        return None
    if not (out / INDEX_FILE).is_file():
        raise IndexFolderError(f"--out {out} is not empty and not an index", "choose another --out, or pass --overwrite to replace it")
    return Index.open(out)


def build_index(
    run: str | Path,
    corpus_path: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    descriptions: str | None = None,
    dtype: str = DEFAULT_INDEX_DTYPE,
    batch_size: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed the images of a corpus split with a run's best model into the index folder `out`.

    `split` defaults to the corpus's only split (or `gallery`); `descriptions` to the run's
    `data.descriptions`; `dtype` is the storage dtype (fp16, bf16, fp32; auto = fp16);
    `batch_size` to the run's `eval.batch_size`; `device` to the GPU when there is one. An
    existing index of the same model, corpus, split, source and dtype is updated (only new or
    re-described images are embedded); one made otherwise is refused unless `overwrite`.
    `on_batch(rows)` is called after every embedded batch.
    """
    run_dir, out = Path(run).resolve(), Path(out)
    storage = _storage_dtype(dtype)
    recipe, model = load_run(run_dir)
    identity = ModelIdentity.of_run(run_dir)
    corpus = Corpus.open(corpus_path)
    if corpus.modality != model.modality:
        raise CorpusError(f"corpus {corpus.path} is a {corpus.modality} corpus; this run's model embeds {model.modality}s")
    split = corpus.check_split(split) if split is not None else _default_split(corpus)
    source = descriptions or recipe.data.descriptions
    if descriptions is not None:
        recipe = replace(recipe, data=replace(recipe.data, descriptions=source))
    image_ids = corpus.image_ids(split)
    paths = corpus.image_paths(split)
    texts = _gallery_descriptions(model, corpus, split, image_ids, source)
    config = model.config
    slot_width = None
    if uses_slot_embeddings(config):
        slot_width = config.num_slots if config.slots else config.text.description_max_tokens
    plan = _Plan(image_ids, [os.path.abspath(paths[i]) for i in image_ids], texts, slot_width, slot_width is not None and not config.slots)
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
            kept_where = f"finished batches are kept in {_parts_folder(out)}; rerun the same command once there is room"
            with disk_full_reported(out, kept_where):
                return _build(model, recipe, corpus, split, plan, info, out, overwrite, batch_size, device, on_batch)
    except BaseException:
        if created and out.is_dir() and is_empty_folder(out):
            shutil.rmtree(out, ignore_errors=True)  # nothing written: leave no folder behind
        raise


def _build(model, recipe, corpus, split, plan: _Plan, info: IndexInfo, out: Path, overwrite, batch_size, device, on_batch) -> IndexReport:
    """`build_index` under the index folder's writer lock."""
    image_ids, texts, storage = plan.image_ids, plan.descriptions, info.dtype
    existing = _existing_index(out, overwrite)
    if existing is not None:
        _check_same_settings(existing, info, out)
    settings = {key: value for key, value in json.loads(info.to_json()).items() if key != "count"}
    settings["model"] = {"run": info.model.run, "weights": info.model.weights}
    parts = _Parts(_parts_folder(out), settings)
    parts.start(overwrite)

    # each row comes from the existing index (same description), a part of an earlier run, or is embedded now
    wanted = dict(zip(image_ids, texts))
    kept = {}
    if existing is not None:
        kept = {i: row for row, (i, text) in enumerate(zip(existing.image_ids, existing.descriptions)) if wanted.get(i) == text}
    done = parts.done(wanted)
    todo = [i for i in image_ids if i not in kept and i not in done]
    resumed = sum(i in done and i not in kept for i in image_ids)

    embedded = 0
    if todo:
        target = select_device(device)
        model.to(target)
        torch_dtype = TORCH_DTYPES[storage]
        for batch_ids, embeds in gallery_batches(model, corpus, split, recipe, image_ids=todo, batch_size=batch_size):
            parts.write(batch_ids, [wanted[i] for i in batch_ids], _batch_tensors(embeds, plan, torch_dtype))
            embedded += len(batch_ids)
            if on_batch is not None:
                on_batch(len(batch_ids))
        done = parts.done(wanted)

    rows = [done[i] if i in done else (None, kept[i]) for i in image_ids]
    reused = sum(origin is None for origin, _ in rows)
    dropped = 0 if existing is None else len(set(existing.image_ids) - set(image_ids))
    if existing is not None and reused == len(image_ids) and (existing.image_ids, existing.paths) == (image_ids, plan.paths):
        shutil.rmtree(parts.folder, ignore_errors=True)
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
        differing.append(f"the model (index: run {have.model.run}, weights {have.model.weights[:12]}; now: run {wanted.model.run}, weights {wanted.model.weights[:12]})")
    for key in ("corpus", "split", "descriptions", "dtype", "dim", "slots", "slot_mask"):
        if getattr(have, key) != getattr(wanted, key):
            differing.append(f"{key} (index: {getattr(have, key)}, now: {getattr(wanted, key)})")
    if differing:
        raise IndexFolderError(
            f"index {out} was built otherwise: {'; '.join(differing)}",
            "pass --overwrite to rebuild it, or choose another --out",
        )

