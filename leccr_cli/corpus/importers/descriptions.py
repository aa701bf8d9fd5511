"""Import descriptions written elsewhere (another MLLM, a service, a colleague) into a corpus.

Four input forms, one description per image (or video) id:

- a folder of `<id>.txt` files (other files are not read);
- a `.jsonl` file, one `{"id": "...", "text": "..."}` object per line;
- a `.tsv` file, `id<TAB>text` per line (a first line `id<TAB>text` is a header);
- the `descriptions/NAME/` folder of another corpus that lists the same images under the same ids.

The result is `descriptions/NAME/` (image_id, text, model, prompt) in gallery order, written
atomically: the same artifact `leccr caption` writes, so recipes use it by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from leccr_cli.corpus.corpus import Corpus, read_description_table
from leccr_cli.defaults import IMPORTED
from leccr_cli.errors import CorpusError, InvalidArgument, Param, parts
from leccr_cli.utils.text import first_few, numbered_lines, read_text

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TSV_HEADERS = ({"id", "text"}, {"image_id", "text"})


@dataclass
class DescriptionImport:
    """What `import_descriptions` wrote, and what it ignored or could not find."""

    folder: Path
    written: int
    images: int  # distinct images (or videos) of the corpus
    unknown: list[str]  # ids of the input that the corpus lacks (ignored)
    missing: list[str]  # corpus ids the input has no description for


def check_description_name(name: str) -> str:
    """A description source name is a plain folder name."""
    if not _PLAIN_NAME.fullmatch(name or ""):
        raise CorpusError(
            f"description source name {name!r} is not a plain folder name", "use letters, digits, '.', '_' and '-'"
        )
    return name


def read_descriptions(source: str | Path) -> dict[str, str]:
    """id -> description from a folder of `<id>.txt`, a `.jsonl` or a `.tsv` file, or another corpus's
    `descriptions/NAME/` folder, in input order."""
    source = Path(source)
    if source.is_dir() and (source / "state.json").is_file():
        return _read_description_source(source)
    if source.is_dir():
        return _read_folder(source)
    if not source.is_file():
        raise CorpusError(
            f"{source}: no such file or folder", "give a folder of <id>.txt files, a .jsonl or a .tsv file"
        )
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(source)
    if suffix == ".tsv":
        return _read_tsv(source)
    raise CorpusError(
        f"{source}: cannot tell the format from the suffix {suffix or '(none)'!r}",
        'name it .jsonl ({"id": ..., "text": ...} per line) or .tsv (id<TAB>text per line), or give a folder of '
        '<id>.txt',
    )


def _read_description_source(folder: Path) -> dict[str, str]:
    """The rows of a description dataset (`descriptions/NAME/` of a corpus, as `leccr caption` writes it)."""
    found = {row["image_id"]: row["text"].strip() for row in read_description_table(folder)}
    empty = [image_id for image_id, text in found.items() if not text]
    if empty:
        raise CorpusError(f"{folder}: {len(empty)} descriptions are empty (first: {first_few(empty)})")
    if not found:
        raise CorpusError(f"{folder}: no descriptions")
    return found


def _read_folder(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file() and not p.name.startswith("."))
    if not files:
        raise CorpusError(f"{folder}: no <id>.txt files", "one text file per image or video id, e.g. 1000092795.txt")
    found = {path.name[: -len(".txt")]: read_text(path).strip() for path in files}
    empty = [image_id for image_id, text in found.items() if not text]
    if empty:
        raise CorpusError(
            f"{folder}: {len(empty)} description file{'s are' if len(empty) > 1 else ' is'} empty (first: "
            f"{first_few([i + '.txt' for i in empty])})",
            "write them, or remove the files",
        )
    return found


def _add(found: dict[str, str], lines: dict[str, int], path: Path, number: int, image_id: str, text: str) -> None:
    if not image_id:
        raise CorpusError(f"{path}:{number}: the id is empty")
    if not text:
        raise CorpusError(f"{path}:{number}: the description of {image_id!r} is empty", "write it, or remove the line")
    if image_id in found:
        raise CorpusError(
            f"{path}:{number}: id {image_id!r} appears twice (also line {lines[image_id]})",
            "keep one description per id",
        )
    found[image_id] = text
    lines[image_id] = number


def _read_jsonl(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in numbered_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(
                f"{path}:{number}: not JSON ({error.msg} at column {error.colno})",
                'expected {"id": "...", "text": "..."}',
            ) from None
        if not isinstance(row, dict) or "id" not in row or "text" not in row:
            raise CorpusError(f'{path}:{number}: expected an object with keys "id" and "text", found {line[:60]!r}')
        for key in ("id", "text"):
            if not isinstance(row[key], str):
                raise CorpusError(f'{path}:{number}: "{key}" is {json.dumps(row[key])[:40]}, not a string', "quote it")
        _add(found, lines, path, number, row["id"].strip(), row["text"].strip())
    if not found:
        raise CorpusError(f"{path}: no descriptions", 'expected one {"id": "...", "text": "..."} object per line')
    return found


def _read_tsv(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    rows = numbered_lines(path)
    if rows and {field.strip() for field in rows[0][1].split("\t")} in _TSV_HEADERS:
        rows = rows[1:]
    for number, line in rows:
        if "\t" not in line:
            raise CorpusError(
                f"{path}:{number}: no tab between id and description in {line[:60]!r}", "expected `id<TAB>text`"
            )
        image_id, text = line.split("\t", 1)
        _add(found, lines, path, number, image_id.strip(), text.strip())
    if not found:
        raise CorpusError(f"{path}: no descriptions", "expected `id<TAB>text` per line")
    return found


def import_descriptions(
    corpus: Corpus,
    source: str | Path,
    name: str,
    *,
    model: str = IMPORTED,
    prompt: str = IMPORTED,
    strict: bool = False,
    overwrite: bool = False,
) -> DescriptionImport:
    """Write the descriptions of `source` into `descriptions/<name>/` of `corpus`, in gallery order.

    Ids the corpus lacks are ignored (refused when `strict`); corpus ids without a description
    are returned in `missing` (training that uses `name` refuses them until they are written).
    """
    check_description_name(name)
    for option, value in (("model", model), ("prompt", prompt)):
        if not value or not value.strip():
            raise InvalidArgument(
                option,
                value,
                "is empty",
                f"leave it out for the default {IMPORTED!r}",
                message=parts(Param(option), " is empty"),
            )
    folder = corpus.path / "descriptions" / name
    if folder.exists() and not overwrite:
        raise CorpusError(
            f"{folder} exists",
            parts("pass ", Param("overwrite", True), " to replace it, or choose another ", Param("name")),
        )
    found = read_descriptions(source)
    gallery = list(dict.fromkeys(row.image_id for row in corpus.images()))
    kind = corpus.modality  # image or video
    known = set(gallery)
    unknown = [image_id for image_id in found if image_id not in known]
    if unknown and strict:
        raise CorpusError(
            f"{len(unknown)} of {len(found)} ids in {source} are not {kind}s of {corpus.path} (first: "
            f"{first_few(unknown)})",
            parts("remove them, or leave out ", Param("strict"), " to ignore them"),
        )
    rows = [
        {"image_id": image_id, "text": found[image_id], "model": model.strip(), "prompt": prompt.strip()}
        for image_id in gallery
        if image_id in found
    ]
    if not rows:
        raise CorpusError(
            f"none of the {len(found)} ids in {source} is {'an' if kind == 'image' else 'a'} {kind} of {corpus.path} "
            f"(first: {first_few(unknown)})",
            f"ids are the corpus's {kind} ids, e.g. {first_few(gallery, 2)}",
        )
    corpus.write_descriptions(name, rows)
    missing = [image_id for image_id in gallery if image_id not in found]
    return DescriptionImport(folder, len(rows), len(gallery), unknown, missing)
