"""Text: UTF-8 files read line by line as editors count lines, caption cleaning, and short lists for messages."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from leccr_cli.errors import CorpusError


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
        raise CorpusError(
            f"{path}:{line}: not UTF-8 ({error.reason} at byte {error.start})", "save the file as UTF-8"
        ) from None


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


def first_few(items: list[str], count: int = 3) -> str:
    """'a, b, c, ...' for messages that name the first items of a long list."""
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")


# the marks the reference's caption cleaning replaces by spaces (all ASCII; CJK punctuation stays)
ASCII_PUNCTUATION = frozenset(",.'!?\"()*#:;~-/")


def clean_caption(text: str, lowercase: bool = True, strip_punctuation: str = "unicode", max_words: int = 30) -> str:
    """Caption cleaning as in the reference: lower-case, punctuation removed, cut to `max_words`.

    `strip_punctuation`: `unicode` replaces every Unicode punctuation mark by a space, `ascii`
    only the reference's ASCII marks (, . ' ! ? " ( ) * # : ; ~ - /), `none` keeps everything.
    """
    if lowercase:
        text = text.lower()
    if strip_punctuation == "unicode":
        text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    elif strip_punctuation == "ascii":
        text = "".join(" " if ch in ASCII_PUNCTUATION else ch for ch in text)
    return " ".join(text.split()[:max_words])


@dataclass(frozen=True)
class TextCleaning:
    """Caption-cleaning settings (a recipe's `data` block, or a model's preprocessing): call it on a text."""

    lowercase: bool = True
    strip_punctuation: str = "unicode"
    max_words: int = 30

    def __call__(self, text: str) -> str:
        return clean_caption(text, self.lowercase, self.strip_punctuation, self.max_words)

    @classmethod
    def from_config(cls, data) -> "TextCleaning":
        """The settings of a recipe's `data` block."""
        return cls(data.lowercase, data.strip_punctuation, data.max_words)
