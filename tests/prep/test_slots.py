"""`leccr build-slots` and training/evaluation from the description-feature cache."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from leccr_cli.testing import command_line_error, raises_on_command_line, tiny_recipe
from leccr_cli.cli.main import app
from leccr_cli.config import load_recipe
from leccr_cli.corpus.corpus import Caption, Corpus, ImageRow, write_corpus
from leccr_cli.corpus.video import write_frame_features
from leccr_cli.errors import CorpusError
from leccr_cli.retrieval.encode import encode_gallery
from leccr_cli.retrieval.evaluate import eval_options, evaluate_languages
from leccr_cli.prep.features.cache import SlotCache, open_slot_cache
from leccr_cli.prep.features.build import build_slots
from leccr_cli.training.trainer import train

runner = CliRunner()


def write_recipe(folder: Path, corpus: Path, name: str = "frozen", **model) -> Path:
    """`tiny_recipe` in frozen description-encoder mode reading the cache (3 steps)."""
    recipe = tiny_recipe(corpus, name=name, optim={"max_steps": 3}, train={"keep_checkpoints": 1})
    recipe["model"].update({"description_encoder": "frozen", "description_features": "cache", **model})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def model_for(recipe_file: Path):
    from leccr_cli.model.factory import build_model_for

    recipe = load_recipe(recipe_file)
    return recipe, build_model_for(recipe, Corpus.open(recipe.data.corpus))


def with_features(model, mode: str):
    """A copy of `model` whose config reads description features `mode` (live, cache, auto)."""
    clone = copy.deepcopy(model)
    clone.config = dataclasses.replace(clone.config, description_features=mode)
    return clone


def cache_for(model, corpus, split: str):
    return open_slot_cache(model, corpus, split, "synthetic")


def edit_one_description(corpus_dir: Path, split: str = "train") -> str:
    corpus = Corpus.open(corpus_dir)
    rows = corpus.description_rows("synthetic")
    image_id = corpus.image_ids(split)[0]
    for row in rows:
        if row["image_id"] == image_id:
            row["text"] += " There is also a small red circle."
    corpus.write_descriptions("synthetic", rows)
    return image_id


@pytest.fixture
def corpus_dir(synthetic_corpus, tmp_path) -> Path:
    """A writable copy of the 120-image synthetic corpus."""
    return Path(shutil.copytree(synthetic_corpus, tmp_path / "corpus"))


@pytest.fixture(scope="module")
def trained(synthetic_corpus, tmp_path_factory):
    """Three 3-step runs of one frozen recipe: live encoding, an fp32 cache, an fp16 cache."""
    folder = tmp_path_factory.mktemp("slots-runs")
    corpus = Path(shutil.copytree(synthetic_corpus, folder / "corpus"))
    recipe_file = write_recipe(folder, corpus)
    runs = {"live": train(load_recipe(recipe_file, ["model.description_features=live"]), folder / "live").run_dir}
    for dtype in ("fp32", "fp16"):
        reports = build_slots(recipe_file, dtype=dtype, overwrite=True)
        assert [r.status for r in reports] == ["built"] * 3
        runs[dtype] = train(load_recipe(recipe_file), folder / dtype).run_dir
    return runs


# -------------------------------------------------------------------- training from it


def test_training_from_the_cache_gives_the_live_losses(trained):
    live, cached = losses(trained["live"]), losses(trained["fp32"])
    assert len(live) == 3
    assert cached == pytest.approx(live, abs=1e-5)
    assert len(set(live)) == 3  # the runs did train


def test_an_fp16_cache_stays_within_1e_2(trained):
    fp32, fp16 = losses(trained["fp32"]), losses(trained["fp16"])
    assert fp16 == pytest.approx(fp32, abs=1e-2)
    assert fp16 != fp32  # half precision did round the features


def test_the_file_holds_the_frozen_features_in_gallery_order(corpus_dir, tmp_path):
    recipe_file = write_recipe(tmp_path, corpus_dir)
    (report,) = build_slots(recipe_file, splits="val", dtype="fp32")
    recipe, model = model_for(recipe_file)
    corpus = Corpus.open(corpus_dir)
    ids = corpus.image_ids("val")
    cache = SlotCache.open(report.path)
    assert report.path.parent.name.startswith("scratch-") and report.path.name == "val.safetensors"
    assert cache.image_ids == ids and cache.dtype == "fp32" and len(cache) == report.rows == 15
    texts = [corpus.descriptions("synthetic")[i] for i in ids[:3]]
    tokens = model.tokenize(texts, 48)
    expected, mask = model.encode_descriptions(tokens["input_ids"], tokens["attention_mask"])
    for j, image_id in enumerate(ids[:3]):
        row = cache.row(image_id)
        assert row.shape == (int(mask[j].sum()), 32)
        torch.testing.assert_close(row, expected[j][mask[j]], atol=1e-5, rtol=0)
    from safetensors import safe_open

    with safe_open(str(report.path), framework="pt") as handle:
        features, stored_mask = handle.get_tensor("features"), handle.get_tensor("mask")
        meta = handle.metadata()
    assert features.shape == (15, max(cache.lengths), 32)  # padded to the longest of the file
    assert torch.equal(stored_mask.sum(1), torch.tensor(cache.lengths))
    assert features[~stored_mask].abs().sum() == 0
    assert meta["encoder"] == "from-scratch" and meta["max_length"] == "48" and meta["descriptions"] == "synthetic"
    # a pickled reader (DataLoader worker under spawn) opens the file again on its own
    revived = pickle.loads(pickle.dumps(cache))
    assert revived._features is None and torch.equal(revived.row(ids[1]), cache.row(ids[1]))


def test_batches_from_the_cache_are_trimmed_to_their_longest_row(corpus_dir, tmp_path):
    from torch.utils.data import DataLoader

    from leccr_cli.data.collate import Collator
    from leccr_cli.data.datasets import GallerySet, VisualSource

    recipe_file = write_recipe(tmp_path, corpus_dir)
    build_slots(recipe_file, splits="test")
    recipe, model = model_for(recipe_file)
    corpus = Corpus.open(corpus_dir)
    cache = cache_for(model, corpus, "test")
    ids = corpus.image_ids("test")
    visual = VisualSource(corpus, "test", lambda image, rng=None: torch.zeros(3, 32, 32), None)
    dataset = GallerySet(ids, visual, None, description_features=cache)
    collate = Collator(model.tokenizer, 24, 48)
    in_process = [collate([dataset[i] for i in range(start, min(start + 4, 15))]) for start in range(0, 15, 4)]
    workers = list(DataLoader(dataset, batch_size=4, collate_fn=collate, num_workers=2))
    for batch, other in zip(in_process, workers):
        assert "description_ids" not in batch and batch["description_features"].dtype == torch.float16
        longest = int(batch["description_features_mask"].sum(1).max())
        assert batch["description_features"].shape[1] == longest
        assert torch.equal(batch["description_features"], other["description_features"])
        assert torch.equal(batch["description_features_mask"], other["description_features_mask"])


# ------------------------------------------------------------------ identity checks


def fake_run(recipe_file: Path, folder: Path) -> Path:
    """A run folder (recipe.yaml + model/) holding the untrained model of a recipe."""
    recipe, model = model_for(recipe_file)
    folder.mkdir()
    shutil.copy(recipe_file, folder / "recipe.yaml")
    model.save_pretrained(folder / "model")
    return folder


def test_a_stale_cache_is_detected_and_refused(corpus_dir, tmp_path):
    from leccr_cli.model.factory import load_model

    recipe_file = write_recipe(tmp_path, corpus_dir)
    run = fake_run(recipe_file, tmp_path / "run")
    build_slots(run)
    edited = edit_one_description(corpus_dir)
    model = load_model(run / "model")
    corpus = Corpus.open(corpus_dir)
    with pytest.raises(CorpusError) as caught:
        cache_for(model, corpus, "train")
    message = command_line_error(caught.value, "evaluate")
    assert "does not match" in message and "descriptions/synthetic, changed since the cache was built" in message
    assert "weights" not in message and "tokenizer" not in message
    assert f"`leccr build-slots {run} --split train --overwrite`" in message
    assert cache_for(model, corpus, "val") is not None  # other splits are untouched
    # build-slots refuses to skip it, and rebuilds it with --overwrite
    with raises_on_command_line(CorpusError, "exists and does not match.*pass --overwrite", 'build-slots'):
        build_slots(run, splits="train")
    build_slots(run, splits="train", overwrite=True)
    cache = cache_for(model, corpus, "train")
    assert cache.lengths[cache.image_ids.index(edited)] > 0


def test_training_refuses_a_stale_cache_before_the_first_step(corpus_dir, tmp_path):
    # a from-scratch encoder and its tokenizer are built from the corpus text: new descriptions, new encoder
    recipe_file = write_recipe(tmp_path, corpus_dir)
    build_slots(recipe_file, splits="train")
    edit_one_description(corpus_dir)
    with pytest.raises(CorpusError) as caught:
        train(load_recipe(recipe_file), tmp_path / "run")
    message = command_line_error(caught.value, "train", recipe=str(recipe_file))
    assert "no slot cache for this description encoder" in message
    assert "what differs: the description encoder's weights; the tokenizer's vocabulary; the descriptions" in message
    assert f"`leccr build-slots {recipe_file} --split train`" in message
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_other_settings_are_named(corpus_dir, tmp_path):
    recipe_file = write_recipe(tmp_path, corpus_dir)
    build_slots(recipe_file, splits="train")
    recipe, model = model_for(write_recipe(tmp_path, corpus_dir, "shorter", text={
        **yaml.safe_load(recipe_file.read_text())["model"]["text"], "description_max_tokens": 40
    }))
    with pytest.raises(CorpusError, match=r"description_max_tokens \(cache: 48, now: 40\)"):
        cache_for(model, Corpus.open(corpus_dir), "train")
    # another seed is another from-scratch encoder: another folder, so no cache for it yet
    other_file = write_recipe(tmp_path, corpus_dir, "other")
    other = load_recipe(other_file, ["seed=1"])
    from leccr_cli.model.factory import build_model_for

    with pytest.raises(CorpusError, match=r"no slot cache .*scratch-\w+/train.safetensors, was built from other inputs "
        r"\(what differs: the description encoder's weights\)"):
        cache_for(build_model_for(other, Corpus.open(corpus_dir)), Corpus.open(corpus_dir), "train")


def test_auto_uses_a_matching_cache_and_ignores_a_stale_one(corpus_dir, tmp_path):
    recipe_file = write_recipe(tmp_path, corpus_dir, description_features="auto")
    recipe, model = model_for(recipe_file)
    corpus = Corpus.open(corpus_dir)
    assert cache_for(model, corpus, "train") is None  # none built yet: live
    build_slots(recipe_file, splits="train")
    assert isinstance(cache_for(model, corpus, "train"), SlotCache)
    edit_one_description(corpus_dir)
    assert cache_for(model, Corpus.open(corpus_dir), "train") is None
    build_slots(recipe_file, splits="val")
    assert cache_for(with_features(model, "live"), corpus, "val") is None


# --------------------------------------------------------------------------- evaluation


def test_evaluation_from_the_cache_equals_live_encoding(corpus_dir, tmp_path):
    recipe_file = write_recipe(tmp_path, corpus_dir)
    build_slots(recipe_file, splits="test", dtype="fp32")
    recipe, model = model_for(recipe_file)
    corpus = Corpus.open(corpus_dir)
    live = with_features(model, "live")
    ids, from_cache = encode_gallery(
        model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    _, encoded = encode_gallery(
        live, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    assert len(ids) == 15
    torch.testing.assert_close(from_cache.global_embeds, encoded.global_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_cache.slot_embeds, encoded.slot_embeds, atol=1e-5, rtol=0)
    assert evaluate_languages(model, corpus, "test", ["de"], **eval_options(recipe)) == evaluate_languages(
        live, corpus, "test", ["de"], **eval_options(recipe)
    )


# ---------------------------------------------------------------------------- the command


def test_resumable_per_split_and_overwrite(corpus_dir, tmp_path):
    recipe_file = write_recipe(tmp_path, corpus_dir)
    first = runner.invoke(app, ["build-slots", str(recipe_file), "--split", "train", "--dtype", "fp32"])
    assert first.exit_code == 0, first.output
    train_file = next((corpus_dir / "slots").glob("*/train.safetensors"))
    built_at = train_file.stat().st_mtime_ns
    again = build_slots(recipe_file)
    assert [(r.split, r.status) for r in again] == [("train", "up to date"), ("val", "built"), ("test", "built")]
    assert train_file.stat().st_mtime_ns == built_at
    assert not list(train_file.parent.glob(".*"))  # no temporary file left behind
    rebuilt = build_slots(recipe_file, splits="train,test", overwrite=True)
    assert [r.status for r in rebuilt] == ["built", "built"] and train_file.stat().st_mtime_ns != built_at
    info = runner.invoke(app, ["data", "info", str(corpus_dir)])
    slug = train_file.parent.name
    assert f"Slot caches: {slug}/test, {slug}/train, {slug}/val" in info.output


def test_an_interrupted_build_leaves_no_cache(corpus_dir, tmp_path, monkeypatch):
    from leccr_cli.model.leccr import LeccrModel

    recipe_file = write_recipe(tmp_path, corpus_dir)
    calls = []

    def failing(self, ids, mask):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, ids, mask)

    original = LeccrModel.encode_descriptions
    monkeypatch.setattr(LeccrModel, "encode_descriptions", failing)
    with pytest.raises(KeyboardInterrupt):
        build_slots(recipe_file, splits="train", batch_size=16)
    assert Corpus.open(corpus_dir).slot_caches() == []
    assert not [p for p in (corpus_dir / "slots").rglob("*") if p.is_file()]


def test_shared_mode_has_nothing_to_cache(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("LECCR_DEBUG", raising=False)
    recipe_file = write_recipe(tmp_path, corpus_dir, description_encoder="shared", description_features="auto")
    result = runner.invoke(app, ["build-slots", str(recipe_file)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "nothing to cache" in lines[0] and "set model.description_encoder: frozen" in lines[0]
    assert not (corpus_dir / "slots").exists()


def test_a_run_folder_builds_the_cache_of_its_model(trained, tmp_path):
    run = trained["fp32"]
    reports = build_slots(run, splits="val")
    assert [r.status for r in reports] == ["up to date"]  # the run's frozen encoder is the recipe's
    bad = runner.invoke(app, ["build-slots", str(tmp_path)])
    assert bad.exit_code == 2 and "is not a run folder (no recipe.yaml)" in bad.output


# ------------------------------------------------------------------------------- video


def video_corpus(synthetic_corpus: Path, out: Path) -> Path:
    """The synthetic corpus's captions and descriptions over random frame features (a video corpus)."""
    source = Corpus.open(synthetic_corpus)
    images = [ImageRow(r.image_id, r.split, r.image_id) for r in source.images()]
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randn(2 + i % 3, 8, generator=generator) for i in range(len(images))]

    def fill(folder: Path) -> None:
        write_frame_features(folder / "video" / "frames.safetensors", [r.image_id for r in images], frames)

    write_corpus(
        out,
        name="tiny-video",
        modality="video",
        media_root=".",
        images=images,
        captions=[Caption(*c) for c in source.captions()],
        descriptions={"synthetic": source.description_rows("synthetic")},
        fill=fill,
    )
    return out


