"""Import the NRCCR/LECCR data layout.

```
ROOT/TextData/*.caption.txt      lines `<cap_id> <caption>` (cap id, then a space or tab); the split
                                 (train/val/test) is read from the file name, e.g.
                                 multi30ktrain_enc2de.caption.txt
ROOT/FeatureData/*_id*.txt       image ids of a split, one per line: train_id.txt, test_id_2016.txt, or
                                 a language's own list such as ja_test_id.txt; also one folder down
                                 (FeatureData/<feature>/ja_test_id.txt) or under img_id/
ROOT/image_ids.txt               optional MSCOCO name map: `<image_id> <file name>` per line
ROOT/FeatureData/<name>/         optional BigFile frame features (video corpora), with video2frames.txt
```

A split's images are the union of its lists. A language's own list (`ja_test_id.txt`) is also
kept as that language's gallery of the split (MSCOCO's ja and zh test images differ), so
each language can be ranked against its own images. Text files are UTF-8 (a BOM is
dropped) and lines end at '\n' only.

Cap ids are `<image_id>#<tag>#<n>`. Tags: `enc` (English), `xx` (human xx), `enc2xx`
(machine translation into xx), `enc2xx2enc` (its back-translation), `xx2enc` (machine
translation of the human xx caption into English); `en` may stand for `enc`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from leccr_cli.corpus.corpus import Caption, GalleryRow, ImageRow, split_cap_id, write_corpus
from leccr_cli.corpus.importers.common import ImportReport, check_images_present, read_id_list
from leccr_cli.utils.text import first_few, numbered_lines, read_text
from leccr_cli.utils.languages import ISO_639_1
from leccr_cli.errors import CorpusError, Param, parts

_SPLIT_WORD = re.compile(r"(train|val|test)")


def parse_tag(tag: str) -> tuple[str, str, str | None]:
    """Map an NRCCR tag to (lang, origin, tag of the caption it was translated from)."""
    parts = ["en" if p == "enc" else p for p in tag.split("2")]
    if not all(p in ISO_639_1 for p in parts) or len(parts) > 3:
        raise ValueError(tag)
    if len(parts) == 1:
        return parts[0], "human", None
    source_tag = tag.rsplit("2", 1)[0]
    if len(parts) == 2:
        if parts[0] == parts[1]:
            raise ValueError(tag)
        return parts[1], "mt", source_tag
    if parts[0] != parts[2]:
        raise ValueError(tag)
    return parts[2], "back", source_tag


def _split_of(path: Path) -> str:
    name = path.name[: -len(".caption.txt")]
    found = _SPLIT_WORD.findall(name)
    if not found:
        raise CorpusError(
            f"{path}: the file name does not say train, val or test", "rename it, e.g. mydatatrain_enc.caption.txt"
        )
    return found[-1]


def read_caption_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, cap id, text) of every line; malformed lines are errors naming file:line.

    The cap id ends at the first run of whitespace (space or tab); a BOM is dropped.
    """
    rows = []
    for number, line in numbered_lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise CorpusError(
                f"{path}:{number}: no caption after the cap id in {line[:60]!r}", "expected `<cap_id> <caption>`"
            )
        cap_id, text = parts
        image_id, tag, index = (cap_id.rsplit("#", 2) + ["", ""])[:3]
        if not (image_id and tag and index):
            raise CorpusError(
                f"{path}:{number}: cap id {cap_id!r} is not of the form <image_id>#<tag>#<n>", "e.g. 1000092795#enc#0"
            )
        rows.append((number, cap_id, text.strip()))
    return rows


@dataclass
class IdList:
    """One id-list file: the split it names, its language (`ja_test_id.txt`) or None, its ids."""

    path: Path
    split: str
    lang: str | None
    ids: list[str]


def _list_language(stem: str) -> str | None:
    first, _, rest = stem.partition("_")
    return first if rest and first in ISO_639_1 else None


def read_id_lists(root: Path) -> list[IdList]:
    """The id lists under FeatureData/ (also one folder down, as in FeatureData/<feature>/ja_test_id.txt) or img_id/."""
    features = root / "FeatureData"
    files = (
        sorted(features.glob("*_id*.txt"))
        + sorted(features.glob("*/*_id*.txt"))
        + sorted((root / "img_id").glob("*.txt"))
    )
    lists = []
    for path in files:
        found = _SPLIT_WORD.findall(path.stem)
        if found:
            lists.append(IdList(path, found[-1], _list_language(path.stem), list(dict.fromkeys(read_id_list(path)))))
    return lists


