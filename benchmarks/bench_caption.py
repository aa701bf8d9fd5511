"""Benchmark `leccr caption`: images/s of the tiny LLaVA at batch 1 vs batch 8, measured side by side.

Also the share of a batch-8 run spent outside `generate` (reading images, preprocessing,
writing shards and the final dataset). Targets: batching at least 3x faster on 2 cores;
under 10% outside `generate` at batch 8. Model loading is a one-off cost and is printed
separately.

The defaults describe 96 images with up to 128 new tokens: detailed descriptions are long
(`leccr caption` allows 256 by default), and the random tiny model never stops early, so
every image costs the full budget. With very short generations (`--max-new-tokens 32`) the
tiny model's `generate` takes ~10 ms per image and the fixed costs around it (the CLIP
processor's PIL preprocessing, shard writes) show as 15-20%.

    python benchmarks/bench_caption.py [--images 96] [--max-new-tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from leccr_cli.prep.describe import caption_corpus, open_describer
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.corpus.synthetic.image import build_synthetic
    from leccr_cli.testing import build_tiny_llava

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    model_dir = build_tiny_llava(work / "tiny-llava")
    build_synthetic(work / "corpus", images=max(30, args.images + 20), seed=0, image_size=64)
    corpus = Corpus.open(work / "corpus")
    describer = open_describer("llava", str(model_dir), device="cpu", max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    describer.load()
    load_seconds = time.perf_counter() - started

    generate = describer.model.generate
    in_generate = [0.0]

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            in_generate[0] += time.perf_counter() - t

    describer.model.generate = timed_generate
    run = dict(splits=["train"], limit=args.images, overwrite=True)
    caption_corpus(corpus, describer, source="warmup", **{**run, "limit": 2})

    results = {}
    for batch_size in (1, 8):
        in_generate[0] = 0.0
        started = time.perf_counter()
        report = caption_corpus(corpus, describer, source=f"batch{batch_size}", batch_size=batch_size, **run)
        seconds = time.perf_counter() - started
        results[batch_size] = (report.described / seconds, seconds, 1 - in_generate[0] / seconds)

    print(
        f"tiny LLaVA, {args.images} synthetic images, up to {args.max_new_tokens} new tokens, {args.threads} torch "
        f"threads"
    )
    for batch_size, (rate, seconds, outside) in results.items():
        print(f"batch {batch_size}: {rate:.2f} images/s ({seconds:.1f} s; {100 * outside:.1f}% outside generate)")
    print(f"speed-up batch 8 / batch 1: {results[8][0] / results[1][0]:.2f}x (target >= 3x)")
    print(
        f"time outside generate at batch 8: {100 * results[8][2]:.1f}% (target < 10%); model load {load_seconds:.2f} "
        f"s, once"
    )
    same = corpus.description_rows("batch1") == corpus.description_rows("batch8")
    print(f"batch 1 and batch 8 wrote the same descriptions: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
