"""Thin command modules: parse options, call the core, print."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import typer
from rich.markup import escape
from typer.core import TyperGroup

from leccr_cli.errors import LeccrError


def report_error(error: LeccrError) -> None:
    """Print a user error as one red line on stderr."""
    from leccr_cli.utils.console import err_console

    err_console.print(f"[bold red]error:[/] [red]{escape(str(error))}[/]", soft_wrap=True, highlight=False)


class LeccrGroup(TyperGroup):
    """A command group that turns `LeccrError` into one red line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LeccrError as error:
            if os.environ.get("LECCR_DEBUG", "") not in ("", "0"):
                raise
            report_error(error)
            raise typer.Exit(2) from None


def rerun_command(ctx: typer.Context) -> str:
    """The running command as the user can type it again: `leccr <command>` with its arguments and non-default options."""
    import shlex

    words = ["leccr", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words.append(str(value))
        elif value is None or value == param.default or value in ([], ()):
            continue
        elif param.is_flag:
            words.append(param.opts[0])
        elif param.multiple:
            for item in value:
                words += [param.opts[0], str(item)]
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@contextlib.contextmanager
def says_when_interrupted(message: str) -> Iterator[None]:
    """Turn Ctrl-C into one yellow line (what is kept, how to go on) from the main process, and exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        from leccr_cli.utils.console import err_console, is_main_process

        if is_main_process():
            err_console.print(f"[yellow]interrupted:[/] {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(130) from None


def make_app(help_text: str) -> typer.Typer:
    """A Typer app (or sub-app) with leccr's error handling."""
    return typer.Typer(
        cls=LeccrGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
