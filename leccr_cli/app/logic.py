"""The app's logic over a trained run (`leccr app`): search, the slot view, test queries and the run's logs,
as plain methods tested without a browser (`ui.py` wires them to Gradio).

- **Search**: a query in any language, its top-k images of an index (`retrieval/index/`) with
  the score and description of every hit; for the selected hit, which words of its
  description each semantic slot attends to most (`model/explain.py`).
- **Test queries**: a human caption of the run's test split in one language; its top-k images
  of that language's test gallery (the images evaluation ranks it against), the ground-truth
  image marked, and its rank (counted as evaluation counts it: ties against the ground truth).
- **Run**: the evaluation table per language, validation SumR per language over steps and
  the loss terms over steps (`eval/`, `metrics.jsonl`, `train_log.jsonl`).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from leccr_cli.config import uses_slot_embeddings
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.defaults import RECALL_KS, TOP_K
from leccr_cli.errors import LeccrError, Param, Step, parts
from leccr_cli.model.explain import slot_words
from leccr_cli.retrieval.encode import encode_gallery
from leccr_cli.retrieval.evaluate import language_galleries, query_captions
from leccr_cli.retrieval.index.format import IndexInfo, ModelIdentity
from leccr_cli.retrieval.index.reader import Index
from leccr_cli.retrieval.search import Hit, Searcher, top_k
from leccr_cli.runs.layout import EVAL_DIR, METRICS_FILE, TRAIN_LOG_FILE, load_run
from leccr_cli.runs.logs import read_records
from leccr_cli.utils.devices import select_device

SLOT_TOP_WORDS = 5
TRAIN_LOG_SKIP = ("step", "epoch", "lr", "seconds")  # train_log.jsonl keys that are not loss terms
METRIC_COLUMNS = tuple(f"{d}_r{k}" for d in ("t2i", "i2t") for k in RECALL_KS) + ("sumr",)


class RunApp:
    """The app's logic over a run (its best model) and, optionally, an index built by that model."""

    def __init__(
        self, run: str | Path, index: str | Path | None = None, device: str | None = None, overrides: Sequence[str] = ()
    ):
        self.run_dir = Path(run)
        self.recipe, self.model = load_run(self.run_dir, list(overrides))
        self.model.to(select_device(device)).eval()
        self.searcher: Searcher | None = None
        if index is not None:
            opened = Index.open(index)
            opened.check_model()
            mine = ModelIdentity.of_run(self.run_dir)
            if opened.info.model.weights != mine.weights:
                raise LeccrError(
                    f"index {index} was built by another model (run {opened.info.model.run}), not by {self.run_dir}",
                    parts("build one with this run: ", self._index_step()),
                )
            # the same search as `Searcher.open`, with the model already loaded (its text side is that of the query
            # model)
            self.searcher = Searcher(opened, self.model)
        self._test: Searcher | None = None
        self._test_galleries: dict[str, Searcher] = {}
        self._corpus: Corpus | None = None

    # ------------------------------------------------------------------ search

    @property
    def has_slots(self) -> bool:
        return uses_slot_embeddings(self.model.config)

    def search(self, query: str, k: int = TOP_K, fusion: float | None = None) -> list[Hit]:
        """The top-k hits of the index for `query` (a `LeccrError` when there is no index or the query is empty)."""
        if self.searcher is None:
            raise LeccrError(
                "no index to search",
                parts(
                    "start the app with ", Param("index", metavar="INDEX"), " (build it with ", self._index_step(), ")"
                ),
            )
        hits, _ = self.searcher.search([query], int(k), fusion=fusion)
        return hits[0]

    def _index_step(self) -> Step:
        return Step(
            "index", self.run_dir, Param("corpus", metavar="CORPUS"), out=Param("out", metavar="INDEX"),
            python=f"build_index({str(self.run_dir)!r}, corpus, out)",
        )  # fmt: skip

    def truncation_note(self, query: str) -> str:
        """A line saying the query was cut at the text encoder's limit, or ''."""
        if self.searcher is None or not query.strip() or not self.searcher.check_queries([query]):
            return ""
        return (f"The query is longer than the text encoder's limit ({self.model.config.text.max_tokens} tokens) and "
            f"was cut to it.")

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

    def slot_view(self, hit: Hit | None) -> str:
        """HTML: the hit's description, and per slot its words shaded by attention with the top words listed."""
        if hit is None:
            return ""
        head = f"<p><b>#{hit.rank} {html.escape(hit.image_id)}</b> (score {hit.score:.3f})</p>"
        if not hit.description:
            return head + "<p><i>No description.</i></p>"
        words, slots = slot_words(self.model, hit.description)
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
            "<table><tr><th></th><th>most attended words</th><th>the description, shaded by the slot's "
            "attention</th></tr>"
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
            if (
                index is not None
                and index.info.corpus == corpus_path
                and index.info.split == self.test_split
                and index.info.dtype == "fp32"
            ):
                self._test = self.searcher
            else:
                self._test = Searcher(self._embed_test_gallery(), self.model)
        return self._test

    def _embed_test_gallery(self) -> Index:
        recipe = self.recipe
        image_ids, embeds = encode_gallery(
            self.model, self.corpus, self.test_split, descriptions=recipe.data.descriptions,
            video_features=recipe.data.video_features, batch_size=recipe.eval.batch_size,
        )  # fmt: skip
        paths = self.corpus.image_paths(self.test_split)
        descriptions = (
            self.corpus.descriptions(self.recipe.data.descriptions)
            if (self.recipe.data.descriptions in self.corpus.description_sources())
            else {}
        )
        info = IndexInfo(
            model=ModelIdentity.of_run(self.run_dir),
            corpus=str(self.corpus.path.resolve()),
            split=self.test_split,
            descriptions=self.recipe.data.descriptions,
            count=len(image_ids),
            dim=embeds.global_embeds.shape[1],
            slots=None if embeds.slot_embeds is None else embeds.slot_embeds.shape[1],
            slot_mask=embeds.slot_mask is not None,
            dtype="fp32",
        )
        items = {
            "image_id": image_ids,
            "path": [str(paths[i].resolve()) for i in image_ids],
            "description": [descriptions.get(i, "") for i in image_ids],
        }
        return Index.in_memory(self.run_dir, info, items, embeds)

    def test_gallery(self, lang: str) -> Searcher:
        """The test gallery `lang`'s captions are ranked against, as `leccr evaluate` ranks them (`eval.gallery`)."""
        if lang not in self._test_galleries:
            whole = self.test_searcher()
            own = language_galleries(self.corpus, self.test_split, [lang], self.recipe.eval.gallery)[lang]
            if own == whole.index.image_ids:
                self._test_galleries[lang] = whole
            else:
                row = {image_id: i for i, image_id in enumerate(whole.index.image_ids)}
                self._test_galleries[lang] = Searcher(whole.index.select([row[i] for i in own]), self.model)
        return self._test_galleries[lang]

    def test_query(self, lang: str, position: int, k: int = TOP_K) -> tuple[list[Hit], str, int]:
        """The top-k hits of the test caption at `position` of `lang` in its test gallery, its image id and that image's
        rank.

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
        rows = [
            (r["step"], r["lang"], r["sumr"])
            for r in self._records(METRICS_FILE)
            if r.get("split") == val and "sumr" in r
        ]
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
