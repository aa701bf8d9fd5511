"""Search's int8 first pass: the codes, the bound on their error, and a two-pass top-k equal to scoring every row."""

import json

import pyarrow as pa
import pytest
import torch

import leccr_cli.retrieval.search as search
from leccr_cli.utils.safetensors_io import StreamingSafetensors, tensor_bytes
from leccr_cli.errors import ModelError
from leccr_cli.retrieval.index.builder import write_codes
from leccr_cli.retrieval.index.format import CODES_ALIGN, IndexInfo, ModelIdentity
from leccr_cli.retrieval.index.reader import Index, IndexCodes
from leccr_cli.model.factory import load_query_model
from leccr_cli.model.leccr import ImageEmbeddings
from leccr_cli.retrieval.prefilter import (
    CODE_MAX,
    approximate_scores,
    error_bound,
    fused_error_bound,
    pad_queries,
    quantize,
)


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows, dim=-1)


def _awkward_rows(dim: int, generator: torch.Generator) -> torch.Tensor:
    """Unit rows, rows sharing one direction, spiky rows, a zero row and tiny values, in fp16."""
    shared = _unit(torch.randn(dim, generator=generator))
    rows = torch.cat([
        _unit(torch.randn(300, dim, generator=generator)),
        _unit(shared + 0.05 * torch.randn(200, dim, generator=generator)),
        _unit(torch.randn(50, dim, generator=generator) ** 9),
        torch.zeros(1, dim),
        torch.randn(5, dim, generator=generator) * 1e-6,
        torch.randn(5, dim, generator=generator) * 40,
    ])  # fmt: skip
    return rows.half()


@pytest.mark.parametrize("dim", [24, 64, 256])
def test_codes_are_within_half_a_step_of_every_value(dim):
    rows = _awkward_rows(dim, torch.Generator().manual_seed(dim))
    quantized = quantize(rows)
    width = quantized.codes.shape[1]
    assert quantized.codes.dtype == torch.int8 and width % 16 == 0 and dim <= width < dim + 16
    assert quantized.scales.dtype == torch.bfloat16
    assert not quantized.codes[:, dim:].any()  # padding is zero
    codes, scales, exact = quantized.codes[:, :dim].double(), quantized.scales.double(), rows.double()
    assert codes.abs().max() <= CODE_MAX
    assert torch.all(scales * CODE_MAX >= exact.abs().amax(dim=1))
    residual = exact - codes * scales[:, None]
    assert torch.all(residual.abs() <= scales[:, None] / 2)
    assert quantized.max_residual >= residual.norm(dim=1).max().item()
    assert quantized.max_norm >= (codes * scales[:, None]).norm(dim=1).max().item()
    assert torch.equal(quantized.codes[300 + 200 + 50], torch.zeros(width, dtype=torch.int8))  # the zero row


@pytest.mark.parametrize("dim", [24, 64, 256])
def test_the_first_pass_is_within_its_bound_of_the_float32_score(dim):
    generator = torch.Generator().manual_seed(dim + 1)
    rows = _awkward_rows(dim, generator)
    quantized = quantize(rows)
    queries = torch.cat([
        _unit(torch.randn(6, dim, generator=generator)),
        7 * _unit(torch.randn(2, dim, generator=generator)),
        _unit(torch.randn(2, dim, generator=generator) ** 5),
        rows[300:302].float(),
    ])  # fmt: skip
    first = approximate_scores(pad_queries(queries, quantized.codes.shape[1]), quantized.codes, quantized.scales)
    reference = queries @ rows.float().T  # what model.score computes
    exact = queries.double() @ rows.double().T
    bound = error_bound(queries, quantized.max_norm, quantized.max_residual)
    assert torch.all((first.double() - reference.double()).abs() <= bound[:, None])
    assert torch.all((first.double() - exact).abs() <= bound[:, None])
    # fused with slot scores (every row is its own single slot here)
    fused_first = 0.3 * first + 0.7 * first
    fused_reference = 0.3 * reference + 0.7 * reference
    fused = fused_error_bound(queries, bound, bound, 0.3, [quantized])
    assert torch.all((fused_first.double() - fused_reference.double()).abs() <= fused[:, None])


def test_the_bound_is_small_enough_to_prune():
    generator = torch.Generator().manual_seed(5)
    rows = _unit(torch.randn(4000, 256, generator=generator)).half()
    quantized = quantize(rows)
    queries = _unit(torch.randn(4, 256, generator=generator))
    bound = error_bound(queries, quantized.max_norm, quantized.max_residual)
    # a unit query against unit rows scores within ±1; the int8 rounding dominates the bound
    assert torch.all(bound < 0.025)
    first = approximate_scores(pad_queries(queries, 256), quantized.codes, quantized.scales)
    assert (
        first.double() - (queries @ rows.float().T).double()
    ).abs().max() < bound.min() / 3  # the bound is a worst case


# ---------------------------------------------------------------------------------- two-pass top-k


