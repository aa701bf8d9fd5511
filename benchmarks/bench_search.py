"""Search latency over large synthetic indexes, and index build throughput against evaluation's gallery encoding.

Search: indexes of 10k, 100k and 1M items x 256 dims at fp16 (random unit vectors, written
in the real index format, int8 codes included) are searched by the real `Searcher` (query
model, memory-mapped embeddings and codes, exact two-pass top-k, k = 10) with single queries
in German, French, Czech and English. The model load is timed apart; every query is timed
end to end (cleaning, tokenizing, embedding, both passes, reading the hits' items) and the
scan (both passes and top-k) on its own; p50 and p95 over `--queries` queries after warm-up,
on `--threads` threads. Memory: the process's private (anonymous) memory before and after the
searches and the pages of each index file the searches touched (`/proc/self/status`,
`/proc/self/smaps`): the first pass reads every code, the second only the candidates' rows.

Side by side, for 24 queries: the two-pass scan against the float32 reference (`top_k(...,
every_row=True)`: every row converted and scored by `model.score`, the best 10 kept, as
`leccr search` did before its int8 first pass; both must return the same rows) and
their ratio, and the floors the machine allows: reading every code once, and every
embedding once (an integer sum over the memory-mapped bytes, no scoring).

Build: `build_index` (what `leccr index` runs: load the run, embed the split, write the
parts, merge them into the index) against `load_run` + `encode_gallery` (what `leccr
evaluate` runs before its queries) on the same corpus split and model (the demo's size),
alternating for `--rounds` rounds; images/s of each (best round), their ratio, and the
median of the rounds' ratios.

The query model is the demo's text encoder (2 layers x 64) with a 256-d head, or with
`--text base` a 12 x 768 encoder (BERT-base size); weights are random (built from configs).

    python benchmarks/bench_search.py [--sizes 10000,100000,1000000] [--queries 100] [--threads 2]
                                      [--text tiny|base] [--build-images 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

QUERIES = [
    "ein kleiner roter Kreis links oben",
    "une grande étoile bleue au milieu",
    "malý zelený trojúhelník vpravo dole",
    "two large yellow squares on the right",
    "ein Hund im Schnee",
    "drei violette Sterne unten",
    "un petit carré orange en haut à gauche",
    "velký modrý kruh uprostřed",
]
TEXT_SIZES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "base": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
}


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (RssAnon: private memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def mapped_kib(path: Path) -> int:
    """Resident KiB of this process's memory mappings of `path` (the index file's pages it has touched)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def make_run(folder: Path, corpus: Path, dim: int, text: str) -> Path:
    """A run folder (recipe + model/) of the demo's configuration with a `dim`-d joint space (random weights)."""
    from leccr_cli.config import recipe_from_dict
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.config import resolve_paths
    from leccr_cli.model.factory import build_model_for
    from leccr_cli.runs.layout import create_run_dir
    from leccr_cli.testing import tiny_recipe

    raw = tiny_recipe(corpus)
    raw["model"]["joint_dim"] = dim
    raw["model"]["vision"] = {**raw["model"]["vision"], "image_size": 64, "projection_dim": 64}
    raw["model"]["vision"]["config"] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "patch_size": 8,
    }
    raw["model"]["text"]["config"] = {
        **raw["model"]["text"]["config"],
        **TEXT_SIZES[text],
        "max_position_embeddings": 64,
    }
    raw["model"].update(num_slots=4, heads=4)
    raw["eval"]["batch_size"] = 250
    recipe = resolve_paths(recipe_from_dict(raw))
    run = folder / "run"
    create_run_dir(recipe, run, overwrite=False)
    build_model_for(recipe, Corpus.open(corpus)).save_pretrained(run / "model")
    return run


