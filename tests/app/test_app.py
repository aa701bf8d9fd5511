"""`leccr app`: the app's functions, and the app served on a loopback port and queried over HTTP."""

import html
import importlib.util
import json
import re
import socket
import sys

import pytest
from typer.testing import CliRunner

from leccr_cli.cli.main import app as cli
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.retrieval.encode import encode_gallery, encode_texts
from leccr_cli.retrieval.evaluate import query_captions
from leccr_cli.retrieval.index.builder import build_index
from leccr_cli.retrieval.metrics import retrieval_ranks_from_rows
from leccr_cli.runs.layout import load_run
from leccr_cli.retrieval.search import Searcher
from leccr_cli.model.explain import slot_words
from leccr_cli.testing import single_error_line

runner = CliRunner()
needs_gradio = pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None, reason="the app extra (gradio) is not installed"
)
QUERY = "ein kleiner roter Kreis"


@pytest.fixture(scope="module")
def run_app(trained_run, synthetic_corpus, tmp_path_factory):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the app extra (gradio) is not installed")
    from leccr_cli.app.logic import RunApp

    out = tmp_path_factory.mktemp("app") / "index"
    build_index(trained_run, synthetic_corpus, out, split="test")
    return RunApp(trained_run, out, device="cpu")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@needs_gradio
def test_search_gives_the_index_gallery_with_scores_and_descriptions(run_app):
    expected, _ = Searcher.open(run_app.searcher.index.folder).search([QUERY], k=5)
    hits = run_app.search(QUERY, 5)
    assert [(h.image_id, h.score) for h in hits] == [(h.image_id, h.score) for h in expected[0]]
    assert run_app.gallery(hits) == [(h.path, f"#{h.rank}  {h.score:.3f}  {h.image_id}") for h in expected[0]]
    table = run_app.hit_table(hits)
    assert table["image id"].tolist() == [h.image_id for h in hits]
    assert table["description"].tolist() == [h.description for h in hits] and all(table["description"])


@needs_gradio
def test_the_slot_view_shows_each_slot_over_the_description_words(run_app):
    hit = run_app.search(QUERY, 1)[0]
    words, slots = slot_words(run_app.model, hit.description)
    assert words[:3] == hit.description.split()[:3] and len(slots) == run_app.model.config.num_slots
    for slot in slots:
        assert len(slot.weights) == len(words) and sum(slot.weights) == pytest.approx(1.0)
    view = run_app.slot_view(hit)
    assert "slot 1" in view and "slot 2" in view and "most attended words" in view
    shaded = re.findall(r"<td>((?:(?!</td>).)*)</td></tr>", view)
    assert len(shaded) == len(slots)
    assert all(
        html.unescape(re.sub(r"<[^>]+>", "", cell)) == hit.description for cell in shaded
    )  # the words in their places


def test_slot_attention_is_the_last_slot_layer_s_attention_over_the_description(trained_run):
    import torch

    _, model = load_run(trained_run)
    model.eval()
    encoded = model.tokenizer(
        ["a small red circle in the top left corner", "a star"], padding=True, return_tensors="pt"
    )  # fmt: skip
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.inference_mode():
        weights = model.slot_attention(ids, mask)
        # by hand: the slot queries through every layer but the last, then the last layer's attention weights
        memory = model.description_projection(model.encode_descriptions(ids, mask)[0])
        query = model.slot_queries.unsqueeze(0).expand(2, -1, -1)
        layers = model.slot_generator.layers
        for layer in layers[:-1]:
            query = layer(query, memory, mask.bool())
        _, expected = layers[-1].attention(query, memory, memory, key_padding_mask=~mask.bool(), need_weights=True)
    assert weights.shape == (2, model.config.num_slots, ids.shape[1])
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, model.config.num_slots), atol=1e-5)
    assert (weights[1][:, ~mask[1].bool()] == 0).all()  # padding gets nothing


