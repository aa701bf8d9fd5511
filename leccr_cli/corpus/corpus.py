"""The corpus folder: reading it, and writing it atomically (see docs/architecture.md, "Artifacts").

```
CORPUS/
  corpus.json                 name, modality, languages, splits, media root, version
  images/                     HF dataset: image_id, split, path (relative to the media root)
  captions/                   HF dataset: cap_id, image_id, split, lang, origin, text, source, model
  galleries/                  optional HF dataset: image_id, split, lang
  descriptions/<source>/      HF dataset: image_id, text, model, prompt
  slots/<encoder>/<split>.safetensors
  video/<name>.safetensors
```

`galleries/` lists, for the (split, language) pairs that have their own image list (MSCOCO's
ja and zh test sets differ), the images that language is ranked against; every other pair
ranks against the whole split. A corpus without it reads as before.

`source` is the cap id a translated caption was made from ("" for human captions) and
`model` the system that wrote it ("" for human captions). Cap ids follow the NRCCR
convention `<image_id>#<tag>#<n>`; a translation of `X#en#0` into German is `X#en2de#0`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import pyarrow as pa
from datasets import Dataset, Features, Value, load_from_disk
from datasets.utils.logging import disable_progress_bar

from leccr_cli.defaults import MODALITIES, ORIGINS
from leccr_cli.errors import CorpusError, InvalidArgument, LeccrError, MissingDescriptions, Param, Step, parts
from leccr_cli.utils.fs import (
    atomic_directory,
    atomic_replacement,
    is_empty_folder,
    output_taken_hint,
    recover,
    recover_folder,
    writer_lock,
)
from leccr_cli.utils.languages import ISO_639_1, check_language

CORPUS_VERSION = 1
CAPTION_COLUMNS = ("cap_id", "image_id", "split", "lang", "origin", "text", "source", "model")
IMAGE_COLUMNS = ("image_id", "split", "path")
DESCRIPTION_COLUMNS = ("image_id", "text", "model", "prompt")
DESCRIPTION_SETTINGS_FILE = "leccr_settings.json"  # how a description dataset was generated, beside its table
GALLERY_COLUMNS = ("image_id", "split", "lang")


class Caption(NamedTuple):
    """One caption row."""

    cap_id: str
    image_id: str
    split: str
    lang: str
    origin: str
    text: str
    source: str = ""
    model: str = ""


class ImageRow(NamedTuple):
    """One gallery entry: an image (or video) of a split and its path under the media root."""

    image_id: str
    split: str
    path: str


class GalleryRow(NamedTuple):
    """An image of the gallery that one language of a split is ranked against."""

    image_id: str
    split: str
    lang: str


@dataclass
class CorpusMeta:
    """The contents of corpus.json."""

    name: str
    modality: str
    languages: list[str]
    splits: list[str]
    media_root: str
    version: int = CORPUS_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, ensure_ascii=False) + "\n"


def _is_table_file(name: str) -> bool:
    """Whether `name` is one of the files `Dataset.save_to_disk` writes into a table folder."""
    return name in ("dataset_info.json", "state.json") or (name.startswith("data-") and name.endswith(".arrow"))


def translated_cap_id(source_cap_id: str, target_lang: str) -> str:
    """The cap id of the translation of `source_cap_id` into `target_lang` (NRCCR style)."""
    image_id, tag, number = split_cap_id(source_cap_id)
    return f"{image_id}#{tag}2{target_lang}#{number}"


def split_cap_id(cap_id: str) -> tuple[str, str, str]:
    """Split `<image_id>#<tag>#<n>` into its three parts; image ids may themselves hold '#'."""
    parts = cap_id.rsplit("#", 2)
    if len(parts) != 3 or not all(parts):
        raise CorpusError(f"cap id {cap_id!r} is not of the form <image_id>#<tag>#<n>")
    return parts[0], parts[1], parts[2]


def save_string_dataset(columns: dict[str, list[str]], folder: Path) -> None:
    """Save columns of strings as an HF dataset (save_to_disk) in `folder`.

    The Arrow table is built directly: `Dataset.from_dict` encodes value by value, about 3x slower
    for the 100k+ caption rows of a real corpus.
    """
    disable_progress_bar()
    schema = Features({name: Value("string") for name in columns}).arrow_schema
    empty = not any(columns.values())
    # an empty table needs one explicit shard, or it cannot be read back (a corpus of images without captions)
    Dataset(pa.Table.from_pydict(columns, schema=schema)).save_to_disk(str(folder), num_shards=1 if empty else None)


def _load_columns(folder: Path, columns: tuple[str, ...], what: str) -> dict[str, list]:
    disable_progress_bar()
    try:
        table = load_from_disk(str(folder)).data.table
    except (FileNotFoundError, OSError, ValueError):
        # a writer may have been replacing the folder (or died doing it): finish that, read again
        recover(folder)
        try:
            table = load_from_disk(str(folder)).data.table
        except (FileNotFoundError, OSError, ValueError) as error:
            raise CorpusError(f"{folder}: cannot read {what} ({error})", "rebuild the corpus or the artifact") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise CorpusError(f"{folder}: {what} lack the columns {', '.join(missing)}", "rebuild the artifact")
    return {c: table.column(c).to_pylist() for c in columns}


def write_description_table(folder: Path, rows: list[dict], settings: dict | None = None) -> None:
    """Write description rows (image_id, text, model, prompt) as an HF dataset, atomically replacing `folder`.

    `settings` (how the rows were generated, e.g. max_new_tokens) is stored beside the table.
    """
    with atomic_directory(folder, overwrite=True) as temporary:
        shutil.rmtree(temporary)
        save_string_dataset({c: [str(r[c]) for r in rows] for c in DESCRIPTION_COLUMNS}, temporary)
        if settings is not None:
            (temporary / DESCRIPTION_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def read_description_settings(folder: Path) -> dict | None:
    """The generation settings stored with a description dataset (None when it has none)."""
    try:
        settings = json.loads((folder / DESCRIPTION_SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def read_description_table(folder: Path) -> list[dict]:
    """The rows of a description dataset written by `write_description_table`."""
    cols = _load_columns(folder, DESCRIPTION_COLUMNS, "descriptions")
    return [dict(zip(DESCRIPTION_COLUMNS, row)) for row in zip(*(cols[c] for c in DESCRIPTION_COLUMNS))]


# ---------------------------------------------------------------------- validation


def _validate(images: list[ImageRow], captions: list[Caption], modality: str, galleries: list[GalleryRow] = ()) -> None:
    if modality not in MODALITIES:
        raise CorpusError(f"unknown modality {modality!r}", f"use one of {', '.join(MODALITIES)}")
    if not images:
        raise CorpusError("the corpus has no images")
    gallery: set[tuple[str, str]] = set()
    for row in images:
        if not row.image_id or not row.split:
            raise CorpusError(f"image row {row} has an empty id or split")
        key = (row.image_id, row.split)
        if key in gallery:
            raise CorpusError(f"image {row.image_id!r} is listed twice in split {row.split!r}")
        gallery.add(key)
    seen_caps: set[str] = set()
    for cap in captions:
        if cap.cap_id in seen_caps:
            raise CorpusError(f"caption id {cap.cap_id!r} appears twice")
        seen_caps.add(cap.cap_id)
        if not cap.text or not cap.text.strip():
            raise CorpusError(f"caption {cap.cap_id!r} is empty", "remove it from the input or fix the text")
        if cap.origin not in ORIGINS:
            raise CorpusError(f"caption {cap.cap_id!r} has origin {cap.origin!r}", f"use one of {', '.join(ORIGINS)}")
        if cap.lang not in ISO_639_1:
            try:
                check_language(cap.lang)
            except LeccrError as error:
                raise CorpusError(f"caption {cap.cap_id!r}: {error}") from None
        if (cap.image_id, cap.split) not in gallery:
            raise CorpusError(
                f"caption {cap.cap_id!r} refers to image {cap.image_id!r}, which split {cap.split!r} does not list"
            )
    _validate_galleries(galleries, gallery, captions)


def _validate_galleries(galleries: list[GalleryRow], listed: set[tuple[str, str]], captions: list[Caption]) -> None:
    """Gallery images are listed in their split; human captions (the queries) are of their language's gallery."""
    languages = {c.lang for c in captions}
    seen: set[GalleryRow] = set()
    for row in galleries:
        where = f"gallery of split {row.split!r}, language {row.lang!r}"
        if not row.image_id:
            raise CorpusError(f"{where}: an image id is empty")
        if row.lang not in languages:
            raise CorpusError(f"{where}: the corpus has no captions in {row.lang!r}", "drop the gallery or add the "
                "captions")
        if (row.image_id, row.split) not in listed:
            raise CorpusError(f"{where}: image {row.image_id!r} is not listed in split {row.split!r}")
        if row in seen:
            raise CorpusError(f"{where}: image {row.image_id!r} is listed twice")
        seen.add(row)
    if not seen:
        return
    own_lists = {(row.split, row.lang) for row in seen}
    for cap in captions:
        if (
            cap.origin == "human"
            and (cap.split, cap.lang) in own_lists
            and GalleryRow(cap.image_id, cap.split, cap.lang) not in seen
        ):
            raise CorpusError(
                f"caption {cap.cap_id!r} is of image {cap.image_id!r}, which the gallery of split {cap.split!r}, "
                f"language {cap.lang!r} lacks",
                "a language's human captions must describe images of its own gallery",
            )


