"""Retrieval metrics as pure tensor functions: exact ranks by counting, in memory-bounded chunks.

A score matrix is [n_texts, n_images] (higher = more similar); text j is a caption of image
`text_to_image[j]`, and an image may own any number of captions (none, one, five, ...).

Ranks are 1-based and ties count against the ground truth:

- text->image (t2i): the rank of text j is 1 + the number of *other* images whose score in
  row j is >= the score of its own image.
- image->text (i2t): let `best` be the highest score in column i among image i's captions;
  the rank of image i is 1 + the number of texts that are *not* captions of image i and score
  >= `best` in column i. This is the best rank among its captions when every non-matching
  text wins a tie; another caption of the same image never counts against it (returning
  any of them is a hit). Images without captions have no i2t rank and are left out.

So a constant score matrix (a system that knows nothing) gets the worst possible rank for
every query: R@K is 0 whenever K is below the gallery size, never a flattering 100.

Nothing is sorted: a rank is a count of scores that reach the ground-truth score, taken
over chunks of rows whose size follows a memory budget, and both directions are counted in
the same pass over the rows. A matrix produced block by block (`retrieval_ranks_from_rows`)
takes one more pass to gather the ground-truth scores first.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from leccr_cli.defaults import RECALL_KS
from leccr_cli.errors import EvaluationError

# A chunk of rows holds, per score: the block itself, a float32 copy of it when it is half or
# bfloat16, and a float comparison mask; 16 bytes covers the widest case (8 + 8 for float64).
BYTES_PER_SCORE = 16
# On the CPU, chunks larger than this many scores are no faster (measured on 25,000 x 5,000),
# so a larger budget is not spent there.
CPU_CHUNK_SCORES = 1 << 24


class Ranks(NamedTuple):
    """1-based ranks of every query.

    `t2i[j]` is the rank of text j's image; `i2t[i]` is the best rank among image i's
    captions, and 0 for an image without captions (it is left out of the i2t metrics).
    """

    t2i: Tensor
    i2t: Tensor


def _rows_per_chunk(n_images: int, memory_budget_mb: float, device: str = "cpu") -> int:
    """Rows of the score matrix to process at once so one chunk's temporaries fit the budget.

    Never fewer than one row: a budget below one row's temporaries processes one row at a time.
    """
    if not memory_budget_mb > 0:
        raise EvaluationError(
            f"memory budget {memory_budget_mb} MB is not positive", "give a budget in MB such as 1024"
        )
    rows = int(memory_budget_mb * 2**20) // (n_images * BYTES_PER_SCORE)
    if device == "cpu":
        rows = min(rows, CPU_CHUNK_SCORES // n_images)
    return max(1, rows)


def _chunk_bounds(n_texts: int, n_images: int, memory_budget_mb: float, device: str) -> list[tuple[int, int]]:
    rows = _rows_per_chunk(n_images, memory_budget_mb, device)
    return [(start, min(start + rows, n_texts)) for start in range(0, n_texts, rows)]


def retrieval_ranks(scores: Tensor, text_to_image: Tensor | Sequence[int], memory_budget_mb: float = 1024) -> Ranks:
    """Ranks of every text (t2i) and every image (i2t) in a [n_texts, n_images] score matrix.

    Works on CPU and CUDA tensors of any float dtype; half and bfloat16 scores are compared
    in float32 (exactly their values), float64 in float64. See the module docstring for how
    ties count. `memory_budget_mb` bounds the temporaries of one chunk of rows.
    """
    if not isinstance(scores, torch.Tensor):
        raise EvaluationError(f"scores must be a tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise EvaluationError(f"scores must be a 2-D [texts, images] matrix, got shape {tuple(scores.shape)}")
    _check_float(scores.dtype)
    n_texts, n_images = scores.shape
    labels = _labels(text_to_image)
    if labels.numel() != n_texts:
        transposed = labels.numel() == n_images and n_texts != n_images
        raise EvaluationError(
            f"scores of shape {tuple(scores.shape)} (texts x images) do not match image labels of shape "
            f"{tuple(labels.shape)}: there must be one label per text (row)",
            "the matrix looks transposed: pass it as texts x images" if transposed else None,
        )
    _check_size(n_texts, n_images)
    _check_label_range(labels, n_images)
    labels = labels.to(scores.device)

    def score_rows(start: int, stop: int) -> Tensor:
        return scores[start:stop]

    # one reduction over the whole matrix (no temporaries); a finite sum proves every score
    # finite, and only a non-finite one (or an overflow) needs the chunk-by-chunk check
    if not bool(torch.isfinite(scores.sum())):
        bounds = _chunk_bounds(n_texts, n_images, memory_budget_mb, scores.device.type)
        for start, stop in bounds:
            if not _all_finite(_block(score_rows, start, stop, n_images)):
                raise _non_finite_error(score_rows, bounds, start, n_images)
    gt = scores[torch.arange(n_texts, device=scores.device), labels].to(_compare_dtype(scores.dtype))
    return _count_ranks(score_rows, gt, labels, n_images, memory_budget_mb)


def retrieval_ranks_from_rows(
    score_rows: Callable[[int, int], Tensor],
    n_texts: int,
    n_images: int,
    text_to_image: Tensor | Sequence[int],
    memory_budget_mb: float = 1024,
) -> Ranks:
    """Ranks from a score matrix that is produced in row blocks and never held whole.

    `score_rows(start, stop)` returns the [stop - start, n_images] scores of texts
    start..stop-1 (e.g. `text_emb[start:stop] @ image_emb.T`). It is called twice per block
    (once to gather the ground-truth scores, once to count), with the same bounds both
    times, and must return the same values both times.
    """
    _check_size(n_texts, n_images)
    labels = _labels(text_to_image)
    if labels.numel() != n_texts:
        raise EvaluationError(f"{labels.numel()} image labels for {n_texts} texts: there must be one label per text")
    _check_label_range(labels, n_images)

    probe = _block(score_rows, 0, 1, n_images)
    labels = labels.to(probe.device)
    bounds = _chunk_bounds(n_texts, n_images, memory_budget_mb, probe.device.type)
    gt = torch.empty(n_texts, dtype=probe.dtype, device=probe.device)
    for start, stop in bounds:
        block = _block(score_rows, start, stop, n_images)
        if not _all_finite(block):
            raise _non_finite_error(score_rows, bounds, start, n_images)
        gt[start:stop] = block.gather(1, labels[start:stop, None]).squeeze(1)
    return _count_ranks(score_rows, gt, labels, n_images, memory_budget_mb)


def minmax_fused_rows(
    global_rows: Callable[[int, int], Tensor],
    slot_rows: Callable[[int, int], Tensor],
    n_texts: int,
    n_images: int,
    alpha: float,
    memory_budget_mb: float = 1024,
) -> Callable[[int, int], Tensor]:
    """`score_rows` of alpha * mm(G) + (1 - alpha) * mm(S), for `retrieval_ranks_from_rows`.

    G (global scores) and S (best-slot scores) are [n_texts, n_images] matrices produced in row
    blocks, like `score_rows`; mm scales a whole matrix to [0, 1] by its minimum and maximum
    (the reference's fused video scoring). A first pass over the blocks finds both matrices'
    minima and maxima, so neither is ever held whole; a constant matrix scales to 0.
    """
    _check_size(n_texts, n_images)
    probe = _block(global_rows, 0, 1, n_images)
    low = torch.full((2,), float("inf"), dtype=probe.dtype, device=probe.device)
    high = torch.full((2,), float("-inf"), dtype=probe.dtype, device=probe.device)
    for start, stop in _chunk_bounds(n_texts, n_images, memory_budget_mb, probe.device.type):
        for which, rows in enumerate((global_rows, slot_rows)):
            block = _block(rows, start, stop, n_images)
            low[which] = torch.minimum(low[which], block.min())
            high[which] = torch.maximum(high[which], block.max())
    spread = high - low
    scale = torch.where(spread > 0, 1 / spread, torch.zeros_like(spread))
    weights = (alpha * scale[0], (1 - alpha) * scale[1])

    def score_rows(start: int, stop: int) -> Tensor:
        fused = (_block(global_rows, start, stop, n_images) - low[0]) * weights[0]
        return fused.add_((_block(slot_rows, start, stop, n_images) - low[1]) * weights[1])

    return score_rows


def _count_ranks(score_rows, gt: Tensor, labels: Tensor, n_images: int, memory_budget_mb: float) -> Ranks:
    """One pass over finite rows: per row, the scores >= its ground truth; per column, >= its best caption."""
    n_texts, device = gt.numel(), gt.device
    bounds = _chunk_bounds(n_texts, n_images, memory_budget_mb, device.type)
    best = torch.full((n_images,), float("-inf"), dtype=gt.dtype, device=device)
    best.scatter_reduce_(0, labels, gt, reduce="amax")
    own_at_best = torch.zeros(n_images, dtype=torch.int64, device=device)
    own_at_best.scatter_add_(0, labels, (gt == best[labels]).long())
    captions = torch.bincount(labels, minlength=n_images)

    t2i = torch.empty(n_texts, dtype=torch.int64, device=device)
    reaching_best = torch.zeros(n_images, dtype=torch.int64, device=device)
    # Comparing into a float mask and summing floats is several times faster than bool masks
    # on the CPU; sums of 0/1 are exact while they stay below 2^24 (float32) or 2^53 (float64).
    rows_max = bounds[0][1]
    mask_dtype = torch.float32 if max(rows_max, n_images) < 2**24 else torch.float64
    mask = torch.empty(rows_max, n_images, dtype=mask_dtype, device=device)
    for start, stop in bounds:
        block = _block(score_rows, start, stop, n_images)
        hits = mask[: stop - start]
        torch.ge(block, gt[start:stop, None], out=hits)
        t2i[start:stop] = hits.sum(1)
        torch.ge(block, best, out=hits)
        reaching_best += hits.sum(0).long()
    if not bool((t2i >= 1).all()):
        raise RuntimeError("score_rows returned different scores for the same rows on its two calls")
    i2t = torch.where(captions > 0, 1 + reaching_best - own_at_best, torch.zeros_like(captions))
    return Ranks(t2i=t2i, i2t=i2t)


def metrics_from_ranks(ranks: Ranks, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@K in percent both ways, their sum and median/mean ranks, from `Ranks`.

    Keys: `i2t_r<K>` and `t2i_r<K>` for every K in `ks`, `sumr` (the sum of all of those:
    the literature's SumR with the default ks), `i2t_medr`, `i2t_meanr`, `t2i_medr`,
    `t2i_meanr`. The median rank follows the CCR papers' code (`floor(np.median(ranks))`).
    """
    ks = _check_ks(ks)
    directions = {"i2t": ranks.i2t[ranks.i2t > 0], "t2i": ranks.t2i}
    metrics: dict[str, float] = {}
    for name, values in directions.items():
        for k in ks:
            metrics[f"{name}_r{k}"] = 100.0 * int((values <= k).sum()) / values.numel()
    metrics["sumr"] = sum(metrics[f"{name}_r{k}"] for name in directions for k in ks)
    for name, values in directions.items():
        metrics[f"{name}_medr"] = _median_rank(values)
        metrics[f"{name}_meanr"] = float(values.double().mean())
    return metrics


def recall_metrics(
    scores: Tensor,
    text_to_image: Tensor | Sequence[int],
    ks: Sequence[int] = RECALL_KS,
    memory_budget_mb: float = 1024,
) -> dict[str, float]:
    """Retrieval metrics of a [n_texts, n_images] score matrix; `text_to_image[j]` is text j's image.

    Returns percentages `i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10`, `sumr` and
    `i2t_medr, i2t_meanr, t2i_medr, t2i_meanr` (1-based ranks); other ks add keys
    (`t2i_r50`, ...). A tie with the ground truth is not a hit (see the module docstring).
    `memory_budget_mb` bounds the temporaries of one chunk of rows.
    """
    _check_ks(ks)
    return metrics_from_ranks(retrieval_ranks(scores, text_to_image, memory_budget_mb), ks)


def _check_input_file(path: Path, what: str, hint: str) -> None:
    if path.is_dir():
        raise EvaluationError(f"{path} is a folder, not {what}", hint)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file", hint)


def load_score_matrix(path: str | Path) -> Tensor:
    """The [texts, images] score matrix saved in a .safetensors file: key `scores`, or its only tensor."""
    path = Path(path)
    _check_input_file(path, "a score file", "pass a .safetensors file holding the [texts, images] score matrix")
    try:
        with safe_open(str(path), framework="pt") as file:
            keys = list(file.keys())
            if "scores" in keys or len(keys) == 1:
                return file.get_tensor("scores" if "scores" in keys else keys[0])
    except SafetensorError as error:
        raise EvaluationError(f"{path} is not a readable safetensors file ({error})") from None
    raise EvaluationError(
        f"{path} holds {len(keys)} tensors ({', '.join(keys) or 'none'}) and none is named 'scores'",
        "save the matrix under the key 'scores'",
    )


def load_labels(path: str | Path) -> list[int]:
    """Image index of every text: a text file with one integer per line, or a JSON list of integers."""
    path = Path(path)
    _check_input_file(path, "a labels file", "pass a file with one image index per text (row)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise EvaluationError(
            f"{path}, line {line}: not UTF-8 ({error.reason} at byte {error.start})",
            "write the image indices as plain UTF-8 text",
        ) from None
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise EvaluationError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(values, list):
            raise EvaluationError(f"{path} must hold a JSON list of image indices, not a {type(values).__name__}")
        for j, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int):
                raise EvaluationError(f"{path}: entry {j} is {value!r}, not an integer image index")
    else:
        values = []
        for number, line in enumerate(text.rstrip().split("\n") if text.strip() else [], start=1):
            try:
                values.append(int(line.strip()))
            except ValueError:
                raise EvaluationError(
                    f"{path}, line {number}: {line.strip()!r} is not an integer image index",
                    "write one image index per line, nothing else",
                ) from None
    if not values:
        raise EvaluationError(f"{path} holds no labels", "write one image index per text (row of the scores)")
    huge = next((j for j, value in enumerate(values) if not -(2**63) <= value < 2**63), None)
    if huge is not None:
        raise EvaluationError(
            f"{path}: label {huge} ({values[huge]}) is beyond any image index (a 64-bit integer)",
            "write the 0-based image column of every text",
        )
    return values


