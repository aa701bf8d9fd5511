"""Import the NRCCR/LECCR data layout.

```
ROOT/TextData/*.caption.txt      lines `<cap_id> <caption>`; the split (train/val/test) is read
                                 from the file name, e.g. multi30ktrain_enc2de.caption.txt
ROOT/FeatureData/<split>_id.txt  image ids of a split (also <lang>_<split>_id.txt, or img_id/*.txt)
ROOT/image_ids.txt               optional MSCOCO name map: `<image_id> <file name>` per line
ROOT/FeatureData/<name>/         optional BigFile frame features (video corpora), with video2frames.txt
```

Cap ids are `<image_id>#<tag>#<n>`. Tags: `enc` (English), `xx` (human xx), `enc2xx`
(machine translation into xx), `enc2xx2enc` (its back-translation), `xx2enc` (machine
translation of the human xx caption into English); `en` may stand for `enc`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from leccr_cli.data.corpus import Caption, ImageRow, split_cap_id, write_corpus
from leccr_cli.data.imports import check_images_present, read_lines
from leccr_cli.languages import ISO_639_1
from leccr_cli.errors import CorpusError

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
        raise CorpusError(f"{path}: the file name does not say train, val or test", "rename it, e.g. mydatatrain_enc.caption.txt")
    return found[-1]


def read_caption_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, cap id, text) of every line; malformed lines are errors naming file:line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path}: cannot be read ({error})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if " " not in line.strip():
            raise CorpusError(f"{path}:{number}: no space between cap id and caption in {line.strip()[:60]!r}", "expected `<cap_id> <caption>`")
        cap_id, text = line.strip().split(" ", 1)
        if "#" not in cap_id:
            raise CorpusError(f"{path}:{number}: cap id {cap_id!r} has no '#'", "expected <image_id>#<tag>#<n>, e.g. 1000092795#enc#0")
        if not text.strip():
            raise CorpusError(f"{path}:{number}: empty caption for {cap_id}")
        rows.append((number, cap_id, text.strip()))
    return rows


def _id_lists(root: Path) -> dict[str, list[str]]:
    """Image ids per split from FeatureData/*_id.txt or img_id/*.txt (language-specific lists are merged)."""
    lists: dict[str, list[str]] = {}
    files = sorted((root / "FeatureData").glob("*_id.txt")) + sorted((root / "img_id").glob("*.txt"))
    for path in files:
        found = _SPLIT_WORD.findall(path.stem)
        if not found:
            continue
        ids = lists.setdefault(found[-1], [])
        seen = set(ids)
        ids.extend(i for i in read_lines(path) if i not in seen and not seen.add(i))
    return lists


def _name_map(root: Path) -> dict[str, str]:
    path = root / "image_ids.txt"
    if not path.is_file():
        return {}
    mapping = {}
    for line in read_lines(path):
        fields = line.split()
        mapping[Path(fields[0]).stem if len(fields) == 1 else fields[0]] = fields[-1]
    return mapping


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
) -> tuple["object", int]:
    """Convert an NRCCR-layout folder into a corpus; returns (corpus, missing image count)."""
    root = Path(root)
    text_dir = root / "TextData"
    if not text_dir.is_dir():
        raise CorpusError(f"{root}: no TextData folder", "point at the collection folder that holds TextData/ and FeatureData/")
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
            where[cap_id] = f"{path.name}:{number}"

    id_lists = _id_lists(root)
    galleries: dict[str, list[str]] = {}
    for split in sorted({c.split for c in captions.values()}):
        listed = id_lists.get(split)
        if listed is None:
            listed = list(dict.fromkeys(c.image_id for c in captions.values() if c.split == split))
        galleries[split] = listed
    for cap in captions.values():
        if cap.image_id not in galleries[cap.split]:
            raise CorpusError(
                f"caption {cap.cap_id} ({where[cap.cap_id]}) is of image {cap.image_id!r}, which the {cap.split} id list lacks",
                "fix the id list under FeatureData/ or img_id/",
            )

    names = _name_map(root)
    if modality == "video":
        rows = [ImageRow(i, split, i) for split, ids in galleries.items() for i in ids]
    else:
        rows = [ImageRow(i, split, names.get(i, f"{i}.jpg")) for split, ids in galleries.items() for i in ids]
    missing = 0
    media_root = str(Path(images_dir).resolve()) if images_dir else "."
    if modality == "image":
        if images_dir is None:
            if not allow_missing_images:
                raise CorpusError("--images is required for an image corpus", "give the image folder, or pass --allow-missing-images")
            missing = len(rows)
        else:
            if not Path(images_dir).is_dir():
                raise CorpusError(f"--images {images_dir}: no such folder")
            missing = check_images_present(Path(images_dir), sorted({r.path for r in rows}), allow_missing_images)

    def add_video_features(folder: Path) -> None:
        if video_feature is None:
            return
        from leccr_cli.data.video import read_bigfile, write_frame_features

        feature_dir = root / "FeatureData" / video_feature
        frame_ids, matrix = read_bigfile(feature_dir)
        row_of = {f: i for i, f in enumerate(frame_ids)}
        mapping_file = feature_dir / "video2frames.txt"
        if mapping_file.is_file():
            try:
                video2frames = ast.literal_eval(mapping_file.read_text(encoding="utf-8"))
            except (ValueError, SyntaxError) as error:
                raise CorpusError(f"{mapping_file}: not a dict literal ({error})") from None
        else:
            video2frames = {f: [f] for f in frame_ids}
        videos = sorted({r.image_id for r in rows})
        lacking = [v for v in videos if not video2frames.get(v)]
        if lacking:
            raise CorpusError(f"{feature_dir}: no frames for {len(lacking)} videos (first: {', '.join(lacking[:3])})")
        unknown = [f for v in videos for f in video2frames[v] if f not in row_of]
        if unknown:
            raise CorpusError(f"{feature_dir}: video2frames.txt names {len(unknown)} frames that id.txt lacks (first: {unknown[0]})")
        import torch

        frames = [torch.from_numpy(matrix[[row_of[f] for f in video2frames[v]]]) for v in videos]
        write_frame_features(folder / "video" / f"{video_feature}.safetensors", videos, frames)

    corpus = write_corpus(
        out,
        name=name or root.name,
        modality=modality,
        media_root=media_root,
        images=rows,
        captions=list(captions.values()),
        overwrite=overwrite,
        fill=add_video_features,
    )
    return corpus, missing
