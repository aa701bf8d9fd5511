"""Training throughput and peak memory of the demo configuration, and the time of the full demo.

    python benchmarks/bench_train.py                 # throughput + peak memory, then the whole demo
    python benchmarks/bench_train.py --skip-demo     # throughput + peak memory only

Throughput runs the real loop (`leccr_cli.training.trainer.train`) in a subprocess for `--steps` optimiser
steps with validation only at the end, and reads samples/s off train_log.jsonl (the time
between the first logged step after `--warmup` and the last, so start-up and evaluation are
left out). Peak memory is the subprocess's peak resident set (CPU) or
`torch.cuda.max_memory_allocated` (GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def _overrides(args, corpus: Path) -> list[str]:
    sets = [
        f"data.corpus={corpus}",
        f"optim.max_steps={args.steps}",
        f"optim.batch_size={args.batch_size}",
        f"optim.mixed_precision={args.mixed_precision}",
        f"eval.every_steps={args.steps}",
        "train.log_every_steps=1",
    ]
    return sets


def worker(args) -> None:
    """Run the training loop once and print one JSON line of measurements."""
    import torch

    from leccr_cli.config import load_recipe
    from leccr_cli.training.trainer import train

    recipe = load_recipe(REPO / "recipes" / "demo.yaml", _overrides(args, Path(args.corpus)))
    out = Path(args.out)
    train(recipe, out, overwrite=True)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first = next(r for r in log if r["step"] > args.warmup)
    last = log[-1]
    samples = (last["step"] - first["step"]) * recipe.optim.batch_size
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(
        json.dumps(
            {"samples_per_s": samples / (last["seconds"] - first["seconds"]), "peak_mib": peak, "device": device}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of the throughput run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--skip-demo", action="store_true", help="do not time the whole demo")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        corpus = scratch / "synthetic"
        subprocess.run(
            [sys.executable, "-m", "leccr_cli", "data", "synth", str(corpus)], check=True, capture_output=True
        )
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--corpus",
            str(corpus),
            "--out",
            str(scratch / "run"),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--batch-size",
            str(args.batch_size),
            "--mixed-precision",
            args.mixed_precision,
        ]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"demo configuration, batch {args.batch_size}, {args.mixed_precision} precision, {measured['device']}:")
        print(
            f"  training: {measured['samples_per_s']:.1f} samples/s (steps {args.warmup + 1}-{args.steps}), "
            f"peak memory {measured['peak_mib']:.0f} MiB"
        )
        if args.skip_demo:
            return
        # the whole demo as a new user runs it: corpus build, training, validation, test
        demo_dir = scratch / "demo"
        demo_dir.mkdir()
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "leccr_cli",
                "train",
                str(REPO / "recipes" / "demo.yaml"),
                "--set",
                f"data.corpus={demo_dir / 'data' / 'synthetic'}",
                "--output",
                str(demo_dir / "run"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
        print(f"  full demo (leccr train recipes/demo.yaml, corpus built from scratch): {elapsed:.0f} s")
        for line in done.stdout.splitlines():
            if line.startswith(("┃", "│")):
                print("  " + line)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
