from pathlib import Path

import pytest

from leccr_cli.config import apply_overrides, load_recipe, recipe_from_dict, recipe_to_dict, save_recipe
from leccr_cli.errors import RecipeError
from leccr_cli.testing import raises_on_command_line

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    "name",
    [
        "demo", "demo-baseline", "demo-frozen", "multi30k", "mscoco",
        "multi30k-de", "multi30k-fr", "multi30k-cs", "mscoco-ja", "mscoco-zh",
    ],  # fmt: skip
)
def test_shipped_recipes_validate(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.name == name
    assert recipe.data.target_langs


def test_reference_hyper_parameters():
    m30k = load_recipe(RECIPES / "multi30k.yaml")
    assert m30k.data.target_langs == ["de", "fr", "cs"]
    assert (m30k.optim.lr, m30k.optim.weight_decay, m30k.optim.warmup_ratio) == (1e-5, 0.01, 0.1)
    assert (m30k.optim.epochs, m30k.optim.batch_size, m30k.optim.new_layer_lr_scale) == (50, 128, 2.0)
    assert (m30k.loss.w_reg, m30k.loss.w_c, m30k.loss.w_kl, m30k.loss.w_cv, m30k.loss.kl_alpha) == (
        0.01,
        0.01,
        0.5,
        0.01,
        0.8,
    )
    assert (m30k.model.num_slots, m30k.model.slot_layers, m30k.model.interaction_layers) == (4, 3, 2)
    assert m30k.model.vision.image_size == 384 and m30k.model.joint_dim == 256
    assert m30k.data.max_words == 30 and m30k.model.text.description_max_tokens == 200
    assert load_recipe(RECIPES / "mscoco.yaml").data.target_langs == ["ja", "zh"]


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASE = "data:\n  corpus: c\n  target_langs: [de]\n"


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = _write(tmp_path, BASE + "model:\n  num_slot: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "model.num_slot" in message and "did you mean 'num_slots'" in message
    assert "allowed:" in message


@pytest.mark.parametrize(
    "snippet, key, expected",
    [
        ("optim:\n  lr: fast\n", "optim.lr", "expected a number"),
        ("optim:\n  epochs: 2.5\n", "optim.epochs", "expected an integer"),
        ("model:\n  slots: 3\n", "model.slots", "expected true/false"),
        ("optim:\n  batch_size: 0\n", "optim.batch_size", "must be >= 1"),
        ("loss:\n  kl_alpha: 1.5\n", "loss.kl_alpha", "must be >= 0 and <= 1"),
        ("model:\n  variant: basline\n", "model.variant", "did you mean 'baseline'"),
        ("data:\n  corpus: c\n  target_langs: [xx]\n", "data.target_langs[0]", "unknown language code 'xx'"),
        ("data:\n  corpus: c\n  target_langs: []\n", "data.target_langs", "empty"),
        ("model: 3\n", "model", "expected a mapping"),
    ],
)
def test_wrong_values_are_named(tmp_path, snippet, key, expected):
    text = snippet if snippet.startswith("data:") else BASE + snippet
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, text))
    assert f": {key}:" in str(info.value)
    assert expected in str(info.value)


def test_overrides_apply_and_are_validated(tmp_path):
    path = _write(tmp_path, BASE)
    recipe = load_recipe(
        path, ["model.num_slots=2", "optim.lr=2e-5", "data.target_langs=[de, fr]", "model.slots=false"]
    )
    assert recipe.model.num_slots == 2
    assert recipe.optim.lr == 2e-5
    assert recipe.data.target_langs == ["de", "fr"]
    assert recipe.model.slots is False
    assert load_recipe(path, ["optim.mixed_precision=no"]).optim.mixed_precision == "no"
    with raises_on_command_line(
        RecipeError, "with --set: model.num_slot: unknown key; did you mean 'num_slots'", "train"
    ):
        load_recipe(path, ["model.num_slot=2"])
    with pytest.raises(RecipeError, match="with overrides: model.num_slot: unknown key"):  # in Python: the parameter
        load_recipe(path, ["model.num_slot=2"])
    with raises_on_command_line(
        RecipeError, r"--set 'model.num_slots': expected KEY=VALUE, e.g. --set optim.lr=2e-5", "train"
    ):
        load_recipe(path, ["model.num_slots"])
    with pytest.raises(RecipeError, match="data.corpus is not a mapping"):
        apply_overrides({"data": {"corpus": "c"}}, ["data.corpus.x=1"])


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))


def test_model_sources_are_exclusive(tmp_path):
    text = BASE + "model:\n  vision:\n    config: {hidden_size: 8}\n"
    with pytest.raises(RecipeError, match="model.vision: set exactly one of name_or_path"):
        load_recipe(_write(tmp_path, text))


def test_round_trip(tmp_path):
    recipe = load_recipe(RECIPES / "demo.yaml", ["model.num_slots=3"])
    save_recipe(recipe, tmp_path / "out.yaml")
    again = load_recipe(tmp_path / "out.yaml")
    assert again == recipe
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
