"""Training on frame features: samples/s and peak memory, mean vs CLS pooling; memory vs corpus size.

    python benchmarks/bench_video.py [--videos 200] [--frames 64] [--frame-dim 2048] [--width 512]
                                     [--batch-size 16] [--steps 8] [--warmup 2] [--rounds 2]

Builds two synthetic video corpora (`leccr data synth --video`) with `--frames` x `--frame-dim`
features per video (each video has between half of `--frames` and `--frames` frames, float32
on disk): one of `--videos` videos and one ten times larger. Each measurement is a fresh
process that trains the demo-video model (tiny text encoder; frame encoder as the recipe, with
`--width` as model.video.width) for `--warmup` + `--steps` optimiser steps through the real
data path (`TrainingSet` -> `Collator` -> `DataLoader` -> `LeccrModel`, AdamW), and reports:

- samples/s from the median step time after the warm-up (data loading included);
- the peak of the process's own (anonymous) memory during the steps, sampled every 5 ms
  (RssAnon), and before the first step;
- peak resident memory (VmHWM) and how much of the memory-mapped frame-feature file is
  resident at the end (/proc/self/smaps). These count page-cache pages of the file mapped
  into the process: shared, reclaimable, and more than was read (the kernel maps whole
  read-ahead blocks), so they grow with the spread of the videos read, not with what the
  process holds.

Mean and CLS pooling alternate for `--rounds` rounds on the small corpus (side by side, so a
busy machine slows both alike). Then mean pooling on the corpus ten times larger (same batch,
same steps: the same number of videos is read) and on the small corpus with twice the batch:
frame features are memory-mapped and read per batch, so the process's own memory follows the
batch, not the size of the corpus.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mapped_mib(path: Path) -> float:
    """Resident memory of the mappings of `path` (the pages of the file that were read)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(args) -> None:
    """Train for warmup + steps optimiser steps and print one JSON line of measurements."""
    import torch
    from torch.utils.data import DataLoader

    from leccr_cli.config import load_recipe
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.model.factory import build_model_for
    from leccr_cli.training.pipeline import build_optimizer, training_data

    overrides = [
        f"data.corpus={args.corpus}",
        f"model.video.width={args.width}",
        f"model.video.max_frames={args.frames}",
        f"model.video.pooling={args.pooling}",
        f"model.heads={args.heads}",
        f"model.video.heads={args.heads}",
        f"optim.batch_size={args.batch_size}",
    ]
    recipe = load_recipe(REPO / "recipes" / "demo-video.yaml", overrides)
    corpus = Corpus.open(args.corpus)
    model = build_model_for(recipe, corpus)
    data = training_data(recipe, corpus, model)
    loader = DataLoader(data.dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=data.collate,
                        generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, recipe)
    model.train()
    before_kib = _status_kib("RssAnon")
    anonymous_kib, done = [before_kib], threading.Event()

    def sample() -> None:  # RssAnon every 5 ms: the peak of the process's own memory, page cache left out
        while not done.wait(0.005):
            anonymous_kib.append(_status_kib("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = []
    batches = iter(loader)
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(batches)
        output = model(batch, recipe.loss)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    done.set()
    sampler.join()
    step = statistics.median(times[args.warmup:])
    print(json.dumps({
        "samples_per_s": args.batch_size / step,
        "peak_mib": _status_kib("VmHWM") / 1024,
        "anonymous_peak_mib": max(anonymous_kib) / 1024,
        "before_mib": before_kib / 1024,
        "mapped_mib": _mapped_mib(Path(args.corpus).resolve() / "video" / "synthetic.safetensors"),
        "threads": torch.get_num_threads(),
    }))


def _measure(args, corpus: Path, pooling: str, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--worker", "--corpus", str(corpus), "--pooling", pooling,
               "--batch-size", str(batch_size), "--frames", str(args.frames), "--width", str(args.width),
               "--heads", str(args.heads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200, help="videos of the small corpus (the large one has 10x)")
    parser.add_argument("--frames", type=int, default=64, help="the most frames per video (and model.video.max_frames)")
    parser.add_argument("--frame-dim", type=int, default=2048, help="width of a frame feature")
    parser.add_argument("--width", default="512", help="model.video.width: a number, or null for the frame width")
    parser.add_argument(
        "--heads", type=int, default=8, help="attention heads of the frame encoder and the LECCR layers"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="measured optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the rate")
    parser.add_argument("--rounds", type=int, default=2, help="mean/CLS alternations")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--pooling", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from leccr_cli.corpus.synthetic.video import build_synthetic_video

    with tempfile.TemporaryDirectory(prefix="bench-video-") as scratch:
        corpora = {}
        for label, count in (("small", args.videos), ("large", 10 * args.videos)):
            start = time.perf_counter()
            corpora[label] = build_synthetic_video(
                Path(scratch) / label, videos=count, frames=args.frames, frame_dim=args.frame_dim, seed=0
            ).path
            size = sum(p.stat().st_size for p in (corpora[label] / "video").iterdir()) / 2**20
            print(
                f"corpus of {count} videos: frame features {size:.0f} MiB on disk (built in "
                f"{time.perf_counter() - start:.0f} s)"
            )

        rows = []
        measured: dict[str, list[dict]] = {"mean": [], "cls": []}
        for _ in range(args.rounds):
            for pooling in measured:
                measured[pooling].append(_measure(args, corpora["small"], pooling, args.batch_size))
        for pooling, runs in measured.items():
            rows.append((f"{pooling}, {args.videos} videos, batch {args.batch_size}", runs))
        rows.append(
            (
                f"mean, {10 * args.videos} videos, batch {args.batch_size}",
                [_measure(args, corpora["large"], "mean", args.batch_size)],
            )
        )
        rows.append(
            (
                f"mean, {args.videos} videos, batch {2 * args.batch_size}",
                [_measure(args, corpora["small"], "mean", 2 * args.batch_size)],
            )
        )

    threads = rows[0][1][0]["threads"]
    print(
        f"\n{args.frames} frames x {args.frame_dim}-d per video (at most), model.video.width {args.width}, "
        f"{args.steps} measured steps after {args.warmup}, CPU ({threads} threads)"
    )
    print(
        "| pooling, corpus, batch | samples/s | peak anonymous MiB | anonymous before training MiB "
        "| peak RSS MiB (file pages included) | frame file resident at the end MiB |"
    )
    print("|---|---|---|---|---|---|")
    for label, runs in rows:
        rate = " / ".join(f"{r['samples_per_s']:.1f}" for r in runs)
        anonymous = max(r["anonymous_peak_mib"] for r in runs)
        before = max(r["before_mib"] for r in runs)
        peak = max(r["peak_mib"] for r in runs)
        mapped = max(r["mapped_mib"] for r in runs)
        print(f"| {label} | {rate} | {anonymous:.0f} | {before:.0f} | {peak:.0f} | {mapped:.0f} |")
    mean_rate = statistics.median(r["samples_per_s"] for r in measured["mean"])
    cls_rate = statistics.median(r["samples_per_s"] for r in measured["cls"])
    print(f"\nmean / CLS pooling throughput: x{mean_rate / cls_rate:.2f}")
    small = max(r["anonymous_peak_mib"] for r in measured["mean"])
    print(
        f"peak anonymous memory, 10x the corpus: {rows[2][1][0]['anonymous_peak_mib'] - small:+.0f} MiB; "
        f"2x the batch: {rows[3][1][0]['anonymous_peak_mib'] - small:+.0f} MiB"
    )


if __name__ == "__main__":
    main()
