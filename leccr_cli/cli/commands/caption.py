"""`leccr caption`: detailed descriptions of every image from a multimodal LLM."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import Device, Dtype, Overwrite, Splits
from leccr_cli.defaults import CAPTION_BATCH_SIZE, CAPTION_FRAMES, MAX_NEW_TOKENS, MLLMS


def caption_command(
    ctx: typer.Context,
    corpus_path: Path = typer.Argument(..., metavar="CORPUS", help="Corpus folder."),
    mllm: str = typer.Option(
        MLLMS[0], "--mllm", help="Backend: llava, llava-next or auto (any image-text-to-text model)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Hub id or local folder (default for llava: llava-hf/llava-1.5-7b-hf; auto needs one)."
    ),
    source: str | None = typer.Option(
        None,
        "--name",
        help="Write descriptions/NAME/ (default: the --mllm name); recipes name it in data.descriptions.",
    ),
    splits: Splits = "all",
    prompt: str | None = typer.Option(
        None, "--prompt", help="Instruction given with each image (default: a detailed, factual description)."
    ),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="Read the prompt from this text file."),
    batch_size: int = typer.Option(CAPTION_BATCH_SIZE, "--batch-size", help="Images per generate call (per process)."),
    max_new_tokens: int = typer.Option(MAX_NEW_TOKENS, "--max-new-tokens", help="Longest description, in tokens."),
    frames: int | None = typer.Option(
        None, "--frames", help=f"Video corpora: frames sampled evenly per video (default {CAPTION_FRAMES})."
    ),
    dtype: Dtype = "auto",
    device: Device = None,
    limit: int | None = typer.Option(
        None, "--limit", help="Describe at most N of the images still lacking a description."
    ),
    on_error: str = typer.Option(
        "stop", "--on-error", help="An unreadable image: stop (default) or skip it and list it at the end."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Describe every image (or sampled video frames) with a multimodal LLM into descriptions/NAME/.

    Resumable: rerun the same command after an interruption and it finishes the rest; unfinished work made with other
    settings is refused unless --overwrite, which also describes every selected image again.
    Several GPUs: `accelerate launch -m leccr_cli caption ...` (or torchrun) splits the images.
    """
    from rich.markup import escape

    from leccr_cli.cli.errors import rerun_command, says_when_interrupted
    from leccr_cli.cli.report import console, err_console, is_main_process
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.errors import LeccrError
    from leccr_cli.prep.describe import caption_corpus, open_describer

    corpus = Corpus.open(corpus_path)
    if prompt is not None and prompt_file is not None:
        raise LeccrError("--prompt and --prompt-file both given", "use one of them")
    if prompt_file is not None:
        if prompt_file.is_dir():
            raise LeccrError(f"--prompt-file {prompt_file} is a folder", "give a UTF-8 text file holding the prompt")
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise LeccrError(f"--prompt-file {prompt_file}: cannot read it ({error})") from None
    chosen = corpus.resolve_splits(splits)
    describer = open_describer(mllm, model, device=device, dtype=dtype, max_new_tokens=max_new_tokens)
    source = source or mllm
    kept = (f"finished batches are kept in {corpus.path / 'descriptions'}; rerun the same command to describe the "
        f"rest: "
        f"`{rerun_command(ctx)}`")
    with says_when_interrupted(kept):
        report = caption_corpus(
            corpus,
            describer,
            source=source,
            splits=chosen,
            prompt=prompt,
            frames=frames,
            batch_size=batch_size,
            limit=limit,
            overwrite=overwrite,
            on_error=on_error,
            console=err_console,
        )
    if not is_main_process():
        return
    if report.described:
        console.print(
            f"[green]Wrote[/] {report.path}: {report.rows} descriptions "
            f"({report.described} new, {report.already} already there; {report.selected} images in "
            f"{', '.join(chosen)}) "
            f"by {escape(describer.model_id)}"
        )
    elif report.failed:
        console.print(f"[yellow]Wrote nothing[/]: none of the {len(report.failed)} images to describe could be read")
    else:
        console.print(
            f"Nothing to do: {report.path} already describes all {report.selected} images in {', '.join(chosen)} "
            "(pass --overwrite to describe them again)"
        )
    if report.failed:
        count = len(report.failed)
        err_console.print(
            f"[yellow]warning:[/] skipped {count} unreadable image{'s' if count > 1 else ''} (rerun to retry):"
        )
        for failure in report.failed:
            err_console.print(
                f"  {escape(failure.image_id)}  {escape(failure.path)}  ({escape(failure.reason)})", highlight=False
            )
    left = report.missing - len(report.failed)
    if left > 0:
        console.print(f"{left} images still lack a description (--limit); rerun to describe them")