# ----------------------------------------------------------------------------- helpers


def _check_float(dtype) -> None:
    if not dtype.is_floating_point:
        raise EvaluationError(f"scores must be floating point, got {dtype}", "convert the matrix to float32")


def _compare_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_size(n_texts: int, n_images: int) -> None:
    if n_texts < 1 or n_images < 1:
        raise EvaluationError(
            f"the score matrix is empty ({n_texts} texts x {n_images} images)",
            "score at least one text against one image",
        )


def _block(score_rows: Callable[[int, int], Tensor], start: int, stop: int, n_images: int) -> Tensor:
    """Rows start..stop-1 in the compare dtype: float64 stays, every other float becomes float32."""
    block = score_rows(start, stop)
    if tuple(block.shape) != (stop - start, n_images):
        raise ValueError(
            f"score_rows({start}, {stop}) returned shape {tuple(block.shape)}, not {(stop - start, n_images)}"
        )
    _check_float(block.dtype)
    return block.to(_compare_dtype(block.dtype))


def _all_finite(block: Tensor) -> bool:
    # a finite sum proves every score finite; only a non-finite sum needs the exact check
    return bool(torch.isfinite(block.sum())) or bool(torch.isfinite(block).all())


def _non_finite_error(score_rows, bounds, first_bad_start: int, n_images: int) -> EvaluationError:
    nan = inf = 0
    where = None
    for start, stop in bounds:
        if start < first_bad_start:
            continue
        block = _block(score_rows, start, stop, n_images)
        bad = ~torch.isfinite(block)
        if not bool(bad.any()):
            continue
        nan += int(torch.isnan(block).sum())
        inf += int(torch.isinf(block).sum())
        if where is None:
            row, column = (int(i) for i in bad.nonzero()[0])
            where = (start + row, column, float(block[row, column]))
    text, image, value = where
    return EvaluationError(
        f"the scores hold {nan} NaN and {inf} infinite values; the first is {value} at text {text}, image {image}",
        "every score must be a finite number: fix the system that wrote them",
    )


