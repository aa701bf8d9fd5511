"""`leccr app`: a Gradio app over a trained run (the optional extra `pip install 'leccr[app]'`).

Three tabs:

- **Search**: a query in any language, its top-k images of an index (`leccr index`) with the
  score and description of every hit; for the selected hit, which words of its description
  each semantic slot attends to most (the slots made visible).
- **Test queries**: a human caption of the run's test split in one language; its top-k images
  of that language's test gallery (the images `leccr evaluate` ranks it against), the
  ground-truth image marked, and its rank (counted as `leccr evaluate` counts it: ties
  against the ground truth).
- **Run**: the evaluation table per language, validation SumR per language over steps and
  the loss terms over steps (`eval/`, `metrics.jsonl`, `train_log.jsonl`).

`RunApp` holds the logic as plain methods (tested without a browser); `build_app` wires them
to Gradio components. Only `leccr app` imports this module.
"""

from __future__ import annotations

import html
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
import pyarrow as pa
import torch

from leccr_cli.corpus.corpus import Corpus
from leccr_cli.utils.devices import select_device
from leccr_cli.errors import LeccrError
from leccr_cli.retrieval.evaluate import encode_gallery, language_galleries, query_captions
from leccr_cli.retrieval.index.builder import Index, IndexCodes, IndexInfo, ModelIdentity
from leccr_cli.retrieval.metrics import DEFAULT_KS
from leccr_cli.model.leccr import uses_slot_embeddings
from leccr_cli.runs.layout import EVAL_DIR, METRICS_FILE, TRAIN_LOG_FILE, load_run, read_records
from leccr_cli.retrieval.search import DEFAULT_K, Hit, Searcher, top_k

SLOT_TOP_WORDS = 5
TRAIN_LOG_SKIP = ("step", "epoch", "lr", "seconds")  # train_log.jsonl keys that are not loss terms
METRIC_COLUMNS = tuple(f"{d}_r{k}" for d in ("t2i", "i2t") for k in DEFAULT_KS) + ("sumr",)


@dataclass
class SlotWords:
    """How one slot's attention spreads over the words of a description."""

    slot: int
    weights: list[float]  # one per word, summing to 1 over the words


