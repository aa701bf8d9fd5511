"""The paper's image protocol: per-language galleries, the reference's preprocessing, layer
and optimiser settings, and the per-language paper recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.config import load_recipe, recipe_from_dict, recipe_to_dict
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.data.transforms import ImageTransform, example_rng
from leccr_cli.utils.text import clean_caption
from leccr_cli.corpus.importers.nrccr import import_nrccr
from leccr_cli.errors import CorpusError, RecipeError
from leccr_cli.retrieval.encode import encode_gallery, encode_texts
from leccr_cli.retrieval.evaluate import eval_options, evaluate_languages, query_captions
from leccr_cli.retrieval.metrics import recall_metrics
from leccr_cli.model.factory import build_model, load_model
from leccr_cli.model.layers import CrossAttentionLayer
from leccr_cli.model.factory import build_model_for
from leccr_cli.training.pipeline import build_optimizer, training_data
from leccr_cli.runs.layout import create_run_dir
from leccr_cli.testing import tiny_recipe
from leccr_cli.training.trainer import train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
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


# ------------------------------------------------------------------------------ recipes


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


def test_caption_cleaning_keeps_cjk_punctuation_in_ascii_mode():
    assert clean_caption("一只狗，在草地上。", strip_punctuation="ascii") == "一只狗，在草地上。"
    assert clean_caption("一只狗，在草地上。") == "一只狗 在草地上"  # unicode, the default
    assert (
        clean_caption("A dog's ball (red)! salt & pepper/x-y", strip_punctuation="ascii")
        == "a dog s ball red salt & pepper x y"
    )
    assert clean_caption("A «B»", strip_punctuation="none") == "a «b»"


# ------------------------------------------------------------------------------ images


def _bordered(width: int = 40, height: int = 20, border: int = 5) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 0, 0))  # red border ...
    image.paste((0, 0, 255), (border, border, width - border, height - border))  # ... around blue
    return image


def test_resize_keeps_the_whole_image_and_center_crop_cuts_the_sides():
    plain = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    whole = ImageTransform(16, *plain, fit="resize")(_bordered())
    assert whole.shape == (3, 16, 16)
    for edge in (whole[:, 8, 0], whole[:, 8, -1], whole[:, 0, 8], whole[:, -1, 8]):  # left, right, top, bottom
        assert edge[0] > 0.8 and edge[2] < 0.2, edge
    assert whole[2, 8, 8] > 0.9  # the blue middle
    cropped = ImageTransform(16, *plain, fit="center_crop")(_bordered())
    assert cropped[2, 8, 0] > 0.9 and cropped[0, 8, 0] < 0.1  # the left border was cut away


def test_flip_is_a_function_of_seed_epoch_index_and_keeps_the_crop():
    image = Image.effect_noise((32, 32), 50).convert("RGB")
    flipping = ImageTransform(16, (0, 0, 0), (1, 1, 1), train=True, crop_scale_min=0.3, flip=True)
    plain = ImageTransform(16, (0, 0, 0), (1, 1, 1), train=True, crop_scale_min=0.3)
    flipped = []
    for index in range(20):
        a = flipping(image, example_rng(0, 1, index))
        assert torch.equal(a, flipping(image, example_rng(0, 1, index)))
        crop = plain(image, example_rng(0, 1, index))
        assert torch.equal(a, crop) or torch.equal(a, crop.flip(-1))
        flipped.append(not torch.equal(a, crop))
    assert 0 < sum(flipped) < 20
    epochs = [torch.equal(flipping(image, example_rng(0, e, 3)), plain(image, example_rng(0, e, 3))) for e in range(20)]
    assert 0 < sum(epochs) < 20  # another epoch, another draw
    fixed = ImageTransform(16, (0, 0, 0), (1, 1, 1), flip=True)
    assert torch.equal(fixed(image), ImageTransform(16, (0, 0, 0), (1, 1, 1))(image))  # no random stream: no flip


# ------------------------------------------------------------------------------ layers, optimiser


def test_cross_attention_layer_with_the_reference_settings():
    d = 512
    layer = CrossAttentionLayer(d, 8, mlp_ratio=1, dropout=0.1)
    # the reference's layer: attention (4d^2 + 4d), two Linear(d, d), norm2; its norm1 (2d) is never used
    reference_used = (4 * d * d + 4 * d) + 2 * (d * d + d) + 2 * d
    assert sum(p.numel() for p in layer.parameters()) == reference_used == 6 * d * d + 8 * d
    assert layer.attention.dropout == 0.1
    assert [m.p for m in layer.modules() if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]
    default = CrossAttentionLayer(d, 8)
    assert sum(p.numel() for p in default.parameters()) == 12 * d * d + 11 * d
    assert not any(isinstance(m, torch.nn.Dropout) for m in default.modules())
    # the weights keep the names of models saved before these settings existed, which still load
    names = {
        "attention.in_proj_weight",
        "attention.in_proj_bias",
        "attention.out_proj.weight",
        "attention.out_proj.bias",
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "norm.weight",
        "norm.bias",
    }
    assert set(default.state_dict()) == set(layer.state_dict()) == names

    small = CrossAttentionLayer(16, 4, mlp_ratio=1, dropout=0.1).eval()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    attended, _ = small.attention(query, memory, memory)
    first, second = small.mlp[0], small.mlp[2]
    expected = small.norm(query + second(torch.nn.functional.gelu(first(attended))))
    assert torch.allclose(small(query, memory), expected, atol=1e-5)
    small.train()
    assert not torch.equal(small(query, memory), small(query, memory))  # dropout while training


@pytest.fixture(scope="module")
def paper_model_recipe(tiny_clip_dir, tiny_bert_dir, tmp_path_factory):
    raw = {
        "data": {"corpus": str(tmp_path_factory.mktemp("unused")), "target_langs": ["de"]},
        "model": {
            "vision": {"name_or_path": str(tiny_clip_dir), "image_size": 32},
            "text": {"name_or_path": str(tiny_bert_dir), "max_tokens": 32, "description_max_tokens": 64},
            "joint_dim": 16,
            "num_slots": 2,
            "slot_layers": 1,
            "interaction_layers": 1,
            "heads": 4,
            "mlp_ratio": 1,
            "dropout": 0.1,
            "slot_init": "zeros",
            "description_vision_dim": 24,
        },
        "optim": {"no_decay": "names", "betas": [0.9, 0.98], "eps": 1e-6},
    }
    recipe = recipe_from_dict(raw)
    torch.manual_seed(0)
    return recipe, build_model(recipe.model)


def test_weight_decay_by_name_skips_exactly_the_biases_and_norms(paper_model_recipe):
    recipe, model = paper_model_recipe
    optimizer = build_optimizer(model, recipe)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    assert no_decay == {n for n in names.values() if "bias" in n.lower() or "norm" in n.lower()}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    # HF CLIP's LayerNorms (pre_layrnorm, layer_norm1/2, post_layernorm), BERT's LayerNorm, our cross-attention norm
    for part in (
        "pre_layrnorm.weight",
        "layer_norm1.weight",
        "post_layernorm.weight",
        "LayerNorm.weight",
        ".norm.weight",
    ):
        assert any(part in n for n in no_decay), part
    # decayed as in the reference: the temperature, the slot queries, the position and class embeddings
    for part in ("temperature", "slot_queries", "position_embedding.weight", "class_embedding"):
        assert any(part in n for n in decay), part
    by_ndim = build_optimizer(model, recipe_from_dict({**recipe_to_dict(recipe), "optim": {"no_decay": "ndim"}}))
    ndim_no_decay = {names[id(p)] for g in by_ndim.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert ndim_no_decay == {n for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2}
    assert by_ndim.defaults["betas"] == (0.9, 0.999) and by_ndim.defaults["eps"] == 1e-8


def test_zero_slot_queries_and_the_description_vision_width(paper_model_recipe):
    _, model = paper_model_recipe
    assert torch.equal(model.slot_queries, torch.zeros(2, 24))
    assert model.description_vision_slot_head.out_features == 24 == model.description_vision_token_head.out_features


# ------------------------------------------------------------------------------ galleries

JA_TEST, ZH_TEST = ("j1", "j2", "s1"), ("s1", "z1", "z2", "z3")


@pytest.fixture(scope="module")
def coco_corpus(tmp_path_factory) -> Path:
    """An NRCCR-layout MSCOCO stand-in: ja and zh test lists differ (s1 shared); only ja has validation captions."""
    root = tmp_path_factory.mktemp("mscoco")
    text, features, images = root / "TextData", root / "FeatureData", root / "images"
    for folder in (text, features, images):
        folder.mkdir()
    train_ids = ["t1", "t2", "t3", "t4"]
    words = ["red circle", "blue square", "green star", "yellow triangle"]
    (text / "mscocotrain_enc.caption.txt").write_text("".join(f"{i}#enc#0 a {w}\n" for i, w in zip(train_ids, words)))
    for lang in ("ja", "zh"):
        (text / f"mscocotrain_enc2{lang}.caption.txt").write_text(
            "".join(f"{i}#enc2{lang}#0 {lang} {w}\n" for i, w in zip(train_ids, words))
        )
    (text / "mscocotest_ja.caption.txt").write_text("".join(f"{i}#ja#0 ja {w}\n" for i, w in zip(JA_TEST, words)))
    (text / "mscocotest_zh.caption.txt").write_text("".join(f"{i}#zh#0 zh {w}\n" for i, w in zip(ZH_TEST, words)))
    (text / "mscocoval_ja.caption.txt").write_text("v1#ja#0 ja red circle\nv2#ja#0 ja blue square\n")
    (features / "train_id.txt").write_text("\n".join(train_ids) + "\n")
    (features / "ja_val_id.txt").write_text("v1\nv2\n")
    (features / "ja_test_id.txt").write_text("\n".join(JA_TEST) + "\n")
    (features / "zh_test_id.txt").write_text("\n".join(ZH_TEST) + "\n")
    ids = train_ids + ["v1", "v2"] + sorted(set(JA_TEST + ZH_TEST))
    for n, image_id in enumerate(ids):
        Image.new("RGB", (40, 32), ((n * 70) % 256, (n * 130) % 256, (n * 40) % 256)).save(images / f"{image_id}.jpg")
    out = root / "corpus"
    import_nrccr(root, out, images_dir=images)
    corpus = Corpus.open(out)
    corpus.write_descriptions(
        "desc", [{"image_id": i, "text": f"an image {i}", "model": "m", "prompt": "p"} for i in ids]
    )
    return out


@pytest.fixture(scope="module")
def coco_model(coco_corpus):
    recipe = recipe_from_dict(
        tiny_recipe(coco_corpus, data={"target_langs": ["ja", "zh"], "descriptions": "desc"}, optim={"batch_size": 2})
    )
    return recipe, build_model_for(recipe, Corpus.open(coco_corpus)).eval()


def _expected(model, corpus, recipe, lang, gallery_ids, fusion=None):
    """Recall metrics of the whole split's score matrix restricted to the columns of `gallery_ids`."""
    ids, gallery = encode_gallery(
        model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    texts, owners = query_captions(corpus, "test", lang)
    full = model.score(encode_texts(model, texts, batch_size=recipe.eval.batch_size), gallery, fusion=fusion)
    restricted = full[:, [ids.index(i) for i in gallery_ids]]
    return recall_metrics(restricted, [gallery_ids.index(o) for o in owners])


@pytest.mark.parametrize("fusion", [None, 0.5])
def test_each_language_is_ranked_against_its_own_gallery(coco_corpus, coco_model, fusion):
    recipe, model = coco_model
    corpus = Corpus.open(coco_corpus)
    everything = corpus.image_ids("test")
    assert everything == ["j1", "j2", "s1", "z1", "z2", "z3"]
    own = evaluate_languages(model, corpus, "test", ["ja", "zh"], **{**eval_options(recipe), "fusion": fusion})
    merged = evaluate_languages(
        model, corpus, "test", ["ja", "zh"], **{**eval_options(recipe), "fusion": fusion, "gallery": "all"}
    )
    for lang, images in (("ja", list(JA_TEST)), ("zh", ["s1", "z1", "z2", "z3"])):
        queries = len(images)
        assert own[lang] == {
            **_expected(model, corpus, recipe, lang, images, fusion),
            "gallery": "language",
            "gallery_size": len(images),
            "queries": queries,
        }
        assert merged[lang] == {
            **_expected(model, corpus, recipe, lang, everything, fusion),
            "gallery": "all",
            "gallery_size": 6,
            "queries": queries,
        }


def test_evaluate_command_galleries_and_missing_languages(coco_corpus, coco_model, tmp_path):
    recipe, model = coco_model
    run = tmp_path / "run"
    create_run_dir(recipe, run, overwrite=False)
    model.save_pretrained(run / "model")
    corpus = Corpus.open(coco_corpus)
    loaded = load_model(run / "model")
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "gallery: language (ja 3 queries x 3 images, zh 4 queries x 4 images)" in result.output
    result = runner.invoke(app, ["evaluate", str(run), "--gallery", "all", "--lang", "ja"])
    assert result.exit_code == 0, result.output
    assert "gallery: all (ja 3 queries x 6 images)" in result.output
    for name, lang, images, mode in (
        ("ja-test.json", "ja", list(JA_TEST), "language"),
        ("zh-test.json", "zh", ["s1", "z1", "z2", "z3"], "language"),
        ("ja-test-gallery-all.json", "ja", corpus.image_ids("test"), "all"),
    ):
        record = json.loads((run / "eval" / name).read_text())
        assert (record["lang"], record["gallery"], record["gallery_size"]) == (lang, mode, len(images))
        expected = _expected(loaded, corpus, recipe, lang, images)
        assert {k: record[k] for k in expected} == pytest.approx(expected)
    for args, message in (
        (
            ["--split", "val", "--lang", "zh"],
            "has no human zh captions in split 'val', so no zh queries and no zh gallery "
            "(languages with captions there: ja)",
        ),
        (["--gallery", "mine"], "--gallery mine: expected one of language, all"),
    ):
        result = runner.invoke(app, ["evaluate", str(run), *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in " ".join(lines), result.output


def test_training_refuses_a_language_without_validation_queries(coco_corpus, coco_model, tmp_path):
    recipe, _ = coco_model
    with pytest.raises(CorpusError, match="no human zh captions in split 'val'"):
        train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ a paper recipe, end to end


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