# -------------------------------------------------------------------------- writing


def write_corpus(
    out: str | Path,
    *,
    name: str,
    modality: str,
    media_root: str,
    images: Iterable[ImageRow],
    captions: Iterable[Caption],
    descriptions: dict[str, list[dict]] | None = None,
    galleries: Iterable[GalleryRow] = (),
    overwrite: bool = False,
    fill: callable | None = None,
) -> "Corpus":
    """Write a whole corpus atomically and return it opened.

    `galleries` lists, for (split, language) pairs with their own image list, the images of
    that list (each must be listed in the split); pairs without rows rank against the split.
    `fill(folder)` may write extra files (rendered images, video features) into the
    temporary folder before it is renamed into place.
    """
    images = [ImageRow(*row) for row in images]
    captions = [Caption(*row) for row in captions]
    galleries = [GalleryRow(*row) for row in galleries]
    _validate(images, captions, modality, galleries)
    if galleries:  # stored in the split's image order, so every reader sees one order
        position = {(r.image_id, r.split): i for i, r in enumerate(images)}
        galleries.sort(key=lambda r: (r.split, r.lang, position[r.image_id, r.split]))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} exists and is not a folder", "choose another output path")
    if out.is_dir() and not is_empty_folder(out) and not overwrite:
        raise CorpusError(f"{out} exists and is not empty", output_taken_hint())
    created = not out.exists()
    try:
        with writer_lock(out):  # also drops what killed writes of this corpus left beside it
            with atomic_directory(out, overwrite=overwrite) as folder:
                if fill is not None:
                    fill(folder)
                save_string_dataset({c: [getattr(r, c) for r in images] for c in IMAGE_COLUMNS}, folder / "images")
                save_string_dataset(
                    {c: [getattr(r, c) for r in captions] for c in CAPTION_COLUMNS}, folder / "captions"
                )
                if galleries:
                    save_string_dataset(
                        {c: [getattr(r, c) for r in galleries] for c in GALLERY_COLUMNS}, folder / "galleries"
                    )
                for source, rows in (descriptions or {}).items():
                    save_string_dataset(
                        {c: [r[c] for r in rows] for c in DESCRIPTION_COLUMNS}, folder / "descriptions" / source
                    )
                meta = CorpusMeta(
                    name=name,
                    modality=modality,
                    languages=sorted({c.lang for c in captions}),
                    splits=_ordered_splits({r.split for r in images}),
                    media_root=media_root,
                )
                (folder / "corpus.json").write_text(meta.to_json(), encoding="utf-8")
    except BaseException:
        if created and out.is_dir() and is_empty_folder(out):
            shutil.rmtree(out, ignore_errors=True)  # nothing written: leave no folder behind
        raise
    return Corpus.open(out)