class RunApp:
    """The app's logic over a run (its best model) and, optionally, an index built by that model."""

    def __init__(self, run: str | Path, index: str | Path | None = None, device: str | None = None):
        self.run_dir = Path(run)
        self.recipe, self.model = load_run(self.run_dir)
        self.model.to(select_device(device)).eval()
        self.searcher: Searcher | None = None
        if index is not None:
            opened = Index.open(index)
            opened.check_model()
            mine = ModelIdentity.of_run(self.run_dir)
            if opened.info.model.weights != mine.weights:
                raise LeccrError(
                    f"index {index} was built by another model (run {opened.info.model.run}), not by {self.run_dir}",
                    f"build one with this run: `leccr index {self.run_dir} CORPUS --out INDEX`",
                )
            self.searcher = Searcher(opened, self.recipe, self.model)
        self._test: Searcher | None = None
        self._test_galleries: dict[str, Searcher] = {}
        self._corpus: Corpus | None = None

    # ------------------------------------------------------------------ search

    @property
    def has_slots(self) -> bool:
        return uses_slot_embeddings(self.model.config)

    def search(self, query: str, k: int = DEFAULT_K, fusion: float | None = None) -> list[Hit]:
        """The top-k hits of the index for `query` (a `LeccrError` when there is no index or the query is empty)."""
        if self.searcher is None:
            raise LeccrError("no index to search", f"start the app with --index INDEX (build it with `leccr index {self.run_dir} CORPUS --out INDEX`)")
        hits, _ = self.searcher.search([query], int(k), fusion=fusion)
        return hits[0]

    def truncation_note(self, query: str) -> str:
        """A line saying the query was cut at the text encoder's limit, or ''."""
        if self.searcher is None or not query.strip() or not self.searcher.check_queries([query]):
            return ""
        return f"The query is longer than the text encoder's limit ({self.model.config.text.max_tokens} tokens) and was cut to it."

    @staticmethod
    def gallery(hits: list[Hit], marked: str | None = None) -> list[tuple[str, str]]:
        """(image path, caption) per hit; the hit whose id is `marked` (the ground truth) gets a check mark."""
        items = []
        for hit in hits:
            label = f"#{hit.rank}  {hit.score:.3f}  {hit.image_id}"
            items.append((hit.path, ("✔ " if hit.image_id == marked else "") + label))
        return items

    @staticmethod
    def hit_table(hits: list[Hit]) -> pd.DataFrame:
        return pd.DataFrame(
            [(h.rank, round(h.score, 4), h.image_id, h.description) for h in hits],
            columns=["rank", "score", "image id", "description"],
        )

    # ------------------------------------------------------------------ the slots

    def slot_words(self, description: str) -> tuple[list[str], list[SlotWords]]:
        """The words of a description (as the model reads it, cut at its token limit) and each slot's attention over them.

        Token weights (last slot layer, averaged over heads) are summed per word; special tokens are left out.
        """
        if not (self.model.reads_descriptions and self.model.config.slots) or not description.strip():
            return [], []
        tokenizer = self.model.tokenizer
        encoded = tokenizer(
            [description], truncation=True, max_length=self.model.config.text.description_max_tokens,
            return_tensors="pt", return_offsets_mapping=True,
        )  # fmt: skip
        device = next(self.model.text_encoder.parameters()).device
        with torch.inference_mode():
            attention = self.model.slot_attention(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))[0].cpu()
        word_ids = encoded.word_ids(0)
        offsets = encoded["offset_mapping"][0].tolist()
        spans: dict[int, list[int]] = {}
        for position, word in enumerate(word_ids):
            if word is not None:
                start, stop = offsets[position]
                span = spans.setdefault(word, [start, stop])
                span[0], span[1] = min(span[0], start), max(span[1], stop)
        order = sorted(spans)
        words = [description[spans[w][0] : spans[w][1]] for w in order]
        slots = []
        for slot in range(attention.shape[0]):
            per_word = dict.fromkeys(order, 0.0)
            for position, word in enumerate(word_ids):
                if word is not None:
                    per_word[word] += float(attention[slot, position])
            total = sum(per_word.values()) or 1.0
            slots.append(SlotWords(slot + 1, [per_word[w] / total for w in order]))
        return words, slots

    def slot_view(self, hit: Hit | None) -> str:
        """HTML: the hit's description, and per slot its words shaded by attention with the top words listed."""
        if hit is None:
            return ""
        head = f"<p><b>#{hit.rank} {html.escape(hit.image_id)}</b> (score {hit.score:.3f})</p>"
        if not hit.description:
            return head + "<p><i>No description.</i></p>"
        words, slots = self.slot_words(hit.description)
        body = f"<p>{html.escape(hit.description)}</p>"
        if not slots:
            return head + body + "<p><i>This model has no semantic slots.</i></p>"
        even = 1.0 / len(words)
        rows = []
        for slot in slots:
            spread = max(max(slot.weights) - even, 1e-9)
            pieces, position = [], 0
            for word, w in zip(words, slot.weights):  # the words in their places, the text between them kept
                start = hit.description.index(word, position)
                pieces.append(html.escape(hit.description[position:start]))
                pieces.append(
                    f'<span style="background: rgba(255, 136, 0, {max(w - even, 0.0) / spread:.2f}); '
                    f'border-radius: 3px">{html.escape(word)}</span>'
                )
                position = start + len(word)
            shaded = "".join(pieces) + html.escape(hit.description[position:])
            best = sorted(range(len(words)), key=lambda i: -slot.weights[i])[:SLOT_TOP_WORDS]
            top = ", ".join(f"{html.escape(words[i])} {slot.weights[i]:.0%}" for i in best)
            rows.append(f"<tr><td><b>slot {slot.slot}</b></td><td>{top}</td><td>{shaded}</td></tr>")
        table = (
            "<table><tr><th></th><th>most attended words</th><th>the description, shaded by the slot's attention</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        note = (
            "<p><small>Attention of each semantic slot over the description's words (last slot layer, "
            f"averaged over heads, shares of the words' total). A word is shaded by how far its share exceeds "
            f"an even share ({even:.0%} for {len(words)} words); the slot's top word is the darkest.</small></p>"
        )
        return head + body + table + note

    # ------------------------------------------------------------------ test queries

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = Corpus.open(self.recipe.data.corpus)
        return self._corpus

    @property
    def test_split(self) -> str:
        return self.recipe.data.test_split

    def test_languages(self) -> list[str]:
        """Languages with human captions in the run's test split."""
        return sorted({c.lang for c in self.corpus.captions(self.test_split, origin="human")})

    def test_captions(self, lang: str) -> list[tuple[str, str]]:
        """(caption, image id) of every human caption of `lang` in the test split."""
        texts, owners = query_captions(self.corpus, self.test_split, lang)
        return list(zip(texts, owners))

    def test_searcher(self) -> Searcher:
        """The test gallery: the index when it is the run's test split, else embedded once (in memory) on first use."""
        if self._test is None:
            index = self.searcher.index if self.searcher is not None else None
            # an fp32 index of the test split scores exactly as evaluation does; anything else is embedded here
            corpus_path = str(self.corpus.path.resolve())
            if index is not None and index.info.corpus == corpus_path and index.info.split == self.test_split and index.info.dtype == "fp32":
                self._test = self.searcher
            else:
                self._test = Searcher(self._embed_test_gallery(), self.recipe, self.model)
        return self._test

    def _embed_test_gallery(self) -> Index:
        image_ids, embeds = encode_gallery(self.model, self.corpus, self.test_split, self.recipe)
        paths = self.corpus.image_paths(self.test_split)
        descriptions = self.corpus.descriptions(self.recipe.data.descriptions) if (
            self.recipe.data.descriptions in self.corpus.description_sources()
        ) else {}
        info = IndexInfo(
            model=ModelIdentity.of_run(self.run_dir), corpus=str(self.corpus.path.resolve()), split=self.test_split,
            descriptions=self.recipe.data.descriptions, count=len(image_ids), dim=embeds.global_embeds.shape[1],
            slots=None if embeds.slot_embeds is None else embeds.slot_embeds.shape[1], slot_mask=embeds.slot_mask is not None,
            dtype="fp32",
        )  # fmt: skip
        items = pa.table({
            "image_id": image_ids,
            "path": [str(paths[i].resolve()) for i in image_ids],
            "description": [descriptions.get(i, "") for i in image_ids],
        })  # fmt: skip
        embeds = embeds.to("cpu")
        codes = IndexCodes.of_embeddings(embeds.global_embeds, embeds.slot_embeds)
        return Index(Path(self.run_dir), info, items, embeds.global_embeds, embeds.slot_embeds, embeds.slot_mask, codes)

    def test_gallery(self, lang: str) -> Searcher:
        """The test gallery `lang`'s captions are ranked against, as `leccr evaluate` ranks them (`eval.gallery`)."""
        if lang not in self._test_galleries:
            whole = self.test_searcher()
            own = language_galleries(self.corpus, self.test_split, [lang], self.recipe.eval.gallery)[lang]
            if own == whole.index.image_ids:
                self._test_galleries[lang] = whole
            else:
                row = {image_id: i for i, image_id in enumerate(whole.index.image_ids)}
                self._test_galleries[lang] = Searcher(whole.index.select([row[i] for i in own]), self.recipe, self.model)
        return self._test_galleries[lang]

    def test_query(self, lang: str, position: int, k: int = DEFAULT_K) -> tuple[list[Hit], str, int]:
        """The top-k hits of the test caption at `position` of `lang` in its test gallery, its image id and that image's rank.

        The rank counts as `leccr evaluate` does: 1 + the images scoring at least as high as the ground truth.
        """
        captions = self.test_captions(lang)
        if not 0 <= position < len(captions):
            raise LeccrError(f"caption {position} of {lang}: there are {len(captions)}")
        text, owner = captions[position]
        searcher = self.test_gallery(lang)
        embeds = searcher.embed([text])
        scores, rows = top_k(self.model, embeds, searcher.index, len(searcher.index))
        scores, rows = scores[0], rows[0]
        truth = searcher.index.image_ids.index(owner)
        truth_score = scores[(rows == truth).nonzero()[0, 0]]
        rank = int((scores >= truth_score).sum())
        hits = [searcher.hit(r + 1, float(s), int(row)) for r, (s, row) in enumerate(zip(scores[:k], rows[:k]))]
        return hits, owner, rank

    # ------------------------------------------------------------------ the run

    def _records(self, name: str) -> list[dict]:
        path = self.run_dir / name
        return read_records(path) if path.is_file() else []  # a line being written by a training run is skipped

    def eval_table(self) -> pd.DataFrame:
        """One row per evaluation file in eval/ (written by training's test and by `leccr evaluate`)."""
        rows = []
        for path in sorted((self.run_dir / EVAL_DIR).glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            mode = ", ".join(
                filter(None, [f"fusion {record['fusion']:g}" if record.get("fusion") is not None else "",
                              "translate-test" if record.get("translate_test") else ""])
            ) or "global"  # fmt: skip
            gallery = record.get("gallery") or ""
            if record.get("gallery_size") is not None:
                gallery = f"{gallery} ({record['gallery_size']} images)"
            corpus = record.get("corpus")
            if corpus and Path(corpus).resolve() != Path(self.recipe.data.corpus).resolve():
                gallery = f"{gallery}, corpus {Path(corpus).name}"
            metrics = [round(record.get(c, float("nan")), 1) for c in METRIC_COLUMNS]
            rows.append([record.get("lang", path.stem), record.get("split", ""), mode, gallery, *metrics])
        return pd.DataFrame(rows, columns=["lang", "split", "scoring", "gallery", *METRIC_COLUMNS])

    def validation_curve(self) -> pd.DataFrame:
        """step, lang, sumr of every validation evaluation in metrics.jsonl."""
        val = self.recipe.data.val_split
        rows = [(r["step"], r["lang"], r["sumr"]) for r in self._records(METRICS_FILE) if r.get("split") == val and "sumr" in r]
        return pd.DataFrame(rows, columns=["step", "lang", "sumr"])

    def loss_curves(self) -> pd.DataFrame:
        """step, term, value of the training loss and each of its terms in train_log.jsonl."""
        rows = []
        for record in self._records(TRAIN_LOG_FILE):
            for key, value in record.items():
                if key not in TRAIN_LOG_SKIP and isinstance(value, (int, float)):
                    rows.append((record["step"], key, float(value)))
        return pd.DataFrame(rows, columns=["step", "term", "value"])

    def media_roots(self) -> list[str]:
        """Folders whose images the app shows (Gradio serves files from these only)."""
        roots = set()
        if self.searcher is not None:
            roots.update(os.path.dirname(p) for p in self.searcher.index.paths)
        try:
            roots.update(str(p.parent.resolve()) for p in self.corpus.image_paths(self.test_split).values())
        except LeccrError:
            pass
        return sorted(roots)


# ---------------------------------------------------------------------- the Gradio app


def _error(error: LeccrError) -> gr.Error:
    return gr.Error(str(error))


def build_app(app: RunApp) -> gr.Blocks:
    """The Blocks app: tabs Search, Test queries and Run."""
    with gr.Blocks(title=f"leccr: {app.run_dir.name}", analytics_enabled=False) as blocks:
        gr.Markdown(f"## leccr: run `{app.run_dir}`")
        with gr.Tab("Search"):
            _search_tab(app)
        with gr.Tab("Test queries"):
            _test_tab(app)
        with gr.Tab("Run"):
            _run_tab(app)
    return blocks


def _search_tab(app: RunApp) -> None:
    if app.searcher is None:
        gr.Markdown(f"No index: start the app with `--index INDEX` (build one with `leccr index {app.run_dir} CORPUS --out INDEX`).")
        return
    info = app.searcher.index.info
    gr.Markdown(f"Index `{app.searcher.index.folder}`: {info.count} images of split `{info.split}` of `{info.corpus}`. Type a query in any language.")
    with gr.Row():
        query = gr.Textbox(label="Query", placeholder="ein roter Kreis links", scale=4)
        k = gr.Slider(1, min(100, info.count), value=min(DEFAULT_K, info.count), step=1, label="k", scale=1)
        fusion = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="fusion α", info="1: the global score only", scale=1, visible=app.has_slots)
    button = gr.Button("Search", variant="primary")
    note = gr.Markdown()
    gr.Markdown("Top hits: click one to see its semantic slots.")
    # no label on the gallery: Gradio draws it over the first images
    gallery = gr.Gallery(label="Top hits", show_label=False, columns=5, height="auto", object_fit="contain")
    details = gr.HTML()
    table = gr.Dataframe(label="Hits", wrap=True, column_widths=["7%", "8%", "12%", "73%"])
    hits_state = gr.State([])

    def run_search(text, top, alpha):
        try:
            hits = app.search(text, int(top), None if alpha >= 1.0 else float(alpha))
        except LeccrError as error:
            raise _error(error) from None
        return app.gallery(hits), app.hit_table(hits), app.slot_view(hits[0] if hits else None), app.truncation_note(text), hits

    def select(hits, event: gr.SelectData):
        return app.slot_view(hits[event.index] if hits and event.index < len(hits) else None)

    outputs = [gallery, table, details, note, hits_state]
    button.click(run_search, [query, k, fusion], outputs, api_name="search")
    query.submit(run_search, [query, k, fusion], outputs, api_name=False)
    gallery.select(select, [hits_state], details, api_name=False)


