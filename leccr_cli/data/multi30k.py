"""Import the public Multi30K text layout plus a Flickr30K image folder.

```
TEXT/task1/raw/<split>.<lang>.gz           one caption per line, line i <-> image i
TEXT/task1/image_splits/<split>.txt        image file names
TEXT/task2/raw/<split>.<k>.<lang>.gz       five independent captions per image (k = 1..5)
TEXT/task2/image_splits/<split>_images.txt
```

task1 splits keep their names except `test_2016_flickr`, which becomes `test`; task2 splits
become `task2-<name>` (e.g. `task2-val`) so that their five-caption galleries stay apart
from task1's. Cap ids are `<image stem>#<lang>#0` (task1) and `#<lang>#<k>` (task2).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from leccr_cli.data.corpus import Caption, ImageRow, write_corpus
from leccr_cli.data.imports import check_images_present, read_lines
from leccr_cli.languages import ISO_639_1
from leccr_cli.errors import CorpusError

TASK1_SPLIT_NAMES = {"test_2016_flickr": "test"}


def _read_gz_lines(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path}: cannot be read ({error})", "is it a gzip file of UTF-8 text?") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _captions_for(path: Path, split: str, names: list[str], lang: str, number: int) -> list[Caption]:
    lines = _read_gz_lines(path)
    if len(lines) != len(names):
        raise CorpusError(
            f"{path}: {len(lines)} lines but the image list of split {split!r} has {len(names)} images",
            "the caption file and the image list must be aligned line by line",
        )
    captions = []
    for line_no, (name, text) in enumerate(zip(names, lines), start=1):
        if not text.strip():
            raise CorpusError(f"{path}:{line_no}: empty caption for image {name}", "fix or remove the line")
        image_id = Path(name).stem
        captions.append(Caption(f"{image_id}#{lang}#{number}", image_id, split, lang, "human", text))
    return captions


def import_multi30k(
    text_dir: str | Path,
    images_dir: str | Path,
    out: str | Path,
    *,
    task2: bool = True,
    allow_missing_images: bool = False,
    overwrite: bool = False,
) -> tuple["object", int]:
    """Build a corpus from Multi30K text and Flickr30K images; returns (corpus, missing image count)."""
    text_dir, images_dir = Path(text_dir), Path(images_dir)
    task1 = text_dir / "task1"
    if not (task1 / "image_splits").is_dir() or not (task1 / "raw").is_dir():
        raise CorpusError(
            f"{text_dir}: no task1/image_splits and task1/raw folders",
            "point --text at a checkout of github.com/multi30k/dataset (its data/ folder)",
        )
    if not images_dir.is_dir():
        raise CorpusError(f"--images {images_dir}: no such folder", "give the Flickr30K image folder")
    images: list[ImageRow] = []
    captions: list[Caption] = []

    def add_split(split: str, names: list[str]) -> None:
        for name in names:
            images.append(ImageRow(Path(name).stem, split, name))

    for split_file in sorted((task1 / "image_splits").glob("*.txt")):
        source_name = split_file.stem
        split = TASK1_SPLIT_NAMES.get(source_name, source_name)
        names = read_lines(split_file)
        files = sorted((task1 / "raw").glob(f"{source_name}.*.gz"))
        langs = [f.name[len(source_name) + 1 : -3] for f in files]
        if not files:
            continue
        add_split(split, names)
        for lang, path in zip(langs, files):
            if lang not in ISO_639_1:
                continue
            captions.extend(_captions_for(path, split, names, lang, 0))

    task2_dir = text_dir / "task2"
    if task2 and (task2_dir / "image_splits").is_dir():
        for split_file in sorted((task2_dir / "image_splits").glob("*_images.txt")):
            source_name = split_file.stem[: -len("_images")]
            pattern = re.compile(rf"^{re.escape(source_name)}\.(\d+)\.([a-z]{{2}})\.gz$")
            files = [(pattern.match(f.name), f) for f in sorted((task2_dir / "raw").glob(f"{source_name}.*.gz"))]
            files = [(int(m.group(1)), m.group(2), f) for m, f in files if m]
            if not files:
                continue
            split = f"task2-{'test' if source_name == 'test_2016' else source_name}"
            names = read_lines(split_file)
            add_split(split, names)
            for number, lang, path in files:
                captions.extend(_captions_for(path, split, names, lang, number))

    if not captions:
        raise CorpusError(f"{text_dir}: no caption files found under task1/raw", "expected e.g. train.en.gz")
    missing = check_images_present(images_dir, sorted({row.path for row in images}), allow_missing_images)
    corpus = write_corpus(
        out,
        name="multi30k",
        modality="image",
        media_root=str(images_dir.resolve()),
        images=images,
        captions=captions,
        overwrite=overwrite,
    )
    return corpus, missing
