"""`leccr search`: the exact top-k images of an index for text queries in any language.

A search loads only what a query needs: the run's tokenizer, text encoder and text head
(`model.factory.load_query_model`; the image side is never read) and the index's embeddings,
memory-mapped. Queries are cleaned and embedded by `retrieval.encode.encode_texts`, exactly
as evaluation embeds its queries, and scored with the model's own `score` (so `fusion` means
what it means there). Top-k is exact, in two passes: the index's int8 codes give every
row a first-pass score within a known bound of its float32 score (`prefilter`); the rows that
can still be among the best k are then read from the embeddings and scored in float32 by
`model.score`. Ties are broken by the gallery order.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from leccr_cli.config import check_scoring
from leccr_cli.defaults import SEARCH_MEMORY_BUDGET_MB, TOP_K
from leccr_cli.errors import SearchError, at_least
from leccr_cli.model.factory import load_query_model
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel, best_slot_scores, fuse_scores
from leccr_cli.retrieval.encode import encode_texts
from leccr_cli.retrieval.index.reader import Index, IndexCodes
from leccr_cli.retrieval.prefilter import approximate_scores, error_bound, fused_error_bound, pad_queries
from leccr_cli.runs.layout import MODEL_DIR

QUERY_BATCH = 256  # queries embedded and scored together
ROWS_PER_TASK = 1 << 17  # rows a worker scans before it takes the next task (smaller indexes: one worker)
EXACT_ROWS = 1024  # candidate rows read and scored in float32 at a time
TWO_PASS_QUERIES = 24  # more queries at once score every row in float32 (see `top_k`)
# a block's best first-pass rows taken at once (one topk); the floor is looked for beyond them only when all pass
PRESELECT = 64


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
    k: int = TOP_K  # results per query (after clamping to the index size)
    clamped_from: int | None = None  # the k asked for, when larger than the index


def _block_rows(queries: int, count: int, memory_budget_mb: float, row_bytes: int) -> int:
    """Rows whose scores are held at once ([queries, rows] x `row_bytes`) within the budget, at least 1,024."""
    return min(count, max(EXACT_ROWS, int(memory_budget_mb * 2**20) // (row_bytes * queries)))


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
        pool = ThreadPoolExecutor(
            workers, thread_name_prefix="leccr-scan", initializer=torch.set_num_threads, initargs=(1,)
        )
        started = threading.Barrier(workers)
        for future in [pool.submit(started.wait) for _ in range(workers)]:
            future.result()
        torch.set_num_threads(configured)
        _pools[workers] = pool
    return pool


def _keep_best(scores, rows, new_scores, new_rows, k: int):
    """The best k of two sets of (scores [Q, n], rows [Q, n]); among equal scores the earlier row wins."""
    scores, rows = torch.cat([scores, new_scores], dim=1), torch.cat([rows, new_rows], dim=1)
    order = rows.argsort(dim=1)
    scores, rows = scores.gather(1, order), rows.gather(1, order)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), rows.gather(1, order)


def _first_pass(queries, codes: IndexCodes, slot_mask, fusion, start: int, stop: int) -> torch.Tensor:
    """[Q, stop - start] first-pass scores of rows start..stop-1, fused like `model.score` when `fusion` is given."""
    rows = codes.global_rows
    scores = approximate_scores(queries, rows.codes[start:stop], rows.scales[start:stop])
    if fusion is None:
        return scores
    slots = codes.slot_rows
    width, per_image = slots.codes.shape[-1], slots.codes.shape[1]
    per_slot = approximate_scores(
        queries, slots.codes[start:stop].reshape(-1, width), slots.scales[start:stop].reshape(-1)
    )
    mask = None if slot_mask is None else slot_mask[start:stop]
    return fuse_scores(scores, best_slot_scores(per_slot.view(len(scores), stop - start, per_image), mask), fusion)


def _exact(model, queries, index: Index, rows: torch.Tensor | slice, fusion) -> torch.Tensor:
    """[Q, rows] float32 scores (`model.score`) of some rows of the index (a tensor of rows, or a slice)."""
    gallery = ImageEmbeddings(index.global_embeds[rows].float())
    if fusion is not None:
        mask = None if index.slot_mask is None else index.slot_mask[rows]
        gallery = ImageEmbeddings(gallery.global_embeds, index.slot_embeds[rows].float(), mask)
    return model.score(queries, gallery, fusion=fusion)


class _KnownKth:
    """The best k-th float32 score of any finished task, per query: no row scoring below it can be among the best k."""

    def __init__(self, queries: int):
        self.scores = torch.full((queries,), float("-inf"))
        self.lock = threading.Lock()

    def kth(self, best_scores: torch.Tensor, k: int) -> torch.Tensor:
        """The known k-th best, or the task's own (`best_scores`, best first) when it is better."""
        with self.lock:
            known = self.scores.clone()
        return torch.maximum(known, best_scores[:, k - 1]) if best_scores.shape[1] == k else known

    def update(self, best_scores: torch.Tensor, k: int) -> None:
        if best_scores.shape[1] == k:
            with self.lock:
                torch.maximum(self.scores, best_scores[:, k - 1], out=self.scores)


