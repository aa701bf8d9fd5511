"""`leccr data ...`: build, import and inspect corpora."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.errors import make_app
from leccr_cli.defaults import (
    IMAGE_FOLDER_SPLIT,
    IMPORTED,
    SYNTH_FRAME_DIM,
    SYNTH_FRAMES,
    SYNTH_IMAGE_SIZE,
    SYNTH_IMAGES,
    SYNTH_LANGS,
    SYNTH_NOISE,
)

app = make_app("Build, import and inspect corpora (folders of images, captions, descriptions and caches).")

OVERWRITE = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty.")
ALLOW_MISSING = typer.Option(
    False, "--allow-missing-images", help="Import even if listed images are missing on disk (text-only work)."
)


@app.command("synth")
def synth_command(
    out: Path = typer.Argument(..., help="Folder to create."),
    video: bool = typer.Option(
        False, "--video", help="Build the video benchmark: frame features instead of rendered images."
    ),
    images: int = typer.Option(
        SYNTH_IMAGES,
        "--images",
        "--videos",
        help="Number of images, or videos with --video (val and test get 12.5% each).",
    ),
    langs: str = typer.Option(
        ",".join(SYNTH_LANGS), "--langs", help=f"Target languages, comma-separated ({', '.join(SYNTH_LANGS)})."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same corpus."),
    image_size: int | None = typer.Option(
        None, "--image-size", help=f"Rendered image side in pixels (default: {SYNTH_IMAGE_SIZE})."
    ),
    frames: int | None = typer.Option(
        None,
        "--frames",
        help=f"With --video: the most frames per video; each has between half of it and it (default: {SYNTH_FRAMES}).",
    ),
    frame_dim: int | None = typer.Option(
        None, "--frame-dim", help=f"With --video: the width of a frame feature (default: {SYNTH_FRAME_DIM})."
    ),
    noise: float | None = typer.Option(
        None,
        "--noise",
        help=f"With --video: the norm of the Gaussian noise added to each frame feature (default: {SYNTH_NOISE}).",
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """Generate the embedded synthetic benchmark (rendered shapes or video frame features, partial captions,
    descriptions)."""
    from leccr_cli.cli.report import console, err_console
    from leccr_cli.errors import LeccrError
    from leccr_cli.utils.languages import parse_language_list

    codes = parse_language_list(langs)
    if video:
        if image_size is not None:
            raise LeccrError(
                "--image-size is for the image benchmark", "leave it out with --video; frame features have --frame-dim"
            )
        from leccr_cli.corpus.synthetic.video import build_synthetic_video

        options = {"frames": frames, "frame_dim": frame_dim, "noise": noise}
        with err_console.status(f"Building the synthetic video corpus in {out} ..."):
            report = build_synthetic_video(
                out,
                videos=images,
                langs=codes,
                seed=seed,
                overwrite=overwrite,
                **{k: v for k, v in options.items() if v is not None},
            )
        unit, content = "videos", "video"
    else:
        given = [
            name
            for name, value in (("--frames", frames), ("--frame-dim", frame_dim), ("--noise", noise))
            if value is not None
        ]
        if given:
            raise LeccrError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the video benchmark",
                "add --video, or leave them out",
            )
        from leccr_cli.corpus.synthetic.image import build_synthetic

        with err_console.status(f"Building the synthetic corpus in {out} ..."):
            size = SYNTH_IMAGE_SIZE if image_size is None else image_size
            report = build_synthetic(out, images=images, langs=codes, seed=seed, image_size=size, overwrite=overwrite)
        unit, content = "images", "scene"
    split_text = ", ".join(f"{split} {n}" for split, n in report.images.items())
    console.print(
        f"[green]Wrote[/] {report.path}: {split_text} {unit}, {report.captions} captions "
        f"({', '.join(report.languages)})"
    )
    for split, share in report.ceiling.items():
        console.print(
            f"R@1 ceiling on {split}: {share:.1f}% of captions are consistent with their own {content} only "
            f"(the others fit several {content}s equally well)"
        )


@app.command("import-multi30k")
def import_multi30k_command(
    out: Path = typer.Argument(..., help="Folder to create."),
    text_dir: Path = typer.Option(..., "--text", help="Multi30K data folder (holds task1/ and task2/)."),
    images_dir: Path = typer.Option(..., "--images", help="Flickr30K image folder."),
    task2: bool = typer.Option(True, "--task2/--no-task2", help="Also import task2's five-caption splits."),
    flickr30k_captions: Path | None = typer.Option(
        None,
        "--flickr30k-captions",
        help="Flickr30K caption file (results_20130124.token or results.csv): train on the five English "
        "captions of every training image, as the reference does, instead of task1's one.",
    ),
    allow_missing_images: bool = ALLOW_MISSING,
    overwrite: bool = OVERWRITE,
) -> None:
    """Build a corpus from the public Multi30K text and a Flickr30K image folder."""
    from leccr_cli.cli.report import err_console
    from leccr_cli.corpus.importers.multi30k import import_multi30k

    with err_console.status("Importing Multi30K ..."):
        report = import_multi30k(
            text_dir,
            images_dir,
            out,
            task2=task2,
            flickr30k_captions=flickr30k_captions,
            allow_missing_images=allow_missing_images,
            overwrite=overwrite,
        )
    _report_import(report)


@app.command("import-nrccr")
def import_nrccr_command(
    root: Path = typer.Argument(..., help="Collection folder with TextData/ (and FeatureData/ or img_id/)."),
    out: Path = typer.Argument(..., help="Folder to create."),
    images_dir: Path | None = typer.Option(
        None, "--images", help="Image folder (image corpora); files are <image_id>.jpg unless image_ids.txt maps them."
    ),
    modality: str = typer.Option("image", "--modality", help="image or video."),
    video_feature: str | None = typer.Option(
        None, "--video-feature", help="FeatureData/<NAME> BigFile of frame features to convert (video corpora)."
    ),
    name: str | None = typer.Option(None, "--name", help="Corpus name (default: the folder name)."),
    allow_missing_images: bool = ALLOW_MISSING,
    overwrite: bool = OVERWRITE,
) -> None:
    """Convert the NRCCR/LECCR layout (TextData/*.caption.txt, id lists) into a corpus."""
    from leccr_cli.cli.report import err_console
    from leccr_cli.defaults import MODALITIES
    from leccr_cli.corpus.importers.nrccr import import_nrccr
    from leccr_cli.errors import LeccrError

    if modality not in MODALITIES:
        raise LeccrError(f"--modality {modality!r} is not supported", f"use one of {', '.join(MODALITIES)}")
    with err_console.status("Importing the NRCCR layout ..."):
        report = import_nrccr(
            root,
            out,
            images_dir=images_dir,
            name=name,
            modality=modality,
            video_feature=video_feature,
            allow_missing_images=allow_missing_images,
            overwrite=overwrite,
        )
    _report_import(report)


def _report_import(report) -> None:
    from rich.markup import escape

    from leccr_cli.cli.report import console, err_console

    corpus = report.corpus
    counts = {split: len(corpus.image_ids(split)) for split in corpus.splits}
    console.print(
        f"[green]Wrote[/] {escape(str(corpus.path))}: "
        + ", ".join(f"{split} {n}" for split, n in counts.items())
        + f" images; languages {', '.join(corpus.languages)}; {len(corpus.captions())} captions"
    )
    for split in corpus.splits:
        for lang in corpus.gallery_languages(split):
            console.print(f"{split} {lang}: own gallery of {len(corpus.gallery(split, lang))} images")
    for note in report.notes:
        console.print(escape(note), soft_wrap=True)
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if report.missing_images:
        err_console.print(
            f"[yellow]warning:[/] {report.missing_images} listed images are missing on disk (--allow-missing-images)"
        )


@app.command("import-descriptions")
def import_descriptions_command(
    corpus_path: Path = typer.Argument(..., metavar="CORPUS", help="Corpus folder."),
    source: Path = typer.Argument(
        ...,
        metavar="SOURCE",
        help='A folder of <id>.txt files, a .jsonl file ({"id": ..., "text": ...} per line), a .tsv file (id<TAB>text '
            'per line), '
        "or another corpus's descriptions/NAME folder.",
    ),
    name: str = typer.Option(..., "--name", help="Write descriptions/NAME/ (recipes name it in data.descriptions)."),
    model: str = typer.Option(IMPORTED, "--model", help="Recorded as the model that wrote the descriptions."),
    prompt: str = typer.Option(IMPORTED, "--prompt", help="Recorded as the prompt the descriptions answer."),
    strict: bool = typer.Option(False, "--strict", help="Refuse ids the corpus lacks instead of ignoring them."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace descriptions/NAME if it exists."),
) -> None:
    """Import descriptions written elsewhere (one per image or video id) as a description source."""
    from rich.markup import escape

    from leccr_cli.cli.report import console, err_console
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.corpus.importers.descriptions import import_descriptions
    from leccr_cli.utils.text import first_few

    corpus = Corpus.open(corpus_path)
    report = import_descriptions(corpus, source, name, model=model, prompt=prompt, strict=strict, overwrite=overwrite)
    console.print(
        f"[green]Wrote[/] {escape(str(report.folder))}: {report.written} of {report.images} {corpus.modality}s "
        f"described"
    )
    if report.unknown:
        err_console.print(
            f"[yellow]warning:[/] ignored {len(report.unknown)} id{'s' if len(report.unknown) > 1 else ''} that "
            f"{escape(str(corpus.path))} lacks "
            f"(first: {escape(first_few(report.unknown))}); --strict refuses them",
            soft_wrap=True,
        )
    if report.missing:
        err_console.print(
            f"[yellow]warning:[/] {len(report.missing)} "
            f"{corpus.modality}{'s have' if len(report.missing) > 1 else ' has'} "
            "no description "
            f"(first: {escape(first_few(report.missing))}); training with descriptions {name!r} refuses them until "
            f"they are written",
            soft_wrap=True,
        )


@app.command("import-images")
def import_images_command(
    folder: Path = typer.Argument(
        ..., metavar="DIR", help="Folder of images (jpg, jpeg, png, webp), subfolders included."
    ),
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Corpus folder to create, or to extend when it lists DIR already."
    ),
    split: str = typer.Option(IMAGE_FOLDER_SPLIT, "--split", help="Split the images are listed in."),
    on_error: str = typer.Option(
        "stop", "--on-error", help="An unreadable file: stop (default) or skip it and list it at the end."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT with a new corpus of DIR."),
) -> None:
    """A corpus from any folder of images (no captions needed), to describe, index and search.

    Ids are paths relative to DIR without the suffix (beach/dog.jpg -> beach/dog); the images stay in DIR. Rerun it
    when DIR gains images: the new ones are added, the corpus keeps what it holds.
    """
    from rich.markup import escape

    from leccr_cli.cli.report import console, err_console
    from leccr_cli.corpus.importers.image_folder import import_images

    report = import_images(folder, out, split=split, on_error=on_error, overwrite=overwrite, console=err_console)
    corpus = report.corpus
    total = len(corpus.image_ids(split))
    console.print(
        f"[green]Wrote[/] {escape(str(corpus.path))}: {total} images in split {escape(split)} "
        f"({report.added} new, {report.already} already listed); media root {escape(str(corpus.media_root))}"
    )
    console.print(
        f"Next: describe them with `leccr caption {escape(str(corpus.path))}`, then `leccr index RUN "
        f"{escape(str(corpus.path))} --out INDEX`"
    )
    if report.skipped:
        count = len(report.skipped)
        err_console.print(f"[yellow]warning:[/] skipped {count} unreadable file{'s' if count > 1 else ''}:")
        for path, reason in report.skipped:
            err_console.print(f"  {escape(path)}  ({escape(reason)})", highlight=False)
    if report.vanished:
        from leccr_cli.utils.text import first_few

        err_console.print(
            f"[yellow]warning:[/] {len(report.vanished)} listed images are no longer in {escape(str(folder))} "
            f"(first: {escape(first_few(report.vanished))}); the corpus keeps them",
            soft_wrap=True,
        )


@app.command("info")
def info_command(corpus_path: Path = typer.Argument(..., metavar="CORPUS", help="Corpus folder.")) -> None:
    """Show images, captions per split x language x origin, descriptions and caches."""
    from rich.table import Table

    from leccr_cli.cli.report import console
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.defaults import ORIGINS

    corpus = Corpus.open(corpus_path)
    meta = corpus.meta
    console.print(
        f"[bold]{meta.name}[/] ({meta.modality}) at {corpus.path}; media root {corpus.media_root}; "
        f"languages {', '.join(meta.languages)}"
    )
    counts = corpus.caption_counts()
    table = Table(title="Captions (gallery: the images a language's captions are ranked against)")
    for column in ("split", "images", "lang", "gallery", *ORIGINS):
        table.add_column(column, justify="left" if column in ("split", "lang") else "right")
    for split in meta.splits:
        own = corpus.gallery_languages(split)
        langs = [lang for lang in meta.languages if lang in own or any(counts.get((split, lang, o)) for o in ORIGINS)]
        for i, lang in enumerate(langs or ["-"]):
            numbers = [counts.get((split, lang, origin), 0) for origin in ORIGINS]
            gallery = "-" if lang == "-" else str(len(corpus.gallery(split, lang))) + (" own" if lang in own else "")
            table.add_row(
                split if i == 0 else "",
                str(len(corpus.image_ids(split))) if i == 0 else "",
                lang,
                gallery,
                *(str(n) if n else "-" for n in numbers),
                end_section=i == len(langs or ["-"]) - 1,
            )
    console.print(table)
    if any(corpus.has_language_galleries(split) for split in meta.splits):
        console.print(
            "'own': the language has its own image list in that split; the others rank against the whole split"
        )

    sources = corpus.description_sources()
    if sources:
        described = Table(title="Descriptions (images described / images in split)")
        described.add_column("source")
        for split in meta.splits:
            described.add_column(split, justify="right")
        for source in sources:
            have = set(corpus.descriptions(source))
            cells = []
            for split in meta.splits:
                ids = corpus.image_ids(split)
                cells.append(f"{sum(i in have for i in ids)} / {len(ids)}")
            described.add_row(source, *cells)
        console.print(described)
    else:
        console.print("Descriptions: none yet (write them with `leccr caption`)")
    caches = corpus.slot_caches()
    console.print("Slot caches: " + (", ".join(f"{enc}/{split}" for enc, split in caches) if caches else "none"))
    videos = corpus.video_feature_sets()
    if meta.modality == "video" or videos:
        from leccr_cli.corpus.video import FrameFeatures

        described_sets = []
        for name in videos:
            features = FrameFeatures(corpus.path / "video" / f"{name}.safetensors")
            lengths = features.lengths()
            described_sets.append(
                f"{name} ({len(lengths)} videos, {min(lengths)}-{max(lengths)} frames of {features.dim} values)"
            )
        console.print("Frame features: " + ("; ".join(described_sets) if described_sets else "none"))