def write_synthetic_index(folder: Path, run: Path, count: int, dim: int, seed: int = 0) -> Path:
    """An index of `count` random unit vectors (fp16) in the real format, built by `run`'s model (not stale)."""
    import torch
    from datasets import Dataset, Features, Value

    from leccr_cli.utils.safetensors_io import StreamingSafetensors, tensor_bytes
    from leccr_cli.retrieval.index.builder import write_codes
    from leccr_cli.retrieval.index.format import (
        CODES_FILE,
        EMBEDDINGS_FILE,
        INDEX_FILE,
        ITEMS_DIR,
        ITEM_COLUMNS,
        IndexInfo,
        ModelIdentity,
    )

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    out = StreamingSafetensors(
        folder / EMBEDDINGS_FILE, {"global": ("F16", [count, dim], 2)}, {"format": "leccr-index"}
    )
    step = 1 << 16
    for start in range(0, count, step):
        rows = torch.nn.functional.normalize(torch.randn(min(step, count - start), dim, generator=generator), dim=1)
        out.write("global", start * dim * 2, tensor_bytes(rows.half()))
    out.close()
    ids = [f"img{i:07d}" for i in range(count)]
    write_codes(folder / CODES_FILE, folder / EMBEDDINGS_FILE, ids)
    items = {"image_id": ids, "path": [f"/photos/{i}.jpg" for i in ids], "description": [""] * count}
    Dataset.from_dict(items, features=Features({c: Value("string") for c in ITEM_COLUMNS})).save_to_disk(
        str(folder / ITEMS_DIR)
    )
    info = IndexInfo(ModelIdentity.of_run(run), "synthetic", "gallery", None, count, dim, None, False, "fp16")
    (folder / INDEX_FILE).write_text(info.to_json())
    return folder


