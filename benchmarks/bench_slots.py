"""Training throughput with the description-feature cache vs live encoding (frozen mode).

The configuration follows the reference's proportions: the description encoder is a frozen
copy of the text encoder (same size), descriptions run to ~200 tokens and captions to ~30
(the synthetic corpus's texts are lengthened to that), and the vision tower is either small
(`--vision small`: the text side dominates) or as deep and wide as the text encoder over 145
visual tokens (`--vision matched`: ViT-B/32 at 384 px against mBERT, as in the reference).
Encoders are random, built from configs (nothing downloaded).

One process, one model: training steps (forward + backward + AdamW step) through the real
data path (`TrainingSet` -> `Collator` -> `DataLoader` -> `LeccrModel`) alternate between
live encoding and the slot cache for `--rounds` rounds; throughput comes from the median
step time of each mode, which keeps the comparison fair on a shared, noisy machine. Also
prints the time to build the cache and its size on disk per 1,000 images at fp16 and fp32.

    python benchmarks/bench_slots.py [--layers 6] [--width 512] [--vision small] [--batch-size 8]
                                     [--steps 4] [--rounds 3] [--images 160]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import yaml

DESCRIPTION_TOKENS = 200
CAPTION_TOKENS = 32  # [CLS] + 30 words + [SEP]


def lengthen(text: str, words: int) -> str:
    """`text` repeated until it has at least `words` words, cut to that many."""
    tokens = text.split()
    return " ".join(itertools.islice(itertools.cycle(tokens), words))


def make_corpus(folder: Path, images: int) -> Path:
    """A synthetic corpus whose captions run to ~30 words and descriptions to ~200."""
    from leccr_cli.corpus.corpus import Caption, Corpus, write_corpus
    from leccr_cli.corpus.synthetic.image import build_synthetic

    source = build_synthetic(folder / "source", images=images, langs=["de"], seed=0, image_size=64).path
    corpus = Corpus.open(source)
    captions = [Caption(*c)._replace(text=lengthen(c.text, 30)) for c in corpus.captions()]
    descriptions = [
        {**row, "text": lengthen(row["text"], DESCRIPTION_TOKENS)} for row in corpus.description_rows("synthetic")
    ]
    return write_corpus(
        folder / "corpus",
        name="bench-slots",
        modality="image",
        media_root=str(corpus.media_root),
        images=corpus.images(),
        captions=captions,
        descriptions={"synthetic": descriptions},
    ).path


def write_recipe(folder: Path, corpus: Path, args) -> Path:
    heads = max(1, args.width // 64)
    encoder = {
        "hidden_size": args.width,
        "intermediate_size": 4 * args.width,
        "num_hidden_layers": args.layers,
        "num_attention_heads": heads,
    }
    if args.vision == "matched":  # 12 x 12 patches + CLS = 145 tokens, like ViT-B/32 at 384 px
        vision, image_size = {**encoder, "patch_size": 8}, 96
    else:
        vision, image_size = (
            {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "patch_size": 16,
            },
            64,
        )
    recipe = {
        "name": "bench-slots",
        "seed": 0,
        "data": {
            "corpus": str(corpus),
            "target_langs": ["de"],
            "descriptions": "synthetic",
            "train_transform": "resize_center_crop",
        },
        "model": {
            "vision": {"name_or_path": None, "image_size": image_size, "projection_dim": 256, "config": vision},
            "text": {
                "name_or_path": None,
                "max_tokens": CAPTION_TOKENS,
                "description_max_tokens": DESCRIPTION_TOKENS,
                "tokenizer": {"vocab_size": 4000},
                "config": {**encoder, "max_position_embeddings": 256},
            },
            "description_encoder": "frozen",
            "description_features": "cache",
            "joint_dim": 256,
            "heads": 8,
        },
        "optim": {"lr": 1e-5, "batch_size": args.batch_size},
        "eval": {"batch_size": 32},
    }
    path = folder / "bench-slots.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6, help="depth of the text (and description) encoder")
    parser.add_argument("--width", type=int, default=512, help="width of the text (and description) encoder")
    parser.add_argument("--vision", choices=["small", "matched"], default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=160)
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from leccr_cli.config import load_recipe
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.corpus.corpus import check_descriptions
    from leccr_cli.data.datasets import TrainingSet
    from leccr_cli.prep.features.cache import SlotCache
    from leccr_cli.model.factory import build_model_for
    from leccr_cli.training.pipeline import build_optimizer, training_data
    from leccr_cli.prep.features.build import build_slots

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus_dir = make_corpus(folder, args.images)
        recipe_file = write_recipe(folder, corpus_dir, args)
        recipe = load_recipe(recipe_file)
        corpus = Corpus.open(corpus_dir)
        train_ids = corpus.image_ids("train")

        sizes, build_seconds = {}, {}
        for dtype in ("fp32", "fp16"):
            start = time.perf_counter()
            (report,) = build_slots(recipe_file, splits="train", dtype=dtype, overwrite=True)
            build_seconds[dtype] = time.perf_counter() - start
            sizes[dtype] = (report.bytes, report.path.stat().st_blocks * 512, report.longest)
        width_stored = SlotCache.open(report.path).row(train_ids[0]).shape[1]

        model = build_model_for(recipe, corpus)
        cached = training_data(recipe, corpus, model)  # the recipe reads the cache
        with_cache = cached.dataset
        # the same examples, images and cleaning, with the description texts encoded live instead
        descriptions = check_descriptions(corpus, recipe.data.descriptions, train_ids)
        live = TrainingSet(with_cache.examples, with_cache.visual, descriptions, with_cache.cleaning, recipe.seed)
        loaders = {
            mode: DataLoader(
                dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=cached.collate
            )
            for mode, dataset in (("live encoding", live), ("slot cache", with_cache))
        }
        batches = {mode: _forever(loader) for mode, loader in loaders.items()}
        optimizer = build_optimizer(model, recipe)
        model.train()

        def step(mode: str) -> float:
            start = time.perf_counter()
            batch = next(batches[mode])
            output = model(batch, recipe.loss)
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        first = next(batches["live encoding"])
        tokens = {
            "caption": float(first["source_mask"].sum(1).float().mean()),
            "description": float(first["description_mask"].sum(1).float().mean()),
        }
        for mode in loaders:  # warm-up
            step(mode)
        times = {mode: [] for mode in loaders}
        for round_number in range(args.rounds):
            order = list(loaders) if round_number % 2 == 0 else list(reversed(loaders))
            for mode in order:
                times[mode] += [step(mode) for _ in range(args.steps)]

    text_params = sum(p.numel() for p in model.text_encoder.parameters())
    print(
        f"frozen description encoder = text encoder: {args.layers} layers x {args.width} "
        f"({text_params / 1e6:.1f} M parameters each); vision: {args.vision} ({model.vision.config.num_hidden_layers} "
        f"x "
        f"{model.vision.config.hidden_size}, {(model.image_size // model.vision.config.patch_size) ** 2 + 1} tokens)"
    )
    print(
        f"mean tokens per caption {tokens['caption']:.0f}, per description {tokens['description']:.0f}; "
        f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps per mode, {torch.get_num_threads()} "
        f"threads"
    )
    print(f"{'mode':16} {'samples/s':>10} {'s/step':>8}")
    rates = {}
    for mode, values in times.items():
        median = statistics.median(values)
        rates[mode] = args.batch_size / median
        print(f"{mode:16} {rates[mode]:>10.2f} {median:>8.3f}")
    print(f"slot cache / live encoding: x{rates['slot cache'] / rates['live encoding']:.2f} training throughput")
    rows = len(train_ids)
    for dtype, (apparent, allocated, longest) in sizes.items():
        print(
            f"cache {dtype}: {apparent / rows * 1000 / 2**20:.1f} MiB per 1,000 images "
            f"({allocated / rows * 1000 / 2**20:.1f} MiB allocated; rows padded to {longest} tokens x {width_stored}), "
            f"built in {build_seconds[dtype]:.1f} s for {rows} images"
        )


def _forever(loader):
    while True:
        yield from loader


if __name__ == "__main__":
    main()
