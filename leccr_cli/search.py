"""`leccr search`: the exact top-k images of an index for text queries in any language.

A search loads only what a query needs: the run's tokenizer, text encoder and text head
(`model.factory.load_query_model`; the image side is never read) and the index's embeddings,
memory-mapped. Queries are cleaned and embedded by `evaluate.encode_texts`, exactly as
`leccr evaluate` embeds its queries, and scored with the model's own `score` (so `--fusion`
means what it means there). Top-k is exact: every row is scored, in chunks of rows whose
temporaries fit a memory budget, keeping the best k of each chunk; ties are broken by the
gallery order.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from leccr_cli.config import Recipe
from leccr_cli.data.loading import TextCleaning
from leccr_cli.errors import LeccrError, ModelError
from leccr_cli.evaluate import encode_texts
from leccr_cli.index import Index
from leccr_cli.model.factory import load_query_model
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel
from leccr_cli.runs import MODEL_DIR, read_run_recipe

DEFAULT_K = 10
DEFAULT_MEMORY_BUDGET_MB = 256
QUERY_BATCH = 256  # queries embedded and scored together
ROWS_PER_TASK = 1 << 16  # rows a worker scans before it takes the next task (smaller indexes: one worker)
CONVERT_ROWS = 1024  # index rows converted to float32 at a time (1 MiB at 256 dims: it stays in the CPU's L2 cache)


class SearchError(LeccrError):
    """A query or a search request cannot be answered."""


@dataclass
class Hit:
    """One result: its rank (1-based), score, and the item of the index."""

    rank: int
    score: float
    image_id: str
    path: str
    description: str
    row: int  # row of the index


@dataclass
class QueryNotes:
    """What a user should hear once about a batch of queries."""

    truncated: list[int] = field(default_factory=list)  # queries cut at the text encoder's limit
    k: int = DEFAULT_K  # results per query (after clamping to the index size)
    clamped_from: int | None = None  # the k asked for, when larger than the index


def _block_rows(queries: int, count: int, memory_budget_mb: float) -> int:
    """Rows whose scores are held at once ([queries, rows] float32 within the budget), at least one conversion chunk."""
    return min(count, max(CONVERT_ROWS, int(memory_budget_mb * 2**20) // (4 * queries)))


_pools: dict[int, ThreadPoolExecutor] = {}


def _scan_pool(workers: int) -> ThreadPoolExecutor:
    """Threads that run torch single-threaded (made once per size).

    The scan is many small ops: run with several OpenMP threads, every op ends at a barrier
    that stalls whenever another process holds a core (measured 100x slower on a busy
    machine). Single-threaded workers that take tasks of rows from a queue use the cores
    without barriers, and a worker slowed by another process simply takes fewer tasks (an
    even split waits for the slowest: measured 2x slower than one worker on a busy machine).
    Their initializer changes torch's default for threads made later, so the caller's
    setting is given back once they exist.
    """
    pool = _pools.get(workers)
    if pool is None:
        configured = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="leccr-scan", initializer=torch.set_num_threads, initargs=(1,))
        started = threading.Barrier(workers)
        for future in [pool.submit(started.wait) for _ in range(workers)]:
            future.result()
        torch.set_num_threads(configured)
        _pools[workers] = pool
    return pool


def _scan(model, queries, index: Index, k: int, fusion, first_row: int, end_row: int, block: int):
    """The best k (scores, rows) of rows first_row..end_row-1 for every query, in no particular order."""
    convert = min(CONVERT_ROWS, end_row - first_row)
    global_buffer = torch.empty(convert, index.info.dim)
    slot_buffer = torch.empty(convert, index.info.slots, index.info.dim) if fusion is not None else None
    scores = torch.empty(len(queries), min(block, end_row - first_row))
    best_scores = torch.empty(len(queries), 0)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long)
    with torch.inference_mode():
        for start in range(first_row, end_row, block):
            stop = min(start + block, end_row)
            for first in range(start, stop, convert):
                last = min(first + convert, stop)
                rows = global_buffer[: last - first]
                rows.copy_(index.global_embeds[first:last])
                gallery = ImageEmbeddings(rows)
                if slot_buffer is not None:
                    slots = slot_buffer[: last - first]
                    slots.copy_(index.slot_embeds[first:last])
                    mask = None if index.slot_mask is None else index.slot_mask[first:last]
                    gallery = ImageEmbeddings(rows, slots, mask)
                scores[:, first - start : last - start] = model.score(queries, gallery, fusion=fusion)
            values, positions = scores[:, : stop - start].topk(min(k, stop - start), dim=1)
            best_scores = torch.cat([best_scores, values], dim=1)
            best_rows = torch.cat([best_rows, positions + start], dim=1)
            if best_scores.shape[1] > k:
                best_scores, chosen = best_scores.topk(k, dim=1)
                best_rows = best_rows.gather(1, chosen)
    return best_scores, best_rows


def top_k(
    model: LeccrModel,
    query_embeds: torch.Tensor,
    index: Index,
    k: int,
    *,
    fusion: float | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [Q, k], rows [Q, k]) of the best k rows of `index` for every query, best first.

    Exact: every row is scored with `model.score` in float32. Rows are converted to float32
    `CONVERT_ROWS` at a time (a copy that stays in the CPU cache), their scores gathered in
    blocks that fit `memory_budget_mb`, and the best k of each block kept. Tasks of
    `ROWS_PER_TASK` rows go to as many single-threaded workers as torch has threads
    (`_scan_pool`), each taking the next task when it is done. Equal scores keep the gallery order.
    """
    count = len(index)
    k = min(k, count)
    queries = query_embeds.float().cpu()
    ranges = [(start, min(start + ROWS_PER_TASK, count)) for start in range(0, count, ROWS_PER_TASK)]
    workers = max(1, min(torch.get_num_threads(), len(ranges)))
    block = _block_rows(len(queries), ROWS_PER_TASK, memory_budget_mb / workers)
    parts = list(_scan_pool(workers).map(lambda r: _scan(model, queries, index, k, fusion, r[0], r[1], block), ranges))
    best_scores = torch.cat([scores for scores, _ in parts], dim=1)
    best_rows = torch.cat([rows for _, rows in parts], dim=1)
    # best first; among equal scores, the earlier row first (topk's order of ties is arbitrary)
    order = best_rows.argsort(dim=1)
    best_scores, best_rows = best_scores.gather(1, order), best_rows.gather(1, order)
    order = best_scores.argsort(dim=1, descending=True, stable=True)
    return best_scores.gather(1, order)[:, :k], best_rows.gather(1, order)[:, :k]


