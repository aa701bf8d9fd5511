"""Library errors as the command line says them: one red line, exit code 2 (`LECCR_DEBUG=1` shows the traceback).

The core raises typed errors (`leccr_cli.errors`) whose messages name parameters (`Param`),
arguments as given (`Given`) and workflow steps (`Step`). Here they are spelled for the
command that ran: a parameter as that command's flag (`overwrite` -> `--overwrite`,
`k` -> `-k`), a step as the `leccr` command that does it, with its flags, and an argument as
the user typed it. Ctrl-C in a long command is one yellow line saying what is kept and how to
go on (`says_when_interrupted`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
from typing import Any, Iterator

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from leccr_cli.errors import FolderBusy, Given, LeccrError, Param, Part, Step, spell


class CommandLine:
    """How the command running in `ctx` spells the pieces of a message."""

    def __init__(self, ctx: typer.Context | None):
        self.ctx = ctx

    def __call__(self, piece: Part) -> str:
        if isinstance(piece, Param):
            return self.param(piece)
        if isinstance(piece, Given):
            given = self.given(piece)
            return piece.metavar if given is None else " ".join(map(str, given if isinstance(given, list) else [given]))
        if isinstance(piece, Step):
            return self.step(piece)
        return piece

    # -- parameters
    def param(self, piece: Param, command=None) -> str:
        found = _option(command or (self.ctx.command if self.ctx else None), piece.name)
        if found is None:
            return piece.python()
        parameter, flag = found
        if parameter.param_type_name == "argument":
            if piece.has_value and piece.value is not None:
                return str(piece.value)
            return piece.metavar or getattr(parameter, "metavar", None) or parameter.name.upper()
        words = [flag]
        if piece.metavar is not None:
            words.append(piece.metavar)
        elif piece.has_value and piece.value is not None and piece.value is not True:
            words.append(repr(piece.value) if piece.quote else str(piece.value))
        return " ".join(words)

    def given(self, piece: Given) -> Any:
        """What the user gave for one of `piece.names` (None when nothing)."""
        params = self.ctx.params if self.ctx else {}
        for name in piece.names:
            value = params.get(name)
            if value is not None and value != [] and value != ():
                return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
        return None

    # -- steps
    def step(self, piece: Step) -> str:
        target = self._command(piece.command)
        words = ["leccr", *piece.command.split()]
        for arg in piece.args:
            words.append(self._value(arg))
        for name, value in piece.options.items():
            if isinstance(value, Given):
                value = self.given(value)
            if value is None or value is False:
                continue
            found = _option(target, name)
            flag = found[1] if found is not None else "--" + name.replace("_", "-")
            if value is True:
                words.append(flag)
            elif isinstance(value, list):
                for item in value:
                    words += [flag, str(item)]
            else:
                words += [flag, self._value(value)]
        return "`" + " ".join(shlex.quote(word) for word in words) + "`"

    def _value(self, value: Any) -> str:
        if isinstance(value, Given):
            given = self.given(value)
            return value.metavar if given is None else " ".join(given) if isinstance(given, list) else given
        if isinstance(value, Param):
            return value.metavar or value.python()
        return str(value)

    def _command(self, path: str):
        """The command at `path` (e.g. `data import-images`) of the running app, or None."""
        if self.ctx is None:
            return None
        command = self.ctx.find_root().command
        for name in path.split():
            command = getattr(command, "commands", {}).get(name)
            if command is None:
                return None
        return command


def _option(command, name: str) -> tuple | None:
    """The parameter of `command` called `name` (or whose flag is `--name`), and the flag that names it."""
    if command is None:
        return None
    for parameter in command.params:
        if parameter.name == name:
            return parameter, parameter.opts[0]
    spelled = "--" + name.replace("_", "-")
    for parameter in command.params:
        if spelled in getattr(parameter, "opts", ()):
            return parameter, spelled
    return None


# hints the command line words otherwise than the library
_HINTS = {
    FolderBusy: "wait for it to finish or stop it; commands that only read it (train, evaluate, data info) work "
        "meanwhile",
}


def error_line(error: LeccrError, ctx: typer.Context | None) -> str:
    """The error as the command in `ctx` says it: flags, commands and the arguments as typed."""
    spelling = CommandLine(ctx)
    message = spell(error.message_parts, spelling)
    hint = _HINTS.get(type(error))
    if hint is None and error.hint_parts:
        hint = spell(error.hint_parts, spelling)
    return f"{message} ({hint})" if hint else message


def report_error(error: LeccrError, ctx: typer.Context | None = None) -> None:
    """Print a user error as one red line on stderr."""
    from leccr_cli.cli.report import err_console

    err_console.print(f"[bold red]error:[/] [red]{escape(error_line(error, ctx))}[/]", soft_wrap=True, highlight=False)


def _reporting(invoke, ctx: typer.Context):
    """Run `invoke(ctx)`; a `LeccrError` becomes one red line (spelled for `ctx`) and exit code 2 unless LECCR_DEBUG."""
    try:
        return invoke(ctx)
    except LeccrError as error:
        if os.environ.get("LECCR_DEBUG", "") not in ("", "0"):
            raise
        report_error(error, ctx)
        raise typer.Exit(2) from None


class LeccrCommand(TyperCommand):
    """A command that turns a `LeccrError` into one red line (spelled for this command) and exit code 2."""

    def invoke(self, ctx: typer.Context):
        return _reporting(super().invoke, ctx)


class LeccrGroup(TyperGroup):
    """A command group that reports a `LeccrError` raised outside a command (e.g. while parsing) like a command does."""

    def invoke(self, ctx: typer.Context):
        return _reporting(super().invoke, ctx)


class LeccrTyper(typer.Typer):
    """A Typer app whose commands report errors with `LeccrCommand`; a command's help is its docstring with the
    lines of each paragraph joined (they are wrapped in the source only)."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", LeccrCommand)

        def register(function):
            if "help" not in kwargs and function.__doc__:
                paragraphs = inspect.cleandoc(function.__doc__).split("\n\n")
                kwargs["help"] = "\n\n".join(" ".join(paragraph.split("\n")) for paragraph in paragraphs)
            return typer.Typer.command(self, *args, **kwargs)(function)

        return register


def make_app(help_text: str) -> typer.Typer:
    """A Typer app (or sub-app) with leccr's error handling."""
    return LeccrTyper(
        cls=LeccrGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )


def rerun_command(ctx: typer.Context) -> str:
    """The running command as the user can type it again: `leccr <command>`, its arguments and non-default options."""
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
        from leccr_cli.cli.report import err_console, is_main_process

        if is_main_process():
            err_console.print(f"[yellow]interrupted:[/] {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(130) from None
