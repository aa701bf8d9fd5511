"""The paper's recipes carry the reference implementation's settings, and the keys for them are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leccr_cli.config import load_recipe
from leccr_cli.errors import RecipeError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()

# the table, read from the reference's configs and run scripts
PAPER = {
    # recipe: (language, epochs, w_reg, w_c, w_kl, w_cv)
    "multi30k-de": ("de", 50, 0.05, 0.01, 0.0, 0.01),
    "multi30k-fr": ("fr", 70, 0.01, 0.01, 0.5, 0.01),
    "multi30k-cs": ("cs", 50, 0.01, 0.01, 0.5, 0.01),
    "mscoco-ja": ("ja", 50, 0.01, 0.05, 0.3, 0.01),
    "mscoco-zh": ("zh", 70, 0.01, 0.01, 0.5, 0.01),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_carry_the_reference_settings(name):
    lang, epochs, w_reg, w_c, w_kl, w_cv = PAPER[name]
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.name == name and recipe.seed == 42
    assert recipe.data.target_langs == [lang] and recipe.eval.langs == [lang] and recipe.eval.gallery == "language"
    assert recipe.optim.epochs == epochs and recipe.optim.batch_size == 128
    loss = recipe.loss
    assert (loss.w_reg, loss.w_c, loss.w_kl, loss.w_cv, loss.kl_alpha) == (w_reg, w_c, w_kl, w_cv, 0.8)
    optim = recipe.optim
    assert (optim.lr, optim.new_layer_lr_scale, optim.weight_decay, optim.warmup_ratio) == (1e-5, 1.0, 0.01, 0.1)
    assert (optim.betas, optim.eps, optim.max_grad_norm) == ([0.9, 0.98], 1e-8, None)
    assert (optim.no_decay, optim.mixed_precision) == ("names", "no")
    data = recipe.data
    assert (data.train_transform, data.crop_scale_min, data.train_flip, data.eval_transform) == (
        "random_resized_crop", 0.5, True, "resize"
    )
    assert (data.max_words, data.lowercase, data.strip_punctuation) == (30, True, "ascii")
    model = recipe.model
    assert (model.vision.name_or_path, model.vision.image_size) == ("openai/clip-vit-base-patch32", 384)
    assert (model.text.name_or_path, model.text.max_tokens, model.text.description_max_tokens) == (
        "bert-base-multilingual-cased", 200, 200
    )
    assert (model.num_slots, model.slot_layers, model.interaction_layers, model.heads, model.joint_dim) == (
        4,
        3,
        2,
        8,
        256,
    )
    assert (model.mlp_ratio, model.dropout, model.slot_init, model.description_vision_dim) == (1, 0.1, "zeros", 512)


def test_new_keys_are_validated(tmp_path):
    base = "data:\n  corpus: c\n  target_langs: [de]\n"
    cases = [
        ("optim:\n  betas: [0.9]\n", "optim.betas: expected two numbers"),
        ("optim:\n  betas: [0.9, 1.0]\n", "optim.betas[1]: got 1.0, must be >= 0 and < 1"),
        ("optim:\n  no_decay: bias\n", "optim.no_decay: got 'bias', allowed: ndim, names"),
        ("model:\n  dropout: 1.0\n", "model.dropout: got 1.0, must be >= 0 and < 1"),
        ("model:\n  slot_init: zero\n", "did you mean 'zeros'"),
        ("data:\n  corpus: c\n  target_langs: [de]\n  eval_transform: crop\n", "data.eval_transform: got 'crop'"),
        ("eval:\n  gallery: own\n", "eval.gallery: got 'own', allowed: language, all"),
    ]
    for snippet, message in cases:
        path = tmp_path / "r.yaml"
        path.write_text(snippet if snippet.startswith("data:") else base + snippet)
        with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_recipe(path)
    # true/false, as older recipes spell caption cleaning, still mean unicode/none
    path.write_text(base.replace("[de]\n", "[de]\n  strip_punctuation: false\n"))
    assert load_recipe(path).data.strip_punctuation == "none"
    assert load_recipe(path, ["data.strip_punctuation=true"]).data.strip_punctuation == "unicode"
