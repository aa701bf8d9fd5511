"""Sentences/s of `leccr translate`'s batching on the 1014 real Multi30K val captions.

Length-sorted batches of 32 against unsorted batches of 1 (and unsorted batches of 32, to
show what sorting alone adds), measured side by side in one run with the tiny random Marian
model of the tests (built into a temporary folder). Batch-32 figures are the best of
--repeats runs; every sentence must get the same text each way.

    python benchmarks/bench_translate.py [--multi30k DIR] [--max-tokens 16] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUNS = (("sorted, batch 32", 32, True), ("unsorted, batch 32", 32, False), ("unsorted, batch 1", 1, False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_text = Path(os.environ.get("LECCR_MULTI30K", REPO.parent / "shared/data/multi30k"))
    parser.add_argument("--multi30k", type=Path, default=default_text, help="Multi30K text folder (task1/)")
    parser.add_argument("--max-tokens", type=int, default=16, help="the random model rarely stops: this bounds it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--repeats", type=int, default=3, help="batch-32 runs: best of this many")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as transformers_logging

    from leccr_cli.testing import build_tiny_marian
    from leccr_cli.prep.translate.engines import TranslationOptions, TranslationStats, make_engine

    transformers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with gzip.open(args.multi30k / "task1/raw/val.en.gz", "rt", encoding="utf-8") as handle:
        captions = handle.read().split("\n")[:1014]
    outputs, rates = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        model = build_tiny_marian(Path(scratch) / "tiny-en-de", texts=captions, init_std=0.3)
        for name, batch_size, sort in RUNS:
            options = TranslationOptions(batch_size=batch_size, max_tokens=args.max_tokens, sort_by_length=sort)
            engine = make_engine("auto", str(model), options)
            engine.translate(captions[:8], "en", "de")  # load and warm up
            best = None
            for _ in range(args.repeats if batch_size > 1 else 1):
                stats = TranslationStats()
                outputs.append(engine.translate(captions, "en", "de", stats=stats))
                best = stats if best is None or stats.seconds < best.seconds else best
            rates[name] = best.unique / best.seconds
            print(f"{name:20s} {rates[name]:8.1f} sentences/s ({best.unique} in {best.seconds:.2f} s)", flush=True)
    print(f"same translations every way: {all(out == outputs[0] for out in outputs)}")
    print(
        f"sorted batch 32 / unsorted batch 1: {rates['sorted, batch 32'] / rates['unsorted, batch 1']:.1f}x (target >= "
        f"5x)"
    )
    print(f"sorted batch 32 / unsorted batch 32: {rates['sorted, batch 32'] / rates['unsorted, batch 32']:.2f}x")
    print(f"torch {torch.__version__}, {args.threads} thread(s), max_tokens {args.max_tokens}, CPU")


if __name__ == "__main__":
    main()
