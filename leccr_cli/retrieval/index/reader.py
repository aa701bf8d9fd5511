"""Reading an index folder (`format.py`): `Index` maps the embeddings and codes and reads items on demand.

Search memory-maps the embeddings and the codes (`utils/safetensors_io.memory_map`:
copy-on-write, never written) and reads the items of its hits only. An index held in memory
(the app's test gallery) is built with `Index.in_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import torch
from datasets import load_from_disk
from datasets.utils.logging import disable_progress_bar

from leccr_cli.errors import IndexFolderError, Step, parts
from leccr_cli.model.leccr import ImageEmbeddings
from leccr_cli.retrieval.index.format import (
    CODES_FILE,
    EMBEDDINGS_FILE,
    INDEX_FILE,
    ITEM_COLUMNS,
    ITEMS_DIR,
    PARTS_DIR,
    WEIGHTS_FILE,
    IndexInfo,
    build_step,
    current_weights_digest,
)
from leccr_cli.retrieval.prefilter import CODE_ALIGN, Quantized, padded_width, quantize
from leccr_cli.runs.layout import MODEL_DIR
from leccr_cli.utils.fs import recover
from leccr_cli.utils.safetensors_io import memory_map


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
            unfinished = folder / PARTS_DIR
            if unfinished.is_dir():
                build = Step("index", python="build_index")
                raise IndexFolderError(
                    parts(f"index {folder} is unfinished (an interrupted ", build, f" left {unfinished})"),
                    parts("rerun the same ", build, " command to finish it"),
                )
            build_one = parts("build one with ", build_step())
            if not folder.is_dir():
                raise IndexFolderError(f"index {folder}: no such folder", build_one)
            raise IndexFolderError(f"{folder} is not an index (no {INDEX_FILE})", build_one)
        info = IndexInfo.read(folder)
        rebuild = parts("rebuild it with ", info.rebuild_step(folder))
        try:
            tensors = memory_map(folder / EMBEDDINGS_FILE).tensors
        except (OSError, ValueError) as error:
            raise IndexFolderError(
                f"index {folder}: {EMBEDDINGS_FILE} is missing or damaged ({error})", rebuild
            ) from None
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

    @classmethod
    def in_memory(
        cls, folder: Path, info: IndexInfo, items: dict[str, list[str]], embeddings: ImageEmbeddings
    ) -> "Index":
        """An index of embeddings held in memory (with their int8 codes), e.g. a gallery embedded on the fly.

        `items` holds the columns image_id, path and description; `folder` only names the index in messages.
        """
        embeddings = embeddings.to("cpu")
        codes = IndexCodes.of_embeddings(embeddings.global_embeds, embeddings.slot_embeds)
        table = pa.table({column: items[column] for column in ITEM_COLUMNS})
        return cls(
            Path(folder), info, table, embeddings.global_embeds, embeddings.slot_embeds, embeddings.slot_mask, codes
        )

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
        return Index(
            self.folder, info, items, take(self.global_embeds), take(self.slot_embeds), take(self.slot_mask), codes
        )

    def rebuild_step(self) -> Step:
        return self.info.rebuild_step(self.folder)

    def check_model(self) -> None:
        """Refuse an index whose run is gone or whose model changed since it was built (stale)."""
        model = self.info.model
        now = current_weights_digest(model.run, model)
        if now is None:
            raise IndexFolderError(
                f"index {self.folder} was built from run {model.run}, which has no {MODEL_DIR}/{WEIGHTS_FILE} any more",
                parts("rebuild the index with ", build_step(overwrite=True), " from a run that exists"),
            )
        if now != model.weights:
            raise IndexFolderError(
                f"index {self.folder} is stale: the model of run {model.run} changed since the index was built",
                parts("rebuild it with ", self.rebuild_step()),
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
            slot_rows = replace(
                flat, codes=flat.codes.view(count, per_image, -1), scales=flat.scales.view(count, per_image)
            )
        return cls(quantize(global_embeds), slot_rows)

    @classmethod
    def open(cls, path: Path, info: IndexInfo, rebuild) -> "IndexCodes":
        try:
            tensors = memory_map(path).tensors
        except (OSError, ValueError) as error:
            raise IndexFolderError(
                f"index {path.parent}: {CODES_FILE} is missing or damaged ({error})", rebuild
            ) from None
        width = padded_width(info.dim)
        shapes = {"global": (info.count, width)}
        if info.slots is not None:
            shapes["slots"] = (info.count, info.slots, width)
        found = {}
        for part, shape in shapes.items():
            codes, scales, bounds = (tensors.get(f"{part}_{name}") for name in ("codes", "scales", "bounds"))
            fits = (
                codes is not None
                and tuple(codes.shape) == shape
                and scales is not None
                and tuple(scales.shape) == shape[:-1]
            )
            if not fits or bounds is None or tuple(bounds.shape) != (2,):
                raise IndexFolderError(f"index {path.parent}: {CODES_FILE} does not fit {INDEX_FILE}", rebuild)
            if codes.numel() and codes.data_ptr() % CODE_ALIGN:  # every row starts at a multiple of 16 bytes
                raise IndexFolderError(f"index {path.parent}: {CODES_FILE} holds misaligned codes", rebuild)
            found[part] = Quantized(codes, scales, *bounds.tolist())
        return cls(found["global"], found.get("slots"))


def _read_items(folder: Path, rebuild) -> pa.Table:
    disable_progress_bar()
    try:
        table = load_from_disk(str(folder)).data.table
    except (FileNotFoundError, OSError, ValueError) as error:
        raise IndexFolderError(
            f"index {folder.parent}: {ITEMS_DIR}/ is missing or damaged ({error})", rebuild
        ) from None
    missing = [column for column in ITEM_COLUMNS if column not in table.column_names]
    if missing:
        raise IndexFolderError(f"index {folder.parent}: {ITEMS_DIR}/ lacks the columns {', '.join(missing)}", rebuild)
    return table.select(list(ITEM_COLUMNS))