def _test_tab(app: RunApp) -> None:
    try:
        langs = app.test_languages()
    except LeccrError as error:
        gr.Markdown(f"The run's corpus cannot be read: {error}")
        return
    if not langs:
        gr.Markdown(f"The run's test split `{app.test_split}` has no human captions.")
        return
    first = app.recipe.data.target_langs[0] if app.recipe.data.target_langs and app.recipe.data.target_langs[0] in langs else langs[0]

    def choices(lang):
        return [(f"{text}  [{owner}]", i) for i, (text, owner) in enumerate(app.test_captions(lang))]

    gr.Markdown(
        f"Human captions of the test split `{app.test_split}` of `{app.corpus.path}`, each ranked against its language's "
        "test gallery, as `leccr evaluate` ranks it."
    )
    with gr.Row():
        lang = gr.Dropdown(langs, value=first, label="Language", scale=1)
        caption = gr.Dropdown(choices(first), value=0, label="Test caption", scale=4)
        k = gr.Slider(1, 50, value=DEFAULT_K, step=1, label="k", scale=1)
    button = gr.Button("Rank the test gallery", variant="primary")
    verdict = gr.Markdown()
    gallery = gr.Gallery(label="Top hits (✔ the ground truth)", show_label=False, columns=6, height="auto", object_fit="contain")

    def run_test(language, position, top):
        try:
            hits, owner, rank = app.test_query(language, int(position), int(top))
        except LeccrError as error:
            raise _error(error) from None
        items = app.gallery(hits, marked=owner)
        gallery_index = app.test_gallery(language).index
        total = len(gallery_index)
        if rank > len(hits):
            items.append((gallery_index.paths[gallery_index.image_ids.index(owner)], f"✔ #{rank}  {owner}"))
        found = "a hit at rank 1" if rank == 1 else f"rank {rank}"
        return items, f"Ground truth **{owner}** (marked ✔): {found} of {total} (R@1 {'yes' if rank <= 1 else 'no'}, R@5 {'yes' if rank <= 5 else 'no'}, R@10 {'yes' if rank <= 10 else 'no'})"

    lang.change(lambda language: gr.Dropdown(choices=choices(language), value=0), lang, caption, api_name=False)
    button.click(run_test, [lang, caption, k], [gallery, verdict], api_name="test_query")


