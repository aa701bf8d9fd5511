"""Typed errors: each one names the bad value, path or id and says what to do.

The library speaks its own terms. A message may name a parameter of the call (`Param`) or a
step of the workflow to run (`Step`); `str(error)` spells them as Python (`overwrite=True`,
`build_slots(...)`), and the command line (`leccr_cli.cli.errors`) spells the same error with
its flags and commands (`--overwrite`, `leccr build-slots ...`). Errors that describe a
situation carry its facts as fields (`SlotCacheStale.differences`, `TrainingDiverged.step`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

_UNSET = object()


class Param:
    """A parameter named in a message, with the value to show (if any).

    In Python it reads `name` or `name=value`; on the command line, the flag of the command
    that made the call, and the value (`metavar` stands for a value to fill in).
    """

    def __init__(self, name: str, value: Any = _UNSET, *, metavar: str | None = None, quote: bool = False):
        self.name = name
        self.value = value
        self.metavar = metavar
        self.quote = quote

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET

    def python(self) -> str:
        if self.metavar is not None or not self.has_value or self.value is None:
            return self.name
        value = str(self.value) if isinstance(self.value, Path) else self.value
        return f"{self.name}={value!r}"

    def __repr__(self) -> str:
        return f"Param({self.python()})"


class Given:
    """An argument of the call as the caller gave it (the command line fills in what the user typed).

    `names` are the parameters it may have been given as; `metavar` stands for it otherwise.
    """

    def __init__(self, *names: str, metavar: str):
        self.names = names
        self.metavar = metavar

    def python(self) -> str:
        return self.metavar


class Step:
    """A step of the workflow the user should run: `python` in Python, `leccr COMMAND ...` on the command line.

    `args` are positional arguments and `options` the command's parameters (by the names
    its options have in Python); values may be `Param` or `Given` placeholders.
    """

    def __init__(self, command: str, *args: Any, python: str, **options: Any):
        self.command = command
        self.args = args
        self.options = options
        self.python_text = python

    def python(self) -> str:
        return f"`{self.python_text}`"

    def __repr__(self) -> str:
        return f"Step({self.command!r})"


Part = Union[str, Param, Given, Step]
Text = Union[str, Param, Given, Step, Sequence[Part], None]


def parts(*pieces: Text) -> tuple[Part, ...]:
    """The pieces of a message as one flat tuple (nested tuples flattened, None and '' left out)."""
    flat: list[Part] = []
    for piece in pieces:
        if piece is None or piece == "":
            continue
        if isinstance(piece, (list, tuple)):
            flat.extend(parts(*piece))
        elif isinstance(piece, (str, Param, Given, Step)):
            flat.append(piece)
        else:
            flat.append(str(piece))
    return tuple(flat)


def spell(text: Text, speller: Callable[[Part], str] | None = None) -> str:
    """A message as text: strings as they are, parameters and steps as `speller` spells them (Python by default)."""
    speller = speller or python_spelling
    return "".join(piece if isinstance(piece, str) else speller(piece) for piece in parts(text))


def python_spelling(piece: Part) -> str:
    return piece if isinstance(piece, str) else piece.python()


class LeccrError(Exception):
    """A mistake the user can fix: a message naming what is wrong and a hint saying what to do.

    `message` and `hint` may hold `Param`, `Given` and `Step` pieces (see the module docstring).
    """

    def __init__(self, message: Text, hint: Text = None):
        self.message_parts = parts(message)
        self.hint_parts = parts(hint)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return spell(self.message_parts)

    @property
    def hint(self) -> str | None:
        return spell(self.hint_parts) if self.hint_parts else None

    def spelled(self, speller: Callable[[Part], str]) -> str:
        """The error as one line, its parameters and steps spelled by `speller`."""
        message = spell(self.message_parts, speller)
        return f"{message} ({spell(self.hint_parts, speller)})" if self.hint_parts else message

    def __str__(self) -> str:
        return self.spelled(python_spelling)


class RecipeError(LeccrError):
    """A recipe file or override is invalid."""


class CorpusError(LeccrError):
    """A corpus folder or its inputs are missing, malformed or inconsistent."""


class ModelError(LeccrError):
    """A model folder, id or checkpoint cannot be used."""


class RunError(LeccrError):
    """A run folder is missing, incomplete or belongs to another run."""


class EvaluationError(LeccrError):
    """A score matrix, its labels or a metrics request cannot be evaluated."""


class IndexFolderError(LeccrError):
    """An index folder is missing, unfinished, damaged or stale."""


class SearchError(LeccrError):
    """A query or a search request cannot be answered."""


class InvalidArgument(LeccrError, ValueError):
    """A parameter has a value the call cannot take: `name`, the `value` given and what was `expected`.

    The message reads `name=value: expected` unless `message` words it otherwise.
    """

    def __init__(self, name: str, value: Any, expected: Text, hint: Text = None, *, message: Text = None):
        self.name = name
        self.value = value
        self.expected_parts = parts(expected)
        self.expected = spell(expected)
        super().__init__(message if message is not None else parts(Param(name, value), ": ", expected), hint)


def at_least(name: str, value: int | None, minimum: int = 1) -> None:
    """Refuse `value` below `minimum` (None passes)."""
    if value is not None and value < minimum:
        raise InvalidArgument(name, value, f"must be at least {minimum}")


def one_of(name: str, value: Any, choices: Sequence[Any], *, quote: bool = True, what: str = "is not supported") -> Any:
    """Refuse a `value` that is not one of `choices` (the message lists them)."""
    if value not in choices:
        raise InvalidArgument(
            name, value, f"one of {', '.join(map(str, choices))}", f"use one of {', '.join(map(str, choices))}",
            message=parts(Param(name, value, quote=quote), f" {what}"),
        )  # fmt: skip
    return value


# ------------------------------------------------------------------------- situations


class FolderBusy(LeccrError):
    """Another process holds the writer lock of `folder`; `holder` says which (its command line, pid, host, start)."""

    def __init__(self, folder: Path, holder: str):
        self.folder = Path(folder)
        self.holder = holder
        super().__init__(
            f"{folder} is being written by {holder}",
            "wait for it to finish or stop it; what only reads the folder works meanwhile",
        )


class DiskFull(LeccrError):
    """The disk (or quota) filled up while writing `path`; `kept` says what is kept and how to go on."""

    def __init__(self, path: Path, free: str, kept: Text, hint: Text = "free some space first"):
        self.path = Path(path)
        self.free = free
        super().__init__(parts(f"disk full while writing {path} ({free} free there); ", kept), hint)


class UnfinishedWork(LeccrError):
    """`folder` holds resumable work made with other settings (`differing` names them)."""

    def __init__(self, folder: Path, differing: Sequence[str]):
        self.folder, self.differing = Path(folder), list(differing)
        super().__init__(
            f"{folder} holds unfinished work made with other settings ({', '.join(self.differing) or 'unreadable'} "
            f"differ)",
            parts("rerun with the same settings to finish it, or pass ", Param("overwrite", True), " to discard it"),
        )


class MissingDescriptions(CorpusError):
    """Images (or videos) of a corpus have no description in `descriptions/<source>/`."""

    def __init__(self, corpus: Path, source: str, missing: Sequence[str], modality: str = "image"):
        self.corpus, self.source, self.missing = Path(corpus), source, list(missing)
        count = len(self.missing)
        super().__init__(
            f"{count} {modality}{'s have' if count > 1 else ' has'} no description in "
            f"descriptions/{source} of {corpus} (first: {self.missing[0]})",
            parts(
                "write them with ", Step("caption", corpus, python="caption_corpus"),
                ", or bring them with ",
                Step(
                    "data import-descriptions", corpus, Param("source", metavar="SOURCE"), name=source, overwrite=True,
                    python=f"import_descriptions(corpus, SOURCE, {source!r}, overwrite=True)",
                ),
            ),
        )  # fmt: skip


class MissingTranslations(CorpusError):
    """A split has no machine-translated captions in `lang` (training pairs English captions with them)."""

    def __init__(self, corpus: Path, lang: str, split: str):
        self.corpus, self.lang, self.split = Path(corpus), lang, split
        super().__init__(
            f"corpus {corpus} has no machine-translated {lang} captions in split {split!r}",
            parts(
                "make them with ",
                Step(
                    "translate",
                    corpus,
                    targets=lang,
                    splits=split,
                    python=f"translate_corpus(corpus, [{lang!r}], engine, splits=[{split!r}])",
                ),
            ),
        )


class SlotCacheMissing(CorpusError):
    """`description_features: cache` asks for a slot cache of `split` that does not exist at `path`.

    `source` is the recipe file or run folder the model came from, for the rebuild step (None: unknown).
    """

    def __init__(self, split: str, path: Path, closest: str = "", source: Path | str | None = None):
        self.split, self.path, self.closest, self.source = split, Path(path), closest, source
        super().__init__(
            f"model.description_features is 'cache' but there is no slot cache for this description encoder "
            f"({path}){closest}",
            parts("build it with ", _build_slots_step(source, split, overwrite=False)),
        )


class SlotCacheStale(CorpusError):
    """The slot cache of `split` at `path` was built from other inputs: `differences` says which, in words.

    `rebuilding`: the error of building the cache (it exists and is kept unless overwritten),
    rather than of using it.
    """

    def __init__(
        self,
        split: str,
        path: Path,
        differences: Sequence[str],
        source: Path | str | None = None,
        *,
        rebuilding: bool = False,
    ):
        self.split, self.path, self.differences, self.source = split, Path(path), list(differences), source
        what = f"what differs: {'; '.join(self.differences)}"
        step = _build_slots_step(source, split, overwrite=True)
        if rebuilding:
            super().__init__(
                f"{path} exists and does not match this model and corpus ({what})",
                parts("pass ", Param("overwrite", True), " to rebuild it (", step, ")"),
            )
        else:
            super().__init__(
                f"slot cache {path} does not match this model and corpus ({what})", parts("rebuild it with ", step)
            )


def _build_slots_step(source: Path | str | None, split: str, overwrite: bool) -> Step:
    given = Given("recipe", "source", "run", metavar="RECIPE_OR_RUN") if source is None else source
    options = {"splits": split, **({"overwrite": True} if overwrite else {})}
    shown = "RECIPE_OR_RUN" if source is None else repr(str(source))
    python = f"build_slots({shown}, splits={split!r}{', overwrite=True' if overwrite else ''})"
    return Step("build-slots", given, python=python, **options)


def _train_step(run_dir: Path, processes: int, **options: Any) -> tuple[Part, ...]:
    """The `train` call that goes on with (or starts again) the run in `run_dir`, as the user made it."""
    call = ", ".join(["recipe", repr(str(run_dir)), *(f"{key}={value!r}" for key, value in options.items())])
    step = Step(
        "train", Given("recipe", metavar="RECIPE.yaml"), output_dir=run_dir, overrides=Given("overrides", metavar=""),
        python=f"train({call})", **options,
    )  # fmt: skip
    return parts(step, " (with the same launcher and number of processes)" if processes > 1 else "")


class TrainingDiverged(RunError):
    """The loss of training step `step` is not finite (`loss`); `terms` name the loss terms that are not.

    `last_checkpoint` is the newest checkpoint written before it (None: none yet).
    """

    def __init__(
        self, step: int, loss: float, terms: Sequence[str], last_checkpoint: Path | None, *, run_dir: Path,
        lr: float, max_grad_norm: float | None, processes: int = 1,
    ):  # fmt: skip
        self.step, self.loss, self.terms, self.last_checkpoint = step, loss, list(terms), last_checkpoint
        self.run_dir = Path(run_dir)
        what = (
            f"non-finite terms: {', '.join(self.terms)}"
            if self.terms
            else "every term is finite, their weighted sum is not"
        )
        last = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step}: the loss is {loss} ({what}); {last}",
            parts(
                f"lower optim.lr (now {lr:g}) or set optim.max_grad_norm (now {max_grad_norm}, e.g. 1.0), then start "
                f"again: ",
                _train_step(run_dir, processes, overwrite=True),
            ),
        )


class RunNotSaved(RunError):
    """Part of the run in `run_dir` could not be written (`problem`: a checkpoint, `model/`, a log; a full disk).

    `checkpoints` name the checkpoints the run keeps: the hint resumes from the newest, or
    starts again when there is none.
    """

    def __init__(self, problem: str, *, run_dir: Path, checkpoints: Sequence[str], disk_full: bool, processes: int = 1):
        self.run_dir, self.checkpoints = Path(run_dir), list(checkpoints)
        super().__init__(
            f"{problem}; {_kept(run_dir, checkpoints)}",
            parts(
                f"free some space{'' if disk_full else ' (or fix the folder)'}, then ",
                _go_on(run_dir, checkpoints, processes),
            ),
        )


def _kept(run_dir: Path, checkpoints: Sequence[str]) -> str:
    return (
        f"{run_dir} keeps {', '.join(checkpoints)} and its logs" if checkpoints else f"{run_dir} has no checkpoint yet"
    )


def _go_on(run_dir: Path, checkpoints: Sequence[str], processes: int) -> tuple[Part, ...]:
    if checkpoints:
        return parts("continue with ", _train_step(run_dir, processes, resume="latest"))
    return parts("start again with ", _train_step(run_dir, processes, overwrite=True))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training: the run folder is `removed` (nothing to resume), or its `checkpoints` remain."""

    def __init__(self, run_dir: Path, *, removed: bool, checkpoints: Sequence[str], processes: int = 1):
        super().__init__(str(run_dir))
        self.run_dir, self.removed, self.checkpoints, self.processes = (
            Path(run_dir),
            removed,
            list(checkpoints),
            processes,
        )

    def what_to_do(self) -> Text:
        """What is kept and how to go on, with the step that does it."""
        if self.removed:
            return parts(
                f"stopped before the first checkpoint: nothing to resume, so {self.run_dir} is removed; start again "
                f"with ",
                _train_step(self.run_dir, 1),
            )
        return parts(
            f"{_kept(self.run_dir, self.checkpoints)}; continue with ",
            _train_step(self.run_dir, self.processes, resume="latest"),
        )