def _index(global_embeds, slot_embeds=None, slot_mask=None) -> Index:
    """An index held in memory (random embeddings), as `leccr app` makes one for its test gallery."""
    count, dim = global_embeds.shape
    info = IndexInfo(
        ModelIdentity("run", "weights", 0, 0), "corpus", "gallery", None, count, dim,
        None if slot_embeds is None else slot_embeds.shape[1], slot_mask is not None, "fp16",
    )  # fmt: skip
    ids = [f"img{i}" for i in range(count)]
    items = pa.table({"image_id": ids, "path": ids, "description": [""] * count})
    return Index(
        None, info, items, global_embeds, slot_embeds, slot_mask, IndexCodes.of_embeddings(global_embeds, slot_embeds)
    )


def _expected(model, queries, index: Index, k: int, fusion):
    slots = None if index.slot_embeds is None else index.slot_embeds.float()
    full = model.score(queries, ImageEmbeddings(index.global_embeds.float(), slots, index.slot_mask), fusion=fusion)
    order = [sorted(range(len(index)), key=lambda r: (-row[r].item(), r))[:k] for row in full]
    return full, order


@pytest.fixture(scope="module")
def query_model(trained_run):
    return load_query_model(trained_run / "model")


def _scan_settings(monkeypatch, two_pass: bool):
    """Small tasks, blocks and candidate chunks, so every path of the scans runs on a small index."""
    monkeypatch.setattr(search, "ROWS_PER_TASK", 256)
    monkeypatch.setattr(search, "EXACT_ROWS", 50)
    monkeypatch.setattr(search, "PRESELECT", 8)
    monkeypatch.setattr(search, "TWO_PASS_QUERIES", 100 if two_pass else 0)


@pytest.mark.parametrize("two_pass", [True, False], ids=["two-pass", "every-row"])
@pytest.mark.parametrize("fusion", [None, 0.6])
@pytest.mark.parametrize("k", [1, 7, 120])
def test_both_scans_find_what_scoring_every_row_at_once_finds(query_model, monkeypatch, k, fusion, two_pass):
    # clusters of near-equal rows, exact duplicates, padded slots and an image whose slots are all padding
    generator = torch.Generator().manual_seed(k)
    dim, count = 40, 2500
    centres = _unit(torch.randn(25, dim, generator=generator))
    rows = _unit(centres[torch.arange(count) % 25] + 2e-3 * torch.randn(count, dim, generator=generator))
    rows[600:640] = rows[599]
    slots = _unit(
        centres[torch.randint(0, 25, (count, 3), generator=generator)]
        + 0.1 * torch.randn(count, 3, dim, generator=generator)
    )
    mask = torch.rand(count, 3, generator=generator) > 0.3
    mask[:, 0] |= torch.arange(count) != 17
    index = _index(rows.half(), slots.half(), mask)
    queries = torch.cat([_unit(torch.randn(4, dim, generator=generator)), centres[:2]])

    _scan_settings(monkeypatch, two_pass)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers, tasks of 256 rows, candidates 50 at a time
    try:
        scores, found = search.top_k(query_model, queries, index, k, fusion=fusion)
    finally:
        torch.set_num_threads(threads)
    full, expected = _expected(query_model, queries, index, k, fusion)
    for query, (query_scores, query_rows, wanted) in enumerate(zip(scores, found, expected)):
        assert len(set(query_rows.tolist())) == k
        assert query_scores.tolist() == pytest.approx([full[query, r].item() for r in wanted], abs=1e-6)
        assert query_scores.tolist() == pytest.approx([full[query, r].item() for r in query_rows.tolist()], abs=1e-6)
        assert query_scores.tolist() == sorted(query_scores.tolist(), reverse=True)


@pytest.mark.parametrize("two_pass", [True, False], ids=["two-pass", "every-row"])
@pytest.mark.parametrize("fusion", [None, 0.5])
def test_equal_scores_keep_the_gallery_order(query_model, monkeypatch, two_pass, fusion):
    # values whose products and sums are exact in float32 in any order: equal rows score equal everywhere
    generator = torch.Generator().manual_seed(4)
    patterns = torch.randint(0, 3, (6, 32), generator=generator) / 4
    rows = patterns[torch.randint(0, 6, (900,), generator=generator)]
    slots = patterns[torch.randint(0, 6, (900, 2), generator=generator)]
    index = _index(rows.half(), slots.half())
    queries = torch.randint(0, 3, (3, 32), generator=generator) / 2
    _scan_settings(monkeypatch, two_pass)
    for k in (5, 200):
        scores, found = search.top_k(query_model, queries, index, k, fusion=fusion)
        full, expected = _expected(query_model, queries, index, k, fusion)
        assert found.tolist() == expected
        assert torch.equal(scores, full.gather(1, found))


