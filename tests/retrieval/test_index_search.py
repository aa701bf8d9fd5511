"""`leccr index` and `leccr search`: the index holds what evaluation scores against, builds resumably, and search
ranks exactly as `leccr evaluate` does."""

import json
import math
import shutil
import statistics

import pytest
import torch
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.config import recipe_from_dict
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.importers.descriptions import import_descriptions
from leccr_cli.corpus.importers.image_folder import import_images
from leccr_cli.errors import CorpusError, ModelError
from leccr_cli.retrieval.encode import encode_gallery, encode_texts
from leccr_cli.retrieval.evaluate import eval_options, evaluate_languages, query_captions
from leccr_cli.errors import IndexFolderError
from leccr_cli.retrieval.index.builder import build_index
from leccr_cli.retrieval.index.format import CODES_FILE, EMBEDDINGS_FILE
from leccr_cli.retrieval.index.reader import Index
from leccr_cli.retrieval.metrics import metrics_from_ranks, retrieval_ranks_from_rows
from leccr_cli.model.factory import load_query_model
from leccr_cli.config import resolve_paths
from leccr_cli.model.factory import build_model_for
from leccr_cli.runs.layout import create_run_dir, load_run
from leccr_cli.retrieval.search import Searcher
from leccr_cli.testing import raises_on_command_line, single_error_line, tiny_recipe, writer_lock_holder

runner = CliRunner()


def _copy_run(run, folder):
    """A run folder of its own (recipe and best model), to change without touching the shared one."""
    folder.mkdir(parents=True)
    shutil.copy(run / "recipe.yaml", folder / "recipe.yaml")
    shutil.copytree(run / "model", folder / "model")
    return folder