def _scan(
    model,
    queries,
    padded,
    bound,
    known: _KnownKth,
    index: Index,
    k: int,
    fusion,
    first_row: int,
    end_row: int,
    block: int,
):
    """The best k (scores, rows) of rows first_row..end_row-1 for every query, best first.

    A block's rows are first scored from their int8 codes; a row can be among the best k only
    if its first-pass score is at least the block's k-th best minus twice `bound`, and at least
    the k-th best float32 score known (this task's or a finished one's) minus `bound`. Those
    rows (of any query) are then scored in float32. `padded`: the queries as the int8 kernel takes them.
    """
    best_scores = torch.empty(len(queries), 0)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long)
    with torch.inference_mode():
        for start in range(first_row, end_row, block):
            stop = min(start + block, end_row)
            first = _first_pass(padded, index.codes, index.slot_mask, fusion, start, stop)
            values, positions = first.topk(min(max(k, PRESELECT), stop - start), dim=1)
            floor = torch.maximum(values[:, min(k, stop - start) - 1] - bound, known.kth(best_scores, k)) - bound
            floor32 = (
                floor - floor.abs() * 2**-23
            ).float()  # at or below the float64 floor: no row at the floor is missed
            if values.shape[1] < stop - start and bool((values[:, -1] >= floor32).any()):
                candidates = (first >= floor32[:, None]).any(dim=0).nonzero().flatten()  # more than the preselected
            else:
                candidates = positions[values >= floor32[:, None]].unique()
            candidates = candidates + start
            for chunk in candidates.split(EXACT_ROWS):
                scores = _exact(model, queries, index, chunk, fusion)
                best_scores, best_rows = _keep_best(best_scores, best_rows, scores, chunk.expand(len(queries), -1), k)
    known.update(best_scores, k)
    return best_scores, best_rows


def _scan_every_row(model, queries, index: Index, k: int, fusion, first_row: int, end_row: int, block: int):
    """The best k (scores, rows) of rows first_row..end_row-1 for every query, every row scored in float32.

    Rows are converted `EXACT_ROWS` at a time (a copy that stays in the CPU cache) and their
    scores gathered in blocks of `block` rows; each block's best k (with every row tied at the
    k-th place) join the best k kept.
    """
    best_scores = torch.empty(len(queries), 0)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long)
    scores = torch.empty(len(queries), min(block, end_row - first_row))
    with torch.inference_mode():
        for start in range(first_row, end_row, block):
            stop = min(start + block, end_row)
            for first in range(start, stop, EXACT_ROWS):
                last = min(first + EXACT_ROWS, stop)
                scores[:, first - start : last - start] = _exact(model, queries, index, slice(first, last), fusion)
            found = scores[:, : stop - start]
            values, positions = found.topk(min(k + 1, stop - start), dim=1)
            if values.shape[1] > k and bool((values[:, k] == values[:, k - 1]).any()):
                # a tie at the k-th place: every row tied with it joins, and the gallery order decides
                positions = (found >= values[:, k - 1 : k]).any(dim=0).nonzero().flatten().expand(len(queries), -1)
                values = found.gather(1, positions)
            else:
                values, positions = values[:, :k], positions[:, :k]
            best_scores, best_rows = _keep_best(best_scores, best_rows, values, positions + start, k)
    return best_scores, best_rows


