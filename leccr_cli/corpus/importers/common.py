"""What the importers share: their report, id lists, the check that listed images exist."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from leccr_cli.errors import CorpusError, Param, parts
from leccr_cli.utils.text import first_few, numbered_lines

if TYPE_CHECKING:
    from leccr_cli.corpus.corpus import Corpus


@dataclass
class ImportReport:
    """What an importer wrote and what the user should hear about."""

    corpus: "Corpus"
    missing_images: int = 0
    notes: list[str] = field(default_factory=list)  # facts about the input (ignored lines, counts)
    warnings: list[str] = field(default_factory=list)  # things that may need the user's attention


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
        raise CorpusError(
            f"{len(missing)} of {len(relative_paths)} listed images are missing under {images_dir} (first: "
            f"{first_few(missing)})",
            parts(
                "fix ",
                Param("images_dir"),
                ", or pass ",
                Param("allow_missing_images", True),
                " to import the text anyway",
            ),
        )
    return len(missing)
