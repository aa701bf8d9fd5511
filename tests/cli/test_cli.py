import subprocess
import sys

import pytest
from typer.testing import CliRunner

from leccr_cli import __version__
from leccr_cli.cli.main import app

runner = CliRunner()


def test_help_lists_only_real_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "data" in result.output
    data_help = runner.invoke(app, ["data", "--help"])
    for name in ("synth", "import-multi30k", "import-nrccr", "info"):
        assert name in data_help.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"leccr {__version__}"


@pytest.mark.slow
def test_startup_does_not_import_heavy_libraries():
    heavy = "('torch', 'transformers', 'datasets', 'gradio')"
    for start in (
        "import leccr_cli.cli.main",
        "from leccr_cli.cli.main import main; main(['--help'])",
        "import leccr_cli as L; L.__all__",
    ):
        code = (f"import sys\ntry:\n    {start}\nexcept SystemExit:\n    pass\nprint(sorted(m for m in {heavy} if m in "
            f"sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "[]", start


def test_user_error_is_one_red_line_with_exit_code_2(tmp_path, monkeypatch):
    monkeypatch.delenv("LECCR_DEBUG", raising=False)
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["data", "info", str(missing)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error:") and str(missing) in lines[0]
    assert "Traceback" not in result.output


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    from leccr_cli.errors import CorpusError

    monkeypatch.setenv("LECCR_DEBUG", "1")
    result = runner.invoke(app, ["data", "info", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, CorpusError)


@pytest.mark.slow
def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "leccr_cli", "data", "info", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ shared options


def _frozen_recipe(corpus, folder):
    import yaml

    from leccr_cli.testing import tiny_recipe

    recipe = tiny_recipe(corpus)
    recipe["model"].update({"description_encoder": "frozen"})
    path = folder / "frozen.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _commands(synthetic_corpus, tiny_llava_dir, tiny_marian_dir, tmp_path):
    """caption, translate and build-slots on the same corpus, as argument lists missing --dtype/--split."""
    return {
        "caption": ["caption", str(synthetic_corpus), "--model", str(tiny_llava_dir)],
        "translate": [
            "translate",
            str(synthetic_corpus),
            "--to",
            "de",
            "--engine",
            "auto",
            "--model",
            str(tiny_marian_dir),
        ],
        "build-slots": ["build-slots", str(_frozen_recipe(synthetic_corpus, tmp_path))],
    }


def test_dtype_and_split_are_spelled_alike_everywhere(
    synthetic_corpus, tiny_llava_dir, tiny_marian_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("LECCR_DEBUG", raising=False)
    for name, args in _commands(synthetic_corpus, tiny_llava_dir, tiny_marian_dir, tmp_path).items():
        bad_dtype = runner.invoke(app, args + ["--dtype", "float64"])
        assert bad_dtype.exit_code == 2, (name, bad_dtype.output)
        assert "--dtype 'float64' is not supported (use one of auto, bf16, fp16, fp32)" in bad_dtype.output, name
        bad_split = runner.invoke(app, args + ["--split", "train,nope"])
        assert bad_split.exit_code == 2, (name, bad_split.output)
        assert "has no split 'nope' (available: train, val, test)" in bad_split.output, name


def test_dtype_aliases_name_the_same_dtype():
    from leccr_cli.utils.devices import parse_dtype

    for alias, canonical in (
        ("bfloat16", "bf16"),
        ("float16", "fp16"),
        ("half", "fp16"),
        ("float32", "fp32"),
        ("FP32", "fp32"),
        ("auto", "auto"),
    ):
        assert parse_dtype(alias) == canonical


def test_info_shows_description_coverage(synthetic_corpus):
    result = runner.invoke(app, ["data", "info", str(synthetic_corpus)])
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.output and "90 / 90" in result.output and "15 / 15" in result.output
