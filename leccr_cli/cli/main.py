"""The `leccr` command line: registers every command; nothing heavy is imported here."""

from __future__ import annotations

import typer

from leccr_cli import __version__
from leccr_cli.cli.errors import make_app
from leccr_cli.cli.commands.app import app_command
from leccr_cli.cli.commands.caption import caption_command
from leccr_cli.cli.commands.data import app as data_app
from leccr_cli.cli.commands.evaluate import evaluate_command
from leccr_cli.cli.commands.index import index_command
from leccr_cli.cli.commands.search import search_command
from leccr_cli.cli.commands.slots import build_slots_command
from leccr_cli.cli.commands.train import train_command
from leccr_cli.cli.commands.translate import translate_command

app = make_app(
    "Cross-lingual cross-modal retrieval (LECCR): describe images with a multimodal LLM, "
    "translate captions, train, evaluate, index and search."
)
app.add_typer(data_app, name="data")
app.command("caption")(caption_command)
app.command("translate")(translate_command)
app.command("build-slots")(build_slots_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("index")(index_command)
app.command("search")(search_command)
app.command("app")(app_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"leccr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Cross-lingual cross-modal retrieval (LECCR)."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`leccr`)."""
    app(args=argv, prog_name="leccr")