def _name_map(root: Path) -> dict[str, str]:
    """image_ids.txt: `<image_id> <file name>` (or just the file name) per line."""
    path = root / "image_ids.txt"
    if not path.is_file():
        return {}
    mapping: dict[str, tuple[str, int]] = {}
    for number, line in numbered_lines(path):
        fields = line.split(None, 1)
        image_id, file_name = (Path(fields[0]).stem, fields[0]) if len(fields) == 1 else (fields[0], fields[1].strip())
        previous = mapping.get(image_id)
        if previous is not None and previous[0] != file_name:
            raise CorpusError(
                f"{path}:{number}: image {image_id!r} is mapped to {file_name!r}, but line {previous[1]} maps it to "
                f"{previous[0]!r}"
            )
        mapping[image_id] = (file_name, number)
    return {image_id: file_name for image_id, (file_name, _) in mapping.items()}


def import_nrccr(
    root: str | Path,
    out: str | Path,
    *,
    images_dir: str | Path | None = None,
    name: str | None = None,
    modality: str = "image",
    video_feature: str | None = None,
    allow_missing_images: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Convert an NRCCR-layout folder into a corpus.

    A split's images are the union of its id lists; a language's own list (`ja_test_id.txt`)
    also becomes that language's gallery of the split.
    """
    root = Path(root)
    text_dir = root / "TextData"
    if not text_dir.is_dir():
        raise CorpusError(
            f"{root}: no TextData folder", "point at the collection folder that holds TextData/ and FeatureData/"
        )
    files = sorted(text_dir.glob("*.caption.txt"))
    if not files:
        raise CorpusError(f"{text_dir}: no *.caption.txt files")

    captions: dict[str, Caption] = {}
    where: dict[str, str] = {}
    for path in files:
        split = _split_of(path)
        for number, cap_id, text in read_caption_file(path):
            image_id, tag, index = split_cap_id(cap_id)
            try:
                lang, origin, source_tag = parse_tag(tag)
            except ValueError:
                raise CorpusError(
                    f"{path}:{number}: unknown tag {tag!r} in cap id {cap_id!r}",
                    "tags are enc, xx, enc2xx, enc2xx2enc or xx2enc with ISO 639-1 codes xx",
                ) from None
            source = f"{image_id}#{source_tag}#{index}" if source_tag else ""
            row = Caption(cap_id, image_id, split, lang, origin, text, source, "nrccr" if origin != "human" else "")
            previous = captions.get(cap_id)
            if previous is not None and previous != row:
                raise CorpusError(f"{path}:{number}: cap id {cap_id!r} also appears, differently, in {where[cap_id]}")
            captions[cap_id] = row
            where[cap_id] = f"{path}:{number}"

    notes: list[str] = []
    splits, own_lists = _split_images(root, captions, where, notes)

    names = _name_map(root)
    if modality == "video":
        rows = [ImageRow(i, split, i) for split, ids in splits.items() for i in ids]
    else:
        rows = [ImageRow(i, split, names.get(i, f"{i}.jpg")) for split, ids in splits.items() for i in ids]
    missing = 0
    media_root = str(Path(images_dir).resolve()) if images_dir else "."
    if modality == "image":
        if images_dir is None:
            if not allow_missing_images:
                raise CorpusError(
                    parts(Param("images_dir"), " is required for an image corpus"),
                    parts("give the image folder, or pass ", Param("allow_missing_images", True)),
                )
            missing = len(rows)
        else:
            if not Path(images_dir).is_dir():
                raise CorpusError(parts(Param("images_dir", images_dir), ": no such folder"))
            missing = check_images_present(Path(images_dir), sorted({r.path for r in rows}), allow_missing_images)

    def add_video_features(folder: Path) -> None:
        if video_feature is not None:
            videos = list(dict.fromkeys(r.image_id for r in rows))
            _convert_frame_features(
                root / "FeatureData" / video_feature, videos, folder / "video" / f"{video_feature}.safetensors"
            )

    corpus = write_corpus(
        out,
        name=name or root.name,
        modality=modality,
        media_root=media_root,
        images=rows,
        captions=list(captions.values()),
        galleries=[GalleryRow(i, split, lang) for (split, lang), listed in own_lists.items() for i in listed.ids],
        overwrite=overwrite,
        fill=add_video_features,
    )
    return ImportReport(corpus, missing, notes)


def _split_images(
    root: Path, captions: dict[str, Caption], where: dict[str, str], notes: list[str]
) -> tuple[dict[str, list[str]], dict[tuple[str, str], IdList]]:
    """The images of every split (the union of its id lists, or of its captions' images without
    one) and the languages' own lists; every caption must be of a listed image."""
    lists_of: dict[str, list[IdList]] = {}
    for id_list in read_id_lists(root):
        lists_of.setdefault(id_list.split, []).append(id_list)
    caption_langs = {(c.split, c.lang) for c in captions.values() if c.origin == "human"}
    splits: dict[str, list[str]] = {}
    own_lists: dict[tuple[str, str], IdList] = {}
    for split in sorted({c.split for c in captions.values()}):
        lists = lists_of.get(split)
        if not lists:
            splits[split] = list(dict.fromkeys(c.image_id for c in captions.values() if c.split == split))
            continue
        splits[split] = list(dict.fromkeys(i for id_list in lists for i in id_list.ids))
        for id_list in lists:
            if id_list.lang is None:
                continue
            if (split, id_list.lang) not in caption_langs:
                notes.append(
                    f"{id_list.path}: no human {id_list.lang} captions in {split}; its images join the split only"
                )
                continue
            other = own_lists.setdefault((split, id_list.lang), id_list)
            if other.ids != id_list.ids:
                raise CorpusError(
                    f"{id_list.path} and {other.path} both list the {id_list.lang} {split} images, differently "
                    f"({len(id_list.ids)} vs {len(other.ids)} ids)",
                    "remove the stale one",
                )
    listed = {split: set(ids) for split, ids in splits.items()}
    own = {key: set(id_list.ids) for key, id_list in own_lists.items()}
    for cap in captions.values():
        if cap.image_id not in listed[cap.split]:
            raise CorpusError(
                f"{where[cap.cap_id]}: caption {cap.cap_id} is of image {cap.image_id!r}, which the {cap.split} id "
                f"lists lack",
                "fix the id list under FeatureData/ or img_id/",
            )
        key = (cap.split, cap.lang)
        if cap.origin == "human" and key in own and cap.image_id not in own[key]:
            raise CorpusError(
                f"{where[cap.cap_id]}: caption {cap.cap_id} is of image {cap.image_id!r}, which {own_lists[key].path} "
                f"(the {cap.lang} {cap.split} list) lacks",
                "fix the id list or the caption file",
            )
    return splits, own_lists


def _convert_frame_features(feature_dir: Path, videos: list[str], out: Path) -> None:
    """Gather the frames of every video from a BigFile folder into one frame-feature file."""
    from leccr_cli.corpus.video import read_bigfile, write_frame_features

    frame_ids, matrix = read_bigfile(feature_dir)
    id_file = feature_dir / "id.txt"
    row_of = {f: i for i, f in enumerate(frame_ids)}
    mapping_file = feature_dir / "video2frames.txt"
    if mapping_file.is_file():
        video2frames = _read_video2frames(mapping_file)
        lacking = [v for v in videos if not video2frames.get(v)]
        if lacking:
            raise CorpusError(
                f"{mapping_file}: no frames for {len(lacking)} of {len(videos)} videos (first: {first_few(lacking)})"
            )
        unknown = [(v, f) for v in videos for f in video2frames[v] if f not in row_of]
        if unknown:
            affected = len({v for v, _ in unknown})
            raise CorpusError(
                f"{mapping_file}: {len(unknown)} frames of {affected} videos are not among the {len(frame_ids)} ids of "
                f"{id_file} "
                f"(first: frame {unknown[0][1]!r} of video {unknown[0][0]!r})",
                "the mapping and the feature folder must come from the same extraction",
            )
    else:
        lacking = [v for v in videos if v not in row_of]
        if lacking:
            raise CorpusError(
                f"{id_file}: {len(lacking)} of {len(videos)} videos have no features and there is no video2frames.txt "
                f"(first: {first_few(lacking)})"
            )
        video2frames = {v: [v] for v in videos}
    import numpy as np
    import torch

    frames = [torch.from_numpy(np.ascontiguousarray(matrix[[row_of[f] for f in video2frames[v]]])) for v in videos]
    write_frame_features(out, videos, frames)


def _read_video2frames(path: Path) -> dict[str, list[str]]:
    """video2frames.txt: a Python dict literal {video id: [frame id, ...]}."""
    try:
        mapping = ast.literal_eval(read_text(path))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise CorpusError(
            f"{path}: not a dict literal ({type(error).__name__}: {error})",
            "expected {'video1': ['video1_0', ...], ...}",
        ) from None
    if not isinstance(mapping, dict):
        raise CorpusError(f"{path}: holds a {type(mapping).__name__}, not a dict of video id -> frame ids")
    for video, frames in mapping.items():
        if (
            not isinstance(video, str)
            or not isinstance(frames, (list, tuple))
            or not all(isinstance(f, str) for f in frames)
        ):
            raise CorpusError(
                f"{path}: the entry for {video!r} is not a list of frame ids",
                "expected {'video1': ['video1_0', ...], ...}",
            )
    return mapping
