"""Benchmark: `recall_metrics` (counting, chunked) against the per-row argsort formulation.

    python benchmarks/bench_recall.py [--images 5000] [--captions 5] [--device cpu|cuda]
                                      [--memory-budget 1024] [--repeats 3] [--threads N]

Builds a random [images x captions, images] score matrix (25,000 x 5,000 by default; text j
is a caption of image j // captions, the layout of the CCR papers' code), times both
formulations in the same run (best of --repeats), checks that every rank and every number
agrees, and prints the speed ratio and each one's peak extra memory (the score matrix itself
is not counted).

The argsort formulation is the CCR papers' (VSE++, NRCCR): sort every text's row of image
scores and find its image's position (t2i); sort every image's column of text scores and
take the best position among its captions (i2t). It is vectorised over all rows at once with
`torch.argsort(dim=1)` (faster than the papers' Python loop over rows), and it sorts the
columns as a contiguous transposed copy (the papers score both layouts).

Scores are standard-normal values on a 2^-16 grid; ground-truth scores get +2.5 and sit half
a grid step off it, so no other score can tie with a ground-truth one: sorting then needs no
tie rule and both formulations must agree exactly. Peak memory on the CPU is the rise of the
process's resident-set high-water mark (Linux /proc), after returning free heap to the system.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import time
from pathlib import Path

import torch

from leccr_cli.retrieval.metrics import Ranks, metrics_from_ranks, recall_metrics, retrieval_ranks

GRID = 2.0**-16


def random_scores(n_images: int, captions: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    n_texts = n_images * captions
    labels = torch.arange(n_texts) // captions
    scores = torch.randn(n_texts, n_images, generator=generator)
    scores.div_(GRID).round_().mul_(GRID)
    rows = torch.arange(n_texts)
    scores[rows, labels] += 2.5 + GRID / 2
    return scores.to(device), labels.to(device)


def argsort_ranks(scores: torch.Tensor, labels: torch.Tensor) -> Ranks:
    """The papers' formulation: full sorts of every row and every column."""
    n_texts, n_images = scores.shape
    order = torch.argsort(scores, dim=1, descending=True)
    t2i = (order == labels[:, None]).int().argmax(1) + 1
    del order
    order = torch.argsort(scores.t().contiguous(), dim=1, descending=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(n_texts, device=scores.device).expand(n_images, -1))
    del order
    caption_rank = position[labels, torch.arange(n_texts, device=scores.device)]
    del position
    i2t = torch.full((n_images,), n_texts, dtype=torch.int64, device=scores.device)
    i2t.scatter_reduce_(0, labels, caption_rank, reduce="amin")
    return Ranks(t2i=t2i.long(), i2t=i2t + 1)


class PeakMemory:
    """Peak extra memory of a call: CUDA allocator statistics, or the RSS high-water mark on Linux."""

    def __init__(self, device: str):
        self.device = device
        self.libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None

    def measure(self, function):
        """(result, seconds, peak extra bytes or None) of one call."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            result = function()
            torch.cuda.synchronize()
            return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
        if self.libc is None:
            start = time.perf_counter()
            return function(), time.perf_counter() - start, None
        self.libc.malloc_trim(0)
        base = self._status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
        return result, seconds, self._status("VmHWM") - base

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")


def timed(function, repeats: int, memory: PeakMemory):
    """The last result, the best time and the highest peak over `repeats` calls."""
    best, peak, result = float("inf"), 0, None
    for _ in range(repeats):
        result, seconds, used = memory.measure(function)
        best = min(best, seconds)
        peak = None if used is None else max(peak, used)
    return result, best, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--memory-budget", type=float, default=1024, help="MB for recall_metrics' chunks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scores, labels = random_scores(args.images, args.captions, args.seed, args.device)
    print(
        f"scores {tuple(scores.shape)} {scores.dtype} on {args.device}, {args.captions} captions per image; "
        f"{torch.get_num_threads()} CPU threads; load average {os.getloadavg()[0]:.1f}; best of {args.repeats}"
    )
    memory = PeakMemory(args.device)
    recall_metrics(scores[:64, :64], labels[:64] % 64)  # warm-up

    ours, ours_time, ours_peak = timed(
        lambda: recall_metrics(scores, labels, memory_budget_mb=args.memory_budget), args.repeats, memory
    )
    reference, reference_time, reference_peak = timed(
        lambda: metrics_from_ranks(argsort_ranks(scores, labels)), args.repeats, memory
    )
    ranks, reference_ranks = retrieval_ranks(scores, labels), argsort_ranks(scores, labels)
    same_ranks = torch.equal(ranks.t2i, reference_ranks.t2i) and torch.equal(ranks.i2t, reference_ranks.i2t)
    print("metrics: " + ", ".join(f"{key} {value:.2f}" for key, value in ours.items()))
    print(f"all ranks agree: {same_ranks}; all metrics agree: {ours == reference}")
    print(f"recall_metrics (counting, chunked): {ours_time:7.2f} s, peak extra memory {_mb(ours_peak)}")
    print(f"argsort per row and per column:     {reference_time:7.2f} s, peak extra memory {_mb(reference_peak)}")
    ratio = reference_time / ours_time
    print(f"speed-up: {ratio:.1f}x (target >= 20x); peak extra memory {_mb(ours_peak)} (target < 1024 MB)")
    if not (same_ranks and ours == reference):
        sys.exit("the two formulations disagree")


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MB"


if __name__ == "__main__":
    main()
