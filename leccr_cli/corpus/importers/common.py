"""Helpers shared by the importers: reading text files the way editors count lines, and reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from leccr_cli.errors import CorpusError

if TYPE_CHECKING:
    from leccr_cli.corpus.corpus import Corpus


@dataclass
class ImportReport:
    """What an importer wrote and what the user should hear about."""

    corpus: "Corpus"
    missing_images: int = 0
    notes: list[str] = field(default_factory=list)  # facts about the input (ignored lines, counts)
    warnings: list[str] = field(default_factory=list)  # things that may need the user's attention


def read_text(path: Path) -> str:
    """The UTF-8 text of a file (a leading BOM dropped); undecodable bytes are named by file:line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as error:
        raise CorpusError(f"{path}: cannot be read ({error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not UTF-8 ({error.reason} at byte {error.start})", "save the file as UTF-8") from None


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line stripped of surrounding whitespace) of every non-blank line.

    Lines end at '\\n' only, as files and editors count them: U+2028, NEL or form feeds inside
    a caption neither split it nor shift the numbers (`str.splitlines` would do both).
    """
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.strip()
        if line:
            rows.append((number, line))
    return rows


def read_id_list(path: Path) -> list[str]:
    """The ids of a one-id-per-line file, in file order; a line holding whitespace is refused."""
    ids = []
    for number, line in numbered_lines(path):
        if len(line.split()) != 1:
            raise CorpusError(f"{path}:{number}: expected one id per line, found {line[:60]!r}")
        ids.append(line)
    return ids


def check_images_present(images_dir: Path, relative_paths: list[str], allow_missing: bool) -> int:
    """Count listed images missing under `images_dir`; fail naming the first ones unless allowed."""
    missing = [p for p in relative_paths if not (images_dir / p).is_file()]
    if missing and not allow_missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise CorpusError(
            f"{len(missing)} of {len(relative_paths)} listed images are missing under {images_dir} (first: {shown})",
            "fix --images, or pass --allow-missing-images to import the text anyway",
        )
    return len(missing)


def first_few(items: list[str], count: int = 3) -> str:
    """'a, b, c, ...' for messages that name the first items of a long list."""
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")