class Searcher:
    """An index with the query side of the model that built it."""

    def __init__(self, index: Index, recipe: Recipe, model: LeccrModel):
        self.index = index
        self.recipe = recipe
        self.model = model
        self.cleaning = TextCleaning.from_recipe(recipe.data)

    @classmethod
    def open(cls, index_folder: str | Path, device: str = "cpu") -> "Searcher":
        """Open an index and load the query side of its model; a stale index is refused with the rebuild command."""
        index = Index.open(index_folder)
        index.check_model()
        run = Path(index.info.model.run)
        recipe = read_run_recipe(run)
        model = load_query_model(run / MODEL_DIR, device=device)
        return cls(index, recipe, model)

    @property
    def has_slots(self) -> bool:
        return self.index.slot_embeds is not None

    def check_queries(self, queries: Sequence[str], names: Sequence[str] | None = None) -> list[int]:
        """Refuse empty queries (naming them); return the positions of queries longer than the text encoder's limit."""
        if not queries:
            raise SearchError("no queries", "give a query text, or a file with one query per line")
        uncut = replace(self.cleaning, max_words=max(len(q.split()) for q in queries) + 1)
        cleaned = []
        for position, query in enumerate(queries):
            where = f"{names[position]}: " if names is not None else ""
            if not query.strip():
                raise SearchError(f"{where}the query is empty", "type what the images should show, in any language")
            if not uncut(query):
                raise SearchError(f"{where}the query {query!r} has no words (punctuation is removed)", "type some words")
            cleaned.append(self.cleaning(query))
        max_tokens = self.model.config.text.max_tokens
        tokens = self.model.tokenizer(cleaned, truncation=False)["input_ids"]
        return [
            position
            for position, query in enumerate(queries)
            if len(uncut(query).split()) > self.cleaning.max_words or len(tokens[position]) > max_tokens
        ]

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """[Q, D] query embeddings, cleaned and tokenized as `leccr evaluate` does."""
        return encode_texts(self.model, list(queries), self.recipe, batch_size=QUERY_BATCH)

    def search(
        self,
        queries: Sequence[str],
        k: int = DEFAULT_K,
        *,
        fusion: float | None = None,
        names: Sequence[str] | None = None,
        memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    ) -> tuple[list[list[Hit]], QueryNotes]:
        """The top-k hits of every query (k is clamped to the index size) and what to tell the user."""
        if k < 1:
            raise SearchError(f"-k {k}: must be at least 1")
        if fusion is not None and not self.has_slots:
            raise ModelError(
                "--fusion needs slot embeddings; this index has none",
                "its model is a baseline, or multi_level_matching and english_guidance are both off",
            )
        notes = QueryNotes(truncated=self.check_queries(queries, names), k=min(k, len(self.index)))
        if k > len(self.index):
            notes.clamped_from = k
        hits: list[list[Hit]] = []
        for start in range(0, len(queries), QUERY_BATCH):
            embeds = self.embed(queries[start : start + QUERY_BATCH])
            scores, rows = top_k(self.model, embeds, self.index, notes.k, fusion=fusion, memory_budget_mb=memory_budget_mb)
            for query_scores, query_rows in zip(scores.tolist(), rows.tolist()):
                hits.append([self.hit(rank, score, row) for rank, (score, row) in enumerate(zip(query_scores, query_rows), 1)])
        return hits, notes

    def hit(self, rank: int, score: float, row: int) -> Hit:
        image_id, path, description = self.index.item(row)
        return Hit(rank, score, image_id, path, description, row)