def _rounded_against_the_query(count: int, total: int, residual: float, generator) -> torch.Tensor:
    """[count, 64] rows (in units of 2^-9) whose codes sum to `total` over dims 1.., each value `residual` off its code.

    Dim 0 is 127 units, which makes 2^-9 the row's scale; a query of equal weights then sees
    every rounding error with the same sign, the worst case the bound allows for.
    """
    codes = torch.randint(-40, 41, (count, 63), generator=generator)
    missing = total - codes.sum(dim=1, keepdim=True)
    codes += missing // 63 + (torch.arange(63) < missing % 63)  # spread, so every code stays small
    values = torch.cat([torch.full((count, 1), 127.0), codes + residual], dim=1)
    return values * 2.0**-9


def test_rows_rounded_against_the_query_come_close_to_the_bound_and_are_still_found(query_model, monkeypatch):
    # winners: every value 15/32 of a step above its code (the first pass underrates them by ~0.0072);
    # decoys: 15/32 below (overrated); the decoys' first-pass scores beat the winners' by ~1.9x that
    generator = torch.Generator().manual_seed(8)
    winners = _rounded_against_the_query(10, 0, 15 / 32, generator)
    decoys = _rounded_against_the_query(10, 56, -15 / 32, generator)
    filler = _rounded_against_the_query(500, -200, 0.0, generator)
    rows = torch.cat([filler[:250], decoys, winners, filler[250:]])
    assert rows.abs().max() <= 127 * 2.0**-9 and torch.equal(rows.half().double(), rows.double())  # exact in fp16
    query = torch.full((1, 64), 0.125)
    quantized = quantize(rows.half())
    first = approximate_scores(pad_queries(query, 64), quantized.codes, quantized.scales)[0].double()
    exact = (query.double() @ rows.double().T)[0]
    bound = error_bound(query, quantized.max_norm, quantized.max_residual).item()
    row_term = quantized.max_residual  # ‖q‖ = 1
    assert torch.all((first - exact).abs() <= bound)
    assert (first - exact).abs().max() > 0.9 * row_term and row_term > 0.7 * bound  # the worst case is (nearly) reached
    assert first[250:260].min() > first[260:270].max() + 1.5 * row_term  # decoys ahead in the first pass ...
    assert exact[260:270].min() > exact[250:260].max()  # ... winners ahead in float32

    index = _index(rows.half())
    _scan_settings(monkeypatch, two_pass=True)
    _, found = search.top_k(query_model, query, index, 10)
    assert sorted(found[0].tolist()) == list(range(260, 270))


def test_the_first_pass_leaves_few_rows_to_score_in_float32(query_model, monkeypatch):
    generator = torch.Generator().manual_seed(11)
    index = _index(_unit(torch.randn(60000, 64, generator=generator)).half())
    queries = _unit(torch.randn(3, 64, generator=generator))
    scored = []
    exact = search._exact
    monkeypatch.setattr(
        search,
        "_exact",
        lambda model, q, index, rows, fusion: scored.append(len(rows)) or exact(model, q, index, rows, fusion),
    )
    scores, found = search.top_k(query_model, queries, index, 10)
    _, expected = _expected(query_model, queries, index, 10, None)
    assert found.tolist() == expected
    assert sum(scored) < 0.05 * len(index)


# ---------------------------------------------------------------------------------- the codes file


def _embeddings_file(path, rows: torch.Tensor):
    out = StreamingSafetensors(path, {"global": ("F16", list(rows.shape), 2)}, {"format": "leccr-index"})
    out.write("global", 0, tensor_bytes(rows.half()))
    out.close()
    return path


def test_the_codes_file_is_aligned_for_the_kernel_and_reads_back(tmp_path):
    rows = _unit(torch.randn(33, 40, generator=torch.Generator().manual_seed(2)))
    write_codes(
        tmp_path / "codes.safetensors",
        _embeddings_file(tmp_path / "embeddings.safetensors", rows),
        [str(i) for i in range(33)],
    )
    raw = (tmp_path / "codes.safetensors").read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_size])
    assert (8 + header_size) % CODES_ALIGN == 0 and header["global_codes"]["data_offsets"][0] == 0
    info = IndexInfo(ModelIdentity("run", "w", 0, 0), "corpus", "gallery", None, 33, 40, None, False, "fp16")
    codes = IndexCodes.open(tmp_path / "codes.safetensors", info, "rebuild it")
    assert codes.global_rows.codes.data_ptr() % 16 == 0
    in_memory = quantize(rows.half())
    assert torch.equal(codes.global_rows.codes, in_memory.codes) and torch.equal(
        codes.global_rows.scales, in_memory.scales
    )
    assert (codes.global_rows.max_norm, codes.global_rows.max_residual) == (in_memory.max_norm, in_memory.max_residual)


def test_a_non_finite_embedding_is_refused_naming_its_image(tmp_path):
    rows = _unit(torch.randn(8, 32, generator=torch.Generator().manual_seed(3)))
    rows[5, 7] = float("nan")
    embeddings = _embeddings_file(tmp_path / "embeddings.safetensors", rows)
    with pytest.raises(ModelError, match=r"non-finite embeddings \(images: photo5\)"):
        write_codes(tmp_path / "codes.safetensors", embeddings, [f"photo{i}" for i in range(8)])