def bench_search(index: Path, queries: int, warmup: int = 5) -> dict:
    import torch

    from leccr_cli.retrieval.index.format import CODES_FILE, EMBEDDINGS_FILE
    from leccr_cli.retrieval.search import Searcher, top_k

    started = time.perf_counter()
    searcher = Searcher.open(index)
    load = time.perf_counter() - started
    files = {name: (index / name).resolve() for name in (EMBEDDINGS_FILE, CODES_FILE)}
    anon0 = status_kib("RssAnon")
    texts = [QUERIES[i % len(QUERIES)] for i in range(queries + warmup)]
    total, scan = [], []
    for i, text in enumerate(texts):
        started = time.perf_counter()
        hits, _ = searcher.search([text], k=10)
        elapsed = time.perf_counter() - started
        embeds = searcher.embed([text])
        started = time.perf_counter()
        top_k(searcher.model, embeds, searcher.index, 10)
        scanned = time.perf_counter() - started
        if i >= warmup:
            total.append(elapsed)
            scan.append(scanned)
        assert len(hits[0]) == 10
    anon1 = status_kib("RssAnon")
    mapped = {name: mapped_kib(path) / 1024 for name, path in files.items()}  # pages the searches touched

    # side by side: the two-pass scan against scoring every row in float32, same queries, same answers
    reference, fast, codes_floor, embeddings_floor = [], [], [], []
    codes = searcher.index.codes.global_rows.codes
    for text in QUERIES * 3:
        embeds = searcher.embed([text])
        started = time.perf_counter()
        expected = top_k(searcher.model, embeds, searcher.index, 10, every_row=True)
        reference.append(time.perf_counter() - started)
        started = time.perf_counter()
        found = top_k(searcher.model, embeds, searcher.index, 10, every_row=False)
        fast.append(time.perf_counter() - started)
        assert torch.equal(found[1], expected[1]), (text, found, expected)
        started = time.perf_counter()
        codes.view(torch.int64).sum()  # the floor of the first pass: read every code once
        codes_floor.append(time.perf_counter() - started)
        started = time.perf_counter()
        searcher.index.global_embeds.view(torch.int64).sum()  # the floor of a float32 scan: read every embedding once
        embeddings_floor.append(time.perf_counter() - started)

    def pct(values, q):
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    sizes = {name: path.stat().st_size / 2**20 for name, path in files.items()}
    return {
        "items": len(searcher.index),
        "load_s": load,
        "p50_ms": pct(total, 50), "p95_ms": pct(total, 95),
        "scan_p50_ms": pct(scan, 50), "scan_p95_ms": pct(scan, 95),
        "codes_floor_ms": pct(codes_floor, 50), "embeddings_floor_ms": pct(embeddings_floor, 50),
        "float32_scan_ms": pct(reference, 50), "two_pass_ms": pct(fast, 50),
        "anon_mib": (anon1 - anon0) / 1024,
        "embeddings_mib": sizes[EMBEDDINGS_FILE], "codes_mib": sizes[CODES_FILE],
        "embeddings_mapped_mib": mapped[EMBEDDINGS_FILE], "codes_mapped_mib": mapped[CODES_FILE],
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def bench_build(run: Path, corpus: Path, split: str, workdir: Path, rounds: int) -> dict:
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.retrieval.encode import encode_gallery
    from leccr_cli.retrieval.index.builder import build_index
    from leccr_cli.runs.layout import load_run

    count = len(Corpus.open(corpus).image_ids(split))

    def index() -> float:
        started = time.perf_counter()
        build_index(run, corpus, workdir / "index", split=split, overwrite=True)
        return time.perf_counter() - started

    def evaluate() -> float:
        started = time.perf_counter()
        recipe, model = load_run(run)
        encode_gallery(
            model, Corpus.open(corpus), split, descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
        )
        return time.perf_counter() - started

    build, encode = [], []
    for round_ in range(rounds):  # the order alternates, so a machine getting busier favours neither
        if round_ % 2:
            encode.append(evaluate())
            build.append(index())
        else:
            build.append(index())
            encode.append(evaluate())
    return {
        "images": count,
        "index_per_s": count / min(build), "evaluate_per_s": count / min(encode),
        "median_ratio": statistics.median(e / b for b, e in zip(build, encode)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text", choices=sorted(TEXT_SIZES), default="tiny")
    parser.add_argument(
        "--build-images",
        type=int,
        default=2000,
        help="synthetic corpus size for the build comparison (its train split)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()

    import torch

    from leccr_cli.corpus.synthetic.image import build_synthetic

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        corpus = build_synthetic(
            workdir / "corpus", images=args.build_images, langs=["de", "fr", "cs"], seed=0, image_size=64
        ).path
        run = make_run(workdir, corpus, args.dim, args.text)
        print(
            f"torch {torch.__version__}, {args.threads} threads; query model: {args.text} text encoder, {args.dim}-d "
            f"head"
        )
        print(
            "| items | embeddings + codes | model load | p50 | p95 | scan p50 | scan p95 | float32 scan p50 | ratio | "
            "read floor: codes / embeddings | private memory growth | pages mapped: codes / embeddings |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for size in [int(s) for s in args.sizes.split(",")]:
            index = write_synthetic_index(workdir / f"index-{size}", run, size, args.dim)
            r = bench_search(index, args.queries)
            print(
                f"| {size:,} | {r['embeddings_mib']:.0f} + {r['codes_mib']:.0f} MiB | {r['load_s']:.2f} s | "
                f"{r['p50_ms']:.1f} ms | "
                f"{r['p95_ms']:.1f} ms | {r['scan_p50_ms']:.1f} ms | {r['scan_p95_ms']:.1f} ms | "
                f"{r['float32_scan_ms']:.1f} ms | "
                f"x{r['float32_scan_ms'] / r['two_pass_ms']:.1f} | {r['codes_floor_ms']:.1f} / "
                f"{r['embeddings_floor_ms']:.1f} ms | "
                f"{r['anon_mib']:+.0f} MiB | {r['codes_mapped_mib']:.0f} / {r['embeddings_mapped_mib']:.0f} MiB |",
                flush=True,
            )
            shutil.rmtree(index)
        if not args.skip_build:
            b = bench_build(run, corpus, "train", workdir, args.rounds)
            print(json.dumps(b))
            print(
                f"build: leccr index {b['index_per_s']:.0f} images/s vs leccr evaluate's gallery encoding "
                f"{b['evaluate_per_s']:.0f} images/s ({b['images']} images, best of {args.rounds}): "
                f"ratio {b['index_per_s'] / b['evaluate_per_s']:.2f} (median of the rounds' ratios "
                f"{b['median_ratio']:.2f})"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