def test_a_video_corpus_round_trip(synthetic_corpus, tmp_path):
    corpus_dir = video_corpus(synthetic_corpus, tmp_path / "video")
    recipe_file = write_recipe(tmp_path, corpus_dir, num_slots=2, video={"width": 32, "heads": 4, "max_frames": 8})
    reports = build_slots(recipe_file, dtype="fp32")
    assert [r.rows for r in reports] == [90, 15, 15]
    recipe, model = model_for(recipe_file)
    assert model.modality == "video"
    corpus = Corpus.open(corpus_dir)
    _, from_cache = encode_gallery(
        model, corpus, "val", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    _, encoded = encode_gallery(
        with_features(model, "live"),
        corpus,
        "val",
        descriptions=recipe.data.descriptions,
        batch_size=recipe.eval.batch_size,
    )
    torch.testing.assert_close(from_cache.global_embeds, encoded.global_embeds, atol=1e-5, rtol=0)
    short = ["optim.max_steps=2", "eval.every_steps=2"]
    cached_run = train(load_recipe(recipe_file, short), tmp_path / "cached").run_dir
    live_run = train(load_recipe(recipe_file, short + ["model.description_features=live"]), tmp_path / "live").run_dir
    assert losses(cached_run) == pytest.approx(losses(live_run), abs=1e-5)


def test_each_process_reads_only_the_rows_of_its_batches(corpus_dir, tmp_path):
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from leccr_cli.data.collate import Collator
    from leccr_cli.data.datasets import TrainingSet, VisualSource, training_examples
    from leccr_cli.utils.text import TextCleaning

    recipe_file = write_recipe(tmp_path, corpus_dir)
    build_slots(recipe_file, splits="train")
    recipe, model = model_for(recipe_file)
    corpus = Corpus.open(corpus_dir)
    cache = cache_for(model, corpus, "train")
    read = []
    row = cache.row
    cache.row = lambda image_id: read.append(image_id) or row(image_id)
    examples = training_examples(corpus, "train", "en", ["de"])
    visual = VisualSource(corpus, "train", lambda image, rng=None: torch.zeros(3, 32, 32), None)
    dataset = TrainingSet(examples, visual, None, TextCleaning(), 0, description_features=cache)
    loader = DataLoader(dataset, batch_size=8, collate_fn=Collator(model.tokenizer, 24, 48))
    mine = prepare_data_loader(loader, torch.device("cpu"), num_processes=2, process_index=1)
    seen = [int(i) for batch in mine for i in batch["image_index"]]
    ids = corpus.image_ids("train")
    assert read == [ids[i] for i in seen]
    # half the batches (the last one completed from the start, as accelerate does); the other half is never read here
    assert len(read) == 8 * 17 and len(set(seen)) < len(ids)


def test_help_lists_build_slots():
    assert "build-slots" in runner.invoke(app, ["--help"]).output


def test_unpooled_description_slots_over_several_gallery_batches_equal_one_by_one(corpus_dir, tmp_path):
    # model.slots: false: the slot embeddings are the padded description tokens, of another length in every batch
    recipe_file = write_recipe(tmp_path, corpus_dir, slots=False, description_features="live")
    recipe, model = model_for(recipe_file)
    corpus = Corpus.open(corpus_dir)
    ids, batched = encode_gallery(model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=4)
    one_by_one = [encode_gallery(model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=1)[1]]
    whole = encode_gallery(model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=len(ids))[1]
    assert batched.slot_mask is not None and batched.slot_embeds.shape[:2] == batched.slot_mask.shape
    texts = torch.nn.functional.normalize(torch.randn(6, batched.global_embeds.shape[1]), dim=-1)
    for other in one_by_one + [whole]:
        torch.testing.assert_close(
            model.score(texts, batched, fusion=0.5), model.score(texts, other, fusion=0.5), atol=1e-5, rtol=0
        )


def test_a_full_disk_or_ctrl_c_keeps_the_finished_splits(corpus_dir, tmp_path, monkeypatch):
    import errno

    import leccr_cli.prep.features.build as slots

    recipe_file = write_recipe(tmp_path, corpus_dir)
    real, calls = slots.write_slot_file, [0]

    def write(path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(slots, "write_slot_file", write)
    result = runner.invoke(app, ["build-slots", str(recipe_file), "--split", "train,val"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    said = " ".join(result.output.split())
    assert len(lines) == 1 and "disk full while writing" in said and "val.safetensors (" in said, result.output
    assert f"finished splits are kept in {corpus_dir / 'slots'}; rerun the same command to build the rest" in said
    assert [split for _, split in Corpus.open(corpus_dir).slot_caches()] == ["train"]

    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(slots, "write_slot_file", interrupted)
    result = runner.invoke(app, ["build-slots", str(recipe_file), "--split", "train,val", "--dtype", "fp16"])
    assert result.exit_code == 130
    said = " ".join(result.output.split())
    assert "interrupted: the caches of finished splits are kept" in said
    assert f"`leccr build-slots {recipe_file} --split train,val` builds the rest" in said