def _gallery_of(synthetic_corpus, folder, count, first=0):
    """A folder holding `count` PNGs of the synthetic test split, as a user's photo folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in Corpus.open(synthetic_corpus).image_ids("test")[first : first + count]:
        shutil.copy(synthetic_corpus / "images" / f"{image_id}.png", folder)
    return folder


# ---------------------------------------------------------------------- the same ranks as evaluate


def test_search_ranks_every_test_caption_as_evaluate_does(own_run, synthetic_corpus, tmp_path):
    out = tmp_path / "index"
    result = runner.invoke(
        app, ["index", str(own_run), str(synthetic_corpus), "--split", "test", "--out", str(out), "--dtype", "fp32"]
    )
    assert result.exit_code == 0, result.output
    assert "15 images (15 embedded; fp32)" in result.output

    recipe, model = load_run(own_run)
    corpus = Corpus.open(synthetic_corpus)
    texts, owners = query_captions(corpus, "test", "de")
    image_ids, gallery = encode_gallery(
        model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    text_embeds = encode_texts(model, texts, batch_size=recipe.eval.batch_size)
    labels = [image_ids.index(owner) for owner in owners]
    ranks = retrieval_ranks_from_rows(
        lambda a, b: model.score(text_embeds[a:b], gallery), len(texts), len(image_ids), labels
    )
    evaluated = evaluate_languages(model, corpus, "test", ["de"], **eval_options(recipe))["de"]
    assert metrics_from_ranks(ranks) == {key: evaluated[key] for key in metrics_from_ranks(ranks)}

    index = Index.open(out)
    assert index.image_ids == image_ids and torch.equal(index.global_embeds, gallery.global_embeds)
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    result = runner.invoke(app, ["search", str(out), "--queries", str(queries), "-k", str(len(image_ids))])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["line"] for a in answers] == list(range(1, len(texts) + 1)) and [a["query"] for a in answers] == texts
    positions = [next(r["rank"] for r in a["results"] if r["image_id"] == owner) for a, owner in zip(answers, owners)]
    assert positions == ranks.t2i.tolist()

    evaluated = runner.invoke(app, ["evaluate", str(own_run), "--lang", "de", "--json", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output
    reported = json.loads((tmp_path / "eval.json").read_text())["de"]
    for k in (1, 5, 10):
        assert reported[f"t2i_r{k}"] == pytest.approx(100 * sum(p <= k for p in positions) / len(positions))
    assert reported["t2i_meanr"] == pytest.approx(sum(positions) / len(positions))
    assert reported["t2i_medr"] == math.floor(statistics.median(positions))


def test_fp16_and_fp32_indexes_agree_up_to_near_ties(trained_run, synthetic_corpus, tmp_path):
    build_index(trained_run, synthetic_corpus, tmp_path / "fp32", split="test", dtype="fp32")
    report = build_index(trained_run, synthetic_corpus, tmp_path / "fp16", split="test")
    assert report.dtype == "fp16" and Index.open(tmp_path / "fp16").global_embeds.dtype == torch.float16
    corpus = Corpus.open(synthetic_corpus)
    texts = [c.text for lang in ("de", "fr", "cs") for c in corpus.captions("test", lang, origin="human")]
    exact, _ = Searcher.open(tmp_path / "fp32").search(texts, k=15)
    half, _ = Searcher.open(tmp_path / "fp16").search(texts, k=15)
    swapped = 0
    for exact_hits, half_hits in zip(exact, half):
        score = {h.image_id: h.score for h in exact_hits}
        for e, h in zip(exact_hits, half_hits):
            # the fp16 list may only swap items whose exact scores are within fp16's rounding of each other
            assert abs(score[h.image_id] - e.score) <= 2e-3
            swapped += e.image_id != h.image_id
    assert swapped <= len(texts)  # near-ties are rare: most lists are identical


def test_fusion_scores_as_evaluate_does(trained_run, synthetic_corpus, tmp_path):
    build_index(trained_run, synthetic_corpus, tmp_path / "index", split="test", dtype="fp32")
    recipe, model = load_run(trained_run)
    corpus = Corpus.open(synthetic_corpus)
    texts, _ = query_captions(corpus, "test", "fr")
    _, gallery = encode_gallery(
        model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    expected = model.score(encode_texts(model, texts, batch_size=recipe.eval.batch_size), gallery, fusion=0.4)
    hits, _ = Searcher.open(tmp_path / "index").search(texts, k=15, fusion=0.4)
    for row, query_hits in zip(expected, hits):
        assert [h.score for h in query_hits] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)


def test_the_query_model_reads_only_the_text_side(trained_run):
    recipe, model = load_run(trained_run)
    query_model = load_query_model(trained_run / "model")
    assert query_model.vision.vision_model.embeddings.patch_embedding.weight.is_meta
    assert query_model.slot_generator.layers[0].norm.weight.is_meta
    texts = ["ein kleiner roter Kreis links", "une étoile bleue"]
    assert torch.equal(
        encode_texts(query_model, texts, batch_size=recipe.eval.batch_size),
        encode_texts(model.eval(), texts, batch_size=recipe.eval.batch_size),
    )


# ---------------------------------------------------------------------- resumable, incremental


def test_an_interrupted_index_resumes_to_the_same_tensors(trained_run, synthetic_corpus, tmp_path):
    whole = build_index(trained_run, synthetic_corpus, tmp_path / "whole", split="test", batch_size=4)
    assert (whole.embedded, whole.status) == (15, "built")

    def killed(rows):
        raise KeyboardInterrupt

    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_index(trained_run, synthetic_corpus, target, split="test", batch_size=4, on_batch=killed)
    # nothing that looks finished: the writer lock and the first batch in .parts/
    assert sorted(p.name for p in target.iterdir()) == [".leccr.lock", ".parts"]
    with raises_on_command_line(IndexFolderError, "unfinished .*rerun the same `leccr index` command", "search"):
        Index.open(target)
    assert "is unfinished" in single_error_line(runner.invoke(app, ["search", str(target), "kreis"]))

    resumed = build_index(trained_run, synthetic_corpus, target, split="test", batch_size=4)
    assert (resumed.embedded, resumed.resumed, resumed.status) == (11, 4, "built")
    a, b = Index.open(tmp_path / "whole"), Index.open(target)
    assert torch.equal(a.global_embeds, b.global_embeds) and torch.equal(a.slot_embeds, b.slot_embeds)
    assert (a.image_ids, a.paths, a.descriptions) == (b.image_ids, b.paths, b.descriptions)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries beside it
    assert sorted(p.name for p in target.iterdir()) == [
        ".leccr.lock",
        CODES_FILE,
        EMBEDDINGS_FILE,
        "index.json",
        "items",
    ]
    assert (target / CODES_FILE).read_bytes() == (tmp_path / "whole" / CODES_FILE).read_bytes()
    again = build_index(trained_run, synthetic_corpus, target, split="test", batch_size=4)
    assert (again.status, again.embedded) == ("up to date", 0)


@pytest.mark.slow
def test_a_second_index_writer_is_refused_and_search_goes_on(test_index, tmp_path):
    out = shutil.copytree(test_index, tmp_path / "index")
    holder = writer_lock_holder(out, ["index", "RUN", "CORPUS", "--out", str(out)])
    try:
        assert holder.stdout.readline().strip() == "locked"
        info = Index.open(out).info
        line = single_error_line(
            runner.invoke(app, ["index", info.model.run, info.corpus, "--split", "test", "--out", str(out)])
        )
        assert f"is being written by `leccr index RUN CORPUS --out {out}` (pid {holder.pid}" in line
        assert runner.invoke(app, ["search", str(out), "ein stern"]).exit_code == 0  # readers are never blocked
    finally:
        holder.kill()
        holder.wait()
    result = runner.invoke(app, ["index", info.model.run, info.corpus, "--split", "test", "--out", str(out)])
    assert result.exit_code == 0 and "is up to date" in result.output


def test_a_full_disk_keeps_the_finished_batches(trained_run, synthetic_corpus, tmp_path, monkeypatch):
    import errno

    import leccr_cli.retrieval.index.builder as index_module

    write = index_module.ShardStore.write_tensors
    calls = []

    def fill_up(self, *args):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, *args)

    monkeypatch.setattr(index_module.ShardStore, "write_tensors", fill_up)
    out = tmp_path / "index"
    args = ["index", str(trained_run), str(synthetic_corpus), "--split", "test", "--out", str(out), "--batch-size", "4"]
    line = single_error_line(runner.invoke(app, args))
    assert "disk full while writing" in line and f"finished batches are kept in {out / '.parts'}" in line
    monkeypatch.undo()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "15 images (11 embedded, 4 from the interrupted run; fp16)" in result.output


def test_new_images_are_appended_and_equal_a_fresh_index(trained_run, synthetic_corpus, tmp_path):
    photos = _gallery_of(synthetic_corpus, tmp_path / "photos", 10)
    descriptions = synthetic_corpus / "descriptions" / "synthetic"
    corpus = import_images(photos, tmp_path / "corpus").corpus
    import_descriptions(corpus, descriptions, "synthetic")
    first = build_index(trained_run, corpus.path, tmp_path / "index")
    assert (first.count, first.embedded) == (10, 10)

    _gallery_of(synthetic_corpus, photos, 5, first=10)
    corpus = import_images(photos, tmp_path / "corpus").corpus
    with raises_on_command_line(
        CorpusError, r"5 of 15 images of split 'gallery' have no description .*`leccr caption", "index"
    ):
        build_index(trained_run, corpus.path, tmp_path / "index")
    import_descriptions(corpus, descriptions, "synthetic", overwrite=True)
    grown = build_index(trained_run, corpus.path, tmp_path / "index")
    assert (grown.count, grown.embedded, grown.reused, grown.status) == (15, 5, 10, "updated")
    build_index(trained_run, corpus.path, tmp_path / "fresh")
    a, b = Index.open(tmp_path / "index"), Index.open(tmp_path / "fresh")
    assert a.image_ids == b.image_ids == Corpus.open(corpus.path).image_ids("gallery")
    assert torch.equal(a.global_embeds, b.global_embeds) and torch.equal(a.slot_embeds, b.slot_embeds)

    # a changed description is embedded again; the others are kept
    changed = {row["image_id"]: row["text"] for row in corpus.description_rows("synthetic")}
    first_id = a.image_ids[0]
    changed[first_id] = "The image shows one large blue star in the middle."
    (tmp_path / "changed.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in changed.items())
    )
    import_descriptions(Corpus.open(corpus.path), tmp_path / "changed.jsonl", "synthetic", overwrite=True)
    redone = build_index(trained_run, corpus.path, tmp_path / "index")
    assert (redone.embedded, redone.reused) == (1, 14)
    assert Index.open(tmp_path / "index").descriptions[0] == changed[first_id]


def test_a_model_that_reads_descriptions_names_the_images_without_one(trained_run, synthetic_corpus, tmp_path):
    corpus = import_images(_gallery_of(synthetic_corpus, tmp_path / "photos", 3), tmp_path / "corpus").corpus
    line = single_error_line(
        runner.invoke(app, ["index", str(trained_run), str(corpus.path), "--out", str(tmp_path / "i")])
    )
    assert "this model reads image descriptions" in line and f"leccr caption {corpus.path} --name synthetic" in line
    assert not (tmp_path / "i").exists()


@pytest.fixture(scope="module")
def baseline_run(synthetic_corpus, tmp_path_factory):
    """A run folder of an (untrained) baseline model: it reads no descriptions."""
    recipe = resolve_paths(recipe_from_dict(tiny_recipe(synthetic_corpus, model={"variant": "baseline"})))
    folder = tmp_path_factory.mktemp("baseline") / "run"
    create_run_dir(recipe, folder, overwrite=False)
    build_model_for(recipe, Corpus.open(synthetic_corpus)).save_pretrained(folder / "model")
    return folder


def test_the_baseline_indexes_images_without_descriptions(baseline_run, synthetic_corpus, tmp_path):
    corpus = import_images(_gallery_of(synthetic_corpus, tmp_path / "photos", 4), tmp_path / "corpus").corpus
    report = build_index(baseline_run, corpus.path, tmp_path / "index")
    index = Index.open(tmp_path / "index")
    assert report.count == 4 and index.slot_embeds is None and index.descriptions == [""] * 4
    assert index.info.descriptions is None and index.info.slots is None
    hits, _ = Searcher.open(tmp_path / "index").search(["ein stern"], k=2)
    assert len(hits[0]) == 2
    line = single_error_line(runner.invoke(app, ["search", str(tmp_path / "index"), "ein stern", "--fusion", "0.5"]))
    assert "--fusion needs slot embeddings" in line


# ---------------------------------------------------------------------- the command line and bad input


@pytest.fixture(scope="module")
def test_index(trained_run, synthetic_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "test"
    build_index(trained_run, synthetic_corpus, out, split="test")
    return out


def test_search_prints_a_table_or_json(test_index):
    result = runner.invoke(app, ["search", str(test_index), "ein kleiner roter Kreis", "-k", "3"])
    assert result.exit_code == 0, result.output
    assert "top 3 of 15" in result.output and "rank" in result.output and "img" in result.output
    result = runner.invoke(app, ["search", str(test_index), "ein kleiner roter Kreis", "-k", "3", "--json"])
    record = json.loads(result.stdout)
    assert [r["rank"] for r in record["results"]] == [1, 2, 3]
    assert record["results"][0]["score"] >= record["results"][1]["score"] >= record["results"][2]["score"]
    assert record["results"][0]["path"].endswith(".png")


def test_k_beyond_the_gallery_is_clamped_and_long_queries_are_cut_once(test_index, tmp_path):
    result = runner.invoke(app, ["search", str(test_index), "ein stern", "-k", "100", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 15
    assert "-k 100 is more than the 15 images of the index" in result.stderr
    long = " ".join(["ein kleiner roter kreis links oben"] * 8)
    queries = tmp_path / "long.txt"
    queries.write_text(f"{long}\nein stern\n{long}\n")
    result = runner.invoke(app, ["search", str(test_index), "--queries", str(queries)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "longer than the text encoder's limit" in line]
    assert len(notes) == 1 and "2 queries are" in notes[0] and f"{queries}:1 first" in notes[0]
    assert len(result.stdout.splitlines()) == 3


def test_bad_queries_are_one_red_line(test_index, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("ein stern\n...\n")
    cases = [
        ([str(test_index), "   "], "the query is empty"),
        ([str(test_index), "?!"], "has no words"),
        ([str(test_index)], "give either a QUERY or --queries FILE"),
        ([str(test_index), "stern", "--queries", str(empty)], "give either a QUERY or --queries FILE"),
        ([str(test_index), "--queries", str(empty)], "no queries"),
        ([str(test_index), "--queries", str(blank)], f"{blank}:2: the query '...' has no words"),
    ]
    for args, message in cases:
        assert message in single_error_line(runner.invoke(app, ["search", *args]))


def test_bad_index_folders_are_one_red_line(trained_run, synthetic_corpus, tmp_path):
    assert "no such folder" in single_error_line(runner.invoke(app, ["search", str(tmp_path / "nowhere"), "stern"]))
    assert "is not an index (no index.json)" in single_error_line(
        runner.invoke(app, ["search", str(tmp_path), "stern"])
    )

    run = _copy_run(trained_run, tmp_path / "run")
    out = tmp_path / "index"
    build_index(run, synthetic_corpus, out, split="test")
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / EMBEDDINGS_FILE).unlink()
    line = single_error_line(runner.invoke(app, ["search", str(damaged), "stern"]))
    assert "embeddings.safetensors is missing or damaged" in line and "leccr index" in line
    shutil.copy(out / EMBEDDINGS_FILE, damaged / EMBEDDINGS_FILE)
    with open(damaged / CODES_FILE, "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 100)
    line = single_error_line(runner.invoke(app, ["search", str(damaged), "stern"]))
    assert "codes.safetensors is missing or damaged" in line and "leccr index" in line
    (damaged / "index.json").write_text((out / "index.json").read_text().replace('"version": 2', '"version": 1'))
    line = single_error_line(runner.invoke(app, ["search", str(damaged), "stern"]))
    assert "version 1 is not supported (this leccr reads 2)" in line
    assert (
        f"leccr index {run.resolve()} {synthetic_corpus.resolve()} --split test --descriptions synthetic --out "
        f"{damaged} --overwrite"
        in line
    )

    # the run's model changes (trained on): the index is stale, and the rebuild command is given
    _, model = load_run(run)
    with torch.no_grad():
        model.text_head.weight.mul_(0.5)
    model.save_pretrained(run / "model")
    line = single_error_line(runner.invoke(app, ["search", str(out), "stern"]))
    assert "is stale: the model of run" in line
    assert (
        f"leccr index {run.resolve()} {synthetic_corpus.resolve()} --split test --descriptions synthetic --out {out} "
        f"--overwrite"
        in line
    )

    # updating it with the changed model is refused; --overwrite rebuilds it
    line = single_error_line(
        runner.invoke(app, ["index", str(run), str(synthetic_corpus), "--split", "test", "--out", str(out)])
    )
    assert "was built otherwise: the model" in line and "--overwrite" in line
    assert (
        runner.invoke(
            app, ["index", str(run), str(synthetic_corpus), "--split", "test", "--out", str(out), "--overwrite"]
        ).exit_code
        == 0
    )
    assert runner.invoke(app, ["search", str(out), "stern"]).exit_code == 0

    # another split, corpus setting or dtype than the index holds
    line = single_error_line(
        runner.invoke(app, ["index", str(run), str(synthetic_corpus), "--split", "val", "--out", str(out)])
    )
    assert "split (index: test, now: val)" in line
    line = single_error_line(
        runner.invoke(app, ["index", str(run), str(synthetic_corpus), "--out", str(tmp_path / "x")])
    )
    assert "has the splits train, val, test" in line and "--split" in line


def test_load_query_model_refuses_a_model_folder_that_does_not_fit(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(run / "model" / "model.safetensors"))
    del weights["text_head.bias"]
    save_file(weights, str(run / "model" / "model.safetensors"))
    with pytest.raises(ModelError, match="does not fit config.json"):
        load_query_model(run / "model")


def test_top_k_in_blocks_and_workers_equals_a_full_sort(test_index, monkeypatch):
    import leccr_cli.retrieval.search as search

    searcher = Searcher.open(test_index)
    queries = searcher.embed(["ein kleiner roter Kreis", "une étoile", "modrý čtverec"])
    index = searcher.index
    gallery = index.global_embeds.float()
    from leccr_cli.model.leccr import ImageEmbeddings

    full = searcher.model.score(queries, ImageEmbeddings(gallery, index.slot_embeds.float()), fusion=0.7)
    expected = [sorted(range(len(index)), key=lambda r: (-row[r].item(), r))[:6] for row in full]
    monkeypatch.setattr(search, "ROWS_PER_TASK", 4)
    monkeypatch.setattr(search, "EXACT_ROWS", 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(
        2
    )  # two workers taking tasks of 4 rows (0-3, 4-7, 8-11, 12-14), candidates scored 3 rows at a time
    try:
        scores, rows = search.top_k(searcher.model, queries, index, 6, fusion=0.7, memory_budget_mb=1e-5)
    finally:
        torch.set_num_threads(threads)
    assert rows.tolist() == expected
    wanted = [row[r].item() for row, chosen in zip(full, expected) for r in chosen]
    assert scores.flatten().tolist() == pytest.approx(wanted, abs=1e-6)
