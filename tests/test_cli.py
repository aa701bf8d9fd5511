import subprocess
import sys

from typer.testing import CliRunner

from leccr_cli import __version__
from leccr_cli.cli import app

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


def test_startup_does_not_import_heavy_libraries():
    code = "import sys, leccr_cli.cli; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "leccr_cli", "data", "info", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr and "Traceback" not in proc.stderr
