"""Training that fails well: checkpoints without pickles, damaged checkpoints, divergence, a full disk,
Ctrl-C, a second writer, and runs that stop before their first checkpoint."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from leccr_cli.runs.checkpoints import LOOP_STATE_FILE
from leccr_cli.cli.main import app
from leccr_cli.config import recipe_from_dict
from leccr_cli.errors import RunError
from leccr_cli.model.leccr import LeccrModel
from leccr_cli.testing import command_line_error, tiny_recipe
from leccr_cli.training.trainer import train

runner = CliRunner()


def _raw(corpus, **optim) -> dict:
    return tiny_recipe(
        corpus,
        optim={"max_steps": 4, "batch_size": 16, **optim},
        eval={"every_steps": 2},
        train={"checkpoint_every_steps": 2},
    )


def _recipe_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line(result) -> str:
    """The one error line of a failed command (a training progress bar may stand before it)."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert result.output.rstrip().splitlines()[-1] == errors[0], result.output
    return errors[0]


def _strict_lines(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def checkpointed(synthetic_corpus, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints step_2 and step_4. Copy it before resuming."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(recipe_from_dict(_raw(synthetic_corpus)), out)
    return out


class Planted:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holds_no_pickle_and_the_logs_are_strict_json(checkpointed):
    for step in ("step_2", "step_4"):
        names = sorted(p.name for p in (checkpointed / "checkpoints" / step).iterdir())
        assert names == [
            "loop_state.json",
            "model.safetensors",
            "optimizer.bin",
            "rng_state_0.safetensors",
            "scheduler.bin",
        ]
    state = json.loads((checkpointed / "checkpoints" / "step_4" / LOOP_STATE_FILE).read_text())
    assert (state["global_step"], state["processes"]) == (4, 1)
    for log in ("train_log.jsonl", "metrics.jsonl"):
        assert _strict_lines(checkpointed / log)
    assert [p.name for p in checkpointed.iterdir() if p.name.startswith(".")] == [".leccr.lock"]


def _copy(run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(run, tmp_path / "run")


@pytest.mark.parametrize("plant", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_is_never_loaded(checkpointed, synthetic_corpus, tmp_path, plant):
    run = _copy(checkpointed, tmp_path)
    marker = tmp_path / "pwned"
    target = run / "checkpoints" / "step_4" / plant
    if plant.endswith(".bin"):
        torch.save({"state": Planted(marker)}, target)
    else:
        target.write_bytes(pickle.dumps({"state": Planted(marker)}))
    with pytest.raises(RunError) as caught:
        train(recipe_from_dict(_raw(synthetic_corpus)), run, resume="latest")
    assert not marker.exists()
    message = command_line_error(caught.value, "train")
    assert f"checkpoint {run / 'checkpoints' / 'step_4'}: " in message and plant in message
    assert f"resume from the older checkpoint: --resume {run / 'checkpoints' / 'step_2'}" in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate model.safetensors", "model.safetensors is damaged or not a checkpoint file"),
        ("truncate scheduler.bin", "scheduler.bin is damaged or not a checkpoint file"),
        ("remove optimizer.bin", "optimizer.bin is missing"),
        ("remove rng_state_0.safetensors", "rng_state_0.safetensors is missing"),
        ("corrupt loop_state.json", "loop_state.json is unreadable"),
    ],
)
def test_a_damaged_checkpoint_is_named_with_the_older_ones(checkpointed, synthetic_corpus, tmp_path, damage, expected):
    run = _copy(checkpointed, tmp_path)
    action, name = damage.split()
    path = run / "checkpoints" / "step_4" / name
    if action == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif action == "remove":
        path.unlink()
    else:
        path.write_text("{not json")
    recipe = _recipe_file(tmp_path, _raw(synthetic_corpus))
    result = runner.invoke(app, ["train", str(recipe), "--output", str(run), "--resume", "latest"])
    assert result.exit_code == 2
    line = _one_line(result)
    assert expected in line and f"--resume {run / 'checkpoints' / 'step_2'}" in line, line
    # the older checkpoint still resumes
    result = runner.invoke(
        app, ["train", str(recipe), "--output", str(run), "--resume", str(run / "checkpoints" / "step_2")]
    )
    assert result.exit_code == 0, result.output


def test_nan_in_a_recipe_is_refused(synthetic_corpus, tmp_path):
    recipe = _recipe_file(tmp_path, _raw(synthetic_corpus))
    for value in (".nan", ".inf", "-.inf"):
        result = runner.invoke(
            app, ["train", str(recipe), "--set", f"optim.lr={value}", "--output", str(tmp_path / "run")]
        )
        assert result.exit_code == 2
        assert "optim.lr: got" in _one_line(result) and "expected a finite number" in result.output
    raw = _raw(synthetic_corpus)
    raw["loss"] = {"w_c": float("nan")}
    result = runner.invoke(app, ["train", str(_recipe_file(tmp_path, raw)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "loss.w_c: got nan, expected a finite number" in _one_line(result)
    assert not (tmp_path / "run").exists()


def _diverge_at(monkeypatch, call: int, error=None):
    """The training loss turns NaN (or `error` is raised) at the `call`-th forward pass."""
    real = LeccrModel.forward
    calls = [0]

    def forward(self, batch, loss_config):
        output = real(self, batch, loss_config)
        calls[0] += 1
        if calls[0] == call:
            if error is not None:
                raise error
            output.terms["itc_vs"] = output.terms["itc_vs"] * float("nan")
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(LeccrModel, "forward", forward)


def test_a_diverging_run_stops_at_once_with_what_to_try(synthetic_corpus, tmp_path, monkeypatch):
    _diverge_at(monkeypatch, 3)
    recipe = _recipe_file(tmp_path, _raw(synthetic_corpus, max_grad_norm=None))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--output", str(run)])
    assert result.exit_code == 2
    line = _one_line(result)
    assert "training diverged at step 3: the loss is nan (non-finite terms: itc_vs)" in line
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step_2'}" in line
    assert "lower optim.lr (now 0.002) or set optim.max_grad_norm (now None, e.g. 1.0)" in line
    assert f"leccr train {recipe} --output {run} --overwrite" in line
    assert [r["step"] for r in _strict_lines(run / "train_log.jsonl")] == [1, 2]  # nothing of step 3
    assert not (run / "checkpoints" / "step_4").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(synthetic_corpus, tmp_path, monkeypatch):
    _diverge_at(monkeypatch, 1)
    recipe = _recipe_file(tmp_path, _raw(synthetic_corpus))
    result = runner.invoke(app, ["train", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no checkpoint was written yet" in _one_line(result)
    assert not (tmp_path / "run").exists()  # so the next try is not blocked


def test_ctrl_c_says_what_is_kept_and_how_to_go_on(synthetic_corpus, tmp_path, monkeypatch):
    recipe = _recipe_file(tmp_path, _raw(synthetic_corpus))
    run = tmp_path / "run"
    _diverge_at(monkeypatch, 3, KeyboardInterrupt())
    result = runner.invoke(app, ["train", str(recipe), "--output", str(run), "--set", "seed=0"])
    assert result.exit_code == 130
    said = " ".join(result.output.split())
    assert (
        f"interrupted: {run} keeps step_2 and its logs; continue with `leccr train {recipe} --output {run} --set "
        f"seed=0 --resume latest`"
        in said
    )
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", str(recipe), "--output", str(run), "--set", "seed=0", "--resume", "latest"])
    assert resumed.exit_code == 0, resumed.output

    _diverge_at(monkeypatch, 1, KeyboardInterrupt())
    result = runner.invoke(app, ["train", str(recipe), "--output", str(tmp_path / "early")])
    assert result.exit_code == 130
    assert f"stopped before the first checkpoint: nothing to resume, so {tmp_path / 'early'} is removed" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "early").exists()


def test_a_full_disk_at_a_checkpoint_keeps_the_older_ones(synthetic_corpus, tmp_path, monkeypatch):
    from accelerate import Accelerator

    real, calls = Accelerator.save_state, [0]

    def save_state(self, output_dir=None, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            Path(output_dir, "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir, "optimizer.bin")))
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    recipe = _recipe_file(tmp_path, _raw(synthetic_corpus))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--output", str(run)])
    assert result.exit_code == 2
    line = _one_line(result)
    assert f"cannot write checkpoint {run / 'checkpoints' / 'step_4'} (disk full;" in line and "free there" in line
    assert f"{run} keeps step_2 and its logs" in line and "--resume latest" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2"]  # the partial one is gone
    monkeypatch.undo()
    assert runner.invoke(app, ["train", str(recipe), "--output", str(run), "--resume", "latest"]).exit_code == 0


@pytest.mark.slow
def test_a_second_train_into_one_folder_is_refused(synthetic_corpus, tmp_path):
    """A live run holds its folder: a second `leccr train` (also with --overwrite) is refused naming it; once it
    is killed before its first checkpoint, both the next try and --resume say to start again with --overwrite."""
    raw = tiny_recipe(
        synthetic_corpus, optim={"max_steps": 5000}, eval={"every_steps": 5000}, train={"log_every_steps": 1}
    )
    recipe = _recipe_file(tmp_path, raw)
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "leccr_cli", "train", str(recipe), "--output", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.time() + 240
        while not (run / "train_log.jsonl").is_file():  # it is training
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline
            time.sleep(0.1)
        for extra in ([], ["--overwrite"]):
            result = runner.invoke(app, ["train", str(recipe), "--output", str(run), *extra])
            assert result.exit_code == 2
            line = _one_line(result)
            assert f"{run} is being written by `leccr train {recipe} --output {run}` (pid {first.pid}" in line, line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    result = runner.invoke(app, ["train", str(recipe), "--output", str(run)])
    assert result.exit_code == 2 and "stopped before its first checkpoint: there is nothing to resume" in _one_line(
        result
    )
    assert "pass --overwrite to start it again" in result.output
    result = runner.invoke(app, ["train", str(recipe), "--output", str(run), "--resume", "latest"])
    assert result.exit_code == 2 and f"--output {run} --overwrite" in _one_line(result)


def test_every_switch_off_trains_exactly_like_the_baseline(synthetic_corpus):
    """With variant leccr and all six switches off, the model (from-scratch tokenizer included) and its
    training loss are the baseline's."""
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.model.factory import build_model_for
    from leccr_cli.training.pipeline import training_data

    corpus = Corpus.open(synthetic_corpus)
    switches = (
        "slots",
        "interaction",
        "multi_level_matching",
        "english_guidance",
        "description_vision",
        "slot_diversity",
    )
    losses, states, vocabularies = [], [], []
    for changes in ({"variant": "baseline"}, {switch: False for switch in switches}):
        raw = tiny_recipe(synthetic_corpus)
        raw["model"] = {**raw["model"], **changes}
        recipe = recipe_from_dict(raw)
        model = build_model_for(recipe, corpus)
        data = training_data(recipe, corpus, model)
        batch = data.collate([data.dataset[i] for i in range(16)])
        losses.append(model(batch, recipe.loss).loss)
        states.append(model.state_dict())
        vocabularies.append(model.tokenizer.get_vocab())
    assert vocabularies[0] == vocabularies[1]  # no description words in the from-scratch tokenizer
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert torch.equal(losses[0], losses[1])


def test_evaluate_on_another_corpus_keeps_the_runs_own_results(trained_run, synthetic_corpus, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    own = (run / "eval" / "de-test.json").read_bytes()
    other = shutil.copytree(synthetic_corpus, tmp_path / "other")
    meta = json.loads((other / "corpus.json").read_text())
    result = runner.invoke(app, ["evaluate", str(run), "--corpus", str(other), "--lang", "de"])
    assert result.exit_code == 0, result.output
    # the same corpus name as the run's own corpus: the file name tells them apart by a hash of the path
    [written] = [p for p in (run / "eval").iterdir() if p.name.startswith(f"de-test-on-{meta['name']}-")]
    assert json.loads(written.read_text())["corpus"] == str(other.resolve())
    meta["name"] = "other"
    (other / "corpus.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["evaluate", str(run), "--corpus", str(other), "--lang", "de", "--fusion", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval" / "de-test-fusion0.5-on-other.json").read_text())["corpus"] == str(other.resolve())
    assert (run / "eval" / "de-test.json").read_bytes() == own  # never overwritten by another corpus
    result = runner.invoke(app, ["evaluate", str(run), "--lang", "de"])
    assert json.loads((run / "eval" / "de-test.json").read_text())["corpus"] == str(Path(synthetic_corpus).resolve())


def test_a_truncated_model_is_one_line(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = runner.invoke(app, ["evaluate", str(run), "--lang", "de"])
    assert result.exit_code == 2
    assert f"model {run / 'model'}: model.safetensors is damaged or truncated" in _one_line(result)


def test_a_model_with_broken_weights_is_blamed_not_the_scores(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    run = shutil.copytree(trained_run, tmp_path / "run")
    weights = run / "model" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.startswith("text_projection") or "proj" in k)
    tensors[name][0] = float("nan")
    save_file(tensors, str(weights))
    result = runner.invoke(app, ["evaluate", str(run), "--lang", "de"])
    assert result.exit_code == 2
    line = _one_line(result)
    assert "gives NaN or infinite" in line and "training diverged" in line and "fix the system" not in line
