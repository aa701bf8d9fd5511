"""Retrieval metrics: exact against a brute-force argsort reference, ties, chunking, dtypes, bad input."""

import numpy as np
import pytest
import torch
from rich.console import Console

from leccr_cli.errors import EvaluationError
from leccr_cli.cli.report import metrics_table
from leccr_cli.retrieval.metrics import (
    metrics_from_ranks,
    minmax_fused_rows,
    recall_metrics,
    retrieval_ranks,
    retrieval_ranks_from_rows,
)

KEYS = [
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "sumr",
    "i2t_medr",
    "i2t_meanr",
    "t2i_medr",
    "t2i_meanr",
]


# ------------------------------------------------------------------ brute-force reference


def _descending_ties_last(values: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Full argsort by value, highest first; among equal values the `last` entries come after the others."""
    others_first = torch.argsort(last.long(), stable=True)
    return others_first[torch.argsort(-values[others_first], stable=True)]


def reference_ranks(scores: torch.Tensor, text_to_image: list[int]):
    """The CCR papers' formulation (sort every row and every column, find the ground truth),
    with ties broken against the ground truth: an equal non-matching score is sorted first."""
    scores = scores.double()
    n_texts, n_images = scores.shape
    labels = torch.tensor(text_to_image)
    t2i = []
    for j in range(n_texts):
        is_gt = torch.arange(n_images) == labels[j]
        order = _descending_ties_last(scores[j], is_gt)
        t2i.append(int((order == labels[j]).nonzero()) + 1)
    i2t = []
    for i in range(n_images):
        is_caption = labels == i
        if not is_caption.any():
            continue
        order = _descending_ties_last(scores[:, i], is_caption)
        i2t.append(int(is_caption[order].nonzero()[0]) + 1)
    return t2i, i2t


def reference_metrics(scores, text_to_image, ks=(1, 5, 10)):
    t2i, i2t = reference_ranks(scores, text_to_image)
    metrics = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            metrics[f"{name}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
    metrics["sumr"] = sum(metrics[f"{name}_r{k}"] for name in ("i2t", "t2i") for k in ks)
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        ordered, n = sorted(ranks), len(ranks)
        # numpy's median (mean of the two middle values), floored, as in the papers' code
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        metrics[f"{name}_medr"] = float(int(median))
        metrics[f"{name}_meanr"] = sum(ranks) / n
    return metrics


def _labels(n_images: int, captions: int, generator: torch.Generator) -> list[int]:
    labels = torch.arange(n_images).repeat_interleave(captions)
    return labels[torch.randperm(len(labels), generator=generator)].tolist()


def _assert_same(metrics: dict, expected: dict) -> None:
    assert list(metrics) == list(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("captions", [1, 5])
@pytest.mark.parametrize("integer_scores", [False, True], ids=["float", "ties"])
def test_equals_argsort_reference_on_random_matrices(captions, integer_scores):
    generator = torch.Generator().manual_seed(captions * 10 + integer_scores)
    for _ in range(3):
        n_images = 30
        labels = _labels(n_images, captions, generator)
        if integer_scores:  # few distinct values: ties everywhere, also with the ground truth
            scores = torch.randint(0, 4, (len(labels), n_images), generator=generator).float()
        else:
            scores = torch.randn(len(labels), n_images, generator=generator)
        _assert_same(recall_metrics(scores, labels), reference_metrics(scores, labels))
        ranks = retrieval_ranks(scores, labels)
        t2i, i2t = reference_ranks(scores, labels)
        assert ranks.t2i.tolist() == t2i and ranks.i2t.tolist() == i2t


def test_images_with_any_number_of_captions_including_none():
    generator = torch.Generator().manual_seed(7)
    n_images = 25
    labels = torch.randint(0, n_images - 5, (90,), generator=generator).tolist()  # the last 5 have none
    scores = torch.randint(0, 6, (90, n_images), generator=generator).float()
    _assert_same(
        recall_metrics(scores, labels, ks=(1, 5, 10, 20)), reference_metrics(scores, labels, ks=(1, 5, 10, 20))
    )
    ranks = retrieval_ranks(scores, labels)
    assert ranks.i2t[-5:].tolist() == [0] * 5  # no caption: no i2t rank
    assert ranks.i2t[: n_images - 5].min() >= 1


def test_hand_made_3x3_without_ties():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.7], [0.6, 0.5, 0.4]])
    # t2i ranks: 1, 1, 3 (text 2's image scores 0.4, below 0.6 and 0.5)
    # i2t ranks: 1, 1, 2 (image 2's caption scores 0.4, below text 1's 0.7)
    assert recall_metrics(scores, [0, 1, 2]) == pytest.approx(
        {
            "i2t_r1": 200 / 3,
            "i2t_r5": 100.0,
            "i2t_r10": 100.0,
            "t2i_r1": 200 / 3,
            "t2i_r5": 100.0,
            "t2i_r10": 100.0,
            "sumr": 400 + 400 / 3,
            "i2t_medr": 1.0,
            "i2t_meanr": 4 / 3,
            "t2i_medr": 1.0,
            "t2i_meanr": 5 / 3,
        }
    )


def test_hand_made_3x3_ties_count_against_the_ground_truth():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.3, 0.3, 0.3], [0.2, 0.9, 0.9]])
    # t2i ranks: 2 (one tie), 3 (two ties), 2 (one tie)
    # i2t ranks: 1 (0.5 beats 0.3, 0.2), 3 (0.3 is below 0.5 and 0.9), 1 (0.9 beats 0.1, 0.3)
    assert recall_metrics(scores, [0, 1, 2]) == pytest.approx(
        {
            "i2t_r1": 200 / 3,
            "i2t_r5": 100.0,
            "i2t_r10": 100.0,
            "t2i_r1": 0.0,
            "t2i_r5": 100.0,
            "t2i_r10": 100.0,
            "sumr": 400 + 200 / 3,
            "i2t_medr": 1.0,
            "i2t_meanr": 5 / 3,
            "t2i_medr": 2.0,
            "t2i_meanr": 7 / 3,
        }
    )


def test_hand_made_3x3_two_captions_and_an_image_without_any():
    # texts 0 and 1 describe image 0, text 2 describes image 1; image 2 has no caption
    scores = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.6, 0.9], [0.4, 0.8, 0.3]])
    # t2i ranks: 2, 3 (a tie and a higher score), 1
    # i2t ranks: image 0's best caption (0.6) beats text 2 (0.4) -> 1; image 1 -> 1; image 2 left out
    assert recall_metrics(scores, [0, 0, 1]) == pytest.approx(
        {
            "i2t_r1": 100.0,
            "i2t_r5": 100.0,
            "i2t_r10": 100.0,
            "t2i_r1": 100 / 3,
            "t2i_r5": 100.0,
            "t2i_r10": 100.0,
            "sumr": 500 + 100 / 3,
            "i2t_medr": 1.0,
            "i2t_meanr": 1.0,
            "t2i_medr": 2.0,
            "t2i_meanr": 2.0,
        }
    )


def test_a_tie_between_captions_of_the_same_image_is_still_a_hit():
    scores = torch.tensor([[0.5, 0.1, 0.0], [0.5, 0.2, 0.0], [0.4, 0.3, 0.0]])
    ranks = retrieval_ranks(scores, [0, 0, 1])
    assert ranks.i2t.tolist() == [1, 1, 0]
    scores[2, 0] = 0.5  # now a text of another image ties with the best caption: a miss
    assert retrieval_ranks(scores, [0, 0, 1]).i2t.tolist() == [2, 1, 0]


def test_constant_scores_get_the_worst_ranks_never_100():
    metrics = recall_metrics(torch.zeros(3, 3), [0, 1, 2])
    assert metrics["t2i_r1"] == metrics["i2t_r1"] == 0.0
    assert metrics["t2i_medr"] == metrics["i2t_medr"] == 3.0
    assert metrics["t2i_r5"] == 100.0  # any ranking of 3 images puts the right one in the top 5

    labels = torch.arange(50).repeat_interleave(5)
    metrics = recall_metrics(torch.full((250, 50), 0.3), labels)
    assert metrics["sumr"] == 0.0
    assert metrics["t2i_medr"] == 50.0  # every other image ties and wins
    assert metrics["i2t_medr"] == 246.0  # the 245 captions of other images tie and win


def test_median_rank_follows_the_papers_floor_of_numpy_median():
    # t2i ranks 1 and 4: numpy's median is 2.5, floored to 2
    scores = torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.9, 0.8, 0.7, 0.1]])
    metrics = recall_metrics(scores, [0, 3])
    assert metrics["t2i_medr"] == 2.0 and metrics["t2i_meanr"] == 2.5


def test_extra_ks_add_keys_and_count_in_sumr():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(200, 40, generator=generator)
    labels = _labels(40, 5, generator)
    metrics = recall_metrics(scores, labels, ks=(1, 5, 10, 20))
    assert list(metrics) == [
        "i2t_r1", "i2t_r5", "i2t_r10", "i2t_r20", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_r20",
        "sumr", "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr",
    ]  # fmt: skip
    assert metrics["sumr"] == pytest.approx(sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10, 20)))
    default = recall_metrics(scores, labels)
    assert list(default) == KEYS
    assert default["sumr"] == pytest.approx(sum(default[key] for key in KEYS[:6]))


# ------------------------------------------------------------------------ chunks, dtypes


def test_chunk_size_does_not_change_any_number():
    generator = torch.Generator().manual_seed(11)
    labels = _labels(60, 5, generator)
    scores = torch.randint(0, 8, (300, 60), generator=generator).float()
    # budgets from one row per chunk to the whole matrix in one chunk
    results = [recall_metrics(scores, labels, memory_budget_mb=mb) for mb in (1e-6, 0.005, 0.05, 1024)]
    assert all(result == results[0] for result in results[1:])
    _assert_same(results[0], reference_metrics(scores, labels))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_ranks_equal_their_float32_upcast(dtype):
    generator = torch.Generator().manual_seed(5)
    labels = _labels(50, 5, generator)
    scores = torch.randn(250, 50, generator=generator).to(dtype)  # few mantissa bits: many ties
    upcast = scores.float()
    for mb in (1e-6, 1024):
        low = retrieval_ranks(scores, labels, memory_budget_mb=mb)
        high = retrieval_ranks(upcast, labels, memory_budget_mb=mb)
        assert torch.equal(low.t2i, high.t2i) and torch.equal(low.i2t, high.i2t)
    _assert_same(recall_metrics(scores, labels), reference_metrics(upcast, labels))


def test_float64_is_compared_in_float64():
    # these two differ only beyond float32 precision: float64 must tell them apart
    scores = torch.tensor([[1.0 + 1e-12, 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert retrieval_ranks(scores, [0, 1]).t2i.tolist() == [1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(2)
    labels = _labels(100, 5, generator)
    scores = torch.randint(0, 20, (500, 100), generator=generator).float()
    for dtype in (torch.float32, torch.bfloat16):
        cpu = recall_metrics(scores.to(dtype), labels)
        for mb in (0.01, 1024):
            assert recall_metrics(scores.to(dtype).cuda(), torch.tensor(labels).cuda(), memory_budget_mb=mb) == cpu


def test_ranks_from_row_blocks_equal_the_whole_matrix():
    generator = torch.Generator().manual_seed(9)
    texts, images = torch.randn(120, 8, generator=generator), torch.randn(24, 8, generator=generator)
    labels = _labels(24, 5, generator)
    whole = retrieval_ranks(texts @ images.T, labels)
    calls = []

    def score_rows(start, stop):
        calls.append((start, stop))
        return texts[start:stop] @ images.T

    for mb in (1e-6, 0.001, 1024):
        calls.clear()
        blocks = retrieval_ranks_from_rows(score_rows, 120, 24, labels, memory_budget_mb=mb)
        assert torch.equal(blocks.t2i, whole.t2i) and torch.equal(blocks.i2t, whole.i2t)
        assert max(stop - start for start, stop in calls) <= (1 if mb == 1e-6 else 120)
    assert metrics_from_ranks(whole) == recall_metrics(texts @ images.T, labels)


def test_row_blocks_that_change_between_calls_are_refused():
    scores = torch.eye(4)
    calls = {"n": 0}

    def drifting(start, stop):
        calls["n"] += 1
        return scores[start:stop] - float(calls["n"] > 2)  # the counting pass sees lower scores

    with pytest.raises(RuntimeError, match="different scores"):
        retrieval_ranks_from_rows(drifting, 4, 4, [0, 1, 2, 3])


def _minmax_oracle(global_scores: np.ndarray, slot_scores: np.ndarray, alpha: float) -> np.ndarray:
    """The reference's fused video scores, whole matrices at once in numpy."""

    def scaled(matrix):
        spread = matrix.max() - matrix.min()
        return (matrix - matrix.min()) / spread if spread > 0 else np.zeros_like(matrix)

    return alpha * scaled(global_scores) + (1 - alpha) * scaled(slot_scores)


@pytest.mark.parametrize("budget", [1e-6, 1024])
def test_minmax_fusion_equals_a_numpy_oracle_block_by_block(budget):
    generator = torch.Generator().manual_seed(4)
    # the slot scores live on another scale than the global ones, so min-max and linear fusion rank differently
    global_scores = torch.rand(36, 12, generator=generator, dtype=torch.float64) * 0.2 + 0.3
    slot_scores = torch.randn(36, 12, generator=generator, dtype=torch.float64) * 3 - 1
    labels = _labels(12, 3, generator)
    calls = []

    def rows_of(matrix):
        def rows(start, stop):
            calls.append((start, stop))
            return matrix[start:stop]

        return rows

    score_rows = minmax_fused_rows(rows_of(global_scores), rows_of(slot_scores), 36, 12, 0.9, memory_budget_mb=budget)
    fused = torch.cat([score_rows(j, j + 1) for j in range(36)])
    oracle = _minmax_oracle(global_scores.numpy(), slot_scores.numpy(), 0.9)
    np.testing.assert_allclose(fused.numpy(), oracle, rtol=0, atol=1e-12)
    ranks = retrieval_ranks_from_rows(score_rows, 36, 12, labels, memory_budget_mb=budget)
    assert metrics_from_ranks(ranks) == recall_metrics(torch.from_numpy(oracle), labels)
    assert metrics_from_ranks(ranks) != recall_metrics(0.9 * global_scores + 0.1 * slot_scores, labels)
    assert max(stop - start for start, stop in calls) == (1 if budget == 1e-6 else 36)


def test_minmax_fusion_of_a_constant_matrix_ranks_by_the_other():
    global_scores, slot_scores = torch.full((4, 4), 0.5), torch.eye(4) * 2 + 1
    score_rows = minmax_fused_rows(lambda a, b: global_scores[a:b], lambda a, b: slot_scores[a:b], 4, 4, 0.9)
    assert torch.allclose(score_rows(0, 4), 0.1 * torch.eye(4))
    assert recall_metrics(score_rows(0, 4), [0, 1, 2, 3])["sumr"] == 600


# ----------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(EvaluationError, match=r"shape \(4, 3\).*labels of shape \(5,\)") as caught:
        recall_metrics(torch.zeros(4, 3), [0, 1, 2, 0, 1])
    assert "transposed" not in str(caught.value)
    with pytest.raises(EvaluationError, match=r"shape \(3, 4\).*transposed"):
        recall_metrics(torch.zeros(3, 4), [0, 1, 2, 3])


def test_out_of_range_labels_are_named():
    with pytest.raises(
        EvaluationError,
        match=r"2 image labels are out of range; the first is text 1 -> image 3.*3 image columns \(0-2\)",
    ):
        recall_metrics(torch.zeros(3, 3), [0, 3, -1])


@pytest.mark.parametrize("budget", [1e-6, 1024])
def test_nan_and_inf_scores_are_counted_and_located(budget):
    scores = torch.randn(40, 10)
    scores[7, 3] = float("nan")
    scores[7, 5] = float("nan")
    scores[30, 0] = float("-inf")
    with pytest.raises(EvaluationError, match=r"2 NaN and 1 infinite values; the first is nan at text 7, image 3"):
        recall_metrics(scores, list(range(10)) * 4, memory_budget_mb=budget)
    with pytest.raises(EvaluationError, match=r"2 NaN and 1 infinite"):
        retrieval_ranks_from_rows(lambda a, b: scores[a:b], 40, 10, list(range(10)) * 4, memory_budget_mb=budget)


def test_large_finite_half_scores_are_not_mistaken_for_infinite():
    scores = torch.full((300, 3), 60000.0, dtype=torch.float16)  # their float16 sum overflows
    scores[torch.arange(300), torch.arange(300) % 3] = 65000.0
    assert recall_metrics(scores, [j % 3 for j in range(300)])["t2i_r1"] == 100.0


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (torch.zeros(0, 3), [], "empty"),
        (torch.zeros(2, 0), [0, 0], "empty"),
        (torch.zeros(2, 2, 2), [0, 1], "2-D"),
        (torch.zeros(2, 2, dtype=torch.int64), [0, 1], "floating point"),
        ([[0.0, 1.0]], [0], "must be a tensor"),
        (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), "integer indices"),
        (torch.zeros(2, 2), [0, 1.5], r"image label 1 is 1\.5"),
    ],
)
def test_malformed_inputs_are_refused(scores, labels, message):
    with pytest.raises(EvaluationError, match=message):
        recall_metrics(scores, labels)


