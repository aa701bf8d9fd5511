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

With the Flickr30K caption file (`results_20130124.token`: `<image>.jpg#<n>\t<caption>`, or
`results.csv`: `image_name| comment_number| comment`), every training image gets its five
English Flickr30K captions as `<image stem>#en#<n>` (n = 0..4, Flickr30K's numbering), as the
reference trains. They replace the task1 English training caption, which is one of those five
(Multi30K drew it from them), so no caption is counted twice; German, French and Czech task1
captions stay. A training image the file lacks keeps its task1 English caption.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from leccr_cli.corpus.corpus import Caption, ImageRow, write_corpus
from leccr_cli.corpus.importers.common import ImportReport, check_images_present, read_id_list
from leccr_cli.utils.text import first_few, numbered_lines
from leccr_cli.utils.languages import ISO_639_1
from leccr_cli.errors import CorpusError, Param, parts

TASK1_SPLIT_NAMES = {"test_2016_flickr": "test"}
FLICKR30K_CSV_HEADER = ["image_name", "comment_number", "comment"]


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
    flickr30k_captions: str | Path | None = None,
    allow_missing_images: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Build a corpus from Multi30K text and Flickr30K images (optionally with the five
    Flickr30K English captions of every training image)."""
    text_dir, images_dir = Path(text_dir), Path(images_dir)
    task1 = text_dir / "task1"
    if not (task1 / "image_splits").is_dir() or not (task1 / "raw").is_dir():
        raise CorpusError(
            f"{text_dir}: no task1/image_splits and task1/raw folders",
            parts("point ", Param("text_dir"), " at a checkout of github.com/multi30k/dataset (its data/ folder)"),
        )
    if not images_dir.is_dir():
        raise CorpusError(parts(Param("images_dir", images_dir), ": no such folder"), "give the Flickr30K image folder")
    if flickr30k_captions is not None and not Path(flickr30k_captions).is_file():
        raise CorpusError(
            parts(Param("flickr30k_captions", flickr30k_captions), ": no such file"),
            "give results_20130124.token or results.csv",
        )
    images: list[ImageRow] = []
    captions: list[Caption] = []

    def add_split(split: str, names: list[str]) -> None:
        for name in names:
            images.append(ImageRow(Path(name).stem, split, name))

    for split_file in sorted((task1 / "image_splits").glob("*.txt")):
        source_name = split_file.stem
        split = TASK1_SPLIT_NAMES.get(source_name, source_name)
        names = read_id_list(split_file)
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
            names = read_id_list(split_file)
            add_split(split, names)
            for number, lang, path in files:
                captions.extend(_captions_for(path, split, names, lang, number))

    if not captions:
        raise CorpusError(f"{text_dir}: no caption files found under task1/raw", "expected e.g. train.en.gz")
    notes: list[str] = []
    warnings: list[str] = []
    if flickr30k_captions is not None:
        train_names = [row.path for row in images if row.split == "train"]
        if not train_names:
            raise CorpusError(
                f"{text_dir}: no task1 train split to add the Flickr30K captions to",
                "expected task1/image_splits/train.txt",
            )
        captions = _with_flickr30k_captions(captions, Path(flickr30k_captions), train_names, notes, warnings)
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
    return ImportReport(corpus, missing, notes, warnings)


def read_flickr30k_captions(path: Path) -> dict[str, list[tuple[int, str]]]:
    """image file name -> [(caption number, caption)] from `results_20130124.token` or `results.csv`.

    Malformed lines and repeated (image, number) pairs are errors naming file:line.
    """
    lines = numbered_lines(path)
    if not lines:
        raise CorpusError(f"{path}: no captions", "expected the Flickr30K results_20130124.token or results.csv")
    csv = [field.strip() for field in lines[0][1].split("|")] == FLICKR30K_CSV_HEADER
    expected = "`image_name| comment_number| comment`" if csv else "`<image>.jpg#<n><TAB><caption>`"
    found: dict[str, list[tuple[int, str]]] = {}
    first_line: dict[tuple[str, int], int] = {}
    for number, line in lines[1:] if csv else lines:
        if csv:
            fields = [field.strip() for field in line.split("|", 2)]
        else:
            key, text = (line.split(None, 1) + [""])[:2]
            fields = [*key.rsplit("#", 1), text.strip()] if "#" in key else []
        if len(fields) != 3 or not fields[0] or not fields[1].isdigit() or not fields[2]:
            raise CorpusError(f"{path}:{number}: expected {expected}, found {line[:70]!r}", "fix or remove the line")
        name, caption_number, text = fields[0], int(fields[1]), fields[2]
        previous = first_line.setdefault((name, caption_number), number)
        if previous != number:
            raise CorpusError(
                f"{path}:{number}: caption {caption_number} of {name} appears twice (also line {previous})"
            )
        found.setdefault(name, []).append((caption_number, text))
    return found


def _with_flickr30k_captions(
    captions: list[Caption], path: Path, train_names: list[str], notes: list[str], warnings: list[str]
) -> list[Caption]:
    """Replace the task1 English caption of every training image the Flickr30K file covers by its captions."""
    found = read_flickr30k_captions(path)
    train = set(train_names)
    covered = [name for name in train_names if name in found]
    extra = [name for name in found if name not in train]
    stems = {name: Path(name).stem for name in covered}
    added = [
        Caption(f"{stems[name]}#en#{n}", stems[name], "train", "en", "human", text)
        for name in covered
        for n, text in sorted(found[name])
    ]
    replaced = set(stems.values())
    kept = [c for c in captions if not (c.split == "train" and c.lang == "en" and c.image_id in replaced)]
    notes.append(
        f"Flickr30K: {len(added)} English captions for {len(covered)} of {len(train_names)} training images "
        f"(replacing their task1 English caption) from {path}"
    )
    if extra:
        notes.append(
            f"Flickr30K: {_count(len(extra), 'image')} of {path.name} "
            f"({_count(sum(len(found[n]) for n in extra), 'caption')}) not among the Multi30K training images, "
            f"ignored (first: {first_few(extra)})"
        )
    lacking = [name for name in train_names if name not in found]
    if lacking:
        warnings.append(
            f"{_count(len(lacking), 'training image')} without a Flickr30K caption in {path.name} "
            f"{'keeps' if len(lacking) == 1 else 'keep'} the task1 English caption (first: {first_few(lacking)})"
        )
    return kept + added


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