@needs_gradio
def test_test_queries_mark_the_ground_truth_at_evaluate_rank(run_app, trained_run, synthetic_corpus):
    recipe, model = load_run(trained_run)
    corpus = Corpus.open(synthetic_corpus)
    texts, owners = query_captions(corpus, "test", "cs")
    image_ids, gallery = encode_gallery(
        model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    embeds = encode_texts(model, texts, batch_size=recipe.eval.batch_size)
    labels = [image_ids.index(o) for o in owners]
    ranks = retrieval_ranks_from_rows(
        lambda a, b: model.score(embeds[a:b], gallery), len(texts), len(image_ids), labels
    ).t2i
    assert run_app.test_captions("cs") == list(zip(texts, owners))
    for position in range(len(texts)):
        hits, owner, rank = run_app.test_query("cs", position, 3)
        assert owner == owners[position] and rank == int(ranks[position]) and len(hits) == 3
        marked = [caption for _, caption in run_app.gallery(hits, marked=owner) if caption.startswith("✔")]
        assert len(marked) == (1 if rank <= 3 else 0)


@needs_gradio
def test_test_queries_rank_against_the_language_gallery_as_evaluate_does(trained_run, synthetic_corpus, tmp_path):
    import shutil

    import yaml

    from leccr_cli.app.logic import RunApp
    from leccr_cli.corpus.corpus import CAPTION_COLUMNS, save_string_dataset

    # the corpus lists its own (smaller) Czech test gallery, as MSCOCO does for ja and zh
    folder = tmp_path / "corpus"
    shutil.copytree(synthetic_corpus, folder)
    corpus = Corpus.open(folder)
    test_ids = corpus.image_ids("test")
    own = test_ids[::2]
    kept = [c for c in corpus.captions() if not (c.split == "test" and c.lang == "cs" and c.image_id not in own)]
    shutil.rmtree(folder / "captions")
    save_string_dataset({column: [getattr(c, column) for c in kept] for column in CAPTION_COLUMNS}, folder / "captions")
    save_string_dataset(
        {"image_id": own, "split": ["test"] * len(own), "lang": ["cs"] * len(own)}, folder / "galleries"
    )
    run = tmp_path / "run"
    shutil.copytree(trained_run / "model", run / "model")
    raw = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    raw["data"]["corpus"] = str(folder)
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw))

    app = RunApp(run, device="cpu")
    assert app.test_gallery("cs").index.image_ids == own and app.test_gallery("de").index.image_ids == test_ids
    recipe, model = load_run(run)
    corpus = Corpus.open(folder)
    texts, owners = query_captions(corpus, "test", "cs")
    _, gallery = encode_gallery(
        model, corpus, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size, image_ids=own
    )
    embeds = encode_texts(model, texts, batch_size=recipe.eval.batch_size)
    labels = [own.index(o) for o in owners]
    ranks = retrieval_ranks_from_rows(lambda a, b: model.score(embeds[a:b], gallery), len(texts), len(own), labels).t2i
    found = [app.test_query("cs", position, 3) for position in range(len(texts))]
    assert [rank for _, _, rank in found] == ranks.tolist()
    assert all(hit.image_id in own for hits, _, _ in found for hit in hits)


@needs_gradio
def test_the_run_tab_reads_the_logs(run_app, trained_run):
    val = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    curve = run_app.validation_curve()
    assert list(zip(curve["step"], curve["lang"], curve["sumr"])) == [(r["step"], r["lang"], r["sumr"]) for r in val]
    losses = run_app.loss_curves()
    assert {"loss", "itc_vs", "itc_st", "itc_vt"} <= set(losses["term"]) and "lr" not in set(losses["term"])
    table = run_app.eval_table()
    assert set(table["lang"]) >= {"de", "fr", "cs"} and set(table["split"]) >= {"test"}
    own = table[table["scoring"] == "global"]
    assert set(own["gallery"]) == {"language (15 images)"}


@needs_gradio
def test_the_app_serves_the_three_tabs_over_http(run_app):
    from gradio_client import Client

    from leccr_cli.app.ui import serve

    blocks, url = serve(run_app, host="127.0.0.1", port=_free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False)
        gallery, table, details, note = client.predict(QUERY, 4, 1.0, api_name="/search")
        assert [item["caption"] for item in gallery] == [
            caption for _, caption in run_app.gallery(run_app.search(QUERY, 4))
        ]
        assert [row[2] for row in table["data"]] == [h.image_id for h in run_app.search(QUERY, 4)]
        assert "slot 1" in details
        tested, verdict = client.predict("de", 0, 5, api_name="/test_query")
        _, owner, rank = run_app.test_query("de", 0, 5)
        assert f"Ground truth **{owner}**" in verdict and any(
            item["caption"].startswith(f"✔ #{rank}  ") for item in tested
        )
        assert (f"rank {rank} of 15" in verdict) or (rank == 1 and "rank 1 of 15" in verdict)
        evaluation, validation, losses = client.predict(api_name="/run_logs")
        expected = run_app.validation_curve().values.tolist()
        assert [row[:2] for row in validation["data"]] == [row[:2] for row in expected]
        assert [row[2] for row in validation["data"]] == pytest.approx([row[2] for row in expected])
        assert len(losses["data"]) == len(run_app.loss_curves()) and len(evaluation["data"]) == len(
            run_app.eval_table()
        )
    finally:
        blocks.close()


@needs_gradio
def test_a_port_in_use_is_one_red_line(trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = single_error_line(runner.invoke(cli, ["app", str(trained_run), "--port", str(port)]))
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line


def test_without_gradio_the_command_says_how_to_install_it(trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    line = single_error_line(runner.invoke(cli, ["app", str(trained_run)]))
    assert "pip install 'leccr[app]'" in line


@needs_gradio
def test_an_index_of_another_model_is_refused(trained_run, synthetic_corpus, tmp_path):
    import shutil

    import torch

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(trained_run / "recipe.yaml", other / "recipe.yaml")
    _, model = load_run(trained_run)
    with torch.no_grad():
        model.image_head.weight.mul_(2.0)
    model.save_pretrained(other / "model")
    build_index(other, synthetic_corpus, tmp_path / "index", split="test")
    line = single_error_line(runner.invoke(cli, ["app", str(trained_run), "--index", str(tmp_path / "index")]))
    assert "was built by another model" in line and f"leccr index {trained_run}" in line