def _run_tab(app: RunApp) -> None:
    gr.Markdown(f"Evaluation files in `{app.run_dir / EVAL_DIR}`, validation and training logs of the run.")
    table = gr.Dataframe(app.eval_table(), label="Evaluation (R@K in %, SumR)")
    # one plot per row: the loss has up to nine terms, whose legend needs the width
    sumr = gr.LinePlot(app.validation_curve(), x="step", y="sumr", color="lang", title=f"Validation SumR ({app.recipe.data.val_split})")
    losses = gr.LinePlot(app.loss_curves(), x="step", y="value", color="term", title="Training loss and its terms")
    refresh = gr.Button("Reload the run's logs")
    refresh.click(lambda: (app.eval_table(), app.validation_curve(), app.loss_curves()), None, [table, sumr, losses], api_name="run_logs")


# ---------------------------------------------------------------------- serving


def check_port(host: str, port: int) -> None:
    """Refuse a port another program listens on, in one line."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise LeccrError(
                f"port {port} on {host} is already in use ({error.strerror})",
                "choose another with --port, or leave --port out to take a free one",
            ) from None


def _offline_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts (the default fetches web fonts, which offline machines cannot)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def serve(app: RunApp, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True):
    """Start the app; returns (blocks, url). `block=False` returns at once with the server running in a thread."""
    if port is not None:
        check_port(host, port)
    blocks = build_app(app)
    try:
        _, url, _ = blocks.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=False,
            show_error=True, allowed_paths=app.media_roots(), theme=_offline_theme(),
        )  # fmt: skip
    except OSError as error:
        raise LeccrError(f"cannot serve on {host}:{port or 'a free port'} ({error})", "choose another --port or --host") from None
    return blocks, url
