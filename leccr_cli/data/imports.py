"""Helpers shared by the importers."""

from __future__ import annotations

from pathlib import Path

from leccr_cli.errors import CorpusError


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped of surrounding whitespace."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path}: cannot be read ({error})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


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
