"""Library errors speak the library's terms; the command line words them with its flags and commands."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from leccr_cli.errors import (
    InvalidArgument,
    MissingDescriptions,
    Param,
    SlotCacheStale,
    Step,
    TrainingDiverged,
    TrainingInterrupted,
    parts,
)
from leccr_cli.testing import command_line_error

PACKAGE = Path(__file__).resolve().parents[2] / "leccr_cli"
FLAG = re.compile(r"(?<![\w-])--(?!nproc_per_node)[a-z]")  # torchrun's flag is the launcher's, not leccr's
COMMAND = re.compile(r"`leccr\b")


def _message_strings(tree: ast.AST):
    """The string constants an error message can be made of: in `raise` statements, error constructors and errors.py."""
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("Step", "Param", "Given")
        ):
            names.add(id(node.args[0]) if node.args else None)  # a step's command, a parameter's name: not text
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.Call)):
            called = getattr(getattr(node, "func", None), "id", "") or getattr(getattr(node, "func", None), "attr", "")
            if isinstance(node, ast.Call) and not (
                called.endswith(("Error", "Stale", "Missing")) or called in ("parts", "__init__")
            ):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str) and id(inner) not in names:
                    yield inner


def test_the_core_names_no_flag_and_spells_no_command():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "cli" or relative.name in ("testing.py", "__main__.py"):
            continue
        for constant in _message_strings(ast.parse(path.read_text(encoding="utf-8"))):
            if FLAG.search(constant.value) or COMMAND.search(constant.value):
                found.append(f"{relative}:{constant.lineno}: {constant.value!r}")
    assert not found, "core messages that name a flag or spell a command:\n" + "\n".join(found)


def test_a_parameter_reads_as_python_or_as_the_command_s_flag():
    error = InvalidArgument("k", 0, "must be at least 1")
    assert str(error) == "k=0: must be at least 1" and (error.name, error.value) == ("k", 0)
    assert command_line_error(error, "search") == "-k 0: must be at least 1"
    overwrite = InvalidArgument("on_error", "x", "stop or skip", parts("or pass ", Param("overwrite", True)))
    assert str(overwrite).endswith("(or pass overwrite=True)")
    assert command_line_error(overwrite, "data import-images").endswith("(or pass --overwrite)")


def test_a_step_reads_as_its_function_or_as_the_leccr_command(tmp_path):
    error = MissingDescriptions(tmp_path / "c", "llava", ["a", "b"], "image")
    assert "`caption_corpus`" in str(error) and "`import_descriptions(corpus, SOURCE, 'llava', overwrite=True)`" in str(
        error
    )
    line = command_line_error(error, "train")
    assert f"`leccr caption {tmp_path / 'c'}`" in line
    assert f"`leccr data import-descriptions {tmp_path / 'c'} SOURCE --name llava --overwrite`" in line
    step = parts("see ", Step("translate", tmp_path, targets="de", splits="train", python="translate_corpus"))
    assert command_line_error(InvalidArgument("x", 1, step), "train").endswith(
        f"`leccr translate {tmp_path} --to de --split train`"
    )


def test_typed_errors_carry_their_facts(tmp_path):
    stale = SlotCacheStale("val", tmp_path / "val.safetensors", ["the tokenizer's vocabulary"], tmp_path / "run")
    assert (stale.split, stale.differences) == ("val", ["the tokenizer's vocabulary"])
    assert f"`leccr build-slots {tmp_path / 'run'} --split val --overwrite`" in command_line_error(stale, "evaluate")
    diverged = TrainingDiverged(7, float("nan"), ["itc_vs"], None, run_dir=tmp_path, lr=1e-3, max_grad_norm=None)
    assert (diverged.step, diverged.terms, diverged.last_checkpoint) == (7, ["itc_vs"], None)
    # the command line fills in the recipe and overrides the user typed
    line = command_line_error(diverged, "train", recipe="r.yaml", overrides=["seed=1"])
    assert line.endswith(f"start again: `leccr train r.yaml --output {tmp_path} --set seed=1 --overwrite`)")
    assert isinstance(TrainingInterrupted(tmp_path, removed=True, checkpoints=[]), KeyboardInterrupt)


def test_select_device_joins_no_process_group():
    from accelerate.state import PartialState

    from leccr_cli.utils.devices import select_device

    before = dict(PartialState._shared_state)
    assert select_device().type in ("cpu", "cuda") and select_device("cpu").type == "cpu"
    assert PartialState._shared_state == before


@pytest.mark.parametrize(
    "value, message", [("xpu:0", "--device 'xpu:0' is not supported"), ("nonsense", "is not a device")]
)
def test_device_errors_name_the_flag(value, message):
    from leccr_cli.utils.devices import check_device

    with pytest.raises(InvalidArgument) as caught:
        check_device(value)
    assert message in command_line_error(caught.value, "evaluate") and "--" not in str(caught.value)
