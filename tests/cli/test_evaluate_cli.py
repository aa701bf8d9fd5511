"""`leccr evaluate --scores FILE --labels FILE`: score a saved similarity matrix without a model."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.retrieval.metrics import load_labels, recall_metrics
from leccr_cli.testing import single_error_line

runner = CliRunner()

# 6 texts (two per image) x 3 images; t2i ranks 1, 2, 1, 1, 3, 1 and i2t ranks 1, 1, 2
# (image 2's best caption, text 4 at 0.5, is beaten by text 0 at 0.55)
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.55],
        [0.5, 0.7, 0.1],
        [0.1, 0.8, 0.3],
        [0.2, 0.6, 0.4],
        [0.7, 0.6, 0.5],
        [0.0, 0.1, 0.35],
    ]
)
LABELS = [0, 0, 1, 1, 2, 2]


@pytest.fixture
def saved(tmp_path):
    scores = tmp_path / "system.safetensors"
    save_file({"scores": SCORES}, str(scores))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(map(str, LABELS)) + "\n")
    return scores, labels


def test_prints_the_table_and_writes_the_json(saved, tmp_path):
    scores, labels = saved
    out = tmp_path / "eval" / "system.json"
    result = runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels), "--json", str(out)])
    assert result.exit_code == 0, result.output
    expected = recall_metrics(SCORES, LABELS)
    assert expected["t2i_r1"] == pytest.approx(400 / 6) and expected["i2t_r1"] == pytest.approx(200 / 3)
    assert json.loads(out.read_text()) == pytest.approx(expected)
    assert list(json.loads(out.read_text())) == list(expected)
    assert [p.name for p in out.parent.iterdir()] == ["system.json"]  # no temporary left behind
    assert "system.safetensors: 6 texts x 3 images" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ system"))
    assert [cell.strip() for cell in row.strip("│").split("│")] == [
        "system", "66.7", "100.0", "100.0", "66.7", "100.0", "100.0", "533.3",
    ]  # fmt: skip
    assert "median rank i2t 1, t2i 1; mean rank i2t 1.3, t2i 1.5" in result.output
    assert f"Wrote {out}" in result.output.replace("\n", "")


def test_json_labels_and_the_only_tensor_of_a_file(tmp_path):
    scores = tmp_path / "other.safetensors"
    save_file({"similarity": SCORES[:, :2].contiguous()}, str(scores))  # image 2 is not used
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([0, 0, 1, 1, 1, 0]))
    result = runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "6 texts x 2 images" in result.output


def test_an_image_without_captions_is_reported(tmp_path, saved):
    scores, _ = saved
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n0\n1\n1\n1\n0\n")
    result = runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "left out of image-to-text: 1 image without a caption" in result.output


def test_shape_mismatch_is_one_red_line(saved, tmp_path):
    scores, _ = saved
    labels = tmp_path / "short.txt"
    labels.write_text("0\n1\n2\n")
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels)]))
    assert "shape (6, 3)" in line and "labels of shape (3,)" in line and "transposed" in line


def test_nan_scores_are_one_red_line(tmp_path, saved):
    _, labels = saved
    scores = tmp_path / "nan.safetensors"
    bad = SCORES.clone()
    bad[4, 1] = float("nan")
    save_file({"scores": bad}, str(scores))
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels)]))
    assert "1 NaN and 0 infinite values; the first is nan at text 4, image 1" in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("0\n1\nx\n", "line 3: 'x' is not an integer image index"),
        ("0\n\n1\n", "line 2: '' is not an integer"),
        ("0\n1\n1\n2\n2\n7\n", "text 5 -> image 7"),
        ("", "holds no labels"),
    ],
)
def test_bad_label_files_are_one_red_line(tmp_path, saved, content, message):
    scores, _ = saved
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels)]))
    assert message in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{\"a\": 1}", "JSON list"),
        ("[0, 1.0]", "entry 1 is 1.0"),
        ("[0, true]", "entry 1 is True"),
        ("[0,", "not valid JSON"),
    ],
)
def test_bad_json_labels_are_refused(tmp_path, content, message):
    from leccr_cli.errors import EvaluationError

    labels = tmp_path / "labels.json"
    labels.write_text(content)
    with pytest.raises(EvaluationError, match=message):
        load_labels(labels)


def test_bad_score_files_are_one_red_line(tmp_path, saved):
    _, labels = saved
    missing = tmp_path / "missing.safetensors"
    assert f"{missing}: no such file" in single_error_line(
        runner.invoke(app, ["evaluate", "--scores", str(missing), "--labels", str(labels)])
    )

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(garbage), "--labels", str(labels)]))
    assert "is not a readable safetensors file" in line

    two = tmp_path / "two.safetensors"
    save_file({"a": SCORES, "b": SCORES.clone()}, str(two))
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(two), "--labels", str(labels)]))
    assert "holds 2 tensors (a, b) and none is named 'scores'" in line


def test_help_says_what_the_files_hold():
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert "'scores'" in text and "one integer per line" in text and ".json list" in text


def test_files_that_are_folders_or_not_text_are_one_red_line(tmp_path, saved):
    scores, labels = saved
    folder = tmp_path / "folder"
    folder.mkdir()
    for args, message in [
        (["--scores", str(folder), "--labels", str(labels)], f"{folder} is a folder, not a score file"),
        (["--scores", str(scores), "--labels", str(folder)], f"{folder} is a folder, not a labels file"),
    ]:
        assert message in single_error_line(runner.invoke(app, ["evaluate", *args]))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"0\n0\n1\n1\n2\n\xe9\n")
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(latin)]))
    assert f"{latin}, line 6: not UTF-8" in line
    huge = tmp_path / "huge.txt"
    huge.write_text("0\n0\n1\n1\n2\n99999999999999999999999\n")
    line = single_error_line(runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(huge)]))
    assert "label 5 (99999999999999999999999) is beyond any image index" in line
    recipe_folder = runner.invoke(app, ["train", str(folder)])
    assert f"recipe {folder} is a folder" in single_error_line(recipe_folder)


def test_json_into_a_folder_or_an_unwritable_place_is_refused_up_front(tmp_path, saved):
    import os

    scores, labels = saved
    folder = tmp_path / "out"
    folder.mkdir()
    line = single_error_line(
        runner.invoke(app, ["evaluate", "--scores", str(scores), "--labels", str(labels), "--json", str(folder)])
    )
    assert f"--json {folder} is a folder" in line
    args = ["--scores", str(scores), "--labels", str(labels), "--json", str(labels / "m.json")]
    assert f"--json {labels / 'm.json'}: {labels} is not a folder" in single_error_line(
        runner.invoke(app, ["evaluate", *args])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "out", "system.safetensors"]
    assert list(folder.iterdir()) == []  # no temporary file anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who may write anywhere")
    args = ["--scores", str(scores), "--labels", str(labels), "--json", str(locked / "m.json")]
    assert "cannot write there (permission denied)" in single_error_line(runner.invoke(app, ["evaluate", *args]))
    assert list(locked.iterdir()) == []


def test_write_metrics_json_into_a_folder_leaves_no_temporary(tmp_path):
    from leccr_cli.errors import EvaluationError
    from leccr_cli.runs.logs import write_json

    (tmp_path / "taken").mkdir()
    with pytest.raises(EvaluationError, match="cannot write"):
        write_json({"sumr": float("nan")}, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    written = write_json({"sumr": float("nan"), "nested": {"r1": float("inf")}}, tmp_path / "m.json")
    assert json.loads(written.read_text()) == {"sumr": None, "nested": {"r1": None}}
