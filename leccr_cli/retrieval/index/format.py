"""The index folder's format: its files, `index.json` (`IndexInfo`) and the identity of the model that built it.

```
INDEX/
  index.json               the model (run folder, hash of its model.safetensors), corpus, split,
                           description source, count, dims, storage dtype
  embeddings.safetensors   global [N, D]; slots [N, K, D] (and slot_mask [N, K]) when the model has
                           slot embeddings; fp16 by default
  codes.safetensors        the same rows as int8 codes with a scale each (`retrieval/prefilter.py`):
                           search's first pass reads these, then scores the rows that can still win
                           from embeddings.safetensors
  items/                   HF dataset: image_id, path, description (the row order of the embeddings)
  .parts/                  while it is built: the finished batches (shards of `prep/shards.py`)
```

`reader.py` opens an index, `builder.py` writes one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from leccr_cli.errors import IndexFolderError, ModelError, Param, Step, parts
from leccr_cli.runs.layout import MODEL_DIR

INDEX_FORMAT = "leccr-index"
INDEX_VERSION = 2  # 2: codes.safetensors
INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
CODES_FILE = "codes.safetensors"
CODES_ALIGN = 64  # where the data of codes.safetensors starts (the int8 kernel loads codes 16-byte aligned)
ITEMS_DIR = "items"
ITEM_COLUMNS = ("image_id", "path", "description")
PARTS_DIR = ".parts"  # INDEX/.parts/: the finished batches of an unfinished build
WEIGHTS_FILE = "model.safetensors"


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
            raise ModelError(
                f"run {run_dir} has no {MODEL_DIR}/{WEIGHTS_FILE}",
                parts("give a run folder written by ", Step("train", python="train")),
            ) from None
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
            rebuild = _REBUILD_ANY if info is None else parts("rebuild it with ", info.rebuild_step(folder))
            raise IndexFolderError(
                f"index {folder}: version {raw.get('version')} is not supported (this leccr reads {INDEX_VERSION})",
                rebuild,
            )
        if info is None:
            raise IndexFolderError(f"index {folder}: {INDEX_FILE} lacks {lacking}", _REBUILD_ANY)
        return info

    def rebuild_step(self, folder: Path) -> Step:
        """The step that builds this index into `folder` again, from scratch."""
        sources = {"descriptions": self.descriptions} if self.descriptions else {}
        call = ", ".join(
            [
                repr(self.model.run),
                repr(self.corpus),
                repr(str(folder)),
                f"split={self.split!r}",
                *(f"{k}={v!r}" for k, v in sources.items()),
            ]
        )
        return Step(
            "index", self.model.run, self.corpus, split=self.split, **sources, out=folder, overwrite=True,
            python=f"build_index({call}, overwrite=True)",
        )  # fmt: skip


def build_step(overwrite: bool = False) -> Step:
    """The step that builds an index (of some run, corpus and folder)."""
    extra = {"overwrite": True} if overwrite else {}
    return Step(
        "index",
        Param("run", metavar="RUN"),
        Param("corpus_path", metavar="CORPUS"),
        out=Param("out", metavar="INDEX"),
        **extra,
        python=f"build_index(run, corpus, out{', overwrite=True' if overwrite else ''})",
    )


_REBUILD_ANY = parts("rebuild it with ", build_step(overwrite=True))
