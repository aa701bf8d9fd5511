"""Each language is ranked against its own gallery (MSCOCO's ja and zh test sets), as the reference evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.config import recipe_from_dict
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.importers.nrccr import import_nrccr
from leccr_cli.errors import CorpusError
from leccr_cli.retrieval.encode import encode_gallery, encode_texts
from leccr_cli.retrieval.evaluate import eval_options, evaluate_languages, query_captions
from leccr_cli.retrieval.metrics import recall_metrics
from leccr_cli.model.factory import load_model
from leccr_cli.model.factory import build_model_for
from leccr_cli.runs.layout import create_run_dir
from leccr_cli.testing import tiny_recipe
from leccr_cli.training.trainer import train

runner = CliRunner()

# the table, read from the reference's configs and run scripts


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
