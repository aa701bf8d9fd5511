"""An int8 copy of embedding rows for a fast first pass over an index, and the bound that keeps search exact.

Every row x (D floats) is kept as int8 codes c and one scale s, a bfloat16 number at least
max|x| / 127, so that x̂ = s·c with c = round(x / s) differs from x by at most s/2 per value.
The first pass scores all rows with torch's int8-weight kernel (`torch._weight_int8pack_mm`:
a bfloat16 query, int8 rows, float32 sums, a bfloat16 result), which reads a quarter of the
bytes a float32 scan reads and converts nothing. `error_bound` gives, for each query, a number
that no row's first-pass score is further than from the float32 score `LeccrModel.score`
computes, so a row whose first-pass score is below the k-th best one minus twice the bound
cannot be among the best k; only the remaining rows are scored in float32.

The kernel reads codes 16 at a time with aligned loads: codes are padded with zeros to a
multiple of `CODE_ALIGN` values, and a file of codes must place them at a multiple of 64 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CODE_ALIGN = 16  # codes per row are padded to a multiple of this (the kernel's step)
CODE_MAX = 127
_UNIT_BF16 = 2.0**-8  # bfloat16 rounding (to nearest): relative error at most 2^-8
_UNIT_FP32 = 2.0**-24
_SAFETY = 1 + 1e-6  # room for the float64 arithmetic of the bound itself


def padded_width(dim: int) -> int:
    """Codes per row for `dim` values: `dim` rounded up to a multiple of `CODE_ALIGN`."""
    return -(-dim // CODE_ALIGN) * CODE_ALIGN


@dataclass
class Quantized:
    """Rows as int8 codes with their scales, and what the error bound needs to know of them."""

    codes: torch.Tensor  # [N, padded_width(D)] int8
    scales: torch.Tensor  # [N] bfloat16
    max_norm: float  # at least max ‖x̂‖ over the rows
    max_residual: float  # at least max ‖x − x̂‖ over the rows


def quantize(rows: torch.Tensor) -> Quantized:
    """Int8 codes of `rows` ([N, D], any float dtype; finite), one bfloat16 scale per row."""
    exact = rows.double()
    largest = exact.abs().amax(dim=1) if exact.shape[1] else exact.new_zeros(len(exact))
    scales = (largest / CODE_MAX).to(torch.bfloat16)
    short = scales.double() * CODE_MAX < largest  # rounded down: take the next bfloat16 up
    scales = torch.where(short, torch.nextafter(scales, scales.new_tensor(float("inf"))), scales)
    wide = scales.double()
    codes = torch.where(wide[:, None] > 0, torch.round(exact / wide.clamp(min=1e-300)[:, None]), 0.0)
    codes = codes.clamp(-CODE_MAX, CODE_MAX)
    approximated = codes * wide[:, None]
    padded = torch.zeros(len(rows), padded_width(rows.shape[1]), dtype=torch.int8)
    padded[:, : rows.shape[1]] = codes.to(torch.int8)
    norms = approximated.norm(dim=1)
    residuals = (exact - approximated).norm(dim=1)
    return Quantized(
        padded,
        scales,
        norms.max().item() * _SAFETY if len(rows) else 0.0,
        residuals.max().item() * _SAFETY if len(rows) else 0.0,
    )


def pad_queries(queries: torch.Tensor, width: int) -> torch.Tensor:
    """[Q, width] bfloat16 queries padded with zeros, as the kernel takes them."""
    padded = torch.zeros(len(queries), width, dtype=torch.bfloat16)
    padded[:, : queries.shape[1]] = queries
    return padded


def approximate_scores(queries: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[Q, N] float32 first-pass scores of `pad_queries` queries against int8 rows (`error_bound` bounds the error)."""
    return torch._weight_int8pack_mm(queries, codes, scales).float()


def error_bound(queries: torch.Tensor, max_norm: float, max_residual: float) -> torch.Tensor:
    """[Q] float64: |first-pass score − float32 score| for every row and each query.

    With q the float32 query, q_b its bfloat16 rounding, x a row and x̂ its int8 approximation:
    the kernel sums q_b·x̂ in float32 (error ≤ γ·Σ|q_b·x̂|, γ = 2D·2^-24 covers any order of
    summation) and rounds to bfloat16 (≤ 2^-8 relative); q_b·x̂ differs from q·x̂ by at most
    ‖q_b − q‖·‖x̂‖ and q·x̂ from q·x by at most ‖q‖·‖x − x̂‖; the float32 score itself is within
    γ·‖q‖·‖x‖ of q·x. Σ|q_b·x̂| ≤ ‖q_b‖·‖x̂‖ (Cauchy–Schwarz), and ‖x‖ ≤ ‖x̂‖ + ‖x − x̂‖.
    """
    exact = queries.double()
    rounded = queries.to(torch.bfloat16).double()
    gamma = 2 * queries.shape[1] * _UNIT_FP32
    gamma /= 1 - gamma
    q_norm, rounded_norm = exact.norm(dim=1), rounded.norm(dim=1)
    kernel = (_UNIT_BF16 * (1 + gamma) + gamma) * rounded_norm * max_norm
    query_rounding = (rounded - exact).norm(dim=1) * max_norm
    row_rounding = q_norm * max_residual
    reference = gamma * q_norm * (max_norm + max_residual)
    return (kernel + query_rounding + row_rounding + reference) * _SAFETY


def fused_error_bound(
    queries: torch.Tensor, global_bound: torch.Tensor, slot_bound: torch.Tensor, fusion: float, rows: list[Quantized]
) -> torch.Tensor:
    """[Q] the bound for α·global + (1 − α)·best-slot scores, given the bounds of each part.

    The best slot's first-pass score is within the slot bound of its float32 score (a maximum
    moves no more than its arguments); the two weighted sums, first-pass and float32, each round
    a few times in float32 (8·2^-24 of the largest score, |score| ≤ ‖q‖·(‖x̂‖ + ‖x − x̂‖) plus its bound).
    """
    weights = abs(fusion) + abs(1 - fusion)
    reach = max(part.max_norm + part.max_residual for part in rows)
    magnitude = queries.double().norm(dim=1) * reach + torch.maximum(global_bound, slot_bound)
    return abs(fusion) * global_bound + abs(1 - fusion) * slot_bound + 8 * _UNIT_FP32 * weights * magnitude
