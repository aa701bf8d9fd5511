"""Forward+backward throughput and peak memory of the demo model, with and without the slot branch.

Builds the demo configuration of recipes/demo.yaml (tiny encoders from scratch, tokenizer
trained on a small synthetic corpus) twice: the full LECCR model and the baseline variant
(no descriptions, no slots, no interaction). Each configuration runs in its own subprocess
so that its peak memory is its own: peak RSS on the CPU (resource.getrusage), or
torch.cuda.max_memory_allocated on CUDA. The two alternate for `--rounds` rounds and the
throughput is taken from the median step time over all rounds, which keeps the comparison
fair on a shared, noisy machine. Prints samples/s and peak memory side by side, and the ratios.

    python benchmarks/bench_model.py [--batch-size 64] [--steps 10] [--warmup 2] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"leccr": "LECCR (slots + interaction + all losses)", "baseline": "baseline (no slot branch)"}


def synthetic_texts(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """English captions, German machine translations and descriptions of a small synthetic corpus."""
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.corpus.synthetic.image import build_synthetic

    build_synthetic(folder, images=40, langs=["de"], seed=0, image_size=32)
    corpus = Corpus.open(folder)
    english = [c.text for c in corpus.captions("train", "en")]
    german = [c.text for c in corpus.captions("train", "de")]
    return english, german, list(corpus.descriptions("synthetic").values())


def make_batch(model, english, german, descriptions, batch_size: int, image_size: int, device):
    import torch

    pick = lambda texts: [texts[i % len(texts)] for i in range(batch_size)]  # noqa: E731
    text = model.config.text
    source = model.tokenize(pick(english), text.max_tokens)
    target = model.tokenize(pick(german), text.max_tokens)
    described = model.tokenize(pick(descriptions), text.description_max_tokens)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)),
        "source_ids": source["input_ids"],
        "source_mask": source["attention_mask"],
        "target_ids": target["input_ids"],
        "target_mask": target["attention_mask"],
        "description_ids": described["input_ids"],
        "description_mask": described["attention_mask"],
        "image_index": torch.arange(batch_size) // 2,  # two captions per image, as in training
    }
    return {k: v.to(device) for k, v in batch.items()}


def worker(variant: str, batch_size: int, steps: int, warmup: int, device_name: str) -> dict:
    import resource

    import torch

    from leccr_cli.config import load_recipe
    from leccr_cli.model.factory import build_model

    device = torch.device(device_name)
    recipe = load_recipe(REPO / "recipes" / "demo.yaml")
    config = dataclasses.replace(recipe.model, variant=variant)
    with tempfile.TemporaryDirectory() as folder:
        english, german, descriptions = synthetic_texts(Path(folder) / "corpus")
    torch.manual_seed(0)
    model = build_model(config, tokenizer_texts=english + german + descriptions).to(device).train()
    batch = make_batch(model, english, german, descriptions, batch_size, config.vision.image_size, device)

    def step() -> None:
        output = model(batch, recipe.loss)
        output.loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step_times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb, memory = torch.cuda.max_memory_allocated() / 2**20, "CUDA max allocated"
    else:
        peak_mb, memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
    return {
        "variant": variant,
        "step_times": step_times,
        "peak_mb": peak_mb,
        "memory": memory,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch_size, args.steps, args.warmup, args.device)))
        return

    runs = {variant: [] for variant in VARIANTS}
    for round_number in range(args.rounds):
        order = list(VARIANTS) if round_number % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            command = [
                sys.executable, __file__, "--worker", variant, "--batch-size", str(args.batch_size),
                "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))

    results = {}
    for variant, reports in runs.items():
        step = statistics.median(t for report in reports for t in report["step_times"])
        results[variant] = {
            "samples_per_s": args.batch_size / step,
            "seconds_per_step": step,
            "peak_mb": max(report["peak_mb"] for report in reports),
            **{k: reports[0][k] for k in ("memory", "parameters", "threads")},
        }
    full, base = results["leccr"], results["baseline"]
    print(
        f"demo model (recipes/demo.yaml), forward+backward, batch {args.batch_size}, {args.rounds} rounds of "
        f"{args.steps} steps after {args.warmup} warm-up, device {args.device}, {full['threads']} threads"
    )
    print(f"{'configuration':44} {'params':>9} {'samples/s':>10} {'s/step':>8} {full['memory'] + ' MiB':>22}")
    for variant, label in VARIANTS.items():
        r = results[variant]
        print(f"{label:44} {r['parameters']:>9,} {r['samples_per_s']:>10.1f} {r['seconds_per_step']:>8.3f} "
            f"{r['peak_mb']:>22.0f}")
    print(
        f"LECCR / baseline: throughput x{full['samples_per_s'] / base['samples_per_s']:.2f}, "
        f"peak memory x{full['peak_mb'] / base['peak_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