def top_k(
    model: LeccrModel,
    query_embeds: torch.Tensor,
    index: Index,
    k: int,
    *,
    fusion: float | None = None,
    memory_budget_mb: float = SEARCH_MEMORY_BUDGET_MB,
    every_row: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [Q, k], rows [Q, k]) of the best k rows of `index` for every query, best first.

    Exact: the result is the best k by `model.score` in float32. Up to `TWO_PASS_QUERIES`
    queries, an int8 first pass decides which rows need that score (see `_scan`); more
    queries at once score every row in float32 (`_scan_every_row`: one matrix product
    serves them all, which beats the int8 kernel's one-query-at-a-time sums); `every_row`
    True or False chooses that scan or the two passes whatever the number of queries. Rows are
    scanned in blocks whose scores fit `memory_budget_mb`; tasks of `ROWS_PER_TASK` rows go
    to as many single-threaded workers as torch has threads (`_scan_pool`), each taking the
    next task when it is done. Equal scores keep the gallery order.
    """
    count = len(index)
    k = min(k, count)
    queries = query_embeds.float().cpu()
    ranges = [(start, min(start + ROWS_PER_TASK, count)) for start in range(0, count, ROWS_PER_TASK)]
    workers = max(1, min(torch.get_num_threads(), len(ranges)))
    if every_row or (every_row is None and len(queries) > TWO_PASS_QUERIES):
        block = _block_rows(len(queries), ROWS_PER_TASK, memory_budget_mb / workers, 4)
        scan = lambda r: _scan_every_row(model, queries, index, k, fusion, r[0], r[1], block)  # noqa: E731
        return _merged(_scan_pool(workers).map(scan, ranges), len(queries), k)
    codes = index.codes
    bound = error_bound(queries, codes.global_rows.max_norm, codes.global_rows.max_residual)
    row_bytes = 6  # a bfloat16 and a float32 first-pass score per row and query
    if fusion is not None:
        slots = codes.slot_rows
        slot_bound = error_bound(queries, slots.max_norm, slots.max_residual)
        bound = fused_error_bound(queries, bound, slot_bound, fusion, [codes.global_rows, slots])
        row_bytes *= 1 + slots.codes.shape[1]
    block = _block_rows(len(queries), ROWS_PER_TASK, memory_budget_mb / workers, row_bytes)
    known = _KnownKth(len(queries))
    padded = pad_queries(queries, codes.width)
    scan = lambda r: _scan(model, queries, padded, bound, known, index, k, fusion, r[0], r[1], block)  # noqa: E731
    return _merged(_scan_pool(workers).map(scan, ranges), len(queries), k)


def _merged(parts, queries: int, k: int):
    """The best k of the tasks' best k."""
    best_scores, best_rows = torch.empty(queries, 0), torch.empty(queries, 0, dtype=torch.long)
    for scores, rows in parts:
        best_scores, best_rows = _keep_best(best_scores, best_rows, scores, rows, k)
    return best_scores, best_rows


class Searcher:
    """An index with the model that built it (its query side is enough: `Searcher.open`)."""

    def __init__(self, index: Index, model: LeccrModel):
        self.index = index
        self.model = model
        self.cleaning = model.preprocessing.text_cleaning

    @classmethod
    def open(cls, index_folder: str | Path, device: str = "cpu") -> "Searcher":
        """Open an index and load the query side of its model; a stale index is refused with the step rebuilding it."""
        index = Index.open(index_folder)
        index.check_model()
        return cls(index, load_query_model(Path(index.info.model.run) / MODEL_DIR, device=device))

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
                raise SearchError(
                    f"{where}the query {query!r} has no words (punctuation is removed)", "type some words"
                )
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
        return encode_texts(self.model, list(queries), batch_size=QUERY_BATCH)

    def search(
        self,
        queries: Sequence[str],
        k: int = TOP_K,
        *,
        fusion: float | None = None,
        names: Sequence[str] | None = None,
        memory_budget_mb: float = SEARCH_MEMORY_BUDGET_MB,
    ) -> tuple[list[list[Hit]], QueryNotes]:
        """The top-k hits of every query (k is clamped to the index size) and what to tell the user.

        `fusion` α scores α·global + (1 − α)·best slot (the index must hold slot embeddings);
        `names` name the queries in messages (e.g. `FILE:LINE`).
        """
        at_least("k", k)
        check_scoring(fusion, slot_embeddings=self.has_slots, what="index")
        notes = QueryNotes(truncated=self.check_queries(queries, names), k=min(k, len(self.index)))
        if k > len(self.index):
            notes.clamped_from = k
        hits: list[list[Hit]] = []
        for start in range(0, len(queries), QUERY_BATCH):
            embeds = self.embed(queries[start : start + QUERY_BATCH])
            scores, rows = top_k(
                self.model, embeds, self.index, notes.k, fusion=fusion, memory_budget_mb=memory_budget_mb
            )
            for query_scores, query_rows in zip(scores.tolist(), rows.tolist()):
                hits.append(
                    [self.hit(rank, score, row) for rank, (score, row) in enumerate(zip(query_scores, query_rows), 1)]
                )
        return hits, notes

    def hit(self, rank: int, score: float, row: int) -> Hit:
        image_id, path, description = self.index.item(row)
        return Hit(rank, score, image_id, path, description, row)
