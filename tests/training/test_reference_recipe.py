"""A paper recipe (Multi30K Czech) trains with the reference's settings."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leccr_cli.config import load_recipe
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.model.factory import load_model
from leccr_cli.model.factory import build_model_for
from leccr_cli.training.pipeline import training_data
from leccr_cli.training.trainer import train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
runner = CliRunner()

# the table, read from the reference's configs and run scripts


def test_a_paper_recipe_trains_with_its_settings(synthetic_corpus, tiny_clip_dir, tiny_bert_dir, tmp_path):
    """recipes/multi30k-cs.yaml with tiny local encoders swapped in: the reference's settings reach the run."""
    overrides = [
        f"data.corpus={synthetic_corpus}",
        "data.descriptions=synthetic",
        "data.num_workers=0",
        f"model.vision.name_or_path={tiny_clip_dir}",
        "model.vision.image_size=32",
        f"model.text.name_or_path={tiny_bert_dir}",
        "optim.max_steps=2",
        "optim.batch_size=8",
        "eval.batch_size=64",
    ]
    recipe = load_recipe(RECIPES / "multi30k-cs.yaml", overrides)
    corpus = Corpus.open(synthetic_corpus)
    data = training_data(recipe, corpus, build_model_for(recipe, corpus))
    transform = data.dataset.visual.transform
    assert (transform.train, transform.flip) == (True, True) and data.dataset.cleaning.strip_punctuation == "ascii"
    result = train(recipe, tmp_path / "run")
    model = load_model(tmp_path / "run" / "model")
    config = model.config
    assert (config.mlp_ratio, config.dropout, config.slot_init, config.description_vision_dim) == (1, 0.1, "zeros", 512)
    assert (
        model.slot_generator.layers[0].attention.dropout == 0.1
        and model.description_vision_slot_head.out_features == 512
    )
    assert result.steps == 2 and list(result.test) == ["cs"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {(r["split"], r["lang"], r["gallery"], r["gallery_size"]) for r in records} == {
        ("val", "cs", "language", 15),
        ("test", "cs", "language", 15),
    }
    record = json.loads((tmp_path / "run" / "eval" / "cs-test.json").read_text())
    assert (record["gallery"], record["gallery_size"], record["queries"]) == ("language", 15, 15)