def _labels(text_to_image: Tensor | Sequence[int]) -> Tensor:
    if isinstance(text_to_image, torch.Tensor):
        if text_to_image.dtype.is_floating_point or text_to_image.dtype.is_complex or text_to_image.dtype == torch.bool:
            raise EvaluationError(f"image labels must be integer indices, got a {text_to_image.dtype} tensor")
        if text_to_image.ndim != 1:
            raise EvaluationError(f"image labels must be a 1-D list, got shape {tuple(text_to_image.shape)}")
        return text_to_image.long()
    values = []
    for j, value in enumerate(text_to_image):
        try:
            values.append(operator.index(value))
        except TypeError:
            raise EvaluationError(f"image label {j} is {value!r}, not an integer image index") from None
    return torch.tensor(values, dtype=torch.int64)


def _check_label_range(labels: Tensor, n_images: int) -> None:
    bad = (labels < 0) | (labels >= n_images)
    if bool(bad.any()):
        j = int(torch.nonzero(bad)[0])
        raise EvaluationError(
            f"{int(bad.sum())} image labels are out of range; the first is text {j} -> image {int(labels[j])}, "
            f"but the scores have {n_images} image columns (0-{n_images - 1})"
        )


def _check_ks(ks: Sequence[int]) -> list[int]:
    checked = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise EvaluationError(f"recall cut-off {k!r} is not a positive integer")
        if k not in checked:
            checked.append(k)
    if not checked:
        raise EvaluationError("no recall cut-offs given", "pass ks such as (1, 5, 10)")
    return checked


def _median_rank(ranks: Tensor) -> float:
    ordered = ranks.sort().values
    middle = ordered.numel() // 2
    if ordered.numel() % 2:
        return float(ordered[middle])
    return float((int(ordered[middle - 1]) + int(ordered[middle])) // 2)
