"""The video benchmarks: the paper's video recipes, the synthetic video corpus built from a recipe,
and the video demo, which trains and beats chance."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate import PartialState
from safetensors.torch import load_file

from leccr_cli.config import load_recipe, recipe_from_dict, recipe_to_dict
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.errors import RecipeError
from leccr_cli.corpus.synthetic import ensure_corpus
from leccr_cli.training.trainer import train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name, features", [("msrvtt-cn", "resnext101-resnet152"), ("vatex", "i3d_kinetics")])
def test_video_recipes_carry_the_reference_settings(name, features):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    model, loss, optim = recipe.model, recipe.loss, recipe.optim
    assert recipe.name == name and recipe.seed == 42
    assert (recipe.data.target_langs, recipe.data.video_features, recipe.data.descriptions) == (
        ["zh"],
        features,
        "videochat2",
    )
    assert (model.num_slots, model.slot_layers, model.interaction_layers, model.heads, model.joint_dim) == (
        2,
        2,
        2,
        8,
        256,
    )
    assert (loss.w_reg, loss.w_c, loss.w_kl, loss.w_cv, loss.kl_alpha) == (0.03, 0.01, 0.3, 0.01, 0.8)
    assert (optim.epochs, optim.batch_size, optim.lr, optim.new_layer_lr_scale, optim.warmup_ratio) == (
        50,
        128,
        1e-5,
        1.0,
        0.1,
    )
    assert (optim.max_grad_norm, optim.mixed_precision, optim.weight_decay) == (None, "no", 0.01)
    video = model.video
    assert (video.width, video.layers, video.heads, video.pooling, video.positions) == (None, 1, 8, "mean", False)
    assert (recipe.eval.fusion, recipe.eval.fusion_mode) == (0.9, "minmax")
    assert (model.text.name_or_path, model.text.max_tokens, model.description_encoder) == (
        "bert-base-multilingual-cased",
        200,
        "shared",
    )
    assert (model.mlp_ratio, model.dropout, model.slot_init) == (1, 0.1, "zeros")
    assert model.description_vision_dim == {"msrvtt-cn": 4096, "vatex": 1024}[name]
    assert (optim.betas, optim.eps, optim.no_decay) == ([0.9, 0.98], 1e-8, "names")
    assert (recipe.data.lowercase, recipe.data.strip_punctuation, recipe.eval.gallery) == (True, "ascii", "language")


def test_demo_video_recipes_validate():
    demo = load_recipe(RECIPES / "demo-video.yaml")
    baseline = load_recipe(RECIPES / "demo-video-baseline.yaml")
    assert (
        demo.data.synth.modality == "video" and demo.data.synth.generator_options()["videos"] == demo.data.synth.videos
    )
    assert baseline.model.variant == "baseline"
    changed = {
        key for key, value in recipe_to_dict(baseline)["model"].items() if recipe_to_dict(demo)["model"][key] != value
    }
    assert changed == {"variant"} and recipe_to_dict(baseline)["data"] == recipe_to_dict(demo)["data"]


@pytest.mark.parametrize(
    "synth, message",
    [
        (
            {"modality": "video", "images": 100},
            r"data.synth.images: belongs to the image benchmark, but data.synth.modality is 'video'",
        ),
        ({"videos": 100}, r"data.synth.videos: belongs to the video benchmark, but data.synth.modality is 'image'"),
        ({"modality": "video", "frames": 1}, r"data.synth.frames: got 1, must be >= 2"),
        ({"modality": "movie"}, r"data.synth.modality: got 'movie', allowed: image, video"),
    ],
)
def test_synth_keys_of_the_other_modality_are_refused(synth, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"data": {"corpus": "c", "target_langs": ["de"], "synth": synth}})


def test_fusion_needs_a_weight_and_slot_embeddings():
    data = {"corpus": "c", "target_langs": ["de"]}
    with pytest.raises(RecipeError, match=r"eval.fusion_mode: 'minmax' needs eval.fusion"):
        recipe_from_dict({"data": data, "eval": {"fusion_mode": "minmax"}})
    for model in ({"variant": "baseline"}, {"multi_level_matching": False, "english_guidance": False}):
        with pytest.raises(
            RecipeError, match=r"eval.fusion: this model has no slot embeddings to fuse .*set eval.fusion: null"
        ):
            recipe_from_dict({"data": data, "model": model, "eval": {"fusion": 0.9, "fusion_mode": "minmax"}})


def _small_demo(corpus: Path, seed: int = 0, **changes) -> dict:
    raw = load_recipe(RECIPES / "demo-video.yaml", [f"data.corpus={corpus}"])
    raw = recipe_to_dict(raw)
    raw["data"]["synth"].update(videos=240, seed=seed)
    for block, values in changes.items():
        raw[block].update(values)
    return raw


def test_the_recipe_builds_the_same_video_corpus_for_the_same_seed(tmp_path):
    corpora = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        recipe = recipe_from_dict(_small_demo(tmp_path / name, seed))
        corpus = ensure_corpus(recipe, PartialState())
        assert corpus.modality == "video" and corpus.video_feature_sets() == ["synthetic"]
        frames = load_file(str(corpus.path / "video" / "synthetic.safetensors"))
        corpora[name] = (corpus.captions(), corpus.descriptions("synthetic"), frames)
    same, other = corpora["b"], corpora["c"]
    assert corpora["a"][:2] == same[:2] and all((corpora["a"][2][k] == same[2][k]).all() for k in same[2])
    assert corpora["a"][0] != other[0]
    assert (
        Corpus.open(tmp_path / "a").image_ids("test") and (tmp_path / "a" / "video" / "synthetic.safetensors").is_file()
    )
    assert len(Corpus.open(tmp_path / "a").image_ids("train")) == 180


def test_the_video_demo_trains_and_beats_chance(tmp_path):
    raw = _small_demo(
        tmp_path / "corpus", optim={"epochs": 1, "max_steps": 60, "batch_size": 32}, eval={"every_steps": 60}
    )
    result = train(recipe_from_dict(raw), tmp_path / "run")
    gallery = len(Corpus.open(tmp_path / "corpus").image_ids("test"))
    chance_r1, chance_sumr = 100 / gallery, 2 * sum(100 * k / gallery for k in (1, 5, 10))
    assert set(result.test) == {"de", "fr", "cs"} and gallery == 30
    r1 = [metrics["t2i_r1"] for metrics in result.test.values()]
    assert sum(r1) / 3 > 4 * chance_r1, (r1, chance_r1)
    assert all(metrics["sumr"] > 2 * chance_sumr for metrics in result.test.values()), (result.test, chance_sumr)
    assert (tmp_path / "run" / "eval" / "de-test-minmax0.9.json").is_file()