def _ordered_splits(splits: Iterable[str]) -> list[str]:
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(splits, key=lambda s: (order.get(s, 3), s))


# -------------------------------------------------------------------------- reading

_CORPUS_BUILDERS = Step("data", python="leccr_cli.corpus")


def corpus_builders() -> tuple:
    """The steps that build a corpus, for messages: the synthetic benchmark, Multi30K or the NRCCR layout."""
    return parts(
        Step("data synth", python="build_synthetic"),
        ", ",
        Step("data import-multi30k", python="import_multi30k"),
        " or ",
        Step("data import-nrccr", python="import_nrccr"),
    )


_META_STRINGS = ("name", "modality", "media_root")
_META_LISTS = ("languages", "splits")


def _shown(value) -> str:
    """How a JSON value reads in a message: its kind and, when short, itself."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    kind = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}[type(value)]
    text = json.dumps(value, ensure_ascii=False)
    return f"{kind} ({text})" if len(text) <= 40 else kind


def _read_meta(raw, meta_file: Path) -> CorpusMeta:
    """Check the keys and types of corpus.json: each mistake is one line naming the file and key."""
    rebuild = parts("re-create the corpus with ", _CORPUS_BUILDERS)
    if not isinstance(raw, dict):
        raise CorpusError(f"{meta_file}: expected a JSON object, found {_shown(raw)}", rebuild)
    known = (*_META_STRINGS, *_META_LISTS, "version")
    unknown = [key for key in raw if key not in known]
    if unknown:
        raise CorpusError(f"{meta_file}: unknown key {unknown[0]!r}", f"corpus.json holds {', '.join(known)}")
    missing = [key for key in known[:-1] if key not in raw]
    if missing:
        raise CorpusError(f"{meta_file}: key {missing[0]!r} is missing", rebuild)
    for key in _META_STRINGS:
        if not isinstance(raw[key], str):
            raise CorpusError(f"{meta_file}: key {key!r} is {_shown(raw[key])}; expected a string")
    for key in _META_LISTS:
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            example = '["train", "val", "test"]' if key == "splits" else '["de", "en"]'
            raise CorpusError(
                f"{meta_file}: key {key!r} is {_shown(value)}; expected a list of strings such as {example}"
            )
        if len(set(value)) != len(value):
            raise CorpusError(f"{meta_file}: key {key!r} names {next(v for v in value if value.count(v) > 1)!r} twice")
    for lang in raw["languages"]:
        if lang not in ISO_639_1:
            raise CorpusError(f"{meta_file}: key 'languages' holds {lang!r}; expected ISO 639-1 codes such as de, ja")
    version = raw.get("version", CORPUS_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CorpusError(f"{meta_file}: key 'version' is {_shown(version)}; expected the integer {CORPUS_VERSION}")
    if version != CORPUS_VERSION:
        raise CorpusError(
            f"{meta_file}: version {version} is not supported (this leccr reads {CORPUS_VERSION})",
            "re-create the corpus with this version of leccr",
        )
    if raw["modality"] not in MODALITIES:
        raise CorpusError(
            f"{meta_file}: key 'modality' is {raw['modality']!r}; expected one of {', '.join(MODALITIES)}"
        )
    return CorpusMeta(**raw)


class Corpus:
    """An opened corpus folder. Tables are read lazily and cached."""

    def __init__(self, path: Path, meta: CorpusMeta):
        self.path = path
        self.meta = meta
        self._captions: list[Caption] | None = None
        self._images: list[ImageRow] | None = None
        self._galleries: dict[tuple[str, str], list[str]] | None = None

    @classmethod
    def open(cls, path: str | Path) -> "Corpus":
        """Open CORPUS/; raise `CorpusError` if it is missing or corpus.json is unreadable."""
        path = Path(path)
        recover(path)  # finish a replacement of the whole corpus or of its parts cut short by a kill
        recover_folder(path)
        recover_folder(path / "descriptions")
        if not path.is_dir():
            raise CorpusError(
                f"corpus {path}: no such folder",
                parts("build one with ", corpus_builders()),
            )
        meta_file = path / "corpus.json"
        if not meta_file.is_file():
            raise CorpusError(
                f"corpus {path}: corpus.json is missing",
                parts("is this a corpus folder made by ", _CORPUS_BUILDERS, "?"),
            )
        try:
            raw = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorpusError(
                f"corpus {path}: corpus.json is corrupt ({error})",
                parts("re-create the corpus with ", _CORPUS_BUILDERS),
            ) from None
        return cls(path, _read_meta(raw, meta_file))

    # -- basic facts
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def modality(self) -> str:
        return self.meta.modality

    @property
    def languages(self) -> list[str]:
        return list(self.meta.languages)

    @property
    def splits(self) -> list[str]:
        return list(self.meta.splits)

    @property
    def media_root(self) -> Path:
        root = Path(self.meta.media_root)
        return root if root.is_absolute() else self.path / root

    def check_split(self, split: str) -> str:
        if split not in self.meta.splits:
            raise CorpusError(f"corpus {self.path} has no split {split!r}", f"available: {', '.join(self.meta.splits)}")
        return split

    def resolve_splits(self, text: str | None, default: Sequence[str] | None = None) -> list[str]:
        """The splits named by a `--split` value: `all` (every split), a comma-separated list, or
        `default` (every split when None) when `text` is None; unknown splits are refused."""
        if text is None:
            return list(default) if default is not None else self.splits
        if text.strip() == "all":
            return self.splits
        splits = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
        if not splits:
            raise InvalidArgument(
                "split", text, "names no split", f"use all or some of {', '.join(self.splits)}",
                message=parts(Param("split", text, quote=True), " names no split"),
            )  # fmt: skip
        return [self.check_split(s) for s in splits]

    def check_lang(self, lang: str) -> str:
        if lang not in self.meta.languages:
            raise CorpusError(
                f"corpus {self.path} has no captions in language {lang!r}",
                f"available: {', '.join(self.meta.languages)}",
            )
        return lang

    # -- images
    def images(self, split: str | None = None) -> list[ImageRow]:
        """Gallery rows, in stored order, optionally of one split."""
        if self._images is None:
            cols = _load_columns(self.path / "images", IMAGE_COLUMNS, "images")
            self._images = [ImageRow(*row) for row in zip(*(cols[c] for c in IMAGE_COLUMNS))]
        if split is None:
            return list(self._images)
        self.check_split(split)
        return [row for row in self._images if row.split == split]

    def add_images(self, rows: Iterable[ImageRow]) -> None:
        """Append gallery rows (a new split may appear) atomically; captions and descriptions stay.

        Refused when media files live in images/ beside the table (the synthetic corpus): the
        table is rewritten by replacing that folder.
        """
        new = [ImageRow(*row) for row in rows]
        folder = self.path / "images"
        with self.writing():
            media = [p.name for p in folder.iterdir() if not _is_table_file(p.name)]
            if media:
                raise CorpusError(
                    f"corpus {self.path} keeps media files in images/ (e.g. {media[0]}); images cannot be added to it"
                )
            self._images = None  # merge with what is on disk now
            merged = self.images() + new
            galleries = [
                GalleryRow(i, split, lang) for (split, lang), ids in self._gallery_lists().items() for i in ids
            ]
            _validate(merged, self.captions(), self.modality, galleries)
            meta = CorpusMeta(**{**self.meta.__dict__, "splits": _ordered_splits({r.split for r in merged})})
            # the image table and the split list of corpus.json change together, also across a kill
            with atomic_replacement(folder, self.path / "corpus.json") as (table, meta_file):
                save_string_dataset({c: [getattr(r, c) for r in merged] for c in IMAGE_COLUMNS}, table)
                meta_file.write_text(meta.to_json(), encoding="utf-8")
        self._images = merged
        self.meta = meta

    def image_ids(self, split: str) -> list[str]:
        """Image ids of a split in gallery order."""
        return [row.image_id for row in self.images(split)]

    def image_path(self, image_id: str) -> Path:
        """Where the image (or video frame folder) of `image_id` lives."""
        for row in self.images():
            if row.image_id == image_id:
                return self.media_root / row.path
        raise CorpusError(f"corpus {self.path} has no image {image_id!r}")

    def image_paths(self, split: str) -> dict[str, Path]:
        """image_id -> path for every image of a split."""
        root = self.media_root
        return {row.image_id: root / row.path for row in self.images(split)}

    # -- galleries
    def _gallery_lists(self) -> dict[tuple[str, str], list[str]]:
        if self._galleries is None:
            self._galleries = {}
            if (self.path / "galleries").is_dir():
                cols = _load_columns(self.path / "galleries", GALLERY_COLUMNS, "galleries")
                for image_id, split, lang in zip(*(cols[c] for c in GALLERY_COLUMNS)):
                    self._galleries.setdefault((split, lang), []).append(image_id)
        return self._galleries

    def gallery_languages(self, split: str) -> list[str]:
        """Languages of `split` that have their own gallery (image list) in galleries/."""
        self.check_split(split)
        return sorted(lang for s, lang in self._gallery_lists() if s == split)

    def has_language_galleries(self, split: str) -> bool:
        """Whether some language of `split` is ranked against its own image list."""
        return bool(self.gallery_languages(split))

    def gallery(self, split: str, lang: str) -> list[str]:
        """The image ids `lang`'s queries of `split` are ranked against, in the split's order.

        That is the language's own list when galleries/ has one, else every image of the split.
        """
        self.check_split(split)
        self.check_lang(lang)
        own = self._gallery_lists().get((split, lang))
        if own is None:
            return self.image_ids(split)
        members = set(own)
        return [image_id for image_id in self.image_ids(split) if image_id in members]

    # -- captions
    def captions(self, split: str | None = None, lang: str | None = None, origin: str | None = None) -> list[Caption]:
        """Caption rows in stored order, filtered by split, language and origin."""
        if self._captions is None:
            cols = _load_columns(self.path / "captions", CAPTION_COLUMNS, "captions")
            self._captions = [Caption(*row) for row in zip(*(cols[c] for c in CAPTION_COLUMNS))]
        if split is not None:
            self.check_split(split)
        if lang is not None:
            self.check_lang(lang)
        return [
            c
            for c in self._captions
            if (split is None or c.split == split)
            and (lang is None or c.lang == lang)
            and (origin is None or c.origin == origin)
        ]

    def caption_counts(self) -> Counter:
        """Counter of (split, lang, origin) -> number of captions."""
        return Counter((c.split, c.lang, c.origin) for c in self.captions())

    def writing(self):
        """The corpus's writer lock (`leccr_cli.utils.fs.writer_lock`): one writing command at a time."""
        return writer_lock(self.path)

    def add_captions(self, rows: Iterable[Caption], replace: bool = False, remove: Iterable[str] = ()) -> None:
        """Append caption rows (or replace rows with the same cap id when `replace`) atomically.

        Rows whose cap id is in `remove` are dropped in the same rewrite.
        """
        new = [Caption(*r) for r in rows]
        with self.writing():
            self._captions = None  # merge with what is on disk now
            existing = self.captions()
            dropped = set(remove)
            if replace:
                dropped |= {c.cap_id for c in new}
            if dropped:
                existing = [c for c in existing if c.cap_id not in dropped]
            merged = existing + new
            galleries = [
                GalleryRow(i, split, lang) for (split, lang), ids in self._gallery_lists().items() for i in ids
            ]
            _validate(self.images(), merged, self.modality, galleries)
            meta = CorpusMeta(**{**self.meta.__dict__, "languages": sorted({c.lang for c in merged})})
            # the captions and the language list of corpus.json change together, also across a kill
            with atomic_replacement(self.path / "captions", self.path / "corpus.json") as (table, meta_file):
                save_string_dataset({c: [getattr(r, c) for r in merged] for c in CAPTION_COLUMNS}, table)
                meta_file.write_text(meta.to_json(), encoding="utf-8")
        self._captions = merged
        self.meta = meta

    # -- descriptions
    def description_sources(self) -> list[str]:
        """Names under descriptions/ (one per MLLM)."""
        folder = self.path / "descriptions"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def description_rows(self, source: str) -> list[dict]:
        """All description rows of a source: image_id, text, model, prompt."""
        folder = self.path / "descriptions" / source
        if not folder.is_dir():
            known = ", ".join(self.description_sources()) or "none"
            raise CorpusError(
                f"corpus {self.path} has no descriptions from {source!r} (present: {known})",
                parts("write them with ", Step("caption", self.path, mllm="...", python="caption_corpus")),
            )
        return read_description_table(folder)

    def descriptions(self, source: str) -> dict[str, str]:
        """image_id -> description text."""
        return {row["image_id"]: row["text"] for row in self.description_rows(source)}

    def write_descriptions(self, source: str, rows: list[dict], settings: dict | None = None) -> None:
        """Replace descriptions/<source>/ atomically (`settings`: how they were generated, kept beside them)."""
        with self.writing():
            (self.path / "descriptions").mkdir(exist_ok=True)
            write_description_table(self.path / "descriptions" / source, rows, settings)

    def description_settings(self, source: str) -> dict | None:
        """The generation settings stored with descriptions/<source>/ (None when it has none)."""
        return read_description_settings(self.path / "descriptions" / source)

    # -- caches
    def slot_caches(self) -> list[tuple[str, str]]:
        """(encoder slug, split) of every finished slot cache."""
        folder = self.path / "slots"
        if not folder.is_dir():
            return []
        return sorted((f.parent.name, f.stem) for f in folder.glob("*/*.safetensors"))

    def video_feature_sets(self) -> list[str]:
        """Names of the frame-feature files under video/."""
        folder = self.path / "video"
        return sorted(f.stem for f in folder.glob("*.safetensors")) if folder.is_dir() else []


def check_descriptions(corpus: Corpus, source: str, image_ids: Sequence[str]) -> dict[str, str]:
    """The description of every image in `image_ids`, or a `MissingDescriptions` naming the first missing one."""
    descriptions = corpus.descriptions(source)
    missing = [i for i in image_ids if not descriptions.get(i, "").strip()]
    if missing:
        raise MissingDescriptions(corpus.path, source, missing, corpus.modality)
    return descriptions
