"""The public Python API: the README's example runs as written, and the library speaks its own terms."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

import leccr_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(own_run, synthetic_corpus, tmp_path, monkeypatch):
    # the example's paths: the demo run and the synthetic corpus it was trained on
    (tmp_path / "runs").mkdir()
    (tmp_path / "data").mkdir()
    os.symlink(own_run, tmp_path / "runs" / "demo")
    os.symlink(synthetic_corpus, tmp_path / "data" / "synthetic")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_readme_example(), str(README), "exec"), {})
    hits, metrics = printed.getvalue().strip().splitlines()
    assert len(eval(hits)) == 5
    recall = eval(metrics)
    assert set(recall) >= {"t2i_r1", "i2t_r10", "sumr"} and 0 <= recall["t2i_r1"] <= 100
    assert leccr_cli.Index.open(tmp_path / "data" / "photos-index").info.count == 120


def test_the_public_names_load_on_first_use():
    assert leccr_cli.load_run.__module__ == "leccr_cli.runs.layout"
    assert leccr_cli.Searcher.__name__ == "Searcher" and callable(leccr_cli.recall_metrics)
    assert set(leccr_cli.__all__) <= set(dir(leccr_cli))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        leccr_cli.nothing


def test_library_errors_name_parameters_not_flags(trained_run, synthetic_corpus, tmp_path):
    from leccr_cli.errors import InvalidArgument

    index = tmp_path / "index"
    leccr_cli.build_index(trained_run, synthetic_corpus, index, split="test")
    searcher = leccr_cli.Searcher.open(index)
    with pytest.raises(InvalidArgument, match=r"^k=0: must be at least 1$") as caught:
        searcher.search(["ein roter Kreis"], k=0)
    assert (caught.value.name, caught.value.value) == ("k", 0)


def test_a_model_saved_before_it_carried_its_preprocessing_reads_it_from_its_run(own_run):
    import json

    import yaml

    from leccr_cli.model.leccr import Preprocessing

    saved = leccr_cli.load_model(own_run / "model").preprocessing
    assert saved == Preprocessing(descriptions="synthetic")  # tiny_recipe's description source
    config = own_run / "model" / "config.json"
    meta = json.loads(config.read_text())
    del meta["preprocessing"]  # as models were saved before
    config.write_text(json.dumps(meta))
    recipe = yaml.safe_load((own_run / "recipe.yaml").read_text())
    recipe["data"].update(max_words=7, eval_transform="resize")
    (own_run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    for model in (leccr_cli.load_model(own_run / "model"), leccr_cli.load_query_model(own_run / "model")):
        assert model.preprocessing == Preprocessing(max_words=7, eval_transform="resize", descriptions="synthetic")
        cleaned = model.preprocessing.text_cleaning("One two three four five six seven eight")
        assert cleaned == "one two three four five six seven"
