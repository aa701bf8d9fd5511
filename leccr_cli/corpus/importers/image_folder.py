"""A corpus from any folder tree of images (`leccr data import-images`): a gallery to index and search.

Every `.jpg`, `.jpeg`, `.png` and `.webp` file under the folder (hidden files and folders
left out) becomes one image of one split (default `gallery`). Its id is its path relative to
the folder without the suffix (`beach/dog.jpg` -> `beach/dog`); when two files differ only
in their suffix, both keep it. The images stay where they are: the corpus's media root is
the folder. No captions are needed; descriptions come from `leccr caption` (or
`leccr data import-descriptions`).

Every file is opened and decoded once: an unreadable one stops the import naming it
(`on_error="stop"`), or is listed and left out (`"skip"`). Importing the same folder into
the same corpus again adds the files that are new since (and leaves what it holds alone),
so a gallery grows as photos arrive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from rich.console import Console

from leccr_cli.corpus.corpus import Corpus, ImageRow, write_corpus
from leccr_cli.defaults import IMAGE_FOLDER_SPLIT, ON_ERROR, OnError
from leccr_cli.errors import CorpusError, InvalidArgument, Param, one_of, parts
from leccr_cli.utils.console import progress
from leccr_cli.utils.fs import is_empty_folder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _choose_another() -> tuple:
    return parts("choose another ", Param("out"), ", or pass ", Param("overwrite", True), " to replace it")


@dataclass
class ImageFolderImport:
    """What `import_images` did."""

    corpus: Corpus
    added: int  # images listed by this run
    already: int  # images of the folder the corpus listed before
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason) of unreadable files
    vanished: list[str] = field(default_factory=list)  # ids the corpus lists whose file is gone (kept)


def find_images(folder: Path) -> list[str]:
    """Relative POSIX paths of the image files under `folder`, sorted; hidden files and folders are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(root).relative_to(folder)
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((base / name).as_posix())
    return sorted(found)


def image_ids(paths: list[str]) -> dict[str, str]:
    """id -> relative path: the path without its suffix, or with it where two files would share an id."""
    stems: dict[str, list[str]] = {}
    for path in paths:
        stems.setdefault(path.rsplit(".", 1)[0], []).append(path)
    ids = {}
    for stem, group in stems.items():
        for path in group:
            ids[stem if len(group) == 1 else path] = path
    return dict(sorted(ids.items(), key=lambda item: item[1]))


def unreadable_reason(path: Path) -> str | None:
    """Why the image at `path` cannot be decoded, or None when it can."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (512, 512))  # JPEGs decode at a reduced scale: the whole stream is still read
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def _check_places(folder: Path, out: Path) -> None:
    if not folder.is_dir():
        raise CorpusError(f"{folder}: no such folder", "give the folder that holds the images")
    source, target = folder.resolve(), out.resolve()
    if target == source or source in target.parents:
        raise CorpusError(f"{out} is inside the image folder {folder}", "write the corpus outside the folder it lists")


def _existing_corpus(folder: Path, out: Path, overwrite: bool) -> Corpus | None:
    """The corpus in `out` an earlier import of `folder` wrote (a rerun extends it), or None to write a new one."""
    if overwrite or not out.exists() or (out.is_dir() and is_empty_folder(out)):
        return None
    if not (out / "corpus.json").is_file():
        raise CorpusError(f"{out} exists and is not a corpus", _choose_another())
    corpus = Corpus.open(out)
    if corpus.media_root.resolve() != folder.resolve():
        raise CorpusError(
            f"{out} is a corpus of {corpus.media_root}, not of {folder}",
            _choose_another(),
        )
    return corpus


def import_images(
    folder: str | Path,
    out: str | Path,
    *,
    split: str = IMAGE_FOLDER_SPLIT,
    on_error: OnError = "stop",
    overwrite: bool = False,
    name: str | None = None,
    console: Console | None = None,
) -> ImageFolderImport:
    """List every image under `folder` as split `split` of the corpus `out` (made, or extended on a rerun).

    Unreadable files stop the import (`on_error="stop"`) or are skipped and returned (`"skip"`).
    `overwrite` replaces whatever `out` holds with a new corpus. Progress goes to `console`.
    """
    folder, out = Path(folder), Path(out)
    one_of("on_error", on_error, ON_ERROR)
    if not split or not split.strip() or split != split.strip():
        raise InvalidArgument(
            "split",
            split,
            "is not a split name",
            f"e.g. {IMAGE_FOLDER_SPLIT}",
            message=parts(Param("split", split, quote=True), " is not a split name"),
        )
    _check_places(folder, out)
    existing = _existing_corpus(folder, out, overwrite)
    if existing is None:
        return _import(folder, out, None, split, on_error, overwrite, name, console)
    with existing.writing():  # one writer at a time; the corpus is read again under the lock
        return _import(folder, out, _existing_corpus(folder, out, overwrite), split, on_error, overwrite, name, console)


def _import(
    folder: Path,
    out: Path,
    existing: Corpus | None,
    split: str,
    on_error: str,
    overwrite: bool,
    name: str | None,
    console,
) -> ImageFolderImport:
    listed = {row.image_id: row.path for row in existing.images(split)} if existing and split in existing.splits else {}
    found = image_ids(find_images(folder))
    if not found and not listed:
        raise CorpusError(
            f"{folder} holds no images",
            f"leccr reads {', '.join(IMAGE_SUFFIXES)} files in the folder and its subfolders",
        )
    new = {image_id: path for image_id, path in found.items() if image_id not in listed}
    rows, skipped = [], []
    bar = progress(console, transient=True)
    with bar:
        task = bar.add_task("reading images", total=len(new))
        for image_id, path in new.items():
            reason = unreadable_reason(folder / path)
            bar.advance(task)
            if reason is None:
                rows.append(ImageRow(image_id, split, path))
            elif on_error == "skip":
                skipped.append((path, reason))
            else:
                raise CorpusError(
                    f"image {folder / path} cannot be read ({reason})",
                    parts("fix or remove the file, or pass ", Param("on_error", "skip"), " to leave it out"),
                )
    if not rows and not listed:
        raise CorpusError(
            f"none of the {len(found)} images in {folder} can be read", f"first: {skipped[0][0]} ({skipped[0][1]})"
        )
    vanished = [image_id for image_id, path in listed.items() if not (folder / path).is_file()]
    if existing is None:
        corpus = write_corpus(
            out,
            name=name or folder.resolve().name,
            modality="image",
            media_root=str(folder.resolve()),
            images=rows,
            captions=[],
            overwrite=overwrite,
        )
    else:
        if rows:
            existing.add_images(rows)
        corpus = existing
    return ImageFolderImport(corpus, len(rows), len(listed), skipped, vanished)