@pytest.mark.parametrize("ks", [(), (0,), (1, -5), (2.5,)])
def test_bad_cut_offs_are_refused(ks):
    with pytest.raises(EvaluationError, match="cut-off"):
        recall_metrics(torch.eye(3), [0, 1, 2], ks=ks)


def test_memory_budget_must_be_positive():
    with pytest.raises(EvaluationError, match="not positive"):
        recall_metrics(torch.eye(3), [0, 1, 2], memory_budget_mb=0)


# ---------------------------------------------------------------------------------- table


def _table_cells(table) -> list[list[str]]:
    """The rendered table's header and body cells, row by row."""
    console = Console(record=True, width=200)
    console.print(table)
    lines = console.export_text().splitlines()
    return [[cell.strip() for cell in line[1:-1].replace("┃", "│").split("│")] for line in lines if line[:1] in "┃│"]


def test_metrics_table_lists_rows_with_one_decimal():
    rows = {"de": recall_metrics(torch.eye(3), [0, 1, 2]), "cs": recall_metrics(torch.zeros(3, 3), [0, 1, 2])}
    table = metrics_table(rows, "Multi30K test")
    assert table.title == "Multi30K test"
    assert _table_cells(table) == [
        ["lang", "I2T R@1", "I2T R@5", "I2T R@10", "T2I R@1", "T2I R@5", "T2I R@10", "SumR"],
        ["de", "100.0", "100.0", "100.0", "100.0", "100.0", "100.0", "600.0"],
        ["cs", "0.0", "100.0", "100.0", "0.0", "100.0", "100.0", "400.0"],
    ]
    partial = metrics_table({"sys": {"t2i_r1": 12.345}}, "partial", row_header="system")
    assert _table_cells(partial)[1] == ["sys", "-", "-", "-", "12.3", "-", "-", "-"]
